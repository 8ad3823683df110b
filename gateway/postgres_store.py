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
cursors are allocated in commit order). Reads (:meth:`PostgresStore.read_transaction`) take no lock:
``REPEATABLE READ READ ONLY``, one snapshot.

Durability (:mod:`gateway.postgres_durability`, where the locking and flushing live): a write's ``COMMIT``
releases the lock without waiting for the WAL flush, and the block returns only after a synchronous flush
that concurrent writers share; a read transaction returns only once the WAL is flushed past the snapshot it
read. Whatever a request is answered with — its own write or another's it read — is durable.
Connection loss (``OperationalError``, pool timeout) is :class:`StoreUnavailable`
(503 ``store_unavailable`` with Retry-After); the pool checks a connection before lending it
(:func:`check_lent_connection`) and opens new ones once the server answers again, so the gateway recovers
without a restart.
"""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Iterator
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .postgres_durability import (
    LOCK_ORDER,
    READ_BEGIN,
    WRITE_LOCK,
    commit_statements,
    durable_session,
    end_read,
    flush,
    lock_for_write,
    write_begin,
)
from .postgres_pool import StorePool
from .postgres_sql import PgConnection, liveness_options
from .schema_migrations import prepare
from .sqlite_store import SqliteTransaction
from .store import StoreFault, StoreUnavailable


def _unavailable(what: str, e: BaseException) -> StoreUnavailable:
    # The class only: a server message may quote parameters (sealed bytes, identifiers).
    return StoreUnavailable(f"{what}: {type(e).__name__}")


#: Prepared statements a connection keeps (psycopg's default is 100; the store runs about 160 distinct
#: statements, some in several parameter-type variants).
PREPARED_MAX = 512

#: SQLSTATEs outside psycopg's ``OperationalError`` that still say "not now": the server ended an idle or
#: overlong transaction's session (25P03, 25P04).
_TRANSIENT_SQLSTATES = frozenset({"25P03", "25P04"})
#: A write refused because the server is read-only: a standby after a failover (a pooled connection still
#: reaching the old primary), or ``default_transaction_read_only`` set while storage is nearly full.
_READ_ONLY_SERVER = "25006"


def _statement_error(what: str, e: psycopg.Error, *, write: bool) -> StoreUnavailable:
    """What a failed statement is: :class:`StoreUnavailable` when the server could not do it *now*
    (psycopg's ``OperationalError``: connection lost, lock or statement timeout, serialisation failure,
    deadlock, shutdown, resources — SQLSTATE classes 08, 40, 53, 55, 57, 58; a session the server ended;
    a write transaction on a read-only server; a prepared statement whose plan went stale when another
    process migrated the schema, 0A000 — its connection forgets its prepared statements), else
    :class:`StoreFault` (a constraint, a malformed statement, a write in a read transaction, a
    client-side misuse: retrying will not help)."""
    sqlstate = e.sqlstate
    if (
        isinstance(e, psycopg.OperationalError | psycopg.errors.FeatureNotSupported)
        or sqlstate in _TRANSIENT_SQLSTATES
        or (write and sqlstate == _READ_ONLY_SERVER)
    ):
        return _unavailable(what, e)
    return StoreFault(f"{what}: {type(e).__name__} (SQLSTATE {sqlstate})")


class PostgresStore:
    """A store in one PostgreSQL database, given by its ``postgresql://`` URL."""

    lookup_is_local = False  # a round trip: never on the event loop

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 10.0,
        pool_size: int = 16,
        connect_timeout_s: float = 5.0,
        migrate: bool = True,
        flush_under_lock: bool = False,
    ) -> None:
        """``flush_under_lock``: commit with ``synchronous_commit = on`` under the write lock (the slower
        former mode, :mod:`gateway.postgres_durability`) instead of flushing after it."""
        self.url = url
        self.flush_under_lock = flush_under_lock
        self._busy_s = busy_timeout_s
        self._local = threading.local()
        try:
            applied = prepare(url, apply=migrate)
        except psycopg.Error as e:
            raise _unavailable("cannot open the database", e) from None
        self._pool = StorePool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=connect_timeout_s,
            kwargs={
                "autocommit": True,
                "cursor_factory": psycopg.Cursor,
                "connect_timeout": 5,
                **liveness_options(url),
            },
            check=check_lent_connection,
            configure=_configure,
            name="mlsgw-store",
            open=False,
        )
        self._pool.open(wait=False)
        if applied:  # yoyo committed them with the server's default, possibly asynchronously
            try:
                self.sync()
            except StoreUnavailable:
                self._pool.close()
                raise

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection(self._pool.wait_s()) as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as e:
            raise _unavailable("the database is unreachable", e) from None

    @contextlib.contextmanager
    def _transaction(self, *, write: bool, group: bytes | None = None) -> Iterator[SqliteTransaction]:
        """One transaction on a pooled connection. A read or group-scoped write sends its ``BEGIN`` (and
        locks) with its first statement, in one round trip (:class:`PgConnection`), and when it ran none
        neither begins nor ends; any other write holds :data:`WRITE_LOCK` from the moment its block is
        entered (a lock its callers may rely on before their first statement)."""
        with self._connection() as conn:
            begin = self._begin(conn, write=write, group=group)
            adapter = PgConnection(
                conn,
                begin=begin,
                before_ordered=None if group is None else LOCK_ORDER,
                snapshot=not write,
                queue_writes=write,
            )
            if not write:
                self._local.reader = adapter
            try:
                yield SqliteTransaction(cast("Any", adapter))
                if write:
                    adapter.settle()  # a row count to check fails here, while the block can roll back
            except psycopg.Error as e:
                if adapter.begun:
                    _rollback(conn, forget_plans=adapter.stale_plan)
                raise _statement_error("database error", e, write=write) from None
            except BaseException:
                if adapter.begun:
                    _rollback(conn, forget_plans=adapter.stale_plan)
                    if write:  # what it raises (a conflict) may tell what it read: durable first
                        self._flush(conn)
                raise
            finally:
                if not write:
                    self._local.reader = None
            if adapter.wrote:
                self._end(conn, adapter, write=write)

    def _begin(self, conn: psycopg.Connection[Any], *, write: bool, group: bytes | None) -> tuple[str, ...]:
        """The statements to send with a transaction's first one; a global write runs them now."""
        if not write:
            return READ_BEGIN
        if group is not None:
            return write_begin(self._busy_s, flush_under_lock=self.flush_under_lock, group=group)
        try:
            lock_for_write(conn, self._busy_s, flush_under_lock=self.flush_under_lock)
        except psycopg.Error as e:
            _rollback(conn)
            raise _unavailable("cannot start a transaction", e) from None
        return ()

    def _end(self, conn: psycopg.Connection[Any], adapter: PgConnection, *, write: bool) -> None:
        """``COMMIT`` a transaction that ran, and return once all it wrote or read is durable."""
        if not write and adapter.began_with is None:  # its opening failed, and the block went on
            _rollback(conn)
            raise StoreUnavailable("a read transaction that did not begin")
        try:
            if write:  # with the writes still queued, in one round trip
                adapter.finish(commit_statements(flush_under_lock=self.flush_under_lock))
            else:
                end_read(conn, str(adapter.began_with))
        except psycopg.Error as e:
            _rollback(conn, forget_plans=adapter.stale_plan)
            raise _statement_error("commit failed", e, write=write) from None
        except BaseException:
            _rollback(conn, forget_plans=adapter.stale_plan)
            raise

    @staticmethod
    def _flush(conn: psycopg.Connection[Any]) -> None:
        try:
            flush(conn)
        except psycopg.Error as e:
            raise _unavailable("cannot flush the WAL", e) from None

    def transaction(self, group: bytes | None = None) -> contextlib.AbstractContextManager[SqliteTransaction]:
        """A transaction that may write: it holds the write lock (:data:`WRITE_LOCK`) from ``BEGIN`` to
        ``COMMIT``, and its block returns once the commit (and all it read) is flushed to disk. With
        ``group``, a group-scoped write (:mod:`gateway.postgres_durability`): it writes the tables of
        :data:`gateway.postgres_sql.GROUP_TABLES` for that group alone, in parallel with other groups'."""
        return self._transaction(write=True, group=group)

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[SqliteTransaction]:
        """A read-only transaction: one snapshot (``REPEATABLE READ``), no lock, writing in it fails; its
        block returns once every commit the snapshot saw is flushed to disk. Inside another read of the
        same thread it reads within that snapshot (the outer one waits)."""
        outer: PgConnection | None = getattr(self._local, "reader", None)
        if outer is not None:
            try:
                yield SqliteTransaction(cast("Any", outer))
            except psycopg.Error as e:
                raise _statement_error("database error", e, write=False) from None
            return
        with self._transaction(write=False) as tx:
            yield tx

    def serialise_appends(self, tenant_id: str, group: bytes) -> contextlib.AbstractContextManager[None]:
        """Nothing here (:meth:`gateway.store.Store.serialise_appends`): writers of one group are serialised
        by its advisory lock inside their write transactions, and an append that lost the race to another
        process runs again on the new head (no round trip added to the hot path)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def lookup(self) -> Iterator[SqliteTransaction]:
        """One ``SELECT`` in autocommit (:meth:`gateway.store.Store.lookup`): its own snapshot, one round
        trip, no durability wait; anything but a ``SELECT`` is refused (a defect). Not for use inside a
        write transaction: it would take a second pooled connection."""
        outer: PgConnection | None = getattr(self._local, "reader", None)
        with contextlib.ExitStack() as stack:
            conn = None if outer else stack.enter_context(self._connection())
            adapter = outer or PgConnection(cast("Any", conn), select_only=True)
            try:
                yield SqliteTransaction(cast("Any", adapter))
            except psycopg.Error as e:
                if conn is not None and adapter.stale_plan:  # autocommit: nothing to roll back
                    _forget_prepared(conn)
                raise _statement_error("database error", e, write=False) from None

    def sync(self) -> None:
        """Return once every commit so far, of any process, is flushed to disk (one shared flush)."""
        with self._connection() as conn:
            self._flush(conn)

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
                    lock_for_write(conn, timeout_s, flush_under_lock=True)
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


def _rollback(conn: psycopg.Connection[Any], *, forget_plans: bool = False) -> None:
    """``ROLLBACK``, keeping the connection's prepared statements: psycopg forgets them all on a
    ``ROLLBACK`` (one that undid DDL may leave them pointing at dropped objects), but the store's
    transactions run no DDL and a prepared statement outlives a rollback on the server — a lost race or a
    conflict would otherwise cost every hot statement five unprepared runs again. ``forget_plans``: a
    statement's plan went stale (the schema changed): forget them all (``DEALLOCATE ALL``)."""
    threshold = conn.prepare_threshold
    conn.prepare_threshold = None  # psycopg then leaves its cache alone
    try:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
    finally:
        conn.prepare_threshold = threshold
    if forget_plans:
        _forget_prepared(conn)


def _forget_prepared(conn: psycopg.Connection[Any]) -> None:
    """Deallocate the connection's prepared statements (psycopg recognises the command and forgets its own
    records of them)."""
    with contextlib.suppress(psycopg.Error):
        conn.execute("DEALLOCATE ALL")


def check_lent_connection(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it is about to lend: raises if the connection is gone. An idle
    session the server still holds has nothing to read on its socket, so it is lent at once; one with
    something to read — the server ended it (a restart, ``pg_terminate_backend``, an idle timeout: a FATAL
    message, then end of file) or sent a notice — takes psycopg_pool's round trip (an empty query), which
    reads it and fails on a dead session. (The empty query on every loan was 7 of a message's ~45 round
    trips.) A session lost without a word (a partition) fails its first statement instead, within the
    :data:`gateway.postgres_sql.LIVENESS` timeouts, as it did the empty query: a 503, and the pool drops
    the broken connection."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()  # not select.select: a busy process may hold descriptors past FD_SETSIZE
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):  # readable, hung up or in error
        ConnectionPool.check_connection(conn)


def _configure(conn: psycopg.Connection[Any]) -> None:
    """A new pooled connection: synchronous commits (:func:`durable_session`), and room for every hot
    statement of the gateway among its prepared ones."""
    durable_session(conn)
    conn.prepared_max = PREPARED_MAX


__all__ = ["WRITE_LOCK", "PostgresStore", "check_lent_connection"]
