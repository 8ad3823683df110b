"""The query helpers shared by the store transaction and its mixins.

The ``Sqlite*Mixin`` classes hold the portable SQL of both stores: they run on a :class:`sqlite3.Connection`
(:mod:`gateway.sqlite_store`) and, unchanged, on :class:`gateway.postgres_sql.PgConnection`
(:mod:`gateway.postgres_store`). Keep new statements portable: ``ON CONFLICT`` rather than ``INSERT OR``,
``RETURNING`` rather than ``lastrowid``, no scalar ``MAX(a, b)``, no SQLite-only functions, and no
exception as an answer (a failed statement aborts a PostgreSQL transaction: decide by the row count).
"""

from __future__ import annotations

import sqlite3
from typing import Any


class SqliteQueries:
    """``_one`` and ``_all`` over the connection ``_c`` of one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return list(self._c.execute(sql, args).fetchall())

    @staticmethod
    def _expect(cur: Any, rows: int, error: Exception) -> None:
        """Raise ``error`` unless the write behind ``cur`` changed ``rows`` rows — a compare-and-swap that
        lost. At once on SQLite; on PostgreSQL a write may wait for its transaction's next statement
        (:class:`gateway.postgres_sql.QueuedWrite`), and the check runs once it has, before ``COMMIT``."""
        expect = getattr(cur, "expect", None)
        if expect is not None:
            expect(rows, error)
        elif cur.rowcount != rows:
            raise error


__all__ = ["SqliteQueries"]
