"""KEK rotation online: new KEK versions in the token, every blob re-wrapped under them, old ones destroyed.

The gateway has two kinds of key-encryption key in the token (docs/architecture.md "Custody and KEK
rotation"): the **envelope** wrap key, which wraps the data keys of sealed state (:mod:`hsm.envelope`,
labels ``mlsgw/wrap/vN``), and the wrapped-custody **custody** KEK, which wraps private keys kept outside
the token (:mod:`hsm.wrapped_keys`, labels ``mlsgw/kek/vN``). The ``keks`` table lists every version of
both with its state: ``current`` (new seals and wraps use it), ``retiring`` (blobs may still name it) or
``destroyed`` (gone from the token). Every gateway process reads the table at start-up and every ``[hsm]
kek_poll_s`` (and at once when a blob names a KEK it does not know), so all of them seal under the
current KEK soon after a rotation.

A rotation (:meth:`KekRotation.rotate`, ``mls-gateway keys rotate-kek``):

1. makes the next version's key in the token and, in one transaction, marks it ``current`` and the one
   before ``retiring`` (audited ``kek_create``);
2. re-wraps, in batches of ``[hsm] kek_rewrap_batch`` (:meth:`KekRotation.step`): every envelope blob of
   :data:`gateway.sqlite_rewrap.SEALED_COLUMNS` — a version 3 blob only has its key record re-wrapped (its
   ciphertext is untouched), once per data key — and every wrapped private key (unwrapped under the old
   KEK and wrapped under the new one inside the token). Each row is written by compare-and-swap on the
   bytes it was read with, so a request that wrote the row meanwhile is never lost; the key operations
   are audited (``wrap``/``unwrap`` with the KEK's label as key reference, ``rewrap`` with custody
   ``wrapped:<label>``). The running server does this in the background; the command does it too (both
   at once are safe);
3. destroys a retiring KEK in the token once nothing names it and ``[hsm] kek_retire_grace_s`` has passed
   since its rotation — the time every process has to notice the new current KEK (a process that sealed
   with a data key still wrapped under the old KEK after that would write blobs nothing can open, so the
   grace must stay well above ``kek_poll_s``); audited ``kek_destroy``.

A crash at any point leaves a state the next pass resumes from: the table says which KEK is current and
which are retiring, and the rows say what they are sealed under. Progress: ``mlsgw_kek_rewrap_remaining``
(by ``kind``), ``mlsgw_kek_rewrapped_total`` (by ``kind``), ``mlsgw_kek_versions`` (by ``state``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from hsm.audit import caller
from hsm.envelope import DEFAULT_WRAP_LABEL, Envelope
from hsm.errors import EnvelopeError, HsmError, HsmUnavailable
from hsm.kek_ring import create_aes_token_key, destroy_aes_token_key, kek_id
from hsm.token import Token
from hsm.wrapped_keys import WrappedKeys
from hsm.wrapping import DEFAULT_KEK_LABEL
from mls import MLSError

from . import audit
from .context import APP
from .leases import KEK_REWRAP, LEASES
from .postgres_store import PostgresStore
from .sqlite_rewrap import SEALED_COLUMNS, KekRow
from .sqlite_store import SqliteStore
from .store import AuditRecord, StoreUnavailable

log = logging.getLogger("mls_gateway")

#: The two kinds of KEK, and the label of each one's version N.
KINDS = ("envelope", "custody")
_LABEL = {"envelope": "mlsgw/wrap/v{}", "custody": "mlsgw/kek/v{}"}
#: Version 1 of each kind: what databases made before KEK rotation used.
FIRST_LABEL = {"envelope": DEFAULT_WRAP_LABEL, "custody": DEFAULT_KEK_LABEL}
STATES = ("current", "retiring", "destroyed")


class KekRotationError(Exception):
    """A rotation that cannot go ahead (another one made the same version, no current KEK...)."""


class KekMetrics:
    """The rotation's metrics, on the app's registry (labels: kinds and states only)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.remaining = Gauge(
            "mlsgw_kek_rewrap_remaining",
            "Blobs still naming a retiring KEK",
            ["kind"],
            registry=registry,
            multiprocess_mode="livemostrecent",  # a store reading (gateway.metrics.STORE_READING)
        )
        self.rewrapped = Counter(
            "mlsgw_kek_rewrapped", "Blobs re-wrapped under the current KEK", ["kind"], registry=registry
        )
        self.versions = Gauge(
            "mlsgw_kek_versions",
            "KEK versions by state",
            ["state"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.handle_hits = Counter(
            "mlsgw_wrapped_key_cache_hits",
            "Wrapped-custody key uses served by a session object",
            registry=registry,
        )
        self.handle_misses = Counter(
            "mlsgw_wrapped_key_cache_misses",
            "Wrapped-custody key uses that unwrapped the key",
            registry=registry,
        )
        self._seen = (0, 0)

    def handle_cache(self, hits: int, misses: int) -> None:
        """Count the wrapped-key cache's hits and misses since the last call."""
        self.handle_hits.inc(max(0, hits - self._seen[0]))
        self.handle_misses.inc(max(0, misses - self._seen[1]))
        self._seen = (hits, misses)


@dataclass
class RotationReport:
    """What a run of :meth:`KekRotation.run` did."""

    created: list[str] = field(default_factory=list)
    rewrapped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: Kind -> the rows that did not open (``table.column:rowid``, or a wrapped key's reference in hex).
    failed_rows: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in KINDS})
    remaining: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    destroyed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> dict[str, int]:
        return {kind: len(rows) for kind, rows in self.failed_rows.items()}

    def to_json(self) -> dict[str, object]:
        return {
            "created": self.created,
            "rewrapped": self.rewrapped,
            "failed": self.failed,
            "remaining": self.remaining,
            "destroyed": self.destroyed,
        }

    def summary(self) -> str:
        return (
            f"KEK rotation: created {', '.join(self.created) or 'none'}; re-wrapped {self.rewrapped}; "
            f"failed {self.failed}; remaining {self.remaining}; "
            f"destroyed {', '.join(self.destroyed) or 'none'}"
        )


class KekRotation:
    """The KEK versions of one gateway database and token, and the re-wrap of its blobs (thread-safe)."""

    def __init__(
        self,
        store: SqliteStore | PostgresStore,
        token: Token,
        envelope: Envelope,
        wrapped: WrappedKeys,
        *,
        batch: int = 256,
        grace_s: float = 60.0,
        metrics: KekMetrics | None = None,
    ) -> None:
        self.store = store
        self.token = token
        self.envelope = envelope
        self.wrapped = wrapped
        self.batch = batch
        self.grace_s = grace_s
        self.metrics = metrics
        self._lock = threading.Lock()  # one re-wrap batch at a time in this process
        self._cursors: dict[str, int | bytes] = {}  # where the next batch of each table starts
        envelope.keks.resolver = lambda: self._labels("envelope")
        wrapped.keks.resolver = lambda: self._labels("custody")

    # ---- the keks table ------------------------------------------------------------------------------
    def bootstrap(self) -> dict[str, str]:
        """Register version 1 of each kind when the table has none (a database from before KEK rotation),
        make the token keys of the current versions if missing, and use them; the current labels."""
        with self.store.transaction() as tx:
            known = {row.kind for row in tx.list_keks()}
            for kind in KINDS:
                if kind not in known:
                    tx.add_kek(FIRST_LABEL[kind], kind, 1, "current")
        current = self.current(self.refresh())
        for kind, label in current.items():
            create_aes_token_key(self.token, label, wraps=kind == "custody", op=f"create {kind} kek")
        return current

    def keks(self) -> list[KekRow]:
        with self.store.read_transaction() as tx:
            return tx.list_keks()

    @staticmethod
    def current(rows: Iterable[KekRow]) -> dict[str, str]:
        """Kind -> label of its current KEK."""
        return {row.kind: row.label for row in rows if row.state == "current"}

    def refresh(self) -> list[KekRow]:
        """Read the table; seal and wrap under the current KEKs, keep opening under the retiring ones."""
        rows = self.keks()
        current = self.current(rows)
        if set(current) != set(KINDS):
            raise KekRotationError("the keks table has no current KEK of every kind")
        for kind, target in (("envelope", self.envelope), ("custody", self.wrapped)):
            target.know_keks(r.label for r in rows if r.kind == kind and r.state == "retiring")
            target.use_kek(current[kind])
        if self.metrics is not None:
            for state in STATES:
                self.metrics.versions.labels(state).set(sum(r.state == state for r in rows))
        return rows

    def _labels(self, kind: str) -> list[str]:
        return [r.label for r in self.keks() if r.kind == kind and r.state != "destroyed"]

    # ---- rotate ------------------------------------------------------------------------------------
    def rotate(self, kinds: Iterable[str] = KINDS) -> list[str]:
        """Make the next KEK version of each of ``kinds`` in the token and current in the table."""
        run_id = _run_id()
        created = []
        for kind in kinds:
            rows = [r for r in self.refresh() if r.kind == kind]
            version = max(r.version for r in rows) + 1
            label = _LABEL[kind].format(version)
            create_aes_token_key(self.token, label, wraps=kind == "custody", op=f"create {kind} kek")
            with self.store.transaction() as tx:
                if not tx.add_kek(label, kind, version, "current"):
                    raise KekRotationError(f"another rotation made {label} meanwhile")
                tx.make_current(label, kind)
                tx.add_audit([_record(run_id, label, "kek_create", True)])
            log.info(
                "KEK rotation: %s KEK %s is current", kind, label, extra={"event": "kek_create", "kek": label}
            )
            created.append(label)
        self.refresh()
        return created

    # ---- re-wrap -----------------------------------------------------------------------------------
    def step(self, report: RotationReport | None = None) -> RotationReport:
        """One batch of re-wraps of each kind (at most ``batch`` rows each); the rows re-wrapped are
        counted in ``report``. A blob that does not open (tampered, or under a KEK that is gone) is
        counted as failed and left as it is: its KEK is then never destroyed."""
        report = report if report is not None else RotationReport()
        with self._lock, caller(request_id=_run_id()):
            self._rewrap_sealed(report)
            self._rewrap_wrapped(report)
        return report

    def _rewrap_sealed(self, report: RotationReport) -> None:
        current, left = kek_id(self.envelope.label), self.batch
        for column in SEALED_COLUMNS:
            if left <= 0:
                return
            after = int(self._cursors.get(column.name, 0))
            with self.store.read_transaction() as tx:
                rows = tx.stale_sealed_rows(column, current, left, after)
            self._cursors[column.name] = rows[-1].rowid if len(rows) == left else 0
            moved = []
            with audit.collecting() as records:
                for row in rows:
                    try:
                        moved.append((row, self.envelope.rewrap(row.blob, row.aad)))
                    except EnvelopeError as e:
                        report.failed_rows["envelope"].add(f"{column.name}:{row.rowid}")
                        log.warning("KEK rotation: %s row %d not re-wrapped: %s", column.name, row.rowid, e)
                with self.store.transaction() as tx:
                    done = sum(tx.swap_sealed(column, row.rowid, row.blob, new) for row, new in moved)
                    tx.add_audit(audit.take(records))
            left -= len(rows)
            self._count(report, "envelope", done)

    def _rewrap_wrapped(self, report: RotationReport) -> None:
        current = self.wrapped.kek_id
        after = bytes(self._cursors.get("wrapped_keys", b""))
        with self.store.read_transaction() as tx:
            rows = tx.stale_wrapped_keys(current, self.batch, after)
        self._cursors["wrapped_keys"] = rows[-1][0] if len(rows) == self.batch else b""
        moved = []
        with audit.collecting() as records:
            for key_ref, blob in rows:
                try:
                    moved.append((key_ref, blob, self.wrapped.rewrap_blob(key_ref, blob)))
                except (HsmUnavailable, StoreUnavailable):
                    raise
                except (HsmError, MLSError) as e:
                    report.failed_rows["custody"].add(key_ref.hex())
                    log.warning("KEK rotation: wrapped key %s not re-wrapped: %s", key_ref.hex()[:16], e)
            with self.store.transaction() as tx:
                done = sum(tx.swap_wrapped_key(ref, old, new, new[2:10]) for ref, old, new in moved)
                tx.add_audit(audit.take(records))
        self._count(report, "custody", done)

    def _count(self, report: RotationReport, kind: str, done: int) -> None:
        report.rewrapped[kind] += done
        if self.metrics is not None and done:
            self.metrics.rewrapped.labels(kind).inc(done)

    def references(self) -> dict[tuple[str, str], int]:
        """(kind, KEK label) -> blobs naming it (version 1 envelope blobs name the first wrap key; a KEK id
        the table does not know is reported as ``unknown:<id>``)."""
        by_id = {kek_id(r.label): r.label for r in self.keks()}
        counts: dict[tuple[str, str], int] = {}

        def add(kind: str, kid: bytes | None, n: int) -> None:
            label = FIRST_LABEL[kind] if kid is None else by_id.get(kid, f"unknown:{kid.hex()}")
            counts[kind, label] = counts.get((kind, label), 0) + n

        with self.store.read_transaction() as tx:
            for column in SEALED_COLUMNS:
                for kid, n in tx.sealed_kek_counts(column).items():
                    add("envelope", kid, n)
            for kid, n in tx.wrapped_kek_counts().items():
                add("custody", kid, n)
        return counts

    def remaining(self) -> dict[str, int]:
        """Kind -> blobs naming another KEK than the current one of their kind."""
        current = self.current(self.keks())
        out = dict.fromkeys(KINDS, 0)
        for (kind, label), n in self.references().items():
            if label != current.get(kind):
                out[kind] += n
        if self.metrics is not None:
            for kind, n in out.items():
                self.metrics.remaining.labels(kind).set(n)
        return out

    # ---- destroy -----------------------------------------------------------------------------------
    def retire(self, now: float | None = None) -> list[str]:
        """Destroy in the token every retiring KEK that nothing names any more and whose grace is over."""
        now = time.time() if now is None else now
        rows = self.refresh()
        due = [r for r in rows if r.state == "retiring" and (r.retired_at or 0.0) + self.grace_s <= now]
        if not due:
            return []
        references = self.references()
        destroyed = []
        for row in due:
            if references.get((row.kind, row.label), 0):
                continue
            n = destroy_aes_token_key(self.token, row.label, op="destroy kek")
            with self.store.transaction() as tx:
                tx.mark_kek_destroyed(row.label)
                tx.add_audit([_record(_run_id(), row.label, "kek_destroy", True)])
            log.info(
                "KEK rotation: %s KEK %s destroyed (%d token object%s)",
                row.kind,
                row.label,
                n,
                "" if n == 1 else "s",
                extra={"event": "kek_destroy", "kek": row.label},
            )
            destroyed.append(row.label)
        self.refresh()
        return destroyed

    def pending(self) -> bool:
        """Whether some KEK is retiring (a rotation is not finished)."""
        return any(r.state == "retiring" for r in self.keks())

    # ---- whole runs --------------------------------------------------------------------------------
    def run(self, *, sleep: Callable[[float], None] = time.sleep, wait: bool = True) -> RotationReport:
        """Re-wrap until nothing names a retiring KEK, then (``wait``) wait out the grace, re-wrap what a
        slow process sealed meanwhile, and destroy the retiring KEKs (the command's pass)."""
        report = RotationReport()
        self.refresh()
        self._drain(report)
        if wait:
            retiring = [r for r in self.keks() if r.state == "retiring"]
            due = max(((r.retired_at or 0.0) + self.grace_s for r in retiring), default=0.0)
            if due > time.time():
                log.info(
                    "KEK rotation: waiting %.0f s (grace) before destroying the old KEKs", due - time.time()
                )
                sleep(due - time.time())
            self._drain(report)
            report.destroyed = self.retire()
        report.remaining = self.remaining()
        return report

    def _drain(self, report: RotationReport) -> None:
        self._cursors.clear()
        while True:
            before = dict(report.rewrapped)
            self.step(report)
            if report.rewrapped == before and not self._cursors_open():
                return

    def _cursors_open(self) -> bool:
        return any(v for v in self._cursors.values())

    def tick(self, *, rewrap: bool = True) -> None:
        """The server's periodic pass: read the table; while a KEK is retiring and ``rewrap`` (this
        process holds the re-wrap lease, gateway.leases), one re-wrap batch, the destruction of what is
        due and the count of what remains (tables are scanned only then)."""
        retiring = any(r.state == "retiring" for r in self.refresh())  # every process follows the KEKs
        if retiring and rewrap:
            self.step()
            self.retire()
            self.remaining()
        elif not retiring and self.metrics is not None:
            for kind in KINDS:
                self.metrics.remaining.labels(kind).set(0)
        if self.metrics is not None:
            self.metrics.handle_cache(self.wrapped.hits, self.wrapped.misses)


def _run_id() -> str:
    return f"kek-{secrets.token_hex(8)}"


def _record(run_id: str, label: str, operation: str, ok: bool) -> AuditRecord:
    return AuditRecord(run_id, None, None, None, None, label.encode(), operation, "pkcs11", ok)


# ---- in the app -------------------------------------------------------------------------------------------


async def _rotate_forever(
    rotation: KekRotation, executor: Executor, poll_s: float, rewrap: Callable[[], bool]
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(executor, lambda: rotation.tick(rewrap=rewrap()))
        except (HsmUnavailable, StoreUnavailable, HsmError, KekRotationError) as e:
            log.warning("KEK rotation pass skipped (retried later): %s: %s", type(e).__name__, e)
        except Exception:  # a bug must not stop this process from following the current KEK
            log.exception("KEK rotation pass failed (retried later)")
        await asyncio.sleep(poll_s)


async def kek_rotation_task(app: web.Application) -> AsyncIterator[None]:
    """The app's KEK task: reads the current KEKs, re-wraps and destroys while a rotation is pending."""
    rt = app[APP]
    rotation = rt.kek_rotation
    keeper = app[LEASES]  # re-wrap and destruction in one process at a time; every one reads the KEKs
    if rotation is None:
        yield
        return
    task = asyncio.create_task(
        _rotate_forever(
            rotation, rt.background_executor, rt.config.hsm.kek_poll_s, lambda: keeper.held(KEK_REWRAP)
        ),
        name="kek-rotation",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = [
    "FIRST_LABEL",
    "KINDS",
    "KekMetrics",
    "KekRotation",
    "KekRotationError",
    "RotationReport",
    "kek_rotation_task",
]
