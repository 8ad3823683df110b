"""The plumbing of the client: one aiohttp session, a request, and its answer or its problem document."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Self

import aiohttp

from .wire import JSON, ApiResponse, GatewayConnectionError, json_object


class Transport:
    """Requests to one gateway over one ``aiohttp.ClientSession``, as one bearer ``token`` (or none).

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

    def with_token(self, token: str | None, *, timeout: float | None = None) -> Self:
        """The same gateway as another caller (the session is shared; the original keeps owning it).
        Call it on the event loop the client runs on (it may make the session)."""
        session = self._live_session()  # made now if not yet, so that both share it
        return type(self)(self.base_url, token, session=session, timeout=timeout or self.timeout)

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

    async def __aenter__(self) -> Self:
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
        return json_object(await self.call(method, path, body, **kw), f"{method} {path}")

    async def _none(self, method: str, path: str, body: Any = None, **kw: Any) -> None:
        await self.call(method, path, body, **kw)
