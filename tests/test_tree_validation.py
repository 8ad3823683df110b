"""Validation of a received ratchet tree (RFC 9420 §7.9.2, §7.3, §12.4.3.1, §12.4.3.3): every check is
shown to accept the real trees of the ``tree-validation`` and ``treekem`` vectors and to reject each kind
of tampering with the rule it names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mls.crypto import cipher_suite
from mls.errors import ValidationError
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode, LeafNodeSource
from mls.tree.leaf_validation import LeafPolicy
from mls.tree.nodes import Node, ParentNode, decode_ratchet_tree
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.tree_validation import (
    validate_tree,
    verify_leaves,
    verify_parent_hashes,
    verify_unique_keys,
    verify_unmerged_leaves,
)

from .vectors import load

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _trees() -> list[tuple[str, dict[str, Any], str]]:
    out = [(f"tree-validation[{i}]", c, c["tree"]) for i, c in enumerate(load("tree-validation"))]
    out += [(f"treekem[{i}]", c, c["ratchet_tree"]) for i, c in enumerate(load("treekem"))]
    return out


TREES = _trees()
IDS = [name for name, _, _ in TREES]


def build(index: int) -> tuple[RatchetTree, bytes]:
    _, case, hex_tree = TREES[index]
    tree = RatchetTree.from_wire(
        cipher_suite(case["cipher_suite"]), decode_ratchet_tree(bytes.fromhex(hex_tree))
    )
    return tree, bytes.fromhex(case["group_id"])


def parents_of(tree: RatchetTree) -> list[int]:
    return [x for x in range(1, tree.width, 2) if tree.node(x) is not None]


WITH_PARENTS = [i for i in range(len(TREES)) if parents_of(build(i)[0])]


def _leaves_valid(index: int) -> bool:
    tree, group_id = build(index)
    try:
        verify_leaves(tree, group_id, LeafPolicy())
    except ValidationError:
        return False
    return True


#: Trees whose leaves pass §7.3 as they are. Leaf-tampering tests start only from these, so that a
#: rejection is caused by the tampering. (The suite-7 trees of treekem.json list cipher suites 1-6 only in
#: their leaves' capabilities, which a stricter leaf check may reject.)
LEAVES_VALID = [i for i in range(len(TREES)) if _leaves_valid(i)]


def unmerged_at(tree: RatchetTree, x: int) -> tuple[int, ...]:
    node = tree.parent_node(x)
    return () if node is None else node.unmerged_leaves


WITH_UNMERGED = [
    i for i in range(len(TREES)) if any(unmerged_at(build(i)[0], x) for x in parents_of(build(i)[0]))
]


def flip(data: bytes, at: int, bit: int = 0) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]


def replace_parent(tree: RatchetTree, x: int, **changes: Any) -> None:
    node = tree.parent_node(x)
    assert node is not None
    tree.set_parent(x, dataclasses.replace(node, **changes))


def replace_leaf(tree: RatchetTree, i: int, **changes: Any) -> None:
    node = tree.leaf(i)
    assert node is not None
    tree.set_leaf(i, dataclasses.replace(node, **changes))


def rule_of(excinfo: pytest.ExceptionInfo[ValidationError]) -> str:
    return excinfo.value.rule


def test_the_vectors_provide_what_the_negative_tests_need() -> None:
    assert len(WITH_PARENTS) > 100 and len(WITH_UNMERGED) >= 14
    assert {build(i)[0].cs.suite_id for i in WITH_UNMERGED} == set(range(1, 8))
    # Every tree-validation tree is fully valid; only treekem trees may fail leaf checks (see LEAVES_VALID).
    assert set(LEAVES_VALID) >= {i for i in range(len(TREES)) if IDS[i].startswith("tree-validation")}
    assert len(LEAVES_VALID) >= len(TREES) - 11


# ---- every real tree is valid (the negative tests below start from these) -------------------------


@pytest.mark.parametrize("index", range(len(TREES)), ids=IDS)
def test_every_vector_tree_is_valid(index: int) -> None:
    tree, group_id = build(index)
    verify_parent_hashes(tree)
    verify_unmerged_leaves(tree)
    verify_unique_keys(tree)
    if index in LEAVES_VALID:
        validate_tree(tree, group_id=group_id, tree_hash=tree.tree_hash(), policy=LeafPolicy())


# ---- parent hashes (§7.9.2) ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", WITH_PARENTS, ids=[IDS[i] for i in WITH_PARENTS])
def test_flipping_a_byte_of_any_parent_hash_breaks_parent_hash_validity(index: int) -> None:
    base, _ = build(index)
    for x in parents_of(base):
        tree = base.copy()
        node = tree.parent_node(x)
        assert node is not None
        ph = node.parent_hash
        replace_parent(tree, x, parent_hash=flip(ph, x * 7) if ph else b"\x00")
        with pytest.raises(ValidationError) as e:
            verify_parent_hashes(tree)
        assert rule_of(e) == "7.9.2/parent-hash-valid", f"parent {x}"
    verify_parent_hashes(base)  # the copies were tampered, not the original


@SETTINGS
@given(index=st.sampled_from(WITH_PARENTS), data=st.data())
def test_changing_a_parent_encryption_key_breaks_parent_hash_validity(
    index: int, data: st.DataObject
) -> None:
    tree, _ = build(index)
    x = data.draw(st.sampled_from(parents_of(tree)))
    node = tree.parent_node(x)
    assert node is not None
    replace_parent(
        tree,
        x,
        encryption_key=flip(
            node.encryption_key, data.draw(st.integers(0, 200)), data.draw(st.integers(0, 7))
        ),
    )
    with pytest.raises(ValidationError) as e:
        verify_parent_hashes(tree)
    assert rule_of(e) == "7.9.2/parent-hash-valid"


def _leaf_links(tree: RatchetTree, i: int) -> bool:
    """Whether leaf ``i``'s parent_hash is the (only) link to the first parent of its filtered path."""
    leaf = tree.leaf(i)
    fdp = tree.filtered_direct_path(i)
    if leaf is None or leaf.leaf_node_source != LeafNodeSource.commit or not fdp or tree.node(fdp[0]) is None:
        return False
    p = fdp[0]
    s = tm.right(p) if 2 * i < p else tm.left(p)  # the copath child: the side away from leaf i
    return leaf.parent_hash == tree.parent_hash(p, s)


@pytest.mark.parametrize("index", WITH_PARENTS[::3], ids=[IDS[i] for i in WITH_PARENTS[::3]])
def test_flipping_the_parent_hash_of_a_committers_leaf_breaks_its_chain(index: int) -> None:
    base, _ = build(index)
    linked = [i for i in range(base.n_leaves) if _leaf_links(base, i)]
    assert linked
    for i in linked:
        tree = base.copy()
        leaf = tree.leaf(i)
        assert leaf is not None and leaf.parent_hash
        replace_leaf(tree, i, parent_hash=flip(leaf.parent_hash, i))
        with pytest.raises(ValidationError) as e:
            verify_parent_hashes(tree)
        assert rule_of(e) == "7.9.2/parent-hash-valid"


def _covered_leaves(tree: RatchetTree) -> set[int]:
    """Non-blank leaves whose content a parent-hash link covers: under the copath child S of a non-blank
    parent P whose valid link comes from the other child, and not unmerged at P (§7.9)."""
    covered: set[int] = set()
    for p in parents_of(tree):
        node = tree.parent_node(p)
        assert node is not None
        for c, s in ((tm.left(p), tm.right(p)), (tm.right(p), tm.left(p))):
            want = tree.parent_hash(p, s)
            fields = [getattr(tree.node(d), "parent_hash", None) for d in tree.resolution(c)]
            if want in fields:
                covered |= {i for i in tm.subtree_leaves(s, tree.n_leaves) if tree.leaf(i) is not None}
                covered -= set(node.unmerged_leaves)
    return covered


@pytest.mark.parametrize("index", WITH_PARENTS[::3], ids=[IDS[i] for i in WITH_PARENTS[::3]])
def test_changing_a_leaf_covered_by_a_parent_hash_breaks_the_link(index: int) -> None:
    """The parent hash covers the tree hash of the copath child (§7.9): a changed leaf there is caught."""
    base, _ = build(index)
    covered = _covered_leaves(base)
    assert covered
    for i in covered:
        tree = base.copy()
        leaf = tree.leaf(i)
        assert leaf is not None
        replace_leaf(tree, i, signature=flip(leaf.signature, 5))
        with pytest.raises(ValidationError) as e:
            verify_parent_hashes(tree)
        assert rule_of(e) == "7.9.2/parent-hash-valid", f"leaf {i}"


# ---- leaves (§7.3) --------------------------------------------------------------------------------


@SETTINGS
@given(index=st.sampled_from(LEAVES_VALID), data=st.data())
def test_a_tampered_leaf_signature_is_rejected(index: int, data: st.DataObject) -> None:
    tree, group_id = build(index)
    i = data.draw(st.sampled_from([i for i, _ in tree.leaves()]))
    leaf = tree.leaf(i)
    assert leaf is not None
    replace_leaf(
        tree, i, signature=flip(leaf.signature, data.draw(st.integers(0, 200)), data.draw(st.integers(0, 7)))
    )
    with pytest.raises(ValidationError) as e:
        verify_leaves(tree, group_id, LeafPolicy())
    assert rule_of(e) == "7.3/leaf-signature"


@SETTINGS
@given(index=st.sampled_from(LEAVES_VALID), data=st.data())
def test_a_leaf_signed_for_another_position_or_group_is_rejected(index: int, data: st.DataObject) -> None:
    tree, group_id = build(index)
    members = [i for i, lf in tree.leaves() if lf.leaf_node_source != LeafNodeSource.key_package]
    if not members:
        return
    if data.draw(st.booleans()):
        group_id = flip(group_id, 0)
    else:  # move a member's (update/commit) leaf to a blank position or swap two members
        i = data.draw(st.sampled_from(members))
        j = data.draw(st.sampled_from([j for j in range(tree.n_leaves) if j != i]))
        a, b = tree.leaf(i), tree.leaf(j)
        tree.set_leaf(j, a)
        tree.set_leaf(i, b)
    with pytest.raises(ValidationError) as e:
        verify_leaves(tree, group_id, LeafPolicy())
    assert rule_of(e) == "7.3/leaf-signature"


# ---- uniqueness of keys (§12.4.3.1, §7.3) ---------------------------------------------------------


@SETTINGS
@given(index=st.sampled_from(range(len(TREES))), data=st.data())
def test_a_repeated_encryption_key_is_rejected(index: int, data: st.DataObject) -> None:
    tree, _ = build(index)
    occupied = [x for x in range(tree.width) if tree.node(x) is not None]
    if len(occupied) < 2:
        return
    a, b = data.draw(st.lists(st.sampled_from(occupied), min_size=2, max_size=2, unique=True))
    source = tree.node(a)
    assert source is not None
    if b % 2:
        replace_parent(tree, b, encryption_key=source.encryption_key)
    else:
        replace_leaf(tree, b // 2, encryption_key=source.encryption_key)
    with pytest.raises(ValidationError) as e:
        verify_unique_keys(tree)
    assert rule_of(e) == "12.4.3.1/encryption-key-unique"


@SETTINGS
@given(index=st.sampled_from(range(len(TREES))), data=st.data())
def test_a_repeated_signature_key_is_rejected(index: int, data: st.DataObject) -> None:
    tree, _ = build(index)
    members = [i for i, _ in tree.leaves()]
    a, b = data.draw(st.lists(st.sampled_from(members), min_size=2, max_size=2, unique=True))
    source = tree.leaf(a)
    assert source is not None
    replace_leaf(tree, b, signature_key=source.signature_key)
    with pytest.raises(ValidationError) as e:
        verify_unique_keys(tree)
    assert rule_of(e) == "7.3/signature-key-unique"


# ---- unmerged leaves (§7.1, §12.4.3.1) --------------------------------------------------------------


def _unmerged_entries(tree: RatchetTree) -> list[tuple[int, int]]:
    return [(x, leaf) for x in parents_of(tree) for leaf in unmerged_at(tree, x)]


@pytest.mark.parametrize("index", WITH_UNMERGED, ids=[IDS[i] for i in WITH_UNMERGED])
def test_an_unmerged_leaf_that_is_blank_is_rejected(index: int) -> None:
    base, _ = build(index)
    verify_unmerged_leaves(base)
    for _, leaf in _unmerged_entries(base):
        tree = base.copy()
        tree.set_leaf(leaf, None)
        with pytest.raises(ValidationError) as e:
            verify_unmerged_leaves(tree)
        assert rule_of(e) == "12.4.3.1/unmerged-leaf-descendant"


@pytest.mark.parametrize("index", WITH_PARENTS[::2], ids=[IDS[i] for i in WITH_PARENTS[::2]])
def test_an_unmerged_leaf_outside_the_subtree_is_rejected(index: int) -> None:
    base, _ = build(index)
    tested = 0
    for x in parents_of(base):
        below = tm.subtree_leaves(x, base.n_leaves)
        node = base.parent_node(x)
        assert node is not None
        outside = [i for i, _ in base.leaves() if i not in below] + [base.n_leaves, 2**32 - 1]
        for leaf in outside[:1] + outside[-2:]:
            tree = base.copy()
            replace_parent(tree, x, unmerged_leaves=tuple(sorted({*node.unmerged_leaves, leaf})))
            with pytest.raises(ValidationError) as e:
                verify_unmerged_leaves(tree)
            assert rule_of(e) == "12.4.3.1/unmerged-leaf-descendant", f"node {x}, leaf {leaf}"
            tested += 1
    assert tested


@pytest.mark.parametrize("index", WITH_PARENTS[::2], ids=[IDS[i] for i in WITH_PARENTS[::2]])
def test_an_unmerged_leaf_missing_from_a_node_in_between_is_rejected(index: int) -> None:
    """Listing a descendant leaf as unmerged at P requires it at every non-blank node between."""
    base, _ = build(index)
    tested = 0
    for x in parents_of(base):
        node = base.parent_node(x)
        assert node is not None
        for leaf in tm.subtree_leaves(x, base.n_leaves):
            if base.leaf(leaf) is None or leaf in node.unmerged_leaves:
                continue
            between = []
            y = tm.parent(2 * leaf, base.n_leaves)
            while y != x:
                between.append(y)
                y = tm.parent(y, base.n_leaves)
            gaps = [y for y in between if base.node(y) is not None and leaf not in unmerged_at(base, y)]
            if not gaps:
                continue
            tree = base.copy()
            replace_parent(tree, x, unmerged_leaves=tuple(sorted({*node.unmerged_leaves, leaf})))
            with pytest.raises(ValidationError) as e:
                verify_unmerged_leaves(tree)
            assert rule_of(e) == "12.4.3.1/unmerged-leaf-intermediate"
            tested += 1
            break
    if base.n_leaves >= 4:
        assert tested


@pytest.mark.parametrize("index", WITH_UNMERGED, ids=[IDS[i] for i in WITH_UNMERGED])
def test_dropping_an_unmerged_entry_from_a_node_in_between_is_rejected(index: int) -> None:
    base, _ = build(index)
    entries = _unmerged_entries(base)
    tested = 0
    for x, leaf in entries:
        # An entry at a lower node is "in between" for the same leaf listed at a higher node.
        higher = [y for y, other in entries if other == leaf and y != x and tm.is_ancestor(y, x)]
        if not higher:
            continue
        tree = base.copy()
        node = tree.parent_node(x)
        assert node is not None
        replace_parent(tree, x, unmerged_leaves=tuple(i for i in node.unmerged_leaves if i != leaf))
        with pytest.raises(ValidationError) as e:
            verify_unmerged_leaves(tree)
        assert rule_of(e) == "12.4.3.1/unmerged-leaf-intermediate"
        tested += 1
    assert tested or all(not any(tm.is_ancestor(y, x) for y, _ in entries if y != x) for x, _ in entries)


@pytest.mark.parametrize("index", WITH_UNMERGED, ids=[IDS[i] for i in WITH_UNMERGED])
def test_unmerged_leaves_out_of_order_or_repeated_are_rejected(index: int) -> None:
    base, _ = build(index)
    x, leaf = _unmerged_entries(base)[0]
    node = base.parent_node(x)
    assert node is not None
    for bad in ((*node.unmerged_leaves, leaf), (leaf, *node.unmerged_leaves)):
        tree = base.copy()
        replace_parent(tree, x, unmerged_leaves=bad)
        with pytest.raises(ValidationError) as e:
            verify_unmerged_leaves(tree)
        assert rule_of(e) == "7.1/unmerged-leaves-sorted"


# ---- the whole check (§12.4.3.1) --------------------------------------------------------------------


@SETTINGS
@given(index=st.sampled_from(LEAVES_VALID), at=st.integers(0, 63), bit=st.integers(0, 7))
def test_validate_tree_rejects_a_wrong_tree_hash(index: int, at: int, bit: int) -> None:
    tree, group_id = build(index)
    with pytest.raises(ValidationError) as e:
        validate_tree(tree, group_id=group_id, tree_hash=flip(tree.tree_hash(), at, bit), policy=LeafPolicy())
    assert rule_of(e) == "12.4.3.1/tree-hash"


@SETTINGS
@given(index=st.sampled_from(LEAVES_VALID), data=st.data())
def test_validate_tree_rejects_a_tree_changed_after_its_hash_was_taken(
    index: int, data: st.DataObject
) -> None:
    tree, group_id = build(index)
    tree_hash = tree.tree_hash()
    x = data.draw(st.sampled_from([x for x in range(tree.width) if tree.node(x) is not None]))
    if x % 2:
        tree.set_parent(x, None)
    else:
        leaf = tree.leaf(x // 2)
        assert leaf is not None
        replace_leaf(tree, x // 2, extensions=leaf.extensions)  # same value: must stay valid
        validate_tree(tree, group_id=group_id, tree_hash=tree_hash, policy=LeafPolicy())
        tree.set_leaf(x // 2, None)
    with pytest.raises(ValidationError) as e:
        validate_tree(tree, group_id=group_id, tree_hash=tree_hash, policy=LeafPolicy())
    assert rule_of(e) == "12.4.3.1/tree-hash"


def test_validate_tree_runs_every_check() -> None:
    """With the right tree hash, each kind of damage is still caught by validate_tree itself."""
    index = WITH_UNMERGED[0]

    def bad_parent_hash(t: RatchetTree) -> None:
        x = parents_of(t)[0]
        node = t.parent_node(x)
        assert node is not None
        replace_parent(t, x, parent_hash=flip(node.parent_hash or b"\x00", 0))

    def uncovered_leaf(t: RatchetTree) -> int:
        """A leaf that no parent hash covers (the last committer's), so changing it keeps them valid."""
        return min({i for i, _ in t.leaves()} - _covered_leaves(t))

    def bad_signature(t: RatchetTree) -> None:
        i = uncovered_leaf(t)
        leaf = t.leaf(i)
        assert leaf is not None
        replace_leaf(t, i, signature=flip(leaf.signature, 3))
        verify_parent_hashes(t)

    def root_lists_a_leaf_outside_the_tree(t: RatchetTree) -> None:
        # No parent hash covers the root's own unmerged_leaves, and §7.9's original tree hash ignores a
        # leaf outside the subtree: parent hashes stay valid, only the unmerged-leaves check can object.
        root = t.parent_node(t.root)
        assert root is not None
        replace_parent(t, t.root, unmerged_leaves=(*root.unmerged_leaves, t.n_leaves))
        verify_parent_hashes(t)

    def same_signature_key(t: RatchetTree) -> None:
        j = uncovered_leaf(t)
        a = next(lf for i, lf in t.leaves() if i != j)
        replace_leaf(t, j, signature_key=a.signature_key)
        verify_parent_hashes(t)

    cases = [
        ("7.9.2/parent-hash-valid", bad_parent_hash),
        ("7.3/leaf-signature", bad_signature),
        ("12.4.3.1/unmerged-leaf-descendant", root_lists_a_leaf_outside_the_tree),
        ("7.3/signature-key-unique", same_signature_key),
    ]
    for rule, damage in cases:
        tree, group_id = build(index)
        damage(tree)
        with pytest.raises(ValidationError) as e:
            validate_tree(tree, group_id=group_id, tree_hash=tree.tree_hash(), policy=LeafPolicy())
        assert rule_of(e) == rule, damage.__name__


# ---- node positions in the wire form (§12.4.3.3) ------------------------------------------------------


@pytest.mark.parametrize("index", WITH_PARENTS[::5], ids=[IDS[i] for i in WITH_PARENTS[::5]])
def test_from_wire_rejects_a_leaf_at_an_odd_position_or_a_parent_at_an_even_one(index: int) -> None:
    _, case, hex_tree = TREES[index]
    cs = cipher_suite(case["cipher_suite"])
    nodes = list(decode_ratchet_tree(bytes.fromhex(hex_tree)))
    RatchetTree.from_wire(cs, nodes)
    a_leaf = next(n for n in nodes if n is not None and n.leaf_node is not None)
    a_parent = next(n for n in nodes if n is not None and n.parent_node is not None)
    for x in range(len(nodes)):
        bad = list(nodes)
        bad[x] = a_parent if x % 2 == 0 else a_leaf
        with pytest.raises(ValidationError) as e:
            RatchetTree.from_wire(cs, bad)
        assert rule_of(e) == "12.4.3.3/node-type"
    with pytest.raises(ValidationError):
        RatchetTree.from_wire(cs, [*nodes, None, a_leaf][:-1])  # even length: ends with a parent position
    with pytest.raises(ValidationError) as e:
        RatchetTree(cs, [a_leaf.leaf_node, a_leaf.leaf_node])  # the constructor checks positions too
    assert rule_of(e) == "12.4.3.3/node-class"


def test_from_wire_rejects_a_tree_ending_at_a_parent_position() -> None:
    _, case, hex_tree = TREES[WITH_PARENTS[0]]
    cs = cipher_suite(case["cipher_suite"])
    nodes = list(decode_ratchet_tree(bytes.fromhex(hex_tree)))
    parent = next(n for n in nodes if n is not None and n.node_type == 2)
    assert isinstance(parent, Node) and isinstance(parent.parent_node, ParentNode)
    with pytest.raises(ValidationError) as e:
        RatchetTree.from_wire(cs, [*nodes, parent])
    assert rule_of(e) == "12.4.3.3/last-node-leaf"
    with pytest.raises(ValidationError):
        RatchetTree.from_wire(cs, [])
    leaf = next(n for n in nodes if n is not None and n.node_type == 1)
    assert isinstance(leaf.leaf_node, LeafNode)
