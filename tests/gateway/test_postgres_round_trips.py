"""Round trips of the PostgreSQL store's transactions (gateway/postgres_store.py, gateway/postgres_sql.py),
counted on the wire with libpq's protocol trace against the session's real throw-away cluster: a read or
a group-scoped write sends its ``BEGIN`` and locks with its first statement, one that runs no statement
costs nothing, lending a connection costs nothing — and a session the server ended is still never lent."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from gateway.delivery_store import HostedWork, LogConflict, LogEntry, LogHead, LogPosition
from gateway.group_log import GroupLog, PreparedMessage
from gateway.postgres_durability import LOCK_ORDER, WRITE_LOCK, write_begin
from gateway.postgres_store import PostgresStore
from gateway.store import AuditRecord, EpochConflict, GroupRecord, StoreFault, StoreUnavailable, Tenant
from mls.group.observer import MessageInfo
from mls.wire.framing import WireFormat

from .test_store_concurrency import IN_GROUP, ORDERED, Held, order_lock_held
from .test_store_contract import identity

pytestmark = pytest.mark.usefixtures("postgres_cluster")


@pytest.fixture
def store(postgres_dsn: str) -> Iterator[PostgresStore]:
    """A store with one pooled connection (every transaction on it), and a tenant."""
    s = PostgresStore(postgres_dsn, pool_size=1)
    with s.transaction() as tx:
        tx.add_tenant(Tenant("ten_1", "one"))
    yield s
    s.close()


@contextmanager
def traced(store: PostgresStore) -> Iterator[list[str]]:
    """The round trips on the store's one connection while the block runs, in the list after it: the
    protocol trace of each (one ``ReadyForQuery`` from the server ends each: a simple query, or a
    pipeline's ``Sync``)."""
    trips: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace"
        with path.open("w") as out:
            with store._pool.connection() as conn:
                conn.pgconn.trace(out.fileno())
            try:
                yield trips
            finally:
                with store._pool.connection() as conn:  # the same one: the pool has only it
                    conn.pgconn.untrace()
        trips.extend(path.read_text().split("\tReadyForQuery\t")[:-1])


@contextmanager
def round_trips(store: PostgresStore) -> Iterator[list[int]]:
    """Counts the round trips (:func:`traced`); the count is in ``[0]`` after the block."""
    counted = [0]
    with traced(store) as trips:
        yield counted
    counted[0] = len(trips)


def test_a_read_is_its_statements_and_one_more(store: PostgresStore) -> None:
    with round_trips(store) as n, store.read_transaction() as tx:
        assert tx.get_tenant("ten_1") is not None
        assert tx.get_tenant("ten_2") is None
    assert n[0] == 3  # BEGIN + snapshot position + first SELECT; second SELECT; COMMIT + flush check


def test_a_group_scoped_write_is_its_statements_and_one_more(store: PostgresStore) -> None:
    with round_trips(store) as n, store.transaction(b"group-1") as tx:
        tx._c.execute(IN_GROUP)
        tx._c.execute(ORDERED)  # the order lock goes with it
    assert n[0] == 3  # BEGIN + settings + locks + first; order lock + second; COMMIT + flush


def test_a_transaction_that_runs_nothing_costs_nothing(store: PostgresStore) -> None:
    with round_trips(store) as n:
        with store.read_transaction():
            pass
        with store.transaction(b"group-1"):
            pass
    assert n[0] == 0


def test_a_write_of_no_group_holds_the_lock_from_its_start(store: PostgresStore, postgres_dsn: str) -> None:
    """Its callers may rely on the lock before their first statement: it is taken on entering."""
    other = PostgresStore(postgres_dsn, pool_size=1, migrate=False)
    try:
        with round_trips(store) as n, store.transaction():
            assert other.write_probe(0.2) == "the write lock is held (writes would wait and answer 503)"
        assert n[0] == 2  # BEGIN + settings + lock; COMMIT + flush
        assert other.write_probe(5.0) is None
    finally:
        other.close()


def test_a_lock_not_granted_in_time_is_unavailable_and_leaves_the_connection_usable(
    postgres_dsn: str, store: PostgresStore
) -> None:
    """A group-scoped write whose group lock is held past the wait: its first statement (sent with the
    ``BEGIN`` and the lock) is a 503, the transaction is rolled back, the next one runs."""
    impatient = PostgresStore(postgres_dsn, pool_size=1, busy_timeout_s=0.2, migrate=False)
    holder = Held(store, b"group-1")
    try:
        holder.run(IN_GROUP)
        with pytest.raises(StoreUnavailable), impatient.transaction(b"group-1") as tx:
            tx._c.execute(IN_GROUP)
        holder.release()
        with impatient.transaction(b"group-1") as tx:
            tx._c.execute(IN_GROUP)
        with impatient._pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        if not holder.done.is_set():
            holder.send(None)
            holder.done.wait(60)
        impatient.close()


def test_a_session_the_server_ended_is_never_lent(store: PostgresStore, postgres_dsn: str) -> None:
    """Lending an idle connection costs no round trip, yet one whose session the server ended (here
    ``pg_terminate_backend``; a restart alike) is checked, dropped and replaced: no request sees it."""
    with store._pool.connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 60  # the signal is asynchronous: wait until the session has ended
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.01)
    with store.read_transaction() as tx:
        assert tx.get_tenant("ten_1") is not None
    with store.transaction(b"group-1") as tx:
        tx._c.execute(IN_GROUP)
    with store._pool.connection() as conn:
        assert conn.info.backend_pid != pid


def test_no_group_gets_a_prepared_statement_of_its_own(store: PostgresStore) -> None:
    """A group's lock names its key in the statement: sent unprepared, or every busy group would hold a
    prepared statement on every connection (and push the hot ones out of psycopg's cache)."""
    for group in range(4):
        for _ in range(6):  # psycopg prepares a statement on its fifth run on a connection
            with store.transaction(b"group-%d" % group) as tx:
                tx._c.execute(IN_GROUP)
    with store._pool.connection() as conn:
        prepared = [str(r[0]) for r in conn.execute("SELECT statement FROM pg_prepared_statements")]
    assert any("group_logs" in s for s in prepared)  # the transaction's own statement is prepared
    assert not [s for s in prepared if "advisory" in s or "set_config" in s], prepared


def test_a_writes_one_begin_statement_sets_its_timeout_then_takes_the_global_lock_then_the_groups(
    postgres_dsn: str,
) -> None:
    """A group-scoped write's settings and locks are one ``SELECT`` (``in_order``): the lock timeout and
    asynchronous commit hold inside the transaction, and while the global write lock is held elsewhere the
    writer waits for it holding no group lock (the order that keeps writers free of deadlocks), then gives
    up at its lock timeout."""
    timeout_s = 3.0
    begin = write_begin(timeout_s, flush_under_lock=False, group=b"group-1")
    assert len(begin) == 2
    with (
        psycopg.connect(postgres_dsn, autocommit=True) as writer,
        psycopg.connect(postgres_dsn, autocommit=True) as other,
    ):
        for statement in begin:
            writer.execute(statement)
        assert writer.execute("SHOW synchronous_commit").fetchone() == ("off",)
        assert writer.execute("SHOW lock_timeout").fetchone() == ("3s",)
        writer.execute("ROLLBACK")
        other.execute("BEGIN")
        other.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        locks: list[tuple[object, ...]] = []
        pid = writer.info.backend_pid

        def look() -> None:  # until the writer is seen waiting (or has given up)
            with psycopg.connect(postgres_dsn, autocommit=True) as watcher:
                deadline = time.monotonic() + timeout_s
                while not locks and time.monotonic() < deadline:
                    locks.extend(
                        watcher.execute(
                            "SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
                            (pid,),
                        ).fetchall()
                    )
                    time.sleep(0.02)

        watching = threading.Thread(target=look)
        watching.start()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            for statement in begin:
                writer.execute(statement)
        watching.join(30)
        writer.execute("ROLLBACK")
        other.execute("ROLLBACK")
    assert locks == [("ShareLock", False)]  # waiting for the global lock, no group lock held


#: Writes that change nothing but are queued like any (gateway.postgres_sql.QueuedWrite): one of the
#: group's tables, one ordered.
IN_GROUP_WRITE = "UPDATE group_logs SET seq = seq WHERE false"
ORDERED_WRITE = "UPDATE audit SET ok = ok WHERE false"


def test_a_write_goes_with_the_next_read_or_with_the_commit(store: PostgresStore) -> None:
    """A message's write transaction shape: writes, a read, writes — the writes cost no round trip of their
    own (7 round trips here before they were queued)."""
    with round_trips(store) as n, store.transaction(b"group-1") as tx:
        tx._c.execute(IN_GROUP_WRITE)
        tx._c.execute(IN_GROUP)  # BEGIN + settings + locks + the write + this
        tx._c.execute(IN_GROUP_WRITE)
        tx._c.executemany(IN_GROUP_WRITE.replace("false", "? = 0"), [(1,), (2,)])
        tx._c.execute(ORDERED)  # the writes + the order lock + this
        tx._c.execute(ORDERED_WRITE)
    assert n[0] == 3  # ... and the last write + COMMIT + flush


def test_a_write_whose_row_count_is_read_goes_at_once(store: PostgresStore) -> None:
    """(Unread, it would go with the commit: one round trip in all, the test below.)"""
    with round_trips(store) as n, store.transaction(b"group-1") as tx:
        assert tx._c.execute(IN_GROUP_WRITE).rowcount == 0
    assert n[0] == 2


def test_a_transaction_of_queued_writes_alone_is_one_round_trip(store: PostgresStore) -> None:
    with round_trips(store) as n, store.transaction(b"group-1") as tx:
        tx._c.execute(IN_GROUP_WRITE)
        tx._c.execute(ORDERED_WRITE)
    assert n[0] == 1  # BEGIN + settings + locks + the writes + the order lock before the second + COMMIT


def test_a_queued_write_that_fails_at_the_commit_writes_nothing(store: PostgresStore) -> None:
    """Its error comes with the commit's round trip: a ``StoreFault`` (a duplicate key here), nothing of
    the transaction is kept, and the connection serves the next one."""
    with pytest.raises(StoreFault), store.transaction() as tx:
        tx.add_tenant(Tenant("ten_2", "two"))
        tx.add_tenant(Tenant("ten_1", "again"))  # a duplicate: the INSERT fails, queued with the COMMIT
    with store.read_transaction() as tx:
        assert tx.get_tenant("ten_2") is None
    with store.transaction() as tx:
        tx.add_tenant(Tenant("ten_2", "two"))
    with store.read_transaction() as tx:
        assert tx.get_tenant("ten_2") is not None


def test_a_lost_compare_and_swap_before_a_failed_write_is_what_raises(store: PostgresStore) -> None:
    """Two queued writes, the first a compare-and-swap that lost, the second failing: alone, the first
    would have raised before the second ran — so its conflict is what the round trip raises."""
    with store.transaction() as tx:
        tx.put_log_head(LogHead("ten_1", b"group-1", 1, 1, 0, b"gi", b"tree"), None)
        tx.append_log_entries("ten_1", b"group-1", [LogEntry(1, 1, "commit", None, b"one")])
    with pytest.raises(LogConflict), store.transaction(b"group-1") as tx:
        tx.put_log_head(LogHead("ten_1", b"group-1", 1, 2, 1, b"gi", b"tree"), 5)  # not the head's seq
        tx.append_log_entries("ten_1", b"group-1", [LogEntry(1, 1, "commit", None, b"two")])  # seq 1 again
        tx._c.execute(IN_GROUP)


def a_sender_and_a_receiver(store: PostgresStore) -> bytes:
    """Two identities, the first a member of a group whose log is at epoch 0, seq 0; the group's id."""
    g = b"group-1"
    with store.transaction() as tx:
        tx.add_identity(identity(1))
        tx.add_identity(identity(2))
        tx.put_group(GroupRecord("idn_1", g, 0, b"state", None), None)
        tx.put_log_head(LogHead("ten_1", g, 1, 0, 0, b"gi", b"tree"), None)
    return g


def test_a_messages_write_transaction_is_three_round_trips(store: PostgresStore) -> None:
    """The send path's write transaction, statement for statement (``GroupSession`` writes the sender's
    ratchet state, ``GroupLog.append_messages`` asks for the head, the message's digest and the members
    together, appends and marks the hosted receiver, ``Persistence`` adds the audit record): 11 round
    trips when each statement had its own (10 once the membership had a ratchet state), 5 with the writes
    queued, 3 with the reads asked for together — and the order lock
    (every group's writers share it) goes with the ``COMMIT``, in the last round trip: the audit record
    is linked to the chain's head by the database (gateway/postgres_audit.py), and the compare-and-swaps
    before it are checked in the round trip before."""
    g = a_sender_and_a_receiver(store)
    with traced(store) as trips, store.transaction(g) as tx:
        tx.put_group_ratchet("idn_1", g, 0, b"ratchet", 1)
        tx.prefetch(
            lambda: tx.get_log_position("ten_1", g),
            lambda: tx.log_seq_of("ten_1", g, b"d" * 32),
            lambda: tx.get_delivered_members("ten_1", g),
        )
        head = tx.get_log_position("ten_1", g)
        assert head is not None
        assert not order_lock_held(tx)  # the ratchet write reads ``groups``: the order lock waits
        assert tx.log_seq_of("ten_1", g, b"d" * 32) is None
        tx.get_delivered_members("ten_1", g)
        tx.advance_log_seq(head, head.seq + 1)
        tx.append_log_entries("ten_1", g, [LogEntry(head.seq + 1, 0, "application", "idn_1", b"m")])
        tx.mark_hosted_pending([HostedWork("idn_2", "ten_1", g, head.seq + 1)])
        tx.add_audit([AuditRecord("req", "ten_1", "idn_1", g, 0, b"ref", "sign", "hsm", True)])
        assert not order_lock_held(tx)  # the record waits for the COMMIT, and the lock with it
    assert len(trips) == 5  # 3, and the two looks at the order lock
    [ordered] = [trip for trip in trips if LOCK_ORDER in trip]
    assert ordered is trips[-1] and "COMMIT" in ordered
    with store.read_transaction() as tx:
        assert tx.get_log_position("ten_1", g) == LogPosition("ten_1", g, 1, 0, 1)
        assert tx.hosted_pending(10) == [HostedWork("idn_2", "ten_1", g, 1)]
        head_record = tx.audit_head()
        assert head_record is not None and head_record[0] == 1


def test_reads_asked_for_ahead_go_in_one_round_trip(store: PostgresStore) -> None:
    """``prefetch``: a read transaction's known reads go with its first statement, and the getters are
    answered from the snapshot's memory (3 round trips for these reads and the commit without it)."""
    with store.transaction() as tx:
        tx.add_tenant(Tenant("ten_2", "two"))
    with round_trips(store) as n, store.read_transaction() as tx:
        tx.prefetch(
            lambda: tx.get_tenant("ten_1"), lambda: tx.get_tenant("ten_2"), lambda: tx.get_tenant("ten_3")
        )
        one, two, three = tx.get_tenant("ten_1"), tx.get_tenant("ten_2"), tx.get_tenant("ten_3")
    assert n[0] == 2  # BEGIN + snapshot position + the three; COMMIT + flush check
    assert one is not None and one.name == "one" and two is not None and two.name == "two" and three is None


def test_a_read_asked_for_ahead_is_only_a_hint(store: PostgresStore) -> None:
    """Not made: it cost a statement, nothing else. Made but not asked for: it runs. In a write
    transaction (no snapshot to keep answers in) the reads are not run ahead at all."""
    with round_trips(store) as n, store.read_transaction() as tx:
        tx.prefetch(lambda: tx.get_tenant("ten_9"))
        assert tx.list_tenants()[0].tenant_id == "ten_1"
    assert n[0] == 2
    with round_trips(store) as n, store.transaction(b"group-1") as tx:
        tx.prefetch(lambda: tx.get_tenant("ten_1"))
    assert n[0] == 0  # nothing ran: the transaction did not even begin


def test_a_receivers_write_transaction_takes_the_order_lock_with_its_commit(store: PostgresStore) -> None:
    """The hosted receiver's transaction (``HostedDelivery``: its ratchet state, the inbox event, its
    pending mark cleared): the compare-and-swap on the state is checked in the first round trip; the
    order lock, the event and ``COMMIT`` go in the second — the lock every group's writers share is not
    held while this process answers. A lost compare-and-swap still writes nothing of it."""
    g = b"group-1"
    with store.transaction() as tx:
        tx.add_identity(identity(1))
        tx.put_group(GroupRecord("idn_1", g, 0, b"state", None), None)
    with traced(store) as trips, store.transaction(g) as tx:
        tx.put_group_ratchet("idn_1", g, 1, b"ratchet", 1)
        tx.put_inbox_event("idn_1", g, 1, b"event")
        tx.clear_hosted_pending("idn_1", g, 1)
    assert len(trips) == 2
    assert LOCK_ORDER not in trips[0] and LOCK_ORDER in trips[1] and "COMMIT" in trips[1]
    with pytest.raises(EpochConflict), store.transaction(g) as tx:
        tx.put_group_ratchet("idn_1", g, 2, b"stale", 1)  # version 1 is no longer the membership's
        tx.put_inbox_event("idn_1", g, 2, b"lost")
    with store.read_transaction() as tx:
        assert tx.inbox_event_at("idn_1", g, 1) is not None
        assert tx.inbox_event_at("idn_1", g, 2) is None


def test_a_write_transactions_reads_asked_ahead_serve_until_its_next_write(store: PostgresStore) -> None:
    """In a write transaction the reads asked for together go in one round trip and answer their getters
    until the transaction writes; after a write the same read runs again and sees it."""
    g = b"group-1"
    with store.transaction() as tx:
        tx.put_log_head(LogHead("ten_1", g, 1, 0, 0, b"gi", b"tree"), None)
    with traced(store) as trips, store.transaction(g) as tx:
        tx.prefetch(lambda: tx.get_log_position("ten_1", g), lambda: tx.log_seq_of("ten_1", g, b"d" * 32))
        head = tx.get_log_position("ten_1", g)
        assert head is not None and head.seq == 0
        assert tx.log_seq_of("ten_1", g, b"d" * 32) is None
        assert tx.get_log_position("ten_1", g) == head  # still from memory: nothing written yet
        tx.advance_log_seq(head, 1)
        moved = tx.get_log_position("ten_1", g)
        assert moved is not None and moved.seq == 1
    assert len(trips) == 3  # BEGIN + locks + both reads; the write + the read again; COMMIT + flush


def test_a_group_scoped_write_asks_for_no_ordered_read_ahead(store: PostgresStore) -> None:
    """Asking ahead for a read of an ordered table (the audit chain's head) would take the order lock with
    the group's first round trip: such a hint is dropped, and the read runs when made, with the lock."""
    with traced(store) as trips, store.transaction(b"group-1") as tx:
        tx.prefetch(tx.audit_head, lambda: tx.get_log_position("ten_1", b"group-1"))
        assert tx.get_log_position("ten_1", b"group-1") is None
        assert tx.audit_head() is None
    assert len(trips) == 3
    assert LOCK_ORDER not in trips[0] and LOCK_ORDER in trips[1]


def test_a_read_asked_ahead_before_a_write_is_not_answered_after_it(store: PostgresStore) -> None:
    """The read asked ahead and a later queued write go in one pipeline, the read first: its answer is
    from before the write and is not kept — the same read made after the write runs and sees it."""
    g = b"group-1"
    with store.transaction() as tx:
        tx.put_log_head(LogHead("ten_1", g, 1, 0, 0, b"gi", b"tree"), None)
    with store.transaction(g) as tx:
        tx.prefetch(lambda: tx.get_log_position("ten_1", g))
        tx._c.execute("UPDATE group_logs SET seq = 7 WHERE tenant_id = ? AND group_id = ?", ("ten_1", g))
        moved = tx.get_log_position("ten_1", g)
        assert moved is not None and moved.seq == 7


def test_a_lost_compare_and_swap_is_not_swallowed_by_a_hint(store: PostgresStore) -> None:
    """A getter asked ahead in a write transaction that would run (a read the memo cannot keep: a list
    value) is dropped, not run: run, it would have sent the queued compare-and-swap, whose lost race
    the hint swallows — and the transaction would have committed on a stale state."""
    g = b"group-1"
    with store.transaction() as tx:
        tx.add_identity(identity(1))
        tx.put_group(GroupRecord("idn_1", g, 0, b"state", None), None)
    unkept = "SELECT seq FROM group_logs WHERE tenant_id = ? AND group_id = ANY(?)"
    with pytest.raises(EpochConflict), store.transaction(g) as tx:
        tx.put_group_ratchet("idn_1", g, 1, b"stale", 7)  # not the membership's version
        tx.prefetch(lambda: tx._c.execute(unkept, ("ten_1", [g])).fetchall())
        tx.put_inbox_event("idn_1", g, 1, b"lost")
    with store.read_transaction() as tx:
        assert tx.inbox_event_at("idn_1", g, 1) is None


def test_the_sends_append_asks_for_its_reads_together(store: PostgresStore) -> None:
    """``GroupLog.append_messages`` itself (the send's append, after the sender's ratchet write): the log
    head, the message's place and the members in the first round trip, the writes in the second, the
    order lock with the ``COMMIT`` in the third."""
    g = a_sender_and_a_receiver(store)
    info = MessageInfo(WireFormat.mls_private_message, g, 0, "application", None, None)
    with traced(store) as trips, store.transaction(g) as tx:
        tx.put_group_ratchet("idn_1", g, 0, b"ratchet", 1)
        appended = GroupLog().append_messages(
            tx, "ten_1", g, [PreparedMessage(b"message", info)], "idn_1", caller=None
        )
        tx.add_audit([AuditRecord("req", "ten_1", "idn_1", g, 0, b"ref", "sign", "hsm", True)])
    assert appended.seq == 1 and len(trips) == 3
    assert LOCK_ORDER in trips[2] and all(LOCK_ORDER not in trip for trip in trips[:2])
