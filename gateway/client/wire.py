"""What goes over the wire (docs/api.md, "Conventions" and "Errors"): base64 fields, group ids in paths,
answers, problem documents as exceptions, and the marking of client methods with their route."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

JSON = dict[str, Any]
#: Bytes, or a field already in base64 as the API answers it (re-encoded canonically before sending).
Binary = bytes | str
#: A group id: its bytes, or its path segment (base64url without padding, as ``gid_segment`` makes it).
GroupId = bytes | str

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

#: The members of an RFC 9457 problem document itself; anything else is an extra member.
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "code", "detail", "instance"})


# ---- base64 as the contract spells it (docs/api.md, "Conventions") ----------------------------------------


def b64(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4): how every binary field of a body is written."""
    return base64.b64encode(data).decode("ascii")


def unb64(value: str) -> bytes:
    """Decode a binary field of an answer (strict: only the standard alphabet, correct padding)."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not standard base64: {e}") from None


def binary(value: Binary) -> str:
    """A binary field for a request body: bytes encoded, a base64 string checked and made canonical."""
    return b64(value if isinstance(value, bytes) else unb64(value))


def gid_segment(group_id: GroupId) -> str:
    """A group id as a URL path segment: base64url without padding (RFC 4648 §5). ``group_id`` is the id's
    bytes, or a segment already (a string with ``+``, ``/`` or ``=`` is standard base64: decode it first)."""
    if isinstance(group_id, bytes):
        return base64.urlsafe_b64encode(group_id).decode("ascii").rstrip("=")
    if any(ch in group_id for ch in "+/="):
        raise ValueError("a group id string is a path segment (base64url, no padding); pass bytes instead")
    return group_id


def group_id_bytes(group_id_b64: str) -> bytes:
    """The ``group_id`` field of an answer (standard base64) as bytes."""
    return unb64(group_id_b64)


def extension(ext_type: int, data: bytes) -> JSON:
    """An MLS extension ``{type, data}`` of ``extensions`` and ``group_context_extensions``."""
    return {"type": ext_type, "data": b64(data)}


def external_psk(psk_id: bytes, secret: bytes | None = None) -> JSON:
    """An external PSK of ``psks`` (RFC 9420 §8.4); ``secret`` when the member does not hold it yet."""
    return {"psk_id": b64(psk_id)} | ({} if secret is None else {"secret": b64(secret)})


def resumption_psk(group_id: bytes, epoch: int) -> JSON:
    """A resumption PSK of a commit's ``psks`` (RFC 9420 §8.6)."""
    return {"resumption": {"group_id": b64(group_id), "epoch": epoch}}


def basic_credential(identity: bytes) -> JSON:
    """A basic credential (RFC 9420 §5.3) as ``credential`` fields take it."""
    return {"type": "basic", "identity": b64(identity)}


# ---- answers and errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiResponse:
    """One answer, whatever its status: ``body`` is parsed JSON for a JSON content type, else text."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased
    raw: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        """The problem ``code`` of an error answer."""
        return self.body.get("code") if isinstance(self.body, dict) else None

    def result(self) -> Any:
        """The body of a success; a failure raises :class:`GatewayError`."""
        if not self.ok:
            raise GatewayError.from_response(self)
        return self.body


class GatewayError(Exception):
    """A failure answer, with its problem document (docs/api.md, "Errors").

    ``problem`` is the whole document; ``extra`` its members beyond RFC 9457's (``current_epoch``,
    ``seq``, ``rule``, ...); ``request_id`` the ``X-Request-Id`` to find it in the server log."""

    def __init__(self, status: int, problem: Mapping[str, Any], request_id: str | None = None) -> None:
        self.status = status
        self.problem: JSON = dict(problem)
        self.code: str | None = str_or_none(problem.get("code"))
        self.title: str | None = str_or_none(problem.get("title"))
        self.detail: str | None = str_or_none(problem.get("detail"))
        self.request_id = request_id or str_or_none(problem.get("instance"))
        super().__init__(f"{status} {self.code or self.title or 'error'}: {self.detail or ''}".rstrip(": "))

    @classmethod
    def from_response(cls, response: ApiResponse) -> GatewayError:
        body = response.body if isinstance(response.body, dict) else {"detail": str(response.body or "")}
        return cls(response.status, body, response.headers.get("x-request-id"))

    @property
    def extra(self) -> JSON:
        return {k: v for k, v in self.problem.items() if k not in PROBLEM_MEMBERS}

    @property
    def current_epoch(self) -> int | None:
        """The group's epoch of a stale-epoch ``409 conflict``."""
        value = self.problem.get("current_epoch")
        return value if isinstance(value, int) else None

    @property
    def rule(self) -> str | None:
        """The RFC 9420 rule of a ``422 validation_failed``."""
        return str_or_none(self.problem.get("rule"))


class GatewayConnectionError(ConnectionError):
    """No answer: the connection failed or was closed before the response (the request may have run;
    repeat a ``POST`` with the same ``idempotency_key`` to find out)."""


class BoxClosed(Exception):
    """A mailbox or inbox WebSocket was closed; ``code`` is its close code (docs/api.md table)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"WebSocket closed ({code}): {reason}")
        self.code = code
        self.reason = reason


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def drop_none(**fields: Any) -> JSON:
    return {k: v for k, v in fields.items() if v is not None}


def fill_path(template: str, **params: str) -> str:
    """``template`` with its ``{name}`` parameters filled in, each quoted as one path segment."""
    return template.format(**{k: quote(v, safe="") for k, v in params.items()})


def route(method: str, path: str) -> Callable[[_F], _F]:
    """Marks a client method as the one for the route ``method path`` of :data:`gateway.api.ROUTES`."""

    def mark(fn: _F) -> _F:
        fn.gateway_route = (method, path)  # type: ignore[attr-defined]
        return fn

    return mark


def json_object(result: Any, what: str) -> JSON:
    """A success body that must be a JSON object (every JSON answer of the API is one)."""
    if not isinstance(result, dict):
        raise GatewayError(502, {"title": "Bad answer", "detail": f"{what}: not a JSON object"})
    return result


def opt_binary(value: Binary | None) -> str | None:
    return None if value is None else binary(value)


def as_list(values: Sequence[_T] | None) -> list[_T] | None:
    return None if values is None else list(values)


def group_path(identity_id: str, gid: GroupId | None = None, tail: str = "") -> str:
    """The path of an identity's groups, of one of them (``gid``), or of a route under it (``tail``)."""
    base = fill_path("/v1/identities/{identity_id}/groups", identity_id=identity_id)
    return base + ("" if gid is None else "/" + gid_segment(gid)) + tail
