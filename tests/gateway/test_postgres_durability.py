"""The PostgreSQL store's durability outside the write lock (gateway/postgres_durability.py, issue 15): a
crash of the server right after acknowledgments loses nothing acknowledged — no write whose transaction
block returned, and nothing a read transaction returned — and without the flush it would.

The server's WAL writer is slowed to its maximum delay for these tests (``wal_writer_delay = 10s``), on a
cluster of the module's own, so an asynchronous commit nobody flushes stays in the server's memory until
the crash: a missing wait shows as a loss instead of being hidden by a background flush.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from gateway import postgres_durability
from gateway.postgres_store import PostgresStore
from gateway.store import StoreUnavailable
from tests.postgres_cluster import PostgresCluster, throwaway_cluster

from .test_store_contract import G, seed

WRITERS = 4


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this module's own (``postgres_dsn`` makes its databases here): its tests crash the
    server, and the controls need a WAL nobody else flushes — on the session's cluster another test's
    gateway (its lease renewals, its reads' flush checks) flushes the WAL now and then, making a control's
    unflushed commit durable before the crash."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def slow_wal_writer(postgres_cluster: PostgresCluster) -> Iterator[None]:
    def setting(sql: str) -> None:
        with psycopg.connect(postgres_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql)
            conn.execute("SELECT pg_reload_conf()")

    setting("ALTER SYSTEM SET wal_writer_delay = '10s'")
    yield
    setting("ALTER SYSTEM RESET wal_writer_delay")


def crash_under_load(cluster: PostgresCluster, dsn: str) -> tuple[set[int], set[int], set[int]]:
    """Writers on one store and a reader on another (two processes' pools) until the server is killed;
    then restart it. Returns the events acknowledged to writers, those returned by acknowledged reads, and
    those in the database after recovery (by their ``seq``)."""
    writer, reader = (PostgresStore(dsn, connect_timeout_s=2.0, busy_timeout_s=60.0) for _ in range(2))
    seed(writer)
    written: set[int] = set()
    read: set[int] = set()
    lock = threading.Lock()
    crashed = threading.Event()

    def write(i: int) -> None:
        n = 0
        while not crashed.is_set():
            seq = i * 1_000_000 + n
            try:
                with writer.transaction() as tx:
                    tx.add_inbox_event("idn_1", G, seq, b"event")
            except StoreUnavailable:
                continue
            with lock:
                written.add(seq)
            n += 1

    def page() -> None:
        cursor = 0
        while not crashed.is_set():
            try:
                with reader.read_transaction() as tx:
                    events = tx.inbox_after("idn_1", cursor, 100)
            except StoreUnavailable:
                continue
            with lock:
                read.update(e.seq for e in events)
            cursor = events[-1].cursor if events else cursor

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    threads.append(threading.Thread(target=page))
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(written) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.kill()  # writes and reads are being acknowledged right now
        with lock:  # what was acknowledged before the crash (anything later failed: the server is gone)
            acked_writes, acked_reads = set(written), set(read)
    finally:
        crashed.set()
        for t in threads:
            t.join(60)
        cluster.start()
    writer.close()
    reader.close()
    after = PostgresStore(dsn, migrate=False)  # a new pool: the old ones back off before reconnecting
    try:
        with after.read_transaction() as tx:
            present = {e.seq for e in tx.inbox_after("idn_1", 0, 1_000_000)}
    finally:
        after.close()
    assert len(acked_writes) >= 200 and acked_reads
    return acked_writes, acked_reads, present


@pytest.mark.usefixtures("slow_wal_writer")
def test_a_crash_loses_nothing_acknowledged(postgres_cluster: PostgresCluster, postgres_dsn: str) -> None:
    written, read, present = crash_under_load(postgres_cluster, postgres_dsn)
    assert written - present == set()
    assert read - present == set()


@pytest.mark.usefixtures("slow_wal_writer")
def test_without_the_flush_a_crash_loses_an_acknowledged_write(
    postgres_cluster: PostgresCluster, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the write side: with :data:`FLUSH` writing nothing, the commit stays asynchronous and
    unflushed, and a crash right after the acknowledgement loses it. (One write then the crash: under
    load, other commits' WAL writes may carry it to the OS before the crash — a control that only
    sometimes loses is no control; the read side's is the pair below.)"""
    monkeypatch.setattr(postgres_durability, "FLUSH", "SELECT 1")
    assert write_then_crash(postgres_cluster, postgres_dsn) == set()


def write_then_crash(cluster: PostgresCluster, dsn: str, *, flush_under_lock: bool = False) -> set[int]:
    """One write acknowledged by the store, then the server crashes at once; what is there after recovery."""
    store = PostgresStore(dsn, flush_under_lock=flush_under_lock)
    try:
        seed(store)
        with store.transaction() as tx:
            tx.add_inbox_event("idn_1", G, 1, b"event")
    finally:
        store.close()
    cluster.kill()  # right after the acknowledgment
    cluster.start()
    after = PostgresStore(dsn, migrate=False)
    try:
        with after.read_transaction() as tx:
            return {e.seq for e in tx.inbox_after("idn_1", 0, 100)}
    finally:
        after.close()


def commit_without_flush(dsn: str, seq: int) -> None:
    """What a writer process does before its flush (``commit_write``): an asynchronous commit — then it
    stalls (paused, descheduled, killed) before the flush."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN; SET LOCAL synchronous_commit = off")
        conn.execute(
            "INSERT INTO inbox (identity_id, group_id, seq, event, created_at) VALUES (%s, %s, %s, %s, 0)",
            ("idn_1", G, seq, b"event"),
        )
        conn.execute("COMMIT")


def read_then_crash(cluster: PostgresCluster, dsn: str) -> tuple[set[int], set[int]]:
    """Another process's commit, visible but not flushed, read by a read transaction; then the server
    crashes. Returns what the read returned and what is there after recovery."""
    store = PostgresStore(dsn)
    try:
        seed(store)
        commit_without_flush(dsn, 7)
        with store.read_transaction() as tx:
            read = {e.seq for e in tx.inbox_after("idn_1", 0, 100)}
    finally:
        store.close()
    cluster.kill()
    cluster.start()
    after = PostgresStore(dsn, migrate=False)
    try:
        with after.read_transaction() as tx:
            present = {e.seq for e in tx.inbox_after("idn_1", 0, 100)}
    finally:
        after.close()
    assert read == {7}
    return read, present


@pytest.mark.usefixtures("slow_wal_writer")
def test_a_read_returns_only_once_what_it_saw_is_durable(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    read, present = read_then_crash(postgres_cluster, postgres_dsn)
    assert read <= present


@pytest.mark.usefixtures("slow_wal_writer")
def test_without_the_read_wait_a_crash_loses_what_was_read(
    postgres_cluster: PostgresCluster, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_durability, "FLUSH", "SELECT 1")
    read, present = read_then_crash(postgres_cluster, postgres_dsn)
    assert read - present


@pytest.mark.usefixtures("slow_wal_writer")
@pytest.mark.parametrize("flush_under_lock", [False, True])
def test_a_server_default_of_asynchronous_commit_loses_nothing_acknowledged(
    postgres_cluster: PostgresCluster, postgres_dsn: str, flush_under_lock: bool
) -> None:
    """A DBA's ``synchronous_commit = off`` (for the database, a role or the server) must not turn the
    flush into one more asynchronous commit: an acknowledged write survives a crash right after it."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        database = conn.info.dbname
        conn.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
    assert write_then_crash(postgres_cluster, postgres_dsn, flush_under_lock=flush_under_lock) == {1}
