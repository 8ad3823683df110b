"""``GroupContext`` (RFC 9420 §8.1): the group's shared summary of its state in one epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from mls.tree.leaf_node import MLS10
from mls.wire.extensions import Extension
from mls.wire.struct import U16, U64, Opaque, Struct, Vec


@dataclass(frozen=True)
class GroupContext(Struct):
    """``GroupContext`` (§8.1); ``version`` is always mls10."""

    version: Annotated[int, MLS10]
    cipher_suite: Annotated[int, U16]
    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    tree_hash: Annotated[bytes, Opaque]
    confirmed_transcript_hash: Annotated[bytes, Opaque]
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]
