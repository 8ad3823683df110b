"""``messages`` vectors: every wire struct of RFC 9420 decodes and re-encodes byte for byte.

Each case holds one encoding per field: MLSMessages (Welcome, GroupInfo, KeyPackage, PublicMessage with
each content type, PrivateMessage), a ``ratchet_tree`` (§12.4.3.3), GroupSecrets, Commit and the bare
bodies of the seven proposal types (§12.1).
"""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.tree.nodes import RatchetTreeExtension
from mls.wire.commit import Commit
from mls.wire.framing import ContentType, MLSMessage, WireFormat
from mls.wire.proposals import Add, ExternalInit, GroupContextExtensions, PreSharedKey, ReInit, Remove, Update
from mls.wire.struct import Struct
from mls.wire.welcome import GroupSecrets

#: The struct each field of a case decodes as.
_STRUCTS: dict[str, type[Struct]] = {
    "mls_welcome": MLSMessage,
    "mls_group_info": MLSMessage,
    "mls_key_package": MLSMessage,
    "ratchet_tree": RatchetTreeExtension,
    "group_secrets": GroupSecrets,
    "add_proposal": Add,
    "update_proposal": Update,
    "remove_proposal": Remove,
    "pre_shared_key_proposal": PreSharedKey,
    "re_init_proposal": ReInit,
    "external_init_proposal": ExternalInit,
    "group_context_extensions_proposal": GroupContextExtensions,
    "commit": Commit,
    "public_message_application": MLSMessage,
    "public_message_proposal": MLSMessage,
    "public_message_commit": MLSMessage,
    "private_message": MLSMessage,
}

#: The wire format each MLSMessage field must have and, for a PublicMessage, its content type.
_MESSAGE_KINDS: dict[str, tuple[WireFormat, ContentType | None]] = {
    "mls_welcome": (WireFormat.mls_welcome, None),
    "mls_group_info": (WireFormat.mls_group_info, None),
    "mls_key_package": (WireFormat.mls_key_package, None),
    "public_message_application": (WireFormat.mls_public_message, ContentType.application),
    "public_message_proposal": (WireFormat.mls_public_message, ContentType.proposal),
    "public_message_commit": (WireFormat.mls_public_message, ContentType.commit),
    "private_message": (WireFormat.mls_private_message, None),
}


def _check_message_kind(name: str, message: MLSMessage) -> None:
    wire_format, content_type = _MESSAGE_KINDS[name]
    expect_equal(f"{name} wire_format", message.wire_format, wire_format)
    if content_type is not None:
        assert message.public_message is not None
        expect_equal(f"{name} content_type", message.public_message.content.content_type, content_type)


@vector_kind("messages", keys=list(_STRUCTS))
def run(case: dict[str, Any]) -> None:
    for name, struct in _STRUCTS.items():
        data = h(case[name])
        value = struct.from_bytes(data)
        expect_equal(f"{name} re-encoded", value.to_bytes(), data)
        if isinstance(value, MLSMessage):
            _check_message_kind(name, value)
