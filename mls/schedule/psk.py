"""The PSK secret of the key schedule (RFC 9420 §8.4).

Each injected PSK is identified by the encoding of its ``PreSharedKeyID``; the list is chained as

    psk_extracted_[i] = KDF.Extract(0, psk_[i])
    psk_input_[i]     = ExpandWithLabel(psk_extracted_[i], "derived psk", PSKLabel, KDF.Nh)
    psk_secret_[0]    = 0
    psk_secret_[i]    = KDF.Extract(psk_input_[i-1], psk_secret_[i-1])

with ``PSKLabel = struct { PreSharedKeyID id; uint16 index; uint16 count; }``. With no PSKs the result is
the all-zero vector of ``KDF.Nh`` bytes.

Identifiers may be given as encoded bytes or as any struct with ``to_bytes()`` (the ``PreSharedKeyID`` of
``mls.wire.proposals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mls.crypto.cipher_suite import CipherSuite
from mls.wire.proposals import PreSharedKeyID, PSKType


class Encodable(Protocol):
    def to_bytes(self) -> bytes: ...


PskId = bytes | Encodable
"""A ``PreSharedKeyID``, encoded or as a struct."""


def _encoded(psk_id: PskId) -> bytes:
    return psk_id if isinstance(psk_id, bytes) else psk_id.to_bytes()


def psk_label(psk_id: PskId, index: int, count: int) -> bytes:
    """The encoded ``PSKLabel`` of the ``index``-th of ``count`` PSKs."""
    if not 0 <= index < count <= 0xFFFF:
        raise ValueError("PSK index and count must be uint16 with index < count")
    return _encoded(psk_id) + index.to_bytes(2, "big") + count.to_bytes(2, "big")


def psk_input(cs: CipherSuite, psk_id: PskId, psk: bytes, index: int, count: int) -> bytes:
    """``psk_input_[index]``: ExpandWithLabel(Extract(0, psk), "derived psk", PSKLabel, KDF.Nh)."""
    extracted = cs.extract(bytes(cs.n_h), psk)
    return cs.expand_with_label(extracted, "derived psk", psk_label(psk_id, index, count), cs.n_h)


def psk_secret(cs: CipherSuite, psks: Sequence[tuple[PskId, bytes]]) -> bytes:
    """The ``psk_secret`` for the PSKs ``(PreSharedKeyID, psk value)`` in the order of the Commit."""
    secret = bytes(cs.n_h)
    for i, (psk_id, psk) in enumerate(psks):
        secret = cs.extract(psk_input(cs, psk_id, psk, i, len(psks)), secret)
    return secret


class PskStore(Protocol):
    """Where PSK values are found (§8.4): external PSKs by id, resumption PSKs of other groups."""

    def get(self, psk_id: PreSharedKeyID) -> bytes | None: ...


@dataclass
class MemoryPskStore:
    """PSKs in memory: external ones by ``psk_id``, resumption ones by ``(group_id, epoch)``."""

    external: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    resumption: dict[tuple[bytes, int], bytes] = field(default_factory=dict, repr=False)

    def get(self, psk_id: PreSharedKeyID) -> bytes | None:
        if psk_id.psktype == PSKType.external:
            assert psk_id.psk_id is not None
            return self.external.get(psk_id.psk_id)
        assert psk_id.psk_group_id is not None and psk_id.psk_epoch is not None
        return self.resumption.get((psk_id.psk_group_id, psk_id.psk_epoch))


__all__ = ["Encodable", "MemoryPskStore", "PskId", "PskStore", "psk_input", "psk_label", "psk_secret"]
