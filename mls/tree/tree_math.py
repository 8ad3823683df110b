"""Array-based tree arithmetic (RFC 9420 Appendix C, used by §4.1, §7 and §9).

A tree with ``n_leaves`` leaves is stored as a flat array of ``node_width(n_leaves)`` nodes: leaf ``i``
is node ``2*i`` and the intermediate (parent) nodes are the odd indices. Every function here is a pure
function of node indices and a leaf count; none of them looks at node contents. Where a relation needs
the tree's contents — the *filtered* direct path of §4.1.2, which drops the nodes whose copath child has
an empty resolution — the caller passes a predicate.

RFC 9420 trees are always full (§7.8: the tree grows by doubling and shrinks by halving), so every
function taking ``n_leaves`` requires a power of two.

Misuse (a leaf asked for its children, the root for its parent, an index outside the tree) raises
:class:`ValueError`: these are programming errors, and protocol code checks indices that come from the
wire before it calls in here.
"""

from __future__ import annotations

from collections.abc import Callable


def log2(x: int) -> int:
    """The exponent of the largest power of 2 not above ``x`` (0 for ``x == 0``)."""
    if x < 0:
        raise ValueError("log2 of a negative number")
    return max(x.bit_length() - 1, 0)


def level(x: int) -> int:
    """The level of node ``x``: leaves are at level 0, their parents at level 1, and so on."""
    _check_index(x)
    k = 0
    while (x >> k) & 1:
        k += 1
    return k


def is_leaf(x: int) -> bool:
    """Whether node ``x`` is a leaf (leaves have even node indices)."""
    _check_index(x)
    return x & 1 == 0


def leaf_to_node(leaf: int) -> int:
    """The node index of leaf ``leaf`` (§4.1: leaf ``i`` is node ``2*i``)."""
    _check_index(leaf)
    return 2 * leaf


def node_to_leaf(x: int) -> int:
    """The leaf index of the leaf node ``x``."""
    if not is_leaf(x):
        raise ValueError(f"node {x} is not a leaf")
    return x >> 1


def node_width(n_leaves: int) -> int:
    """The number of nodes in a tree with ``n_leaves`` leaves."""
    if n_leaves < 0:
        raise ValueError("negative leaf count")
    return 0 if n_leaves == 0 else 2 * (n_leaves - 1) + 1


def leaf_count(width: int) -> int:
    """The number of leaves of a tree with ``width`` nodes (the inverse of :func:`node_width`)."""
    if width < 0 or (width > 0 and width % 2 == 0):
        raise ValueError(f"{width} is not a valid node width")
    return 0 if width == 0 else (width + 1) // 2


def root(n_leaves: int) -> int:
    """The node index of the root of a tree with ``n_leaves`` leaves."""
    _check_leaves(n_leaves)
    return (1 << log2(node_width(n_leaves))) - 1


def left(x: int) -> int:
    """The left child of intermediate node ``x``."""
    k = level(x)
    if k == 0:
        raise ValueError(f"leaf node {x} has no children")
    return x ^ (0x01 << (k - 1))


def right(x: int) -> int:
    """The right child of intermediate node ``x``."""
    k = level(x)
    if k == 0:
        raise ValueError(f"leaf node {x} has no children")
    return x ^ (0x03 << (k - 1))


def parent(x: int, n_leaves: int) -> int:
    """The parent of node ``x`` in a tree with ``n_leaves`` leaves."""
    _check_in_tree(x, n_leaves)
    if x == root(n_leaves):
        raise ValueError("the root node has no parent")
    k = level(x)
    b = (x >> (k + 1)) & 0x01
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n_leaves: int) -> int:
    """The other child of the parent of node ``x``."""
    p = parent(x, n_leaves)
    return right(p) if x < p else left(p)


def _ancestors(x: int, n_leaves: int) -> list[int]:
    """The direct path of ``x``, checked once: each step is :func:`parent`'s formula at a level one
    higher than the last (the parent of a level-k node is at level k+1)."""
    _check_in_tree(x, n_leaves)
    r = root(n_leaves)
    k = level(x)
    path: list[int] = []
    while x != r:
        x = (x | (1 << k)) ^ (((x >> (k + 1)) & 0x01) << (k + 1))
        k += 1
        path.append(x)
    return path


def direct_path(x: int, n_leaves: int) -> list[int]:
    """The direct path of node ``x``, from its parent up to and including the root (§4.1)."""
    return _ancestors(x, n_leaves)


def copath(x: int, n_leaves: int) -> list[int]:
    """The copath of node ``x``: the sibling of each node from ``x`` up to (not including) the root."""
    return [child for _, child in path_and_copath(x, n_leaves)]


def path_and_copath(x: int, n_leaves: int) -> list[tuple[int, int]]:
    """Pairs ``(direct path node, its child on the copath of x)``, ordered from leaf to root."""
    pairs: list[tuple[int, int]] = []
    for p in _ancestors(x, n_leaves):
        pairs.append((p, right(p) if x < p else left(p)))
        x = p
    return pairs


def filtered_direct_path(x: int, n_leaves: int, resolution_is_empty: Callable[[int], bool]) -> list[int]:
    """The filtered direct path of node ``x`` (§4.1.2).

    ``resolution_is_empty(node)`` tells whether ``node`` has an empty resolution in the caller's tree;
    a direct-path node is dropped when its child on the copath of ``x`` has an empty resolution.
    """
    return [p for p, child in path_and_copath(x, n_leaves) if not resolution_is_empty(child)]


def common_ancestor(x: int, y: int) -> int:
    """The lowest node whose subtree holds both ``x`` and ``y`` (a node is its own ancestor)."""
    _check_index(x)
    _check_index(y)
    lx, ly = level(x) + 1, level(y) + 1
    if lx <= ly and x >> ly == y >> ly:
        return y
    if ly <= lx and x >> lx == y >> lx:
        return x
    k = 0
    while x != y:
        x, y = x >> 1, y >> 1
        k += 1
    return (x << k) + (1 << (k - 1)) - 1


def is_ancestor(a: int, x: int) -> bool:
    """Whether node ``a`` is ``x`` or an ancestor of ``x``."""
    return common_ancestor(a, x) == a


def subtree_leaves(x: int, n_leaves: int) -> range:
    """The leaf indices under node ``x`` (only those that exist in a tree with ``n_leaves`` leaves)."""
    _check_in_tree(x, n_leaves)
    k = level(x)
    first = (x >> (k + 1)) << k  # leftmost leaf's node index is x - (2**k - 1); halved it is this
    return range(first, min(first + (1 << k), n_leaves))


def _check_index(x: int) -> None:
    if x < 0:
        raise ValueError(f"negative index {x}")


def _check_leaves(n_leaves: int) -> None:
    if n_leaves < 1 or n_leaves & (n_leaves - 1):
        raise ValueError(f"a ratchet tree has a power-of-two number of leaves (§7.8), not {n_leaves}")


def _check_in_tree(x: int, n_leaves: int) -> None:
    _check_leaves(n_leaves)
    if not 0 <= x < node_width(n_leaves):
        raise ValueError(f"node {x} is outside a tree of {n_leaves} leaves")


__all__ = [
    "common_ancestor",
    "copath",
    "direct_path",
    "filtered_direct_path",
    "is_ancestor",
    "is_leaf",
    "leaf_count",
    "leaf_to_node",
    "left",
    "level",
    "log2",
    "node_to_leaf",
    "node_width",
    "parent",
    "path_and_copath",
    "right",
    "root",
    "sibling",
    "subtree_leaves",
]
