"""Reconciliation of orphaned keys: private keys no database record references are destroyed.

A request makes its keys before its transaction commits (KeyPackage init and leaf keys, a signature key, a
commit's new leaf key); when it fails the keys are destroyed (:mod:`gateway.persistence`), but a process
killed mid-request — or a token outage mid-batch — leaves them in the token (or in ``software_keys``)
for good. :class:`Reconciler` finds and destroys them:

1. **list** the key store's keys: the token's key objects of this gateway's ID/label scheme
   (:func:`hsm.inventory.store_key_refs`, a search under the object-store guard; the wrap key and other
   objects are never listed), the software keys at rest in ``software_keys`` and the wrapped-custody
   blobs in ``wrapped_keys`` (destroying one deletes its blob: :mod:`hsm.wrapped_keys`);
2. **then** read every reference of the database (:func:`referenced_keys`): each identity's signature
   key, the init and leaf keys of KeyPackages not consumed (or last-resort), and every membership's keys
   (:func:`gateway.group_session.membership_keys`, its retained keys and signer). Listing first means a
   key that becomes referenced while this runs is only ever *reported* as an orphan, never missed as a
   reference. KeyPackages are read before groups: a join moves a KeyPackage's leaf key into a group,
   never the other way;
3. **destroy** the orphans that are due, each audited (operation ``reconcile_destroy`` in the ``audit``
   table, with the store's own ``destroy`` record) and counted (``mlsgw_hsm_orphans_destroyed_total``
   by ``kind`` = ``token`` | ``software`` | ``wrapped``); one summary line is logged per run.

**Grace: two passes.** A key an in-flight request just made is not referenced yet. The key store records
no creation time (PKCS#11's ``CKA_START_DATE`` is a date, and the ``software_keys`` table has no time), so
an orphan is destroyed only when it was an orphan in every run since it was first seen, and first seen
at least ``grace_s`` ago (:class:`OrphanTracker`, monotonic clock, in memory): with the default grace
(600 s) and interval (600 s) that is the second run after a crash. A request would have to keep a key
unreferenced longer than the grace for it to be taken. ``grace_s = 0`` destroys in one pass: only for a
gateway that is stopped (``mls-gateway keys reconcile --grace-s 0``).

**Several processes** (:mod:`gateway.leases`): one process at a time reconciles (the
``key-reconciliation`` lease). A key another process made for a request still in flight is in the
listing but not referenced: the grace holds across processes because it is measured from this process's
own first sighting, on its monotonic clock (no clock is compared across machines), and a request would
have to keep its key unreferenced for ``grace_s``. Each time the lease is taken the grace starts afresh
(sightings of an earlier holding period are not "every run since": another process reconciled
meanwhile), and :attr:`Reconciler.guard` (the lease still held) is checked before each destruction.

If any reference cannot be read (a membership that does not open, the store or the token unavailable),
the run destroys nothing: an unread reference could be a live key.

One token and label prefix per gateway database: a token shared with another gateway database under the
same prefix would see that gateway's keys as orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hsm.audit import caller
from hsm.errors import HsmUnavailable
from hsm.inventory import debris, store_key_refs
from hsm.keystore import Pkcs11KeyStore
from hsm.kinds import parse_ref
from hsm.token import Token
from mls import MLSError

from . import audit
from .context import APP, Runtime
from .group_session import GroupSessions
from .key_references import ReferencesUnreadable, referenced_keys
from .leases import KEY_RECONCILIATION, LEASES, run_while_held
from .store import AuditRecord, Store, StoreUnavailable

log = logging.getLogger("mls_gateway")

#: The key store's label prefix (``hsm.keystore.Pkcs11KeyStore``'s default, which the gateway uses).
LABEL_PREFIX = "mlsgw"


#: The orphan that stands for a crash's debris: key objects without an ID or a label
#: (:func:`hsm.inventory.debris`), swept from a token the gateway owns whole; its reference is empty.
DEBRIS = b""


def kind_of(key_ref: bytes) -> str:
    """``software`` for a software key at rest, ``wrapped`` for a wrapped-custody blob at rest, ``token``
    for a token object (the metric's label)."""
    parsed = parse_ref(key_ref)
    if parsed is not None and parsed[1] in ("software", "wrapped"):
        return parsed[1]
    return "token"


# ---- grace -------------------------------------------------------------------------------------------------


class OrphanTracker:
    """The two-pass grace: when each current orphan was first seen (in consecutive runs)."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._first_seen: dict[bytes, float] = {}

    def due(self, orphans: Iterable[bytes], *, remember: bool = True) -> list[bytes]:
        """The orphans first seen at least ``grace_s`` ago and orphans ever since; ``remember`` records
        this run's sightings (and forgets keys that are no orphans any more)."""
        now = self._clock()
        seen = {ref: self._first_seen.get(ref, now) for ref in orphans}
        if remember:
            self._first_seen = seen
        return sorted(ref for ref, first in seen.items() if now - first >= self.grace_s)

    def forget(self, ref: bytes) -> None:
        self._first_seen.pop(ref, None)

    def __len__(self) -> int:
        return len(self._first_seen)


# ---- one run ----------------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    """What one run found and did."""

    dry_run: bool
    token_keys: int = 0
    software_keys: int = 0
    wrapped_keys: int = 0
    referenced: int = 0
    orphans: dict[str, int] = field(default_factory=lambda: {"token": 0, "software": 0, "wrapped": 0})
    #: Orphans destroyed (or, in a dry run, that would be).
    destroyed: list[bytes] = field(default_factory=list)
    failed: list[bytes] = field(default_factory=list)
    seconds: float = 0.0

    def destroyed_by_kind(self) -> dict[str, int]:
        counts = {"token": 0, "software": 0, "wrapped": 0}
        for ref in self.destroyed:
            counts[kind_of(ref)] += 1
        return counts

    def waiting(self) -> int:
        """Orphans not destroyed yet because their grace has not passed."""
        return sum(self.orphans.values()) - len(self.destroyed) - len(self.failed)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "token_keys": self.token_keys,
            "software_keys": self.software_keys,
            "wrapped_keys": self.wrapped_keys,
            "referenced": self.referenced,
            "orphans": dict(self.orphans),
            "destroyed": self.destroyed_by_kind(),
            "destroyed_refs": [r.hex() for r in self.destroyed],
            "failed": len(self.failed),
            "waiting": self.waiting(),
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        d = self.destroyed_by_kind()
        verb = "would destroy" if self.dry_run else "destroyed"
        return (
            f"key reconciliation: {self.token_keys} token keys, {self.software_keys} software keys, "
            f"{self.referenced} referenced; orphans {self.orphans['token']} token / "
            f"{self.orphans['software']} software / {self.orphans['wrapped']} wrapped; {verb} {d['token']} "
            f"token / {d['software']} software / {d['wrapped']} wrapped, "
            f"{len(self.failed)} failed, {self.waiting()} within grace; {self.seconds:.2f} s"
        )


class Reconciler:
    """Finds and destroys orphaned keys (see the module docstring); one per process (it holds the grace)."""

    def __init__(
        self,
        store: Store,
        keys: Pkcs11KeyStore,
        token: Token,
        sessions: GroupSessions,
        *,
        grace_s: float,
        on_destroyed: Callable[[str], None] | None = None,
        prefix: str = LABEL_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        owns_token: bool = False,
    ) -> None:
        self.store = store
        self.keys = keys
        self.token = token
        self.sessions = sessions
        self.tracker = OrphanTracker(grace_s, clock)
        self.on_destroyed = on_destroyed
        self.prefix = prefix
        #: The token is the gateway's alone (its embedded SoftHSM token): crash debris may be swept.
        self.owns_token = owns_token
        #: Checked before each destruction; a run stops when it is false (the app: the lease is held).
        self.guard: Callable[[], bool] = lambda: True

    @classmethod
    def of(cls, rt: Runtime, grace_s: float | None = None) -> Reconciler:
        """The reconciler of a running gateway (its metrics count the destructions)."""
        return cls(
            rt.store,
            rt.keys,
            rt.token,
            rt.service.identities.sessions,
            grace_s=rt.config.reconcile_grace_s if grace_s is None else grace_s,
            on_destroyed=lambda kind: rt.metrics.orphans_destroyed.labels(kind).inc(),
            owns_token=rt.config.embedded_softhsm,
        )

    def run(self, *, dry_run: bool = False) -> ReconcileReport:
        """One pass: list, read references, destroy the due orphans (none in a dry run)."""
        started = time.perf_counter()
        report = ReconcileReport(dry_run)
        token_refs = store_key_refs(self.token, self.prefix)  # before the references: see the docstring
        with self.store.read_transaction() as tx:
            software_refs = set(tx.list_software_key_refs())
            wrapped_refs = set(tx.list_wrapped_key_refs())
        referenced = referenced_keys(self.store, self.sessions)
        orphans = (token_refs | software_refs | wrapped_refs) - referenced
        if self.owns_token and debris(self.token, self.prefix):
            orphans.add(DEBRIS)
        report.token_keys, report.software_keys = len(token_refs), len(software_refs)
        report.wrapped_keys = len(wrapped_refs)
        report.referenced = len(referenced)
        for ref in orphans:
            report.orphans[kind_of(ref)] += 1
        due = self.tracker.due(orphans, remember=not dry_run)
        if dry_run:
            report.destroyed = due
        else:
            self._destroy_all(due, report)
        report.seconds = time.perf_counter() - started
        return report

    def _destroy_all(self, due: list[bytes], report: ReconcileReport) -> None:
        run_id = "reconcile-" + secrets.token_hex(8)
        with caller(request_id=run_id):
            for ref in due:
                if not self.guard():
                    log.warning("key reconciliation stopped: this process no longer holds its lease")
                    return
                (report.destroyed if self._destroy(ref, run_id) else report.failed).append(ref)

    def _destroy(self, ref: bytes, run_id: str) -> bool:
        """Destroy one orphan and write its audit records; False if the token refused (logged). An
        unavailable token or store ends the run."""
        kind = kind_of(ref)
        with audit.collecting() as records:
            ok = True
            try:
                if ref == DEBRIS:
                    debris(self.token, self.prefix, destroy=True)
                else:
                    self.keys.destroy(ref)
            except HsmUnavailable:
                raise
            except MLSError as e:
                ok = False
                log.warning("key reconciliation: could not destroy %s (%s)", ref.hex()[:16], type(e).__name__)
            records.append(_audit_record(run_id, ref, kind, ok))
            with self.store.transaction() as tx:
                tx.add_audit(audit.take(records))
        if ok:
            self.tracker.forget(ref)
            if self.on_destroyed is not None:
                self.on_destroyed(kind)
        return ok


def _audit_record(run_id: str, ref: bytes, kind: str, ok: bool) -> AuditRecord:
    custody = kind if kind in ("software", "wrapped") else "pkcs11"
    log.info(
        json.dumps(
            {"event": "reconcile_destroy", "request_id": run_id, "key_ref": ref.hex(), "custody": custody}
        )
    )
    return AuditRecord(run_id, None, None, None, None, ref, "reconcile_destroy", custody, ok)


# ---- in the app -------------------------------------------------------------------------------------------


async def _reconcile_forever(rt: Runtime, reconciler: Reconciler) -> None:
    """Reconcile now and every ``[gateway] reconcile_interval_s``, in the worker pool."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            report = await loop.run_in_executor(rt.background_executor, reconciler.run)
            log.info("%s", report.summary())
        except (ReferencesUnreadable, HsmUnavailable, StoreUnavailable, MLSError) as e:
            log.warning("key reconciliation skipped (retried later): %s: %s", type(e).__name__, e)
        await asyncio.sleep(rt.config.reconcile_interval_s)


async def key_reconciliation(app: web.Application) -> AsyncIterator[None]:
    """The app's reconciliation task: started with the app, cancelled (and awaited) at shutdown."""
    rt = app[APP]
    keeper = app[LEASES]

    def reconcile() -> Awaitable[None]:
        # A fresh grace each time the lease is taken: sightings of an earlier holding period are not
        # "every run since" (another process reconciled meanwhile); the lease is checked before each
        # destruction.
        reconciler = Reconciler.of(rt)
        reconciler.guard = lambda: keeper.held(KEY_RECONCILIATION)
        return _reconcile_forever(rt, reconciler)

    body = run_while_held(keeper, KEY_RECONCILIATION, reconcile)
    task = asyncio.create_task(body, name="key-reconciliation")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = [
    "OrphanTracker",
    "ReconcileReport",
    "Reconciler",
    "ReferencesUnreadable",
    "key_reconciliation",
]
