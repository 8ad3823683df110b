"""The public ratchet tree (RFC 9420 §4.1, §7): nodes, wire form, resolution, add/remove.

:class:`RatchetTree` is an array-based full binary tree (§7.7: the leaf count is always a power of two)
holding :class:`~mls.tree.leaf_node.LeafNode` at even indices, :class:`~mls.tree.nodes.ParentNode` at odd
ones and ``None`` for blank nodes. It is cheap to :meth:`~RatchetTree.copy` (staged commits work on a copy
and the caller keeps or drops it). Its tree hash (§7.8) and parent hashes (§7.9), with the per-node caches
that make a commit re-hash only the changed paths, come from :class:`~mls.tree.tree_hash.HashedNodes`.

Validation of a tree received from outside (§7.9.2, §12.4.3.1) lives in :mod:`mls.tree.tree_validation`;
private keys (TreeKEM, §7.4–§7.6) in :mod:`mls.tree.treekem`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from mls.crypto.cipher_suite import CipherSuite
from mls.errors import ValidationError
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode
from mls.tree.nodes import (
    Node,
    NodeType,
    ParentNode,
    RatchetTreeExtension,
    decode_ratchet_tree_extension,
)
from mls.tree.tree_hash import HashedNodes, TreeNode
from mls.wire.codec import opaque_bytes

__all__ = ["RatchetTree", "TreeNode"]


def _full_leaf_count(n_nodes: int) -> int:
    """The leaf count of the smallest full tree with at least ``n_nodes`` nodes."""
    leaves = 1
    while 2 * leaves - 1 < n_nodes:
        leaves *= 2
    return leaves


class RatchetTree(HashedNodes):
    """A full left-balanced binary tree of optional nodes (§7), with the cached tree and parent hashes of
    :class:`~mls.tree.tree_hash.HashedNodes` (§7.8, §7.9)."""

    __slots__ = ()

    def __init__(self, cs: CipherSuite, nodes: Sequence[TreeNode]) -> None:
        width = 2 * _full_leaf_count(len(nodes)) - 1
        full: list[TreeNode] = list(nodes) + [None] * (width - len(nodes))
        for x, node in enumerate(full):
            want = LeafNode if x % 2 == 0 else ParentNode
            if node is not None and not isinstance(node, want):
                raise ValidationError("12.4.3.3/node-class", f"node {x} must be a {want.__name__} or blank")
        super().__init__(cs, full)

    # ---- construction and wire form ------------------------------------------------------------
    @classmethod
    def one_member(cls, cs: CipherSuite, leaf: LeafNode) -> RatchetTree:
        return cls(cs, [leaf])

    @classmethod
    def from_wire(cls, cs: CipherSuite, nodes: Sequence[Node | None]) -> RatchetTree:
        """A tree from the ``ratchet_tree`` extension's node list (§12.4.3.3), extended with blanks."""
        out: list[TreeNode] = []
        for x, node in enumerate(nodes):
            if node is None:
                out.append(None)
                continue
            want = NodeType.leaf if x % 2 == 0 else NodeType.parent
            if node.node_type != want:
                raise ValidationError("12.4.3.3/node-type", f"node {x} must be a {want.name} node")
            out.append(node.leaf_node if want == NodeType.leaf else node.parent_node)
        if len(out) % 2 == 0:
            raise ValidationError("12.4.3.3/last-node-leaf", "a ratchet tree must end with a leaf")
        return cls(cs, out)

    @classmethod
    def from_extension(cls, cs: CipherSuite, ext: RatchetTreeExtension) -> RatchetTree:
        """A tree from a decoded ``ratchet_tree`` payload (§12.4.3.3) that remembers where the decoder found
        each node: until the tree changes, tree hashing (§7.8) reads node encodings from the message
        rather than from ten thousands of decoded objects (and the native backend hashes it in place)."""
        tree = cls.from_wire(cs, ext.nodes)
        decoded = ext.decoded
        if decoded is not None and len(decoded.lens) == len(ext.nodes):
            tree._decoded = decoded
        return tree

    @classmethod
    def decode(cls, cs: CipherSuite, data: bytes) -> RatchetTree:
        """A tree from ``optional<Node> ratchet_tree<V>`` bytes (§12.4.3.3), extended with blanks."""
        return cls.from_extension(cs, decode_ratchet_tree_extension(data))

    def to_wire(self) -> list[Node | None]:
        """The node list for the ``ratchet_tree`` extension (trailing blanks are dropped on encoding)."""
        out: list[Node | None] = []
        for node in self._nodes:
            if node is None:
                out.append(None)
            elif isinstance(node, LeafNode):
                out.append(Node.leaf(node))
            else:
                out.append(Node.parent(node))
        return out

    def encode(self) -> bytes:
        """``optional<Node> ratchet_tree<V>`` (§12.4.3.3), trailing blank nodes dropped, built from the
        per-node encoding cache (the same bytes as encoding :meth:`to_wire`)."""
        last = max((x for x in range(self.width) if self._nodes[x] is not None), default=-1)
        if last < 0:
            raise ValueError("an empty tree has no ratchet_tree encoding")
        parts = []
        for x in range(last + 1):
            enc = self._encoding(x)
            parts.append(b"\x00" if not enc else (b"\x01\x01" if x % 2 == 0 else b"\x01\x02") + enc)
        return opaque_bytes(b"".join(parts))

    # ---- access --------------------------------------------------------------------------------
    def node(self, x: int) -> TreeNode:
        return self._nodes[x]

    def leaf(self, leaf_index: int) -> LeafNode | None:
        if not 0 <= leaf_index < self.n_leaves:
            return None
        node = self._nodes[2 * leaf_index]
        assert node is None or isinstance(node, LeafNode)
        return node

    def parent_node(self, x: int) -> ParentNode | None:
        node = self._nodes[x]
        assert node is None or isinstance(node, ParentNode)
        return node

    def leaves(self) -> Iterator[tuple[int, LeafNode]]:
        """``(leaf_index, leaf)`` for every non-blank leaf, in order."""
        for i in range(self.n_leaves):
            node = self._nodes[2 * i]
            if node is not None:
                assert isinstance(node, LeafNode)
                yield i, node

    def member_count(self) -> int:
        return sum(1 for _ in self.leaves())

    # ---- mutation (§7.7, §12.1) -----------------------------------------------------------------
    def set_leaf(self, leaf_index: int, leaf: LeafNode | None) -> None:
        self._set(2 * leaf_index, leaf)

    def set_parent(self, x: int, node: ParentNode | None) -> None:
        self._set(x, node)

    def blank_direct_path(self, leaf_index: int) -> None:
        for x in tm.direct_path(2 * leaf_index, self.n_leaves):
            if self._nodes[x] is not None:
                self._set(x, None)

    def extend_to(self, n_leaves: int) -> None:
        """Extend with blank subtrees until the tree has at least ``n_leaves`` leaves (§7.7)."""
        while self.n_leaves < n_leaves:
            self._extend()

    def truncate(self) -> None:
        """Halve the tree while its right subtree is entirely blank (§7.7)."""
        while self.n_leaves > 1:
            half = self.n_leaves // 2
            if any(self._nodes[x] is not None for x in range(2 * half, len(self._nodes))):
                return
            self._cut_to(2 * half - 1)

    def add_leaf(self, leaf: LeafNode, start: int = 0) -> int:
        """Add ``leaf`` at the leftmost blank leaf, extending the tree if none (§12.1.1); its index.

        ``start`` is a leaf index below which the caller knows there is no blank leaf (several Adds of
        one commit fill blanks left to right, so each may start after the previous one).
        """
        index = next((i for i in range(start, self.n_leaves) if self._nodes[2 * i] is None), None)
        if index is None:
            index = self.n_leaves
            self._extend()
        self._set(2 * index, leaf)
        for x in tm.direct_path(2 * index, self.n_leaves):
            p = self._nodes[x]
            if p is not None:
                assert isinstance(p, ParentNode)
                unmerged = tuple(sorted((*p.unmerged_leaves, index)))
                self._set(x, ParentNode(p.encryption_key, p.parent_hash, unmerged))
        return index

    def update_leaf(self, leaf_index: int, leaf: LeafNode) -> None:
        """Replace a member's leaf and blank its direct path (Update proposal, §12.1.2)."""
        self.set_leaf(leaf_index, leaf)
        self.blank_direct_path(leaf_index)

    def remove_leaf(self, leaf_index: int) -> None:
        """Blank the leaf and its direct path, then truncate (Remove proposal, §12.1.3)."""
        self.set_leaf(leaf_index, None)
        self.blank_direct_path(leaf_index)
        self.truncate()

    # ---- resolution and paths (§4.1.1, §4.1.2) --------------------------------------------------
    def resolution(self, x: int, exclude_leaves: Iterable[int] = ()) -> list[int]:
        """The resolution of node ``x`` (§4.1.1), leaving out the leaves in ``exclude_leaves``."""
        excluded = set(exclude_leaves)
        out: list[int] = []
        self._resolve(x, excluded, out)
        return out

    def _resolve(self, x: int, excluded: set[int], out: list[int]) -> None:
        node = self._nodes[x]
        if x % 2 == 0:
            if node is not None and x // 2 not in excluded:
                out.append(x)
            return
        if node is None:
            self._resolve(tm.left(x), excluded, out)
            self._resolve(tm.right(x), excluded, out)
            return
        assert isinstance(node, ParentNode)
        out.append(x)
        out.extend(2 * leaf for leaf in node.unmerged_leaves if leaf not in excluded)

    def _resolution_empty(self, x: int) -> bool:
        if self._nodes[x] is not None:
            return False
        if x % 2 == 0:
            return True
        return self._resolution_empty(tm.left(x)) and self._resolution_empty(tm.right(x))

    def filtered_direct_path(self, leaf_index: int) -> list[int]:
        """The filtered direct path of a leaf (§4.1.2)."""
        return tm.filtered_direct_path(2 * leaf_index, self.n_leaves, self._resolution_empty)

    def filtered_path_and_copath(self, leaf_index: int) -> list[tuple[int, int]]:
        """``(node, copath child)`` pairs of the filtered direct path, leaf to root."""
        return [
            (p, c)
            for p, c in tm.path_and_copath(2 * leaf_index, self.n_leaves)
            if not self._resolution_empty(c)
        ]

    def set_path_parent_hashes(self, leaf_index: int) -> bytes:
        """Fill ``parent_hash`` down the filtered direct path of a leaf (root first); the leaf's value.

        Used after new public keys were set on the path by an UpdatePath (§7.5, §7.9.1).
        """
        pairs = self.filtered_path_and_copath(leaf_index)
        above = b""
        for p, copath_child in reversed(pairs):
            node = self._nodes[p]
            assert isinstance(node, ParentNode)
            self._set(p, ParentNode(node.encryption_key, above, node.unmerged_leaves))
            above = self.parent_hash(p, copath_child)
        return above

    def __repr__(self) -> str:
        return f"RatchetTree(suite={self.cs.suite_id}, leaves={self.n_leaves}, members={self.member_count()})"
