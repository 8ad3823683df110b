"""Live interop with ts-mls (RFC 9420): mixed groups of this project's members and ts-mls members.

Both directions, for cipher suites 1 and 2 in full and a shorter lifecycle for suites 3-7:

* this implementation creates the group and adds a ts-mls member (Welcome with the tree in its GroupInfo's
  ratchet_tree extension, and with the tree handed over separately), and ts-mls creates the group and adds
  our member the same two ways;
* application messages every way;
* Add, Remove and self-update commits (and Adds/Removes/Updates proposed by one side and committed by the
  other) made by each side and processed by the other, as PublicMessage and as PrivateMessage;
* external joins by each side into a group of the other (tree in the GroupInfo or separate, and a
  resync that removes the joiner's old leaf), from a GroupInfo made by either side.

After every step every member reports its epoch, epoch_authenticator, an MLS-Exporter output, tree hash,
confirmed transcript hash, ratchet tree and roster, and all must agree (see ``interop_helpers``). One peer
process serves the whole module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mls.errors import MLSError

from .interop_helpers import HandshakeName, Member, MixedGroup, PyMember, TsMember, unique
from .ts_mls_peer import PeerError, TsMlsPeer

FULL_SUITES = [1, 2]
OTHER_SUITES = [3, 4, 5, 6, 7]
HANDSHAKES: list[HandshakeName] = ["public", "private"]


@pytest.fixture(scope="module")
def peer(ts_mls_peer_factory: Callable[[], TsMlsPeer]) -> Iterator[TsMlsPeer]:
    p = ts_mls_peer_factory()
    yield p
    p.close()


class Factory:
    """Members of either side for one test, with names unique in the module's peer."""

    def __init__(self, peer: TsMlsPeer, suite: int) -> None:
        self.peer = peer
        self.suite = suite

    def ours(self, name: str) -> PyMember:
        return PyMember(unique(name), self.suite)

    def ts(self, name: str) -> TsMember:
        return TsMember(self.peer, unique(name), self.suite)

    def group_id(self, what: str) -> bytes:
        return unique(f"{what}-suite{self.suite}").encode()


@pytest.fixture
def make(peer: TsMlsPeer, request: pytest.FixtureRequest) -> Factory:
    return Factory(peer, request.node.callspec.params["suite"])


def _by_side(creator_side: str, make: Factory, name: str) -> Member:
    return make.ours(name) if creator_side == "ours" else make.ts(name)


# ---- joining from a Welcome ------------------------------------------------------------------------


@pytest.mark.parametrize("tree_in_welcome", [True, False], ids=["tree-in-welcome", "tree-separate"])
@pytest.mark.parametrize("suite", FULL_SUITES)
def test_we_create_and_add_ts_mls_member(make: Factory, suite: int, tree_in_welcome: bool) -> None:
    """Our member creates the group and adds ts-mls members; the Welcome carries the tree or not."""
    alice, bob, carol = make.ours("alice"), make.ts("bob"), make.ts("carol")
    grp = MixedGroup(alice, make.group_id("we-create"))
    grp.commit(alice, add=[bob], tree_in_welcome=tree_in_welcome)
    grp.chat()
    # A second ts-mls joiner, sent as a PrivateMessage commit the first ts-mls member must decrypt.
    grp.commit(alice, add=[carol], tree_in_welcome=tree_in_welcome, handshake="private")
    grp.chat()


@pytest.mark.parametrize("tree_in_welcome", [True, False], ids=["tree-in-welcome", "tree-separate"])
@pytest.mark.parametrize("suite", FULL_SUITES)
def test_ts_mls_creates_and_adds_our_member(make: Factory, suite: int, tree_in_welcome: bool) -> None:
    """A ts-mls member creates the group and adds our members; the Welcome carries the tree or not."""
    alice, bob, carol = make.ts("alice"), make.ours("bob"), make.ours("carol")
    grp = MixedGroup(alice, make.group_id("ts-creates"))
    grp.commit(alice, add=[bob], tree_in_welcome=tree_in_welcome)
    grp.chat()
    grp.commit(alice, add=[carol], tree_in_welcome=tree_in_welcome, handshake="private")
    grp.chat()


# ---- commits by each side, processed by the other ----------------------------------------------------


@pytest.mark.parametrize("handshake", HANDSHAKES)
@pytest.mark.parametrize("creator", ["ours", "ts-mls"])
@pytest.mark.parametrize("suite", FULL_SUITES)
def test_commits_both_ways(make: Factory, suite: int, creator: str, handshake: HandshakeName) -> None:
    """Add, self-update and Remove commits by each side, processed by the other side's members."""
    a = _by_side(creator, make, "a")
    ours1, ours2, ours3 = make.ours("o1"), make.ours("o2"), make.ours("o3")
    ts1, ts2, ts3 = make.ts("t1"), make.ts("t2"), make.ts("t3")
    grp = MixedGroup(a, make.group_id(f"commits-{creator}-{handshake}"))

    # Adds: each side adds a member of each side (one at a time, then two at once).
    grp.commit(a, add=[ts1], handshake=handshake)
    grp.commit(ts1, add=[ours1], handshake=handshake)
    grp.commit(ours1, add=[ts2, ours2], tree_in_welcome=False, handshake=handshake)
    grp.commit(ts2, add=[ours3, ts3], tree_in_welcome=False, handshake=handshake)
    grp.chat("after adds")

    # Self-updates (a commit with a path and no proposals) by each side.
    grp.commit(ours2, update=True, handshake=handshake)
    grp.commit(ts3, update=True, handshake=handshake)
    grp.commit(ours3, update=True, handshake=handshake)
    grp.commit(ts1, update=True, handshake=handshake)
    grp.chat("after updates")

    # Removes: each side removes a member of each side; then an Add and a Remove in one commit.
    grp.commit(ts2, remove=[ours2], handshake=handshake)
    grp.commit(ours1, remove=[ts3], handshake=handshake)
    grp.commit(ours3, remove=[ts2], handshake=handshake)
    grp.commit(ts1, remove=[ours1], handshake=handshake)
    grp.chat("after removes")

    # An Add and a Remove in one commit. Removes apply before Adds (§12.3) and an Add takes the leftmost
    # blank leaf (§12.1.1), so the added member can take the removed member's leaf. ts-mls then misses its
    # own removal (test_ts_mls_member_removed_while_its_leaf_is_refilled), so here a removed ts-mls member
    # always has a blank leaf to its left; our removed members get their leaf refilled.
    o4, t4, t5, o5 = make.ours("o4"), make.ts("t4"), make.ts("t5"), make.ours("o5")
    # o4 takes blank leaf 2; ours3's leaf 5 stays blank.
    grp.commit(ts1, add=[o4], remove=[ours3], handshake=handshake)
    # An add-only commit of ours carries no path: the new leaves are unmerged at the parents.
    grp.commit(o4, add=[t4, t5], handshake=handshake)
    grp.commit(a, remove=[ts1], handshake=handshake)
    # o5 takes leaf 1; t5's leaf 4 stays blank.
    grp.commit(o4, add=[o5], remove=[t5], handshake=handshake)
    # t6 takes o5's leaf 1: our o5 must still see its removal.
    grp.commit(t4, add=[make.ts("t6")], remove=[o5], handshake=handshake)
    grp.chat("at the end")


@pytest.mark.xfail(
    strict=True,
    raises=PeerError,
    reason="ts-mls 1.6.4 bug: a member removed by a commit whose Add refills its leaf does not notice its "
    "removal and fails decrypting the UpdatePath "
    "(clientState.js applyProposals: selfRemoved = own leaf blank)",
)
@pytest.mark.parametrize("committer", ["ours", "ts-mls"])
@pytest.mark.parametrize("suite", [1])
def test_ts_mls_member_removed_while_its_leaf_is_refilled(make: Factory, suite: int, committer: str) -> None:
    """RFC 9420 §12.3 applies Removes before Adds and §12.1.1 puts an Add in the leftmost blank leaf, so a
    commit "Remove leaf 1, Add X" puts X in leaf 1. The removed ts-mls member must end up removedFromGroup;
    ts-mls instead decides "removed" by whether its own leaf is blank afterwards, so it tries to decrypt the
    UpdatePath (which is not encrypted to it) and throws. It fails the same way when ts-mls commits."""
    a, victim, other = _by_side(committer, make, "a"), make.ts("victim"), make.ts("other")
    grp = MixedGroup(a, make.group_id("refill"))
    grp.commit(a, add=[victim, other])
    assert victim.leaf_index() == 1
    grp.commit(a, add=[make.ours("newcomer")], remove=[victim])


ROOT_OFF_PATH = (
    "ts-mls 1.6.4 bug: when the root is not on the committer's filtered direct path it derives "
    'commit_secret one "path" step too far (pathSecrets.js getCommitSecret/pathToRoot walk to the blank '
    'root); RFC 9420 §12.4.1: commit_secret = DeriveSecret(last path secret of the UpdatePath, "path") '
    "(mlswg/mls-protocol#690, #707)"
)


@pytest.mark.parametrize(
    "committer",
    [
        pytest.param("ours", marks=pytest.mark.xfail(strict=True, raises=PeerError, reason=ROOT_OFF_PATH)),
        pytest.param("ts-mls", marks=pytest.mark.xfail(strict=True, raises=MLSError, reason=ROOT_OFF_PATH)),
    ],
)
@pytest.mark.parametrize("suite", FULL_SUITES)
def test_commit_whose_filtered_path_misses_the_root(make: Factory, suite: int, committer: str) -> None:
    """Leaves 0 and 1 blank, committer at leaf 2: the root's copath child (node 1) has an empty resolution,
    so the filtered direct path is just node 5 and the UpdatePath has one node (RFC 9420 §4.1.2, §7.4).
    The commit secret comes from that node's path secret (§12.4.1); ts-mls takes one more step as if the
    blank root had a path secret, so the two sides derive different epochs whichever side commits."""
    other = "ts-mls" if committer == "ours" else "ours"
    a, b = make.ts("a"), make.ts("b")
    c, d = _by_side(committer, make, "c"), _by_side(other, make, "d")
    grp = MixedGroup(a, make.group_id("root-off-path"))
    grp.commit(a, add=[b, c, d])
    grp.commit(d, remove=[a])  # d's filtered path still has the root (node 1 covers b)
    grp.commit(c, remove=[b])  # now it does not: the other side's d cannot follow


@pytest.mark.parametrize("suite", FULL_SUITES)
def test_proposals_committed_by_the_other_side(make: Factory, suite: int) -> None:
    """Proposals sent by one side and committed by reference by the other."""
    alice, bob = make.ours("alice"), make.ts("bob")
    grp = MixedGroup(alice, make.group_id("proposals"))
    grp.commit(alice, add=[bob])

    # ts-mls proposes adding one of ours; we commit it (plus our own inline Add of a ts-mls member).
    carol, dave, erin = make.ours("carol"), make.ts("dave"), make.ts("erin")
    grp.propose(bob, "add", carol)
    grp.commit(alice, add=[dave])
    assert carol in grp.members and dave in grp.members

    # We propose a Remove; ts-mls commits it by reference.
    grp.propose(carol, "remove", dave)
    grp.commit(bob)
    assert dave not in grp.members

    # We propose an Add (PrivateMessage) and an Update of our leaf; ts-mls commits both. Our member must
    # switch to the Update's leaf key.
    grp.propose(alice, "add", erin, handshake="private")
    grp.propose(carol, "update", handshake="private")
    grp.commit(bob, handshake="private")
    assert erin in grp.members
    grp.chat("after a committed Update")
    grp.commit(carol, update=True)  # carol's own path starts from the leaf key of its Update

    # ts-mls proposes removing one of ours; we commit it.
    grp.propose(erin, "remove", alice, handshake="private")
    grp.commit(carol)
    grp.chat("at the end")


# ---- external joins -----------------------------------------------------------------------------------
#
# ts-mls 1.6.4 writes the GroupInfo external_pub extension's extension_data as the bare HPKE public key,
# and reads it that way. RFC 9420 §12.4.3.2 defines ``struct { HPKEPublicKey external_pub; } ExternalPub;``
# with ``opaque HPKEPublicKey<V>`` (§5.1.1), so extension_data must be the length-prefixed key (as we, and
# OpenMLS, write it). ts-mls fixed this after 1.6.4 (LukaJCB/ts-mls#449, "Update external_pub codec to
# use nested length prefix"). So with 1.6.4 a GroupInfo crosses sides only one way round: the external
# joiner can use a GroupInfo from a member of its own implementation, and the commit it makes is then
# processed by the other side's members.

TS_EXTERNAL_PUB = pytest.mark.xfail(
    strict=True,
    raises=PeerError,
    reason="ts-mls 1.6.4 bug: external_pub extension_data lacks the HPKEPublicKey<V> length prefix "
    "(RFC 9420 §12.4.3.2; fixed upstream in LukaJCB/ts-mls#449)",
)
OUR_READ_OF_TS_EXTERNAL_PUB = pytest.mark.xfail(
    strict=True,
    raises=MLSError,
    reason="ts-mls 1.6.4 bug: its GroupInfo's external_pub extension_data is the bare key, not "
    "ExternalPub{HPKEPublicKey<V>} (RFC 9420 §12.4.3.2; LukaJCB/ts-mls#449), so we reject it",
)
EXTERNAL_MODES = ["tree-in-group-info", "tree-separate", "resync"]


def _external_join_scenario(
    grp: MixedGroup, joiner: Member, via: Member, mode: str, *, ts_mls_dialect: bool = False
) -> None:
    if mode == "resync":
        grp.external_join(joiner, via, tree_in_group_info=True, ts_mls_dialect=ts_mls_dialect)
        grp.chat("before resync")
        # The joiner, already a member, rejoins (tree handed over separately), removing its old leaf.
        grp.external_join(joiner, via, tree_in_group_info=False, resync=True, ts_mls_dialect=ts_mls_dialect)
    else:
        grp.external_join(
            joiner, via, tree_in_group_info=mode == "tree-in-group-info", ts_mls_dialect=ts_mls_dialect
        )
    grp.chat("after external join")
    grp.commit(joiner, update=True, handshake="private")
    grp.commit(joiner, add=[_newcomer_of_other_side(joiner, grp)], tree_in_welcome=False)
    grp.chat("after the external joiner's commits")
    grp.commit(via, remove=[joiner])
    grp.chat("after removing the external joiner")


def _newcomer_of_other_side(m: Member, grp: MixedGroup) -> Member:
    """A fresh member of the other side than ``m`` (in ``grp``'s suite)."""
    suite = grp.suite
    if isinstance(m, TsMember):
        return PyMember(unique("late"), suite)
    ts = next(x for x in grp.members if isinstance(x, TsMember))
    return TsMember(ts.peer, unique("late"), suite)


@pytest.mark.parametrize(
    "via", ["ts-mls", "ours-in-ts-mls-dialect", pytest.param("ours", marks=TS_EXTERNAL_PUB)]
)
@pytest.mark.parametrize("mode", EXTERNAL_MODES)
@pytest.mark.parametrize("suite", FULL_SUITES)
def test_ts_mls_joins_our_group_externally(make: Factory, suite: int, mode: str, via: str) -> None:
    """A ts-mls client joins our group (created by our member, with members of both sides) by external
    commit, from the GroupInfo of a ts-mls member or of ours (as we make it, or with external_pub
    rewritten the way ts-mls 1.6.4 reads it); our members process the commit."""
    alice, bob, carol = make.ours("alice"), make.ts("bob"), make.ours("carol")
    grp = MixedGroup(alice, make.group_id(f"ext-ts-{mode}-{via}"))
    grp.commit(alice, add=[bob, carol], handshake="private")
    via_member = bob if via == "ts-mls" else alice
    _external_join_scenario(
        grp, make.ts("joiner"), via_member, mode, ts_mls_dialect=via == "ours-in-ts-mls-dialect"
    )


@pytest.mark.parametrize("via", ["ours", pytest.param("ts-mls", marks=OUR_READ_OF_TS_EXTERNAL_PUB)])
@pytest.mark.parametrize("mode", EXTERNAL_MODES)
@pytest.mark.parametrize("suite", FULL_SUITES)
def test_we_join_ts_mls_group_externally(make: Factory, suite: int, mode: str, via: str) -> None:
    """Our client joins a ts-mls group (created by ts-mls, with members of both sides) by external commit
    (``Group.external_join``), from the GroupInfo of our member or of a ts-mls member."""
    alice, bob, carol = make.ts("alice"), make.ts("bob"), make.ours("carol")
    grp = MixedGroup(alice, make.group_id(f"ext-ours-{mode}-{via}"))
    grp.commit(alice, add=[bob, carol], handshake="private")
    _external_join_scenario(grp, make.ours("joiner"), carol if via == "ours" else bob, mode)


# ---- the other suites, shorter ------------------------------------------------------------------------


@pytest.mark.parametrize("suite", OTHER_SUITES)
def test_other_suites(make: Factory, suite: int) -> None:
    """A shorter lifecycle in both directions: Welcome joins, messages, updates, removes, external joins."""
    alice, bob, carol, dave = make.ours("alice"), make.ts("bob"), make.ours("carol"), make.ts("dave")
    grp = MixedGroup(alice, make.group_id("short"))
    grp.commit(alice, add=[bob], tree_in_welcome=False)
    grp.commit(bob, add=[carol], handshake="private")
    grp.chat()
    grp.commit(carol, update=True, handshake="private")
    grp.commit(bob, update=True)
    grp.external_join(dave, bob, tree_in_group_info=True)
    grp.external_join(make.ours("erin"), carol, tree_in_group_info=False)
    grp.chat("after external joins")
    grp.commit(dave, remove=[alice], handshake="private")
    # (Not carol removing bob: that commit's filtered direct path would miss the root, see
    # test_commit_whose_filtered_path_misses_the_root.)
    grp.commit(bob, remove=[carol])
    grp.chat("at the end")
