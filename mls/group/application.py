"""Sending application data (RFC 9420 §6.3): always as a PrivateMessage, never with proposals pending."""

from __future__ import annotations

from mls.errors import StateError
from mls.group.core import GroupCore
from mls.wire.framing import ContentType, WireFormat


def protect(group: GroupCore, data: bytes, authenticated_data: bytes = b"") -> bytes:
    """An application message as a PrivateMessage (§6.3)."""
    group.require_active()
    if group.state.proposals:
        raise StateError("RFC 9420 §12.4: a member with pending proposals must commit before sending data")
    content = group.framed_content(ContentType.application, authenticated_data, application_data=data)
    return group.protect_content(group.sign_content(content, WireFormat.mls_private_message))


__all__ = ["protect"]
