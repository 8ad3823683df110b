"""Message framing (RFC 9420 §6): senders, framed content, its authentication data and to-be-signed
form (§6.1), PublicMessage (§6.2), PrivateMessage with its plaintext, sender data and AADs (§6.3), and
the MLSMessage envelope (§6).

``FramedContentAuthData`` and ``PrivateMessageContent`` are not self-describing: their layout depends
on a content type carried elsewhere, so their ``decode``/``from_bytes`` take it as an argument.
Unknown version, wire format, sender type and content type values cannot be parsed and raise
:class:`~mls.errors.DecodeError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, TypeAlias, cast

from mls.tree.leaf_node import MLS10, ProtocolVersion
from mls.wire.codec import Reader, Writer, decode_exact
from mls.wire.commit import Commit
from mls.wire.group_context import GroupContext
from mls.wire.group_info import GroupInfo
from mls.wire.key_package import KeyPackage
from mls.wire.proposals import Proposal
from mls.wire.struct import U8, U16, U32, U64, Codec, Fixed, OneOf, Opaque, Select, Struct, as_codec
from mls.wire.welcome import Welcome


class WireFormat(IntEnum):
    """Values of the "MLS Wire Formats" registry defined by RFC 9420 (§17.2)."""

    mls_public_message = 1
    mls_private_message = 2
    mls_welcome = 3
    mls_group_info = 4
    mls_key_package = 5


class ContentType(IntEnum):
    """``ContentType`` (§6)."""

    application = 1
    proposal = 2
    commit = 3


class SenderType(IntEnum):
    """``SenderType`` (§6)."""

    member = 1
    external = 2
    new_member_proposal = 3
    new_member_commit = 4


#: The codec of a ``ContentType`` field that no ``select`` depends on.
CONTENT_TYPE: Codec[int] = OneOf(U8, ContentType)


@dataclass(frozen=True, kw_only=True)
class Sender(Struct):
    """``Sender``: ``leaf_index`` for a member, ``sender_index`` (into external_senders) for external."""

    sender_type: Annotated[int, U8]
    leaf_index: Annotated[int | None, U32] = None
    sender_index: Annotated[int | None, U32] = None

    __select__ = Select(
        "sender_type",
        {
            SenderType.member: ("leaf_index",),
            SenderType.external: ("sender_index",),
            SenderType.new_member_proposal: (),
            SenderType.new_member_commit: (),
        },
    )

    @classmethod
    def member(cls, leaf_index: int) -> Sender:
        return cls(sender_type=SenderType.member, leaf_index=leaf_index)

    @classmethod
    def external(cls, sender_index: int) -> Sender:
        return cls(sender_type=SenderType.external, sender_index=sender_index)


#: ``select (content_type)`` of FramedContent and PrivateMessageContent: the field and codec per type.
_CONTENT_ARMS: dict[int, tuple[str, Codec[Any]]] = {
    ContentType.application: ("application_data", Opaque),
    ContentType.proposal: ("proposal", as_codec(Proposal)),
    ContentType.commit: ("commit", as_codec(Commit)),
}
_CONTENT_SELECT = Select("content_type", {t: (name,) for t, (name, _) in _CONTENT_ARMS.items()})


@dataclass(frozen=True, kw_only=True)
class FramedContent(Struct):
    """``FramedContent``: exactly one of ``application_data``, ``proposal``, ``commit`` is set."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    sender: Annotated[Sender, Sender]
    authenticated_data: Annotated[bytes, Opaque]
    content_type: Annotated[int, U8]
    application_data: Annotated[bytes | None, Opaque] = None
    proposal: Annotated[Proposal | None, Proposal] = None
    commit: Annotated[Commit | None, Commit] = None

    __select__ = _CONTENT_SELECT


def _has_confirmation_tag(content_type: int) -> bool:
    if content_type not in _CONTENT_ARMS:
        raise ValueError(f"unknown content type {content_type}")
    return content_type == ContentType.commit


@dataclass(frozen=True)
class FramedContentAuthData:
    """``FramedContentAuthData``: ``confirmation_tag`` (a MAC) is present iff the content is a commit."""

    signature: bytes
    confirmation_tag: bytes | None = None

    def encode(self, w: Writer, content_type: int) -> None:
        if (self.confirmation_tag is not None) != _has_confirmation_tag(content_type):
            raise ValueError("confirmation_tag must be present exactly when the content type is commit")
        w.opaque(self.signature)
        if self.confirmation_tag is not None:
            w.opaque(self.confirmation_tag)

    @classmethod
    def decode(cls, r: Reader, content_type: int) -> FramedContentAuthData:
        with r.scope(cls.__name__):
            signature = r.opaque()
            tag = r.opaque() if _has_confirmation_tag(content_type) else None
        return cls(signature, tag)

    def to_bytes(self, content_type: int) -> bytes:
        w = Writer()
        self.encode(w, content_type)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, content_type: int) -> FramedContentAuthData:
        return decode_exact(data, lambda r: cls.decode(r, content_type), cls.__name__)


def _write_framed(w: Writer, content: FramedContent, auth: FramedContentAuthData) -> None:
    content.encode(w)
    auth.encode(w, content.content_type)


def _read_framed(r: Reader) -> tuple[FramedContent, FramedContentAuthData]:
    content = FramedContent.decode(r)
    return content, FramedContentAuthData.decode(r, content.content_type)


def framed_content_tbs(wire_format: int, content: FramedContent, context: GroupContext | None) -> bytes:
    """The ``FramedContentTBS`` encoding (§6.1).

    ``context`` is the current GroupContext, required exactly when the sender is a ``member`` or a
    ``new_member_commit``.
    """
    if (context is not None) != (
        content.sender.sender_type in (SenderType.member, SenderType.new_member_commit)
    ):
        raise ValueError(
            "FramedContentTBS has a GroupContext exactly for member and new_member_commit senders"
        )
    w = Writer()
    MLS10.write(w, ProtocolVersion.mls10)
    w.u16(wire_format)
    content.encode(w)
    if context is not None:
        context.encode(w)
    return w.getvalue()


@dataclass(frozen=True)
class AuthenticatedContent(Struct):
    """``struct { WireFormat wire_format; FramedContent content; FramedContentAuthData auth; }``"""

    wire_format: int
    content: FramedContent
    auth: FramedContentAuthData

    def encode(self, w: Writer) -> None:
        w.u16(self.wire_format)
        _write_framed(w, self.content, self.auth)

    @classmethod
    def decode(cls, r: Reader) -> AuthenticatedContent:
        with r.scope(cls.__name__):
            wire_format = r.u16()
            content, auth = _read_framed(r)
        return cls(wire_format, content, auth)

    def tbs(self, context: GroupContext | None) -> bytes:
        """The ``FramedContentTBS`` this content's signature covers (see :func:`framed_content_tbs`)."""
        return framed_content_tbs(self.wire_format, self.content, context)

    def tbm(self, context: GroupContext | None) -> bytes:
        """The ``AuthenticatedContentTBM`` encoding (§6.2) over which a membership tag is computed."""
        return self.tbs(context) + self.auth.to_bytes(self.content.content_type)


@dataclass(frozen=True)
class PublicMessage(Struct):
    """``PublicMessage``; ``membership_tag`` (a MAC) is present iff the sender is a member."""

    content: FramedContent
    auth: FramedContentAuthData
    membership_tag: bytes | None = None

    def __post_init__(self) -> None:
        if (self.membership_tag is not None) != (self.content.sender.sender_type == SenderType.member):
            raise ValueError("membership_tag must be present exactly when the sender is a member")

    def encode(self, w: Writer) -> None:
        _write_framed(w, self.content, self.auth)
        if self.membership_tag is not None:
            w.opaque(self.membership_tag)

    @classmethod
    def decode(cls, r: Reader) -> PublicMessage:
        with r.scope(cls.__name__):
            content, auth = _read_framed(r)
            tag = r.opaque() if content.sender.sender_type == SenderType.member else None
        return cls(content, auth, tag)


@dataclass(frozen=True)
class PrivateMessage(Struct):
    """``PrivateMessage``: the encrypted form of a FramedContent and its auth data (§6.3)."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    content_type: Annotated[int, CONTENT_TYPE]
    authenticated_data: Annotated[bytes, Opaque]
    encrypted_sender_data: Annotated[bytes, Opaque]
    ciphertext: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class SenderData(Struct):
    """``struct { uint32 leaf_index; uint32 generation; opaque reuse_guard[4]; } SenderData;`` (§6.3.2)."""

    leaf_index: Annotated[int, U32]
    generation: Annotated[int, U32]
    reuse_guard: Annotated[bytes, Fixed(4)]


@dataclass(frozen=True)
class SenderDataAAD(Struct):
    """``SenderDataAAD`` (§6.3.2): the first three fields of the PrivateMessage."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    content_type: Annotated[int, CONTENT_TYPE]


@dataclass(frozen=True)
class PrivateContentAAD(Struct):
    """``PrivateContentAAD`` (§6.3.1)."""

    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    content_type: Annotated[int, CONTENT_TYPE]
    authenticated_data: Annotated[bytes, Opaque]


@dataclass(frozen=True, kw_only=True)
class PrivateMessageContent:
    """``PrivateMessageContent`` (§6.3.1): the plaintext of ``PrivateMessage.ciphertext``.

    ``content_type`` is not encoded (it is the PrivateMessage's); it selects which of
    ``application_data``, ``proposal``, ``commit`` is set. ``length_of_padding`` zero bytes follow the
    auth data.
    """

    content_type: int
    application_data: bytes | None = None
    proposal: Proposal | None = None
    commit: Commit | None = None
    auth: FramedContentAuthData
    length_of_padding: int = 0

    def __post_init__(self) -> None:
        _CONTENT_SELECT.check(self)
        if self.length_of_padding < 0:
            raise ValueError("length_of_padding must not be negative")

    def to_bytes(self) -> bytes:
        w = Writer()
        name, codec = _CONTENT_ARMS[self.content_type]
        codec.write(w, getattr(self, name))
        self.auth.encode(w, self.content_type)
        w.write(bytes(self.length_of_padding))
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, content_type: int) -> PrivateMessageContent:
        """Decode a plaintext of ``content_type``; non-zero padding is a :class:`DecodeError` (§6.3.1)."""
        r = Reader(data, cls.__name__)
        if content_type not in _CONTENT_ARMS:
            raise r.error(f"unknown content type {content_type}")
        name, codec = _CONTENT_ARMS[content_type]
        with r.scope(name):
            body = codec.read(r)
        auth = FramedContentAuthData.decode(r, content_type)
        at = r.pos
        padding = r.read(r.remaining())
        nonzero = len(padding) - len(padding.lstrip(b"\0"))
        if nonzero < len(padding):
            raise r.error("padding byte is not zero", at + nonzero)
        selected: dict[str, Any] = {name: body}
        return cls(content_type=content_type, auth=auth, length_of_padding=len(padding), **selected)


MLSMessageBody: TypeAlias = PublicMessage | PrivateMessage | Welcome | GroupInfo | KeyPackage

#: ``select (wire_format)`` of MLSMessage: the field holding each wire format's body, and its type.
_MESSAGE_ARMS: dict[int, tuple[str, type[Struct]]] = {
    WireFormat.mls_public_message: ("public_message", PublicMessage),
    WireFormat.mls_private_message: ("private_message", PrivateMessage),
    WireFormat.mls_welcome: ("welcome", Welcome),
    WireFormat.mls_group_info: ("group_info", GroupInfo),
    WireFormat.mls_key_package: ("key_package", KeyPackage),
}


@dataclass(frozen=True, kw_only=True)
class MLSMessage(Struct):
    """``MLSMessage``: ``version`` (always mls10), ``wire_format``, and the one body it selects."""

    version: Annotated[int, MLS10] = ProtocolVersion.mls10
    wire_format: Annotated[int, U16]
    public_message: Annotated[PublicMessage | None, PublicMessage] = None
    private_message: Annotated[PrivateMessage | None, PrivateMessage] = None
    welcome: Annotated[Welcome | None, Welcome] = None
    group_info: Annotated[GroupInfo | None, GroupInfo] = None
    key_package: Annotated[KeyPackage | None, KeyPackage] = None

    __select__ = Select("wire_format", {t: (name,) for t, (name, _) in _MESSAGE_ARMS.items()})

    @classmethod
    def of(cls, body: MLSMessageBody) -> MLSMessage:
        """Wrap a message body, setting ``wire_format`` from its type."""
        wire_format, name = next((t, n) for t, (n, c) in _MESSAGE_ARMS.items() if type(body) is c)
        arm: dict[str, Any] = {name: body}
        return cls(wire_format=wire_format, **arm)

    @property
    def body(self) -> MLSMessageBody:
        return cast(MLSMessageBody, getattr(self, _MESSAGE_ARMS[self.wire_format][0]))
