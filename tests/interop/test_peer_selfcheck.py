"""The ts-mls interop peer works with itself, and this project's decoder reads everything it produces.

Two peer processes (so state really travels only as bytes) host ts-mls clients that create a group,
add members with and without the ratchet_tree extension, exchange messages, update, remove and join by
external commit, for suites 1 and 2 (and a shorter run for suites 3-7). Every MLSMessage and ratchet tree
the peer emits is decoded with ``mls.wire.framing.MLSMessage`` / ``mls.tree.nodes`` and must re-encode to the
same bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from mls.tree.nodes import decode_ratchet_tree, encode_ratchet_tree
from mls.wire.framing import MLSMessage, WireFormat

from .ts_mls_peer import CommitResult, PeerError, TsMlsPeer

_names = itertools.count()


def fresh(prefix: str) -> str:
    """A client name unique within the module's peer processes."""
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def peers(ts_mls_peer_factory: Callable[[], TsMlsPeer]) -> Iterator[tuple[TsMlsPeer, TsMlsPeer]]:
    a, b = ts_mls_peer_factory(), ts_mls_peer_factory()
    yield a, b
    a.close()
    b.close()


def roundtrip(data: bytes, wire_format: WireFormat | None = None) -> MLSMessage:
    """Our MLSMessage decoder accepts ts-mls's bytes and re-encodes them identically."""
    msg = MLSMessage.from_bytes(data)
    assert msg.to_bytes() == data
    if wire_format is not None:
        assert msg.wire_format == wire_format
    return msg


def tree_roundtrip(data: bytes) -> None:
    nodes = decode_ratchet_tree(data)
    assert nodes and nodes[-1] is not None
    assert encode_ratchet_tree(list(nodes)) == data


def check_commit(res: CommitResult, *, handshake: str, welcome: bool) -> None:
    want = WireFormat.mls_public_message if handshake == "public" else WireFormat.mls_private_message
    roundtrip(res.commit, want)
    tree_roundtrip(res.ratchet_tree)
    assert (res.welcome is not None) == welcome
    if res.welcome is not None:
        roundtrip(res.welcome, WireFormat.mls_welcome)


def assert_same_epoch(members: list[tuple[TsMlsPeer, str]], epoch: int) -> None:
    """All members agree on epoch, epoch_authenticator, an exported secret, the tree and the roster."""
    auths = {peer.epoch_authenticator(c) for peer, c in members}
    assert len(auths) == 1, "epoch_authenticator differs"
    assert next(iter(auths))[1] == epoch
    secrets = {peer.export(c, "interop selfcheck", b"ctx", 32) for peer, c in members}
    assert len(secrets) == 1, "exporter output differs"
    assert len(next(iter(secrets))) == 32
    states = {
        (s.epoch, s.tree_hash, s.confirmed_transcript_hash, s.ratchet_tree)
        for s in (peer.group_state(c) for peer, c in members)
    }
    assert len(states) == 1, "group state differs"
    rosters = {tuple(peer.members(c)) for peer, c in members}
    assert len(rosters) == 1, "member lists differ"


def exchange(sender: tuple[TsMlsPeer, str], receivers: list[tuple[TsMlsPeer, str]], text: bytes) -> None:
    peer, client = sender
    msg = peer.send(client, text)
    roundtrip(msg, WireFormat.mls_private_message)
    for rpeer, rclient in receivers:
        res = rpeer.process(rclient, msg)
        assert res.kind == "application"
        assert res.data == text


@pytest.mark.parametrize("suite", [1, 2])
def test_full_lifecycle(peers: tuple[TsMlsPeer, TsMlsPeer], suite: int) -> None:
    pa, pb = peers
    alice, bob, carol, dave, erin = (fresh(n) for n in ("alice", "bob", "carol", "dave", "erin"))
    pa.new_client(alice, b"alice", suite)
    pb.new_client(bob, b"bob", suite)
    pb.new_client(carol, b"carol", suite)
    pa.new_client(dave, b"dave", suite)
    pb.new_client(erin, b"erin", suite)
    group_id = f"selfcheck-{suite}-{alice}".encode()
    A, B, C, D, E = (pa, alice), (pb, bob), (pb, carol), (pa, dave), (pb, erin)

    assert pa.create_group(alice, group_id) == 0

    # Add bob, tree in the Welcome's GroupInfo (ratchet_tree extension); bob joins without a tree.
    kp_bob = pb.key_package(bob)
    roundtrip(kp_bob, WireFormat.mls_key_package)
    res = pa.add(alice, [kp_bob], ratchet_tree_extension=True)
    check_commit(res, handshake="public", welcome=True)
    assert res.epoch == 1
    assert res.welcome is not None
    joined = pb.join(bob, res.welcome)
    assert (joined.epoch, joined.group_id) == (1, group_id)
    assert_same_epoch([A, B], 1)

    # Add carol with a PrivateMessage commit and no tree extension: carol needs the tree out of band.
    kp_carol = pb.key_package(carol)
    roundtrip(kp_carol, WireFormat.mls_key_package)
    res = pa.add(alice, [kp_carol], ratchet_tree_extension=False, handshake="private")
    check_commit(res, handshake="private", welcome=True)
    assert res.welcome is not None
    with pytest.raises(PeerError):
        pb.join(carol, res.welcome)  # no ratchet_tree extension and no tree given
    assert pb.process(bob, res.commit).kind == "commit"
    assert pb.join(carol, res.welcome, res.ratchet_tree).epoch == 2
    assert_same_epoch([A, B, C], 2)
    assert [m.identity for m in pa.members(alice)] == [b"alice", b"bob", b"carol"]

    # Application messages every way.
    exchange(A, [B, C], b"hello from alice")
    exchange(B, [A, C], b"hello from bob")
    exchange(C, [A, B], b"hello from carol")

    # Updates (commits with a path and no proposals), public and private.
    res = pb.update(bob)
    check_commit(res, handshake="public", welcome=False)
    for peer, c in (A, C):
        pr = peer.process(c, res.commit)
        assert (pr.kind, pr.epoch) == ("commit", 3)
    res = pb.update(carol, handshake="private")
    check_commit(res, handshake="private", welcome=False)
    for peer, c in (A, B):
        assert peer.process(c, res.commit).kind == "commit"
    assert_same_epoch([A, B, C], 4)
    exchange(C, [A, B], b"after updates")

    # Alice removes bob (leaf 1).
    res = pa.remove(alice, [1])
    check_commit(res, handshake="public", welcome=False)
    assert pb.process(carol, res.commit).epoch == 5
    assert pb.process(bob, res.commit).state == "removedFromGroup"
    assert_same_epoch([A, C], 5)
    assert [(m.leaf_index, m.identity) for m in pb.members(carol)] == [(0, b"alice"), (2, b"carol")]

    # External join by dave from carol's GroupInfo, tree passed out of band.
    gi = pb.group_info(carol)
    gi_msg = roundtrip(gi.group_info, WireFormat.mls_group_info)
    assert gi_msg.group_info is not None
    tree_roundtrip(gi.ratchet_tree)
    ext = pa.external_join(dave, gi.group_info, gi.ratchet_tree)
    roundtrip(ext.commit, WireFormat.mls_public_message)
    assert (ext.epoch, ext.group_id) == (6, group_id)
    for peer, c in (A, C):
        assert peer.process(c, ext.commit).kind == "commit"
    assert_same_epoch([A, C, D], 6)

    # External join by erin, tree in the GroupInfo's ratchet_tree extension.
    gi = pa.group_info(dave, ratchet_tree_extension=True)
    roundtrip(gi.group_info, WireFormat.mls_group_info)
    ext = pb.external_join(erin, gi.group_info)
    roundtrip(ext.commit, WireFormat.mls_public_message)
    for peer, c in (A, C, D):
        assert peer.process(c, ext.commit).kind == "commit"
    assert_same_epoch([A, C, D, E], 7)
    assert sorted(m.identity for m in pb.members(erin)) == [b"alice", b"carol", b"dave", b"erin"]

    exchange(D, [A, C, E], b"from dave")
    exchange(E, [A, C, D], b"from erin")


def test_proposals_and_psk(peers: tuple[TsMlsPeer, TsMlsPeer]) -> None:
    pa, pb = peers
    alice, bob, carol = fresh("alice"), fresh("bob"), fresh("carol")
    for peer, c in ((pa, alice), (pb, bob), (pb, carol)):
        peer.new_client(c, c.encode(), 1)
    pa.create_group(alice, b"psk-group")
    res = pa.add(alice, [pb.key_package(bob)], ratchet_tree_extension=True)
    assert res.welcome is not None
    pb.join(bob, res.welcome)

    # Bob proposes adding carol; alice commits the proposal by reference.
    proposal = pb.propose(bob, "add", key_package=pb.key_package(carol))
    roundtrip(proposal, WireFormat.mls_public_message)
    assert pa.process(alice, proposal).kind == "proposal"
    res = pa.update(alice)
    assert res.welcome is not None
    check_commit(res, handshake="public", welcome=True)
    assert pb.process(bob, res.commit).epoch == 2
    pb.join(carol, res.welcome, res.ratchet_tree)

    # An external PSK every member (and a joiner) knows, injected by a commit.
    psk_id, psk = b"interop-psk", bytes(range(32))
    for peer, c in ((pa, alice), (pb, bob), (pb, carol)):
        peer.add_psk(c, psk_id, psk)
    res = pa.commit(alice, psk_ids=[psk_id], handshake="private")
    check_commit(res, handshake="private", welcome=False)
    for peer, c in ((pb, bob), (pb, carol)):
        assert peer.process(c, res.commit).epoch == 3
    assert_same_epoch([(pa, alice), (pb, bob), (pb, carol)], 3)

    # A member without the PSK cannot follow.
    dave = fresh("dave")
    pb.new_client(dave, b"dave", 1)
    res = pa.add(alice, [pb.key_package(dave)], ratchet_tree_extension=True)
    assert res.welcome is not None
    pb.join(dave, res.welcome)
    for c in (bob, carol):
        pb.process(c, res.commit)
    res = pa.commit(alice, psk_ids=[psk_id])
    for c in (bob, carol):
        pb.process(c, res.commit)
    with pytest.raises(PeerError):
        pb.process(dave, res.commit)


@pytest.mark.parametrize("suite", [3, 4, 5, 6, 7])
def test_other_suites(peers: tuple[TsMlsPeer, TsMlsPeer], suite: int) -> None:
    pa, pb = peers
    alice, bob = fresh("alice"), fresh("bob")
    pa.new_client(alice, b"alice", suite)
    pb.new_client(bob, b"bob", suite)
    pa.create_group(alice, f"suite-{suite}".encode())
    kp = pb.key_package(bob)
    roundtrip(kp, WireFormat.mls_key_package)
    res = pa.add(alice, [kp])
    check_commit(res, handshake="public", welcome=True)
    assert res.welcome is not None
    pb.join(bob, res.welcome, res.ratchet_tree)
    exchange((pa, alice), [(pb, bob)], b"ping")
    res = pb.update(bob, handshake="private")
    check_commit(res, handshake="private", welcome=False)
    pa.process(alice, res.commit)
    assert_same_epoch([(pa, alice), (pb, bob)], 2)
    gs = pa.group_state(alice)
    assert gs.cipher_suite == suite


def test_bad_input_is_an_error_not_a_crash(peers: tuple[TsMlsPeer, TsMlsPeer]) -> None:
    pa, _ = peers
    alice, bob = fresh("alice"), fresh("bob")
    pa.new_client(alice, b"alice", 1)
    pa.new_client(bob, b"bob", 1)
    pa.create_group(alice, b"errors")
    bad_calls: list[Callable[[], object]] = [
        lambda: pa.call("no_such_op"),
        lambda: pa.call("new_client", client=alice, identity="YQ==", cipher_suite=1),  # duplicate
        lambda: pa.call("new_client", client="x", identity="not base64!", cipher_suite=1),
        lambda: pa.new_client(fresh("x"), b"x", 0x7777),  # unknown suite
        lambda: pa.call("key_package", client="nobody"),
        lambda: pa.process(alice, b"\x00\x01garbage"),
        lambda: pa.process(alice, pa.key_package(bob)),  # not a framed message
        lambda: pa.join(bob, b""),
        lambda: pa.join(bob, pa.key_package(bob)),  # not a Welcome
        lambda: pa.send(bob, b"no group"),
        lambda: pa.remove(alice, [5]),  # no such leaf
        lambda: pa.external_join(bob, b"\x00\x01\x00\x04"),
        lambda: pa.call("export", client=alice, label=1, context="", length=1),
    ]
    for bad in bad_calls:
        with pytest.raises(PeerError):
            bad()
        assert pa.alive
    # Still fully functional afterwards.
    assert pa.epoch_authenticator(alice)[1] == 0
    assert pa.update(alice).epoch == 1
