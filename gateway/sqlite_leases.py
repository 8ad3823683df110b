"""Lease rows (:mod:`gateway.leases`) and cross-process notification rows (:mod:`gateway.wakeups`): their
store methods, in portable SQL (the PostgreSQL store runs the same statements).

``leases``: one row per named lease — ``holder`` (one process run), ``expires_at`` (the holder's wall
clock, ``time.time()``, plus the TTL) and ``acquired_at``. Every change is a compare-and-swap on the row:
an ``UPDATE ... WHERE name = ? AND (holder = me OR expires_at < now - margin)`` whose row count decides, or
an ``INSERT ... ON CONFLICT (name) DO NOTHING`` of a lease nobody took yet. Two contenders cannot both
win: SQLite serialises write transactions, and PostgreSQL re-checks the ``WHERE`` of an ``UPDATE`` on the
row version the other transaction committed.

``notifications``: one row per wake-up (``channel`` = an endpoint id, or another key of
:class:`gateway.wakeups.Wakeups`), written by triggers in the transaction of the change (a mailbox item,
an inbox event, a webhook set, resumed or removed), so a notification exists exactly when the change
committed. Each process's listener (:mod:`gateway.wakeups`) reads the rows after the last it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .sqlite_queries import SqliteQueries


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    #: The process run holding it (:attr:`gateway.leases.LeaseKeeper.holder`).
    holder: str
    #: Unix time (the holder's clock) after which, plus the clock margin, others may take it.
    expires_at: float
    #: Unix time the current holder took it.
    acquired_at: float


class LeaseTransaction(Protocol):
    def try_lease(self, name: str, holder: str, now: float, ttl_s: float, margin_s: float) -> bool:
        """Acquire or renew the lease ``name`` for ``holder`` until ``now + ttl_s`` (unix times of this
        process's clock): succeeds when nobody holds it, ``holder`` does, or its holder's ``expires_at``
        is before ``now - margin_s`` (the clock margin, :mod:`gateway.leases`). Returns whether ``holder``
        holds it now."""
        ...

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up (only its holder can); others may take it at once."""
        ...

    def list_leases(self) -> list[LeaseRecord]: ...

    def notifications_after(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        """``(id, channel)`` of the notifications after ``after_id``, in id order."""
        ...

    def last_notification_id(self) -> int:
        """The highest notification id (0 when there is none)."""
        ...

    def purge_notifications(self, older_than: float, limit: int) -> int:
        """Delete at most ``limit`` of the notifications written before ``older_than`` (unix time), the
        oldest ids first; returns how many (fewer than ``limit``: none is left). A bounded batch keeps the
        write lock short (:func:`gateway.notifications.prune_notifications` runs batches until done)."""
        ...


class SqliteLeaseMixin(SqliteQueries):
    """The :class:`LeaseTransaction` methods of :class:`gateway.sqlite_store.SqliteTransaction`."""

    def try_lease(self, name: str, holder: str, now: float, ttl_s: float, margin_s: float) -> bool:
        expires_at, taken_before = now + ttl_s, now - margin_s
        cur = self._c.execute(
            "UPDATE leases SET acquired_at = CASE WHEN holder = ? THEN acquired_at ELSE ? END, "
            "holder = ?, expires_at = ? WHERE name = ? AND (holder = ? OR expires_at < ?)",
            (holder, now, holder, expires_at, name, holder, taken_before),
        )
        if cur.rowcount == 1:
            return True
        cur = self._c.execute(
            "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (name, holder, expires_at, now),
        )
        return cur.rowcount == 1

    def release_lease(self, name: str, holder: str) -> bool:
        cur = self._c.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
        return cur.rowcount == 1

    def list_leases(self) -> list[LeaseRecord]:
        return [
            LeaseRecord(r["name"], r["holder"], float(r["expires_at"]), float(r["acquired_at"]))
            for r in self._all("SELECT * FROM leases ORDER BY name")
        ]

    def notifications_after(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        rows = self._all(
            "SELECT id, channel FROM notifications WHERE id > ? ORDER BY id LIMIT ?", after_id, limit
        )
        return [(int(r["id"]), str(r["channel"])) for r in rows]

    def last_notification_id(self) -> int:
        r = self._one("SELECT MAX(id) AS n FROM notifications")
        return int(r["n"]) if r is not None and r["n"] is not None else 0

    def purge_notifications(self, older_than: float, limit: int) -> int:
        # the oldest rows by the time index (a range scan that stops at the limit or the first newer row)
        return self._c.execute(
            "DELETE FROM notifications WHERE id IN "
            "(SELECT id FROM notifications WHERE created_at < ? ORDER BY created_at LIMIT ?)",
            (older_than, limit),
        ).rowcount


__all__ = ["LeaseRecord", "LeaseTransaction", "SqliteLeaseMixin"]
