"""The stored audit trail: signing checkpoints over the chain head, and exporting the chain.

:class:`Checkpointer` signs a checkpoint (:mod:`gateway.audit_chain`) when ``[audit] checkpoint_records``
records were appended since the last one, or ``checkpoint_interval_s`` seconds passed and the chain grew;
:func:`audit_checkpoints` runs it in the app's background (polling the head about once a second, in the
worker pool) and once more at shutdown, after the app stopped serving and before the token closes. The
signature is made in the HSM (:class:`hsm.audit_key.AuditSigner`) outside any store transaction; the
checkpoint row is then inserted in a short one (a racing checkpoint of the same seq is ignored).

:func:`export_lines` is ``mls-gateway audit export``'s reader (and ``audit verify``'s on a data folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web

from hsm.audit_key import AuditSigner
from hsm.errors import HsmError

from .audit_chain import EXPORT_FORMAT, GENESIS, Checkpoint, checkpoint_message, record_line
from .config import AuditSettings
from .context import APP
from .leases import AUDIT_CHECKPOINTS, LEASES, run_while_held
from .store import Store, StoreUnavailable

log = logging.getLogger("mls_gateway.audit_trail")

#: Seconds between two looks at the chain head (a checkpoint is due by count or by age).
POLL_S = 1.0


class Checkpointer:
    """Signs checkpoints over the store's audit chain head (thread-safe enough: one caller at a time)."""

    def __init__(self, store: Store, signer: AuditSigner, settings: AuditSettings) -> None:
        self.store = store
        self.signer = signer
        self.settings = settings
        self._last_at = time.time()

    def due(self, now: float | None = None) -> tuple[int, bytes] | None:
        """The head to sign now, if a checkpoint is due."""
        now = time.time() if now is None else now
        with self.store.read_transaction() as tx:
            head, last = tx.audit_head(), tx.last_audit_checkpoint()
        if head is None or (last is not None and last.seq >= head[0]):
            return None
        done = 0 if last is None else last.seq
        if last is not None:
            self._last_at = max(self._last_at, last.at_ms / 1000)
        by_count = head[0] - done >= self.settings.checkpoint_records
        by_age = now - self._last_at >= self.settings.checkpoint_interval_s
        return head if by_count or by_age else None

    def checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Sign and store a checkpoint over the head when one is due (``force``: whenever the chain grew
        since the last one); returns it, or ``None``."""
        if force:
            with self.store.read_transaction() as tx:
                head, last = tx.audit_head(), tx.last_audit_checkpoint()
            if head is None or (last is not None and last.seq >= head[0]):
                return None
        else:
            due = self.due()
            if due is None:
                return None
            head = due
        seq, digest = head
        at_ms = int(time.time() * 1000)
        cp = Checkpoint(seq, digest, at_ms, self.signer.sign(checkpoint_message(seq, digest, at_ms)))
        with self.store.transaction() as tx:
            tx.add_audit_checkpoint(cp, self.signer.label)
        self._last_at = at_ms / 1000
        log.info("audit checkpoint at seq %d", seq, extra={"event": "audit_checkpoint", "seq": seq})
        return cp


async def _checkpoint_forever(app: web.Application, checkpointer: Checkpointer) -> None:
    rt = app[APP]
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(POLL_S, checkpointer.settings.checkpoint_interval_s))
        try:
            if await loop.run_in_executor(rt.background_executor, checkpointer.checkpoint) is not None:
                rt.metrics.audit_checkpoints.inc()
        except (HsmError, StoreUnavailable) as e:
            log.warning("audit checkpoint failed (retried): %s", e)


async def audit_checkpoints(app: web.Application) -> AsyncIterator[None]:
    """The app's checkpoint task; at shutdown a last checkpoint over the head (registered before the
    other background tasks, so its clean-up runs after theirs: nothing is appended after it)."""
    rt = app[APP]
    checkpointer = Checkpointer(rt.store, AuditSigner(rt.token), rt.config.audit)
    keeper = app[LEASES]  # one process at a time checkpoints (gateway.leases)
    body = run_while_held(keeper, AUDIT_CHECKPOINTS, lambda: _checkpoint_forever(app, checkpointer))
    task = asyncio.create_task(body, name="audit-checkpoints")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if not keeper.held(AUDIT_CHECKPOINTS):
        return  # the holder's next checkpoint covers this process's last records
    try:
        cp = await asyncio.get_running_loop().run_in_executor(
            rt.background_executor, lambda: checkpointer.checkpoint(force=True)
        )
        if cp is not None:
            rt.metrics.audit_checkpoints.inc()
    except (HsmError, StoreUnavailable) as e:
        log.warning("audit checkpoint at shutdown failed: %s", e)


def export_lines(
    store: Store, *, since: float | None = None, until: float | None = None, tenant: str | None = None
) -> Iterator[dict[str, Any]]:
    """The export's lines (:mod:`gateway.audit_chain`, "Export"), read in one snapshot."""
    with store.read_transaction() as tx:
        span = tx.audit_seq_range(since, until)
        lo, hi = span if span is not None else (1, 0)
        anchor = (tx.audit_prev_hash(lo) if lo > 1 else None) or GENESIS
        if since is None:  # the whole chain from its start: a removed first record shows
            lo, anchor = 1, GENESIS
        header = {
            "type": "header",
            "format": EXPORT_FORMAT,
            "from_seq": lo,
            "to_seq": hi,
            "anchor": anchor.hex(),
            "tenant": tenant,
            "since": since,
            "until": until,
            "exported_at": time.time(),
        }
        yield header
        for row in tx.audit_rows(lo, hi):
            fields = dict(zip(row.keys(), tuple(row), strict=True))
            yield record_line(fields, link_only=tenant is not None and fields["tenant_id"] != tenant)
        for cp in tx.audit_checkpoints(lo if since is not None else 0, hi if until is not None else None):
            yield cp.line()


__all__ = ["POLL_S", "Checkpointer", "audit_checkpoints", "export_lines"]
