"""A typed Python client of the gateway's HTTP API (docs/api.md: api-v1.md and api-delivery.md).

:class:`GatewayClient` is asynchronous, over one ``aiohttp.ClientSession``; it has one method per route
of :data:`gateway.api.ROUTES` (each marked with the route it calls, see :func:`client_routes`;
``tests/gateway/test_client.py`` fails when a route has none). A method sends the contract's JSON —
``Content-Type: application/json``, binary fields as canonical padded base64 (RFC 4648 §4), a group id
in a path as base64url without padding (RFC 4648 §5) — and answers the response body (a ``dict``, or
``None`` for ``204``). A failure answer raises :class:`GatewayError`, which carries the problem document
(RFC 9457: ``status``, ``code``, ``detail`` and the extra members such as ``current_epoch``); a request
that got no answer raises :class:`GatewayConnectionError` (a :class:`ConnectionError`).

Every state-changing ``POST`` takes ``idempotency_key`` (the ``Idempotency-Key`` header of docs/api.md).
Mailboxes and inboxes are read page by page (:meth:`GatewayClient.read_mailbox`), followed with long
polls (:meth:`GatewayClient.follow_mailbox`), or over their WebSocket
(:meth:`GatewayClient.mailbox_socket`, a :class:`BoxSocket`).

:class:`BlockingClient` is the synchronous form: it runs a coroutine of a :class:`GatewayClient` on an
event loop of its own thread (:class:`LoopThread`) and waits for it::

    with BlockingClient("http://127.0.0.1:8080", token) as gw:
        alice = gw(lambda c: c.create_identity("alice"))
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

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
        self.code: str | None = _str_or_none(problem.get("code"))
        self.title: str | None = _str_or_none(problem.get("title"))
        self.detail: str | None = _str_or_none(problem.get("detail"))
        self.request_id = request_id or _str_or_none(problem.get("instance"))
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
        return _str_or_none(self.problem.get("rule"))


class GatewayConnectionError(ConnectionError):
    """No answer: the connection failed or was closed before the response (the request may have run;
    repeat a ``POST`` with the same ``idempotency_key`` to find out)."""


class BoxClosed(Exception):
    """A mailbox or inbox WebSocket was closed; ``code`` is its close code (docs/api.md table)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"WebSocket closed ({code}): {reason}")
        self.code = code
        self.reason = reason


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _drop_none(**fields: Any) -> JSON:
    return {k: v for k, v in fields.items() if v is not None}


def _path(template: str, **params: str) -> str:
    """``template`` with its ``{name}`` parameters filled in, each quoted as one path segment."""
    return template.format(**{k: quote(v, safe="") for k, v in params.items()})


# ---- routes ------------------------------------------------------------------------------------------------


def route(method: str, path: str) -> Callable[[_F], _F]:
    """Marks a client method as the one for the route ``method path`` of :data:`gateway.api.ROUTES`."""

    def mark(fn: _F) -> _F:
        fn.gateway_route = (method, path)  # type: ignore[attr-defined]
        return fn

    return mark


def client_routes() -> dict[tuple[str, str], list[str]]:
    """Every route the client calls, with the names of its methods that call it."""
    routes: dict[tuple[str, str], list[str]] = {}
    for name in dir(GatewayClient):
        marked = getattr(getattr(GatewayClient, name), "gateway_route", None)
        if marked is not None:
            routes.setdefault(marked, []).append(name)
    return routes


class BoxSocket:
    """A mailbox's or inbox's WebSocket (docs/api.md): the server pushes each item (event) in order as a
    JSON text frame; :meth:`ack` sends ``{"ack": cursor}``. Iterating ends when the server closes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def receive(self, timeout: float | None = None) -> JSON:
        """The next item; :class:`BoxClosed` once the socket is closed (``code`` says why)."""
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is aiohttp.WSMsgType.TEXT:
            item = json.loads(msg.data)
            if not isinstance(item, dict):
                raise ValueError("a WebSocket frame that is not a JSON object")
            return item
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            raise BoxClosed(self.ws.close_code, str(msg.extra or ""))
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise GatewayConnectionError(f"WebSocket error: {self.ws.exception()!r}")
        raise ValueError(f"unexpected WebSocket frame type {msg.type!r}")

    async def ack(self, cursor: str) -> None:
        """Acknowledge (delete) the items up to ``cursor``, inclusive."""
        await self.ws.send_json({"ack": cursor})

    async def close(self) -> None:
        await self.ws.close()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def __aiter__(self) -> AsyncIterator[JSON]:
        return self._items()

    async def _items(self) -> AsyncIterator[JSON]:
        while True:
            try:
                yield await self.receive()
            except BoxClosed:
                return


class GatewayClient:
    """The gateway's API over one ``aiohttp.ClientSession``, as one bearer ``token`` (or none).

    ``session`` is used as is (and not closed) when given; otherwise the client makes its own on first
    use (``keep_alive=False`` opens a connection per request) and :meth:`close` closes it. ``timeout`` is
    the most seconds a request may take; a long poll waits longer by its ``wait``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 60.0,
        keep_alive: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.keep_alive = keep_alive
        self._session = session
        self._owns_session = session is None

    # ---- plumbing ----------------------------------------------------------------------------------

    def with_token(self, token: str | None, *, timeout: float | None = None) -> GatewayClient:
        """The same gateway as another caller (the session is shared; the original keeps owning it).
        Call it on the event loop the client runs on (it may make the session)."""
        other = GatewayClient(self.base_url, token, session=self._session, timeout=timeout or self.timeout)
        if self._session is None:  # not made yet: make it now so both share it
            other._session = self._session = self._new_session()
        return other

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(force_close=not self.keep_alive, limit=256)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    def _live_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._new_session()
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float | None = None,
    ) -> ApiResponse:
        """One request, answered whatever its status. ``body`` is sent as JSON, or ``raw`` as the body
        bytes; either way as ``Content-Type: application/json``."""
        hdrs = self._headers(idempotency_key)
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        limit = aiohttp.ClientTimeout(total=timeout or self.timeout)
        try:
            async with self._live_session().request(
                method, self.base_url + path, data=data, headers=hdrs, params=params, timeout=limit
            ) as resp:
                payload = await resp.read()
                resp_headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
        except aiohttp.ClientError as e:
            raise GatewayConnectionError(f"{method} {path}: {e!r}") from e
        parsed: Any = None
        if payload and "json" in resp_headers.get("content-type", ""):
            parsed = json.loads(payload)
        elif payload:
            parsed = payload.decode("utf-8", "replace")
        return ApiResponse(status, parsed, resp_headers, payload)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request; the body of its success, or :class:`GatewayError`."""
        response = await self.request(
            method, path, body, params=params, idempotency_key=idempotency_key, timeout=timeout
        )
        return response.result()

    async def _json(self, method: str, path: str, body: Any = None, **kw: Any) -> JSON:
        return _json_object(await self.call(method, path, body, **kw), f"{method} {path}")

    async def _none(self, method: str, path: str, body: Any = None, **kw: Any) -> None:
        await self.call(method, path, body, **kw)

    # ---- service (no token) ------------------------------------------------------------------------

    @route("GET", "/healthz")
    async def health(self) -> JSON:
        return await self._json("GET", "/healthz")

    @route("GET", "/readyz")
    async def readiness(self) -> JSON:
        """``{status: "ready"}``, or ``{status: "unavailable", problems}`` (a 503 is no error here)."""
        response = await self.request("GET", "/readyz")
        if response.status == 503 and isinstance(response.body, dict):
            return response.body
        return _json_object(response.result(), "GET /readyz")

    @route("GET", "/metrics")
    async def metrics(self) -> str:
        """The Prometheus text exposition."""
        return str(await self.call("GET", "/metrics"))

    @route("GET", "/v1/openapi.json")
    async def openapi(self) -> JSON:
        return await self._json("GET", "/v1/openapi.json")

    # ---- tenants (admin token) ---------------------------------------------------------------------

    @route("POST", "/v1/tenants")
    async def create_tenant(
        self, name: str, *, custody: str | None = None, idempotency_key: str | None = None
    ) -> JSON:
        """``{tenant_id, token, custody}``; ``custody`` is ``"wrapped"`` (default) or ``"token"``."""
        body = _drop_none(name=name, custody=custody)
        return await self._json("POST", "/v1/tenants", body, idempotency_key=idempotency_key)

    @route("GET", "/v1/tenants")
    async def list_tenants(self) -> JSON:
        return await self._json("GET", "/v1/tenants")

    @route("POST", "/v1/tenants/{tenant_id}/tokens")
    async def create_tenant_token(self, tenant_id: str, *, idempotency_key: str | None = None) -> JSON:
        path = _path("/v1/tenants/{tenant_id}/tokens", tenant_id=tenant_id)
        return await self._json("POST", path, {}, idempotency_key=idempotency_key)

    @route("GET", "/v1/tenants/{tenant_id}/tokens")
    async def list_tenant_tokens(self, tenant_id: str) -> JSON:
        return await self._json("GET", _path("/v1/tenants/{tenant_id}/tokens", tenant_id=tenant_id))

    @route("DELETE", "/v1/tenants/{tenant_id}/tokens/{token_id}")
    async def revoke_tenant_token(self, tenant_id: str, token_id: str) -> None:
        path = _path("/v1/tenants/{tenant_id}/tokens/{token_id}", tenant_id=tenant_id, token_id=token_id)
        await self._none("DELETE", path)

    @route("DELETE", "/v1/tenants/{tenant_id}")
    async def delete_tenant(self, tenant_id: str) -> None:
        await self._none("DELETE", _path("/v1/tenants/{tenant_id}", tenant_id=tenant_id))

    # ---- hosted identities and their KeyPackages (tenant token) ------------------------------------

    @route("POST", "/v1/identities")
    async def create_identity(
        self,
        name: str,
        *,
        cipher_suite: int | None = None,
        credential: JSON | None = None,
        auto_join: bool | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """A hosted identity (keys in the HSM); ``credential`` as :func:`basic_credential` makes it."""
        body = _drop_none(name=name, cipher_suite=cipher_suite, credential=credential, auto_join=auto_join)
        return await self._json("POST", "/v1/identities", body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities")
    async def list_identities(self) -> JSON:
        return await self._json("GET", "/v1/identities")

    @route("GET", "/v1/identities/{identity_id}")
    async def get_identity(self, identity_id: str) -> JSON:
        return await self._json("GET", _path("/v1/identities/{identity_id}", identity_id=identity_id))

    @route("DELETE", "/v1/identities/{identity_id}")
    async def delete_identity(self, identity_id: str) -> None:
        await self._none("DELETE", _path("/v1/identities/{identity_id}", identity_id=identity_id))

    @route("POST", "/v1/identities/{identity_id}/key-packages")
    async def create_key_packages(
        self,
        identity_id: str,
        *,
        count: int | None = None,
        last_resort: bool | None = None,
        lifetime_days: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{key_packages: [{ref, key_package}]}`` made in the HSM."""
        path = _path("/v1/identities/{identity_id}/key-packages", identity_id=identity_id)
        body = _drop_none(count=count, last_resort=last_resort, lifetime_days=lifetime_days)
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/key-packages")
    async def list_key_packages(self, identity_id: str) -> JSON:
        path = _path("/v1/identities/{identity_id}/key-packages", identity_id=identity_id)
        return await self._json("GET", path)

    # ---- an identity's groups (tenant token) -------------------------------------------------------

    @staticmethod
    def _group(identity_id: str, gid: GroupId | None = None, tail: str = "") -> str:
        base = _path("/v1/identities/{identity_id}/groups", identity_id=identity_id)
        return base + ("" if gid is None else "/" + gid_segment(gid)) + tail

    @route("POST", "/v1/identities/{identity_id}/groups")
    async def create_group(
        self,
        identity_id: str,
        *,
        group_id: bytes | None = None,
        extensions: Sequence[JSON] | None = None,
        external_senders: Sequence[JSON] | None = None,
        config: JSON | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{group_id, epoch: 0}``; ``extensions`` as :func:`extension` makes them."""
        body = _drop_none(
            group_id=None if group_id is None else b64(group_id),
            extensions=_list(extensions),
            external_senders=_list(external_senders),
            config=config,
        )
        return await self._json("POST", self._group(identity_id), body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/groups")
    async def list_groups(self, identity_id: str) -> JSON:
        return await self._json("GET", self._group(identity_id))

    @route("POST", "/v1/identities/{identity_id}/groups/join")
    async def join_group(
        self,
        identity_id: str,
        welcome: Binary,
        *,
        ratchet_tree: Binary | None = None,
        psks: Sequence[JSON] | None = None,
        config: JSON | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Join from a Welcome: ``{group_id, epoch, epoch_authenticator}``."""
        body = _drop_none(
            welcome=binary(welcome), ratchet_tree=_opt(ratchet_tree), psks=_list(psks), config=config
        )
        path = self._group(identity_id, None, "/join")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/external-join")
    async def external_join(
        self,
        identity_id: str,
        group_info: Binary,
        *,
        ratchet_tree: Binary | None = None,
        remove_prior: bool | None = None,
        remove_prior_leaf: int | None = None,
        psks: Sequence[JSON] | None = None,
        config: JSON | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Join by external commit (RFC 9420 §12.4.3.2): ``{group_id, epoch, commit}``."""
        body = _drop_none(
            group_info=binary(group_info),
            ratchet_tree=_opt(ratchet_tree),
            remove_prior=remove_prior,
            remove_prior_leaf=remove_prior_leaf,
            psks=_list(psks),
            config=config,
        )
        path = self._group(identity_id, None, "/external-join")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/groups/{gid}")
    async def get_group(self, identity_id: str, gid: GroupId) -> JSON:
        """This member's view of the group."""
        return await self._json("GET", self._group(identity_id, gid))

    @route("DELETE", "/v1/identities/{identity_id}/groups/{gid}")
    async def delete_group(self, identity_id: str, gid: GroupId) -> None:
        await self._none("DELETE", self._group(identity_id, gid))

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/commits")
    async def commit(
        self,
        identity_id: str,
        gid: GroupId,
        *,
        add: Sequence[Binary] | None = None,
        remove: Sequence[int] | None = None,
        update: bool | None = None,
        force_path: bool | None = None,
        psks: Sequence[JSON] | None = None,
        group_context_extensions: Sequence[JSON] | None = None,
        include_pending: bool | None = None,
        handshake: str | None = None,
        pending: bool | None = None,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{commit, welcome, group_info, epoch}``; a stale ``epoch`` raises a 409 with
        ``current_epoch``. ``psks`` as :func:`external_psk` / :func:`resumption_psk` make them."""
        body = _drop_none(
            add=None if add is None else [binary(kp) for kp in add],
            remove=_list(remove),
            update=update,
            force_path=force_path,
            psks=_list(psks),
            group_context_extensions=_list(group_context_extensions),
            include_pending=include_pending,
            handshake=handshake,
            pending=pending,
            epoch=epoch,
        )
        path = self._group(identity_id, gid, "/commits")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/pending-commit/merge")
    async def merge_pending_commit(
        self, identity_id: str, gid: GroupId, *, idempotency_key: str | None = None
    ) -> JSON:
        path = self._group(identity_id, gid, "/pending-commit/merge")
        return await self._json("POST", path, {}, idempotency_key=idempotency_key)

    @route("DELETE", "/v1/identities/{identity_id}/groups/{gid}/pending-commit")
    async def discard_pending_commit(self, identity_id: str, gid: GroupId) -> None:
        await self._none("DELETE", self._group(identity_id, gid, "/pending-commit"))

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/proposals")
    async def propose(
        self,
        identity_id: str,
        gid: GroupId,
        proposal_type: str,
        *,
        key_package: Binary | None = None,
        leaf_index: int | None = None,
        psk: JSON | None = None,
        extensions: Sequence[JSON] | None = None,
        handshake: str | None = None,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{proposal, ref}``; ``proposal_type`` is add, remove, update, psk or group_context_extensions."""
        body = _drop_none(
            type=proposal_type,
            key_package=_opt(key_package),
            leaf_index=leaf_index,
            psk=psk,
            extensions=_list(extensions),
            handshake=handshake,
            epoch=epoch,
        )
        path = self._group(identity_id, gid, "/proposals")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/messages")
    async def send_message(
        self,
        identity_id: str,
        gid: GroupId,
        data: bytes,
        *,
        authenticated_data: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Protect one application message: ``{message}`` (a PrivateMessage)."""
        body = _drop_none(data=b64(data), authenticated_data=_opt(authenticated_data))
        path = self._group(identity_id, gid, "/messages")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/messages")
    async def send_messages(
        self,
        identity_id: str,
        gid: GroupId,
        messages: Sequence[bytes | tuple[bytes, bytes]],
        *,
        idempotency_key: str | None = None,
    ) -> JSON:
        """The batch form: each item is the data, or (data, authenticated_data); ``{messages}`` in order."""
        items = [
            {"data": b64(m)} if isinstance(m, bytes) else {"data": b64(m[0]), "authenticated_data": b64(m[1])}
            for m in messages
        ]
        path = self._group(identity_id, gid, "/messages")
        return await self._json("POST", path, {"messages": items}, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/process")
    async def process(
        self, identity_id: str, gid: GroupId, message: Binary, *, idempotency_key: str | None = None
    ) -> JSON:
        """Process one MLSMessage: the result (``kind`` application, proposal or commit)."""
        path = self._group(identity_id, gid, "/process")
        return await self._json("POST", path, {"message": binary(message)}, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/process")
    async def process_batch(
        self,
        identity_id: str,
        gid: GroupId,
        messages: Sequence[Binary],
        *,
        idempotency_key: str | None = None,
    ) -> JSON:
        """The batch form: ``{results}``, each a result or the problem document of that message."""
        path = self._group(identity_id, gid, "/process")
        body = {"messages": [binary(m) for m in messages]}
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/groups/{gid}/group-info")
    async def member_group_info(
        self, identity_id: str, gid: GroupId, *, ratchet_tree: str | None = None
    ) -> JSON:
        """A GroupInfo this member signs now: ``{group_info, ratchet_tree}``; ``ratchet_tree`` is
        ``"separate"`` (default) or ``"extension"``."""
        params = None if ratchet_tree is None else {"ratchet_tree": ratchet_tree}
        return await self._json("GET", self._group(identity_id, gid, "/group-info"), params=params)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/export")
    async def export_secret(
        self, identity_id: str, gid: GroupId, label: str, length: int, *, context: bytes = b""
    ) -> bytes:
        """The MLS-Exporter secret (RFC 9420 §8.5)."""
        body = {"label": label, "length": length, "context": b64(context)}
        result = await self._json("POST", self._group(identity_id, gid, "/export"), body)
        return unb64(result["secret"])

    # ---- a group's log (endpoint token) ------------------------------------------------------------

    @route("POST", "/v1/groups/{gid}/commit-bundles")
    async def submit_commit_bundle(
        self,
        gid: GroupId,
        commit: Binary,
        group_info: Binary,
        *,
        ratchet_tree: Binary | None = None,
        welcome: Binary | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{seq, epoch}``; a commit for another epoch raises a 409 with ``current_epoch``."""
        body = _drop_none(
            commit=binary(commit),
            group_info=binary(group_info),
            ratchet_tree=_opt(ratchet_tree),
            welcome=_opt(welcome),
        )
        path = "/v1/groups/" + gid_segment(gid) + "/commit-bundles"
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/groups/{gid}/messages")
    async def submit_message(
        self, gid: GroupId, message: Binary, *, idempotency_key: str | None = None
    ) -> JSON:
        """A proposal or application message into the log: ``{seq}``."""
        path = "/v1/groups/" + gid_segment(gid) + "/messages"
        return await self._json("POST", path, {"message": binary(message)}, idempotency_key=idempotency_key)

    @route("GET", "/v1/groups/{gid}")
    async def group_log(self, gid: GroupId) -> JSON:
        """The log's view: ``{group_id, epoch, seq, cipher_suite, members}``."""
        return await self._json("GET", "/v1/groups/" + gid_segment(gid))

    @route("GET", "/v1/groups/{gid}/group-info")
    async def log_group_info(self, gid: GroupId) -> JSON:
        """The latest accepted GroupInfo and tree: ``{group_info, ratchet_tree, epoch}``."""
        return await self._json("GET", "/v1/groups/" + gid_segment(gid) + "/group-info")

    # ---- clients (devices) and the KeyPackage directory --------------------------------------------

    @route("POST", "/v1/clients")
    async def create_client(self, name: str, *, idempotency_key: str | None = None) -> JSON:
        """``{client_id, name, token}`` (the client's token, shown once)."""
        return await self._json("POST", "/v1/clients", {"name": name}, idempotency_key=idempotency_key)

    @route("GET", "/v1/clients")
    async def list_clients(self) -> JSON:
        return await self._json("GET", "/v1/clients")

    @route("GET", "/v1/clients/{client_id}")
    async def get_client(self, client_id: str) -> JSON:
        return await self._json("GET", _path("/v1/clients/{client_id}", client_id=client_id))

    @route("DELETE", "/v1/clients/{client_id}")
    async def delete_client(self, client_id: str) -> None:
        await self._none("DELETE", _path("/v1/clients/{client_id}", client_id=client_id))

    @route("POST", "/v1/clients/{client_id}/key-packages")
    async def upload_key_packages(
        self,
        client_id: str,
        key_packages: Sequence[Binary],
        *,
        last_resort: Binary | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{stored}``: KeyPackages (MLSMessages) the device made with its own MLS stack."""
        body = _drop_none(key_packages=[binary(kp) for kp in key_packages], last_resort=_opt(last_resort))
        path = _path("/v1/clients/{client_id}/key-packages", client_id=client_id)
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/clients/{client_id}/key-packages")
    async def key_package_status(self, client_id: str) -> JSON:
        """``{available, last_resort}``: the client's unclaimed KeyPackages."""
        return await self._json("GET", _path("/v1/clients/{client_id}/key-packages", client_id=client_id))

    @route("POST", "/v1/key-packages/claim")
    async def claim_key_packages(
        self,
        endpoints: Sequence[str],
        *,
        cipher_suite: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{key_packages: {endpoint_id: KeyPackage}}``, one per endpoint (all or none)."""
        body = _drop_none(endpoints=list(endpoints), cipher_suite=cipher_suite)
        return await self._json("POST", "/v1/key-packages/claim", body, idempotency_key=idempotency_key)

    # ---- mailboxes (clients) and inboxes (hosted identities) ---------------------------------------

    @route("GET", "/v1/clients/{client_id}/mailbox")
    async def read_mailbox(
        self, client_id: str, *, after: str | None = None, wait: float = 0, limit: int | None = None
    ) -> JSON:
        """A page ``{items, next_cursor}`` after ``after``, long-polling up to ``wait`` seconds."""
        path = _path("/v1/clients/{client_id}/mailbox", client_id=client_id)
        return await self._page(path, after, wait, limit)

    @route("POST", "/v1/clients/{client_id}/mailbox/ack")
    async def ack_mailbox(self, client_id: str, up_to: str, *, idempotency_key: str | None = None) -> None:
        """Delete the items up to ``up_to``, inclusive."""
        path = _path("/v1/clients/{client_id}/mailbox/ack", client_id=client_id)
        await self._none("POST", path, {"up_to": up_to}, idempotency_key=idempotency_key)

    @route("GET", "/v1/clients/{client_id}/mailbox/ws")
    def mailbox_socket(
        self, client_id: str, *, after: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[BoxSocket]:
        """The mailbox's WebSocket, from after ``after``: ``async with client.mailbox_socket(id) as ws``.
        A refused upgrade raises :class:`GatewayError` with its status (aiohttp does not read its body)."""
        return self._socket(_path("/v1/clients/{client_id}/mailbox/ws", client_id=client_id), after)

    @route("GET", "/v1/identities/{identity_id}/inbox")
    async def read_inbox(
        self, identity_id: str, *, after: str | None = None, wait: float = 0, limit: int | None = None
    ) -> JSON:
        """A page ``{events, next_cursor}`` after ``after``, long-polling up to ``wait`` seconds."""
        path = _path("/v1/identities/{identity_id}/inbox", identity_id=identity_id)
        return await self._page(path, after, wait, limit)

    @route("POST", "/v1/identities/{identity_id}/inbox/ack")
    async def ack_inbox(self, identity_id: str, up_to: str, *, idempotency_key: str | None = None) -> None:
        """Delete the events up to ``up_to``, inclusive."""
        path = _path("/v1/identities/{identity_id}/inbox/ack", identity_id=identity_id)
        await self._none("POST", path, {"up_to": up_to}, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/inbox/ws")
    def inbox_socket(
        self, identity_id: str, *, after: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[BoxSocket]:
        """The inbox's WebSocket, from after ``after``."""
        return self._socket(_path("/v1/identities/{identity_id}/inbox/ws", identity_id=identity_id), after)

    async def follow_mailbox(
        self, client_id: str, *, after: str | None = None, wait: float = 30, ack: bool = False
    ) -> AsyncIterator[JSON]:
        """Every mailbox item after ``after``, long-polling for new ones without end (break to stop);
        with ``ack`` each page is acknowledged once its items were taken."""
        async for item in self._follow(
            lambda cursor: self.read_mailbox(client_id, after=cursor, wait=wait),
            "items",
            (lambda up_to: self.ack_mailbox(client_id, up_to)) if ack else None,
            after,
        ):
            yield item

    async def follow_inbox(
        self, identity_id: str, *, after: str | None = None, wait: float = 30, ack: bool = False
    ) -> AsyncIterator[JSON]:
        """Every inbox event after ``after``, long-polling for new ones (as :meth:`follow_mailbox`)."""
        async for event in self._follow(
            lambda cursor: self.read_inbox(identity_id, after=cursor, wait=wait),
            "events",
            (lambda up_to: self.ack_inbox(identity_id, up_to)) if ack else None,
            after,
        ):
            yield event

    async def _page(self, path: str, after: str | None, wait: float, limit: int | None) -> JSON:
        params = _drop_none(after=after, wait=None if not wait else f"{wait:g}", limit=limit)
        query = {k: str(v) for k, v in params.items()}
        return await self._json("GET", path, params=query, timeout=self.timeout + min(wait, 30))

    @staticmethod
    async def _follow(
        read: Callable[[str | None], Awaitable[JSON]],
        key: str,
        ack: Callable[[str], Awaitable[None]] | None,
        after: str | None,
    ) -> AsyncIterator[JSON]:
        while True:
            page = await read(after)
            for item in page[key]:
                yield item
            if page[key] and ack is not None:
                await ack(str(page["next_cursor"]))
            after = str(page["next_cursor"])

    @contextlib.asynccontextmanager
    async def _socket(self, path: str, after: str | None) -> AsyncIterator[BoxSocket]:
        headers = self._headers()
        params = None if after is None else {"after": after}
        try:
            ws = await self._live_session().ws_connect(
                self.base_url + path, headers=headers, params=params, heartbeat=None
            )
        except aiohttp.WSServerHandshakeError as e:
            raise GatewayError(e.status, {"detail": f"WebSocket upgrade refused: {e.message}"}) from e
        except aiohttp.ClientError as e:
            raise GatewayConnectionError(f"GET {path}: {e!r}") from e
        try:
            yield BoxSocket(ws)
        finally:
            await ws.close()

    # ---- webhooks (tenant token) -------------------------------------------------------------------

    @route("PUT", "/v1/identities/{identity_id}/webhook")
    async def set_webhook(self, identity_id: str, url: str, secret: str, *, after: str | None = None) -> JSON:
        """``{url, after}``; the secret signs deliveries (``gateway.webhooks.verify_signature``)."""
        body = _drop_none(url=url, secret=secret, after=after)
        return await self._json(
            "PUT", _path("/v1/identities/{identity_id}/webhook", identity_id=identity_id), body
        )

    @route("GET", "/v1/identities/{identity_id}/webhook")
    async def get_webhook(self, identity_id: str) -> JSON:
        return await self._json("GET", _path("/v1/identities/{identity_id}/webhook", identity_id=identity_id))

    @route("DELETE", "/v1/identities/{identity_id}/webhook")
    async def delete_webhook(self, identity_id: str) -> None:
        await self._none("DELETE", _path("/v1/identities/{identity_id}/webhook", identity_id=identity_id))


def _json_object(result: Any, what: str) -> JSON:
    """A success body that must be a JSON object (every JSON answer of the API is one)."""
    if not isinstance(result, dict):
        raise GatewayError(502, {"title": "Bad answer", "detail": f"{what}: not a JSON object"})
    return result


def _opt(value: Binary | None) -> str | None:
    return None if value is None else binary(value)


def _list(values: Sequence[_T] | None) -> list[_T] | None:
    return None if values is None else list(values)


# ---- synchronous use ---------------------------------------------------------------------------------------


class LoopThread:
    """An asyncio event loop running on a daemon thread of its own; :meth:`run` waits for a coroutine on
    it from any other thread (several threads may wait at once)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run from its own loop would wait for itself")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class BlockingClient:
    """A :class:`GatewayClient` for synchronous code: ``gw(lambda c: c.method(...))`` runs the method on
    a :class:`LoopThread` and answers its result (or raises its exception)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        keep_alive: bool = True,
        loop: LoopThread | None = None,
    ) -> None:
        self._own_loop = loop is None
        self.loop = loop or LoopThread()
        self.client = GatewayClient(base_url, token, timeout=timeout, keep_alive=keep_alive)

    @classmethod
    def _sharing(cls, loop: LoopThread, client: GatewayClient) -> BlockingClient:
        other = cls.__new__(cls)
        other._own_loop, other.loop, other.client = False, loop, client
        return other

    def __call__(self, operation: Callable[[GatewayClient], Awaitable[_T]]) -> _T:
        async def run() -> _T:
            return await operation(self.client)

        return self.loop.run(run())

    def with_token(self, token: str | None, *, timeout: float | None = None) -> BlockingClient:
        """The same gateway, loop and connections as another caller."""
        return BlockingClient._sharing(self.loop, self.loop.run(_derive(self.client, token, timeout)))

    def close(self) -> None:
        self.loop.run(self.client.close())
        if self._own_loop:
            self.loop.stop()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _derive(client: GatewayClient, token: str | None, timeout: float | None) -> GatewayClient:
    """``client.with_token`` on the client's loop (a session it makes there belongs to that loop)."""
    return client.with_token(token, timeout=timeout)


__all__ = [
    "ApiResponse",
    "Binary",
    "BlockingClient",
    "BoxClosed",
    "BoxSocket",
    "GatewayClient",
    "GatewayConnectionError",
    "GatewayError",
    "GroupId",
    "LoopThread",
    "b64",
    "basic_credential",
    "binary",
    "client_routes",
    "extension",
    "external_psk",
    "gid_segment",
    "group_id_bytes",
    "resumption_psk",
    "unb64",
]
