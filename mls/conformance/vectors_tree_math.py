"""``tree-math`` vectors: root and the left/right/parent/sibling relations of every node of a tree
(RFC 9420 Appendix C). ``null`` in a vector marks a relation that is undefined for that node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mls.conformance.checks import expect_equal
from mls.conformance.runner import vector_kind
from mls.tree import tree_math as tm


def _or_none(fn: Callable[[int], int], x: int) -> int | None:
    try:
        return fn(x)
    except ValueError:
        return None


@vector_kind("tree-math", keys=["n_leaves", "n_nodes", "root", "left", "right", "parent", "sibling"])
def run(case: dict[str, Any]) -> None:
    n = case["n_leaves"]
    width = tm.node_width(n)
    expect_equal("n_nodes", width, case["n_nodes"])
    expect_equal("leaf_count", tm.leaf_count(width), n)
    expect_equal("root", tm.root(n), case["root"])
    relations: dict[str, Callable[[int], int]] = {
        "left": tm.left,
        "right": tm.right,
        "parent": lambda x: tm.parent(x, n),
        "sibling": lambda x: tm.sibling(x, n),
    }
    for name, fn in relations.items():
        want = case[name]
        expect_equal(f"{name} length", len(want), width)
        for x in range(width):
            expect_equal(f"{name}({x})", _or_none(fn, x), want[x])
