"""What one running gateway holds: store, HSM token and key store, service, metrics, worker pool, locks."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from hsm.envelope import Envelope
from hsm.keystore import Pkcs11KeyStore
from hsm.token import Token
from mls import get_backend

from .auth import Principal
from .config import GatewayConfig
from .mailboxes import refresh_depths
from .metrics import Metrics
from .readiness import store_write_probe
from .request_limits import TenantScheduler
from .service import GatewayService
from .sqlite_erasure import WalErasure
from .store import Store, StoreUnavailable

if TYPE_CHECKING:
    from .kek_rotation import KekRotation


class GroupLocks:
    """One asyncio lock per group (or identity): requests on it are serialised, others run in parallel."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        async with lock:
            yield


@dataclass
class Runtime:
    config: GatewayConfig
    store: Store
    token: Token
    keys: Pkcs11KeyStore
    envelope: Envelope
    service: GatewayService
    metrics: Metrics
    executor: ThreadPoolExecutor
    locks: GroupLocks = field(default_factory=GroupLocks)
    #: What the token can keep wrapped (the start-up probe of :class:`hsm.wrapped_keys.WrappedKeys`).
    wrapped_custody: object = None
    #: The KEK versions and their rotation (:mod:`gateway.kek_rotation`).
    kek_rotation: KekRotation | None = None
    #: Token checks on a store whose lookup is not local: a pool of their own (``auth_threads``), never
    #: queued behind the workers.
    control_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="mlsgw-auth")
    )
    #: Readiness checks and the gauges of ``/metrics``: one thread, apart from both (a hung HSM check
    #: delays neither token checks nor work).
    probe_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="mlsgw-probe")
    )
    #: The lease-held maintenance tasks (audit checkpoints, KEK rotation, key reconciliation, retention):
    #: one thread of their own, so that a long pass does not take one of the few worker threads.
    background_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="mlsgw-background")
    )
    #: Fair admission of requests to :attr:`executor`, per tenant (gateway.request_limits).
    scheduler: TenantScheduler = field(default_factory=lambda: TenantScheduler(8, 4, 256))

    def readiness(self) -> list[str]:
        """What is not ready (empty when the HSM session pool answers and the store takes writes: its
        write lock is free within ``readiness_write_timeout_s``, so a write would not answer 503)."""
        problems = []
        try:
            self.token.check()
        except Exception as e:  # any failure means "not ready"; the reason is reported by class only
            problems.append(f"hsm: {type(e).__name__}")
        try:
            self.store.ping()
        except StoreUnavailable as e:
            problems.append(f"store: {e}")
        else:
            problem = store_write_probe(self.store, self.config.readiness_write_timeout_s)
            if problem is not None:
                problems.append(f"store: {problem}")
        self.metrics.ready.set(0 if problems else 1)
        return problems

    def refresh_metrics(self) -> None:
        """Set the gauges read from the token and the store (blocking: run it in the worker pool)."""
        m = self.metrics
        status = self.token.status()
        m.hsm_sessions.set(float(status.get("sessions_in_use", 0)))
        with self.store.read_transaction() as tx:
            counts = tx.counts()
        m.identities.set(counts["identities"])
        m.groups.set(counts["groups"])
        refresh_depths(m.delivery, self.store)
        erasure = getattr(self.store, "erasure", None)  # a SQLite store's (gateway.sqlite_erasure)
        if isinstance(erasure, WalErasure):
            m.erasure_progress(*erasure.progress())
        if not m.multiprocess:  # no clear() in multiprocess mode; a worker's backend never changes
            m.backend.clear()
        m.backend.labels(get_backend().name).set(1)

    def render_metrics(self) -> bytes:
        """The registry in the Prometheus text format, gauges refreshed first."""
        return self.metrics.render(self.refresh_metrics)


APP: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
RAW_BODY: web.RequestKey[bytes] = web.RequestKey("raw_body", bytes)
#: The route template of a request that reached the app (set by its middleware; logs and metrics).
ROUTE_LABEL: web.RequestKey[str] = web.RequestKey("route_label", str)
