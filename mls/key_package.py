"""Key packages (RFC 9420 §10): ``KeyPackage`` and its to-be-signed encoding ``KeyPackageTBS``.

``version`` and ``cipher_suite`` are kept as received; checking them against the enclosing MLSMessage
and the group (§10.1) is validation, not decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from .codec import U16, Opaque, Struct, Vec
from .extensions import Extension
from .leaf_node import LeafNode


@dataclass(frozen=True)
class KeyPackage(Struct):
    """``KeyPackage``; ``init_key`` is an HPKEPublicKey."""

    version: Annotated[int, U16]
    cipher_suite: Annotated[int, U16]
    init_key: Annotated[bytes, Opaque]
    leaf_node: Annotated[LeafNode, LeafNode]
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]
    signature: Annotated[bytes, Opaque]

    def tbs(self) -> bytes:
        """The ``KeyPackageTBS`` encoding: every field but ``signature``."""
        return self.to_bytes_without("signature")
