"""Leaf nodes (RFC 9420 §7.2): capabilities, lifetimes and the to-be-signed encoding ``LeafNodeTBS``.

``ProtocolVersion`` (§6) lives here too since the leaf's capabilities are its first user. Signing and
verification belong to the cipher-suite layer; :meth:`LeafNode.tbs` only produces the bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import CipherSuite
from mls.crypto.key_protocols import Signer
from mls.wire.codec import Writer
from mls.wire.extensions import Extension
from mls.wire.struct import U8, U16, U64, Codec, OneOf, Opaque, Select, Struct, Vec


class ProtocolVersion(IntEnum):
    """``ProtocolVersion`` (§6)."""

    mls10 = 1


#: The codec of a ``ProtocolVersion version = mls10`` field: any other version is a decoding error.
MLS10: Codec[int] = OneOf(U16, (ProtocolVersion.mls10,))


class LeafNodeSource(IntEnum):
    """``LeafNodeSource`` (§7.2): how the leaf node was created."""

    key_package = 1
    update = 2
    commit = 3


@dataclass(frozen=True)
class Capabilities(Struct):
    """``Capabilities``: protocol versions, cipher suites, and extension, proposal and credential types."""

    versions: Annotated[tuple[int, ...], Vec(U16)]
    cipher_suites: Annotated[tuple[int, ...], Vec(U16)]
    extensions: Annotated[tuple[int, ...], Vec(U16)]
    proposals: Annotated[tuple[int, ...], Vec(U16)]
    credentials: Annotated[tuple[int, ...], Vec(U16)]


@dataclass(frozen=True)
class Lifetime(Struct):
    """``struct { uint64 not_before; uint64 not_after; } Lifetime;`` (seconds since the Unix epoch)."""

    not_before: Annotated[int, U64]
    not_after: Annotated[int, U64]


@dataclass(frozen=True, kw_only=True)
class LeafNode(Struct):
    """``LeafNode``: ``lifetime`` is set iff the source is ``key_package``, ``parent_hash`` iff ``commit``."""

    encryption_key: Annotated[bytes, Opaque]
    signature_key: Annotated[bytes, Opaque]
    credential: Annotated[Credential, Credential]
    capabilities: Annotated[Capabilities, Capabilities]
    leaf_node_source: Annotated[int, U8]
    lifetime: Annotated[Lifetime | None, Lifetime] = None
    parent_hash: Annotated[bytes | None, Opaque] = None
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]
    signature: Annotated[bytes, Opaque]

    __select__ = Select(
        "leaf_node_source",
        {
            LeafNodeSource.key_package: ("lifetime",),
            LeafNodeSource.update: (),
            LeafNodeSource.commit: ("parent_hash",),
        },
    )

    def tbs(self, group_id: bytes | None = None, leaf_index: int | None = None) -> bytes:
        """The ``LeafNodeTBS`` encoding.

        ``group_id`` and ``leaf_index`` are required for the ``update`` and ``commit`` sources and must be
        omitted for ``key_package``.
        """
        in_group = self.leaf_node_source != LeafNodeSource.key_package
        if in_group != (group_id is not None) or in_group != (leaf_index is not None):
            raise ValueError(
                "LeafNodeTBS takes group_id and leaf_index exactly when leaf_node_source is update or commit"
            )
        w = Writer()
        w.write(self.to_bytes_without("signature"))
        if group_id is not None and leaf_index is not None:
            w.opaque(group_id)
            w.u32(leaf_index)
        return w.getvalue()


def default_capabilities(credential_types: tuple[int, ...] = (1, 2)) -> Capabilities:
    """Capabilities of a leaf made by this implementation: mls10, all seven suites, basic and x509
    credentials; no non-default extension or proposal types (the defaults are never listed, §7.2)."""
    return Capabilities(
        versions=(ProtocolVersion.mls10,),
        cipher_suites=(1, 2, 3, 4, 5, 6, 7),
        extensions=(),
        proposals=(),
        credentials=credential_types,
    )


def sign_leaf_node(
    cs: CipherSuite,
    signer: Signer,
    leaf: LeafNode,
    group_id: bytes | None = None,
    leaf_index: int | None = None,
) -> LeafNode:
    """``leaf`` with ``signature = SignWithLabel(., "LeafNodeTBS", LeafNodeTBS)`` (§7.2)."""
    signature = cs.sign_with_label(signer, "LeafNodeTBS", leaf.tbs(group_id, leaf_index))
    return dataclasses.replace(leaf, signature=signature)
