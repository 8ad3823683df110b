"""Two PostgreSQL stores (two connection pools: as two gateway processes) racing on one database, and the
store across a crash and restart of the PostgreSQL server (issue 15)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from psycopg_pool.base import AttemptWithBackoff

from gateway.audit_chain import verify
from gateway.audit_trail import export_lines
from gateway.delivery_store import LogConflict, LogEntry, LogHead
from gateway.postgres_durability import ORDER_LOCK, WRITE_LOCK, group_lock_key
from gateway.postgres_pool import OUTAGE_WAIT_S, RECONNECT_MAX_DELAY_S, _CappedBackoff
from gateway.postgres_sql import GROUP_TABLES, is_ordered
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


def test_with_the_server_down_a_request_fails_fast_once_a_connection_attempt_failed(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    """The pool's own wait (here 10 s) is for a busy pool; once an attempt to connect failed, a request
    waits at most ``OUTAGE_WAIT_S`` for its 503, and the full wait again once the server is back."""
    store = PostgresStore(postgres_dsn, connect_timeout_s=10.0)
    try:
        seed(store)
        assert not store._pool.failing and store._pool.wait_s() is None
        postgres_cluster.kill()
        try:
            deadline = time.monotonic() + 60
            while not store._pool.failing:  # the pool finds the lost connections and tries new ones
                with pytest.raises(StoreUnavailable):
                    store.ping()
                assert time.monotonic() < deadline
            assert store._pool.wait_s() == OUTAGE_WAIT_S
            started = time.monotonic()
            with pytest.raises(StoreUnavailable), store.read_transaction() as tx:
                tx.get_tenant("ten_1")
            assert time.monotonic() - started < 5.0  # not the pool's 10 s
        finally:
            postgres_cluster.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                store.ping()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert not store._pool.failing and store._pool.wait_s() is None
    finally:
        store.close()


def test_the_first_request_after_the_server_went_away_fails_fast(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    """A request that starts waiting for a connection before any attempt failed (the pooled connection it
    was lent is dead, a new one is being opened) is answered when that attempt fails, not at the end of
    the pool's wait (here 10 s)."""
    store = PostgresStore(postgres_dsn, connect_timeout_s=10.0)
    try:
        seed(store)
        assert not store._pool.failing
        postgres_cluster.kill()
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    store.ping()
                assert time.monotonic() - started < 5.0  # not the pool's 10 s
        finally:
            postgres_cluster.start()
    finally:
        store.close()


def test_a_busy_pool_that_cannot_grow_keeps_the_full_wait(postgres_dsn: str) -> None:
    """A failed attempt to connect while connections are lent out (the server at ``max_connections``
    refuses a new one; the lent ones come back) is not an outage: requests keep the pool's wait."""
    store = PostgresStore(postgres_dsn)
    try:
        with store._connection():
            store._pool.failing = True  # as after a refused connection
            assert store._pool.lent == 1 and store._pool.wait_s() is None
        assert store._pool.lent == 0 and store._pool.wait_s() == OUTAGE_WAIT_S
    finally:
        store.close()


def test_reconnect_attempts_are_capped_apart() -> None:
    """psycopg_pool doubles the pause between attempts to reconnect (1, 2, 4, 8 … s, up to its
    ``reconnect_timeout``): recovery lagged an outage by as long again. The store's pool caps it."""
    attempt = _CappedBackoff(timeout=300.0)
    delays = []
    for second in range(10):
        attempt.update_delay(float(second))
        delays.append(attempt.delay)
    assert 0.5 < delays[0] <= RECONNECT_MAX_DELAY_S and max(delays) == RECONNECT_MAX_DELAY_S
    assert all(d <= RECONNECT_MAX_DELAY_S for d in delays)
    plain = AttemptWithBackoff(timeout=300.0)
    for second in range(10):
        plain.update_delay(float(second))
    assert plain.delay > RECONNECT_MAX_DELAY_S  # what the cap is for


class Held:
    """A write transaction held open in a thread: ``run(sql)`` runs a statement in it (returns once it
    ran), ``release()`` commits it; ``done`` is set once its block returned."""

    def __init__(self, store: PostgresStore, group: bytes | None) -> None:
        self.statements: list[str | None] = []
        self.ran = threading.Semaphore(0)
        self.wanted = threading.Semaphore(0)
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._hold, args=(store, group), daemon=True)
        self.thread.start()

    def _hold(self, store: PostgresStore, group: bytes | None) -> None:
        try:
            with store.transaction(group) as tx:
                while True:
                    self.wanted.acquire()
                    sql = self.statements.pop(0)
                    if sql is None:
                        break
                    tx._c.execute(sql)
                    self.ran.release()
        except BaseException as e:
            self.errors.append(e)
        finally:
            self.done.set()

    def send(self, sql: str | None) -> None:
        self.statements.append(sql)
        self.wanted.release()

    def run(self, sql: str, guard_s: float = 60.0) -> None:
        self.send(sql)
        assert self.ran.acquire(timeout=guard_s), f"the statement did not run within {guard_s} s: {sql}"

    def release(self, guard_s: float = 60.0) -> None:
        self.send(None)
        assert self.done.wait(guard_s) and not self.errors, self.errors


def once(store: PostgresStore, group: bytes | None, sql: str) -> threading.Event:
    """One write transaction running ``sql`` in a thread; the event is set once it committed."""
    done = threading.Event()

    def run() -> None:
        with store.transaction(group) as tx:
            tx._c.execute(sql)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


IN_GROUP = "SELECT count(*) FROM group_logs WHERE false"  # a table of GROUP_TABLES: no order lock
ORDERED = "SELECT count(*) FROM audit WHERE false"  # any other table: the order lock first
BLOCKED_S = 0.5  # long enough for an unblocked transaction to finish many times over


def test_group_scoped_writes_overlap_across_groups_and_queue_within_one(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    """The locks of gateway.postgres_durability: a message's transaction of one group does not wait for
    another group's until it reaches an ordered table (the audit record before COMMIT); one group's wait
    for each other, and every other write transaction waits for all of them (and they for it)."""
    a, b = stores
    seed(a)
    first = Held(a, b"group-1")
    try:
        first.run(IN_GROUP)
        assert once(b, b"group-2", IN_GROUP).wait(60), "another group's write waited"
        assert once(b, b"group-2", ORDERED).wait(60), "the order lock is not taken before it is needed"
        first.run(ORDERED)  # the first now holds the order lock
        assert once(b, b"group-3", IN_GROUP).wait(60), "another group's write waited for the order lock"
        other_ordered = once(b, b"group-4", ORDERED)
        assert not other_ordered.wait(BLOCKED_S), "two writers held the order lock at once"
        same_group = once(b, b"group-1", IN_GROUP)
        assert not same_group.wait(BLOCKED_S), "two writes of one group overlapped"
        # (PostgreSQL queues a lock request behind a conflicting waiter: from here on, new group writes
        # wait behind this one too — no starvation of the writes of no group.)
        everyone = once(b, None, IN_GROUP)
        assert not everyone.wait(BLOCKED_S), "a write of no group overlapped a group's"
        first.release()
        for event in (other_ordered, same_group, everyone):
            assert event.wait(60)
    finally:
        if not first.done.is_set():
            first.send(None)
            first.done.wait(60)


def test_a_write_of_no_group_keeps_group_writes_out(stores: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = stores
    seed(a)
    held = Held(a, None)
    try:
        held.run(IN_GROUP)
        group_write = once(b, b"group-1", IN_GROUP)
        assert not group_write.wait(BLOCKED_S), "a group's write overlapped a write of no group"
        held.release()
        assert group_write.wait(60)
    finally:
        if not held.done.is_set():
            held.send(None)
            held.done.wait(60)


def test_which_statements_take_the_order_lock() -> None:
    for sql in (
        "UPDATE group_ratchets SET version = ? WHERE identity_id = ? AND version = ?",
        "INSERT INTO log_entries (tenant_id, group_id, seq) VALUES (?, ?, ?)",
        "select seq from LOG_ENTRIES where digest = ?",
        "DELETE FROM hosted_pending WHERE identity_id = ?",
        "UPDATE group_logs SET seq = ? WHERE seq = ?",
        "INSERT INTO hosted_pending (identity_id) VALUES (?) ON CONFLICT (identity_id) "
        "DO UPDATE SET up_to_seq = excluded.up_to_seq",
        "SELECT 1",
    ):
        assert not is_ordered(sql), sql
    for sql in (
        "INSERT INTO audit (seq, hash) VALUES (?, ?)",
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
        "INSERT INTO inbox (identity_id) VALUES (?) RETURNING cursor",
        "UPDATE group_logs SET seq = (SELECT max(seq) FROM mailbox_items) WHERE seq = ?",
        "SELECT * FROM log_entries e JOIN webhooks w ON w.identity_id = e.sender",
        "SELECT leaf_index FROM group_members WHERE group_id = ? AND EXISTS (SELECT 1 FROM inbox)",
        'DELETE FROM "idempotency" WHERE at < ?',
        "SELECT * FROM ONLY identities",
    ):
        assert is_ordered(sql), sql
    assert {
        "group_ratchets",
        "group_logs",
        "group_members",
        "log_entries",
        "hosted_pending",
        "groups",  # read only there: a ratchet write's compare-and-swap on the full state's version
    } == GROUP_TABLES


def test_group_lock_keys_are_stable_distinct_and_never_global() -> None:
    keys = {group_lock_key(bytes([i]) * 16) for i in range(256)}
    assert len(keys) == 256 and not keys & {WRITE_LOCK, ORDER_LOCK}
    assert group_lock_key(b"g") == group_lock_key(b"g") and -(2**63) <= group_lock_key(b"g") < 2**63


def order_lock_held(tx: SqliteTransaction) -> bool:
    """Whether the transaction's session holds the order lock (asked on its psycopg connection itself,
    whose statements are not checked)."""
    raw = tx._c._conn  # type: ignore[attr-defined]
    row = raw.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
        "AND ((classid::bigint << 32) | objid::bigint) = %s",
        (ORDER_LOCK,),
    ).fetchone()
    return bool(row and row[0])


def test_an_empty_batch_takes_no_order_lock(stores: tuple[PostgresStore, PostgresStore]) -> None:
    """``executemany`` with no rows runs nothing, so it does not take the order lock (an append with no
    Welcome writes none); a statement on an ordered table does."""
    a, _ = stores
    seed(a)

    with a.transaction(b"group-1") as tx:
        tx._c.executemany(
            "INSERT INTO log_welcomes (tenant_id, group_id, seq, digest) VALUES (?, ?, ?, ?)", []
        )
        tx._c.execute(IN_GROUP)
        assert not order_lock_held(tx)
        tx._c.execute(ORDERED)
        assert order_lock_held(tx)
