"""``tree-operations`` vectors: applying one Add, Update or Remove proposal to a tree (§7.7, §12.1)."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import Skip, vector_kind
from mls.crypto import cipher_suite
from mls.tree.nodes import decode_ratchet_tree
from mls.tree.ratchet_tree import RatchetTree
from mls.wire.proposals import Add, Proposal, Remove, Update


@vector_kind(
    "tree-operations",
    keys=[
        "cipher_suite",
        "proposal",
        "proposal_sender",
        "tree_after",
        "tree_before",
        "tree_hash_after",
        "tree_hash_before",
    ],
)
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    tree = RatchetTree.from_wire(cs, decode_ratchet_tree(h(case["tree_before"])))
    expect_equal("tree hash before", tree.tree_hash(), h(case["tree_hash_before"]))
    body = Proposal.from_bytes(h(case["proposal"])).body
    if isinstance(body, Add):
        tree.add_leaf(body.key_package.leaf_node)
    elif isinstance(body, Update):
        tree.update_leaf(case["proposal_sender"], body.leaf_node)
    elif isinstance(body, Remove):
        tree.remove_leaf(body.removed)
    else:
        raise Skip(f"proposal type {type(body).__name__} does not change the tree")
    expect_equal("tree after", tree.encode(), h(case["tree_after"]))
    expect_equal("tree hash after", tree.tree_hash(), h(case["tree_hash_after"]))
