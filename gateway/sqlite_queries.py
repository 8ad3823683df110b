"""The query helpers shared by the SQLite transaction and its mixins (one sqlite3 connection each)."""

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
