"""Leases in the store: background work that must run in one gateway process at a time.

Several gateway processes (``serve --workers N``, or several machines) share one store. Work that two
processes would duplicate or race on — audit checkpoints (one per head), the retention purge, webhook
delivery (one sender per webhook keeps events in order), the hosted delivery sweep, orphan-key
reconciliation, the KEK re-wrap and destruction, and the prune of old notification rows — runs only in
the process holding that task's lease (:data:`LEASED_TASKS`). Work every process must do stays per
process: each reads the current KEKs, keeps its readiness gauge, and advances the hosted memberships its
own appends scheduled.

**The lease.** A row ``(name, holder, expires_at)`` (:mod:`gateway.sqlite_leases`): ``holder`` is unique
per process run (:attr:`LeaseKeeper.holder`: host, pid, random), ``expires_at`` the holder's wall clock
(``time.time()``) plus ``ttl_s``. :class:`LeaseKeeper` acquires or renews every lease of the process in
one write transaction every ``ttl_s / 3``, each by compare-and-swap on its row; at shut-down it
releases them (others take over at once). A holder that stops renewing (kill -9, a stalled machine, a
lost database) loses its leases after the TTL.

**Clocks.** Rows carry wall-clock times, and machines' clocks differ. A contender takes a lease only
when its own clock is past ``expires_at + margin_s``; the holder counts its lease valid only until
``ttl_s`` after it *started* the renewal that succeeded, on its monotonic clock (never its wall clock).
With clocks at most ``margin_s`` apart (NTP keeps them within milliseconds; the default margin is 2 s)
the holder has stopped believing it holds the lease before any other process can take it. A process
whose lease lapses cancels the task at once; a step already running in a worker thread finishes (each
leased task's steps are idempotent or compare-and-swap writes, and reconciliation checks the lease
before every destruction).

The gauge ``mlsgw_lease_held{lease}`` is 1 in the process holding the lease, 0 in the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import Gauge

from .context import APP
from .store import Store, StoreUnavailable
from .wakeups import wait_event

log = logging.getLogger("mls_gateway")

AUDIT_CHECKPOINTS = "audit-checkpoints"
RETENTION = "retention"
HOSTED_SWEEP = "hosted-sweep"
WEBHOOK_DELIVERY = "webhook-delivery"
KEY_RECONCILIATION = "key-reconciliation"
KEK_REWRAP = "kek-rewrap"
NOTIFICATION_PRUNE = "notification-prune"
#: The background tasks that run in one process at a time, each under the lease of its name.
LEASED_TASKS = (
    AUDIT_CHECKPOINTS,
    RETENTION,
    HOSTED_SWEEP,
    WEBHOOK_DELIVERY,
    KEY_RECONCILIATION,
    KEK_REWRAP,
    NOTIFICATION_PRUNE,
)


def process_holder_id() -> str:
    """An id unique to this process run: host, pid and 64 random bits (a restarted pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


class LeaseKeeper:
    """Acquires, renews and releases this process's leases; tells which it holds (see the module)."""

    def __init__(
        self,
        store: Store,
        names: Iterable[str] = LEASED_TASKS,
        *,
        ttl_s: float,
        margin_s: float,
        gauge: Gauge | None = None,
        holder: str | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.names = tuple(names)
        self.ttl_s = ttl_s
        self.margin_s = margin_s
        self.holder = holder or process_holder_id()
        self._gauge = gauge
        self._wall = wall
        self._mono = mono
        #: Monotonic time until which each lease is ours (0: not held).
        self._valid_until = dict.fromkeys(self.names, 0.0)
        self._changed: asyncio.Event | None = None

    # ---- the store side (worker thread) ------------------------------------------------------------------
    def renew(self) -> dict[str, bool]:
        """One round: acquire or renew every lease in one transaction; returns which are held now."""
        started = self._mono()
        now = self._wall()
        with self.store.transaction() as tx:
            got = {n: tx.try_lease(n, self.holder, now, self.ttl_s, self.margin_s) for n in self.names}
        for name, ok in got.items():
            self._valid_until[name] = started + self.ttl_s if ok else 0.0
        return got

    def release(self) -> None:
        """Give up every lease held (at shut-down, its tasks stopped), so another process takes over
        without waiting (callable from a worker thread)."""
        held = [n for n in self.names if self.held(n)]
        for name in self.names:
            self._valid_until[name] = 0.0
        if self._gauge is not None:
            for name in self.names:
                self._gauge.labels(name).set(0)
        if held:
            with self.store.transaction() as tx:
                for name in held:
                    tx.release_lease(name, self.holder)

    # ---- the process side (event loop) --------------------------------------------------------------------
    def held(self, name: str) -> bool:
        """Whether this process holds ``name`` now (callable from any thread)."""
        return self._mono() < self._valid_until.get(name, 0.0)

    def _publish(self) -> None:
        """Set the gauge and wake the gated tasks (on the event loop)."""
        if self._gauge is not None:
            for name in self.names:
                self._gauge.labels(name).set(1 if self.held(name) else 0)
        if self._changed is not None:
            self._changed.set()

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def wait_change(self, timeout: float) -> None:
        """Return after the next renewal round (or a lapse), or after ``timeout`` seconds."""
        event = self._event()
        await wait_event(event, timeout)  # never swallows a cancellation (gateway.wakeups.wait_event)
        event.clear()

    async def run(self, executor: ThreadPoolExecutor) -> None:
        """Renew every ``ttl_s / 3`` (sooner when a held lease would lapse first) until cancelled."""
        loop = asyncio.get_running_loop()
        self._event()
        while True:
            try:
                await loop.run_in_executor(executor, self.renew)
            except StoreUnavailable as e:
                log.warning("lease renewal failed (retried): %s", e)
            self._publish()
            await self._sleep_until_next()

    async def _sleep_until_next(self) -> None:
        delay = self.ttl_s / 3
        lapse = [v - self._mono() for v in self._valid_until.values() if v > 0]
        if lapse and min(lapse) < delay:  # a renewal failed: publish the lapse when it happens
            await asyncio.sleep(max(min(lapse), 0.0))
            self._publish()
            return
        await asyncio.sleep(delay)


#: Seconds before a gated task that failed is started again: the first wait, doubled after each failure that
#: came sooner than :data:`RESTART_MAX_S` after its start, up to that.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0


async def run_while_held(
    keeper: LeaseKeeper,
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    restart_s: float = RESTART_FIRST_S,
    restart_max_s: float = RESTART_MAX_S,
) -> None:
    """Run ``body()`` (a fresh one each time) while this process holds the lease ``name``; cancel it
    when the lease is lost; forever, until cancelled.

    A body that fails (any :class:`Exception`) or returns is logged — the error's type only, never its
    text, which may quote data — and started again after a back-off (``restart_s``, doubling up to
    ``restart_max_s``), lease permitting: the process keeps renewing the lease, so giving the task up
    would stop the work in every process."""
    delay = restart_s
    while True:
        while not keeper.held(name):
            await keeper.wait_change(keeper.ttl_s)
        log.info("lease %s taken: its task starts in this process", name, extra={"event": "lease_taken"})
        started = time.monotonic()
        outcome = await _run_until_lost(keeper, name, body)
        if outcome is None:
            log.info("lease %s lost: its task stopped in this process", name, extra={"event": "lease_lost"})
            continue
        if time.monotonic() - started >= restart_max_s:
            delay = restart_s  # it ran a good while: a fresh failure, not a crash loop
        log.error(
            "lease %s: its task %s; started again in %.1f s",
            name,
            outcome,
            delay,
            extra={"event": "lease_task_failed"},
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, restart_max_s)


async def _run_until_lost(keeper: LeaseKeeper, name: str, body: Callable[[], Awaitable[None]]) -> str | None:
    """Run one ``body()`` until the lease is lost (``None``) or it ends: how it ended, for the log."""
    task = asyncio.ensure_future(body())
    try:
        while keeper.held(name) and not task.done():
            await asyncio.wait([task], timeout=_recheck_s(keeper, name))
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([task])
    if not task.done() or task.cancelled():
        return None
    error = task.exception()
    if error is None:
        return "returned"
    return f"failed ({type(error).__name__})"


def _recheck_s(keeper: LeaseKeeper, name: str) -> float:
    """Seconds until the lease would lapse without a renewal (at least a little)."""
    return max(keeper._valid_until.get(name, 0.0) - keeper._mono(), 0.01)


#: The app's lease keeper (set by :func:`lease_keeper`).
LEASES = web.AppKey("leases", LeaseKeeper)


async def lease_keeper(app: web.Application) -> AsyncIterator[None]:
    """The app's lease keeper (``cleanup_ctx``, registered before the tasks it gates): renews in a
    thread of its own (a busy worker pool must not cost the leases); releases them at shut-down."""
    rt = app[APP]
    cfg = rt.config
    keeper = LeaseKeeper(
        rt.store, ttl_s=cfg.lease_ttl_s, margin_s=cfg.lease_clock_margin_s, gauge=rt.metrics.lease_held
    )
    app[LEASES] = keeper
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlsgw-lease")
    task = asyncio.create_task(keeper.run(executor), name="leases")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await asyncio.get_running_loop().run_in_executor(executor, keeper.release)
    except StoreUnavailable as e:
        log.warning("leases not released at shut-down (they lapse after their TTL): %s", e)
    executor.shutdown(wait=True)


__all__ = [
    "LEASED_TASKS",
    "LEASES",
    "NOTIFICATION_PRUNE",
    "LeaseKeeper",
    "lease_keeper",
    "process_holder_id",
    "run_while_held",
]
