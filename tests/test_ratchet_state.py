"""The secret-tree part of a group state alone (``GroupState.ratchet_state_to_bytes``,
``apply_ratchet_state`` and ``structure_snapshot``): what a store writes for an application message
instead of the whole state.

* Sending and receiving application messages (also a late one of a past epoch) leave the structure snapshot
  unchanged, and the full state saved before them plus the ratchet state saved after them is, byte for
  byte, the state after them: nothing else changed, so nothing else needs writing.
* A restored state does not reuse a consumed generation (RFC 9420 §9.2): the message it already read is
  refused, the sender's next message decrypts.
* Proposals and commits change the snapshot (they must be written whole).
* A ratchet state of another epoch, another group size or malformed bytes is refused and changes nothing.
"""

from __future__ import annotations

import json

import pytest

from mls import GroupState, StateError
from mls.crypto.key_protocols import KeyStore
from mls.errors import MLSError

from .group_helpers import build_group


def _restore(full: bytes, ratchet: bytes, key_store: KeyStore) -> GroupState:
    state = GroupState.from_bytes(full, key_store)
    state.apply_ratchet_state(ratchet)
    return state


def test_application_messages_change_only_the_ratchet_state() -> None:
    h, (alice, bob, carol) = build_group(1, ["alice", "bob", "carol"])
    full_bob = bob.g.state.to_bytes()
    snapshot = bob.g.state.structure_snapshot()
    for n in range(3):
        assert bob.g.process(alice.g.protect(b"a%d" % n)).data == b"a%d" % n
        assert carol.g.process(bob.g.protect(b"b%d" % n)).data == b"b%d" % n
    late = carol.g.protect(b"late")  # read after the next commit, from the past epoch's secret tree
    assert bob.g.state.structure_snapshot() == snapshot
    restored = _restore(full_bob, bob.g.state.ratchet_state_to_bytes(), bob.key_store)
    assert restored.to_bytes() == bob.g.state.to_bytes()

    h.commit(alice)  # a new epoch: the snapshot changes
    assert bob.g.state.structure_snapshot() != snapshot
    full_bob, snapshot = bob.g.state.to_bytes(), bob.g.state.structure_snapshot()
    assert bob.g.process(late).data == b"late"
    assert bob.g.state.structure_snapshot() == snapshot
    ratchet = bob.g.state.ratchet_state_to_bytes()
    restored = _restore(full_bob, ratchet, bob.key_store)
    assert restored.to_bytes() == bob.g.state.to_bytes()


def test_a_restored_state_never_reuses_a_generation() -> None:
    _, (alice, bob) = build_group(1, ["alice", "bob"])
    full_alice, full_bob = alice.g.state.to_bytes(), bob.g.state.to_bytes()
    first = alice.g.protect(b"one")
    assert bob.g.process(first).data == b"one"
    alice_state = _restore(full_alice, alice.g.state.ratchet_state_to_bytes(), alice.key_store)
    bob_state = _restore(full_bob, bob.g.state.ratchet_state_to_bytes(), bob.key_store)
    alice.g.state, bob.g.state = alice_state, bob_state
    with pytest.raises(MLSError):
        bob.g.process(first)  # its generation was consumed before the restore
    assert bob.g.process(alice.g.protect(b"two")).data == b"two"  # alice went on from generation 1


def test_proposals_and_commits_change_the_structure() -> None:
    h, (alice, bob) = build_group(1, ["alice", "bob"])
    snapshot = bob.g.state.structure_snapshot()
    proposal, _ = alice.g.propose_update()
    bob.g.process(proposal)
    assert bob.g.state.structure_snapshot() != snapshot
    before = alice.g.state.structure_snapshot()
    h.commit(alice)
    assert alice.g.state.structure_snapshot() != before


def test_a_ratchet_state_that_does_not_fit_is_refused() -> None:
    h, (alice, bob) = build_group(1, ["alice", "bob"])
    old_epoch = bob.g.state.ratchet_state_to_bytes()
    h.commit(alice)
    before = bob.g.state.to_bytes()
    _, (other, *_) = build_group(1, ["x", "y", "z"])
    other_group = json.loads(other.g.state.ratchet_state_to_bytes())
    other_group["epoch"] = bob.g.epoch
    wrong_version = json.loads(bob.g.state.ratchet_state_to_bytes())
    wrong_version["version"] = 99
    for bad in (
        old_epoch,
        json.dumps(other_group).encode(),
        json.dumps(wrong_version).encode(),
        b"not json",
        b"{}",
    ):
        with pytest.raises(StateError):
            bob.g.state.apply_ratchet_state(bad)
        assert bob.g.state.to_bytes() == before
