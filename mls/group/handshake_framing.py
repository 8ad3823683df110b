"""How a member frames its handshake messages (RFC 9420 §6): proposals and commits go out either as a
PublicMessage (signed, with a membership tag, readable by the delivery service, §6.2) or as a
PrivateMessage (encrypted with the sender's handshake ratchet, §6.3)."""

from __future__ import annotations

from enum import StrEnum

from mls.wire.framing import WireFormat


class HandshakeFraming(StrEnum):
    """The wire format of this member's proposals and commits: ``public`` or ``private`` (§6)."""

    public = "public"
    private = "private"

    @property
    def wire_format(self) -> WireFormat:
        """``mls_public_message`` or ``mls_private_message`` (§6)."""
        if self is HandshakeFraming.public:
            return WireFormat.mls_public_message
        return WireFormat.mls_private_message


__all__ = ["HandshakeFraming"]
