"""``treekem`` vectors: processing UpdatePaths as every member with private keys, and creating fresh
UpdatePaths that every other member can process (§7.4–§7.6, §7.9)."""

from __future__ import annotations

import os
from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import CipherSuite, cipher_suite
from mls.tree.leaf_node import LeafNode
from mls.tree.nodes import UpdatePath, decode_ratchet_tree
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.treekem import PathKeys, apply_update_path, create_update_path, decrypt_update_path, node_key
from mls.wire.group_context import GroupContext


def _context(case: dict[str, Any], cs: CipherSuite, tree: RatchetTree) -> bytes:
    return GroupContext(
        1,
        cs.suite_id,
        h(case["group_id"]),
        case["epoch"],
        tree.tree_hash(),
        h(case["confirmed_transcript_hash"]),
        (),
    ).to_bytes()


def _private_states(cs: CipherSuite, case: dict[str, Any]) -> dict[int, PathKeys]:
    states = {}
    for leaf in case["leaves_private"]:
        keys = PathKeys(leaf["index"], cs.hpke_key_from_private_bytes(h(leaf["encryption_priv"])))
        for entry in leaf["path_secrets"]:
            keys.node_keys[entry["node"]] = node_key(cs, h(entry["path_secret"]))
        states[leaf["index"]] = keys
    return states


@vector_kind(
    "treekem",
    keys=[
        "cipher_suite",
        "confirmed_transcript_hash",
        "epoch",
        "group_id",
        "leaves_private",
        "ratchet_tree",
        "update_paths",
    ],
)
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    group_id = h(case["group_id"])
    tree = RatchetTree.from_wire(cs, decode_ratchet_tree(h(case["ratchet_tree"])))
    states = _private_states(cs, case)
    for n, up in enumerate(case["update_paths"]):
        sender = up["sender"]
        path = UpdatePath.from_bytes(h(up["update_path"]))
        merged = apply_update_path(tree, sender, path, group_id)
        expect_equal(f"path {n}: tree hash after", merged.tree_hash(), h(up["tree_hash_after"]))
        context = _context(case, cs, merged)
        for index in states:
            if index == sender:
                continue
            want = up["path_secrets"][index]  # indexed by leaf index; null for the sender and absent leaves
            _, commit_secret, secret = decrypt_update_path(merged, sender, path, states[index], context)
            expect_equal(f"path {n}: path secret at leaf {index}", secret, h(want))
            expect_equal(f"path {n}: commit secret at leaf {index}", commit_secret, h(up["commit_secret"]))
    _round_trip_fresh_paths(case, cs, tree, states)


def _round_trip_fresh_paths(
    case: dict[str, Any], cs: CipherSuite, tree: RatchetTree, states: dict[int, PathKeys]
) -> None:
    """Each member with private keys makes a new UpdatePath; every other one must reach its commit secret."""
    group_id = h(case["group_id"])
    signers = {
        leaf["index"]: cs.signer_from_private_bytes(h(leaf["signature_priv"]))
        for leaf in case["leaves_private"]
    }
    for sender, signer in signers.items():
        template = tree.leaf(sender)
        assert template is not None

        def sign(leaf: LeafNode, signer: Any = signer, sender: int = sender) -> LeafNode:
            sig = cs.sign_with_label(signer, "LeafNodeTBS", leaf.tbs(group_id, sender))
            return LeafNode(**{**leaf.__dict__, "signature": sig})

        created = create_update_path(
            tree,
            sender,
            new_leaf_key=cs.kem.generate(),
            sign_leaf=sign,
            leaf_template=template,
            group_context_for=lambda t: _context(case, cs, t),
            first_path_secret=os.urandom(cs.n_h),
        )
        merged = apply_update_path(tree, sender, created.update_path, group_id)
        expect_equal(f"fresh path from {sender}: merged tree", merged.encode(), created.tree.encode())
        context = _context(case, cs, merged)
        for index, keys in states.items():
            if index == sender:
                continue
            _, commit_secret, _ = decrypt_update_path(merged, sender, created.update_path, keys, context)
            expect_equal(
                f"fresh path from {sender}: commit secret at {index}", commit_secret, created.commit_secret
            )
