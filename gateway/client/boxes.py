"""Mailboxes (clients) and inboxes (hosted identities): pages, long polls and WebSockets (docs/api.md)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from .transport import Transport
from .wire import JSON, BoxClosed, GatewayConnectionError, GatewayError, drop_none, fill_path, route


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


class BoxRoutes(Transport):
    """Read, follow, acknowledge and stream mailboxes and inboxes."""

    # ---- mailboxes (clients) and inboxes (hosted identities) ---------------------------------------

    @route("GET", "/v1/clients/{client_id}/mailbox")
    async def read_mailbox(
        self, client_id: str, *, after: str | None = None, wait: float = 0, limit: int | None = None
    ) -> JSON:
        """A page ``{items, next_cursor}`` after ``after``, long-polling up to ``wait`` seconds."""
        path = fill_path("/v1/clients/{client_id}/mailbox", client_id=client_id)
        return await self._page(path, after, wait, limit)

    @route("POST", "/v1/clients/{client_id}/mailbox/ack")
    async def ack_mailbox(self, client_id: str, up_to: str, *, idempotency_key: str | None = None) -> None:
        """Delete the items up to ``up_to``, inclusive."""
        path = fill_path("/v1/clients/{client_id}/mailbox/ack", client_id=client_id)
        await self._none("POST", path, {"up_to": up_to}, idempotency_key=idempotency_key)

    @route("GET", "/v1/clients/{client_id}/mailbox/ws")
    def mailbox_socket(
        self, client_id: str, *, after: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[BoxSocket]:
        """The mailbox's WebSocket, from after ``after``: ``async with client.mailbox_socket(id) as ws``.
        A refused upgrade raises :class:`GatewayError` with its status (aiohttp does not read its body)."""
        return self._socket(fill_path("/v1/clients/{client_id}/mailbox/ws", client_id=client_id), after)

    @route("GET", "/v1/identities/{identity_id}/inbox")
    async def read_inbox(
        self, identity_id: str, *, after: str | None = None, wait: float = 0, limit: int | None = None
    ) -> JSON:
        """A page ``{events, next_cursor}`` after ``after``, long-polling up to ``wait`` seconds."""
        path = fill_path("/v1/identities/{identity_id}/inbox", identity_id=identity_id)
        return await self._page(path, after, wait, limit)

    @route("POST", "/v1/identities/{identity_id}/inbox/ack")
    async def ack_inbox(self, identity_id: str, up_to: str, *, idempotency_key: str | None = None) -> None:
        """Delete the events up to ``up_to``, inclusive."""
        path = fill_path("/v1/identities/{identity_id}/inbox/ack", identity_id=identity_id)
        await self._none("POST", path, {"up_to": up_to}, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/inbox/ws")
    def inbox_socket(
        self, identity_id: str, *, after: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[BoxSocket]:
        """The inbox's WebSocket, from after ``after``."""
        return self._socket(
            fill_path("/v1/identities/{identity_id}/inbox/ws", identity_id=identity_id), after
        )

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
        params = drop_none(after=after, wait=None if not wait else f"{wait:g}", limit=limit)
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
