"""SQLite implementation of the group service's store methods (:mod:`gateway.delivery_store`): group logs,
members, entries, the writing and reading of mailboxes and inboxes, and hosted members' pending work."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from .delivery_store import (
    HostedWork,
    InboxRecord,
    LogConflict,
    LogEntry,
    LogHead,
    LogPosition,
    MailboxRecord,
    Member,
    message_digest,
)
from .sqlite_queries import SqliteQueries


def _head(r: sqlite3.Row) -> LogHead:
    return LogHead(
        r["tenant_id"],
        r["group_id"],
        r["cipher_suite"],
        r["epoch"],
        r["seq"],
        r["group_info"],
        r["ratchet_tree"],
    )


def _entry(r: sqlite3.Row) -> LogEntry:
    return LogEntry(
        r["seq"],
        r["epoch"],
        r["kind"],
        r["sender"],
        r["message"],
        r["welcome"],
        r["group_info"],
        r["ratchet_tree"],
        r["created_at"],
    )


_INBOX_INSERT = "INSERT INTO inbox (identity_id, group_id, seq, event, created_at) VALUES (?, ?, ?, ?, ?)"


class SqliteDeliveryMixin(SqliteQueries):
    """The log and mailbox/inbox methods of :class:`gateway.sqlite_store.SqliteTransaction`."""

    # ---- the log ---------------------------------------------------------------------------------------
    def get_log_head(self, tenant_id: str, group_id: bytes) -> LogHead | None:
        r = self._one("SELECT * FROM group_logs WHERE tenant_id = ? AND group_id = ?", tenant_id, group_id)
        return None if r is None else _head(r)

    def get_log_position(self, tenant_id: str, group_id: bytes) -> LogPosition | None:
        r = self._one(
            "SELECT tenant_id, group_id, cipher_suite, epoch, seq FROM group_logs "
            "WHERE tenant_id = ? AND group_id = ?",
            tenant_id,
            group_id,
        )
        return None if r is None else LogPosition(r[0], r[1], r[2], r[3], r[4])

    def advance_log_seq(self, position: LogPosition, seq: int) -> None:
        cur = self._c.execute(
            "UPDATE group_logs SET seq = ?, updated_at = ? WHERE tenant_id = ? AND group_id = ? AND seq = ?",
            (seq, time.time(), position.tenant_id, position.group_id, position.seq),
        )
        self._expect(cur, 1, LogConflict("the group's log moved on concurrently"))

    def put_log_head(self, head: LogHead, expected_seq: int | None) -> None:
        now = time.time()
        values = (head.cipher_suite, head.epoch, head.seq, head.group_info, head.ratchet_tree, now)
        if expected_seq is None:
            cur = self._c.execute(  # no exception: a failed statement would abort a PostgreSQL transaction
                "INSERT INTO group_logs (cipher_suite, epoch, seq, group_info, ratchet_tree, updated_at, "
                "tenant_id, group_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant_id, group_id) DO NOTHING",
                (*values, head.tenant_id, head.group_id, now),
            )
            if cur.rowcount != 1:
                raise LogConflict("the group's log was created concurrently")
            return
        cur = self._c.execute(
            "UPDATE group_logs SET cipher_suite = ?, epoch = ?, seq = ?, group_info = ?, ratchet_tree = ?, "
            "updated_at = ? WHERE tenant_id = ? AND group_id = ? AND seq = ?",
            (*values, head.tenant_id, head.group_id, expected_seq),
        )
        self._expect(cur, 1, LogConflict("the group's log moved on concurrently"))

    def append_log_entries(self, tenant_id: str, group_id: bytes, entries: list[LogEntry]) -> None:
        now = time.time()
        self._c.executemany(
            "INSERT INTO log_entries (tenant_id, group_id, seq, epoch, kind, sender, message, welcome, "
            "group_info, ratchet_tree, digest, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    tenant_id,
                    group_id,
                    e.seq,
                    e.epoch,
                    e.kind,
                    e.sender,
                    e.message,
                    e.welcome,
                    e.group_info,
                    e.ratchet_tree,
                    message_digest(e.message),
                    now,
                )
                for e in entries
            ],
        )
        welcomes = [(tenant_id, group_id, e.seq, message_digest(e.welcome)) for e in entries if e.welcome]
        self._c.executemany(
            "INSERT INTO log_welcomes (tenant_id, group_id, seq, digest) VALUES (?, ?, ?, ?)", welcomes
        )

    def log_entries(self, tenant_id: str, group_id: bytes, after_seq: int, up_to_seq: int) -> list[LogEntry]:
        rows = self._c.execute(
            "SELECT * FROM log_entries WHERE tenant_id = ? AND group_id = ? AND seq > ? AND seq <= ? "
            "ORDER BY seq",
            (tenant_id, group_id, after_seq, up_to_seq),
        ).fetchall()
        return [_entry(r) for r in rows]

    def welcome_entries(self, tenant_id: str, group_id: bytes, up_to_seq: int) -> list[LogEntry]:
        rows = self._all(
            "SELECT * FROM log_entries WHERE tenant_id = ? AND group_id = ? AND welcome IS NOT NULL "
            "AND seq <= ? ORDER BY seq DESC",
            tenant_id,
            group_id,
            up_to_seq,
        )
        return [_entry(r) for r in rows]

    def log_seq_of(self, tenant_id: str, group_id: bytes, digest: bytes) -> int | None:
        r = self._one(
            "SELECT seq FROM log_entries WHERE tenant_id = ? AND group_id = ? AND digest = ?",
            tenant_id,
            group_id,
            digest,
        )
        return None if r is None else int(r[0])

    def welcome_log(self, tenant_id: str, digest: bytes) -> tuple[bytes, int] | None:
        """The (group id, seq) of the commit a Welcome with this SHA-256 came with, in this tenant."""
        r = self._one(
            "SELECT group_id, seq FROM log_welcomes WHERE tenant_id = ? AND digest = ?", tenant_id, digest
        )
        return None if r is None else (bytes(r["group_id"]), int(r["seq"]))

    def get_members(self, tenant_id: str, group_id: bytes) -> list[Member]:
        rows = self._c.execute(
            "SELECT leaf_index, endpoint_id FROM group_members WHERE tenant_id = ? AND group_id = ? "
            "ORDER BY leaf_index",
            (tenant_id, group_id),
        ).fetchall()
        return [Member(r["leaf_index"], r["endpoint_id"]) for r in rows]

    def get_delivered_members(self, tenant_id: str, group_id: bytes) -> list[Member]:
        rows = self._c.execute(
            "SELECT leaf_index, endpoint_id FROM group_members WHERE tenant_id = ? AND group_id = ? "
            "AND endpoint_id IS NOT NULL ORDER BY leaf_index",
            (tenant_id, group_id),
        ).fetchall()
        return [Member(r["leaf_index"], r["endpoint_id"]) for r in rows]

    def set_members(self, tenant_id: str, group_id: bytes, members: list[Member]) -> None:
        self._c.execute(
            "DELETE FROM group_members WHERE tenant_id = ? AND group_id = ?", (tenant_id, group_id)
        )
        self._c.executemany(
            "INSERT INTO group_members (tenant_id, group_id, leaf_index, endpoint_id) VALUES (?, ?, ?, ?)",
            [(tenant_id, group_id, m.leaf_index, m.endpoint_id) for m in members],
        )

    def endpoint_groups(self, endpoint_id: str) -> list[tuple[str, bytes]]:
        rows = self._c.execute(
            "SELECT DISTINCT tenant_id, group_id FROM group_members WHERE endpoint_id = ?", (endpoint_id,)
        ).fetchall()
        return [(r["tenant_id"], bytes(r["group_id"])) for r in rows]

    # ---- mailboxes and inboxes ----------------------------------------------------------------------------
    def add_mailbox_items(
        self, tenant_id: str, client_ids: list[str], group_id: bytes, seq: int, kind: str
    ) -> None:
        now = time.time()
        self._c.executemany(
            "INSERT INTO mailbox (client_id, tenant_id, group_id, seq, kind, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(c, tenant_id, group_id, seq, kind, now) for c in client_ids],
        )

    def mailbox_after(self, client_id: str, after_cursor: int, limit: int) -> list[MailboxRecord]:
        """A client's items after a cursor, in order, with the message bytes of their log entries."""
        rows = self._c.execute(
            "SELECT m.cursor, m.group_id, m.seq, m.kind, m.created_at, "
            "CASE WHEN m.kind = 'welcome' THEN e.welcome ELSE e.message END AS message "
            "FROM mailbox m JOIN log_entries e "
            "ON e.tenant_id = m.tenant_id AND e.group_id = m.group_id AND e.seq = m.seq "
            "WHERE m.client_id = ? AND m.cursor > ? ORDER BY m.cursor LIMIT ?",
            (client_id, after_cursor, limit),
        ).fetchall()
        return [
            MailboxRecord(
                r["cursor"], bytes(r["group_id"]), r["seq"], r["kind"], r["message"], r["created_at"]
            )
            for r in rows
        ]

    def add_inbox_event(self, identity_id: str, group_id: bytes, seq: int, sealed_event: bytes) -> int:
        r = self._one(
            f"{_INBOX_INSERT} RETURNING cursor", identity_id, group_id, seq, sealed_event, time.time()
        )
        assert r is not None
        return int(r[0])

    def put_inbox_event(self, identity_id: str, group_id: bytes, seq: int, sealed_event: bytes) -> None:
        self._c.execute(_INBOX_INSERT, (identity_id, group_id, seq, sealed_event, time.time()))

    def inbox_after(self, identity_id: str, after_cursor: int, limit: int) -> list[InboxRecord]:
        """An identity's events after a cursor, in order (sealed)."""
        rows = self._c.execute(
            "SELECT cursor, group_id, seq, event, created_at FROM inbox WHERE identity_id = ? AND cursor > ? "
            "ORDER BY cursor LIMIT ?",
            (identity_id, after_cursor, limit),
        ).fetchall()
        return [
            InboxRecord(r["cursor"], bytes(r["group_id"]), r["seq"], r["event"], r["created_at"])
            for r in rows
        ]

    def inbox_event_at(self, identity_id: str, group_id: bytes, seq: int) -> InboxRecord | None:
        r = self._one(
            "SELECT cursor, group_id, seq, event FROM inbox "
            "WHERE identity_id = ? AND group_id = ? AND seq = ? ORDER BY cursor LIMIT 1",
            identity_id,
            group_id,
            seq,
        )
        return None if r is None else InboxRecord(r["cursor"], bytes(r["group_id"]), r["seq"], r["event"])

    # ---- hosted members' pending work --------------------------------------------------------------------
    def mark_hosted_pending(self, work: list[HostedWork]) -> None:
        self._c.executemany(
            "INSERT INTO hosted_pending (identity_id, tenant_id, group_id, up_to_seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (identity_id, group_id) "
            "DO UPDATE SET up_to_seq = CASE WHEN excluded.up_to_seq > hosted_pending.up_to_seq "
            "THEN excluded.up_to_seq ELSE hosted_pending.up_to_seq END",
            [(w.identity_id, w.tenant_id, w.group_id, w.up_to_seq) for w in work],
        )

    def hosted_pending(self, limit: int) -> list[HostedWork]:
        rows = self._c.execute("SELECT * FROM hosted_pending LIMIT ?", (limit,)).fetchall()
        return [
            HostedWork(r["identity_id"], r["tenant_id"], bytes(r["group_id"]), r["up_to_seq"]) for r in rows
        ]

    def clear_hosted_pending(self, identity_id: str, group_id: bytes, applied_seq: int) -> None:
        self._c.execute(
            "DELETE FROM hosted_pending WHERE identity_id = ? AND group_id = ? AND up_to_seq <= ?",
            (identity_id, group_id, applied_seq),
        )

    def hosted_progress(
        self, tenant_id: str, identity_id: str, group_id: bytes
    ) -> tuple[LogPosition | None, int | None, int | None]:
        r = self._c.execute(  # one round trip; a ratchet state written after the full state is newer
            "SELECT l.tenant_id, l.group_id, l.cipher_suite, l.epoch, l.seq, "
            "(SELECT COALESCE(r.applied_seq, g.applied_seq) FROM groups g LEFT JOIN group_ratchets r "
            "ON r.identity_id = g.identity_id AND r.group_id = g.group_id "
            "WHERE g.identity_id = :identity AND g.group_id = :grp) AS applied, "
            "(SELECT up_to_seq FROM hosted_pending "
            "WHERE identity_id = :identity AND group_id = :grp) AS mark "
            "FROM (SELECT 1 AS one) AS o "
            "LEFT JOIN group_logs l ON l.tenant_id = :tenant AND l.group_id = :grp",
            {"tenant": tenant_id, "identity": identity_id, "grp": group_id},
        ).fetchone()
        if r is None:  # never from the database (one row, whatever is missing): a read asked for ahead
            return None, None, None
        position = None if r[0] is None else LogPosition(r[0], r[1], r[2], r[3], r[4])
        return position, _int_or_none(r["applied"]), _int_or_none(r["mark"])


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


__all__ = ["SqliteDeliveryMixin"]
