"""The public ratchet tree (RFC 9420 §4.1, §7.7, §7.8, §12.1): shapes after add/remove/truncate,
resolution with excluded leaves, the hash cache against an independent tree hash, copy independence and
the wire round trip.

Trees and leaf nodes come from the working group's ``tree-validation`` vectors; expected values are
computed here from the RFC's definitions (not by the code under test) wherever that is practical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mls.crypto import CipherSuite, cipher_suite
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode
from mls.tree.nodes import ParentNode, decode_ratchet_tree, decode_ratchet_tree_extension
from mls.tree.ratchet_tree import RatchetTree, TreeNode
from mls.tree.tree_hash import _blank_suffix
from mls.wire.codec import Writer

from .vectors import load

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TREE_CASES = load("tree-validation")
CS = cipher_suite(1)
SUITE1 = [c for c in TREE_CASES if c["cipher_suite"] == 1]


def wire_tree(case: dict[str, Any]) -> RatchetTree:
    """The vector's tree as a joiner decodes it (the node encodings noted, the message kept)."""
    return RatchetTree.decode(cipher_suite(case["cipher_suite"]), bytes.fromhex(case["tree"]))


def _leaf_pool() -> list[LeafNode]:
    seen: dict[bytes, LeafNode] = {}
    for case in SUITE1:
        for _, leaf in wire_tree(case).leaves():
            seen.setdefault(leaf.encryption_key, leaf)
    return list(seen.values())


LEAVES = _leaf_pool()
#: Suite-1 vector trees that are small enough for random operation sequences (≤ 8 leaves).
SMALL = [c for c in SUITE1 if wire_tree(c).n_leaves <= 8]


def parent_in(case: dict[str, Any], x: int) -> ParentNode:
    node = wire_tree(case).parent_node(x)
    assert node is not None
    return node


def nodes_of(tree: RatchetTree) -> list[TreeNode]:
    return [tree.node(x) for x in range(tree.width)]


def fresh(tree: RatchetTree) -> RatchetTree:
    """A new tree from the same nodes: nothing cached."""
    return RatchetTree(tree.cs, nodes_of(tree))


def leaf(i: int) -> LeafNode:
    return LEAVES[i % len(LEAVES)]


def parent(tag: int, unmerged: tuple[int, ...] = ()) -> ParentNode:
    return ParentNode(bytes([tag]) * 32, b"", unmerged)


# ---- independent reference implementations (§4.1.1, §7.8) ------------------------------------------


def _varint_opaque(data: bytes) -> bytes:
    n = len(data)
    if n < 1 << 6:
        return bytes([n]) + data
    if n < 1 << 14:
        return (0x4000 | n).to_bytes(2, "big") + data
    return (0x80000000 | n).to_bytes(4, "big") + data


def ref_tree_hash(cs: CipherSuite, nodes: list[TreeNode], x: int, n_leaves: int) -> bytes:
    """``Hash(TreeHashInput)`` of §7.8, written out from the RFC's structs."""
    node = nodes[x]
    body = b"\x00" if node is None else b"\x01" + node.to_bytes()
    if x % 2 == 0:
        return cs.hash(b"\x01" + (x // 2).to_bytes(4, "big") + body)
    left = ref_tree_hash(cs, nodes, tm.left(x), n_leaves)
    right = ref_tree_hash(cs, nodes, tm.right(x), n_leaves)
    return cs.hash(b"\x02" + body + _varint_opaque(left) + _varint_opaque(right))


def ref_resolution(nodes: list[TreeNode], x: int) -> list[int]:
    """§4.1.1, verbatim."""
    node = nodes[x]
    if node is not None:
        if x % 2 == 0:
            return [x]
        assert isinstance(node, ParentNode)
        return [x, *(2 * i for i in node.unmerged_leaves)]
    if x % 2 == 0:
        return []
    return ref_resolution(nodes, tm.left(x)) + ref_resolution(nodes, tm.right(x))


def expected_leaf_count(tree: RatchetTree) -> int:
    """§12.1.3: 2^d leaves for the smallest d with 2^d > the rightmost non-blank leaf index."""
    rightmost = max(i for i, _ in tree.leaves())
    n = 1
    while n <= rightmost:
        n *= 2
    return n


def assert_hashes_fresh(tree: RatchetTree) -> None:
    """Every cached node hash equals a recomputation on a new tree, and the root an independent one."""
    new = fresh(tree)
    for x in range(tree.width):
        assert tree.node_hash(x) == new.node_hash(x), f"stale cached hash at node {x}"
    assert tree.tree_hash() == ref_tree_hash(tree.cs, nodes_of(tree), tree.root, tree.n_leaves)


def assert_round_trip(tree: RatchetTree) -> None:
    data = tree.encode()
    back = RatchetTree.from_wire(tree.cs, decode_ratchet_tree(data))
    assert back.encode() == data
    assert back.n_leaves == tree.n_leaves
    assert nodes_of(back) == nodes_of(tree)
    assert back.tree_hash() == tree.tree_hash()


# ---- the reference hash and resolution agree with the vectors (so they are trustworthy oracles) -----


@pytest.mark.parametrize("index", range(len(TREE_CASES)))
def test_reference_oracles_match_the_vectors(index: int) -> None:
    case = TREE_CASES[index]
    tree = wire_tree(case)
    nodes = nodes_of(tree)
    for x in range(tree.width):
        assert ref_tree_hash(tree.cs, nodes, x, tree.n_leaves).hex() == case["tree_hashes"][x]
        assert ref_resolution(nodes, x) == case["resolutions"][x]


# ---- add (§7.7, §12.1.1) --------------------------------------------------------------------------


def test_adding_to_a_full_tree_extends_it_to_double_the_leaves() -> None:
    tree = RatchetTree.one_member(CS, leaf(0))
    shapes = []
    for i in range(1, 9):
        before = tree.copy()
        before.all_node_hashes()
        index = tree.add_leaf(leaf(i))
        shapes.append((index, tree.n_leaves, tree.width))
        if before.member_count() == before.n_leaves:  # full: the old tree is the new left subtree
            assert tree.n_leaves == 2 * before.n_leaves
            assert tree.node(tree.root) is None  # the new root is blank
            for x in range(before.width):  # indices of the old tree are stable, and so are its hashes
                assert tree.node(x) == before.node(x)
                assert tree.node_hash(x) == before.node_hash(x)
        assert_hashes_fresh(tree)
    assert shapes == [
        (1, 2, 3),
        (2, 4, 7),
        (3, 4, 7),
        (4, 8, 15),
        (5, 8, 15),
        (6, 8, 15),
        (7, 8, 15),
        (8, 16, 31),
    ]


def test_add_reuses_the_leftmost_blank_leaf_before_extending() -> None:
    nodes: list[TreeNode] = [None] * 15
    for i in (0, 2, 4, 5, 7):
        nodes[2 * i] = leaf(i)
    tree = RatchetTree(CS, nodes)
    assert [tree.add_leaf(leaf(10 + k)) for k in range(4)] == [1, 3, 6, 8]
    assert tree.n_leaves == 16
    assert sorted(i for i, _ in tree.leaves()) == list(range(9))


def test_add_records_the_new_leaf_as_unmerged_on_every_non_blank_ancestor() -> None:
    case = next(c for c in SUITE1 if wire_tree(c).n_leaves == 8 and wire_tree(c).member_count() == 8)
    tree = wire_tree(case)
    assert all(tree.node(x) is not None for x in range(tree.width))
    tree.set_parent(3, parent(0xA3, (1,)))  # an existing unmerged entry that must stay, sorted
    tree.set_leaf(2, None)
    tree.set_leaf(5, None)
    tree.set_parent(9, None)  # a blank ancestor of leaf 5 gets nothing
    before = nodes_of(tree)
    tree.all_node_hashes()

    assert tree.add_leaf(leaf(20)) == 2
    assert tree.add_leaf(leaf(21)) == 5
    unmerged = {x: p.unmerged_leaves for x in (1, 3, 5, 7, 11, 13) if (p := tree.parent_node(x)) is not None}
    assert unmerged == {1: (), 3: (1, 2), 5: (2,), 7: (2, 5), 11: (5,), 13: ()}
    assert before[1] == parent_in(case, 1) and not parent_in(case, 1).unmerged_leaves
    assert tree.node(9) is None
    for x in (1, 13):  # off both direct paths: untouched
        assert tree.node(x) == before[x]
    for x in (3, 5, 7, 11):  # only unmerged_leaves changed
        old, new = before[x], tree.parent_node(x)
        assert isinstance(old, ParentNode) and new is not None
        assert (new.encryption_key, new.parent_hash) == (old.encryption_key, old.parent_hash)
    assert_hashes_fresh(tree)


# ---- remove and truncate (§7.7, §12.1.3) ----------------------------------------------------------


def _members(indices: list[int], n_leaves: int) -> RatchetTree:
    nodes: list[TreeNode] = [None] * (2 * n_leaves - 1)
    for i in indices:
        nodes[2 * i] = leaf(i)
    return RatchetTree(CS, nodes)


def test_remove_blanks_the_leaf_and_its_direct_path() -> None:
    case = next(c for c in SUITE1 if wire_tree(c).n_leaves == 8 and wire_tree(c).member_count() == 8)
    tree = wire_tree(case)
    tree.all_node_hashes()
    tree.remove_leaf(5)
    assert tree.n_leaves == 8  # leaves 6, 7 keep the right subtree
    blank = {x for x in range(tree.width) if tree.node(x) is None}
    assert blank == {10, *tm.direct_path(10, 8)} == {10, 9, 11, 7}
    assert_hashes_fresh(tree)


@pytest.mark.parametrize(
    ("members", "n_leaves", "removed", "after"),
    [
        ([0, 1, 9], 16, 9, 2),  # halves three times: 16 → 8 → 4 → 2
        ([0, 9], 16, 9, 1),  # down to a single leaf
        ([0, 4, 5], 8, 5, 8),  # leaf 4 keeps the right subtree
        ([0, 3, 4], 8, 4, 4),
        ([0, 1, 2, 3], 4, 0, 4),  # removing on the left never truncates
        ([0, 5, 12], 16, 5, 16),
    ],
)
def test_remove_truncates_while_the_right_subtree_is_blank(
    members: list[int], n_leaves: int, removed: int, after: int
) -> None:
    tree = _members(members, n_leaves)
    tree.all_node_hashes()
    tree.remove_leaf(removed)
    assert tree.n_leaves == after == expected_leaf_count(tree)
    assert tree.width == 2 * after - 1
    assert [i for i, _ in tree.leaves()] == [i for i in members if i != removed]
    assert_hashes_fresh(tree)
    assert_round_trip(tree)


def test_truncate_alone_halves_repeatedly_and_stops_at_a_non_blank_right_subtree() -> None:
    tree = _members([0, 2], 32)
    tree.all_node_hashes()
    tree.truncate()
    assert tree.n_leaves == 4
    assert_hashes_fresh(tree)
    tree.truncate()  # idempotent
    assert tree.n_leaves == 4
    one = _members([0], 8)
    one.truncate()
    assert (one.n_leaves, one.width) == (1, 1)


# ---- resolution (§4.1.1) and exclusion of leaves ---------------------------------------------------


def test_resolution_with_excluded_leaves_by_hand() -> None:
    # 8 leaves: parent 3 carries unmerged 1 and 2; node 11 is blank above leaves 4 (blank) and 5, 6, 7.
    nodes: list[TreeNode] = [None] * 15
    for i in (0, 1, 2, 3, 5, 6, 7):
        nodes[2 * i] = leaf(i)
    nodes[3] = parent(3, (1, 2))
    nodes[1] = parent(1, (1,))
    nodes[13] = parent(13)
    tree = RatchetTree(CS, nodes)
    assert tree.resolution(3) == [3, 2, 4]
    assert tree.resolution(3, [2]) == [3, 2]  # leaf indices: leaf 2 is node 4
    assert tree.resolution(3, [1]) == [3, 4]
    assert tree.resolution(3, [1, 2]) == [3]
    assert tree.resolution(11) == [10, 13]
    assert tree.resolution(11, [5]) == [13]
    assert tree.resolution(11, [5, 6, 7]) == [13]  # a parent node is never dropped
    assert tree.resolution(7, [0, 1, 2, 3, 4, 5, 6, 7]) == [3, 13]
    assert tree.resolution(8) == [] and tree.resolution(10, [5]) == []


@SETTINGS
@given(data=st.data())
def test_resolution_with_excluded_leaves_matches_the_definition(data: st.DataObject) -> None:
    tree = wire_tree(data.draw(st.sampled_from(TREE_CASES)))
    nodes = nodes_of(tree)
    excluded = data.draw(st.sets(st.integers(0, tree.n_leaves - 1)))
    x = data.draw(st.integers(0, tree.width - 1))
    want = [r for r in ref_resolution(nodes, x) if not (r % 2 == 0 and r // 2 in excluded)]
    assert tree.resolution(x, excluded) == want
    assert tree.resolution(x, iter(excluded)) == want  # any iterable, consumed once


# ---- the hash cache under random mutation (§7.8) ---------------------------------------------------


@dataclass
class Model:
    """What a tree operation must do, checked against the tree after it."""

    tree: RatchetTree

    def add(self, new: LeafNode) -> None:
        t = self.tree
        blank = [i for i in range(t.n_leaves) if t.leaf(i) is None]
        want = blank[0] if blank else t.n_leaves
        old_n = t.n_leaves
        before = {x: t.node(x) for x in range(t.width)}
        index = t.add_leaf(new)
        assert index == want
        assert t.n_leaves == (old_n if blank else 2 * old_n)
        assert t.leaf(index) == new
        path = set(tm.direct_path(2 * index, t.n_leaves))
        for x in range(t.width):
            old = before.get(x)
            now = t.node(x)
            if x in path and old is not None:
                assert isinstance(old, ParentNode) and isinstance(now, ParentNode)
                assert now.unmerged_leaves == tuple(sorted({*old.unmerged_leaves, index}))
            elif x != 2 * index:
                assert now == old

    def update(self, index: int, new: LeafNode) -> None:
        t = self.tree
        t.update_leaf(index, new)
        assert t.leaf(index) == new
        assert all(t.node(x) is None for x in tm.direct_path(2 * index, t.n_leaves))

    def remove(self, index: int) -> None:
        t = self.tree
        others = {i: lf for i, lf in t.leaves() if i != index}
        t.remove_leaf(index)
        assert dict(t.leaves()) == others
        assert t.n_leaves == expected_leaf_count(t)

    def commit_path(self, index: int, seed: int) -> None:
        """Like merging an UpdatePath: fresh parent keys on the filtered direct path, then parent hashes."""
        t = self.tree
        t.blank_direct_path(index)
        for k, x in enumerate(t.filtered_direct_path(index)):
            t.set_parent(x, ParentNode(bytes([seed % 256, k]) + os.urandom(30), b"", ()))
        t.set_path_parent_hashes(index)
        for x in t.filtered_direct_path(index)[:-1]:
            p = t.parent_node(x)
            assert p is not None and len(p.parent_hash) == t.cs.n_h


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "update", "remove", "path", "copy"]), st.integers(0, 10**6)),
    min_size=1,
    max_size=14,
)


@pytest.mark.parametrize("whole_tree", [False, True], ids=["per-node", "whole-tree"])
@SETTINGS
@given(case=st.sampled_from(SMALL), ops=OPS)
def test_cached_hashes_equal_a_fresh_recomputation_after_every_mutation(
    whole_tree: bool, case: dict[str, Any], ops: list[tuple[str, int]]
) -> None:
    """The cache is primed node by node, or (whole_tree) by tree_hash() computing every hash in one
    backend call whenever the root's is missing - what a big tree gets from the native backend, here with
    the size threshold lowered to any tree."""
    with pytest.MonkeyPatch.context() as mp:
        if whole_tree:
            mp.setattr(RatchetTree, "BATCH_HASH_THRESHOLD", 1)
        model = Model(wire_tree(case))
        for op, n in ops:
            t = model.tree
            if whole_tree:
                t.tree_hash()
            t.all_node_hashes()  # prime the cache: any stale entry would be observed below
            members = [i for i, _ in t.leaves()]
            target = members[n % len(members)]
            if op == "add":
                model.add(leaf(n))
            elif op == "update":
                model.update(target, leaf(n + 1))
            elif op == "remove" and len(members) > 1:
                model.remove(target)
            elif op == "path":
                model.commit_path(target, n)
            elif op == "copy":
                snapshot, hashes = t.encode(), t.all_node_hashes()
                model.tree = t.copy()
                model.add(leaf(n))
                model.tree.tree_hash()
                assert t.encode() == snapshot and t.all_node_hashes() == hashes
            assert_hashes_fresh(model.tree)
            assert_round_trip(model.tree)


@SETTINGS
@given(case=st.sampled_from(SMALL), data=st.data())
def test_original_tree_hash_equals_the_hash_with_the_leaves_really_removed(
    case: dict[str, Any], data: st.DataObject
) -> None:
    """§7.9: blank the removed leaves and drop them from every unmerged_leaves list, then hash."""
    tree = wire_tree(case)
    for op, n in data.draw(
        st.lists(st.tuples(st.sampled_from(["add", "path"]), st.integers(0, 999)), max_size=4)
    ):
        members = [i for i, _ in tree.leaves()]
        if op == "add":
            tree.add_leaf(leaf(n))
        else:
            Model(tree).commit_path(members[n % len(members)], n)
    members = [i for i, _ in tree.leaves()]
    removed = data.draw(st.sets(st.sampled_from(members), max_size=len(members)))
    nodes = nodes_of(tree)
    for i in removed:
        nodes[2 * i] = None
    for x in range(1, len(nodes), 2):
        p = nodes[x]
        if isinstance(p, ParentNode):
            nodes[x] = ParentNode(
                p.encryption_key, p.parent_hash, tuple(i for i in p.unmerged_leaves if i not in removed)
            )
    reference = RatchetTree(tree.cs, nodes)
    tree.all_node_hashes()
    for x in range(tree.width):
        assert tree.original_tree_hash(x, removed) == reference.node_hash(x), f"node {x}"
    assert_hashes_fresh(tree)  # computing original hashes must not pollute the cache


# ---- copy independence -------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [i for i, c in enumerate(TREE_CASES) if c["cipher_suite"] == 1])
def test_copy_is_independent_in_both_directions(index: int) -> None:
    original = wire_tree(TREE_CASES[index])
    hashes = original.all_node_hashes()
    snapshot = original.encode()
    copy = original.copy()
    assert copy.encode() == snapshot and copy.all_node_hashes() == hashes

    members = [i for i, _ in copy.leaves()]
    copy.add_leaf(leaf(7))
    copy.update_leaf(members[0], leaf(8))
    Model(copy).commit_path(members[-1], 3)
    if len(members) > 1:
        copy.remove_leaf(members[-1])
    copy.truncate()
    assert copy.encode() != snapshot
    assert original.encode() == snapshot
    assert original.all_node_hashes() == hashes
    assert_hashes_fresh(original)

    copy_snapshot, copy_hashes = copy.encode(), copy.all_node_hashes()
    original.add_leaf(leaf(9))
    original.set_leaf(members[0], None)
    assert copy.encode() == copy_snapshot and copy.all_node_hashes() == copy_hashes
    assert_hashes_fresh(copy)
    assert_hashes_fresh(original)


# ---- wire form (§12.4.3.3) -----------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(TREE_CASES)))
def test_encode_is_the_vector_bytes_and_round_trips(index: int) -> None:
    case = TREE_CASES[index]
    tree = wire_tree(case)
    assert tree.encode().hex() == case["tree"]
    assert_round_trip(tree)


def test_trailing_blanks_are_dropped_on_encoding_and_restored_on_decoding() -> None:
    tree = _members([0, 1, 2], 4)  # leaf 3 (node 6) blank: the wire form has five nodes
    nodes = decode_ratchet_tree(tree.encode())
    assert len(nodes) == 5 and nodes[-1] is not None
    back = RatchetTree.from_wire(CS, nodes)
    assert back.n_leaves == 4 and back.node(6) is None
    assert back.tree_hash() == tree.tree_hash()


# ---- whole-tree hashing (a BatchOps backend, §7.8) ----------------------------------------------------


@pytest.mark.parametrize(
    ("members", "n_leaves"),
    [([0], 1), ([0], 2), ([0, 1], 2), ([0, 2], 4), ([1], 8), ([0, 5], 8), ([0, 1, 2], 16), ([3, 9], 16)],
)
def test_whole_tree_hashes_with_trailing_blanks_equal_per_node_ones(
    members: list[int], n_leaves: int
) -> None:
    """Trailing blank nodes are left for the backend to add back; the width must not shrink with them,
    even when the right half is all blank (a tree not truncated yet)."""
    tree = _members(members, n_leaves)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RatchetTree, "BATCH_HASH_THRESHOLD", 1)
        root = tree.tree_hash()
    assert tree.n_leaves == n_leaves
    assert root == ref_tree_hash(CS, nodes_of(tree), tree.root, n_leaves)
    assert_hashes_fresh(tree)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"", b"x"]), max_size=40), st.integers(0, 45))
def test_blank_suffix_counts_the_trailing_blanks_up_to_the_limit(encs: list[bytes], limit: int) -> None:
    run = len(encs) - len(bytes(map(len, encs)).rstrip(b"\x00"))
    assert _blank_suffix(encs, min(limit, len(encs))) == min(run, limit, len(encs))


# ---- a tree decoded from a message (§12.4.3.3) ------------------------------------------------------


@pytest.mark.parametrize("index", range(len(TREE_CASES)))
def test_decoding_notes_where_every_node_encoding_lies(index: int) -> None:
    data = bytes.fromhex(TREE_CASES[index]["tree"])
    ext = decode_ratchet_tree_extension(data)
    decoded = ext.decoded
    assert decoded is not None and decoded.source == data
    assert len(decoded.starts) == len(decoded.lens) == len(ext.nodes)
    for x, node in enumerate(ext.nodes):
        value = None if node is None else node.leaf_node or node.parent_node
        fresh = b""
        if value is not None:  # encoded anew, not the bytes the decoder remembered
            w = Writer()
            value.encode(w)
            fresh = w.getvalue()
        assert decoded.encoding(x) == fresh
        assert data[decoded.starts[x] : decoded.starts[x] + decoded.lens[x]] == fresh


class _Spy:
    """A BatchOps stand-in recording which whole-tree call a RatchetTree makes (pure-Python reference)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def tree_hashes_packed(self, alg: str, nodes: list[bytes]) -> bytes:
        from tests.native import reference

        self.calls.append("packed")
        return reference.tree_hashes_packed(alg, nodes)

    def tree_hashes_spans(self, alg: str, source: bytes, starts: Any, lens: Any) -> bytes:
        from tests.native import reference

        self.calls.append("spans")
        return reference.tree_hashes_spans(alg, source, list(starts), list(lens))


@pytest.mark.parametrize("index", [i for i, c in enumerate(TREE_CASES) if len(c["tree"]) > 400][:6])
def test_a_decoded_tree_is_hashed_from_its_message_until_it_changes(index: int) -> None:
    """The first whole-tree hash reads the nodes where the message holds them; after any change (and on
    a copy that changed) the tree gathers its own encodings. Hashes equal the per-node computation."""
    case = TREE_CASES[index]
    spy = _Spy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RatchetTree, "BATCH_HASH_THRESHOLD", 1)
        mp.setattr("mls.tree.tree_hash.batch_ops", lambda: spy)
        tree = wire_tree(case)
        assert tree.tree_hash().hex() == case["tree_hashes"][tree.root]
        assert spy.calls == ["spans"]
        changed = tree.copy()
        member = next(i for i, _ in changed.leaves())
        changed.update_leaf(member, LEAVES[0])
        changed._hashes = [None] * changed.width  # forget every hash: the next call is a whole-tree one
        changed.tree_hash()
        assert spy.calls == ["spans", "packed"]
        assert_hashes_fresh(changed)
        tree._hashes = [None] * tree.width
        assert tree.tree_hash().hex() == case["tree_hashes"][tree.root]  # the original still has its message
        assert spy.calls == ["spans", "packed", "spans"]


@pytest.mark.parametrize("index", [i for i, c in enumerate(SUITE1) if len(c["tree"]) > 400][:4])
def test_a_decoded_tree_extended_or_copied_is_hashed_from_its_own_encodings(index: int) -> None:
    """extend_to changes the width: hashing from the old message afterwards would give another width's
    hashes. A copy of a tree whose encodings are not all known must not take them as known."""
    case = SUITE1[index]
    spy = _Spy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RatchetTree, "BATCH_HASH_THRESHOLD", 1)
        mp.setattr("mls.tree.tree_hash.batch_ops", lambda: spy)
        tree = wire_tree(case)
        tree.extend_to(2 * tree.n_leaves)
        root = tree.tree_hash()
        assert spy.calls == ["packed"]
        assert root == ref_tree_hash(CS, nodes_of(tree), tree.root, tree.n_leaves)
        assert_hashes_fresh(tree)
        built = RatchetTree(CS, nodes_of(wire_tree(case)))  # no encoding known yet
        built.set_leaf(0, LEAVES[1])
        twin = built.copy()
        assert twin.tree_hash() == ref_tree_hash(CS, nodes_of(twin), twin.root, twin.n_leaves)
        assert_hashes_fresh(twin)
