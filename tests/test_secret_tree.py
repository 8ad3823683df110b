"""Secret tree and sender ratchets (RFC 9420 §9, §9.1, §9.2): derivation, the out-of-order window,
deletion of used and old keys, persistence."""

from __future__ import annotations

import json

import pytest

from mls.crypto import cipher_suite
from mls.errors import StateError, ValidationError
from mls.schedule.secret_tree import (
    RatchetConfig,
    RatchetKey,
    RatchetType,
    SecretTree,
    sender_data_key_nonce,
)

CS = cipher_suite(1)
SECRET = bytes(range(32))
APP = RatchetType.application
HS = RatchetType.handshake


def sender_keys(n_leaves: int, leaf: int, rt: RatchetType, count: int) -> list[RatchetKey]:
    tree = SecretTree(CS, SECRET, n_leaves)
    return [tree.next_key_nonce(leaf, rt) for _ in range(count)]


def state_text(tree: SecretTree) -> str:
    return json.dumps(tree.to_state())


def test_two_leaf_tree_matches_the_derivation_of_section_9() -> None:
    left = CS.expand_with_label(SECRET, "tree", b"left", CS.n_h)
    right = CS.expand_with_label(SECRET, "tree", b"right", CS.n_h)
    app0 = CS.expand_with_label(right, "application", b"", CS.n_h)
    hs0 = CS.expand_with_label(left, "handshake", b"", CS.n_h)
    app1 = CS.derive_tree_secret(app0, "secret", 0, CS.n_h)

    tree = SecretTree(CS, SECRET, 2)
    assert tree.key_nonce(0, HS, 3).generation == 3  # leaf 0 first: leaf 1 comes from the kept sibling
    k = tree.key_nonce(1, APP, 1)
    assert k.generation == 1
    assert k.key == CS.derive_tree_secret(app1, "key", 1, CS.n_k)
    assert k.nonce == CS.derive_tree_secret(app1, "nonce", 1, CS.n_n)
    k = SecretTree(CS, SECRET, 2).key_nonce(0, HS, 0)
    assert k.key == CS.derive_tree_secret(hs0, "key", 0, CS.n_k)


@pytest.mark.parametrize("n", [4, 8, 16])
def test_leaf_keys_do_not_depend_on_the_order_leaves_are_reached(n: int) -> None:
    forward, backward = SecretTree(CS, SECRET, n), SecretTree(CS, SECRET, n)
    a = [forward.key_nonce(leaf, APP, 0) for leaf in range(n)]
    b = [backward.key_nonce(leaf, APP, 0) for leaf in reversed(range(n))][::-1]
    assert a == b
    assert len({k.key for k in a}) == n
    assert forward.held_nodes == backward.held_nodes == []


def test_sender_and_receiver_agree_and_ratchets_differ() -> None:
    sent = sender_keys(4, 2, APP, 4)
    receiver = SecretTree(CS, SECRET, 4)
    assert [receiver.key_nonce(2, APP, g) for g in range(4)] == sent
    assert [k.generation for k in sent] == [0, 1, 2, 3]
    others = [sender_keys(4, 2, HS, 1)[0], sender_keys(4, 3, APP, 1)[0], sent[1]]
    assert len({k.key for k in [sent[0], *others]}) == 4


def test_out_of_order_within_the_window() -> None:
    sent = sender_keys(2, 0, APP, 6)
    tree = SecretTree(CS, SECRET, 2, RatchetConfig(out_of_order_tolerance=3))
    assert tree.key_nonce(0, APP, 5) == sent[5]
    assert tree.ratchet(0, APP).retained_generations == [2, 3, 4]
    assert tree.key_nonce(0, APP, 3) == sent[3]
    assert tree.key_nonce(0, APP, 4) == sent[4]
    assert tree.key_nonce(0, APP, 2) == sent[2]
    assert tree.ratchet(0, APP).retained_generations == []


@pytest.mark.parametrize("late", [False, True])
def test_a_used_generation_cannot_be_obtained_again(late: bool) -> None:
    tree = SecretTree(CS, SECRET, 2)
    if late:  # generation 1 is retained as skipped, then used, then asked for again
        tree.key_nonce(0, APP, 3)
    tree.key_nonce(0, APP, 1)
    with pytest.raises(ValidationError) as e:
        tree.key_nonce(0, APP, 1)
    assert e.value.rule == "9.2/generation-consumed"


def test_generations_below_the_window_are_erased() -> None:
    sent = sender_keys(2, 1, HS, 11)
    tree = SecretTree(CS, SECRET, 2, RatchetConfig(out_of_order_tolerance=2))
    tree.key_nonce(1, HS, 10)
    assert tree.ratchet(1, HS).retained_generations == [8, 9]
    with pytest.raises(ValidationError) as e:
        tree.key_nonce(1, HS, 7)
    assert e.value.rule == "9.2/generation-consumed"
    text = state_text(tree)
    for g in range(10):
        assert (sent[g].key.hex() in text) == (g in (8, 9))
    assert sent[10].key.hex() not in text  # handed out, so deleted
    assert tree.key_nonce(1, HS, 8) == sent[8]
    assert sent[8].key.hex() not in state_text(tree)


def test_window_slides_as_the_ratchet_moves_on() -> None:
    tree = SecretTree(CS, SECRET, 2, RatchetConfig(out_of_order_tolerance=2))
    tree.key_nonce(0, APP, 3)  # retains 1, 2
    tree.key_nonce(0, APP, 4)  # 1 falls out of the window
    assert tree.ratchet(0, APP).retained_generations == [2]
    with pytest.raises(ValidationError):
        tree.key_nonce(0, APP, 1)


def test_zero_tolerance_keeps_nothing() -> None:
    tree = SecretTree(CS, SECRET, 2, RatchetConfig(out_of_order_tolerance=0))
    tree.key_nonce(0, APP, 4)
    assert tree.ratchet(0, APP).retained_generations == []
    with pytest.raises(ValidationError):
        tree.key_nonce(0, APP, 3)


def test_beyond_the_forward_distance_is_rejected() -> None:
    tree = SecretTree(CS, SECRET, 2, RatchetConfig(max_forward_distance=5))
    with pytest.raises(ValidationError) as e:
        tree.key_nonce(0, APP, 6)
    assert e.value.rule == "15.3/forward-distance"
    assert tree.ratchet(0, APP).generation == 0  # the rejected request derived nothing
    assert tree.key_nonce(0, APP, 5).generation == 5
    with pytest.raises(ValidationError):
        tree.key_nonce(0, APP, 12)
    assert tree.key_nonce(0, APP, 11).generation == 11


def test_generation_and_leaf_bounds() -> None:
    tree = SecretTree(CS, SECRET, 4)
    with pytest.raises(ValidationError):
        tree.key_nonce(0, APP, 1 << 32)
    with pytest.raises(ValidationError):
        tree.key_nonce(4, APP, 0)
    with pytest.raises(ValidationError):
        tree.key_nonce(-1, APP, 0)


def test_tree_node_secrets_are_consumed_along_the_path() -> None:
    tree = SecretTree(CS, SECRET, 8)
    assert tree.held_nodes == [7]
    tree.ratchet(0, APP)
    assert tree.held_nodes == [2, 5, 11]  # the copath of leaf 0; root, 3, 1 and leaf 0 are consumed
    assert SECRET.hex() not in state_text(tree)
    tree.ratchet(3, HS)  # node 6 derives from the held node 5, leaving its sibling 4
    assert tree.held_nodes == [2, 4, 11]
    tree.ratchet(0, HS)  # already started: nothing more is derived
    assert tree.held_nodes == [2, 4, 11]


def test_state_round_trip_continues_identically() -> None:
    tree = SecretTree(CS, SECRET, 4, RatchetConfig(out_of_order_tolerance=4, max_forward_distance=50))
    tree.key_nonce(1, APP, 6)
    tree.key_nonce(1, APP, 3)
    tree.next_key_nonce(2, HS)
    restored = SecretTree.from_state(json.loads(state_text(tree)))
    assert restored.to_state() == tree.to_state()
    assert restored.config == tree.config
    assert restored.ratchet(1, APP).retained_generations == [2, 4, 5]
    with pytest.raises(ValidationError):
        restored.key_nonce(1, APP, 3)
    for t in (tree, restored):
        assert t.config.max_forward_distance == 50
    assert restored.key_nonce(1, APP, 4) == tree.key_nonce(1, APP, 4)
    assert restored.key_nonce(1, APP, 9) == tree.key_nonce(1, APP, 9)
    assert restored.next_key_nonce(2, HS) == tree.next_key_nonce(2, HS)
    assert restored.key_nonce(3, APP, 0) == tree.key_nonce(3, APP, 0)


def test_malformed_state_is_a_state_error() -> None:
    state = SecretTree(CS, SECRET, 2).to_state()
    broken_states = [
        {**state, "nodes": [[1, "zz"]]},
        {**state, "nodes": [[3, SECRET.hex()]]},  # outside a 2-leaf tree
        {**state, "nodes": [[1, "00"]]},  # wrong length
        {**state, "n_leaves": 3},
        {k: state[k] for k in list(state)[1:]},
    ]
    for broken in broken_states:
        with pytest.raises(StateError):
            SecretTree.from_state(broken)


def test_reprs_hold_no_secrets() -> None:
    tree = SecretTree(CS, SECRET, 2)
    k = tree.key_nonce(0, APP, 2)
    ratchet = tree.ratchet(0, APP)
    texts = [repr(tree), repr(k), repr(ratchet), repr(sender_data_key_nonce(CS, SECRET, b"x" * 40))]
    secrets = [SECRET, k.key, k.nonce, ratchet.secret, *[r.key for r in ratchet._retained.values()]]
    for text in texts:
        for s in secrets:
            assert s.hex() not in text and repr(s) not in text


def test_sender_data_sample_is_the_first_nh_bytes() -> None:
    ct = bytes(range(100))
    full = sender_data_key_nonce(CS, SECRET, ct)
    assert full == sender_data_key_nonce(CS, SECRET, ct[: CS.n_h] + b"other tail")
    assert full != sender_data_key_nonce(CS, SECRET, ct[: CS.n_h - 1])
    short = sender_data_key_nonce(CS, SECRET, b"short")
    assert short.key == CS.expand_with_label(SECRET, "key", b"short", CS.n_k)
    assert (len(full.key), len(full.nonce)) == (CS.n_k, CS.n_n)


def test_peek_does_not_consume() -> None:
    sent = sender_keys(2, 0, APP, 8)
    tree = SecretTree(CS, SECRET, 2, RatchetConfig(out_of_order_tolerance=3, max_forward_distance=6))
    before = state_text(tree)
    assert tree.peek_key_nonce(0, APP, 5) == sent[5]
    assert state_text(tree) == before  # peeking changes nothing, not even for a sender not heard from yet
    assert tree.ratchet(0, APP).generation == 0 and tree.ratchet(0, APP).retained_generations == []
    after_start = state_text(tree)
    assert tree.peek_key_nonce(0, APP, 5) == sent[5]
    assert state_text(tree) == after_start != before
    with pytest.raises(ValidationError):
        tree.peek_key_nonce(0, APP, 7)  # beyond the forward distance
    assert tree.key_nonce(0, APP, 5) == sent[5]
    assert tree.peek_key_nonce(0, APP, 3) == sent[3]
    assert tree.key_nonce(0, APP, 3) == sent[3]
    for g in (3, 5, 1):  # used, used, below the window
        with pytest.raises(ValidationError):
            tree.peek_key_nonce(0, APP, g)
    assert tree.peek_key_nonce(0, APP, 6) == sent[6]
    assert tree.ratchet(0, APP).generation == 6
