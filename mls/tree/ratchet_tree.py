"""The public ratchet tree (RFC 9420 §4.1, §7): nodes, resolution, tree hash, parent hash, add/remove.

:class:`RatchetTree` is an array-based full binary tree (§7.7: the leaf count is always a power of two)
holding :class:`~mls.tree.leaf_node.LeafNode` at even indices, :class:`~mls.tree.nodes.ParentNode` at odd ones and
``None`` for blank nodes. It is cheap to :meth:`~RatchetTree.copy` (staged commits work on a copy and
the caller keeps or drops it) and caches every subtree hash (§7.8): a change invalidates only the hashes
on the changed node's direct path, so creating or processing a commit re-hashes only the changed paths.
When a crypto backend hashes whole trees (:class:`~mls.crypto.backend.BatchOps`), a tree with most
hashes missing is hashed in one call from the cached per-node encodings, and the hashes stay in the
one buffer it returns until :meth:`RatchetTree.node_hash` asks for them.

Validation of a tree received from outside (§7.9.2, §12.4.3.1) lives in :mod:`mls.tree.tree_validation`;
private keys (TreeKEM, §7.4–§7.6) in :mod:`mls.tree.treekem`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from enum import Enum
from typing import Final, cast

from mls.crypto.backend import HashBuffer, batch_ops
from mls.crypto.cipher_suite import CipherSuite
from mls.errors import ValidationError
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode
from mls.tree.nodes import (
    DecodedNodes,
    Node,
    NodeType,
    ParentNode,
    RatchetTreeExtension,
    decode_ratchet_tree_extension,
)
from mls.wire.codec import Writer, opaque_bytes

TreeNode = LeafNode | ParentNode | None


class _Cached(Enum):
    """Hash-cache markers (a one-member enum, so that type checkers can narrow on it)."""

    IN_BULK = 0


#: A node's hash-cache entry when its hash lies in the tree's bulk buffer (not cut out yet).
_IN_BULK: Final = _Cached.IN_BULK


def _full_leaf_count(n_nodes: int) -> int:
    """The leaf count of the smallest full tree with at least ``n_nodes`` nodes."""
    leaves = 1
    while 2 * leaves - 1 < n_nodes:
        leaves *= 2
    return leaves


def _blank_suffix(encs: list[bytes], limit: int) -> int:
    """How many entries at the end of ``encs`` are ``b""`` (blank nodes), counting up to ``limit``.

    A galloping search: the cost follows the blank run, not the whole list.
    """
    end = len(encs)
    lo, hi = 0, 1  # the last lo entries are blank
    while hi <= limit and encs[end - hi : end - lo].count(b"") == hi - lo:
        lo, hi = hi, 2 * hi
    hi = min(hi, limit + 1)  # the last hi entries are not all blank, or hi is past the limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if encs[end - mid : end - lo].count(b"") == mid - lo:
            lo = mid
        else:
            hi = mid
    return lo


class RatchetTree:
    """A full left-balanced binary tree of optional nodes, with cached subtree hashes (§7.8).

    Per node x: ``_enc[x]`` is the encoded node (``b""`` when blank, None until encoded); ``_hashes[x]``
    its subtree hash, None until computed, or ``_IN_BULK`` when it is at ``x * Nh`` in ``_bulk``.
    ``_enc_complete`` is ``_enc`` itself while no entry of it is None (set by :meth:`_encodings`), else
    None: a replaced list is never taken for complete.
    """

    __slots__ = ("_bulk", "_decoded", "_enc", "_enc_complete", "_hashes", "_nh", "_nodes", "cs")

    def __init__(self, cs: CipherSuite, nodes: Sequence[TreeNode]) -> None:
        n_leaves = _full_leaf_count(len(nodes))
        width = 2 * n_leaves - 1
        self.cs = cs
        self._nh = cs.n_h
        self._nodes: list[TreeNode] = list(nodes) + [None] * (width - len(nodes))
        self._hashes: list[bytes | _Cached | None] = [None] * width
        self._enc: list[bytes | None] = [None] * width
        self._enc_complete: list[bytes | None] | None = None
        self._bulk: HashBuffer = b""
        # Where the nodes lie in the message they were decoded from, until the tree first changes.
        self._decoded: DecodedNodes | None = None
        for x, node in enumerate(self._nodes):
            want = LeafNode if x % 2 == 0 else ParentNode
            if node is not None and not isinstance(node, want):
                raise ValidationError("12.4.3.3", f"node {x} must be a {want.__name__} or blank")

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
                raise ValidationError("12.4.3.3", f"node {x} must be a {want.name} node")
            out.append(node.leaf_node if want == NodeType.leaf else node.parent_node)
        if len(out) % 2 == 0:
            raise ValidationError("12.4.3.3", "a ratchet tree must end with a leaf")
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

    def copy(self) -> RatchetTree:
        other = RatchetTree.__new__(RatchetTree)
        other.cs, other._nh = self.cs, self._nh
        other._nodes = list(self._nodes)
        other._hashes = list(self._hashes)
        other._enc = list(self._enc)
        other._enc_complete = other._enc if self._enc_complete is self._enc else None
        other._bulk = self._bulk
        other._decoded = self._decoded
        return other

    # ---- access --------------------------------------------------------------------------------
    @property
    def n_leaves(self) -> int:
        return (len(self._nodes) + 1) // 2

    @property
    def width(self) -> int:
        return len(self._nodes)

    @property
    def root(self) -> int:
        return tm.root(self.n_leaves)

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
    def _set(self, x: int, node: TreeNode) -> None:
        self._nodes[x] = node
        self._decoded = None
        if node is None:
            self._enc[x] = b""
        else:
            self._enc[x] = None
            self._enc_complete = None
        self._invalidate(x)

    def _invalidate(self, x: int) -> None:
        n = self.n_leaves
        r = tm.root(n)
        self._hashes[x] = None
        while x != r:
            x = tm.parent(x, n)
            self._hashes[x] = None

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

    def _extend(self) -> None:
        """Double the leaf count: the old tree becomes the left subtree of a new blank root (§7.7)."""
        width = len(self._nodes)
        self._decoded = None
        self._nodes.extend([None] * (width + 1))
        self._hashes.extend([None] * (width + 1))
        self._enc.extend([b""] * (width + 1))
        # The new root's hash is unknown; the old subtrees' hashes are unchanged (indices are stable),
        # and so is their place in _bulk.

    def truncate(self) -> None:
        """Halve the tree while its right subtree is entirely blank (§7.7)."""
        while self.n_leaves > 1:
            half = self.n_leaves // 2
            if any(self._nodes[x] is not None for x in range(2 * half, len(self._nodes))):
                return
            width = 2 * half - 1
            del self._nodes[width:], self._hashes[width:], self._enc[width:]
            self._decoded = None

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
            (p, c) for p, c in tm.path_and_copath(2 * leaf_index, self.n_leaves) if not self._resolution_empty(c)
        ]

    # ---- tree hash (§7.8) -----------------------------------------------------------------------
    def _encoding(self, x: int) -> bytes:
        """The encoded LeafNode or ParentNode at ``x`` (the value of its ``optional<>``, §7.8, §12.4.3.3),
        ``b""`` when the node is blank (a real node never encodes to nothing); cached."""
        enc = self._enc[x]
        if enc is None:
            node, decoded = self._nodes[x], self._decoded
            if node is None:
                enc = b""
            elif decoded is not None and x < len(decoded.lens):  # unchanged since decoding
                enc = decoded.encoding(x)
            else:
                enc = node.to_bytes()
            self._enc[x] = enc
        return enc

    def _encodings(self) -> list[bytes]:
        """Every node's :meth:`_encoding`, in node order (the cache itself once it is complete)."""
        if self._enc_complete is not self._enc:
            decoded = self._decoded
            if decoded is not None:  # unchanged since decoding: every encoding is in the message, in order
                source, width = decoded.source, self.width
                self._enc = [source[s : s + n] for s, n in zip(decoded.starts, decoded.lens)]
                self._enc += [b""] * (width - len(self._enc))
            else:
                for x in [x for x, enc in enumerate(self._enc) if enc is None]:
                    self._encoding(x)
            self._enc_complete = self._enc
        return cast("list[bytes]", self._enc)

    def node_hash(self, x: int) -> bytes:
        """The tree hash of the subtree rooted at node ``x`` (cached)."""
        h = self._hashes[x]
        if h is None:
            h = self._compute_hash(x)
            self._hashes[x] = h
        elif h is _IN_BULK:
            n = self._nh
            h = self._hashes[x] = self._bulk[x * n : (x + 1) * n]
        return h

    def _compute_hash(self, x: int) -> bytes:
        w = Writer()
        enc = self._encoding(x)
        if x % 2 == 0:
            w.u8(NodeType.leaf)
            w.u32(x // 2)
        else:
            w.u8(NodeType.parent)
        if not enc:
            w.u8(0)
        else:
            w.u8(1)
            w.write(enc)
        if x % 2 == 1:
            w.opaque(self.node_hash(tm.left(x)))
            w.opaque(self.node_hash(tm.right(x)))
        return self.cs.hash(w.getvalue())

    def tree_hash(self) -> bytes:
        """The tree hash of the whole tree: the root's (§7.8)."""
        root = self.root
        if self._hashes[root] is None:
            self._fill_hashes_in_one_call()
        return self.node_hash(root)

    #: Below this many missing hashes, the path-by-path Python computation is cheaper than one batch call.
    BATCH_HASH_THRESHOLD = 64

    def _fill_hashes_in_one_call(self) -> None:
        """When most hashes are missing (a tree just received or loaded) and the crypto backend hashes whole
        trees, compute every node's hash (§7.8) in one call; they stay in its output buffer, ``_bulk``.
        Without such a backend, gather every node's encoding at once for the node-by-node computation."""
        if self._hashes.count(None) < self.BATCH_HASH_THRESHOLD:
            return
        ops = batch_ops()
        if ops is None:
            self._encodings()
            return
        # The previous buffer goes before the call, so that the allocator can reuse its memory.
        self._hashes = [_IN_BULK] * self.width
        self._bulk = b""
        try:
            decoded = self._decoded
            if decoded is not None:  # straight from the message the tree came in: nothing to gather
                bulk = ops.tree_hashes_spans(self.cs.hash_name, decoded.source, decoded.starts, decoded.lens)
            else:
                bulk = ops.tree_hashes_packed(self.cs.hash_name, self._hash_input())
            if len(bulk) != self.width * self._nh:
                raise ValidationError("7.8", "the crypto backend hashed a tree of another width")
            self._bulk = bulk
        except BaseException:
            self._hashes = [None] * self.width
            raise

    def _hash_input(self) -> list[bytes]:
        """:meth:`_encodings` but for trailing blank nodes, which a whole-tree backend adds back when it
        extends a tree to its full width (§7.7); more than half the leaves stay, so the width is kept."""
        encs = self._encodings()
        blank = _blank_suffix(encs, max(self.n_leaves - 2, 0)) // 2 * 2  # an odd node count stays
        return encs[: len(encs) - blank] if blank else encs

    def all_node_hashes(self) -> list[bytes]:
        return [self.node_hash(x) for x in range(self.width)]

    def original_tree_hash(self, x: int, removed_leaves: Iterable[int]) -> bytes:
        """Tree hash of ``x`` with ``removed_leaves`` blanked and dropped from unmerged lists (§7.9)."""
        removed = {leaf for leaf in removed_leaves if leaf in tm.subtree_leaves(x, self.n_leaves)}
        if not removed:
            return self.node_hash(x)
        return self._hash_without(x, removed)

    def _hash_without(self, x: int, removed: set[int]) -> bytes:
        leaves = tm.subtree_leaves(x, self.n_leaves)
        if not any(leaf in removed for leaf in leaves):
            return self.node_hash(x)
        w = Writer()
        node = self._nodes[x]
        if x % 2 == 0:
            w.u8(NodeType.leaf)
            w.u32(x // 2)
            w.u8(0)  # the only leaf of this subtree is removed
            return self.cs.hash(w.getvalue())
        w.u8(NodeType.parent)
        if node is None:
            w.u8(0)
        else:
            assert isinstance(node, ParentNode)
            kept = tuple(leaf for leaf in node.unmerged_leaves if leaf not in removed)
            w.u8(1)
            w.write(ParentNode(node.encryption_key, node.parent_hash, kept).to_bytes())
        w.opaque(self._hash_without(tm.left(x), removed))
        w.opaque(self._hash_without(tm.right(x), removed))
        return self.cs.hash(w.getvalue())

    # ---- parent hash (§7.9) ---------------------------------------------------------------------
    def parent_hash(self, p: int, sibling: int) -> bytes:
        """The parent hash of parent node ``p`` with copath child ``sibling`` (§7.9)."""
        node = self._nodes[p]
        assert isinstance(node, ParentNode)
        sibling_hash = self.original_tree_hash(sibling, node.unmerged_leaves)
        return self.cs.hash(
            opaque_bytes(node.encryption_key) + opaque_bytes(node.parent_hash) + opaque_bytes(sibling_hash)
        )

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
