"""Credentials (RFC 9420 §5.3).

A :class:`Credential` is a tagged union on ``credential_type``: ``basic`` carries an opaque identity and
``x509`` a chain of DER certificates. A credential type outside the ``select`` cannot be parsed (the
arm has no length prefix), so decoding one raises :class:`~mls.errors.DecodeError`. §13.5 forbids
GREASE values in ``Credential.credential_type``; they appear only in ``Capabilities.credentials``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from mls.wire.struct import U16, Opaque, Select, Struct, Vec


class CredentialType(IntEnum):
    """Values of the "MLS Credential Types" registry defined by RFC 9420 (§17.5)."""

    basic = 1
    x509 = 2


@dataclass(frozen=True)
class Certificate(Struct):
    """``struct { opaque cert_data<V>; } Certificate;`` — one DER-encoded X.509 certificate."""

    cert_data: Annotated[bytes, Opaque]


@dataclass(frozen=True, kw_only=True)
class Credential(Struct):
    """``Credential``: ``identity`` is set for ``basic``, ``certificates`` (end entity first) for ``x509``."""

    credential_type: Annotated[int, U16]
    identity: Annotated[bytes | None, Opaque] = None
    certificates: Annotated[tuple[Certificate, ...] | None, Vec(Certificate)] = None

    __select__ = Select(
        "credential_type",
        {CredentialType.basic: ("identity",), CredentialType.x509: ("certificates",)},
    )

    @classmethod
    def basic(cls, identity: bytes) -> Credential:
        return cls(credential_type=CredentialType.basic, identity=identity)

    @classmethod
    def x509(cls, chain: Iterable[bytes]) -> Credential:
        """An X.509 credential from DER certificates, end-entity certificate first."""
        return cls(credential_type=CredentialType.x509, certificates=tuple(Certificate(c) for c in chain))
