"""Forward secrecy (RFC 9420 §16.4, §9.2, §10): private keys that are no longer needed are handed to the
KeyStore for destruction, and the keys that are still needed stay.

Keys are counted with :meth:`SoftwareKeyStore.refs`; each member has its own store holding its signature
key, its leaf key and the keys of its unconsumed KeyPackages.
"""

from __future__ import annotations

import pytest

from mls.errors import ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.handshake_framing import HandshakeFraming
from mls.group.staged_commit import StagedCommit

from .group_helpers import MAIN_SUITES, Harness, Member, build_group


@pytest.fixture(params=MAIN_SUITES, ids=lambda s: f"suite{s}")
def suite(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def leaf_ref(m: Member) -> bytes:
    return m.g.state.keys.leaf_key.key_ref


def test_join_destroys_the_init_key(suite: int) -> None:
    h = Harness(suite)
    alice = h.create()
    bob = h.new_client("bob")
    bundle = bob.client.key_package()
    spare = bob.client.key_package()
    init, leaf = bundle.init_key.key_ref, bundle.leaf_key.key_ref
    assert {init, leaf, bob.client.signer.key_ref} <= bob.key_refs()
    h.commit(alice, CommitOptions(add=[bundle.key_package]), joiners=[(bob, bundle)])
    assert init not in bob.key_store
    assert leaf in bob.key_store and leaf_ref(bob) == leaf  # the leaf key is now the group's leaf key
    assert bundle.ref not in bob.client.key_packages and spare.ref in bob.client.key_packages
    assert bob.key_refs() == {bob.client.signer.key_ref, leaf, spare.init_key.key_ref, spare.leaf_key.key_ref}


def test_last_resort_key_package_keeps_its_init_key(suite: int) -> None:
    h = Harness(suite)
    alice = h.create()
    bob = h.new_client("bob")
    bundle = bob.client.key_package(last_resort=True)
    init = bundle.init_key.key_ref
    h.commit(alice, CommitOptions(add=[bundle.key_package]), joiners=[(bob, bundle)])
    assert init in bob.key_store and bundle.ref in bob.client.key_packages
    h.everyone_talks()
    # it can be used again, for another group (the leaf key is shared with the first group then)
    h2 = Harness(suite)
    carol = h2.create("carol")
    bob2 = Member("bob", bob.client, bob.key_store, bob.psks)
    h2.commit(carol, CommitOptions(add=[bundle.key_package]), joiners=[(bob2, bundle)])
    assert init in bob.key_store
    h2.everyone_talks()


def test_self_update_destroys_the_old_leaf_key(suite: int) -> None:
    h, (_alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    for handshake in HandshakeFraming:
        old, refs = leaf_ref(bob), bob.key_refs()
        h.commit(bob, CommitOptions(force_path=True, handshake=handshake))
        new = leaf_ref(bob)
        assert old not in bob.key_store and new in bob.key_store
        assert bob.key_refs() == (refs - {old}) | {new}


def test_update_path_of_another_member_does_not_touch_own_leaf_key(suite: int) -> None:
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    refs = bob.key_refs()
    h.commit(alice, CommitOptions(force_path=True))
    assert bob.key_refs() == refs


def test_committed_update_destroys_the_old_leaf_key(suite: int) -> None:
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    old = leaf_ref(bob)
    msg, _ = bob.g.propose_update()
    h.propose(bob, msg)
    h.commit(alice)
    assert leaf_ref(bob) != old and old not in bob.key_store


def test_committed_update_keeps_the_new_leaf_key(suite: int) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"])
    refs = bob.key_refs()
    msg, _ = bob.g.propose_update()
    h.propose(bob, msg)
    h.commit(alice)
    new = leaf_ref(bob)
    assert new in bob.key_store, "the updater's new leaf key was destroyed"
    assert len(bob.key_refs()) == len(refs)
    # the member must survive a restart: its state refers to the leaf key by reference
    restored = Group.from_bytes(bob.g.to_bytes(), bob.key_store, bob.psks)
    assert restored.to_bytes() == bob.g.to_bytes()
    bob.group = restored
    h.commit(carol, CommitOptions(force_path=True))
    h.everyone_talks()


def test_uncommitted_update_key_destroyed_at_the_next_epoch(suite: int) -> None:
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    leaf, refs = leaf_ref(bob), bob.key_refs()
    msg, _ = bob.g.propose_update()
    update_keys = set(bob.g.state.update_keys.values())
    assert len(update_keys) == 1 and update_keys <= bob.key_refs()
    h.propose(bob, msg)
    h.commit(alice, CommitOptions(include_pending=False, force_path=True))  # the Update is not committed
    assert leaf_ref(bob) == leaf and not update_keys & bob.key_refs()
    assert bob.key_refs() == refs and not bob.g.state.update_keys
    h.everyone_talks()


@pytest.mark.parametrize("by", ["value", "reference"])
def test_removed_member_keys_destroyed_on_merge(suite: int, by: str) -> None:
    h, (alice, bob, carol) = build_group(suite, ["alice", "bob", "carol"])
    spare = carol.client.key_package()
    carol.g.propose_update()  # an outstanding Update key of the removed member (not delivered)
    pending_update = set(carol.g.state.update_keys.values())
    own = {leaf_ref(carol), *pending_update}
    assert len(own) == 2 and own <= carol.key_refs()
    if by == "value":
        staged = alice.g.commit(CommitOptions(remove=[carol.leaf]))
    else:
        rm, _ = bob.g.propose_remove(carol.leaf)
        h.propose(bob, rm)
        staged = alice.g.commit()
    out = carol.g.process(staged.commit or b"")
    assert isinstance(out, StagedCommit) and out.removed_self
    assert own <= carol.key_refs()  # nothing is destroyed before the merge
    carol.g.merge(out)
    assert not own & carol.key_refs()
    # what is left: the identity and the unconsumed KeyPackage, nothing of the group
    assert carol.key_refs() == {carol.client.signer.key_ref, spare.init_key.key_ref, spare.leaf_key.key_ref}
    carol.removed = True
    h.deliver_commit(alice, staged, skip=[carol])
    h.check()


def test_discarded_commit_destroys_its_new_leaf_key(suite: int) -> None:
    h, (alice, _bob) = build_group(suite, ["alice", "bob"])
    refs = alice.key_refs()
    staged = alice.g.commit(CommitOptions(force_path=True))
    assert staged.state is not None
    new = staged.state.keys.leaf_key.key_ref
    assert alice.key_refs() == refs | {new}
    alice.g.discard_pending_commit()
    assert alice.key_refs() == refs
    # a commit without a path makes no new key, and discarding it destroys nothing
    carol = h.new_client("carol")
    alice.g.commit(CommitOptions(add=[carol.client.key_package().key_package]))
    assert alice.key_refs() == refs
    alice.g.discard_pending_commit()
    assert alice.key_refs() == refs and leaf_ref(alice) in alice.key_store
    h.everyone_talks()


def test_pending_commit_key_destroyed_when_another_commit_wins(suite: int) -> None:
    h, (alice, bob, _carol) = build_group(suite, ["alice", "bob", "carol"])
    refs = bob.key_refs()
    losing = bob.g.commit(CommitOptions(force_path=True))
    assert losing.state is not None
    lost_key = losing.state.keys.leaf_key.key_ref
    h.commit(alice, CommitOptions(force_path=True))  # bob processes and merges alice's commit
    assert bob.g.pending_commit is None
    assert lost_key not in bob.key_store, "the losing commit's leaf key was never destroyed"
    assert bob.key_refs() == refs


def test_key_count_is_stable_over_many_epochs(suite: int) -> None:
    h, members = build_group(suite, ["alice", "bob", "carol", "dave"])
    counts = {m.name: len(m.key_refs()) for m in members}
    for i in range(12):
        handshake = list(HandshakeFraming)[i % 2]
        h.commit(members[i % 4], CommitOptions(force_path=True, handshake=handshake), echo=i % 3 == 0)
        assert {m.name: len(m.key_refs()) for m in members} == counts
        assert all(leaf_ref(m) in m.key_store for m in members)
    (erin,), _ = h.add(members[0], ["erin"])
    h.commit(erin, CommitOptions(remove=[members[1].leaf]))
    h.commit(members[2], CommitOptions(force_path=True))
    assert len(erin.key_refs()) == 2  # signature key and leaf key
    assert {m.name: len(m.key_refs()) for m in members if not m.removed} == {
        n: c for n, c in counts.items() if n != "bob"
    }
    h.everyone_talks()


def test_failed_commit_leaves_no_new_key(suite: int) -> None:
    _h, (alice, _bob) = build_group(suite, ["alice", "bob"])
    refs = alice.key_refs()
    with pytest.raises(ValidationError) as e:
        alice.g.commit(CommitOptions(psks=[alice.g.new_psk_id(b"unknown")], force_path=True))
    assert e.value.rule == "12.4.2/commit-psk-available"
    assert alice.key_refs() == refs and alice.g.pending_commit is None
