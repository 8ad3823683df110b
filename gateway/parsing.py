"""Reading request bodies and path parameters strictly: every field checked for type and range.

The values :mod:`gateway.api` builds the operations' requests (:mod:`gateway.operation_requests`) from.

Anything wrong answers 400 ``invalid_request`` naming the field; MLS bytes that fail to decode answer 400
``decode_error`` later, from the library.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from typing import Any, cast

from mls import Credential, Extension, ExternalSender

from .errors import invalid
from .operation_requests import ExternalPsk, GroupSettings, HandshakeName, ProposalKind, ResumptionPsk

MAX_LIST = 1000


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise invalid("the body is not valid JSON (or nests too deeply)") from None
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    return data


#: Unicode categories a name or label may not hold: controls, format characters (the bidi overrides and
#: isolates U+202A–U+202E, U+2066–U+2069, zero-width characters), surrogates, line/paragraph separators.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Format characters that are part of writing, not of hiding: ZWNJ and ZWJ (Indic and Arabic scripts,
#: emoji sequences).
JOINERS = frozenset({"\u200c", "\u200d"})


def b64decode(value: Any, field: str) -> bytes:
    """Standard base64, canonical (RFC 4648 §4 and §3.5): the padding it needs and no more, zero pad
    bits, no whitespace or other characters — exactly what encoding the bytes gives back."""
    if not isinstance(value, str):
        raise invalid(f"{field} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise invalid(f"{field} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise invalid(f"{field} is not canonical base64 (padding exactly as needed, zero pad bits)")
    return raw


def check_name(value: str, field: str) -> str:
    """A name or label people read: no control, format (bidi) or separator characters, and not only
    whitespace (so that it cannot hide or reorder what is displayed next to it)."""
    if not value.strip():
        raise invalid(f"{field} must not be only whitespace")
    if any(unicodedata.category(c) in FORBIDDEN_CATEGORIES and c not in JOINERS for c in value):
        raise invalid(f"{field} must not contain control, bidi-format or separator characters")
    return value


def group_id_from_path(value: str) -> bytes:
    """A group id in a URL path: base64url without padding (RFC 4648 §5)."""
    try:
        padded = value + "=" * (-len(value) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise invalid("the group id in the path is not base64url") from None
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != value or not raw:
        raise invalid("the group id in the path is not canonical base64url without padding")
    return raw


class Body:
    """Typed access to the fields of a JSON object body."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def text(self, name: str, *, max_len: int = 256) -> str:
        v = self.data.get(name)
        if not isinstance(v, str) or not v or len(v) > max_len:
            raise invalid(f"{name} must be a non-empty string of at most {max_len} characters")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid(f"{name} must be valid Unicode (no lone surrogates)") from None
        return v

    def name(self, name: str, *, max_len: int = 256) -> str:
        """A non-empty text field that names something (:func:`check_name`)."""
        return check_name(self.text(name, max_len=max_len), name)

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int:
        v = self.data.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise invalid(f"{name} must be an integer from {lo} to {hi}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.data.get(name, default)
        if not isinstance(v, bool):
            raise invalid(f"{name} must be true or false")
        return v

    def b64(self, name: str) -> bytes:
        if name not in self.data:
            raise invalid(f"{name} is required")
        return b64decode(self.data[name], name)

    def optional_b64(self, name: str) -> bytes | None:
        return None if self.data.get(name) is None else b64decode(self.data[name], name)

    def items(self, name: str) -> list[Any]:
        v = self.data.get(name, [])
        if not isinstance(v, list) or len(v) > MAX_LIST:
            raise invalid(f"{name} must be a list of at most {MAX_LIST} items")
        return v

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        v = self.data.get(name, default)
        if v not in options:
            raise invalid(f"{name} must be one of {', '.join(options)}")
        return str(v)

    def object(self, name: str) -> Body:
        v = self.data.get(name)
        if not isinstance(v, dict):
            raise invalid(f"{name} must be an object")
        return Body(v)


#: The bounds of a member's group settings (``config`` of create and join): generous, but bounded so a
#: caller cannot make a receiver keep (or derive) unbounded numbers of keys.
SETTING_BOUNDS = {"out_of_order_tolerance": 1000, "max_forward_distance": 100_000, "past_epochs": 64}


def group_settings(body: Body) -> GroupSettings:
    """The optional ``config`` object of a create or join: each setting an integer within its bound."""
    if not body.has("config"):
        return GroupSettings()
    config = body.object("config")
    values = {
        name: config.integer(name, None, 0, bound) if config.has(name) else None
        for name, bound in SETTING_BOUNDS.items()
    }
    return GroupSettings(**values)


def tree_placement(value: str) -> bool:
    """``?ratchet_tree=extension|separate`` of ``GET …/group-info``: whether the GroupInfo carries the tree in
    its ``ratchet_tree`` extension (RFC 9420 §12.4.3.3; for joiners that take no separate tree)."""
    if value not in ("extension", "separate"):
        raise invalid("ratchet_tree must be 'extension' or 'separate'")
    return value == "extension"


def credential(value: Any, field: str = "credential") -> Credential:
    if not isinstance(value, dict) or value.get("type") != "basic":
        raise invalid(f'{field} must be {{"type": "basic", "identity": base64}}')
    identity = b64decode(value.get("identity"), f"{field}.identity")
    if not identity:
        raise invalid(f"{field}.identity must not be empty")
    return Credential.basic(identity)


def extensions(items: list[Any], field: str = "extensions") -> list[Extension]:
    out = []
    for i, item in enumerate(items):
        b = Body(item) if isinstance(item, dict) else None
        if b is None:
            raise invalid(f"{field}[{i}] must be an object")
        out.append(
            Extension(b.integer("type", None, 0, 0xFFFF), b64decode(item.get("data"), f"{field}[{i}].data"))
        )
    return out


def external_senders(items: list[Any]) -> list[ExternalSender]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid(f"external_senders[{i}] must be an object")
        key = b64decode(item.get("signature_key"), f"external_senders[{i}].signature_key")
        out.append(
            ExternalSender(key, credential(item.get("credential"), f"external_senders[{i}].credential"))
        )
    return out


def _objects(body: Body, name: str) -> list[Body]:
    """A list field whose items must be JSON objects."""
    out = []
    for i, item in enumerate(body.items(name)):
        if not isinstance(item, dict):
            raise invalid(f"{name}[{i}] must be an object")
        out.append(Body(item))
    return out


def psk_secrets(body: Body) -> list[tuple[bytes, bytes]]:
    """``psks: [{psk_id, secret}]`` of a join: external PSKs with their secrets."""
    return [
        (
            b64decode(item.data.get("psk_id"), f"psks[{i}].psk_id"),
            b64decode(item.data.get("secret"), f"psks[{i}].secret"),
        )
        for i, item in enumerate(_objects(body, "psks"))
    ]


def commit_psks(body: Body) -> tuple[list[ExternalPsk], list[ResumptionPsk]]:
    """``psks`` of a commit: external ``{psk_id, secret?}`` and ``{resumption: {group_id, epoch}}``."""
    external: list[ExternalPsk] = []
    resumption: list[ResumptionPsk] = []
    for item in _objects(body, "psks"):
        if "resumption" in item.data:
            res = item.object("resumption")
            resumption.append(ResumptionPsk(res.b64("group_id"), res.integer("epoch", None, 0, 2**63 - 1)))
        else:
            external.append(ExternalPsk(item.b64("psk_id"), item.optional_b64("secret")))
    return external, resumption


def proposal_kind(body: Body) -> ProposalKind:
    """``type`` of a proposal request."""
    return cast(
        ProposalKind, body.choice("type", "", ("add", "remove", "update", "psk", "group_context_extensions"))
    )


def handshake_name(body: Body) -> HandshakeName:
    """``handshake``: ``"public"`` (default) or ``"private"``."""
    return cast(HandshakeName, body.choice("handshake", "public", ("public", "private")))


def leaf_index(body: Body, name: str) -> int:
    """A leaf index (uint32, RFC 9420 §7.8)."""
    return body.integer(name, None, 0, 2**32 - 1)


def application_messages(body: Body) -> tuple[list[tuple[bytes, bytes]], bool]:
    """``{data, authenticated_data?}`` or ``{messages: [...]}``: (data, aad) items, and whether batched."""
    batch = "messages" in body.data
    items = _objects(body, "messages") if batch else [body]
    if not items:
        raise invalid("messages must not be empty")
    return [(b.b64("data"), b.optional_b64("authenticated_data") or b"") for b in items], batch


def incoming_messages(body: Body) -> tuple[list[bytes], bool]:
    """``{message}`` or ``{messages: [...]}``: the MLS messages to process, and whether batched."""
    if "messages" not in body.data:
        return [body.b64("message")], False
    messages = [b64decode(v, f"messages[{n}]") for n, v in enumerate(body.items("messages"))]
    if not messages:
        raise invalid("messages must not be empty")
    return messages, True
