"""Ratchet tree nodes on the wire (RFC 9420 §7.1, §7.6, §12.4.3.3).

``ParentNode`` (§7.1), the ``Node`` union and the ``ratchet_tree`` extension payload
``optional<Node> ratchet_tree<V>`` (§12.4.3.3), and the ``UpdatePath`` of a Commit with its
``HPKECiphertext`` (§7.6). Decoding a ratchet tree checks only what §12.4.3.3 asks of the encoding — the
last entry is non-blank; tree-shape rules (leaves at even positions, …) belong to the tree layer.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from mls.tree.leaf_node import LeafNode
from mls.wire.codec import Reader
from mls.wire.extensions import ExtensionPayload, ExtensionType
from mls.wire.struct import U8, U32, Opaque, Opt, Select, Struct, Vec


@dataclass(frozen=True)
class ParentNode(Struct):
    """``ParentNode``: HPKE public key, parent hash and the unmerged leaf indices."""

    encryption_key: Annotated[bytes, Opaque]
    parent_hash: Annotated[bytes, Opaque]
    unmerged_leaves: Annotated[tuple[int, ...], Vec(U32)]


class NodeType(IntEnum):
    """``NodeType`` (§12.4.3.3)."""

    leaf = 1
    parent = 2


@dataclass(frozen=True, kw_only=True)
class Node(Struct):
    """``Node``: ``leaf_node`` is set for ``leaf``, ``parent_node`` for ``parent``."""

    node_type: Annotated[int, U8]
    leaf_node: Annotated[LeafNode | None, LeafNode] = None
    parent_node: Annotated[ParentNode | None, ParentNode] = None

    __select__ = Select("node_type", {NodeType.leaf: ("leaf_node",), NodeType.parent: ("parent_node",)})

    @classmethod
    def leaf(cls, leaf_node: LeafNode) -> Node:
        return cls(node_type=NodeType.leaf, leaf_node=leaf_node)

    @classmethod
    def parent(cls, parent_node: ParentNode) -> Node:
        return cls(node_type=NodeType.parent, parent_node=parent_node)


_TREE_NODES: Vec[Node | None] = Vec(Opt(Node))
_NODE: Opt[Node] = Opt(Node)


@dataclass(frozen=True)
class RatchetTreeExtension(ExtensionPayload):
    """``optional<Node> ratchet_tree<V>``: nodes in array order, ``None`` for blank, last one non-blank."""

    extension_type = ExtensionType.ratchet_tree
    nodes: Annotated[tuple[Node | None, ...], _TREE_NODES]

    def __post_init__(self) -> None:
        if not self.nodes or self.nodes[-1] is None:
            raise ValueError("a ratchet_tree must end with a non-blank node (truncate trailing blanks)")

    @classmethod
    def decode(cls, r: Reader) -> RatchetTreeExtension:
        """Decode the nodes, noting where each one's value (its LeafNode or ParentNode encoding) lies in
        the message: the tree hash (§7.8) needs exactly those bytes, and reading them there later is
        cheaper than revisiting ten thousands of decoded objects."""
        starts, lens = array("Q"), array("Q")

        def read_node(r: Reader) -> Node | None:
            at = r.pos
            node = _NODE.read(r)
            # optional<Node>: a presence octet, then node_type, then the value; a blank is one octet.
            present = node is not None
            starts.append(at + 2 if present else at)
            lens.append(r.pos - at - 2 if present else 0)
            return node

        with r.scope(cls.__name__):
            at = r.pos
            nodes = tuple(r.vector(read_node))
            if not nodes or nodes[-1] is None:
                raise r.error("the last node of a ratchet_tree must be non-blank (§12.4.3.3)", at)
        ext = cls(nodes)
        object.__setattr__(ext, "_decoded", DecodedNodes(r.source(), starts, lens))
        return ext

    @property
    def decoded(self) -> DecodedNodes | None:
        """Where each node's value lay when this payload was decoded (None for one built in memory)."""
        decoded: DecodedNodes | None = self.__dict__.get("_decoded")
        return decoded


@dataclass(frozen=True, repr=False)
class DecodedNodes:
    """Where each node's value encoding (its LeafNode or ParentNode) lies in the message a ratchet tree was
    decoded from: ``source[starts[x] : starts[x] + lens[x]]``, ``lens[x] == 0`` for a blank node."""

    source: bytes
    starts: array[int]
    lens: array[int]

    def encoding(self, x: int) -> bytes:
        """Node x's value encoding (``b""`` when blank)."""
        start = self.starts[x]
        return self.source[start : start + self.lens[x]]


def encode_ratchet_tree(nodes: Sequence[Node | None]) -> bytes:
    """Encode a tree given in array order, dropping trailing blank nodes as §12.4.3.3 requires."""
    end = len(nodes)
    while end and nodes[end - 1] is None:
        end -= 1
    return RatchetTreeExtension(tuple(nodes[:end])).to_bytes()


def decode_ratchet_tree(data: bytes) -> tuple[Node | None, ...]:
    """Decode ``optional<Node> ratchet_tree<V>`` (not extended to a full tree: see §12.4.3.3)."""
    return RatchetTreeExtension.from_bytes(data).nodes


def decode_ratchet_tree_extension(data: bytes) -> RatchetTreeExtension:
    """Decode ``optional<Node> ratchet_tree<V>``, noting where the nodes lie (see ``decoded``)."""
    return RatchetTreeExtension.from_bytes(data)


@dataclass(frozen=True)
class HPKECiphertext(Struct):
    """``struct { opaque kem_output<V>; opaque ciphertext<V>; } HPKECiphertext;``"""

    kem_output: Annotated[bytes, Opaque]
    ciphertext: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class UpdatePathNode(Struct):
    """``UpdatePathNode``: a new parent public key and the path secret encrypted to its resolution."""

    encryption_key: Annotated[bytes, Opaque]
    encrypted_path_secret: Annotated[tuple[HPKECiphertext, ...], Vec(HPKECiphertext)]


@dataclass(frozen=True)
class UpdatePath(Struct):
    """``struct { LeafNode leaf_node; UpdatePathNode nodes<V>; } UpdatePath;``"""

    leaf_node: Annotated[LeafNode, LeafNode]
    nodes: Annotated[tuple[UpdatePathNode, ...], Vec(UpdatePathNode)]
