"""Retention per tenant, legal hold, and the background task that purges what is due.

What is kept, and for how long (seconds; the defaults are the configuration's, a tenant may override each):

* ``mailbox_s`` — unacknowledged mailbox items and inbox events (default ``[delivery] mailbox_retention_s``);
* ``idempotency_s`` — stored responses of ``Idempotency-Key`` requests (default ``[gateway]
  idempotency_retention_s``; at least 24 h, api-v1.md "Conventions"); the replay window itself stays the
  configured one, so a tenant's override only changes when its records are deleted;
* ``audit_s`` — audit records (default ``[audit] retention_s``).

The ``outgoing`` table of older schemas is gone (schema version 4), so there is nothing of it to keep.

**Legal hold** (``PUT /v1/tenants/{tenant_id}/legal-hold``, admin tokens only: a tenant cannot lift its own
hold) suspends the purging of the tenant's audit records; its mailbox items and idempotency records, which
are transient delivery state rather than records, are still purged. The hold is a field of the retention
document (read-only there).

**The task** (:func:`retention_task`, every ``[retention] interval_s``, the first run at start-up) purges
each tenant in one transaction of its own: mailbox/inbox items, idempotency records, and — unless on hold —
audit records. Audit records are *erased* in place, never deleted, so the chain still verifies
(:mod:`gateway.audit_chain`, "Purged records"); every run that purged something appends one audit record
per tenant (operation ``retention_purge``) with the counts and the digest of the erased rows. Records of no
tenant (admin requests, reconciliation) and of deleted tenants follow the defaults. Policy changes are
audited too (operation ``retention_policy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from .audit_chain import PURGE_OPERATION, purge_digest
from .auth import Principal, new_id
from .config import GatewayConfig
from .context import APP
from .errors import invalid, not_found
from .leases import LEASES, RETENTION, run_while_held
from .metrics import Metrics
from .persistence import Json
from .sqlite_audit import RetentionRow
from .store import AuditRecord, Store, StoreUnavailable, Transaction

log = logging.getLogger("mls_gateway.retention")

POLICY_OPERATION = "retention_policy"
#: Audit rows one run erases per tenant at most (its transaction stays short; the next run goes on).
ERASE_BATCH = 5000
#: api-v1.md (Conventions): a stored response is kept at least 24 h.
MIN_IDEMPOTENCY_S = 24 * 3600.0
_MAX_S = 100 * 365 * 24 * 3600
_FIELDS = ("mailbox_s", "idempotency_s", "audit_s")


@dataclass(frozen=True)
class Purged:
    """What one run purged for one tenant (``tenant_id`` ``None``: records of no existing tenant)."""

    tenant_id: str | None
    mailbox: int = 0
    idempotency: int = 0
    audit: int = 0
    audit_seq: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.mailbox or self.idempotency or self.audit)


def _whole(seconds: float | None) -> int | None:
    """An override as the whole seconds it was set in (the store may hand a number back as a float)."""
    return None if seconds is None else int(seconds)


class Retention:
    """Retention policies (stored per tenant over the configured defaults) and the purge run."""

    def __init__(self, store: Store, config: GatewayConfig, metrics: Metrics | None = None) -> None:
        self.store = store
        self.defaults = {
            "mailbox_s": config.delivery.mailbox_retention_s,
            "idempotency_s": config.idempotency_retention_s,
            "audit_s": config.audit.retention_s,
        }
        self.metrics = metrics

    # ---- policies ----------------------------------------------------------------------------------
    def document(self, row: RetentionRow) -> Json:
        """The retention document: the tenant's overrides, what applies, and its legal hold."""
        overrides = {name: _whole(getattr(row, name)) for name in _FIELDS}
        effective = {
            name: overrides[name] if overrides[name] is not None else self.defaults[name] for name in _FIELDS
        }
        return {"tenant_id": row.tenant_id, **overrides, "effective": effective, "legal_hold": row.legal_hold}

    def show(self, principal: Principal, tenant_id: str) -> Json:
        """``GET /v1/tenants/{tenant_id}/retention``."""
        with self.store.read_transaction() as tx:
            return self.document(_row(tx, principal, tenant_id))

    def put(self, principal: Principal, tenant_id: str, body: dict[str, Any], request_id: str) -> Json:
        """``PUT /v1/tenants/{tenant_id}/retention``: replace the overrides (absent or ``null``: default)."""
        if "legal_hold" in body:
            raise invalid("legal_hold is set with PUT /v1/tenants/{tenant_id}/legal-hold (admin tokens only)")
        values = {name: _seconds(body.get(name), name) for name in _FIELDS}
        idem = values["idempotency_s"]
        if idem is not None and idem < MIN_IDEMPOTENCY_S:
            raise invalid("idempotency_s must be at least 86400 (api-v1.md: kept at least 24 h)")
        audit = values["audit_s"]
        with self.store.transaction() as tx:
            current = _row(tx, principal, tenant_id)  # 404 for another tenant's id, before anything else
            if audit is not None and audit < self.defaults["audit_s"] and not principal.is_admin:
                # a tenant must not be able to erase its own audit trail: only an admin shortens it
                raise invalid("audit_s below the configured default is set with an admin token only")
            row = replace(
                current,
                mailbox_s=values["mailbox_s"],
                idempotency_s=values["idempotency_s"],
                audit_s=values["audit_s"],
            )
            tx.put_retention(row)
            tx.add_audit([_policy_record(request_id, principal, row)])
        return self.document(row)

    def set_legal_hold(
        self, principal: Principal, tenant_id: str, body: dict[str, Any], request_id: str
    ) -> Json:
        """``PUT /v1/tenants/{tenant_id}/legal-hold`` (admin): ``{enabled: bool}``."""
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise invalid("enabled must be true or false")
        with self.store.transaction() as tx:
            row = replace(_row(tx, principal, tenant_id), legal_hold=enabled)
            tx.put_retention(row)
            tx.add_audit([_policy_record(request_id, principal, row)])
        self.refresh_gauge()
        return self.document(row)

    def refresh_gauge(self) -> None:
        if self.metrics is not None:
            with self.store.read_transaction() as tx:
                self.metrics.tenants_on_legal_hold.set(tx.count_legal_holds())

    # ---- purging -----------------------------------------------------------------------------------
    def run(self, now: float | None = None) -> list[Purged]:
        """Purge every tenant (one transaction each), then the records of no tenant; returns what went."""
        now = time.time() if now is None else now
        run_id = new_id("ret")
        with self.store.read_transaction() as tx:
            tenants = [t.tenant_id for t in tx.list_tenants()]
        done = [self._purge_tenant(run_id, tenant_id, now) for tenant_id in tenants]
        done.append(self._purge_orphans(run_id, now))
        for purged in done:
            if purged.any:
                log.info(
                    "retention purged %d mailbox items, %d idempotency records, %d audit records",
                    purged.mailbox,
                    purged.idempotency,
                    purged.audit,
                    extra={"event": "retention_purge", "tenant_id": purged.tenant_id, "run_id": run_id},
                )
            if self.metrics is not None:
                for kind in ("mailbox", "idempotency", "audit"):
                    self.metrics.retention_purged.labels(kind).inc(getattr(purged, kind))
        self.refresh_gauge()
        return done

    def _purge_tenant(self, run_id: str, tenant_id: str, now: float) -> Purged:
        with self.store.transaction() as tx:
            row = tx.get_retention(tenant_id) or RetentionRow(tenant_id)
            keep = self.document(row)["effective"]
            mailbox = tx.purge_tenant_mailbox_items(tenant_id, now - keep["mailbox_s"])
            idem = tx.purge_tenant_idempotent(tenant_id, now - keep["idempotency_s"])
            erased = [] if row.legal_hold else _erasable(tx, tenant_id, now - keep["audit_s"])
            return _record(tx, Purged(tenant_id, mailbox, idem), run_id, erased, row.legal_hold)

    def _purge_orphans(self, run_id: str, now: float) -> Purged:
        with self.store.transaction() as tx:
            mailbox, idem = tx.purge_orphan_rows(
                now - self.defaults["mailbox_s"], now - self.defaults["idempotency_s"]
            )
            erased = _erasable(tx, None, now - self.defaults["audit_s"])
            return _record(tx, Purged(None, mailbox, idem), run_id, erased, False)


def _erasable(tx: Transaction, tenant_id: str | None, older_than: float) -> list[tuple[int, bytes]]:
    """At most :data:`ERASE_BATCH` audit rows a run erases per tenant (bounds the transaction; the next
    run takes the rest)."""
    return tx.erasable_audit(tenant_id, older_than, ERASE_BATCH)


def _record(
    tx: Transaction, purged: Purged, run_id: str, erased: list[tuple[int, bytes]], hold: bool
) -> Purged:
    """Append the purge's audit record (when anything went) and erase the audit rows it accounts for."""
    purged = replace(purged, audit=len(erased))
    if not purged.any:
        return purged
    detail = json.dumps(
        {
            "mailbox_items": purged.mailbox,
            "idempotency_records": purged.idempotency,
            "audit_records": purged.audit,
            "audit_digest": purge_digest(erased).hex(),
            "audit_seqs": [erased[0][0], erased[-1][0]] if erased else None,
            "legal_hold": hold,
        },
        sort_keys=True,
    )
    record = AuditRecord(
        run_id, purged.tenant_id, None, None, None, b"", PURGE_OPERATION, "none", True, None, detail
    )
    [seq] = tx.append_audit([record])
    if erased:
        tx.erase_audit([s for s, _ in erased], seq)
    return replace(purged, audit_seq=seq)


def _row(tx: Transaction, principal: Principal, tenant_id: str) -> RetentionRow:
    """The tenant's stored row (defaults when none); 404 for a tenant token of another tenant."""
    if principal.tenant_id is not None and principal.tenant_id != tenant_id:
        raise not_found("tenant")
    if tx.get_tenant(tenant_id) is None:
        raise not_found("tenant")
    return tx.get_retention(tenant_id) or RetentionRow(tenant_id)


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_S:
        raise invalid(f"{name} must be whole seconds from 1 to 100 years, or null for the default")
    return float(value)


def _policy_record(request_id: str, principal: Principal, row: RetentionRow) -> AuditRecord:
    detail = json.dumps(
        {**{name: getattr(row, name) for name in _FIELDS}, "legal_hold": row.legal_hold}, sort_keys=True
    )
    return AuditRecord(
        request_id,
        row.tenant_id,
        None,
        None,
        None,
        b"",
        POLICY_OPERATION,
        "none",
        True,
        principal.token_id,
        detail,
    )


async def _retention_forever(app: web.Application) -> None:
    rt = app[APP]
    retention = Retention(rt.store, rt.config, rt.metrics)
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(rt.background_executor, retention.run)
        except StoreUnavailable as e:
            log.warning("retention run failed (retried later): %s", e)
        await asyncio.sleep(rt.config.retention.interval_s)


async def retention_task(app: web.Application) -> AsyncIterator[None]:
    """The app's retention task: a run at start-up, then every ``[retention] interval_s``."""
    body = run_while_held(app[LEASES], RETENTION, lambda: _retention_forever(app))  # gateway.leases
    task = asyncio.create_task(body, name="retention")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["POLICY_OPERATION", "Purged", "Retention", "retention_task"]
