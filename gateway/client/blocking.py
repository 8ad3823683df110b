"""The client from synchronous code: a coroutine of it run on an event loop of its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .api import GatewayClient

_T = TypeVar("_T")


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
