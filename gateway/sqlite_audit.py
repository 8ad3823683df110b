"""The store's audit chain, checkpoints and retention rows over SQLite (:mod:`gateway.audit_chain`,
:mod:`gateway.retention`).

:func:`append_chained` is the audit insert path: inside the caller's write transaction (``BEGIN
IMMEDIATE``, so writers are serialised) it reads the chain's last ``(seq, hash)`` and inserts each record
with the next ``seq``, ``prev_hash`` and its ``hash``. On PostgreSQL a record whose seq nobody asks for
is linked to the head by the database instead, in the statement that inserts it (:func:`add_chained`,
:mod:`gateway.postgres_audit`). Rows are never deleted; retention *erases* a row's
contents in place (the only update the ``audit_erase_only`` trigger allows, :mod:`gateway.sqlite_schema`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .audit_chain import GENESIS, PURGE_OPERATION, Checkpoint, record_hash
from .sqlite_queries import SqliteQueries
from .sqlite_tenants import _like

if TYPE_CHECKING:  # gateway.store builds its Transaction from this module's protocol
    from .store import AuditRecord


@dataclass(frozen=True)
class RetentionRow:
    """A tenant's stored retention overrides (``None``: the configured default) and its legal hold."""

    tenant_id: str
    mailbox_s: float | None = None
    idempotency_s: float | None = None
    audit_s: float | None = None
    legal_hold: bool = False


def record_fields(a: AuditRecord, at: float) -> dict[str, Any]:
    """A record's columns but its place in the chain (``seq``, ``prev_hash``, ``hash``)."""
    return {
        "at": at,
        "request_id": a.request_id,
        "tenant_id": a.tenant_id,
        "identity_id": a.identity_id,
        "token_id": a.token_id,
        "group_id": a.group_id,
        "epoch": a.epoch,
        "key_ref": a.key_ref,
        "operation": a.operation,
        "custody": a.custody,
        "ok": int(a.ok),
        "detail": a.detail,
    }


def append_chained(conn: sqlite3.Connection, records: list[AuditRecord]) -> list[int]:
    """Insert ``records`` at the chain's end (in the caller's write transaction); returns their seqs."""
    if not records:
        return []
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq = int(last[0]) if last else 0
    prev = bytes(last[1]) if last and last[1] is not None else GENESIS
    now = time.time()
    seqs = []
    for a in records:
        seq += 1
        row: dict[str, Any] = {"seq": seq, **record_fields(a, now), "prev_hash": prev}
        row["hash"] = prev = record_hash(row)
        columns, marks = ", ".join(row), ", ".join("?" * len(row))
        conn.execute(f"INSERT INTO audit ({columns}) VALUES ({marks})", tuple(row.values()))
        seqs.append(seq)
    return seqs


def add_chained(conn: sqlite3.Connection, records: list[AuditRecord]) -> None:
    """Append ``records`` to the chain, their seqs not needed: where the database links them to the head
    itself — PostgreSQL, ``link_audit`` of :class:`gateway.postgres_sql.PgConnection`, whose writes then
    wait for ``COMMIT`` — in no round trip of their own; else :func:`append_chained`."""
    link = getattr(conn, "link_audit", None)
    if link is None:
        append_chained(conn, records)
    elif records:
        link(records)


class AuditTransaction(Protocol):
    """The audit chain and retention methods of :class:`gateway.store.Transaction`."""

    def append_audit(self, records: list[AuditRecord]) -> list[int]:
        """:func:`append_chained` in this transaction."""
        ...

    def audit_head(self) -> tuple[int, bytes] | None:
        """The chain's last ``(seq, hash)``, or ``None`` before its first chained record."""
        ...

    def last_audit_checkpoint(self) -> Checkpoint | None: ...
    def add_audit_checkpoint(self, checkpoint: Checkpoint, key_label: str) -> None: ...
    def audit_checkpoints(self, from_seq: int, to_seq: int | None) -> list[Checkpoint]: ...
    def audit_seq_range(self, since: float | None, until: float | None) -> tuple[int, int] | None:
        """The first and last seq of the records written in ``[since, until]`` (the chain is in seq order)."""
        ...

    def audit_rows(self, from_seq: int, to_seq: int) -> Iterator[sqlite3.Row]: ...
    def audit_prev_hash(self, seq: int) -> bytes | None: ...
    def erasable_audit(self, tenant_id: str | None, older_than: float, limit: int) -> list[tuple[int, bytes]]:
        """``(seq, hash)`` of the tenant's chained records written before ``older_than`` not yet erased
        (``None``: records of no tenant, or of a deleted one); purge records are never erased."""
        ...

    def erase_audit(self, seqs: list[int], purged_by: int) -> int: ...
    def get_retention(self, tenant_id: str) -> RetentionRow | None: ...
    def put_retention(self, row: RetentionRow) -> None: ...
    def purge_tenant_mailbox_items(self, tenant_id: str, older_than: float) -> int: ...
    def purge_tenant_idempotent(self, tenant_id: str, older_than: float) -> int: ...
    def purge_orphan_rows(self, mailbox_before: float, idempotency_before: float) -> tuple[int, int]:
        """Mailbox items of no existing tenant (deleted concurrently) written before ``mailbox_before``
        and the admin's idempotency records stored before ``idempotency_before``: how many of each."""
        ...

    def count_legal_holds(self) -> int: ...


def _at_bound(sql: str, op: str, at: float | None) -> tuple[Any, ...]:
    """``sql`` and its arguments with ``WHERE at <op> ?`` when there is a bound — not a nullable
    parameter (``? IS NULL OR …``), whose type PostgreSQL cannot infer with server-side binding."""
    return (sql,) if at is None else (f"{sql} WHERE at {op} ?", at)


class SqliteAuditMixin(SqliteQueries):
    """The :class:`AuditTransaction` methods of :class:`gateway.sqlite_store.SqliteTransaction`."""

    def append_audit(self, records: list[AuditRecord]) -> list[int]:
        return append_chained(self._c, records)

    def audit_head(self) -> tuple[int, bytes] | None:
        r = self._one("SELECT seq, hash FROM audit WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1")
        return None if r is None else (int(r["seq"]), bytes(r["hash"]))

    def last_audit_checkpoint(self) -> Checkpoint | None:
        r = self._one("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        return None if r is None else _checkpoint(r)

    def add_audit_checkpoint(self, checkpoint: Checkpoint, key_label: str) -> None:
        self._c.execute(
            "INSERT INTO audit_checkpoints (seq, head, at_ms, signature, key_label) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING",
            (checkpoint.seq, checkpoint.head, checkpoint.at_ms, checkpoint.signature, key_label),
        )

    def audit_checkpoints(self, from_seq: int, to_seq: int | None) -> list[Checkpoint]:
        # No nullable parameter (``? IS NULL``): with server-side binding PostgreSQL infers no type for it.
        if to_seq is None:
            rows = self._all("SELECT * FROM audit_checkpoints WHERE seq >= ? ORDER BY seq", from_seq)
        else:
            sql = "SELECT * FROM audit_checkpoints WHERE seq BETWEEN ? AND ? ORDER BY seq"
            rows = self._all(sql, from_seq, to_seq)
        return [_checkpoint(r) for r in rows]

    def audit_seq_range(self, since: float | None, until: float | None) -> tuple[int, int] | None:
        lo = self._one(*_at_bound("SELECT MIN(seq) AS s FROM audit", ">=", since))
        hi = self._one(*_at_bound("SELECT MAX(seq) AS s FROM audit", "<=", until))
        if lo is None or hi is None or lo["s"] is None or hi["s"] is None or lo["s"] > hi["s"]:
            return None
        return int(lo["s"]), int(hi["s"])

    def audit_rows(self, from_seq: int, to_seq: int) -> Iterator[sqlite3.Row]:
        return iter(
            self._c.execute("SELECT * FROM audit WHERE seq BETWEEN ? AND ? ORDER BY seq", (from_seq, to_seq))
        )

    def audit_prev_hash(self, seq: int) -> bytes | None:
        r = self._one("SELECT prev_hash FROM audit WHERE seq = ?", seq)
        return None if r is None or r["prev_hash"] is None else bytes(r["prev_hash"])

    def erasable_audit(self, tenant_id: str | None, older_than: float, limit: int) -> list[tuple[int, bytes]]:
        args: tuple[str, ...] = ()
        if tenant_id is None:
            whose = "(tenant_id IS NULL OR tenant_id NOT IN (SELECT tenant_id FROM tenants))"
        else:
            whose, args = "tenant_id = ?", (tenant_id,)
        rows = self._all(
            f"SELECT seq, hash FROM audit WHERE {whose} AND at < ? AND purged_by IS NULL "
            "AND hash IS NOT NULL AND operation != ? ORDER BY seq LIMIT ?",
            *args,
            older_than,
            PURGE_OPERATION,
            limit,
        )
        return [(int(r["seq"]), bytes(r["hash"])) for r in rows]

    def erase_audit(self, seqs: list[int], purged_by: int) -> int:
        cur = self._c.executemany(
            "UPDATE audit SET request_id = '', identity_id = NULL, token_id = NULL, group_id = NULL, "
            "epoch = NULL, key_ref = ?, operation = '', custody = '', ok = 0, detail = NULL, purged_by = ? "
            "WHERE seq = ? AND purged_by IS NULL",
            [(b"", purged_by, seq) for seq in seqs],
        )
        return int(cur.rowcount)

    def get_retention(self, tenant_id: str) -> RetentionRow | None:
        r = self._one("SELECT * FROM tenant_retention WHERE tenant_id = ?", tenant_id)
        if r is None:
            return None
        return RetentionRow(
            r["tenant_id"], r["mailbox_s"], r["idempotency_s"], r["audit_s"], bool(r["legal_hold"])
        )

    def put_retention(self, row: RetentionRow) -> None:
        self._c.execute(
            "INSERT INTO tenant_retention (tenant_id, mailbox_s, idempotency_s, audit_s, legal_hold, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET "
            "mailbox_s = excluded.mailbox_s, idempotency_s = excluded.idempotency_s, "
            "audit_s = excluded.audit_s, legal_hold = excluded.legal_hold, updated_at = excluded.updated_at",
            (row.tenant_id, row.mailbox_s, row.idempotency_s, row.audit_s, int(row.legal_hold), time.time()),
        )

    def purge_tenant_mailbox_items(self, tenant_id: str, older_than: float) -> int:
        mailbox = self._c.execute(
            "DELETE FROM mailbox WHERE tenant_id = ? AND created_at < ?", (tenant_id, older_than)
        ).rowcount
        inbox = self._c.execute(
            "DELETE FROM inbox WHERE created_at < ? AND identity_id IN "
            "(SELECT identity_id FROM identities WHERE tenant_id = ?)",
            (older_than, tenant_id),
        ).rowcount
        return int(mailbox) + int(inbox)

    def purge_tenant_idempotent(self, tenant_id: str, older_than: float) -> int:
        t = _like(tenant_id)
        cur = self._c.execute(
            "DELETE FROM idempotency WHERE created_at < ? "
            "AND (scope LIKE ? ESCAPE '\\' OR scope LIKE ? ESCAPE '\\')",
            (older_than, f"{t}:%", f"{t}/%"),
        )
        return int(cur.rowcount)

    def purge_orphan_rows(self, mailbox_before: float, idempotency_before: float) -> tuple[int, int]:
        boxes = self._c.execute(
            "DELETE FROM mailbox WHERE created_at < ? AND tenant_id NOT IN (SELECT tenant_id FROM tenants)",
            (mailbox_before,),
        ).rowcount
        idem = self._c.execute(
            "DELETE FROM idempotency WHERE created_at < ? AND scope LIKE 'admin:%'", (idempotency_before,)
        ).rowcount
        return int(boxes), int(idem)

    def count_legal_holds(self) -> int:
        r = self._one(
            "SELECT COUNT(*) AS n FROM tenant_retention WHERE legal_hold = 1 "
            "AND tenant_id IN (SELECT tenant_id FROM tenants)"
        )
        return int(r["n"]) if r else 0


def _checkpoint(r: sqlite3.Row) -> Checkpoint:
    return Checkpoint(int(r["seq"]), bytes(r["head"]), int(r["at_ms"]), bytes(r["signature"]))


__all__ = [
    "AuditTransaction",
    "RetentionRow",
    "SqliteAuditMixin",
    "add_chained",
    "append_chained",
    "record_fields",
]
