"""Extensions and the extension payloads defined by RFC 9420 (§13, §13.4, §5.3.3, §11.1, §12.1.8.1,
§12.4.3.2).

An :class:`Extension` is a type and opaque data; unknown types decode fine and must be ignored by the
caller where §13.4 says so. The typed payloads (:class:`ApplicationId`, :class:`RequiredCapabilities`,
:class:`ExternalPub`, :class:`ExternalSenders`) are :class:`ExtensionPayload` structs whose encoding is
the ``extension_data``; the ``ratchet_tree`` payload (§12.4.3.3) is :class:`mls.tree.nodes.RatchetTree`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, ClassVar, TypeVar

from mls.credentials.credential import Credential
from mls.errors import DecodeError, ValidationError
from mls.wire.struct import U16, Opaque, Struct, Vec


class ExtensionType(IntEnum):
    """Values of the "MLS Extension Types" registry defined by RFC 9420 (§17.3)."""

    application_id = 1
    ratchet_tree = 2
    required_capabilities = 3
    external_pub = 4
    external_senders = 5


@dataclass(frozen=True)
class Extension(Struct):
    """``struct { ExtensionType extension_type; opaque extension_data<V>; } Extension;``"""

    extension_type: Annotated[int, U16]
    extension_data: Annotated[bytes, Opaque]


class ExtensionPayload(Struct):
    """A struct carried as the ``extension_data`` of an extension of type ``extension_type``."""

    extension_type: ClassVar[int]

    def to_extension(self) -> Extension:
        return Extension(self.extension_type, self.to_bytes())


P = TypeVar("P", bound=ExtensionPayload)


@dataclass(frozen=True)
class ApplicationId(ExtensionPayload):
    """``opaque application_id<V>;`` (§5.3.3)."""

    extension_type = ExtensionType.application_id
    application_id: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class RequiredCapabilities(ExtensionPayload):
    """``RequiredCapabilities`` (§11.1)."""

    extension_type = ExtensionType.required_capabilities
    extension_types: Annotated[tuple[int, ...], Vec(U16)]
    proposal_types: Annotated[tuple[int, ...], Vec(U16)]
    credential_types: Annotated[tuple[int, ...], Vec(U16)]


@dataclass(frozen=True)
class ExternalPub(ExtensionPayload):
    """``struct { HPKEPublicKey external_pub; } ExternalPub;`` (§12.4.3.2)."""

    extension_type = ExtensionType.external_pub
    external_pub: Annotated[bytes, Opaque]


@dataclass(frozen=True)
class ExternalSender(Struct):
    """``struct { SignaturePublicKey signature_key; Credential credential; } ExternalSender;`` (§12.1.8.1)."""

    signature_key: Annotated[bytes, Opaque]
    credential: Annotated[Credential, Credential]


@dataclass(frozen=True)
class ExternalSenders(ExtensionPayload):
    """``ExternalSender external_senders<V>;`` (§12.1.8.1)."""

    extension_type = ExtensionType.external_senders
    external_senders: Annotated[tuple[ExternalSender, ...], Vec(ExternalSender)]


def find_extension(extensions: Iterable[Extension], extension_type: int) -> Extension | None:
    """The first extension of ``extension_type``, or ``None``."""
    return next((e for e in extensions if e.extension_type == extension_type), None)


def find_payload(extensions: Iterable[Extension], payload: type[P]) -> P | None:
    """The decoded payload of the extension of ``payload.extension_type``, or ``None`` if absent.

    Raises :class:`~mls.errors.DecodeError` if the extension data is not a valid ``payload``.
    """
    ext = find_extension(extensions, payload.extension_type)
    return None if ext is None else payload.from_bytes(ext.extension_data)


def check_unique_extension_types(extensions: Iterable[Extension]) -> None:
    """§13.4: a list of extensions MUST NOT have more than one extension of any given type."""
    seen: set[int] = set()
    for ext in extensions:
        if ext.extension_type in seen:
            raise ValidationError(
                "13.4/extension-type-unique", f"extension type {ext.extension_type} appears more than once"
            )
        seen.add(ext.extension_type)


def check_group_context_extensions(extensions: Iterable[Extension]) -> None:
    """GroupContext extensions are unique by type and the ones this implementation interprets decode
    (§13.4, §11.1, §12.1.8.1): a group must not adopt extensions it would fail on later."""
    check_unique_extension_types(extensions)
    for ext in extensions:
        payload = _GROUP_CONTEXT_PAYLOADS.get(ext.extension_type)
        if payload is None:
            continue
        try:
            payload.from_bytes(ext.extension_data)
        except DecodeError as e:
            raise ValidationError(
                "13.4/extension-payload-decodes", f"malformed {payload.__name__} extension: {e.reason}"
            ) from None


_GROUP_CONTEXT_PAYLOADS: dict[int, type[ExtensionPayload]] = {
    ExtensionType.required_capabilities: RequiredCapabilities,
    ExtensionType.external_senders: ExternalSenders,
}
