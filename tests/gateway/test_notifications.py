"""Wake-ups across processes (gateway.notifications): a waiter of one store is woken by a commit through
another. SQLite: two SqliteStore on one file (as two gateway processes), the notification written by the
store's trigger in the transaction of the change. PostgreSQL: the real throw-away cluster, the listener's
connection and a writer's connection; a wake-up is not lost across a cut connection.

No assertion depends on timing: waits are bounded by a generous guard against a hang, and the one
negative check (a rolled-back change wakes nobody) waits a while for a wake-up that must never come."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from gateway.notifications import (
    CHANNEL,
    MIGRATION_ID,
    PostgresNotificationListener,
    SqliteNotificationListener,
    postgres_schema_sql,
    prune_notifications,
)
from gateway.postgres_store import PostgresStore
from gateway.schema_migrations import migrate
from gateway.sqlite_store import SqliteStore
from gateway.store import Identity, Tenant
from gateway.wakeups import Wakeups

GUARD_S = 60.0


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    path = tmp_path / "gw.sqlite3"
    a, b = SqliteStore(path), SqliteStore(path)
    with b.transaction() as tx:
        tx.add_tenant(Tenant("ten_1", "t"))
        for name in ("idn_a", "idn_b"):
            tx.add_identity(
                Identity(name, "ten_1", name, 1, b"cred", b"ref-" + name.encode(), name.encode(), "t", "t")
            )
    yield a, b
    a.close()
    b.close()


def woken_by(wakeups: Wakeups, channel: str, write: Callable[[], None], timeout: float = GUARD_S) -> bool:
    """Register a waiter on ``channel``, run ``write`` in a thread (another "process"), wait."""

    async def scenario() -> bool:
        async with wakeups.watch(channel) as watch:
            await asyncio.get_running_loop().run_in_executor(None, write)
            return await watch.wait(timeout)

    return asyncio.run(scenario())


def inbox_event(store: SqliteStore, identity_id: str, seq: int) -> Callable[[], None]:
    def write() -> None:
        with store.transaction() as tx:
            tx.add_inbox_event(identity_id, b"group", seq, b"sealed")

    return write


def test_a_commit_through_another_store_wakes_the_waiter(two_stores: tuple[SqliteStore, SqliteStore]) -> None:
    a, b = two_stores
    wakeups = Wakeups()
    listener = SqliteNotificationListener(a.path, wakeups, 0.01)
    listener.start()
    try:
        assert woken_by(wakeups, "idn_a", inbox_event(b, "idn_a", 1))
        assert listener.delivered >= 1
    finally:
        listener.stop()


def test_a_failed_read_of_the_rows_is_tried_again(two_stores: tuple[SqliteStore, SqliteStore]) -> None:
    """The row read of a commit's wake-up fails once (SQLite's authorizer denies it, as a transient error
    would): the next look reads them, not only after some unrelated later commit."""
    a, b = two_stores
    listener = SqliteNotificationListener(a.path, Wakeups(), 0.025)  # polled by hand, not started
    denied: list[str] = []

    def deny_once(action: int, table: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table == "notifications" and not denied:
            denied.append(table)
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    inbox_event(b, "idn_a", 1)()
    listener._conn.set_authorizer(deny_once)
    with pytest.raises(sqlite3.DatabaseError, match="prohibited"):
        listener.poll()
    assert denied and listener.poll() == {"idn_a"}
    listener._conn.close()


def test_the_notification_is_written_in_the_transaction_of_the_change(
    two_stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """A rolled-back change leaves no notification (and wakes nobody); a committed one leaves exactly
    its rows: the inbox's identity; a webhook set, paused and removed (its identity and the webhook
    supervisor's key); a failed delivery attempt (no configuration change) none."""
    a, b = two_stores
    wakeups = Wakeups()
    listener = SqliteNotificationListener(a.path, wakeups, 0.01)
    before = listener.last_id

    def rolled_back() -> None:
        with pytest.raises(RuntimeError), b.transaction() as tx:
            tx.add_inbox_event("idn_b", b"group", 1, b"sealed")
            raise RuntimeError("abort")

    listener.start()
    try:
        assert not woken_by(wakeups, "idn_b", rolled_back, timeout=0.5)
    finally:
        listener.stop()
    with b.read_transaction() as tx:
        assert tx.notifications_after(before, 100) == []
    with b.transaction() as tx:
        tx.add_inbox_event("idn_b", b"group", 1, b"sealed")
        gen = tx.put_webhook("idn_a", "https://example.test/hook", b"sealed-secret", 0)
        fail = {"attempts": 1, "failing_since": time.time(), "next_attempt_at": time.time() + 5}
        assert tx.webhook_failed("idn_a", gen, **fail, paused=False)  # type: ignore[arg-type]
    with b.transaction() as tx:
        assert tx.webhook_failed("idn_a", gen, **fail, paused=True)  # type: ignore[arg-type]
        tx.delete_webhook("idn_a")
    with b.read_transaction() as tx:
        channels = [c for _, c in tx.notifications_after(before, 100)]
    changed = ["idn_a", "webhooks:changed"]
    assert channels == ["idn_b", *changed, *changed, *changed]


def test_a_deleted_identity_takes_its_notifications_with_it(
    two_stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """Tenant deletion leaves no row naming its identities: nor a notification (its webhook going with
    it notifies nobody)."""
    a, b = two_stores
    with b.transaction() as tx:
        tx.add_inbox_event("idn_a", b"group", 1, b"sealed")
        tx.put_webhook("idn_a", "https://example.test/hook", b"sealed-secret", 0)
        tx.add_inbox_event("idn_b", b"group", 1, b"sealed")
    with b.transaction() as tx:
        tx.delete_identity("idn_a")  # its inbox and webhook go by cascade
    with a.read_transaction() as tx:
        assert tx.get_identity("ten_1", "idn_a") is None and tx.get_webhook("idn_a") is None
        channels = [c for _, c in tx.notifications_after(0, 100)]
    assert "idn_a" not in channels and "idn_b" in channels


def test_no_wake_up_is_lost_among_many_commits(two_stores: tuple[SqliteStore, SqliteStore]) -> None:
    """Every one of many endpoints written through the other store is woken (ids in commit order)."""
    a, b = two_stores
    wakeups = Wakeups()
    listener = SqliteNotificationListener(a.path, wakeups, 0.01)
    listener.start()
    latencies = []
    try:
        for seq in range(1, 31):
            who = "idn_a" if seq % 2 else "idn_b"
            started = time.perf_counter()
            assert woken_by(wakeups, who, inbox_event(b, who, seq))
            latencies.append(time.perf_counter() - started)
    finally:
        listener.stop()
    median_ms = 1000 * statistics.median(latencies)
    print(f"SQLite wake-up across stores (10 ms poll, commit included): {median_ms:.1f} ms")


def test_prune_and_the_idle_cost_of_the_listener(two_stores: tuple[SqliteStore, SqliteStore]) -> None:
    """Old rows are pruned; the idle listener's CPU per second of wall time is printed (a figure)."""
    a, b = two_stores
    inbox_event(b, "idn_a", 1)()
    with a.transaction() as tx:
        assert tx.purge_notifications(time.time() + 1, 1000) >= 1
        assert tx.notifications_after(0, 10) == []
        assert tx.last_notification_id() == 0
    inbox_event(b, "idn_a", 2)()
    with a.read_transaction() as tx:
        assert tx.last_notification_id() >= 2  # ids never go back, even once pruned (AUTOINCREMENT)
    listener = SqliteNotificationListener(a.path, Wakeups(), 0.025)
    started = time.monotonic()
    listener.start()
    time.sleep(2.0)
    listener.stop()
    share = listener.cpu_s / (time.monotonic() - started)
    print(f"idle SQLite listener (25 ms poll): {100 * share:.2f} % of one core")


def test_the_prune_deletes_in_bounded_batches_and_stops_with_its_lease(
    two_stores: tuple[SqliteStore, SqliteStore],
) -> None:
    """Old rows go ``batch`` per write transaction (the write lock is held for one batch, not for every
    old row at once); the prune stops between two batches when its lease is lost; newer rows stay."""
    a, b = two_stores
    with a.transaction() as tx:
        tx._c.executemany(
            "INSERT INTO notifications (channel, created_at) VALUES (?, 1.0)",
            [(f"cli_{i}",) for i in range(2500)],
        )
    for seq in (1, 2, 3):
        inbox_event(b, "idn_b", seq)()
    with a.transaction() as tx:
        started = time.perf_counter()
        assert tx.purge_notifications(2.0, 1000) == 1000  # one bounded batch
        batch_ms = 1000 * (time.perf_counter() - started)
    lease = iter([True, False])  # held for one batch, then lost
    assert prune_notifications(a, 2.0, batch=1000, go_on=lambda: next(lease)) == 1000
    assert prune_notifications(a, 2.0, batch=200) == 500  # the rest, in three batches
    with a.read_transaction() as tx:
        left = tx.notifications_after(0, 100)
    assert [channel for _, channel in left] == ["idn_b"] * 3
    print(f"notification prune: one batch of 1000 rows holds the write lock {batch_ms:.1f} ms")


# ---- PostgreSQL ------------------------------------------------------------------------------------------


#: The columns of mailbox, inbox and webhooks the source triggers read (the PostgreSQL store's tables,
#: made by its migration 0001.baseline, have more; these are enough for the triggers): the PostgreSQL
#: migration 0002.leases_notifications runs over them.
SOURCE_TABLES = """
CREATE TABLE identities (identity_id TEXT PRIMARY KEY);
CREATE TABLE clients (client_id TEXT PRIMARY KEY);
CREATE TABLE mailbox (cursor BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, client_id TEXT NOT NULL);
CREATE TABLE inbox (cursor BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, identity_id TEXT NOT NULL);
CREATE TABLE webhooks (
    identity_id TEXT PRIMARY KEY REFERENCES identities ON DELETE CASCADE, url TEXT NOT NULL,
    secret BYTEA NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, paused INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL);
"""


@pytest.fixture
def pg(postgres_dsn: str) -> str:
    """A database with the stand-in source tables and the PostgreSQL migration 0002 (its file, as is)."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(SOURCE_TABLES)
        conn.execute(postgres_schema_sql())  # type: ignore[arg-type]
    return postgres_dsn


def test_the_postgres_migration_publishes_on_the_listeners_channel() -> None:
    assert f"pg_notify('{CHANNEL}', NEW.channel)" in postgres_schema_sql()


def test_the_postgres_migration_applies_through_yoyo(tmp_path: Path, postgres_dsn: str) -> None:
    """The PostgreSQL 0002 file as yoyo reads it (statement by statement, dollar-quoted bodies whole),
    after a stand-in baseline of the source tables (the PostgreSQL store's 0001 is not on this branch)."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001.baseline.sql").write_text(SOURCE_TABLES)
    (folder / f"{MIGRATION_ID}.sql").write_text(postgres_schema_sql())
    assert migrate(postgres_dsn, directory=folder) == ["0001.baseline", MIGRATION_ID]
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("INSERT INTO mailbox (client_id) VALUES ('cli_9')")
        conn.execute("INSERT INTO leases VALUES ('job', 'me', 2.0, 1.0)")
        rows = conn.execute("SELECT channel FROM notifications").fetchall()
    assert rows == [("cli_9",)]


def pg_notify_write(dsn: str, channel: str, *, rollback: bool = False) -> Callable[[], None]:
    def write() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO notifications (channel) VALUES (%s)", (channel,))
            if rollback:
                conn.rollback()
            else:
                conn.commit()

    return write


def pg_listener(dsn: str, wakeups: Wakeups, reconnect_s: float = 0.5) -> PostgresNotificationListener:
    listener = PostgresNotificationListener(dsn, wakeups, reconnect_s=reconnect_s)
    listener.start()
    assert listener.wait_listening(GUARD_S)
    return listener


def test_postgres_commit_on_another_connection_wakes_the_waiter(pg: str) -> None:
    wakeups = Wakeups()
    listener = pg_listener(pg, wakeups)
    try:
        assert not woken_by(wakeups, "cli_x", pg_notify_write(pg, "cli_x", rollback=True), timeout=0.5)
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            assert woken_by(wakeups, "cli_x", pg_notify_write(pg, "cli_x"))
            latencies.append(time.perf_counter() - started)
        median_ms = 1000 * statistics.median(latencies)
        print(f"PostgreSQL LISTEN/NOTIFY wake-up (a writer's connect + commit included): {median_ms:.1f} ms")
    finally:
        listener.stop()


def test_postgres_no_wake_up_lost_across_a_reconnect(pg: str) -> None:
    """The listener's connection is cut (``pg_terminate_backend``); a commit made while it has no
    connection still wakes the waiter: the listener catches up from the table when it reconnects (and
    has counted the new connection by then: the check right after the wake-up is no race)."""
    connects_at_wake: list[int] = []

    class Recording(Wakeups):
        def notify(self, channels: Iterable[str]) -> None:
            connects_at_wake.append(listener.connects)
            super().notify(channels)

    wakeups = Recording()
    listener = pg_listener(pg, wakeups, reconnect_s=2.0)  # the write most likely lands while it is away
    try:
        pid = listener.backend_pid

        def cut_then_write() -> None:
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + GUARD_S
            while listener.wait_listening(0) and time.monotonic() < deadline:
                time.sleep(0.005)  # until the listener saw the cut (then it waits before reconnecting)
            pg_notify_write(pg, "idn_z")()

        assert woken_by(wakeups, "idn_z", cut_then_write)
        assert connects_at_wake and min(connects_at_wake) >= 2
        assert listener.connects >= 2 and listener.backend_pid != pid
    finally:
        listener.stop()


def test_postgres_source_triggers_notify_in_the_transaction_of_the_change(pg: str) -> None:
    wakeups = Wakeups()
    listener = pg_listener(pg, wakeups)

    def sql(*statements: str) -> Callable[[], None]:
        def write() -> None:
            with psycopg.connect(pg) as conn:
                for statement in statements:
                    conn.execute(statement)  # type: ignore[arg-type]

        return write

    try:
        assert woken_by(wakeups, "cli_1", sql("INSERT INTO mailbox (client_id) VALUES ('cli_1')"))
        assert woken_by(wakeups, "idn_1", sql("INSERT INTO inbox (identity_id) VALUES ('idn_1')"))
        sql("INSERT INTO identities VALUES ('idn_2'), ('idn_3')", "INSERT INTO clients VALUES ('cli_1')")()
        hook = "INSERT INTO webhooks (identity_id, url, secret, created_at) VALUES ('idn_2', 'u', 'x', 1)"
        assert woken_by(wakeups, "webhooks:changed", sql(hook))
        assert woken_by(wakeups, "idn_2", sql("UPDATE webhooks SET paused = 1"))
        assert woken_by(wakeups, "webhooks:changed", sql("DELETE FROM webhooks"))
    finally:
        listener.stop()
    with psycopg.connect(pg) as conn:
        before = conn.execute("SELECT COUNT(*) FROM notifications").fetchone()
        conn.execute(hook)
        conn.execute("UPDATE webhooks SET attempts = 3")  # a failed attempt: no configuration change
        after = conn.execute("SELECT COUNT(*) FROM notifications").fetchone()
    assert before is not None and after is not None and after[0] - before[0] == 2  # the insert's two
    # A deleted identity (its webhook with it) or client leaves no notification naming it.
    sql("DELETE FROM identities WHERE identity_id = 'idn_2'", "DELETE FROM clients")()
    with psycopg.connect(pg) as conn:
        left = conn.execute(
            "SELECT COUNT(*) FROM notifications WHERE channel IN ('idn_2', 'cli_1')"
        ).fetchone()
    assert left == (0,)


def test_a_listener_whose_server_never_answers_still_stops() -> None:
    """A server that accepts the connection and then says nothing (hung, or a half-open network path):
    the listener's connection attempt gives up (``connect_timeout``), so the gateway's shutdown, which stops
    the listener, does not hang with it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nothing ever answers
        port = silent.getsockname()[1]
        listener = PostgresNotificationListener(f"postgresql://mlsgw@127.0.0.1:{port}/x", Wakeups())
        listener.start()
        stopper = threading.Thread(target=listener.stop, daemon=True)
        stopper.start()
        stopper.join(GUARD_S)  # the attempt gives up within seconds; without a timeout it never does
        assert not stopper.is_alive()


def client_sockets(port: int) -> list[str]:
    """``ss`` lines (with timers) of this machine's established TCP connections to ``port``."""
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", "dport", "=", f":{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def keepalive_timers(port: int) -> list[str]:
    """:func:`client_sockets`, read again (within the guard) while a line shows another timer than the
    keepalive: a socket with a segment not yet acknowledged shows its retransmission timer instead
    (``timer:(on,…)``; seen once beside a CPU hog, a 43-byte query in flight) — a socket without
    keepalive shows no timer at all, whenever it is read, and fails."""
    deadline = time.monotonic() + GUARD_S
    while True:
        lines = client_sockets(port)
        in_flight = [line for line in lines if "timer:(on," in line]
        if not in_flight or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_every_connection_probes_a_silent_server(postgres_dsn: str) -> None:
    """The pool's connections and the LISTEN connection run TCP keepalives and a user timeout (a server
    or network that vanishes without a reset is noticed in about a minute, not ~15), unless the URL sets
    its own; the kernel's timers show it."""
    port = int(postgres_dsn.rsplit(":", 1)[1].split("/")[0])
    store = PostgresStore(postgres_dsn)
    listener = pg_listener(postgres_dsn, Wakeups())
    try:
        store.ping()
        lines = keepalive_timers(port)
        assert len(lines) >= 2, lines  # a pooled connection and the listener's
        assert all("timer:(keepalive" in line for line in lines), lines
        with store._pool.connection() as conn:
            params = conninfo_to_dict(conn.info.dsn)
        assert params["keepalives_idle"] == "30" and params["tcp_user_timeout"] == "30000", params
    finally:
        listener.stop()
        store.close()
    own = PostgresStore(f"{postgres_dsn}?keepalives_idle=77")  # the operator's setting wins
    try:
        with own._pool.connection() as conn:
            params = conninfo_to_dict(conn.info.dsn)
        assert params["keepalives_idle"] == "77" and params["keepalives_count"] == "3", params
    finally:
        own.close()
