"""Pending commits in the ts-mls interop peer: created, not adopted until merged, droppable.

A device behind a delivery service must not adopt its own commit before the service accepts it: when
another member's commit wins the epoch, the device drops its own (``discard_pending``), processes the
winner's and commits again. These tests drive the peer's ``pending`` commits, ``merge_pending``,
``discard_pending``, ``pending_commit`` and ``group_info(pending=True)`` between two peer processes (so
state travels only as bytes), and check that the GroupInfo handed out for a pending commit is the new
epoch's, carries the ratchet tree, and lets a newcomer join by external commit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from mls.group.group import Group
from mls.wire.extensions import ExtensionType, ExternalPub
from mls.wire.framing import WireFormat
from mls.wire.group_info import GroupInfo

from .interop_helpers import PyMember
from .test_peer_selfcheck import assert_same_epoch, exchange, roundtrip
from .ts_mls_peer import Handshake, PeerError, TsMlsPeer

_names = itertools.count()
Member = tuple[TsMlsPeer, str]


def fresh(prefix: str) -> str:
    """A client name unique within this module's peer processes."""
    return f"pending-{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def peers(ts_mls_peer_factory: Callable[[], TsMlsPeer]) -> Iterator[tuple[TsMlsPeer, TsMlsPeer]]:
    a, b = ts_mls_peer_factory(), ts_mls_peer_factory()
    yield a, b
    a.close()
    b.close()


def three_members(peers: tuple[TsMlsPeer, TsMlsPeer], suite: int = 1) -> tuple[Member, Member, Member]:
    """alice (peer a) creates a group and adds bob and carol (peer b) in one commit: epoch 1."""
    pa, pb = peers
    alice, bob, carol = fresh("alice"), fresh("bob"), fresh("carol")
    pa.new_client(alice, alice.encode(), suite)
    pb.new_client(bob, bob.encode(), suite)
    pb.new_client(carol, carol.encode(), suite)
    pa.create_group(alice, alice.encode())
    res = pa.add(alice, [pb.key_package(bob), pb.key_package(carol)], ratchet_tree_extension=True)
    assert res.welcome is not None and not res.pending and res.group_info is None
    pb.join(bob, res.welcome)
    pb.join(carol, res.welcome)
    return (pa, alice), (pb, bob), (pb, carol)


def group_info_of(data: bytes) -> GroupInfo:
    """Decode an MLSMessage(GroupInfo) with this project's decoder (which must re-encode it exactly)."""
    msg = roundtrip(data, WireFormat.mls_group_info)
    assert msg.group_info is not None
    return msg.group_info


def extension(gi: GroupInfo, ext_type: ExtensionType) -> bytes | None:
    return next((e.extension_data for e in gi.extensions if e.extension_type == ext_type), None)


def test_pending_commit_waits_for_merge(peers: tuple[TsMlsPeer, TsMlsPeer]) -> None:
    A, B, C = three_members(peers)
    (pa, alice), (pb, bob) = A, B
    before = pa.epoch_authenticator(alice)

    res = pa.update(alice, pending=True)
    assert res.pending and res.epoch == 2 and res.welcome is None
    roundtrip(res.commit, WireFormat.mls_public_message)
    # Not adopted: alice is still at epoch 1, with the same secrets.
    assert pa.epoch_authenticator(alice) == before
    assert pa.pending_commit(alice) == 2

    # The bundle's GroupInfo is the new epoch's, with the new tree and external_pub.
    assert res.group_info is not None
    gi = group_info_of(res.group_info)
    assert gi.group_context.epoch == 2
    assert extension(gi, ExtensionType.ratchet_tree) == res.ratchet_tree
    external_pub = extension(gi, ExtensionType.external_pub)
    assert external_pub is not None
    assert len(ExternalPub.from_bytes(external_pub).external_pub) == 32  # X25519, as RFC 9420 frames it
    again = pa.group_info(alice, pending=True, ratchet_tree_extension=True)
    assert again.epoch == 2 and again.ratchet_tree == res.ratchet_tree
    assert pa.group_info(alice).epoch == 1

    for peer, c in (B, C):
        assert peer.process(c, res.commit).epoch == 2
    assert pa.merge_pending(alice) == 2
    assert pa.pending_commit(alice) is None
    assert_same_epoch([A, B, C], 2)
    exchange(A, [B, C], b"after a merged pending commit")
    exchange(B, [A, C], b"and back")
    assert pb.epoch_authenticator(bob)[1] == 2


@pytest.mark.parametrize("joiner_side", ["ours", "ts-mls"])
def test_pending_group_info_admits_an_external_joiner(
    peers: tuple[TsMlsPeer, TsMlsPeer], joiner_side: str
) -> None:
    """The pending commit's GroupInfo (RFC external_pub) lets this project's client join by external
    commit; ts-mls joins from the same epoch's GroupInfo in its own dialect (``external_pub="ts-mls"``)."""
    A, B, C = three_members(peers)
    pa, alice = A
    _, pb = peers
    res = pa.update(alice, pending=True)
    ts_dialect = pa.group_info(alice, pending=True, ratchet_tree_extension=True, external_pub="ts-mls")
    for peer, c in (B, C):
        peer.process(c, res.commit)
    pa.merge_pending(alice)
    assert res.group_info is not None
    if joiner_side == "ours":
        joiner = PyMember(fresh("dave"), 1)
        group, commit = Group.external_join(
            joiner.client.key_store,
            res.group_info,  # the tree comes from the GroupInfo's ratchet_tree extension
            signer=joiner.client.signer,
            credential=joiner.client.credential,
        )
        assert group.epoch == 3
    else:
        dave = fresh("dave")
        pb.new_client(dave, dave.encode(), 1)
        commit = pb.external_join(dave, ts_dialect.group_info).commit
    for peer, c in (A, B, C):
        assert peer.process(c, commit).epoch == 3
    assert_same_epoch([A, B, C], 3)
    if joiner_side == "ours":
        assert group.epoch_authenticator == pa.epoch_authenticator(alice)[0]
    else:
        assert_same_epoch([A, B, C, (pb, dave)], 3)


def test_pending_add_welcomes_after_merge(peers: tuple[TsMlsPeer, TsMlsPeer]) -> None:
    A, B, C = three_members(peers)
    pa, alice = A
    _, pb = peers
    erin = fresh("erin")
    pb.new_client(erin, erin.encode(), 1)
    res = pa.add(alice, [pb.key_package(erin)], ratchet_tree_extension=True, pending=True)
    assert res.pending and res.welcome is not None and res.epoch == 2
    for peer, c in (B, C):
        peer.process(c, res.commit)
    assert pa.merge_pending(alice) == 2
    assert pb.join(erin, res.welcome).epoch == 2
    assert_same_epoch([A, B, C, (pb, erin)], 2)
    exchange((pb, erin), [A, B, C], b"hello from the newcomer")


@pytest.mark.parametrize("handshake", ["public", "private"])
def test_losing_commit_is_discarded_and_retried(
    peers: tuple[TsMlsPeer, TsMlsPeer], handshake: Handshake
) -> None:
    """bob and carol commit at the same epoch; the 'log' takes bob's; carol drops hers and retries."""
    A, B, C = three_members(peers)
    (pa, alice), (pb, bob), (_, carol) = A, B, C
    at_one = pb.epoch_authenticator(carol)
    bobs = pb.update(bob, handshake=handshake, pending=True)
    carols = pb.update(carol, handshake=handshake, pending=True)
    assert bobs.epoch == carols.epoch == 2

    # bob's wins: bob merges, alice takes it; carol drops hers, keeps epoch 1 and takes bob's.
    assert pb.merge_pending(bob) == 2
    assert pa.process(alice, bobs.commit).epoch == 2
    assert pb.discard_pending(carol) == 1
    assert pb.pending_commit(carol) is None
    assert pb.epoch_authenticator(carol) == at_one
    assert pb.process(carol, bobs.commit).epoch == 2
    assert_same_epoch([A, B, C], 2)

    # carol retries at the new epoch and wins this time.
    retry = pb.update(carol, handshake=handshake, pending=True)
    assert retry.epoch == 3
    assert pa.process(alice, retry.commit).epoch == 3
    assert pb.process(bob, retry.commit).epoch == 3
    assert pb.merge_pending(carol) == 3
    assert_same_epoch([A, B, C], 3)
    exchange(C, [A, B], b"carol got there")


def test_discarded_private_commit_spends_the_handshake_key(peers: tuple[TsMlsPeer, TsMlsPeer]) -> None:
    """ts-mls does not return the handshake generation a discarded private commit used: no reuse."""
    A, B, C = three_members(peers)
    pa, alice = A
    pa.update(alice, handshake="private", pending=True)
    pa.discard_pending(alice)
    with pytest.raises(PeerError, match="handshake"):
        pa.update(alice, handshake="private")
    with pytest.raises(PeerError, match="handshake"):
        pa.propose(alice, "remove", leaf_index=1, handshake="private")
    res = pa.update(alice, handshake="public")  # public framing uses no secret-tree key
    for peer, c in (B, C):
        peer.process(c, res.commit)
    # A new epoch has a new secret tree: private handshakes are fine again.
    res = pa.update(alice, handshake="private")
    for peer, c in (B, C):
        peer.process(c, res.commit)
    assert_same_epoch([A, B, C], 3)


def test_pending_commit_blocks_other_state_changes(peers: tuple[TsMlsPeer, TsMlsPeer]) -> None:
    A, B, C = three_members(peers)
    (pa, alice), (pb, bob) = A, B
    incoming = pb.send(bob, b"sent while alice has a commit pending")
    other_commit = pb.update(bob, pending=True)
    res = pa.update(alice, pending=True)
    refused: list[Callable[[], object]] = [
        lambda: pa.update(alice),
        lambda: pa.update(alice, pending=True),
        lambda: pa.propose(alice, "remove", leaf_index=2),
        lambda: pa.send(alice, b"not now"),
        lambda: pa.process(alice, incoming),
        lambda: pa.process(alice, other_commit.commit),
        lambda: pa.external_join(alice, pa.group_info(alice, ratchet_tree_extension=True).group_info),
    ]
    for call in refused:
        with pytest.raises(PeerError, match="pending commit"):
            call()
        assert pa.alive
    assert pa.pending_commit(alice) == 2  # still pending, still mergeable
    pb.discard_pending(bob)
    for peer, c in (B, C):
        peer.process(c, res.commit)
    pa.merge_pending(alice)
    assert_same_epoch([A, B, C], 2)


def test_pending_ops_without_a_pending_commit_are_errors(peers: tuple[TsMlsPeer, TsMlsPeer]) -> None:
    A, _, _ = three_members(peers)
    pa, alice = A
    for call in (
        lambda: pa.merge_pending(alice),
        lambda: pa.discard_pending(alice),
        lambda: pa.group_info(alice, pending=True),
        lambda: pa.call("update", client=alice, pending="yes"),
        lambda: pa.call("group_info", client=alice, external_pub="bare"),
    ):
        with pytest.raises(PeerError):
            call()
    res = pa.update(alice, pending=True)
    pa.merge_pending(alice)
    with pytest.raises(PeerError, match="no pending commit"):
        pa.merge_pending(alice)  # merged once only
    assert pa.epoch_authenticator(alice)[1] == res.epoch == 2
