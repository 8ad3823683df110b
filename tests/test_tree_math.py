"""Properties of the array-based tree arithmetic (RFC 9420 Appendix C)."""

from __future__ import annotations

import random

import pytest

from mls.tree import tree_math as tm

SIZES = [1 << k for k in range(11)]


def _nodes(n: int) -> range:
    return range(tm.node_width(n))


def test_small_tree_by_hand() -> None:
    # The 8-leaf tree drawn in Appendix C.
    assert tm.root(8) == 7
    assert tm.direct_path(0, 8) == [1, 3, 7]
    assert tm.copath(0, 8) == [2, 5, 11]
    assert tm.direct_path(10, 8) == [9, 11, 7]
    assert tm.copath(10, 8) == [8, 13, 3]
    assert (tm.left(11), tm.right(11)) == (9, 13)
    assert tm.level(7) == 3 and tm.level(5) == 1 and tm.level(4) == 0
    assert tm.common_ancestor(2, 8) == 7
    assert tm.common_ancestor(8, 12) == 11
    assert tm.common_ancestor(5, 4) == 5
    assert list(tm.subtree_leaves(11, 8)) == [4, 5, 6, 7]


@pytest.mark.parametrize("n", SIZES)
def test_sibling_is_an_involution_and_shares_the_parent(n: int) -> None:
    r = tm.root(n)
    for x in _nodes(n):
        if x == r:
            continue
        s = tm.sibling(x, n)
        assert s != x
        assert tm.sibling(s, n) == x
        assert tm.parent(s, n) == tm.parent(x, n)


@pytest.mark.parametrize("n", SIZES)
def test_children_point_back_to_their_parent(n: int) -> None:
    for x in _nodes(n):
        if tm.is_leaf(x):
            with pytest.raises(ValueError):
                tm.left(x)
            continue
        lo, hi = tm.left(x), tm.right(x)
        assert lo < x < hi
        assert tm.parent(lo, n) == x and tm.parent(hi, n) == x
        assert tm.level(lo) == tm.level(hi) == tm.level(x) - 1


@pytest.mark.parametrize("n", SIZES)
def test_direct_path_climbs_to_the_root(n: int) -> None:
    r = tm.root(n)
    depth = tm.log2(n)
    for x in _nodes(n):
        path = tm.direct_path(x, n)
        if x == r:
            assert path == [] and tm.copath(x, n) == []
            continue
        assert path[-1] == r
        assert [tm.level(p) for p in path] == list(range(tm.level(x) + 1, depth + 1))
        assert all(tm.is_ancestor(p, x) for p in path)
        copath = tm.copath(x, n)
        assert len(copath) == len(path)
        assert [tm.parent(c, n) for c in copath] == path


def test_random_pairs_common_ancestor_matches_direct_paths() -> None:
    rng = random.Random(9420)
    for _ in range(300):
        n = rng.choice(SIZES)
        x, y = rng.randrange(tm.node_width(n)), rng.randrange(tm.node_width(n))
        ax = {x, *tm.direct_path(x, n)}
        ay = {y, *tm.direct_path(y, n)}
        expected = min(ax & ay, key=tm.level)
        assert tm.common_ancestor(x, y) == expected


@pytest.mark.parametrize("n", SIZES)
def test_leaf_and_node_indices_and_widths(n: int) -> None:
    assert tm.leaf_count(tm.node_width(n)) == n
    assert tm.node_width(n) == 2 * n - 1
    for leaf in range(n):
        x = tm.leaf_to_node(leaf)
        assert tm.is_leaf(x) and tm.node_to_leaf(x) == leaf
        assert leaf in tm.subtree_leaves(tm.root(n), n)
    assert list(tm.subtree_leaves(tm.root(n), n)) == list(range(n))


def test_filtered_direct_path_drops_nodes_with_empty_copath_resolution() -> None:
    # 8 leaves, leaf 0: direct path [1, 3, 7] with copath [2, 5, 11].
    assert tm.filtered_direct_path(0, 8, lambda node: False) == [1, 3, 7]
    assert tm.filtered_direct_path(0, 8, lambda node: node == 5) == [1, 7]
    assert tm.filtered_direct_path(0, 8, lambda node: node in (2, 11)) == [3]
    assert tm.path_and_copath(0, 8) == [(1, 2), (3, 5), (7, 11)]


def test_misuse_is_rejected() -> None:
    with pytest.raises(ValueError):
        tm.parent(7, 8)  # the root
    with pytest.raises(ValueError):
        tm.sibling(3, 2)  # outside the tree
    with pytest.raises(ValueError):
        tm.root(3)  # not a power of two
    with pytest.raises(ValueError):
        tm.node_to_leaf(3)
    with pytest.raises(ValueError):
        tm.leaf_count(4)
