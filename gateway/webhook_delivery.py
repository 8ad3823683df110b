"""Delivering hosted identities' inbox events to their webhooks (api-delivery.md, "Webhook for a hosted
identity" and "Details … Webhooks").

:class:`WebhookDispatcher` is one background task of the app (:func:`webhook_delivery`, in the app's
``cleanup_ctx``). Every piece of its state is in the store (``webhooks`` rows: the delivered cursor and the
retry state), so a restart carries on where the last process stopped. It runs one worker per webhook that
is not paused; different identities' webhooks never wait for each other. A worker:

- reads the webhook and the inbox events after its ``delivered_cursor``, in cursor order;
- POSTs each event's JSON (``{"cursor", "group_id", "seq", …event}``, the object of the inbox API) with
  ``Content-Type: application/json`` and ``MLS-Gateway-Signature`` (:func:`gateway.webhooks.sign`), one
  attempt taking at most ``attempt_timeout_s`` (10 s), redirects not followed;
- after a 2xx answer moves ``delivered_cursor`` to the event (one small transaction) and goes on;
- after anything else (another status, a timeout, a connection error, a target that is no longer allowed:
  :class:`gateway.webhooks.SafeResolver`) records the failure and waits the schedule's delay
  (:class:`gateway.webhooks.RetrySchedule`) before trying **the same event** again — a later event is
  never sent while an earlier one is failing; after ``give_up_after_s`` of failing the webhook is paused
  and the events wait in the inbox until a PUT of the webhook resumes it.

Delivery is at least once: a crash between a receiver's 2xx and the cursor's update sends that event
again (receivers de-duplicate by ``cursor``). Workers wake at once on :class:`gateway.wakeups.Wakeups`
notifications of their identity (the inbox writers notify after committing) and otherwise look at the
store every ``poll_interval_s`` (another process may have written). The secret is opened from the store
when a worker needs it and is never logged; log lines name the identity and the error's class only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from aiohttp import web

from hsm.envelope import Envelope
from hsm.errors import HsmError

from .context import APP
from .delivery_metrics import DeliveryMetrics
from .inbox_events import open_event
from .leases import LEASES, WEBHOOK_DELIVERY, run_while_held
from .sqlite_webhooks import PendingEvent, WebhookRecord
from .store import Store, StoreUnavailable, Transaction
from .wakeups import Wakeups
from .webhooks import (
    ATTEMPT_TIMEOUT_S,
    SIGNATURE_HEADER,
    RetrySchedule,
    SafeResolver,
    UnsafeTarget,
    check_delivery_target,
    open_secret,
    sign,
)

log = logging.getLogger("mls_gateway.webhooks")

T = TypeVar("T")

#: The :class:`~gateway.wakeups.Wakeups` key notified when a webhook is set or removed (not an endpoint id).
WEBHOOKS_CHANGED = "webhooks:changed"
#: Seconds between two looks at the store when nothing woke the dispatcher.
POLL_INTERVAL_S = 5.0
#: Inbox events read at once by a worker.
BATCH = 50


@dataclass(frozen=True)
class DeliveryOptions:
    """How the dispatcher delivers: the address policy, the retry schedule, the poll and attempt times."""

    allow_private: bool = False
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    poll_interval_s: float = POLL_INTERVAL_S
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S


class _Secret:
    """A webhook secret in memory, for one generation of the webhook; its repr shows nothing."""

    __slots__ = ("generation", "value")

    def __init__(self, generation: float, value: bytes) -> None:
        self.generation = generation
        self.value = value

    def __repr__(self) -> str:
        return "_Secret(<hidden>)"


def event_json(envelope: Envelope, identity_id: str, pending: PendingEvent) -> bytes:
    """The body of one delivery: the inbox API's event object, compact JSON."""
    r = pending.record
    event = open_event(envelope, identity_id, r.group_id, r.seq, r.sealed_event)
    obj = {"cursor": str(r.cursor), "group_id": base64.b64encode(r.group_id).decode(), "seq": r.seq, **event}
    return json.dumps(obj, separators=(",", ":")).encode()


class WebhookDispatcher:
    """The webhook delivery task over a store (see the module's docs); :meth:`run` until cancelled."""

    def __init__(
        self,
        store: Store,
        envelope: Envelope,
        wakeups: Wakeups,
        *,
        metrics: DeliveryMetrics | None = None,
        executor: Executor | None = None,
        options: DeliveryOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._envelope = envelope
        self._wakeups = wakeups
        self._metrics = metrics
        self._executor = executor
        self._opts = options or DeliveryOptions()
        self._rng = rng or random.Random()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    # ---- the supervisor ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Start a worker for every active webhook, now and whenever one is set or on each poll."""
        connector = aiohttp.TCPConnector(resolver=SafeResolver(self._opts.allow_private))
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            try:
                while True:
                    async with self._wakeups.watch(WEBHOOKS_CHANGED) as changed:
                        await self._start_workers()
                        await changed.wait(self._opts.poll_interval_s)
            finally:
                await self._stop_workers()

    async def _start_workers(self) -> None:
        self._workers = {i: t for i, t in self._workers.items() if not t.done()}
        try:
            hooks = await self._read(lambda tx: tx.active_webhooks())
        except StoreUnavailable as e:
            log.warning("webhook scan failed (retried later): %s", e)
            return
        for hook in hooks:
            if hook.identity_id not in self._workers:
                task = asyncio.create_task(self._serve(hook.identity_id), name="webhook-worker")
                self._workers[hook.identity_id] = task

    async def _stop_workers(self) -> None:
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    # ---- one identity's worker ----------------------------------------------------------------------
    async def _serve(self, identity_id: str) -> None:
        """Deliver the identity's events in order until its webhook is removed or paused."""
        secret: list[_Secret | None] = [None]
        try:
            while True:
                try:
                    if not await self._step(identity_id, secret):
                        return
                except StoreUnavailable as e:
                    log.warning("webhook delivery for %s paused by the store (retried): %s", identity_id, e)
                    await asyncio.sleep(self._opts.poll_interval_s)
                except Exception:
                    log.exception("webhook delivery for %s failed (retried)", identity_id)
                    await asyncio.sleep(self._opts.poll_interval_s)
        finally:
            # Let the supervisor look again (the webhook may have been resumed meanwhile).
            self._wakeups.notify([WEBHOOKS_CHANGED])

    async def _step(self, identity_id: str, secret: list[_Secret | None]) -> bool:
        """Wait for work or deliver one batch; ``False`` when the webhook is gone or paused."""
        async with self._wakeups.watch(identity_id) as woken:
            found = await self._read(lambda tx: self._next_work(tx, identity_id))
            if found is None:
                return False
            hook, events = found
            wait = self._wait_before(hook, events)
            if wait > 0:
                await woken.wait(wait)
                return True
        held = secret[0]
        if held is None or held.generation != hook.created_at:
            held = secret[0] = await self._open_secret(hook)
        await self._deliver_batch(hook, held, events)
        return True

    def _next_work(
        self, tx: Transaction, identity_id: str
    ) -> tuple[WebhookRecord, list[PendingEvent]] | None:
        hook = tx.get_webhook(identity_id)
        if hook is None or hook.paused:
            return None
        return hook, tx.webhook_backlog(identity_id, hook.delivered_cursor, BATCH)

    def _wait_before(self, hook: WebhookRecord, events: list[PendingEvent]) -> float:
        """Seconds to wait before the next attempt (the poll interval when there is nothing to send)."""
        if not events:
            return self._opts.poll_interval_s
        if hook.next_attempt_at is None:
            return 0.0
        return min(hook.next_attempt_at - time.time(), self._opts.poll_interval_s)

    async def _open_secret(self, hook: WebhookRecord) -> _Secret | None:
        try:
            value = await self._call(
                lambda: open_secret(self._envelope, hook.identity_id, hook.sealed_secret)
            )
        except HsmError as e:
            log.error("webhook secret of %s cannot be opened: %s", hook.identity_id, type(e).__name__)
            return None
        return _Secret(hook.created_at, value)

    async def _deliver_batch(
        self, hook: WebhookRecord, secret: _Secret | None, events: list[PendingEvent]
    ) -> None:
        """Send the events in order; stop at the first failure (recorded) or when the webhook changed."""
        attempts, failing_since = hook.attempts, hook.failing_since
        for pending in events:
            started = time.time()
            ok = secret is not None and await self._attempt(hook, secret, pending, retry=attempts > 0)
            if not ok:
                await self._record_failure(hook, attempts + 1, failing_since or started)
                return
            # Counted once the receiver took it (2xx), before the cursor moves: whoever sees the cursor
            # moved sees the delivery counted (a dispatcher stopped right after the move counted it too).
            if self._metrics is not None:
                self._metrics.delivered("webhook", True, time.time() - pending.created_at)
            if not await self._mark_delivered(hook, pending.record.cursor):
                return  # replaced or removed meanwhile: start again from the store
            attempts, failing_since = 0, None

    async def _mark_delivered(self, hook: WebhookRecord, cursor: int) -> bool:
        return await self._write(lambda tx: tx.webhook_delivered(hook.identity_id, hook.created_at, cursor))

    async def _attempt(
        self, hook: WebhookRecord, secret: _Secret, pending: PendingEvent, *, retry: bool
    ) -> bool:
        """One POST of one event; ``True`` on a 2xx answer."""
        if retry and self._metrics is not None:
            self._metrics.webhook_retries.inc()
        try:
            body = await self._call(lambda: event_json(self._envelope, hook.identity_id, pending))
            check_delivery_target(hook.url, self._opts.allow_private)
            status = await self._post(hook.url, body, secret.value)
        except (UnsafeTarget, aiohttp.ClientError, TimeoutError, HsmError, ValueError) as e:
            log.info("webhook delivery for %s failed: %s", hook.identity_id, type(e).__name__)
            return False
        if 200 <= status < 300:
            return True
        log.info("webhook delivery for %s failed: HTTP %d", hook.identity_id, status)
        return False

    async def _post(self, url: str, body: bytes, secret: bytes) -> int:
        assert self._session is not None
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
        timeout = aiohttp.ClientTimeout(total=self._opts.attempt_timeout_s)
        async with self._session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            await response.content.read(65536)  # a little of the answer; the rest is not needed
            return response.status

    async def _record_failure(self, hook: WebhookRecord, attempts: int, failing_since: float) -> None:
        now = time.time()
        schedule = self._opts.schedule
        paused = schedule.gives_up(failing_since, now)
        next_at = None if paused else now + schedule.delay(attempts, self._rng)
        if self._metrics is not None:
            self._metrics.delivered("webhook", False)
        if paused:
            log.warning("webhook of %s paused after failing since %.0f", hook.identity_id, failing_since)
        try:
            await self._write(
                lambda tx: tx.webhook_failed(
                    hook.identity_id,
                    hook.created_at,
                    attempts=attempts,
                    failing_since=failing_since,
                    next_attempt_at=next_at,
                    paused=paused,
                )
            )
        except StoreUnavailable as e:
            log.warning("webhook failure of %s not recorded: %s", hook.identity_id, e)
            await asyncio.sleep(self._opts.poll_interval_s)

    # ---- the store and the HSM, in the worker pool --------------------------------------------------
    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _read(self, fn: Callable[[Transaction], T]) -> T:
        def work() -> T:
            with self._store.read_transaction() as tx:
                return fn(tx)

        return await self._call(work)

    async def _write(self, fn: Callable[[Transaction], T]) -> T:
        def work() -> T:
            with self._store.transaction() as tx:
                return fn(tx)

        return await self._call(work)


async def webhook_delivery(app: web.Application) -> AsyncIterator[None]:
    """The app's webhook delivery task (``cleanup_ctx``): started with the app, cancelled at shut-down."""
    rt = app[APP]
    dispatcher = WebhookDispatcher(
        rt.store,
        rt.envelope,
        rt.service.wakeups,
        metrics=rt.metrics.delivery,
        executor=rt.executor,
        options=DeliveryOptions(allow_private=rt.config.delivery.webhook_allow_private),
    )
    body = run_while_held(app[LEASES], WEBHOOK_DELIVERY, lambda: _run_logged(dispatcher))  # one sender
    task = asyncio.create_task(body, name="webhook-delivery")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _run_logged(dispatcher: WebhookDispatcher) -> None:
    """Run the dispatcher; should it ever fail, log it and start it again after a pause."""
    while True:
        try:
            await dispatcher.run()
        except Exception:
            log.exception("webhook delivery failed; restarting it")
            await asyncio.sleep(POLL_INTERVAL_S)


__all__ = [
    "POLL_INTERVAL_S",
    "WEBHOOKS_CHANGED",
    "DeliveryOptions",
    "WebhookDispatcher",
    "event_json",
    "webhook_delivery",
]
