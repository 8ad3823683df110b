"""Scenario tests: several members of this implementation run a group through its life (RFC 9420 §11, §12).

After every step all current members must agree on the epoch, the epoch_authenticator, the tree hash and
the exporter output (see :func:`tests.group_helpers.check_agreement`), and removed members are inactive.
Suites 1, 2 and 3 run every scenario; suites 4-7 run one quicker smoke scenario.
"""

from __future__ import annotations

import random

import pytest

from mls.errors import MLSError, StateError, ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.handshake_framing import HandshakeFraming
from mls.group.results import ApplicationMessage, ProposalMessage
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig
from mls.schedule.secret_tree import RatchetConfig
from mls.wire.framing import MLSMessage, PublicMessage, WireFormat
from mls.wire.proposals import ProposalOrRefType, PSKType
from mls.wire.welcome import Welcome

from .group_helpers import (
    MAIN_SUITES,
    OTHER_SUITES,
    Harness,
    build_group,
    expect_rejected,
    group_view,
    wire_of,
)

WIRE = {
    HandshakeFraming.public: WireFormat.mls_public_message,
    HandshakeFraming.private: WireFormat.mls_private_message,
}


@pytest.fixture(params=MAIN_SUITES, ids=lambda s: f"suite{s}")
def suite(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(params=list(HandshakeFraming), ids=lambda h: f"{h.value}")
def handshake(request: pytest.FixtureRequest) -> HandshakeFraming:
    return HandshakeFraming(request.param)


def commit_proposals(message: bytes) -> list[int]:
    """The ProposalOrRef types of a PublicMessage commit."""
    body = MLSMessage.from_bytes(message).body
    assert isinstance(body, PublicMessage) and body.content.commit is not None
    return [p.type for p in body.content.commit.proposals]


# ---- create and add ---------------------------------------------------------------------------------


def test_create_single_member_group(suite: int) -> None:
    h = Harness(suite)
    alice = h.create("alice", b"group-1")
    g = alice.g
    assert (g.epoch, g.group_id, g.own_leaf, len(g.members())) == (0, b"group-1", 0, 1)
    assert g.export("test", b"ctx", 32) != g.export("test", b"other", 32)
    with pytest.raises(ValidationError) as e:
        g.export("test", b"ctx", 0)
    assert e.value.rule == "8.5/exporter-length"
    # a one-member group can move on by itself (an empty commit carries a path)
    before = g.epoch_authenticator
    staged = h.commit(alice)
    assert staged.proposals == [] and g.epoch == 1 and g.epoch_authenticator != before


def test_add_one(suite: int, handshake: HandshakeFraming) -> None:
    h = Harness(suite)
    alice = h.create()
    (bob,), staged = h.add(alice, ["bob"], CommitOptions(handshake=handshake))
    assert wire_of(staged.commit or b"") == WIRE[handshake]
    assert staged.welcome is not None and wire_of(staged.welcome) == WireFormat.mls_welcome
    assert (alice.g.epoch, bob.g.epoch, bob.leaf) == (1, 1, 1)
    h.everyone_talks()
    (carol,), _ = h.add(bob, ["carol"], CommitOptions(handshake=handshake), echo=True)
    assert carol.leaf == 2
    h.everyone_talks()


def test_add_many_with_tree_in_welcome(suite: int) -> None:
    h = Harness(suite)
    alice = h.create()
    names = [f"m{i}" for i in range(6)]
    new, staged = h.add(alice, names)
    assert staged.welcome is not None
    welcome = MLSMessage.from_bytes(staged.welcome).body
    assert isinstance(welcome, Welcome) and len(welcome.secrets) == 6
    assert len(alice.g.members()) == 7 and sorted(m.leaf for m in new) == list(range(1, 7))
    h.everyone_talks()
    # a second batch, committed by a joiner, in one PrivateMessage commit
    h.add(new[2], ["x", "y", "z"], CommitOptions(handshake=HandshakeFraming.private))
    assert len(alice.g.members()) == 10
    h.everyone_talks()


def test_add_many_with_tree_out_of_band(suite: int) -> None:
    h, (alice, _bob) = build_group(suite, ["alice", "bob"])
    joiners = [h.new_client(f"m{i}") for i in range(6)]
    bundles = [m.client.key_package() for m in joiners]
    opts = CommitOptions(add=[b.key_package for b in bundles], ratchet_tree_in_welcome=False)
    staged = alice.g.commit(opts)
    h.deliver_commit(alice, staged)
    assert staged.welcome is not None and staged.ratchet_tree is not None
    for m, bundle in zip(joiners, bundles):
        with pytest.raises(ValidationError) as e:
            m.client.join(staged.welcome)
        assert e.value.rule == "12.4.3.3/ratchet-tree-present"
        assert bundle.ref in m.client.key_packages  # a failed join does not consume the KeyPackage
        m.group = m.client.join(staged.welcome, staged.ratchet_tree)
        assert bundle.ref not in m.client.key_packages
        h.members.append(m)
    h.check()
    h.everyone_talks()


def test_join_with_welcome_of_another_client_fails(suite: int) -> None:
    h, (alice, _bob) = build_group(suite, ["alice", "bob"])
    carol, stranger = h.new_client("carol"), h.new_client("stranger")
    stranger.client.key_package()
    bundle = carol.client.key_package()
    staged = h.commit(alice, CommitOptions(add=[bundle.key_package]), joiners=[(carol, bundle)])
    assert staged.welcome is not None
    with pytest.raises(ValidationError) as e:
        stranger.client.join(staged.welcome)
    assert e.value.rule == "12.4.3.1/welcome-key-package-ref"


# ---- remove -----------------------------------------------------------------------------------------


def test_remove(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol, dave, erin) = build_group(suite, ["alice", "bob", "carol", "dave", "erin"])
    carol_view = group_view(carol.g)
    staged = bob.g.commit(CommitOptions(remove=[carol.leaf], handshake=handshake))
    assert wire_of(staged.commit or b"") == WIRE[handshake]
    removed = carol.g.process(staged.commit or b"")
    assert isinstance(removed, StagedCommit) and removed.removed_self and removed.epoch is None
    carol.g.merge(removed)
    carol.removed = True
    h.deliver_commit(bob, staged)
    assert group_view(carol.g) == carol_view  # the removed member keeps its last epoch, inactive
    h.check()
    assert alice.g.state.tree.leaf(2) is None
    # the removed member cannot read the new epoch
    msg = alice.g.protect(b"secret")
    with pytest.raises(MLSError):
        carol.g.process(msg)
    for m in h.others(alice):
        m.g.process(msg)
    # two removes in one commit, by a member that is not the creator
    h.commit(dave, CommitOptions(remove=[bob.leaf, erin.leaf], handshake=handshake), echo=True)
    assert bob.removed and erin.removed and [m.name for m in h.active] == ["alice", "dave"]
    # the freed leaves are reused by new members, leftmost first
    (frank,), _ = h.add(alice, ["frank"])
    assert frank.leaf == 1
    h.everyone_talks()


# ---- updates --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("echo", [False, True], ids=["merge_pending", "echo"])
def test_self_update(suite: int, handshake: HandshakeFraming, echo: bool) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"])
    for committer in (bob, alice, carol):
        old_key = committer.g.state.keys.leaf_key.public_key
        old_auth = alice.g.epoch_authenticator
        staged = h.commit(committer, CommitOptions(force_path=True, handshake=handshake), echo=echo)
        assert staged.proposals == []
        assert wire_of(staged.commit or b"") == WIRE[handshake]
        assert committer.g.state.keys.leaf_key.public_key != old_key
        assert alice.g.epoch_authenticator != old_auth
        h.everyone_talks()
    assert alice.g.epoch == 4


def test_update_proposal_committed_by_another_member(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol, dave) = build_group(suite, ["alice", "bob", "carol", "dave"])
    old_key = bob.g.state.keys.leaf_key.public_key
    message, ref = bob.g.propose_update(handshake)
    assert wire_of(message) == WIRE[handshake]
    for m in h.others(bob):
        out = m.g.process(message)
        assert isinstance(out, ProposalMessage) and out.ref == ref and out.sender.leaf_index == bob.leaf
    staged = h.commit(alice, CommitOptions(handshake=HandshakeFraming.public))
    assert [p.ref for p in staged.proposals] == [ref]
    assert commit_proposals(staged.commit or b"") == [ProposalOrRefType.reference]
    new_key = bob.g.state.keys.leaf_key.public_key
    assert new_key != old_key
    leaf = alice.g.state.tree.leaf(bob.leaf)
    assert leaf is not None and leaf.encryption_key == new_key
    # bob still reads application data and later UpdatePaths (encrypted to his new leaf key)
    h.broadcast(carol, b"after the update")
    h.commit(dave, CommitOptions(force_path=True, handshake=handshake))
    h.commit(carol, CommitOptions(remove=[alice.leaf], handshake=handshake))
    h.everyone_talks()


def test_several_updates_and_a_remove_in_one_commit(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol, dave, erin) = build_group(suite, ["alice", "bob", "carol", "dave", "erin"])
    refs = []
    for m in (bob, carol):
        message, ref = m.g.propose_update(handshake)
        h.propose(m, message)
        refs.append(ref)
    message, ref = dave.g.propose_remove(erin.leaf, handshake)
    h.propose(dave, message)
    refs.append(ref)
    staged = h.commit(alice, CommitOptions(handshake=handshake), echo=True)
    assert sorted(p.ref for p in staged.proposals if p.ref) == sorted(refs)
    assert erin.removed
    h.everyone_talks()


# ---- proposals by reference -----------------------------------------------------------------------------


def test_add_and_remove_by_reference(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol, dave) = build_group(suite, ["alice", "bob", "carol", "dave"])
    erin = h.new_client("erin")
    bundle = erin.client.key_package()
    add_msg, add_ref = bob.g.propose_add(bundle.key_package, handshake)
    h.propose(bob, add_msg)
    rm_msg, rm_ref = carol.g.propose_remove(dave.leaf, handshake)
    h.propose(carol, rm_msg)
    assert wire_of(add_msg) == wire_of(rm_msg) == WIRE[handshake]
    # while proposals are pending nobody sends application data (§12.4)
    with pytest.raises(StateError):
        alice.g.protect(b"too early")
    staged = h.commit(alice, CommitOptions(handshake=HandshakeFraming.public), joiners=[(erin, bundle)])
    assert {p.ref for p in staged.proposals} == {add_ref, rm_ref}
    assert commit_proposals(staged.commit or b"") == [ProposalOrRefType.reference] * 2
    assert dave.removed and erin.leaf == dave.leaf  # the Remove is applied before the Add (§12.3)
    h.everyone_talks()


def test_proposals_by_reference_and_by_value_mixed(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"])
    msg, ref = carol.g.propose_update(handshake)
    h.propose(carol, msg)
    dave, erin = h.new_client("dave"), h.new_client("erin")
    b1 = dave.client.key_package()
    add_msg, _ = bob.g.propose_add(b1.key_package, handshake)
    h.propose(bob, add_msg)
    b2 = erin.client.key_package()
    staged = h.commit(
        alice, CommitOptions(add=[b2.key_package], handshake=handshake), joiners=[(dave, b1), (erin, b2)]
    )
    assert sum(p.ref is None for p in staged.proposals) == 1 and len(staged.proposals) == 3
    assert ref in {p.ref for p in staged.proposals}
    h.everyone_talks()


def test_commit_without_pending_proposals_drops_them(suite: int) -> None:
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    msg, _ = bob.g.propose_update()
    h.propose(bob, msg)
    old = bob.g.state.keys.leaf_key.public_key
    staged = h.commit(alice, CommitOptions(include_pending=False, force_path=True))
    assert staged.proposals == []
    assert bob.g.state.keys.leaf_key.public_key == old  # the Update was not committed
    assert all(not m.g.state.proposals for m in h.active)  # the proposal cache is per epoch
    h.everyone_talks()


# ---- PSKs ------------------------------------------------------------------------------------------------


def test_external_psk(suite: int, handshake: HandshakeFraming) -> None:
    h, members = build_group(suite, ["alice", "bob", "carol"])
    for m in members:
        m.psks.external[b"shared-id"] = b"the shared psk value"
        m.psks.external[b"other-id"] = b"another psk"
    alice, bob, _carol = members
    plain = group_view(alice.g)
    staged = h.commit(alice, CommitOptions(psks=[alice.g.new_psk_id(b"shared-id")], handshake=handshake))
    assert [p.proposal.body.psk.psktype for p in staged.proposals] == [PSKType.external]  # type: ignore[union-attr]
    assert group_view(alice.g) != plain
    # a PSK proposed by reference, with an Add whose joiner also holds the PSK
    dave = h.new_client("dave")
    dave.psks.external[b"other-id"] = b"another psk"
    msg, _ = bob.g.propose_psk(bob.g.new_psk_id(b"other-id"), handshake)
    h.propose(bob, msg)
    h.commit(alice, CommitOptions(handshake=handshake))  # commits the PSK proposal by reference
    bundle = dave.client.key_package()
    h.commit(
        bob,
        CommitOptions(add=[bundle.key_package], psks=[bob.g.new_psk_id(b"other-id")]),
        joiners=[(dave, bundle)],
    )
    h.everyone_talks()


def test_external_psk_missing(suite: int) -> None:
    h, members = build_group(suite, ["alice", "bob", "carol", "dave"])
    alice, bob, carol, dave = members
    for m in (alice, bob, carol):
        m.psks.external[b"id"] = b"psk"
    # the committer needs the PSK: a failed commit leaves no pending commit and no new key
    refs = dave.key_refs()
    before = dave.g.to_bytes()
    with pytest.raises(ValidationError) as e:
        dave.g.commit(CommitOptions(psks=[dave.g.new_psk_id(b"id")], force_path=True))
    assert e.value.rule == "12.4.2/commit-psk-available"
    assert dave.g.pending_commit is None and dave.key_refs() == refs and dave.g.to_bytes() == before
    # a member without the PSK cannot process the commit; its state is untouched
    erin, frank = h.new_client("erin"), h.new_client("frank")
    erin.psks.external[b"id"] = b"psk"
    be, bf = erin.client.key_package(), frank.client.key_package()
    staged = alice.g.commit(
        CommitOptions(psks=[alice.g.new_psk_id(b"id")], add=[be.key_package, bf.key_package])
    )
    expect_rejected(dave.g, staged.commit or b"", "12.4.2/commit-psk-available", ValidationError)
    h.stale.append(dave)
    h.deliver_commit(alice, staged)
    assert staged.welcome is not None
    erin.group = erin.client.join(staged.welcome)
    h.members.append(erin)
    with pytest.raises(ValidationError) as e:
        frank.client.join(staged.welcome)
    assert e.value.rule == "12.4.3.1/welcome-psk-available"
    h.check()
    # a member holding a *different* value for the id derives other secrets: the confirmation tag fails
    carol.psks.external[b"id"] = b"not the same psk"
    staged = bob.g.commit(CommitOptions(psks=[bob.g.new_psk_id(b"id")]))
    expect_rejected(carol.g, staged.commit or b"", "6.1/confirmation-tag", ValidationError)


def test_resumption_psk(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"])
    h.commit(bob, CommitOptions(force_path=True))
    (dave,), _ = h.add(carol, ["dave"])
    h.commit(alice, CommitOptions(force_path=True))
    assert alice.g.epoch == 4
    # the resumption PSK of the current epoch: everyone has it
    h.commit(carol, CommitOptions(psks=[carol.g.new_psk_id(resumption_epoch=4)], handshake=handshake))
    # (everyone talks first, so that the receivers' ratchets for the committer are started: see
    # test_group_robustness.test_rejected_private_message_of_unstarted_sender_leaves_state_unchanged)
    h.everyone_talks()
    # epoch 2's resumption PSK, by reference; dave joined in epoch 3 and does not have it
    msg, _ = bob.g.propose_psk(bob.g.new_psk_id(resumption_epoch=2), handshake)
    h.propose(bob, msg)
    staged = alice.g.commit(CommitOptions(handshake=handshake))
    expect_rejected(dave.g, staged.commit or b"", "12.4.2/commit-psk-available", ValidationError)
    h.stale.append(dave)
    h.deliver_commit(alice, staged)
    h.check()
    h.everyone_talks()
    # an epoch that was never retained
    with pytest.raises(ValidationError):
        alice.g.commit(CommitOptions(psks=[alice.g.new_psk_id(resumption_epoch=99)]))
    assert alice.g.pending_commit is None


# ---- application messages: ordering, replay, retention -----------------------------------------------


def ooo_config(tolerance: int = 5, distance: int = 1000, past_epochs: int = 2) -> GroupConfig:
    return GroupConfig(
        ratchet=RatchetConfig(out_of_order_tolerance=tolerance, max_forward_distance=distance),
        past_epochs=past_epochs,
    )


def test_out_of_order_within_window(suite: int) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"], ooo_config(tolerance=5))
    messages = [(f"message {i}".encode(), bob.g.protect(f"message {i}".encode())) for i in range(5)]
    for data, msg in reversed(messages):
        out = alice.g.process(msg)
        assert isinstance(out, ApplicationMessage) and out.data == data
    shuffled = list(messages)
    random.Random(7).shuffle(shuffled)
    for data, msg in shuffled:
        out = carol.g.process(msg)
        assert isinstance(out, ApplicationMessage) and out.data == data
    h.check()


def test_out_of_order_beyond_tolerance_rejected(suite: int) -> None:
    h, (alice, bob) = build_group(suite, ["alice", "bob"], ooo_config(tolerance=3))
    messages = [bob.g.protect(b"m%d" % i) for i in range(6)]
    assert isinstance(alice.g.process(messages[5]), ApplicationMessage)
    for late in (1, 0):  # more than 3 generations below the newest: keys erased
        expect_rejected(alice.g, messages[late], "9.2/generation-consumed", ValidationError)
    for ok in (4, 2, 3):
        out = alice.g.process(messages[ok])
        assert isinstance(out, ApplicationMessage) and out.data == b"m%d" % ok
    h.check()


def test_beyond_max_forward_distance_rejected(suite: int) -> None:
    h, (alice, bob) = build_group(suite, ["alice", "bob"], ooo_config(distance=3))
    messages = [bob.g.protect(b"m%d" % i) for i in range(6)]
    assert isinstance(alice.g.process(messages[0]), ApplicationMessage)
    expect_rejected(
        alice.g, messages[5], "15.3/forward-distance", ValidationError
    )  # 4 generations ahead of generation 1
    for i in (4, 5, 2, 1, 3):
        out = alice.g.process(messages[i])
        assert isinstance(out, ApplicationMessage) and out.data == b"m%d" % i
    h.check()


def test_replayed_application_message_rejected(suite: int) -> None:
    h, (alice, bob) = build_group(suite, ["alice", "bob"])
    msg = bob.g.protect(b"once")
    assert isinstance(alice.g.process(msg), ApplicationMessage)
    expect_rejected(alice.g, msg, "9.2/generation-consumed", ValidationError)
    expect_rejected(alice.g, msg, "9.2/generation-consumed", ValidationError)
    h.check()


@pytest.mark.parametrize("retention", [1, 2])
def test_late_messages_of_past_epochs(suite: int, retention: int) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"], ooo_config(past_epochs=retention))
    epoch = alice.g.epoch
    late = [bob.g.protect(b"late %d" % i) for i in range(retention + 1)]
    old_commit = h.commit(alice, CommitOptions(force_path=True)).commit or b""
    for i in range(retention):
        if i:
            h.commit(alice, CommitOptions(force_path=True))
        out = carol.g.process(late[i])
        assert isinstance(out, ApplicationMessage) and out.data == b"late %d" % i and out.epoch == epoch
        expect_rejected(
            carol.g, late[i], "9.2/generation-consumed", ValidationError
        )  # no replay in a past epoch either
    h.commit(alice, CommitOptions(force_path=True))
    assert carol.g.epoch == epoch + retention + 1
    expect_rejected(carol.g, late[retention], "6/past-epoch-retained", ValidationError)  # no longer retained
    expect_rejected(
        carol.g, old_commit, "6/message-epoch", ValidationError
    )  # handshake of a past epoch: never
    h.everyone_talks()


def test_no_past_epoch_retention(suite: int) -> None:
    h, (alice, bob) = build_group(suite, ["alice", "bob"], ooo_config(past_epochs=0))
    late = bob.g.protect(b"late")
    h.commit(alice, CommitOptions(force_path=True))
    expect_rejected(alice.g, late, "6/past-epoch-retained", ValidationError)


# ---- pending commits ----------------------------------------------------------------------------------


def test_own_commit_recognised(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob) = build_group(suite, ["alice", "bob"])
    staged = alice.g.commit(CommitOptions(force_path=True, handshake=handshake))
    back = alice.g.process(staged.commit or b"")
    assert back is staged
    with pytest.raises(StateError):  # one pending commit at a time
        alice.g.commit()
    alice.g.merge(back)
    h.deliver_commit(alice, staged, skip=[alice])
    h.check()
    # an own commit with an Add and a Remove, handed back
    (carol,), _ = h.add(bob, ["carol"], CommitOptions(handshake=handshake), echo=True)
    h.commit(carol, CommitOptions(remove=[alice.leaf], handshake=handshake), echo=True)
    assert alice.removed
    h.everyone_talks()


def test_discard_pending_commit(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"])
    before, view, refs = alice.g.to_bytes(), group_view(alice.g), alice.key_refs()
    dave = h.new_client("dave")
    staged = alice.g.commit(
        CommitOptions(add=[dave.client.key_package().key_package], force_path=True, handshake=handshake)
    )
    assert staged.state is not None
    new_leaf = staged.state.keys.leaf_key.key_ref
    assert new_leaf in alice.key_store
    alice.g.discard_pending_commit()
    assert alice.g.pending_commit is None
    assert group_view(alice.g) == view and alice.g.to_bytes() == before
    assert new_leaf not in alice.key_store and alice.key_refs() == refs
    with pytest.raises(StateError):
        alice.g.discard_pending_commit()
    with pytest.raises(StateError):
        alice.g.merge_pending_commit()
    # the group carries on as if the commit never existed
    h.everyone_talks()
    h.commit(bob, CommitOptions(force_path=True, handshake=handshake))
    h.commit(alice, CommitOptions(remove=[carol.leaf], handshake=handshake))
    h.everyone_talks()


def test_concurrent_commits_first_one_wins(suite: int, handshake: HandshakeFraming) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"])
    losing = bob.g.commit(CommitOptions(force_path=True, handshake=handshake))
    winning = alice.g.commit(CommitOptions(force_path=True, handshake=handshake))
    # the delivery service orders alice's commit first; bob has a pending commit of his own
    out = bob.g.process(winning.commit or b"")
    assert isinstance(out, StagedCommit) and out is not losing
    bob.g.merge(out)
    assert bob.g.pending_commit is None
    carol.g.merge(carol.g.process(winning.commit or b""))  # type: ignore[arg-type]
    alice.g.merge_pending_commit()
    h.check()
    # bob's commit is for a past epoch now
    for m in (alice, carol):
        expect_rejected(m.g, losing.commit or b"", "6/message-epoch", ValidationError)
    h.everyone_talks()


def test_merge_of_stale_staged_commit_refused(suite: int) -> None:
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    staged = h.commit(alice, CommitOptions(force_path=True))
    with pytest.raises(StateError):
        bob.g.merge(staged)  # alice's state for the epoch bob is already in
    h.check()


# ---- a longer random walk -------------------------------------------------------------------------------


def test_random_walk(suite: int) -> None:
    """Seeded random sequences of adds, removes, updates, PSKs and messages in both wire formats."""
    rng = random.Random(suite)
    h, _ = build_group(suite, ["m0", "m1", "m2"])
    counter = 3
    for m in h.members:
        m.psks.external[b"walk"] = b"walk psk"
    for _step in range(14):
        hs = rng.choice(list(HandshakeFraming))
        committer = rng.choice(h.active)
        op = rng.choice(["add", "remove", "update", "propose_update", "psk", "talk"])
        if op == "add" or len(h.active) < 3:
            new, _ = h.add(committer, [f"m{counter}"], CommitOptions(handshake=hs), echo=rng.random() < 0.5)
            new[0].psks.external[b"walk"] = b"walk psk"
            counter += 1
        elif op == "remove":
            victim = rng.choice(h.others(committer))
            h.commit(committer, CommitOptions(remove=[victim.leaf], handshake=hs))
        elif op == "update":
            h.commit(committer, CommitOptions(force_path=True, handshake=hs), echo=rng.random() < 0.5)
        elif op == "propose_update":
            proposer = rng.choice(h.others(committer))
            msg, _ = proposer.g.propose_update(hs)
            h.propose(proposer, msg)
            h.commit(committer, CommitOptions(handshake=hs))
        elif op == "psk":
            h.commit(committer, CommitOptions(psks=[committer.g.new_psk_id(b"walk")], handshake=hs))
        h.everyone_talks()
    h.check()


# ---- the other suites -------------------------------------------------------------------------------


@pytest.mark.parametrize("suite_id", OTHER_SUITES, ids=lambda s: f"suite{s}")
def test_smoke_other_suites(suite_id: int) -> None:
    h, (alice, bob, carol, dave) = build_group(suite_id, ["alice", "bob", "carol", "dave"])
    for m in h.members:
        m.psks.external[b"id"] = b"psk"
    h.everyone_talks()
    msg, _ = bob.g.propose_update(HandshakeFraming.private)
    h.propose(bob, msg)
    h.commit(carol, CommitOptions(handshake=HandshakeFraming.private), echo=True)
    h.commit(alice, CommitOptions(remove=[dave.leaf], psks=[alice.g.new_psk_id(b"id")]))
    h.add(bob, ["erin", "frank"], CommitOptions(handshake=HandshakeFraming.private))
    h.commit(carol, CommitOptions(psks=[carol.g.new_psk_id(resumption_epoch=carol.g.epoch)], force_path=True))
    messages = [bob.g.protect(b"%d" % i) for i in range(3)]
    for i in (2, 0, 1):
        out = alice.g.process(messages[i])
        assert isinstance(out, ApplicationMessage) and out.data == b"%d" % i
    h.everyone_talks()
