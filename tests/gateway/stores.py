"""The two stores the end-to-end tests run on, and a store-neutral way into a running server's database.

A module (or a test) marked ``both_stores`` runs once per store: its ``store_kind`` fixture is
``"sqlite"`` (the data folder's ``gateway.sqlite3``) or ``"postgresql"`` (a database of the session's
throw-away cluster, ``MLSGW_DATABASE``); every other test runs on SQLite only (tests/gateway/conftest.py,
issue 15).

:func:`database` opens the database a :class:`GatewayServer` uses, whichever it is, as a connection that
runs the store's portable SQL (SQLite's ``?`` / ``:name`` placeholders; on PostgreSQL through
:class:`gateway.postgres_sql.PgConnection`, as the store itself runs it), committed when the block ends.
Tests read rows through it and, to simulate damage or time passing, change them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg

from gateway.postgres_sql import PgConnection
from gateway.postgres_store import PostgresStore
from gateway.sqlite_store import SqliteStore

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


def server_database(server: GatewayServer) -> Path | str:
    """What ``server`` stores in: its data folder's SQLite file, or a ``postgresql://`` URL."""
    return database_url(server) or server.data_dir / "gateway.sqlite3"


def open_store(location: Path | str) -> SqliteStore | PostgresStore:
    """The store at ``location`` (a SQLite file or a ``postgresql://`` URL), as a second process opens it."""
    if isinstance(location, str) and location.startswith("postgresql"):
        return PostgresStore(location)
    return SqliteStore(Path(location))


@contextlib.contextmanager
def connect(location: Path | str) -> Iterator[Database]:
    """One write transaction on the database at ``location`` (committed at the end of the block, rolled
    back on an exception); rows read by index and by column name on both stores."""
    if isinstance(location, str) and location.startswith("postgresql"):
        with psycopg.connect(location, cursor_factory=psycopg.Cursor) as pg:  # commits at the end
            yield PgConnection(pg)
        return
    conn = sqlite3.connect(location, timeout=60, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def database(server: GatewayServer) -> contextlib.AbstractContextManager[Database]:
    """One write transaction on ``server``'s database (:func:`connect`)."""
    return connect(server_database(server))


def query(server: GatewayServer, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """The rows one query of portable SQL reads from ``server``'s database."""
    with database(server) as db:
        return [tuple(row) for row in db.execute(sql, args).fetchall()]


def change(server: GatewayServer, sql: str, *args: object) -> None:
    """One statement of portable SQL that changes ``server``'s database, committed."""
    with database(server) as db:
        db.execute(sql, args)


def tables(server: GatewayServer) -> set[str]:
    """The names of the tables in ``server``'s database."""
    if database_url(server) is None:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    return {name for (name,) in query(server, sql)}


def text_columns(server: GatewayServer, table: str) -> list[str]:
    """The columns of ``table`` that may hold an id: every column on SQLite (loosely typed), the text
    columns on PostgreSQL (comparing a number or bytes with text is an error there)."""
    if database_url(server) is None:
        return [str(r[1]) for r in query(server, f"PRAGMA table_info({table})")]
    sql = (
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = ? AND data_type IN ('text', 'character varying') ORDER BY ordinal_position"
    )
    return [str(name) for (name,) in query(server, sql, table)]


def contains_sql(server: GatewayServer, column: str) -> str:
    """SQL true when ``column`` contains the bound text (``instr`` on SQLite, ``strpos`` on PostgreSQL)."""
    return f"{'instr' if database_url(server) is None else 'strpos'}({column}, ?) > 0"


def at_rest(server: GatewayServer) -> bytes:
    """What ``server``'s database holds, to search for what must never be stored in clear: the SQLite
    file and its write-ahead log as they rest on disk; on PostgreSQL every value of every row of every
    table (binary values as they are, the rest as text)."""
    if database_url(server) is None:
        path = server.data_dir / "gateway.sqlite3"
        wal = path.with_name(path.name + "-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    out = bytearray()
    with database(server) as db:
        for name in sorted(tables(server)):
            for row in db.execute(f'SELECT * FROM "{name}"').fetchall():
                for value in row:
                    out += bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                    out += b"\0"
    return bytes(out)


__all__ = [
    "STORES",
    "Database",
    "at_rest",
    "change",
    "connect",
    "contains_sql",
    "database",
    "database_url",
    "open_store",
    "query",
    "server_database",
    "tables",
    "text_columns",
]
