"""Wake-ups across processes: each process's listener turns the store's notifications into local
:meth:`gateway.wakeups.Wakeups.notify` calls.

A notification is a row of ``notifications`` (``id``, ``channel``, ``created_at``) that the store writes
**in the transaction of the change** a waiter waits for (triggers on ``mailbox``, ``inbox`` and
``webhooks``; the migration ``0002.leases_notifications``), so it exists exactly when the change
committed, whichever process committed it. A wake-up only says "look again" (the store is the truth), so
a duplicate — this process's own writers also notify directly — or a coalesced one is harmless; what
must not happen is a waiter that sleeps through a commit. Rows are pruned after :data:`KEEP_S`, by
one process (the lease ``notification-prune``), in batches of :data:`PRUNE_BATCH` rows per transaction.

- **SQLite** (:class:`SqliteNotificationListener`): a thread with a connection of its own looks every
  ``[gateway] wakeup_poll_s`` (25 ms) at ``PRAGMA data_version``, which changes only when another
  connection committed — a call into SQLite that reads no page — and only then reads the rows after
  the last id it saw. SQLite serialises writers, so ids appear in commit order and "after the last id"
  misses nothing.
- **PostgreSQL** (:class:`PostgresNotificationListener`): a trigger on ``notifications`` calls
  ``pg_notify(CHANNEL, channel)``, which PostgreSQL delivers at commit (never for a rolled-back
  transaction); one dedicated psycopg connection per process ``LISTEN`` s. Sequence ids are not in
  commit order, so after a reconnect the listener catches up by time: every channel notified since it
  last heard from the server, minus :data:`CATCH_UP_MARGIN_S` (a transaction that began before the
  connection dropped and committed after it has a ``created_at`` of its own start).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
from aiohttp import web

from .context import APP
from .leases import LEASES, NOTIFICATION_PRUNE, LeaseKeeper, run_while_held
from .postgres_sql import liveness_options
from .schema_migrations import SchemaError, migrations_directory
from .sqlite_store import SqliteStore
from .store import Store, StoreUnavailable
from .wakeups import Wakeups

log = logging.getLogger("mls_gateway")

#: Seconds a notification row is kept (a listener that is behind longer than this catches up by a
#: wake-up of everything it missed being lost; none is ever behind that long but a reconnect).
KEEP_S = 300.0
#: Seconds between two prunes of old notification rows (by the holder of their lease).
PRUNE_EVERY_S = 60.0
#: Rows a prune deletes per write transaction (about 2 ms of write lock on SQLite).
PRUNE_BATCH = 1000
#: PostgreSQL: the ``LISTEN`` channel the notifications trigger notifies.
CHANNEL = "mlsgw_wakeups"
#: PostgreSQL: seconds before the last message heard from which a reconnect catches up.
CATCH_UP_MARGIN_S = 60.0
#: Seconds the listener's connection attempt may take (a server that accepts and never answers must not
#: hold it, nor the shutdown that stops it, forever).
CONNECT_TIMEOUT_S = 5

#: The migration that creates ``leases``, ``notifications`` and their triggers, on either store
#: (``gateway/migrations/{sqlite,postgresql}/<id>.sql``, the single source of that DDL).
MIGRATION_ID = "0002.leases_notifications"


def postgres_schema_sql() -> str:
    """The PostgreSQL DDL of the notifications (its table, the trigger that publishes each row at commit on
    :data:`CHANNEL`, the triggers of ``mailbox``, ``inbox`` and ``webhooks`` that write the rows) and of
    ``leases``: the text of the PostgreSQL migration :data:`MIGRATION_ID`."""
    return (migrations_directory("postgresql://") / f"{MIGRATION_ID}.sql").read_text(encoding="utf-8")


class _ListenerThread:
    """A daemon thread running :meth:`_loop` until :meth:`stop`; counts its own CPU time."""

    name = "mlsgw-notify"

    def __init__(self, wakeups: Wakeups) -> None:
        self.wakeups = wakeups
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: CPU seconds the listener thread used (its cost per process), and wake-ups it passed on.
        self.cpu_s = 0.0
        self.delivered = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.cpu_s = time.thread_time()

    def _loop(self) -> None:
        raise NotImplementedError

    def _wake(self, channels: set[str]) -> None:
        if channels:
            self.delivered += len(channels)
            self.wakeups.notify(channels)


class SqliteNotificationListener(_ListenerThread):
    """Polls one SQLite database's ``PRAGMA data_version`` and wakes the local waiters of what other
    connections committed (see the module)."""

    def __init__(
        self,
        path: Path,
        wakeups: Wakeups,
        poll_s: float,
    ) -> None:
        super().__init__(wakeups)
        self.path = path
        self.poll_s = poll_s
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA query_only = ON")
        try:
            self.last_id = self._last_id()  # what was there before this process started wakes nobody
        except sqlite3.OperationalError as e:  # no notifications table: a schema the migrations did not make
            self._conn.close()
            raise SchemaError(
                f"the database {path} lacks the table of migration {MIGRATION_ID} ({e}): "
                "run `mls-gateway migrate`"
            ) from None
        self._version = self._data_version()

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _last_id(self) -> int:
        row = self._conn.execute("SELECT MAX(id) FROM notifications").fetchone()
        return int(row[0] or 0)

    def poll(self) -> set[str]:
        """One look: the channels of the notifications committed since the last look (woken)."""
        version = self._data_version()
        if version == self._version:
            return set()
        rows = self._conn.execute(
            "SELECT id, channel FROM notifications WHERE id > ? ORDER BY id", (self.last_id,)
        ).fetchall()
        self._version = version  # only once read: a read that fails is tried again at the next tick
        if rows:
            self.last_id = int(rows[-1][0])
        channels = {str(r[1]) for r in rows}
        self._wake(channels)
        return channels

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.poll_s):
                try:
                    self.poll()
                except Exception as e:  # a locked or busy database: look again at the next tick
                    log.warning("notification listener: %s (retried)", e)
        finally:
            self._conn.close()


class PostgresNotificationListener(_ListenerThread):
    """``LISTEN`` s on a dedicated psycopg connection and wakes the local waiters of each notification;
    reconnects after a lost connection and catches up from the table (see the module)."""

    def __init__(self, dsn: str, wakeups: Wakeups, *, reconnect_s: float = 0.5) -> None:
        super().__init__(wakeups)
        self.dsn = dsn
        self.reconnect_s = reconnect_s
        #: Unix time (the server's clock) of the last moment the connection was known to be live.
        self.last_heard: float | None = None
        #: Connections made and listening (a reconnect's is counted before its catch-up wakes anyone).
        self.connects = 0
        #: The server process of the listening connection (``pg_terminate_backend`` cuts it in tests).
        self.backend_pid: int | None = None
        self._ready = threading.Event()

    def wait_listening(self, timeout: float) -> bool:
        """Whether the listener is connected and listening (waits up to ``timeout`` seconds)."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        """Stop listening (within the one-second wait of :meth:`_listen`) and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as e:  # psycopg.OperationalError and friends: the server or network is gone
                self._ready.clear()
                if not self._stop.is_set():
                    log.warning("notification listener lost PostgreSQL (reconnecting): %s", type(e).__name__)
                    self._stop.wait(self.reconnect_s)

    def _listen(self) -> None:
        with psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, **liveness_options(self.dsn)
        ) as conn:
            self.backend_pid = conn.info.backend_pid
            conn.execute(f"LISTEN {CHANNEL}")
            self.connects += 1  # counted before the catch-up below wakes anyone
            now = _server_time(conn)
            if self.last_heard is not None:  # a reconnect: what was notified while we were away
                rows = conn.execute(
                    "SELECT DISTINCT channel FROM notifications WHERE created_at >= %s",
                    (self.last_heard - CATCH_UP_MARGIN_S,),
                ).fetchall()
                self._wake({str(r[0]) for r in rows})
            self.last_heard = now
            self._ready.set()
            while not self._stop.is_set():
                for n in conn.notifies(timeout=1.0, stop_after=256):  # each as it arrives
                    self._wake({n.payload})
                self.last_heard = _server_time(conn)


def _server_time(conn: psycopg.Connection[tuple[object, ...]]) -> float:
    """The PostgreSQL server's clock, unix seconds (the clock ``notifications.created_at`` is on)."""
    row = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])  # type: ignore[arg-type]


def prune_notifications(
    store: Store,
    older_than: float,
    *,
    batch: int = PRUNE_BATCH,
    go_on: Callable[[], bool] = lambda: True,
) -> int:
    """Delete the notifications written before ``older_than`` (unix time), ``batch`` rows per write
    transaction (each holds the write lock briefly: other writers get it between two), while ``go_on()``
    (the lease is still held); returns how many were deleted. Worker thread."""
    total = 0
    while go_on():
        with store.transaction() as tx:
            deleted = tx.purge_notifications(older_than, batch)
        total += deleted
        if deleted < batch:
            break
    return total


async def _prune_forever(store: Store, keeper: LeaseKeeper) -> None:
    """Every :data:`PRUNE_EVERY_S`, the rows older than :data:`KEEP_S` (in the process holding the lease
    :data:`gateway.leases.NOTIFICATION_PRUNE`; one process prunes for all)."""
    loop = asyncio.get_running_loop()

    def held() -> bool:
        return keeper.held(NOTIFICATION_PRUNE)

    while True:
        try:
            await loop.run_in_executor(
                None, functools.partial(prune_notifications, store, time.time() - KEEP_S, go_on=held)
            )
        except StoreUnavailable as e:
            log.warning("notification prune failed (retried): %s", e)
        await asyncio.sleep(PRUNE_EVERY_S)


async def notification_listener(app: web.Application) -> AsyncIterator[None]:
    """The app's listener (``cleanup_ctx``, after :func:`gateway.leases.lease_keeper`): wakes this
    process's waiters of other processes' commits. On SQLite it polls the database file; the PostgreSQL
    store runs :class:`PostgresNotificationListener` over its DSN instead. The prune of old rows runs
    under its lease, in one process."""
    rt = app[APP]
    store = rt.store
    listener: _ListenerThread
    if isinstance(store, SqliteStore):
        listener = SqliteNotificationListener(store.path, rt.service.wakeups, rt.config.wakeup_poll_s)
    else:
        url = rt.config.postgres_url
        assert url is not None  # the store is PostgreSQL (gateway.store_factory)
        listener = PostgresNotificationListener(url, rt.service.wakeups)
    listener.start()
    keeper = app[LEASES]
    prune = asyncio.create_task(
        run_while_held(keeper, NOTIFICATION_PRUNE, lambda: _prune_forever(store, keeper)),
        name="notification-prune",
    )
    yield
    prune.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await prune
    await asyncio.get_running_loop().run_in_executor(None, listener.stop)


__all__ = [
    "CHANNEL",
    "MIGRATION_ID",
    "PostgresNotificationListener",
    "SqliteNotificationListener",
    "notification_listener",
    "postgres_schema_sql",
    "prune_notifications",
]
