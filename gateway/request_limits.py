"""Abuse resistance of the HTTP front (issue 17): what a request may cost before and while it is served.

* **Bodies are never decompressed** — a ``Content-Encoding`` other than ``identity`` is refused (415
  ``unsupported_media_type``) from the headers alone, before a byte of the body is read: a 1 MiB gzip
  bomb costs nothing. (aiohttp would otherwise inflate it on the event loop; ``auto_decompress`` is off
  as well, so even a handler that reads a body never inflates one.)
* **JSON bodies are JSON** — a body must come with ``Content-Type: application/json`` (parameter
  ``charset=utf-8`` allowed, nothing else), or 415.
* **Bodies are read within a deadline** — ``body_timeout_s``: a client that trickles (or stops sending)
  its body gets 408 ``request_timeout`` and its connection is closed. Half-sent *headers* are bounded by
  aiohttp's keep-alive timer, set to ``header_timeout_s`` (:func:`server_settings`): a connection that
  has not delivered a complete request line and headers in that time is closed.
* **Fair worker admission** — :class:`TenantScheduler`: the worker pool's threads are handed out round
  robin between tenants, one tenant holds at most ``tenant_max_concurrency`` of them at once and may have
  at most ``tenant_max_waiting`` requests queued; beyond that it gets 429 ``rate_limited`` with
  ``Retry-After``. A flood of one tenant (say, KeyPackage batches of 100) waits in its own queue while
  other tenants' requests take the threads it may not hold.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from .errors import Problem

#: Seconds a 429 of a full tenant queue asks the client to wait.
RETRY_AFTER_BUSY_S = 1


def refuse_encoded_body(request: web.Request) -> None:
    """415 for a request whose body is content-encoded (RFC 9110 §8.4): the gateway inflates nothing."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Problem(
            "unsupported_media_type", "request bodies must not be content-encoded (no Content-Encoding)"
        )


def require_json_content_type(request: web.Request, raw: bytes) -> None:
    """415 unless a non-empty body is declared ``application/json`` (optionally ``; charset=utf-8``)."""
    if not raw:
        return
    media, _, params = request.headers.get("Content-Type", "").partition(";")
    charset = params.strip().lower().replace(" ", "")
    if media.strip().lower() != "application/json" or charset not in ("", "charset=utf-8", 'charset="utf-8"'):
        raise Problem(
            "unsupported_media_type", "the body must be sent as Content-Type: application/json (UTF-8)"
        )


async def read_limited(request: web.Request, timeout_s: float) -> bytes:
    """The whole body, read within ``timeout_s`` (408 and the connection closed otherwise); over
    ``max_body_bytes`` is aiohttp's 413, turned into a problem document by the middleware."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        detail = f"the request body was not received within {timeout_s:g} s"
        raise Problem("request_timeout", detail) from None


#: Problems answered before the body was read whole: the connection is closed after the answer (the
#: rest of the body is not waited for or drained).
UNREAD_BODY_CODES = frozenset({"unsupported_media_type", "request_timeout", "payload_too_large"})


#: Seconds aiohttp keeps reading (and dropping) the unread rest of a refused request's body before it
#: closes the connection (so that the client sees the answer rather than a reset).
LINGERING_S = 2.0


def server_settings(header_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments of aiohttp's request handler (``handler_args``): the keep-alive timer closes a
    connection that delivered no complete request in ``header_timeout_s`` (idle, or headers half-sent);
    bodies are never decompressed; the unread rest of a refused body is drained for at most
    :data:`LINGERING_S`."""
    return {"keepalive_timeout": header_timeout_s, "auto_decompress": False, "lingering_time": LINGERING_S}


class TenantScheduler:
    """Hands out the worker pool's ``slots`` threads to requests, round robin between tenants.

    A tenant runs at most ``per_tenant`` requests at once and queues at most ``max_waiting``; a request
    over that answers 429 ``rate_limited``. A released slot goes to the next tenant in the rotation that
    has a waiting request and is under its limit, so each tenant with work gets its turn whatever the
    others queued.
    """

    def __init__(self, slots: int, per_tenant: int, max_waiting: int) -> None:
        self.free = slots
        self.per_tenant = per_tenant
        self.max_waiting = max_waiting
        self.running: dict[str, int] = {}
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self.rotation: deque[str] = deque()

    @asynccontextmanager
    async def slot(self, tenant: str, *, refusable: bool = True) -> AsyncIterator[None]:
        """Hold one worker slot for ``tenant`` while the block runs. With ``refusable=False`` the request
        waits its turn even past ``max_waiting`` (the server's own follow-up reads of an admitted
        request, e.g. a WebSocket's pushes, are not refused)."""
        await self._acquire(tenant, refusable)
        try:
            yield
        finally:
            self._release(tenant)

    def _may_run(self, tenant: str) -> bool:
        return self.free > 0 and self.running.get(tenant, 0) < self.per_tenant

    async def _acquire(self, tenant: str, refusable: bool = True) -> None:
        queue = self.waiting.get(tenant)
        if not queue and self._may_run(tenant):
            self._grant(tenant)
            return
        if queue is None:
            queue = self.waiting[tenant] = deque()
        if refusable and len(queue) >= self.max_waiting:
            raise Problem(
                "rate_limited",
                f"too many concurrent requests of this tenant (at most {self.per_tenant} running and "
                f"{self.max_waiting} waiting)",
                retry_after=RETRY_AFTER_BUSY_S,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        if tenant not in self.rotation:
            self.rotation.append(tenant)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(tenant)  # granted as it was cancelled: hand the slot on
            else:  # cancelled while waiting (a dispatch in between may have dropped it already)
                if waiter in queue:
                    queue.remove(waiter)
                self._forget(tenant)
            raise

    def _grant(self, tenant: str) -> None:
        self.free -= 1
        self.running[tenant] = self.running.get(tenant, 0) + 1

    def _release(self, tenant: str) -> None:
        self.free += 1
        left = self.running[tenant] - 1
        if left:
            self.running[tenant] = left
        else:
            del self.running[tenant]
        self._dispatch()

    def _forget(self, tenant: str) -> None:
        if not self.waiting.get(tenant):
            self.waiting.pop(tenant, None)
            if tenant in self.rotation:
                self.rotation.remove(tenant)

    def _dispatch(self) -> None:
        """Grant free slots round robin: one waiting request per tenant per turn."""
        idle_turns = 0
        while self.free > 0 and self.rotation and idle_turns < len(self.rotation):
            tenant = self.rotation.popleft()
            self.rotation.append(tenant)
            queue = self.waiting.get(tenant)
            while queue and queue[0].done():  # cancelled before its turn came: granted nothing
                queue.popleft()
            if not queue:
                self._forget(tenant)
                continue
            if not self._may_run(tenant):
                idle_turns += 1
                continue
            idle_turns = 0
            self._grant(tenant)
            queue.popleft().set_result(None)
            self._forget(tenant)


def tenant_key(tenant_id: str | None) -> str:
    """The scheduler's key of a caller: its tenant, or ``admin`` for admin tokens."""
    return tenant_id if tenant_id is not None else "admin"
