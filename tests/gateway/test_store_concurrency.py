"""Two PostgreSQL stores (two connection pools: as two gateway processes) racing on one database, and the
store across a crash and restart of the PostgreSQL server (issue 15)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.audit_chain import verify
from gateway.audit_trail import export_lines
from gateway.delivery_store import LogConflict, LogEntry, LogHead
from gateway.postgres_store import PostgresStore
from gateway.sqlite_store import SqliteTransaction
from gateway.store import EpochConflict, IdempotentResponse, StoreFault, StoreUnavailable
from tests.postgres_cluster import PostgresCluster

from .test_store_contract import G, audit_record, group, seed

RACERS = 8


@pytest.fixture
def stores(postgres_dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    # A generous lock wait: the machine is shared, and a wait past it is StoreUnavailable by design.
    a, b = (PostgresStore(postgres_dsn, busy_timeout_s=120.0) for _ in range(2))
    yield a, b
    a.close()
    b.close()


def race(
    stores: tuple[PostgresStore, PostgresStore], attempt: Callable[[PostgresStore, int], str]
) -> list[str]:
    """``attempt`` run by :data:`RACERS` threads at once, alternating between the two stores."""
    barrier = threading.Barrier(RACERS)
    results: list[str] = [""] * RACERS
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(stores[i % 2], i)
        except BaseException as e:  # reported by the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_group_compare_and_swap_has_one_winner(stores: tuple[PostgresStore, PostgresStore]) -> None:
    seed(stores[0])
    with stores[0].transaction() as tx:
        tx.put_group(group(), None)

    def attempt(store: PostgresStore, i: int) -> str:
        try:
            with store.transaction() as tx:
                tx.put_group(group(b"s-%d" % i, 1), 1)  # every racer loaded version 1
        except EpochConflict:
            return "conflict"
        return "won"

    assert sorted(race(stores, attempt)) == ["conflict"] * (RACERS - 1) + ["won"]
    with stores[1].read_transaction() as tx:
        g = tx.get_group("idn_1", G)
        assert g is not None and g.version == 2


def test_log_append_for_one_epoch_has_one_winner(stores: tuple[PostgresStore, PostgresStore]) -> None:
    seed(stores[0])
    with stores[0].transaction() as tx:
        tx.put_log_head(LogHead("ten_1", G, 1, 1, 0, b"gi", b"tree"), None)

    checked = threading.Barrier(RACERS)

    def attempt(store: PostgresStore, i: int) -> str:
        with store.read_transaction() as tx:  # the head the commit was checked against
            head = tx.get_log_head("ten_1", G)
        assert head is not None
        checked.wait()  # every racer checked its commit against the same head
        try:
            with store.transaction() as tx:
                tx.put_log_head(LogHead("ten_1", G, 1, head.epoch + 1, head.seq + 1, b"gi", b"t"), head.seq)
                commit = LogEntry(head.seq + 1, head.epoch, "commit", None, b"commit-%d" % i)
                tx.append_log_entries("ten_1", G, [commit])
        except LogConflict:
            return "conflict"
        return "won"

    assert sorted(race(stores, attempt)) == ["conflict"] * (RACERS - 1) + ["won"]
    with stores[0].read_transaction() as tx:
        entries = tx.log_entries("ten_1", G, 0, 100)
        assert [(e.seq, e.epoch) for e in entries] == [(1, 1)]


def test_one_idempotency_key_executes_once(stores: tuple[PostgresStore, PostgresStore]) -> None:
    seed(stores[0])

    def attempt(store: PostgresStore, i: int) -> str:
        with store.transaction() as tx:  # gateway.persistence: check, then the work and its response
            if tx.get_idempotent("ten_1:idn_1", "key-1", 0) is not None:
                return "replayed"
            tx.add_audit([audit_record(i)])  # the request's work
            tx.put_idempotent("ten_1:idn_1", "key-1", IdempotentResponse(b"h", 200, b"%d" % i), "idn_1")
        return "executed"

    assert sorted(race(stores, attempt)) == ["executed"] + ["replayed"] * (RACERS - 1)
    with stores[0].read_transaction() as tx:
        head = tx.audit_head()
    assert head is not None and head[0] == 1  # the work was done once


def test_concurrent_audit_appends_stay_one_chain(stores: tuple[PostgresStore, PostgresStore]) -> None:
    seed(stores[0])

    def attempt(store: PostgresStore, i: int) -> str:
        for n in range(5):
            with store.transaction() as tx:
                tx.add_audit([audit_record(100 * i + n), audit_record(100 * i + n + 50)])
        return "ok"

    race(stores, attempt)
    assert verify(list(export_lines(stores[1])), None).records == RACERS * 5 * 2


def test_mailbox_cursors_follow_commit_order(stores: tuple[PostgresStore, PostgresStore]) -> None:
    """A reader paging by cursor never skips an item: cursors are allocated in commit order."""
    seed(stores[0])
    seen: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        cursor = 0
        try:
            while True:
                done = stop.is_set()  # before the read: a read after every write committed ends it
                with stores[0].read_transaction() as tx:
                    events = tx.inbox_after("idn_1", cursor, 100)
                for e in events:
                    seen.append(e.cursor)
                    cursor = e.cursor
                if done and not events:
                    return
        except BaseException as e:
            errors.append(e)

    def attempt(store: PostgresStore, i: int) -> str:
        for n in range(10):
            with store.transaction() as tx:
                tx.add_inbox_event("idn_1", G, 10 * i + n, b"event")
        return "ok"

    t = threading.Thread(target=reader)
    t.start()
    race(stores, attempt)
    stop.set()
    t.join()
    assert not errors, errors
    with stores[1].read_transaction() as tx:
        every = [e.cursor for e in tx.inbox_after("idn_1", 0, 1000)]
    assert len(every) == RACERS * 10 and seen == every


def test_write_lock_serialises_writers_across_stores(stores: tuple[PostgresStore, PostgresStore]) -> None:
    """While one store's write transaction is open, the other's waits; reads do not."""
    seed(stores[0])
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with stores[0].transaction():
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(30)
    assert stores[1].write_probe(0.2) is not None  # writes would wait: not ready
    with stores[1].read_transaction() as tx:
        assert tx.get_tenant("ten_1") is not None
    release.set()
    t.join(30)
    assert stores[1].write_probe(5.0) is None


def test_connection_loss_is_store_unavailable_and_recovers(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    store = PostgresStore(postgres_dsn, connect_timeout_s=2.0)
    try:
        seed(store)
        postgres_cluster.kill()
        try:
            for attempt in (store.transaction, store.read_transaction):
                with pytest.raises(StoreUnavailable) as lost, attempt() as tx:
                    tx.get_tenant("ten_1")
                assert not isinstance(lost.value, StoreFault)  # 503 "retry later", not a defect
            with pytest.raises(StoreUnavailable):
                store.ping()
            assert store.write_probe(0.5) is not None
        finally:
            postgres_cluster.start()
        deadline = time.monotonic() + 60
        while True:  # the pool reconnects by itself
            try:
                store.ping()
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with store.transaction() as tx:
            assert tx.get_tenant("ten_1") is not None
            assert isinstance(tx, SqliteTransaction)
    finally:
        store.close()
