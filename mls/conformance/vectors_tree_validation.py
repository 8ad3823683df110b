"""``tree-validation`` vectors: tree hashes and resolutions of every node, and a valid tree (§4.1.1, §7.8,
§7.9.2, §12.4.3.1)."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite
from mls.tree.leaf_validation import LeafPolicy
from mls.tree.nodes import decode_ratchet_tree
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.tree_validation import (
    verify_leaves,
    verify_parent_hashes,
    verify_unique_keys,
    verify_unmerged_leaves,
)


@vector_kind("tree-validation", keys=["cipher_suite", "tree", "group_id", "tree_hashes", "resolutions"])
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    tree = RatchetTree.from_wire(cs, decode_ratchet_tree(h(case["tree"])))
    expect_equal("number of nodes", tree.width, len(case["tree_hashes"]))
    for x, want in enumerate(case["tree_hashes"]):
        expect_equal(f"tree hash of node {x}", tree.node_hash(x), h(want))
    for x, want in enumerate(case["resolutions"]):
        expect_equal(f"resolution of node {x}", tree.resolution(x), want)
    verify_parent_hashes(tree)
    verify_unmerged_leaves(tree)
    verify_unique_keys(tree)
    verify_leaves(tree, h(case["group_id"]), LeafPolicy())
