"""Tree hashes (RFC 9420 §7.8) and parent hashes (§7.9) of a ratchet tree, over per-node caches.

:class:`HashedNodes` is the node array of a :class:`~mls.tree.ratchet_tree.RatchetTree` with what is derived
from each node: its encoding (the value of its ``optional<>``, §12.4.3.3) and the tree hash of its subtree.
Both are cached; a change through :meth:`HashedNodes._set` invalidates only the hashes on the changed node's
direct path, so creating or processing a commit re-hashes only the changed paths. When a crypto backend
hashes whole trees (:class:`~mls.crypto.backend.BatchOps`), a tree with most hashes missing is hashed in one
call — straight from the message it was decoded from while it is unchanged, else from the cached encodings —
and the hashes stay in the one buffer it returns until :meth:`HashedNodes.node_hash` asks for them.

:class:`~mls.tree.ratchet_tree.RatchetTree` adds the tree operations (wire form, add/remove, resolution).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Final, Self, cast

from mls.crypto.backend import HashBuffer, batch_ops
from mls.crypto.cipher_suite import CipherSuite
from mls.errors import ValidationError
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode
from mls.tree.nodes import DecodedNodes, NodeType, ParentNode
from mls.wire.codec import Writer, opaque_bytes

#: A node of the tree: a leaf at even indices, a parent at odd ones, ``None`` when blank.
TreeNode = LeafNode | ParentNode | None


class _Cached(Enum):
    """Hash-cache markers (a one-member enum, so that type checkers can narrow on it)."""

    IN_BULK = 0


#: A node's hash-cache entry when its hash lies in the tree's bulk buffer (not cut out yet).
_IN_BULK: Final = _Cached.IN_BULK


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


class HashedNodes:
    """The nodes of a full tree (width ``2 * n_leaves - 1``) with cached encodings and subtree hashes (§7.8).

    Per node x: ``_enc[x]`` is the encoded node (``b""`` when blank, None until encoded); ``_hashes[x]``
    its subtree hash, None until computed, or ``_IN_BULK`` when it is at ``x * Nh`` in ``_bulk``.
    ``_enc_complete`` is ``_enc`` itself while no entry of it is None (set by :meth:`_encodings`), else
    None: a replaced list is never taken for complete. ``_decoded`` says where the nodes lie in the
    message they were decoded from, until the tree first changes.
    """

    __slots__ = ("_bulk", "_decoded", "_enc", "_enc_complete", "_hashes", "_nh", "_nodes", "cs")

    def __init__(self, cs: CipherSuite, nodes: list[TreeNode]) -> None:
        width = len(nodes)
        self.cs = cs
        self._nh = cs.n_h
        self._nodes = nodes
        self._hashes: list[bytes | _Cached | None] = [None] * width
        self._enc: list[bytes | None] = [None] * width
        self._enc_complete: list[bytes | None] | None = None
        self._bulk: HashBuffer = b""
        self._decoded: DecodedNodes | None = None

    def copy(self) -> Self:
        """An independent copy (nodes are immutable, so the lists are copied and the nodes shared)."""
        other = type(self).__new__(type(self))
        other.cs, other._nh = self.cs, self._nh
        other._nodes = list(self._nodes)
        other._hashes = list(self._hashes)
        other._enc = list(self._enc)
        other._enc_complete = other._enc if self._enc_complete is self._enc else None
        other._bulk = self._bulk
        other._decoded = self._decoded
        return other

    @property
    def n_leaves(self) -> int:
        return (len(self._nodes) + 1) // 2

    @property
    def width(self) -> int:
        return len(self._nodes)

    @property
    def root(self) -> int:
        return tm.root(self.n_leaves)

    # ---- changes, and what they invalidate ------------------------------------------------------
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
        """Forget the hashes of ``x`` and its ancestors. A hash is only ever computed after its children's
        (and a bulk fill sets all), so above a node without a hash no node has one: the walk up stops at
        the first such node (adding members one by one invalidates each path once, not per member)."""
        hashes = self._hashes
        if hashes[x] is None:
            return
        hashes[x] = None
        for a in tm.direct_path(x, self.n_leaves):
            if hashes[a] is None:
                return
            hashes[a] = None

    def _extend(self) -> None:
        """Double the leaf count: the old tree becomes the left subtree of a new blank root (§7.7)."""
        width = len(self._nodes)
        self._decoded = None
        self._nodes.extend([None] * (width + 1))
        self._hashes.extend([None] * (width + 1))
        self._enc.extend([b""] * (width + 1))
        # The new root's hash is unknown; the old subtrees' hashes are unchanged (indices are stable),
        # and so is their place in _bulk.

    def _cut_to(self, width: int) -> None:
        """Keep the first ``width`` nodes: the left subtree of a tree whose right half is blank (§7.7)."""
        del self._nodes[width:], self._hashes[width:], self._enc[width:]
        self._decoded = None

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
                raise ValidationError(
                    "7.8/backend-hash-width", "the crypto backend hashed a tree of another width"
                )
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
        """Tree hash of ``x`` with ``removed_leaves`` blanked and dropped from unmerged lists (§7.9).

        When the hash of ``x`` is missing, and with it most of the tree's (a commit that added thousands
        of members computes the parent hashes of its path over subtrees never hashed), every hash is
        computed in one backend call first, as :meth:`tree_hash` does."""
        if self._hashes[x] is None:
            self._fill_hashes_in_one_call()
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
