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


__all__ = ["SqliteQueries"]
