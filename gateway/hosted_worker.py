"""The background side of hosted delivery: advances hosted memberships after each append, and sweeps the
store for work a crash (or another process) left (api-delivery.md "Hosted members are always online").

Work items are (identity, group) pairs; each is advanced in the worker pool under the membership's lock
(the one api-v1 requests on that membership take), a bounded number at a time, each pair at most once at
a time. Scheduling is thread-safe (appends commit in worker threads). The store's ``hosted_pending`` table
is the durable queue: an item this process never got to is found by the sweep (at start-up, then every
:data:`SWEEP_INTERVAL_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from hsm.errors import HsmUnavailable
from mls import MLSError

from .context import APP, Runtime
from .delivery_store import HostedWork
from .errors import Problem
from .leases import HOSTED_SWEEP, LEASES
from .store import StoreUnavailable

log = logging.getLogger("mls_gateway")

#: Seconds between two sweeps of the store for hosted work.
SWEEP_INTERVAL_S = 2.0
#: Memberships advanced at once.
CONCURRENCY = 4


class HostedWorker:
    """Runs :meth:`gateway.hosted_delivery.HostedDelivery.advance` for scheduled memberships."""

    def __init__(self, runtime: Runtime, may_sweep: Callable[[], bool] = lambda: True) -> None:
        self.rt = runtime
        #: Whether this process sweeps now: the holder of the hosted-sweep lease (gateway.leases).
        self.may_sweep = may_sweep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self._queued: set[tuple[str, bytes]] = set()

    def schedule(self, work: list[HostedWork]) -> None:
        """Advance these memberships soon; callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or not work:
            return
        loop.call_soon_threadsafe(self._enqueue, work)

    def _enqueue(self, work: list[HostedWork]) -> None:
        for w in work:
            key = (w.identity_id, w.group_id)
            if key not in self._queued:
                self._queued.add(key)
                self._queue.put_nowait((w.identity_id, w.tenant_id, w.group_id))

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        workers = [asyncio.create_task(self._work()) for _ in range(CONCURRENCY)]
        try:
            while True:
                if self.may_sweep():
                    await self._sweep()
                await asyncio.sleep(SWEEP_INTERVAL_S)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            work = await loop.run_in_executor(self.rt.executor, self._pending)
        except StoreUnavailable as e:
            log.warning("hosted delivery sweep failed (retried later): %s", e)
            return
        self._enqueue(work)

    def _pending(self) -> list[HostedWork]:
        with self.rt.store.read_transaction() as tx:
            return tx.hosted_pending(1000)

    async def _work(self) -> None:
        while True:
            identity_id, tenant_id, group_id = await self._queue.get()
            self._queued.discard((identity_id, group_id))
            async with self.rt.locks.hold((identity_id, group_id)):
                await asyncio.get_running_loop().run_in_executor(
                    self.rt.executor, self._advance, identity_id, tenant_id, group_id
                )

    def _advance(self, identity_id: str, tenant_id: str, group_id: bytes) -> None:
        service = self.rt.service
        try:
            service.hosted.advance_by_id(tenant_id, identity_id, group_id)
        except (StoreUnavailable, HsmUnavailable) as e:
            log.warning("hosted delivery deferred (retried by the sweep): %s", type(e).__name__)
        except (MLSError, Problem) as e:
            log.warning("hosted delivery of a membership failed (retried by the sweep): %s", e)
        except Exception:
            log.exception("hosted delivery of a membership failed (retried by the sweep)")


async def hosted_delivery_task(app: web.Application) -> AsyncIterator[None]:
    """The app's hosted delivery worker: started with the app, cancelled when it shuts down."""
    rt = app[APP]
    keeper = app[LEASES]
    worker = HostedWorker(rt, lambda: keeper.held(HOSTED_SWEEP))
    rt.service.schedule_hosted = worker.schedule
    task = asyncio.create_task(worker.run(), name="hosted-delivery")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["HostedWorker", "hosted_delivery_task"]
