"""The query helpers shared by the store transaction and its mixins.

The ``Sqlite*Mixin`` classes hold the portable SQL of both stores: they run on a :class:`sqlite3.Connection`
(:mod:`gateway.sqlite_store`) and, unchanged, on :class:`gateway.postgres_sql.PgConnection`
(:mod:`gateway.postgres_store`). Keep new statements portable: ``ON CONFLICT`` rather than ``INSERT OR``,
``RETURNING`` rather than ``lastrowid``, no scalar ``MAX(a, b)``, no SQLite-only functions, and no
exception as an answer (a failed statement aborts a PostgreSQL transaction: decide by the row count).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
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

    def prefetch(self, *reads: Callable[[], object]) -> None:
        """Ask for these reads (getters that run one ``SELECT`` each) together, ahead of their use: on
        PostgreSQL their statements go in one round trip with the transaction's next one and the getters,
        called again, are answered from memory (:meth:`gateway.postgres_sql.PgConnection.prefetching`; in
        a write transaction only reads of the group tables, answered until its next write); on SQLite
        (no round trips) nothing runs. At most :data:`gateway.store.PREFETCHED` reads of one kind are
        worth asking. Only a hint: a read asked for and not made costs a statement, one made and not asked
        for costs its round trip. Plain getters belong here (one ``SELECT``, ``None`` for no row): asked
        ahead, each sees no row."""
        prefetching = getattr(self._c, "prefetching", None)
        if prefetching is None:
            return
        with prefetching() as queued:
            for read in reads if queued else ():
                # Asked ahead, a getter sees no row; one that cannot take that only loses its hint.
                with contextlib.suppress(Exception):
                    read()

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
