"""PostgreSQL implementation of the gateway store (psycopg 3, a psycopg_pool connection pool), for several
gateway processes on one or many machines over one database.

The transactions are :class:`gateway.sqlite_store.SqliteTransaction` itself: the ``Sqlite*Mixin`` classes
hold the store's portable SQL, run here through :class:`gateway.postgres_sql.PgConnection`. The schema is
``gateway/migrations/postgresql/`` applied with yoyo (:func:`gateway.schema_migrations.migrate`) when
the store opens.

Locking (docs/architecture.md "PostgreSQL store"): every write transaction takes one transaction-scoped
advisory lock, :data:`WRITE_LOCK`, right after ``BEGIN`` — exactly SQLite's ``BEGIN IMMEDIATE``: writers
are serialised across every process, reads are not. The code relies on that serialisation beyond the
compare-and-swaps that would hold under ``READ COMMITTED`` alone: the audit chain's head (read, then
appended), the idempotency check-then-put, quota counts, KeyPackage claims, the group log's append and its
members, and mailbox/inbox cursors, which readers page through in order (an identity value allocated by a
transaction that commits after a later one would be skipped by a reader already past it: under one lock
cursors are allocated in commit order). Finer locks (per group, per identity) are a refinement of
:func:`_lock_for_write` alone, to be weighed against what ``benches.scale`` measures. Reads
(:meth:`PostgresStore.read_transaction`) take no lock: ``REPEATABLE READ READ ONLY``, one snapshot.

Durability: a write transaction's block returns after ``COMMIT``, which with PostgreSQL's default
``synchronous_commit = on`` returns once the commit record is flushed to the WAL: :meth:`sync` has nothing
left to wait for. Connection loss (``OperationalError``, pool timeout) is :class:`StoreUnavailable`
(503 ``store_unavailable`` with Retry-After); the pool checks a connection before lending it and opens
new ones once the server answers again, so the gateway recovers without a restart.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .postgres_sql import PgConnection
from .schema_migrations import prepare
from .sqlite_store import SqliteTransaction
from .store import StoreUnavailable

#: The advisory lock key every write transaction holds (``pg_advisory_xact_lock``): "mlsgw" in ASCII.
WRITE_LOCK = 0x6D6C736777


def _unavailable(what: str, e: BaseException) -> StoreUnavailable:
    # The class only: a server message may quote parameters (sealed bytes, identifiers).
    return StoreUnavailable(f"{what}: {type(e).__name__}")


def _lock_for_write(conn: psycopg.Connection[Any], timeout_s: float) -> None:
    """The write transaction's lock (see the module docstring): waits at most ``timeout_s``."""
    conn.execute(f"SET LOCAL lock_timeout = {int(timeout_s * 1000)}")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))


class PostgresStore:
    """A store in one PostgreSQL database, given by its ``postgresql://`` URL."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 10.0,
        pool_size: int = 16,
        connect_timeout_s: float = 5.0,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self._busy_s = busy_timeout_s
        self._local = threading.local()
        try:
            prepare(url, apply=migrate)
        except psycopg.Error as e:
            raise _unavailable("cannot open the database", e) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=connect_timeout_s,
            kwargs={"autocommit": True, "cursor_factory": psycopg.ClientCursor, "connect_timeout": 5},
            check=ConnectionPool.check_connection,
            name="mlsgw-store",
            open=False,
        )
        self._pool.open(wait=False)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as e:
            raise _unavailable("the database is unreachable", e) from None

    @contextlib.contextmanager
    def _transaction(self, begin: str, *, write: bool) -> Iterator[SqliteTransaction]:
        with self._connection() as conn:
            try:
                conn.execute(begin)
                if write:
                    _lock_for_write(conn, self._busy_s)
            except psycopg.Error as e:
                _rollback(conn)
                raise _unavailable("cannot start a transaction", e) from None
            adapter = PgConnection(conn)
            if not write:
                self._local.reader = adapter
            try:
                yield SqliteTransaction(cast("Any", adapter))
            except psycopg.Error as e:
                _rollback(conn)
                raise _unavailable("database error", e) from None
            except BaseException:
                _rollback(conn)
                raise
            finally:
                if not write:
                    self._local.reader = None
            try:
                conn.execute("COMMIT")
            except psycopg.Error as e:
                _rollback(conn)
                raise _unavailable("commit failed", e) from None

    def transaction(self) -> contextlib.AbstractContextManager[SqliteTransaction]:
        """A transaction that may write: it holds the write lock (:data:`WRITE_LOCK`) from ``BEGIN`` on,
        and its block returns once the commit is durable (``synchronous_commit``)."""
        return self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED", write=True)

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[SqliteTransaction]:
        """A read-only transaction: one snapshot (``REPEATABLE READ``), no lock, writing in it fails.
        Inside another read of the same thread it reads within that snapshot."""
        outer: PgConnection | None = getattr(self._local, "reader", None)
        if outer is not None:
            try:
                yield SqliteTransaction(cast("Any", outer))
            except psycopg.Error as e:
                raise _unavailable("database error", e) from None
            return
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", write=False) as tx:
            yield tx

    def sync(self) -> None:
        """Nothing to wait for: every committed write transaction is durable when its block returns."""

    def ping(self) -> None:
        with self._connection() as conn:
            try:
                conn.execute("SELECT 1").fetchone()
            except psycopg.Error as e:
                raise _unavailable("the database does not answer", e) from None

    def write_probe(self, timeout_s: float) -> str | None:
        """``None`` if the write lock can be taken within ``timeout_s`` (nothing is written), else why not."""
        try:
            with self._connection() as conn:
                try:
                    conn.execute("BEGIN")
                    _lock_for_write(conn, timeout_s)
                except psycopg.errors.LockNotAvailable:
                    return "the write lock is held (writes would wait and answer 503)"
                except psycopg.Error as e:
                    return f"not writable ({type(e).__name__})"
                finally:
                    _rollback(conn)
        except StoreUnavailable as e:
            return str(e)
        return None

    def close(self) -> None:
        self._pool.close()


def _rollback(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")


__all__ = ["WRITE_LOCK", "PostgresStore"]
