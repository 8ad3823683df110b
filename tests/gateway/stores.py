"""The two stores the end-to-end tests run on, and a store-neutral way into a running server's database.

A module (or a test) marked ``both_stores`` runs once per store: its ``store`` fixture is ``"sqlite"`` (the
data folder's ``gateway.sqlite3``) or ``"postgresql"`` (a database of the session's throw-away cluster,
``MLSGW_DATABASE``); every other test runs on SQLite only (tests/gateway/conftest.py, issue 15).

:func:`database` opens the database a :class:`GatewayServer` uses, whichever it is, as a connection that
runs the store's portable SQL (SQLite's ``?`` / ``:name`` placeholders; on PostgreSQL through
:class:`gateway.postgres_sql.PgConnection`, as the store itself runs it), committed when the block ends.
Tests read rows through it and, to simulate damage or time passing, change them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

import psycopg

from gateway.postgres_sql import PgConnection

from .gwclient import GatewayServer

#: The stores, in the order their runs are named (``[sqlite]``, ``[postgresql]``).
STORES = ("sqlite", "postgresql")


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """What tests use of a connection: portable SQL with SQLite's placeholders."""

    def execute(self, sql: str, parameters: Any = ()) -> Rows: ...


def database_url(server: GatewayServer) -> str | None:
    """The ``postgresql://`` URL ``server`` runs on, or None (its data folder's SQLite file)."""
    url = server.env.get("MLSGW_DATABASE")
    return url if url and url.startswith("postgresql") else None


@contextlib.contextmanager
def database(server: GatewayServer) -> Iterator[Database]:
    """One transaction on ``server``'s database (committed at the end of the block, rolled back on an
    exception); rows read by index and by column name on both stores."""
    url = database_url(server)
    if url is None:
        conn = sqlite3.connect(server.data_dir / "gateway.sqlite3", timeout=60)
        conn.row_factory = sqlite3.Row
        try:
            with conn:
                yield conn
        finally:
            conn.close()
        return
    with psycopg.connect(url, cursor_factory=psycopg.ClientCursor) as pg:  # commits when the block ends
        yield PgConnection(pg)


__all__ = ["STORES", "Database", "database", "database_url"]
