"""A staged commit is a finished, serialisable value (mls.group.staged_commit, RFC 9420 §12.4.2).

* ``StagedCommit.to_bytes`` / ``from_bytes`` round-trip own commits (with and without path and Welcome)
  and received ones (with proposals by reference, and a commit that removes us); merging a deserialised
  staged commit gives the same epoch as merging the original.
* Corrupt or unknown-version bytes raise StateError; fuzzed bytes raise nothing but MLSError subclasses.
* ``dead_key_refs`` is final when the commit is staged: a retained key (the leaf key of a last-resort
  KeyPackage, shared by two groups) is never in it, merging does not change it, and merging returns every
  key it made dead (a losing pending commit's new leaf key included).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import KeyStoreError, MLSError, StateError
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.handshake_framing import HandshakeFraming
from mls.group.staged_commit import STAGED_COMMIT_VERSION, StagedCommit

from .group_helpers import EXPORT_CONTEXT, EXPORT_LABEL, MAIN_SUITES, Harness, Member, build_group


@pytest.fixture(params=MAIN_SUITES, ids=lambda s: f"suite{s}")
def suite(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def assert_same(a: StagedCommit, b: StagedCommit) -> None:
    """Every field of two staged commits is equal (the state compared by its encoding)."""
    assert (a.state is None) == (b.state is None)
    if a.state is not None and b.state is not None:
        assert a.state.to_bytes() == b.state.to_bytes()
    assert a.sender == b.sender and a.proposals == b.proposals and a.content == b.content
    assert (a.commit, a.welcome, a.group_info, a.ratchet_tree) == (
        b.commit,
        b.welcome,
        b.group_info,
        b.ratchet_tree,
    )
    assert a.dead_key_refs == b.dead_key_refs
    assert a.to_bytes() == b.to_bytes()


def restored(m: Member) -> Group:
    """``m``'s group as a service would load it: state and pending commit from bytes."""
    g = Group.from_bytes(m.g.to_bytes(), m.key_store, m.psks)
    if m.g.pending_commit is not None:
        g.pending_commit = StagedCommit.from_bytes(m.g.pending_commit.to_bytes(), m.key_store)
    return g


def psk_commit(h: Harness, committer: Member) -> CommitOptions:
    """A commit of an external PSK that every member holds: no path, no Welcome (§12.4)."""
    secret = os.urandom(32)
    for m in h.members:
        m.psks.external[b"psk"] = secret
    return CommitOptions(psks=[committer.g.new_psk_id(b"psk")])


def add_commit(h: Harness, committer: Member, **options: Any) -> CommitOptions:
    """A commit that adds a new client (the Welcome is not used)."""
    return CommitOptions(add=[h.new_client("dave").client.key_package().key_package], **options)


# ---- own commits ------------------------------------------------------------------------------------


OWN_COMMITS: dict[str, Callable[[Harness, Member], CommitOptions]] = {
    "no path, no Welcome": psk_commit,
    "path, no Welcome": lambda h, m: CommitOptions(force_path=True),
    "no path, Welcome": add_commit,
    "path and Welcome, private": lambda h, m: add_commit(
        h, m, force_path=True, handshake=HandshakeFraming.private
    ),
}


@pytest.mark.parametrize("kind", list(OWN_COMMITS))
def test_own_commit_round_trip_and_merge(suite: int, kind: str) -> None:
    h, (alice, _bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    staged = alice.g.commit(OWN_COMMITS[kind](h, alice))
    assert (staged.welcome is not None) == ("no Welcome" not in kind)
    again = StagedCommit.from_bytes(staged.to_bytes(), alice.key_store)
    assert_same(staged, again)
    # a service restores the group and its pending commit from bytes, then merges
    reloaded = restored(alice)
    assert reloaded.process(staged.commit or b"") is reloaded.pending_commit  # recognised by its content
    original_dead = list(staged.dead_key_refs)
    dead = reloaded.merge_pending_commit(destroy_dead_keys=False)
    assert dead == original_dead and staged.dead_key_refs == original_dead
    assert alice.g.merge_pending_commit(destroy_dead_keys=False) == dead
    assert (reloaded.epoch, reloaded.epoch_authenticator) == (alice.g.epoch, alice.g.epoch_authenticator)
    assert reloaded.export(EXPORT_LABEL, EXPORT_CONTEXT, 32) == alice.g.export(
        EXPORT_LABEL, EXPORT_CONTEXT, 32
    )
    for ref in dead:
        alice.key_store.destroy(ref)
    alice.group = reloaded
    h.deliver_commit(alice, staged, skip=[alice])
    h.check()
    h.everyone_talks()


def test_merging_a_restored_pending_commit_keeps_its_new_leaf_key(suite: int) -> None:
    """The pending commit restored from bytes is not the object ``merge`` gets: it is still recognised as
    the pending commit (by content), so its new leaf key is not taken for a losing commit's."""
    h, (alice, _bob) = build_group(suite, ["alice", "bob"])
    staged = alice.g.commit(CommitOptions(force_path=True))
    reloaded = restored(alice)
    pending = reloaded.pending_commit
    assert pending is not None and pending is not staged and pending.state is not None
    new_leaf = pending.state.keys.leaf_key.key_ref
    reloaded.merge(StagedCommit.from_bytes(staged.to_bytes(), alice.key_store))  # a third copy
    assert new_leaf in alice.key_store and reloaded.state.keys.leaf_key.key_ref == new_leaf
    alice.group = reloaded
    h.deliver_commit(alice, staged, skip=[alice])
    h.check()
    h.everyone_talks()


# ---- received commits -------------------------------------------------------------------------------


def test_received_commit_round_trip_with_proposals_by_reference(suite: int) -> None:
    h, (alice, bob, carol, dave) = build_group(suite, ["alice", "bob", "carol", "dave"])
    message, ref = carol.g.propose_update()
    h.propose(carol, message)
    message, _ = bob.g.propose_remove(dave.leaf, HandshakeFraming.private)
    h.propose(bob, message)
    staged = alice.g.commit()
    assert staged.commit is not None
    received = bob.g.process(staged.commit)
    assert isinstance(received, StagedCommit)
    assert any(p.ref == ref for p in received.proposals) and len(received.proposals) == 2
    again = StagedCommit.from_bytes(received.to_bytes(), bob.key_store)
    assert_same(received, again)
    assert again.commit is None and again.welcome is None  # only an own commit carries its messages
    reloaded = Group.from_bytes(bob.g.to_bytes(), bob.key_store, bob.psks)
    assert reloaded.merge(again) == received.dead_key_refs
    bob.group = reloaded
    h.deliver_commit(alice, staged, skip=[bob])
    assert dave.removed
    h.check()
    h.everyone_talks()


def test_commit_that_removes_us_round_trips(suite: int) -> None:
    _, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    staged = alice.g.commit(CommitOptions(remove=[bob.leaf]))
    received = bob.g.process(staged.commit or b"")
    assert isinstance(received, StagedCommit) and received.removed_self
    again = StagedCommit.from_bytes(received.to_bytes(), bob.key_store)
    assert_same(received, again)
    assert again.removed_self and again.epoch is None
    assert set(again.dead_key_refs) == {bob.g.state.keys.leaf_key.key_ref}
    bob.g.merge(again)
    assert not bob.g.state.active and not (set(again.dead_key_refs) & bob.key_refs())


# ---- corrupt input ----------------------------------------------------------------------------------


@functools.cache
def saved_commit(suite: int = 1) -> tuple[bytes, SoftwareKeyStore]:
    """A staged own commit with path and Welcome and a proposal by reference, as bytes, with its key store."""
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    message, _ = bob.g.propose_update()
    h.propose(bob, message)
    staged = alice.g.commit(CommitOptions(add=[h.new_client("dave").client.key_package().key_package]))
    assert any(p.ref is not None for p in staged.proposals) and staged.welcome is not None
    return staged.to_bytes(), alice.key_store


@pytest.mark.parametrize("version", [None, 0, STAGED_COMMIT_VERSION + 1, str(STAGED_COMMIT_VERSION), "x"])
def test_unknown_version(version: Any) -> None:
    data, keys = saved_commit()
    s = json.loads(data)
    s["version"] = version
    with pytest.raises(StateError, match="unsupported staged commit version"):
        StagedCommit.from_bytes(json.dumps(s).encode(), keys)


_DELETE = object()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or with ``_DELETE`` remove) the value at a dotted path of the decoded JSON."""

    def apply(s: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = s
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            target[int(last)] = value
        elif value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return apply


BYTE_CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "not json": lambda d: b"{" + d,
    "truncated": lambda d: d[: len(d) // 2],
    "a list": lambda d: b"[1]",
    "not utf-8": lambda d: b"\xff" + d,
}

VALUE_CORRUPTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no state": _set("state", _DELETE),
    "state not an object": _set("state", [1]),
    "state of an unknown version": _set("state.version", 99),
    "sender not hex": _set("sender", "zz"),
    "sender encoding": _set("sender", "07"),
    "proposal encoding": _set("proposals.0.0", "0001"),
    "proposal without sender": _set("proposals.0.1", None),
    "proposal too short": _set("proposals.0", ["00"]),
    "content not a string": _set("content", 5),
    "welcome not hex": _set("welcome", "0g"),
    "dead key refs not a list of hex": _set("dead_key_refs", [1]),
}


@pytest.mark.parametrize("name", list(BYTE_CORRUPTIONS))
def test_corrupt_bytes_raise_state_error(name: str) -> None:
    data, keys = saved_commit()
    bad = BYTE_CORRUPTIONS[name](data)
    assert bad != data
    with pytest.raises(StateError):
        StagedCommit.from_bytes(bad, keys)


@pytest.mark.parametrize("name", list(VALUE_CORRUPTIONS))
def test_corrupt_values_raise_state_error(name: str) -> None:
    data, keys = saved_commit()
    s = json.loads(data)
    VALUE_CORRUPTIONS[name](s)
    bad = json.dumps(s).encode()
    assert bad != data
    with pytest.raises(StateError):
        StagedCommit.from_bytes(bad, keys)


def test_missing_leaf_key_is_a_key_store_error() -> None:
    data, _ = saved_commit()
    with pytest.raises(KeyStoreError):
        StagedCommit.from_bytes(data, SoftwareKeyStore())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzzed_bytes_raise_only_mls_errors(data: st.DataObject) -> None:
    saved, keys = saved_commit()
    mutated = bytearray(saved)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    bad = bytes(mutated[:cut]) if data.draw(st.booleans()) else bytes(mutated)
    try:
        result = StagedCommit.from_bytes(bad, keys)
    except MLSError:
        return
    assert isinstance(result, StagedCommit)


# ---- dead keys are final when staged ----------------------------------------------------------------


def two_groups_with_one_last_resort_key_package(suite: int) -> tuple[Harness, Harness, Member, Member, bytes]:
    """bob joins two groups with ONE last-resort KeyPackage: both groups' leaf of bob has its leaf key."""
    h1, h2 = Harness(suite), Harness(suite)
    alice, carol = h1.create("alice"), h2.create("carol")
    bob1 = h1.new_client("bob")
    bundle = bob1.client.key_package(last_resort=True)
    h1.commit(alice, CommitOptions(add=[bundle.key_package]), joiners=[(bob1, bundle)])
    bob2 = Member("bob", bob1.client, bob1.key_store, bob1.psks)
    h2.commit(carol, CommitOptions(add=[bundle.key_package]), joiners=[(bob2, bundle)])
    shared = bundle.leaf_key.key_ref
    assert bob1.g.state.keys.leaf_key.key_ref == shared == bob2.g.state.keys.leaf_key.key_ref
    assert bob1.g.state.retained_keys == {shared} == bob2.g.state.retained_keys
    return h1, h2, bob1, bob2, shared


def check_group_two_still_reaches(h2: Harness, bob2: Member, shared: bytes) -> None:
    """group 2 encrypts to the shared leaf key: a commit with a path and application data reach bob."""
    assert shared in bob2.key_store
    carol = h2.by_name("carol")
    h2.commit(carol, CommitOptions(force_path=True))
    h2.everyone_talks()
    assert bob2.g.state.keys.leaf_key.key_ref == shared


def test_own_commit_with_path_keeps_a_last_resort_leaf_key(suite: int) -> None:
    h1, h2, bob1, bob2, shared = two_groups_with_one_last_resort_key_package(suite)
    staged = bob1.g.commit(CommitOptions(force_path=True))
    assert shared not in staged.dead_key_refs
    assert shared not in StagedCommit.from_bytes(staged.to_bytes(), bob1.key_store).dead_key_refs
    h1.deliver_commit(bob1, staged)  # merge_pending_commit(destroy_dead_keys=True)
    assert shared in bob1.key_store and bob1.g.state.keys.leaf_key.key_ref != shared
    h1.check()
    check_group_two_still_reaches(h2, bob2, shared)


def test_received_commit_removing_us_keeps_a_last_resort_leaf_key(suite: int) -> None:
    h1, h2, bob1, bob2, shared = two_groups_with_one_last_resort_key_package(suite)
    alice = h1.by_name("alice")
    staged = alice.g.commit(CommitOptions(remove=[bob1.leaf]))
    received = bob1.g.process(staged.commit or b"")
    assert isinstance(received, StagedCommit) and received.removed_self
    assert shared not in received.dead_key_refs
    assert shared not in bob1.g.merge(received)
    assert shared in bob1.key_store
    check_group_two_still_reaches(h2, bob2, shared)


def test_committed_update_keeps_a_last_resort_leaf_key(suite: int) -> None:
    """bob's own Update is committed by alice: his old leaf key (the shared one) is not dead."""
    h1, h2, bob1, bob2, shared = two_groups_with_one_last_resort_key_package(suite)
    alice = h1.by_name("alice")
    message, _ = bob1.g.propose_update()
    h1.propose(bob1, message)
    staged = alice.g.commit()
    received = bob1.g.process(staged.commit or b"")
    assert isinstance(received, StagedCommit) and shared not in received.dead_key_refs
    h1.deliver_commit(alice, staged, skip=[bob1])
    bob1.g.merge(received)
    assert shared in bob1.key_store and bob1.g.state.keys.leaf_key.key_ref != shared
    h1.check()
    check_group_two_still_reaches(h2, bob2, shared)


def test_merge_returns_the_losing_pending_commits_leaf_key(suite: int) -> None:
    """Two members commit in one epoch; the loser's merge returns (and, if asked, destroys) its pending
    commit's new leaf key besides the staged refs, and leaves the staged value as it was."""
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    winning = alice.g.commit(CommitOptions(force_path=True))
    losing = bob.g.commit(CommitOptions(force_path=True))
    assert losing.state is not None
    losing_leaf = losing.state.keys.leaf_key.key_ref
    received = bob.g.process(winning.commit or b"")
    assert isinstance(received, StagedCommit)
    staged_refs = list(received.dead_key_refs)
    assert losing_leaf not in staged_refs
    dead = bob.g.merge(received, destroy_dead_keys=False)
    assert dead == [*staged_refs, losing_leaf] and received.dead_key_refs == staged_refs
    assert losing_leaf in bob.key_store  # the caller destroys the returned keys itself
    for ref in dead:
        bob.key_store.destroy(ref)
    h.deliver_commit(alice, winning, skip=[bob])
    h.check()
    h.everyone_talks()


def test_staged_commit_is_frozen(suite: int) -> None:
    _, (alice, _bob) = build_group(suite, ["alice", "bob"])
    staged = alice.g.commit(CommitOptions(force_path=True))
    with pytest.raises(AttributeError):
        staged.dead_key_refs = []  # type: ignore[misc]
