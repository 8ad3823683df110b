"""Inbox events at rest: the JSON of an event sealed under the wrap-key envelope.

An event may hold a decrypted application message, so it is stored sealed, with an AAD that binds it to
its identity, group and log position (a row moved to another inbox or position does not open). The
cursor is not part of the AAD (it is assigned by the store on insert) and is added when read.
"""

from __future__ import annotations

import json
from typing import Any

from hsm.envelope import Envelope

Json = dict[str, Any]


def _aad(identity_id: str, group_id: bytes, seq: int) -> bytes:
    ident = identity_id.encode()
    return b"mls-gateway inbox event|%d|" % len(ident) + ident + b"|%d|" % seq + group_id


def seal_event(envelope: Envelope, identity_id: str, group_id: bytes, seq: int, event: Json) -> bytes:
    """The sealed bytes of an event (``cursor`` is not stored in it)."""
    body = json.dumps(event, separators=(",", ":")).encode()
    return envelope.seal(body, _aad(identity_id, group_id, seq))


def open_event(envelope: Envelope, identity_id: str, group_id: bytes, seq: int, sealed: bytes) -> Json:
    """The event's JSON object (raises the envelope's error when the row was tampered with or moved)."""
    event: Json = json.loads(envelope.open(sealed, _aad(identity_id, group_id, seq)))
    return event


__all__ = ["open_event", "seal_event"]
