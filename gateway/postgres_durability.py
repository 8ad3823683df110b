"""How the PostgreSQL store's transactions lock and become durable: the write lock, and the WAL flush taken
*outside* it (issue 15, docs/architecture.md "PostgreSQL store").

**The write lock.** A write transaction takes one transaction-scoped advisory lock, :data:`WRITE_LOCK`,
right after ``BEGIN`` — SQLite's ``BEGIN IMMEDIATE`` across every process (why the shared SQL needs
serialised writers: :mod:`gateway.postgres_store`). ``COMMIT`` releases it.

**Group-scoped writes.** The hot path — a message sent or received by a hosted member, which writes the
member's ratchet state and appends to the group's log — runs in parallel across groups instead: its
transaction (``transaction(group=…)``) takes :data:`WRITE_LOCK` *shared* and its group's lock
(:func:`group_lock_key`) exclusive; rows of the tables in :data:`gateway.postgres_sql.GROUP_TABLES`
(the ratchet state, the log's head and entries, ``hosted_pending``) are then its group's alone; before its
first statement on any other table (the audit chain, inboxes, mailboxes, stored responses — what is
ordered across groups: the audit chain's head, cursors handed out in commit order) it takes
:data:`ORDER_LOCK` and holds it to ``COMMIT``. What it writes there answers nothing (the audit records
are linked to the chain by the database, :mod:`gateway.postgres_audit`), so the lock, those writes and
``COMMIT`` go in one round trip (:meth:`gateway.postgres_sql.PgConnection.settle`) — unless something
after the lock answers rows (an idempotency check, a read after a mailbox append) or has a row count to
check: then the lock goes with that. On the message paths it is held for the server's time, not while a
process answers. So:

* every other write transaction still excludes all writers (``WRITE_LOCK`` exclusive conflicts with the
  shared holders), and sees the serialised world the shared SQL was written for;
* two group-scoped writers of one group are serialised by the group's lock; of two groups, they overlap
  until the later one's first ordered statement — in a message's transaction, the audit record written
  just before ``COMMIT`` — so the time any writer holds a lock *everyone* needs is that tail alone;
* locks are taken in one order (``WRITE_LOCK``, then one group's, then ``ORDER_LOCK``): no deadlock. Two
  groups whose keys collide (64 bits of SHA-256) only share a lock.

**Durability outside the lock** (the same contract as the SQLite store's :mod:`gateway.sqlite_durability`).
With ``synchronous_commit = on`` a ``COMMIT`` waits for the WAL flush *while the lock is held*, so commits
never share a flush and writes are bound by one ``fsync`` each. Instead a write transaction runs with
``SET LOCAL synchronous_commit = off``: its ``COMMIT`` inserts the commit record, makes the transaction
visible and releases the lock without waiting; then, before the transaction's block returns (before any
request is answered with it), :data:`FLUSH` runs on the same connection — a tiny transaction that writes
one WAL record and commits *synchronously*, so it returns once the WAL is flushed past its own commit
record and hence past every earlier one, this write's included. Concurrent flushes share one ``fsync``
(PostgreSQL's group commit: the backend holding ``WALWriteLock`` flushes everything inserted so far).

Why :data:`FLUSH` writes a record: a transaction that only took an xid (``SELECT txid_current()``) writes
no WAL before its commit record, and PostgreSQL commits such a transaction asynchronously
(``RecordTransactionCommit``: no WAL written, nothing to flush) — measured, its commit does not move
``pg_current_wal_flush_lsn()``. A transactional ``pg_logical_emit_message`` (executable by any role, a few
bytes of WAL, ignored unless someone decodes logical messages with the prefix) does.

**Readers.** Another process may *read* a commit between its ``COMMIT`` and its flush; a PostgreSQL crash
(``kill -9``, ``pg_ctl stop -m immediate``) in that window loses it. A response built from such a read —
a log entry, a mailbox item, a replayed response, a state — could show a device what the service then
forgets (a fork). So every transaction waits for the durability of everything it could have seen before
its block returns:

* a read transaction notes ``pg_current_wal_insert_lsn()`` in the statement that takes its snapshot
  (every commit visible in the snapshot inserted its commit record before it became visible, so before
  that position), and at its end compares it with ``pg_current_wal_flush_lsn()``: only when the flush has
  not passed it yet does it run :data:`FLUSH` (:func:`end_read`);
* a write transaction's :data:`FLUSH` covers what it read (it is later in the WAL), and so does the one
  run after a write transaction that ended in an application error (a conflict may report what it saw);
* :meth:`gateway.postgres_store.PostgresStore.sync` runs :data:`FLUSH`;
* the one exception, :meth:`gateway.postgres_store.PostgresStore.lookup` (the bearer-token check), is a
  single ``SELECT`` in autocommit with no wait: a token is known only to its creator until its creation
  is durable and answered, so a lookup cannot show anyone a commit a crash could take back (a revocation
  not yet durable refuses a request a little early — never the other way round).

The guarantee: when a transaction's block has returned normally, every commit it wrote or read is flushed
to the WAL on disk; a crash of PostgreSQL loses only commits nobody was answered with. Unflushed commits
are a suffix of the WAL, so what a crash loses is a suffix of the commit order: cursors handed out in
commit order stay gap-free, and a later write never survives without an earlier one it read. A failure
after ``COMMIT`` but before the flush returned (connection loss) is :class:`gateway.store.StoreUnavailable`:
the write may or may not persist, exactly as for a connection lost during a synchronous ``COMMIT``
(clients retry with their Idempotency-Key).

**The server's default.** All of this rests on :data:`FLUSH` (and, with ``flush_under_lock``, ``COMMIT``)
being *synchronous*. A DBA may set ``synchronous_commit = off`` for the server, the database or the role
(it loses only "recent" commits, which is the very thing this module must not do): every connection of the
store's pool raises ``off`` to ``on`` when it opens (:func:`durable_session`); a stronger setting
(``remote_write``, ``remote_apply``, ``on`` with synchronous standbys) is kept.

``flush_under_lock=True`` keeps the former mode (``synchronous_commit = on``: visible only once durable)
— slower, equally safe (readers check all the same: another process may run the other mode);
``benches.pg_writes`` measures both.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

#: The advisory lock key every write transaction holds (``pg_advisory_xact_lock``): "mlsgw" in ASCII;
#: group-scoped writers hold it shared.
WRITE_LOCK = 0x6D6C736777

#: The advisory lock a group-scoped writer takes before its first statement on a table outside its group
#: (:data:`gateway.postgres_sql.GROUP_TABLES`), held to ``COMMIT``.
ORDER_LOCK = WRITE_LOCK + 1


def group_lock_key(group: bytes) -> int:
    """The advisory lock key of one group (a signed 64-bit integer from SHA-256 of its id), never one of
    the global keys."""
    key = int.from_bytes(hashlib.sha256(b"mlsgw-group\0" + group).digest()[:8], "big", signed=True)
    return key if key not in (WRITE_LOCK, ORDER_LOCK) else key ^ 0x10


#: A synchronous transaction that writes one WAL record: returns once the WAL is flushed past it.
FLUSH = "SELECT pg_logical_emit_message(true, 'mlsgw-durable', '')"


def durable_session(conn: psycopg.Connection[Any]) -> None:
    """Make the session's commits synchronous (``synchronous_commit`` at least ``on`` unless the server
    asks for more): what :data:`FLUSH` relies on. The pool's ``configure`` callback of a new connection."""
    row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
    if row is None or row[0] == "off":
        conn.execute("SET synchronous_commit = on")


def write_begin(timeout_s: float, *, flush_under_lock: bool, group: bytes | None = None) -> tuple[str, ...]:
    """The statements that ``BEGIN`` a write transaction and take :data:`WRITE_LOCK` (waiting at most
    ``timeout_s`` for each lock); with ``group``, ``WRITE_LOCK`` shared and the group's lock (a
    group-scoped write, see the module). Unless ``flush_under_lock``, its ``COMMIT`` will not wait for the
    WAL flush. The store sends them in the round trip of the transaction's first statement
    (:class:`gateway.postgres_sql.PgConnection`).

    The settings and the locks are one ``SELECT`` (:func:`in_order`): two statements instead of four per
    write transaction, each costing the gateway and PostgreSQL CPU (about a tenth of a millisecond)."""
    settings = [f"set_config('lock_timeout', '{int(timeout_s * 1000)}', true)"]
    if not flush_under_lock:
        settings.append("set_config('synchronous_commit', 'off', true)")
    if group is None:
        locks = [f"pg_advisory_xact_lock({WRITE_LOCK})"]
    else:
        locks = [
            f"pg_advisory_xact_lock_shared({WRITE_LOCK})",
            f"pg_advisory_xact_lock({group_lock_key(group)})",
        ]
    return ("BEGIN ISOLATION LEVEL READ COMMITTED", in_order([", ".join(settings), *locks]))


def in_order(calls: list[str]) -> str:
    """One ``SELECT`` that evaluates each of ``calls`` (a select list) after the ones before it: each is the
    select list of a subquery of the next, kept apart by ``OFFSET 0`` (PostgreSQL does not flatten such a
    subquery, so the outer list is computed from the inner row) — the settings before the first lock, the
    global lock before the group's, as separate statements would."""
    sql = f"SELECT {calls[0]}"
    for depth, call in enumerate(calls[1:]):
        sql = f"SELECT {call} FROM ({sql} OFFSET 0) AS step{depth}"
    return sql


def lock_for_write(
    conn: psycopg.Connection[Any], timeout_s: float, *, flush_under_lock: bool, group: bytes | None = None
) -> None:
    """Run :func:`write_begin`'s statements now, in one round trip."""
    conn.execute("; ".join(write_begin(timeout_s, flush_under_lock=flush_under_lock, group=group)))


#: Take :data:`ORDER_LOCK` (a group-scoped writer, before its first statement outside its group).
LOCK_ORDER = f"SELECT pg_advisory_xact_lock({ORDER_LOCK})"

#: The statements that ``BEGIN`` a read-only snapshot; the last answers the WAL insert position it was
#: taken at (a bound on every commit it can see: :func:`end_read`).
READ_BEGIN = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    "SELECT pg_current_wal_insert_lsn()::text",
)


def commit_statements(*, flush_under_lock: bool) -> tuple[str, ...]:
    """``COMMIT`` (which releases the lock), then — unless ``flush_under_lock`` — :data:`FLUSH`, its own
    synchronous transaction: the write transaction's block returns once its commit is durable. The store
    sends them with the transaction's queued writes in one round trip
    (:meth:`gateway.postgres_sql.PgConnection.finish`, a pipeline whose ``Sync`` commits :data:`FLUSH`)."""
    return ("COMMIT",) if flush_under_lock else ("COMMIT", FLUSH)


def flush(conn: psycopg.Connection[Any]) -> None:
    """Return once every commit so far (of any process) is flushed to the WAL on disk."""
    conn.execute(FLUSH)


def end_read(conn: psycopg.Connection[Any], seen: str) -> None:
    """``COMMIT`` the read transaction begun at WAL position ``seen``, then return once the WAL is flushed
    past it: at once when it already is (one round trip), else after :data:`FLUSH`. (Also with
    ``flush_under_lock``, where it nearly always is: another process may run the other mode.)"""
    cur = conn.execute(f"COMMIT; SELECT pg_current_wal_flush_lsn() >= '{_lsn(seen)}'::pg_lsn")
    cur.nextset()
    row = cur.fetchone()
    if row is None or not row[0]:
        flush(conn)


def _lsn(text: str) -> str:
    """``text`` if it is a WAL position as PostgreSQL prints one (``16/B374D848``), else ``ValueError``:
    it is spliced into SQL."""
    high, sep, low = text.partition("/")
    int(high, 16), int(low, 16)
    if not sep:
        raise ValueError("not a WAL position")
    return text


__all__ = [
    "FLUSH",
    "LOCK_ORDER",
    "ORDER_LOCK",
    "READ_BEGIN",
    "WRITE_LOCK",
    "commit_statements",
    "durable_session",
    "end_read",
    "flush",
    "group_lock_key",
    "in_order",
    "lock_for_write",
    "write_begin",
]
