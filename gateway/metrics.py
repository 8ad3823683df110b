"""Prometheus metrics of one gateway process (``GET /metrics``).

Labels are route templates, methods, status codes, operation names and outcomes: never ids, keys or
secrets. Every app has its own registry, so tests can run several apps in one process; the standard
process, platform and GC collectors are registered on it, and prometheus-client's aiohttp handler serves it.

**Several workers** (``serve --workers N``, :mod:`gateway.supervisor`): whichever worker accepts a scrape
answers it, so each answer covers all of them. prometheus-client's multiprocess mode: the supervisor gives
every worker one per-run folder (``$PROMETHEUS_MULTIPROC_DIR``), each worker's samples live in its own
memory-mapped files there, and ``/metrics`` serves the sums over the folder (``MultiProcessCollector``).
Counters and histograms add up over every worker that ever ran in this run (a
restarted worker's counts stay: totals never go down between scrapes); each gauge says how it combines
(its ``multiprocess_mode``): sessions in use add up over the live workers, counts read from the store are the
most recent reading, readiness is the lowest of the live workers. The per-process ``process_*`` and
``python_gc_*`` families are left out then (one worker's would stand for all).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from aiohttp.typedefs import Handler
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.multiprocess import MultiProcessCollector

from hsm.audit import AuditEvent

from .delivery_metrics import DeliveryMetrics

#: How a gauge's samples of several workers combine (prometheus-client's ``multiprocess_mode``; ignored
#: by a single process): counts read from the store are the most recent reading of any live worker.
STORE_READING: Final = "livemostrecent"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        #: What ``/metrics`` serves: this registry, or every worker's samples (see the module doc).
        self.exposition = r
        folder = os.environ.get(MULTIPROC_DIR_ENV)
        #: Whether the samples are several workers' (prometheus-client's multiprocess mode).
        self.multiprocess = bool(folder)
        if folder:
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=folder)  # type: ignore[no-untyped-call]
            PlatformCollector(registry=self.exposition)
        else:  # the standard process_*, python_info and python_gc_* families, on this app's registry
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        #: prometheus-client's aiohttp handler serving the exposition (``GET /metrics``).
        self.handler: Handler = make_aiohttp_handler(self.exposition)
        self.http_requests = Counter(
            "mlsgw_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "mlsgw_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mls_ops = Counter("mlsgw_mls_operations", "MLS operations", ["operation", "outcome"], registry=r)
        self.mls_latency = Histogram(
            "mlsgw_mls_operation_duration_seconds",
            "MLS operation latency",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.hsm_ops = Counter(
            "mlsgw_hsm_operations", "Private-key operations", ["operation", "custody", "outcome"], registry=r
        )
        self.hsm_errors = Counter(
            "mlsgw_hsm_errors", "HSM errors (unavailable or refused)", ["kind"], registry=r
        )
        self.orphans_destroyed = Counter(
            "mlsgw_hsm_orphans_destroyed", "Orphaned keys destroyed by reconciliation", ["kind"], registry=r
        )
        self.hsm_sessions = Gauge(
            "mlsgw_hsm_sessions_in_use", "HSM worker sessions in use", registry=r, multiprocess_mode="livesum"
        )
        self.identities = Gauge(
            "mlsgw_identities", "Hosted identities", registry=r, multiprocess_mode=STORE_READING
        )
        self.groups = Gauge(
            "mlsgw_groups",
            "Group memberships of hosted identities",
            registry=r,
            multiprocess_mode=STORE_READING,
        )
        self.state_cache_hits = Counter(
            "mlsgw_state_cache_hits", "Group state loads served by the decoded-state cache", registry=r
        )
        self.state_cache_misses = Counter(
            "mlsgw_state_cache_misses", "Group state loads that unsealed and decoded the state", registry=r
        )
        self.backend = Gauge(
            "mlsgw_crypto_backend_info",
            "Crypto backend in use (1 for the active one)",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.delivery = DeliveryMetrics(r)
        #: 1 in the process holding the lease of a background task, else 0 (gateway.leases).
        self.lease_held = Gauge(
            "mlsgw_lease_held",
            "1 while this process holds the lease of a background task",
            ["lease"],
            registry=r,
        )
        self.ready = Gauge(
            "mlsgw_ready",
            "1 when the gateway's last readiness check passed (HSM answers, store writable), else 0",
            registry=r,
            multiprocess_mode="livemin",
        )
        # Audit chain and retention (gateway.audit_chain, gateway.retention).
        self.tenants_on_legal_hold = Gauge(
            "mlsgw_tenants_on_legal_hold",
            "Tenants whose audit records are held from purging",
            registry=r,
            multiprocess_mode=STORE_READING,
        )
        self.retention_purged = Counter(
            "mlsgw_retention_purged", "Rows purged by retention", ["kind"], registry=r
        )
        self.audit_checkpoints = Counter(
            "mlsgw_audit_checkpoints", "Audit chain checkpoints signed in the HSM", registry=r
        )
        # abuse resistance (issue 17)
        self.client_disconnects = Counter(
            "mlsgw_http_client_disconnects",
            "Requests whose client hung up before the answer (counted as status 499, never 5xx)",
            ["route"],
            registry=r,
        )
        self.refused = Counter(
            "mlsgw_requests_refused",
            "Requests refused by a limit before any work (quota, tenant queue, media type, timeout)",
            ["code"],
            registry=r,
        )

        # erasure at rest (gateway.sqlite_erasure): how far behind the background checkpoint is
        self.erasure_pending = Gauge(
            "mlsgw_erasure_pending_seconds",
            "Age of the oldest replaced or deleted sealed state not yet erased from the SQLite files",
            registry=r,
            multiprocess_mode="livemax",  # the worker furthest behind
        )
        self.erasure_checkpoints = Counter(
            "mlsgw_erasure_checkpoints",
            "Erasure checkpoints run by this process (incomplete: a reader held an older snapshot)",
            ["outcome"],
            registry=r,
        )
        self._erasure_seen = (0, 0)

    def erasure_progress(self, pending_s: float, runs: int, incomplete: int) -> None:
        """The erasure metrics from the eraser's totals (``WalErasure.progress``, gateway.sqlite_erasure)."""
        self.erasure_pending.set(pending_s)
        seen_runs, seen_incomplete = self._erasure_seen
        if runs >= seen_runs and incomplete >= seen_incomplete:  # totals of the same eraser
            self.erasure_checkpoints.labels("incomplete").inc(incomplete - seen_incomplete)
            complete = (runs - incomplete) - (seen_runs - seen_incomplete)
            self.erasure_checkpoints.labels("complete").inc(complete)
        self._erasure_seen = (runs, incomplete)

    def key_use(self, event: AuditEvent) -> None:
        self.hsm_ops.labels(event.operation, event.custody, "ok" if event.ok else "error").inc()

    def state_cache_lookup(self, hit: bool) -> None:
        (self.state_cache_hits if hit else self.state_cache_misses).inc()

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.exposition)
