"""Wake-ups for the waiters of an endpoint: long-polls and WebSockets on a mailbox or an inbox.

Writers (worker threads, after their transaction committed) call :meth:`Wakeups.notify` with the endpoint
ids that got something new; waiters on the event loop use :meth:`Wakeups.watch`, which registers the
waiter *before* the caller reads the store, so a write that commits between the read and the wait is not
missed (the waiter then returns at once). A wake-up says only "look again": the store is the truth, so a
spurious or coalesced wake-up is harmless. Several gateway processes on one store wake each other through
the store: a commit's ``notifications`` rows reach every process's listener, which calls :meth:`notify`
(:mod:`gateway.notifications`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; ``True`` when it is set. Unlike
    ``asyncio.wait_for(event.wait(), timeout)`` on Python 3.11, a cancellation that arrives as the event
    is set is never swallowed (CPython gh-86296): ``asyncio.wait`` raises it, and the inner waiter is
    cancelled either way. (A swallowed cancellation kept a lease-gated task running after its clean-up
    cancelled it, so ``serve`` never finished stopping when it stopped right after starting.)"""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


class Watch:
    """One registered waiter: :meth:`wait` returns when the endpoint was notified since registration."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; ``True`` when notified (then re-armed for the next wait)."""
        if not await wait_event(self._event, timeout):
            return False
        self._event.clear()
        return True


class Wakeups:
    """Endpoint id -> the watches waiting on it, for one event loop."""

    def __init__(self) -> None:
        self._watches: dict[str, set[Watch]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def watch(self, endpoint_id: str) -> AsyncIterator[Watch]:
        """Register a waiter on ``endpoint_id`` for the block (read the store inside it, then wait)."""
        self._loop = asyncio.get_running_loop()
        w = Watch()
        with self._lock:
            self._watches.setdefault(endpoint_id, set()).add(w)
        try:
            yield w
        finally:
            with self._lock:
                watches = self._watches.get(endpoint_id)
                if watches is not None:
                    watches.discard(w)
                    if not watches:
                        del self._watches[endpoint_id]

    def notify(self, endpoint_ids: Iterable[str]) -> None:
        """Wake every waiter of these endpoints; callable from any thread."""
        with self._lock:
            due = [w for e in set(endpoint_ids) for w in self._watches.get(e, ())]
        loop = self._loop
        if not due or loop is None or loop.is_closed():
            return
        for w in due:
            loop.call_soon_threadsafe(w.set)


__all__ = ["Wakeups", "Watch", "wait_event"]
