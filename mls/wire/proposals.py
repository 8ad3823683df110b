"""Proposals (RFC 9420 §12.1), the pre-shared key identifier (§8.4) and ``ProposalOrRef`` (§12.4).

Each proposal body is its own struct with a ``proposal_type`` class constant; :class:`Proposal` is the
tagged union with one optional field per proposal type (named as in the registry) and helpers
:meth:`Proposal.of` / :attr:`Proposal.body`. Unknown proposal types cannot be parsed (the body has no
length prefix) and raise :class:`~mls.errors.DecodeError`; §13.5 forbids GREASE in this field.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, ClassVar, TypeAlias, cast

from mls.tree.leaf_node import LeafNode
from mls.wire.extensions import Extension
from mls.wire.key_package import KeyPackage
from mls.wire.struct import U8, U16, U32, U64, OneOf, Opaque, Select, Struct, Vec


class ProposalType(IntEnum):
    """Values of the "MLS Proposal Types" registry defined by RFC 9420 (§17.4)."""

    add = 1
    update = 2
    remove = 3
    psk = 4
    reinit = 5
    external_init = 6
    group_context_extensions = 7


class PSKType(IntEnum):
    """``PSKType`` (§8.4)."""

    external = 1
    resumption = 2


class ResumptionPSKUsage(IntEnum):
    """``ResumptionPSKUsage`` (§8.4)."""

    application = 1
    reinit = 2
    branch = 3


@dataclass(frozen=True, kw_only=True)
class PreSharedKeyID(Struct):
    """``PreSharedKeyID``: ``psk_id`` for external PSKs; ``usage``, ``psk_group_id``, ``psk_epoch`` for
    resumption PSKs; then ``psk_nonce``. It identifies a PSK; the PSK value itself never appears here."""

    psktype: Annotated[int, U8]
    psk_id: Annotated[bytes | None, Opaque] = None
    usage: Annotated[int | None, OneOf(U8, ResumptionPSKUsage)] = None
    psk_group_id: Annotated[bytes | None, Opaque] = None
    psk_epoch: Annotated[int | None, U64] = None
    psk_nonce: Annotated[bytes, Opaque]

    __select__ = Select(
        "psktype",
        {
            PSKType.external: ("psk_id",),
            PSKType.resumption: ("usage", "psk_group_id", "psk_epoch"),
        },
    )

    @classmethod
    def external(cls, psk_id: bytes, psk_nonce: bytes) -> PreSharedKeyID:
        return cls(psktype=PSKType.external, psk_id=psk_id, psk_nonce=psk_nonce)

    @classmethod
    def resumption(cls, usage: int, psk_group_id: bytes, psk_epoch: int, psk_nonce: bytes) -> PreSharedKeyID:
        return cls(
            psktype=PSKType.resumption,
            usage=usage,
            psk_group_id=psk_group_id,
            psk_epoch=psk_epoch,
            psk_nonce=psk_nonce,
        )


@dataclass(frozen=True)
class Add(Struct):
    """``struct { KeyPackage key_package; } Add;``"""

    proposal_type: ClassVar[int] = ProposalType.add
    key_package: Annotated[KeyPackage, KeyPackage]


@dataclass(frozen=True)
class Update(Struct):
    """``struct { LeafNode leaf_node; } Update;``"""

    proposal_type: ClassVar[int] = ProposalType.update
    leaf_node: Annotated[LeafNode, LeafNode]


@dataclass(frozen=True)
class Remove(Struct):
    """``struct { uint32 removed; } Remove;`` — the leaf index to remove."""

    proposal_type: ClassVar[int] = ProposalType.remove
    removed: Annotated[int, U32]


@dataclass(frozen=True)
class PreSharedKey(Struct):
    """``struct { PreSharedKeyID psk; } PreSharedKey;``"""

    proposal_type: ClassVar[int] = ProposalType.psk
    psk: Annotated[PreSharedKeyID, PreSharedKeyID]


@dataclass(frozen=True)
class ReInit(Struct):
    """``ReInit``: the parameters of the group that will replace this one."""

    proposal_type: ClassVar[int] = ProposalType.reinit
    group_id: Annotated[bytes, Opaque]
    version: Annotated[int, U16]
    cipher_suite: Annotated[int, U16]
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]


@dataclass(frozen=True)
class ExternalInit(Struct):
    """``struct { opaque kem_output<V>; } ExternalInit;``"""

    proposal_type: ClassVar[int] = ProposalType.external_init
    kem_output: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class GroupContextExtensions(Struct):
    """``struct { Extension extensions<V>; } GroupContextExtensions;``"""

    proposal_type: ClassVar[int] = ProposalType.group_context_extensions
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]


ProposalBody: TypeAlias = (
    Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions
)

#: The :class:`Proposal` field holding each proposal type's body.
_BODY_FIELD: dict[int, str] = {t: t.name for t in ProposalType}


@dataclass(frozen=True, kw_only=True)
class Proposal(Struct):
    """``Proposal``: ``proposal_type`` then the body, held in the field named after the proposal type."""

    proposal_type: Annotated[int, U16]
    add: Annotated[Add | None, Add] = None
    update: Annotated[Update | None, Update] = None
    remove: Annotated[Remove | None, Remove] = None
    psk: Annotated[PreSharedKey | None, PreSharedKey] = None
    reinit: Annotated[ReInit | None, ReInit] = None
    external_init: Annotated[ExternalInit | None, ExternalInit] = None
    group_context_extensions: Annotated[GroupContextExtensions | None, GroupContextExtensions] = None

    __select__ = Select("proposal_type", {t: (name,) for t, name in _BODY_FIELD.items()})

    @classmethod
    def of(cls, body: ProposalBody) -> Proposal:
        """Wrap a proposal body, setting ``proposal_type`` from it."""
        arm: dict[str, Any] = {_BODY_FIELD[body.proposal_type]: body}
        return cls(proposal_type=body.proposal_type, **arm)

    @property
    def body(self) -> ProposalBody:
        return cast(ProposalBody, getattr(self, _BODY_FIELD[self.proposal_type]))


class ProposalOrRefType(IntEnum):
    """``ProposalOrRefType`` (§12.4)."""

    proposal = 1
    reference = 2


@dataclass(frozen=True, kw_only=True)
class ProposalOrRef(Struct):
    """``ProposalOrRef``: an inline ``proposal`` or a ``reference`` (a ProposalRef hash, ``opaque<V>``)."""

    type: Annotated[int, U8]
    proposal: Annotated[Proposal | None, Proposal] = None
    reference: Annotated[bytes | None, Opaque] = None

    __select__ = Select(
        "type", {ProposalOrRefType.proposal: ("proposal",), ProposalOrRefType.reference: ("reference",)}
    )

    @classmethod
    def of(cls, value: Proposal | bytes) -> ProposalOrRef:
        """An inline proposal, or a reference given as the ProposalRef bytes."""
        if isinstance(value, Proposal):
            return cls(type=ProposalOrRefType.proposal, proposal=value)
        return cls(type=ProposalOrRefType.reference, reference=value)
