"""TreeKEM (RFC 9420 §7.4-§7.6, §7.9, §12.4.2) on the working group's ``treekem`` vectors: a tampered
UpdatePath is rejected without touching the input tree, the private keys after processing a path are
exactly those the tree invariant allows, and nothing secret shows in a ``repr``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mls.crypto import CipherSuite, cipher_suite
from mls.errors import CryptoError, ValidationError
from mls.schedule.key_schedule import KeySchedule
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode, LeafNodeSource, Lifetime
from mls.tree.nodes import HPKECiphertext, ParentNode, UpdatePath, UpdatePathNode, decode_ratchet_tree
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.treekem import PathKeys, apply_update_path, create_update_path, decrypt_update_path, node_key
from mls.wire.group_context import GroupContext

from .vectors import load

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CASES = load("treekem")


@dataclass
class Case:
    cs: CipherSuite
    group_id: bytes
    tree: RatchetTree
    states: dict[int, PathKeys]
    paths: list[tuple[int, UpdatePath]]
    raw: dict[str, Any]

    def context(self, tree: RatchetTree) -> bytes:
        raw = self.raw
        return GroupContext(
            1,
            self.cs.suite_id,
            self.group_id,
            raw["epoch"],
            tree.tree_hash(),
            bytes.fromhex(raw["confirmed_transcript_hash"]),
            (),
        ).to_bytes()


def case(index: int) -> Case:
    raw = CASES[index]
    cs = cipher_suite(raw["cipher_suite"])
    tree = RatchetTree.from_wire(cs, decode_ratchet_tree(bytes.fromhex(raw["ratchet_tree"])))
    states = {}
    for leaf in raw["leaves_private"]:
        keys = PathKeys(leaf["index"], cs.hpke_key_from_private_bytes(bytes.fromhex(leaf["encryption_priv"])))
        for entry in leaf["path_secrets"]:
            keys.node_keys[entry["node"]] = node_key(cs, bytes.fromhex(entry["path_secret"]))
        states[leaf["index"]] = keys
    paths = [
        (up["sender"], UpdatePath.from_bytes(bytes.fromhex(up["update_path"]))) for up in raw["update_paths"]
    ]
    return Case(cs, bytes.fromhex(raw["group_id"]), tree, states, paths, raw)


def flip(data: bytes, at: int = 0, bit: int = 0) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]


def tree_state(tree: RatchetTree) -> tuple[bytes, bytes, list[bytes]]:
    return tree.encode(), tree.tree_hash(), tree.all_node_hashes()


def keys_state(keys: PathKeys) -> tuple[int, bytes, dict[int, bytes]]:
    return keys.own_leaf, keys.leaf_key.public_key, {x: k.public_key for x, k in keys.node_keys.items()}


def set_leaf_fields(path: UpdatePath, **changes: Any) -> UpdatePath:
    return UpdatePath(dataclasses.replace(path.leaf_node, **changes), path.nodes)


def set_node(path: UpdatePath, k: int, node: UpdatePathNode) -> UpdatePath:
    nodes = list(path.nodes)
    nodes[k] = node
    return UpdatePath(path.leaf_node, tuple(nodes))


# ---- tampered UpdatePaths are rejected when merged (§7.5, §7.9.2, §12.4.2) ---------------------------

Tamper = Callable[[UpdatePath, int], UpdatePath]


def _drop_last(path: UpdatePath, n: int) -> UpdatePath:
    return UpdatePath(path.leaf_node, path.nodes[:-1])


def _extra_node(path: UpdatePath, n: int) -> UpdatePath:
    return UpdatePath(path.leaf_node, (*path.nodes, path.nodes[-1]))


def _no_nodes(path: UpdatePath, n: int) -> UpdatePath:
    return UpdatePath(path.leaf_node, ())


def _encryption_key(path: UpdatePath, n: int) -> UpdatePath:
    k = n % len(path.nodes)
    node = path.nodes[k]
    return set_node(
        path, k, UpdatePathNode(flip(node.encryption_key, n // 7 + 1), node.encrypted_path_secret)
    )


def _swap_keys(path: UpdatePath, n: int) -> UpdatePath:
    if len(path.nodes) < 2:
        return _encryption_key(path, n)
    a, b = path.nodes[0], path.nodes[-1]
    path = set_node(path, 0, UpdatePathNode(b.encryption_key, a.encrypted_path_secret))
    return set_node(path, len(path.nodes) - 1, UpdatePathNode(a.encryption_key, b.encrypted_path_secret))


def _source_update(path: UpdatePath, n: int) -> UpdatePath:
    return set_leaf_fields(path, leaf_node_source=LeafNodeSource.update, parent_hash=None)


def _source_key_package(path: UpdatePath, n: int) -> UpdatePath:
    return set_leaf_fields(
        path, leaf_node_source=LeafNodeSource.key_package, parent_hash=None, lifetime=Lifetime(0, 2**64 - 1)
    )


def _leaf_parent_hash(path: UpdatePath, n: int) -> UpdatePath:
    ph = path.leaf_node.parent_hash
    assert ph
    return set_leaf_fields(path, parent_hash=flip(ph, n, n % 8))


def _leaf_parent_hash_empty(path: UpdatePath, n: int) -> UpdatePath:
    return set_leaf_fields(path, parent_hash=b"")


def _leaf_signature(path: UpdatePath, n: int) -> UpdatePath:
    return set_leaf_fields(path, signature=flip(path.leaf_node.signature, n, n % 8))


def _leaf_encryption_key(path: UpdatePath, n: int) -> UpdatePath:
    return set_leaf_fields(path, encryption_key=flip(path.leaf_node.encryption_key, n + 1))


TAMPERS: dict[str, tuple[Tamper, str | None]] = {
    # name: (tamper, the rule it must be rejected with; None = any ValidationError)
    "one node too few": (_drop_last, "7.6/update-path-length"),
    "one node too many": (_extra_node, "7.6/update-path-length"),
    "no nodes": (_no_nodes, "7.6/update-path-length"),
    "modified node encryption_key": (_encryption_key, "7.5/leaf-parent-hash"),
    "swapped node encryption_keys": (_swap_keys, "7.5/leaf-parent-hash"),
    "leaf source update": (_source_update, "7.3/leaf-node-source"),
    "leaf source key_package": (_source_key_package, "7.3/leaf-node-source"),
    "leaf parent_hash flipped": (_leaf_parent_hash, "7.5/leaf-parent-hash"),
    "leaf parent_hash empty": (_leaf_parent_hash_empty, "7.5/leaf-parent-hash"),
    "leaf signature flipped": (_leaf_signature, "7.3/leaf-signature"),
    "leaf encryption_key changed (signature covers it)": (_leaf_encryption_key, "7.3/leaf-signature"),
}


@pytest.mark.parametrize("name", list(TAMPERS))
@pytest.mark.parametrize("index", range(0, len(CASES), 2))
def test_a_tampered_update_path_is_rejected_and_the_tree_is_unchanged(index: int, name: str) -> None:
    c = case(index)
    tamper, rule = TAMPERS[name]
    before = tree_state(c.tree)
    for n, (sender, path) in enumerate(c.paths):
        bad = tamper(path, n + index)
        assert bad != path
        with pytest.raises(ValidationError) as e:
            apply_update_path(c.tree, sender, bad, c.group_id)
        if rule is not None:
            assert e.value.rule == rule, f"path {n}: {e.value}"
        assert tree_state(c.tree) == before
    # And the genuine paths still merge (the tree was not left half-changed).
    for sender, path in c.paths:
        apply_update_path(c.tree, sender, path, c.group_id)
    assert tree_state(c.tree) == before


@pytest.mark.parametrize("index", range(1, len(CASES), 2))
def test_a_path_from_another_sender_or_group_is_rejected(index: int) -> None:
    c = case(index)
    before = tree_state(c.tree)
    members = [i for i, _ in c.tree.leaves()]
    for n, (sender, path) in enumerate(c.paths):
        other = members[(members.index(sender) + 1 + n) % len(members)]
        if other != sender:
            with pytest.raises(ValidationError):
                apply_update_path(c.tree, other, path, c.group_id)
        with pytest.raises(ValidationError) as e:
            apply_update_path(c.tree, sender, path, flip(c.group_id, n))
        assert e.value.rule == "7.3/leaf-signature"  # the leaf signature covers the group id
    assert tree_state(c.tree) == before


@pytest.mark.parametrize("index", range(len(CASES)))
def test_a_genuine_path_merges_into_a_copy_only(index: int) -> None:
    c = case(index)
    before = tree_state(c.tree)
    for n, (sender, path) in enumerate(c.paths):
        merged = apply_update_path(c.tree, sender, path, c.group_id)
        assert merged.tree_hash().hex() == c.raw["update_paths"][n]["tree_hash_after"]
        assert merged.leaf(sender) == path.leaf_node
        assert [merged.parent_node(p).encryption_key for p in merged.filtered_direct_path(sender)] == [  # type: ignore[union-attr]
            upn.encryption_key for upn in path.nodes
        ]
        assert tree_state(c.tree) == before


# ---- tampered ciphertexts are rejected when decrypting (§7.6) ------------------------------------------


def _receiver_slot(merged: RatchetTree, sender: int, keys: PathKeys) -> tuple[int, int]:
    """(index in the UpdatePath, index in the ciphertext list) of the ciphertext meant for ``keys``."""
    for i, (_, copath_child) in enumerate(merged.filtered_path_and_copath(sender)):
        for j, r in enumerate(merged.resolution(copath_child)):
            if keys.key_for(r) is not None:
                return i, j
    raise AssertionError("the receiver is not covered by the path")


def _with_ciphertext(path: UpdatePath, i: int, j: int, ct: HPKECiphertext) -> UpdatePath:
    cts = list(path.nodes[i].encrypted_path_secret)
    cts[j] = ct
    return set_node(path, i, UpdatePathNode(path.nodes[i].encryption_key, tuple(cts)))


CT_TAMPERS = ["ciphertext bit", "ciphertext truncated", "kem_output bit", "swapped with another", "context"]


@SETTINGS
@given(index=st.sampled_from(range(len(CASES))), kind=st.sampled_from(CT_TAMPERS), data=st.data())
def test_a_tampered_ciphertext_is_a_crypto_error_and_changes_nothing(
    index: int, kind: str, data: st.DataObject
) -> None:
    c = case(index)
    n = data.draw(st.integers(0, len(c.paths) - 1))
    sender, path = c.paths[n]
    merged = apply_update_path(c.tree, sender, path, c.group_id)
    receiver = data.draw(st.sampled_from([i for i in c.states if i != sender]))
    keys = c.states[receiver]
    i, j = _receiver_slot(merged, sender, keys)
    ct = path.nodes[i].encrypted_path_secret[j]
    context = c.context(merged)
    at, bit = data.draw(st.integers(0, 10**4)), data.draw(st.integers(0, 7))
    if kind == "ciphertext bit":
        bad = _with_ciphertext(path, i, j, HPKECiphertext(ct.kem_output, flip(ct.ciphertext, at, bit)))
    elif kind == "ciphertext truncated":
        bad = _with_ciphertext(
            path, i, j, HPKECiphertext(ct.kem_output, ct.ciphertext[: at % len(ct.ciphertext)])
        )
    elif kind == "kem_output bit":
        bad = _with_ciphertext(path, i, j, HPKECiphertext(flip(ct.kem_output, at, bit), ct.ciphertext))
    elif kind == "swapped with another":
        others = [o for k, node in enumerate(path.nodes) for o in node.encrypted_path_secret if o != ct]
        if not others:
            return
        bad = _with_ciphertext(path, i, j, others[at % len(others)])
    else:
        bad, context = path, flip(context, at, bit)
    before_tree, before_keys = tree_state(merged), keys_state(keys)
    with pytest.raises(CryptoError):
        decrypt_update_path(merged, sender, bad, keys, context)
    assert tree_state(merged) == before_tree
    assert keys_state(keys) == before_keys
    decrypt_update_path(merged, sender, path, keys, c.context(merged))  # the genuine one still works


@pytest.mark.parametrize("index", range(0, len(CASES), 3))
def test_a_wrong_ciphertext_count_or_public_key_is_a_validation_error(index: int) -> None:
    c = case(index)
    for sender, path in c.paths:
        merged = apply_update_path(c.tree, sender, path, c.group_id)
        context = c.context(merged)
        for receiver, keys in c.states.items():
            if receiver == sender:
                continue
            before = keys_state(keys)
            i, j = _receiver_slot(merged, sender, keys)
            node = path.nodes[i]
            extra = set_node(
                path,
                i,
                UpdatePathNode(
                    node.encryption_key, (*node.encrypted_path_secret, node.encrypted_path_secret[j])
                ),
            )
            with pytest.raises(ValidationError) as e:
                decrypt_update_path(merged, sender, extra, keys, context)
            assert e.value.rule == "7.6/encrypted-path-secret-count"
            # A public key at or above the common ancestor that is not the one the path secret derives.
            k = len(path.nodes) - 1
            wrong = set_node(
                path,
                k,
                UpdatePathNode(flip(path.nodes[k].encryption_key, 1), path.nodes[k].encrypted_path_secret),
            )
            with pytest.raises(ValidationError) as e:
                decrypt_update_path(merged, sender, wrong, keys, context)
            assert e.value.rule == "7.5/derived-public-key"
            assert keys_state(keys) == before


# ---- the private keys after processing a path (§7.4 tree invariant, §7.5) -------------------------------


@pytest.mark.parametrize("index", range(len(CASES)))
def test_path_keys_after_decrypting_follow_the_tree_invariant(index: int) -> None:
    c = case(index)
    for sender, path in c.paths:
        merged = apply_update_path(c.tree, sender, path, c.group_id)
        context = c.context(merged)
        fdp = merged.filtered_direct_path(sender)
        sender_path = set(tm.direct_path(2 * sender, merged.n_leaves))
        for receiver, old in c.states.items():
            if receiver == sender:
                continue
            own = 2 * receiver
            old_state = keys_state(old)
            new, _, _ = decrypt_update_path(merged, sender, path, old, context)
            lca = tm.common_ancestor(2 * sender, own)
            assert lca in fdp
            fresh = {p for p in fdp if tm.is_ancestor(p, own)}  # the common ancestor and up
            assert fresh == {p for p in fdp[fdp.index(lca) :]}
            kept = {x for x in old.node_keys if x not in sender_path}
            assert set(new.node_keys) == fresh | kept, f"sender {sender}, receiver {receiver}"
            for x, key in new.node_keys.items():
                assert tm.is_ancestor(x, own) and x != own  # only nodes above the own leaf
                node = merged.node(x)
                assert node is not None and node.encryption_key == key.public_key
            for x in kept:
                assert new.node_keys[x] is old.node_keys[x]
            assert (new.own_leaf, new.leaf_key) == (old.own_leaf, old.leaf_key)
            assert keys_state(old) == old_state  # the input keys are not modified


@pytest.mark.parametrize("index", range(len(CASES)))
def test_drop_nodes_not_in_forgets_exactly_the_replaced_and_blanked_nodes(index: int) -> None:
    c = case(index)
    for sender, path in c.paths:
        merged = apply_update_path(c.tree, sender, path, c.group_id)
        sender_path = set(tm.direct_path(2 * sender, merged.n_leaves))
        for receiver, old in c.states.items():
            if receiver == sender:
                continue
            keys = old.copy()
            keys.drop_nodes_not_in(merged)
            assert set(keys.node_keys) == {x for x in old.node_keys if x not in sender_path}
            assert keys.leaf_key is old.leaf_key
            keys.drop_nodes_not_in(c.tree)  # against the tree they came from: nothing more to drop
            assert set(keys.node_keys) == {x for x in old.node_keys if x not in sender_path}


def test_drop_nodes_not_in_by_hand() -> None:
    cs = cipher_suite(1)
    keys = {x: cs.kem.generate() for x in (1, 3, 5, 7, 11)}
    nodes: list[Any] = [None] * 15
    lf = case(0).tree.leaf(0)
    assert lf is not None
    nodes[0] = lf
    for x, k in keys.items():
        nodes[x] = ParentNode(k.public_key, b"", ())
    tree = RatchetTree(cs, nodes)
    pk = PathKeys(0, cs.kem.generate(), dict(keys))
    pk.drop_nodes_not_in(tree)
    assert set(pk.node_keys) == {1, 3, 5, 7, 11}
    tree.set_parent(3, None)  # blanked
    tree.set_parent(1, ParentNode(cs.kem.generate().public_key, b"", ()))  # replaced
    tree.set_parent(5, ParentNode(keys[5].public_key, b"\x01", (2,)))  # same key, other fields: kept
    pk.drop_nodes_not_in(tree)
    assert set(pk.node_keys) == {5, 7, 11}
    tree.set_parent(7, None)
    tree.set_parent(11, None)
    tree.truncate()  # node 11 is now outside the tree
    assert tree.width == 7
    pk.drop_nodes_not_in(tree)
    assert set(pk.node_keys) == {5}
    assert pk.key_for(0) is pk.leaf_key and pk.key_for(5) is keys[5] and pk.key_for(3) is None


# ---- creating paths, with excluded (newly added) leaves (§12.4.2) -----------------------------------------


@pytest.mark.parametrize("index", range(0, len(CASES), 4))
def test_a_created_path_excludes_new_members_and_the_rest_can_process_it(index: int) -> None:
    c = case(index)
    signers = {
        leaf["index"]: c.cs.signer_from_private_bytes(bytes.fromhex(leaf["signature_priv"]))
        for leaf in c.raw["leaves_private"]
    }
    sender = min(signers)
    tree = c.tree.copy()
    joiner = case((index + 1) % len(CASES)).tree.leaf(0)  # its keys are never used: it is excluded
    assert joiner is not None
    newcomer = tree.add_leaf(joiner)
    before = tree_state(tree)

    def sign(leaf: LeafNode) -> LeafNode:
        sig = c.cs.sign_with_label(signers[sender], "LeafNodeTBS", leaf.tbs(c.group_id, sender))
        return dataclasses.replace(leaf, signature=sig)

    template = tree.leaf(sender)
    assert template is not None
    created = create_update_path(
        tree,
        sender,
        new_leaf_key=c.cs.kem.generate(),
        sign_leaf=sign,
        leaf_template=template,
        group_context_for=c.context,
        exclude_leaves=[newcomer],
        first_path_secret=os.urandom(c.cs.n_h),
    )
    assert tree_state(tree) == before
    merged = apply_update_path(tree, sender, created.update_path, c.group_id)
    assert merged.encode() == created.tree.encode()
    for (_, copath_child), upn in zip(merged.filtered_path_and_copath(sender), created.update_path.nodes):
        want = merged.resolution(copath_child, [newcomer])
        assert len(upn.encrypted_path_secret) == len(want)
        assert 2 * newcomer not in want
    context = c.context(merged)
    for receiver, keys in c.states.items():
        if receiver != sender:
            new, commit_secret, _ = decrypt_update_path(
                merged, sender, created.update_path, keys, context, [newcomer]
            )
            assert commit_secret == created.commit_secret
            assert {
                x: k.public_key for x, k in new.node_keys.items() if x in created.path_keys.node_keys
            } == {
                x: k.public_key
                for x, k in created.path_keys.node_keys.items()
                if tm.is_ancestor(x, 2 * receiver)
            }


# ---- nothing secret in a repr ------------------------------------------------------------------------


def _secret_forms(secret: bytes) -> list[str]:
    hx = secret.hex()
    return [hx, hx[:16], hx[-16:], repr(secret), str(list(secret[:8]))[1:-1]]


def assert_no_secret(text: str, secrets: list[bytes]) -> None:
    for secret in secrets:
        assert len(secret) >= 16
        for form in _secret_forms(secret):
            assert form not in text, f"secret material ({form[:12]}…) in {text[:120]!r}"


@pytest.mark.parametrize("suite", range(1, 8))
def test_reprs_hold_no_private_keys_or_secrets(suite: int) -> None:
    cs = cipher_suite(suite)
    index = next(i for i, raw in enumerate(CASES) if raw["cipher_suite"] == suite)
    c = case(index)
    sender, path = c.paths[0]
    merged = apply_update_path(c.tree, sender, path, c.group_id)
    receiver = next(i for i in c.states if i != sender)
    new, commit_secret, path_secret = decrypt_update_path(
        merged, sender, path, c.states[receiver], c.context(merged)
    )
    assert new.node_keys
    hpke_keys = [new.leaf_key, *new.node_keys.values()]
    for key in hpke_keys:
        assert_no_secret(repr(key) + str(key), [key.private_bytes()])  # type: ignore[attr-defined]
    private = [k.private_bytes() for k in hpke_keys]  # type: ignore[attr-defined]
    assert_no_secret(repr(new) + str(new) + f"{new!r}", private)

    signer = cs.signer_from_private_bytes(bytes.fromhex(c.raw["leaves_private"][0]["signature_priv"]))
    generated = cs.generate_signer()
    for s in (signer, generated):
        assert_no_secret(repr(s) + str(s), [s.private_bytes()])
    fresh_key = cs.kem.generate()
    assert_no_secret(repr(fresh_key), [fresh_key.private_bytes()])

    ks = KeySchedule.from_joiner_secret(cs, path_secret, commit_secret, c.context(merged))
    secrets = [ks.joiner_secret, ks.welcome_secret, ks.epoch_secret, commit_secret, path_secret]
    secrets += [bytes.fromhex(v) for k, v in ks.secrets.to_state().items() if k != "cipher_suite"]
    assert_no_secret(repr(ks) + str(ks), secrets)
    assert_no_secret(repr(ks.secrets) + str(ks.secrets), secrets)
    _, consumed = ks.secrets.start_secret_tree(4)
    assert_no_secret(repr(consumed), secrets)

    created = create_update_path(
        c.tree,
        sender,
        new_leaf_key=cs.kem.generate(),
        sign_leaf=lambda lf: lf,
        leaf_template=c.tree.leaf(sender),  # type: ignore[arg-type]
        group_context_for=c.context,
        first_path_secret=os.urandom(cs.n_h),
    )
    created_secrets = [created.commit_secret, *created.path_secrets.values()]
    created_secrets += [k.private_bytes() for k in created.path_keys.node_keys.values()]  # type: ignore[attr-defined]
    created_secrets.append(created.path_keys.leaf_key.private_bytes())  # type: ignore[attr-defined]
    assert_no_secret(repr(created) + repr(created.path_keys), created_secrets)
