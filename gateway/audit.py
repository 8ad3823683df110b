"""The audit trail of private-key use: every sign, DH, generate, import and destroy of a hosted key.

The HSM key store reports each use to :func:`record_key_use` (attached as its audit hook). Events are
buffered for the current request (a context variable holding a list, set in the worker thread that runs
the request's operation, inside the request's copied context: :func:`gateway.api.respond` runs it with
``loop.run_in_executor(executor, contextvars.copy_context().run, ...)``) and written to the append-only
``audit`` table in the same transaction as the request's state change — or in a transaction of their own
when the request fails — and logged as one line each, with the record's fields as the line's extra fields
(:mod:`gateway.logs`: ``key=value`` in text, members of the object in JSON). Only references and names
are recorded: never key material. A record says who (tenant, identity, the caller's token id), what key,
which operation, in which group and epoch, for which request; the store chains every record to the one
before it and the chain is checkpointed under the HSM's audit key (:mod:`gateway.audit_chain`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from hsm.audit import AuditEvent

from .store import AuditRecord

log = logging.getLogger("mls_gateway.audit")

_buffer: ContextVar[list[AuditRecord] | None] = ContextVar("audit_buffer", default=None)


def record_key_use(event: AuditEvent) -> None:
    """The HSM audit hook: turn an event into an audit record of the current request."""
    ctx = event.context
    epoch = ctx.get("epoch")
    group = ctx.get("group_id")
    record = AuditRecord(
        request_id=ctx.get("request_id", "-"),
        tenant_id=ctx.get("tenant_id"),
        identity_id=ctx.get("identity_id"),
        group_id=bytes.fromhex(group) if group else None,
        epoch=int(epoch) if epoch else None,
        key_ref=event.key_ref,
        operation=event.operation,
        custody=event.custody,
        ok=event.ok,
        token_id=ctx.get("token_id"),
    )
    log.info(
        "key_use %s %s %s",
        event.operation,
        event.custody,
        "ok" if event.ok else "failed",
        extra={
            "event": "key_use",
            "request_id": record.request_id,
            "tenant_id": record.tenant_id,
            "token_id": record.token_id,
            "identity_id": record.identity_id,
            "group_id": group,
            "epoch": record.epoch,
            "key_ref": event.key_ref.hex(),
            "operation": event.operation,
            "custody": event.custody,
            "ok": event.ok,
        },
    )
    buffer = _buffer.get()
    if buffer is not None:
        buffer.append(record)


@contextmanager
def collecting() -> Iterator[list[AuditRecord]]:
    """Collect the audit records of key uses made inside the block (in this context)."""
    records: list[AuditRecord] = []
    token = _buffer.set(records)
    try:
        yield records
    finally:
        _buffer.reset(token)


def take(records: list[AuditRecord]) -> list[AuditRecord]:
    """The records collected so far, leaving the buffer empty (so none is written twice)."""
    out = list(records)
    records.clear()
    return out
