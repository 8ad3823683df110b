"""The connection adapter that runs the store's portable SQL (the ``Sqlite*Mixin`` classes) on psycopg 3.

The mixins call ``execute(sql, params)`` / ``executemany`` with SQLite's placeholders (``?`` and
``:name``) and read rows by column name and by index, as :class:`sqlite3.Row` allows. :class:`PgConnection`
gives them the same over one psycopg connection: :func:`translate` turns the placeholders into psycopg's
(``%s`` / ``%(name)s``, a literal ``%`` doubled), and rows are :class:`PgRow` s (a tuple also indexed by
column name, with ``keys()``).

Values are bound on the server (psycopg's default cursor, the extended query protocol), and psycopg
prepares a statement on a connection once it ran there five times (``prepare_threshold``; up to
:data:`gateway.postgres_store.PREPARED_MAX` per connection): the hot path's statements then skip
PostgreSQL's parse and plan (measured on the message path, docs/scaling.md: about a third less
PostgreSQL CPU per message). A pooler in front of PostgreSQL must then pool sessions or keep
protocol-level prepared statements itself (PgBouncer 1.21 or later, ``max_prepared_statements``; see
docs/scaling.md, "Connections"). PostgreSQL must infer
every parameter's type from its context: a nullable parameter alone (``? IS NULL OR at >= ?``) has none
(``IndeterminateDatatype``) — such a filter is two statements instead (:mod:`gateway.sqlite_audit`). The
SQL itself is portable (``ON CONFLICT``, ``RETURNING``, ``CASE``): nothing is rewritten but the
placeholders.

Inside a write transaction a plain write (``INSERT``, ``UPDATE`` or ``DELETE`` without ``RETURNING``) does
not cost a round trip of its own: it is queued (:class:`QueuedWrite`) and sent, in order, in the pipeline
of the transaction's next statement that answers rows, or with its ``COMMIT``. A message's write
transaction went from 10 round trips to 5 this way (3 with its reads asked for together,
:meth:`PgConnection.prefetching`); and the global order lock, queued before the first
ordered write, goes with the ``COMMIT`` when nothing after it answers rows (:meth:`PgConnection.settle`).
The mixins decide by row count, never by an exception (:mod:`gateway.sqlite_queries`):
a compare-and-swap states the count it needs (``_expect``), checked when the write has run and always
before ``COMMIT`` (:meth:`PgConnection.settle`); the one whose row count is read sends the queue at once.
A statement that fails after a queued compare-and-swap that lost raises the lost race (what would have
happened first). The transaction is all-or-nothing either way: what changes is only *where* in the block
an error surfaces — by the end of the block at the latest — so callers treat a transaction's conflicts as
the transaction's, not a statement's (``Persistence._not_committed`` in :mod:`gateway.persistence`).

A transaction may ask for the reads it is about to make (:meth:`PgConnection.prefetching`, used by
``Transaction.prefetch``): their ``SELECT`` s go with its next statement, one round trip for all, and are
answered from memory when made — in a write transaction only reads of the group tables, until its next
write.

Inside a read transaction (one ``REPEATABLE READ`` snapshot) a ``SELECT`` that the same transaction already
ran with the same values is answered from memory (:class:`SnapshotMemo`): the snapshot cannot answer it
differently. The request paths read some rows more than once in one snapshot (a group's log head, three
times in a ``/process``); each repeat would be a round trip.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .postgres_audit import LINKED_INSERT, linked_rows
from .postgres_rows import SELECT_ONLY, MemoCursor, PgCursor, PgRow, SnapshotMemo, row_factory

if TYPE_CHECKING:
    from .store import AuditRecord

#: Text copied as it is but for ``%`` doubled — a string literal, a quoted identifier, a comment — or a
#: placeholder, or a ``%`` outside them.
_TOKENS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?|(?<![:\w]):([A-Za-z_]\w*)|%", re.DOTALL
)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite's placeholders as psycopg's: ``?`` -> ``%s``, ``:name`` -> ``%(name)s``, ``%`` -> ``%%``;
    not inside string literals, quoted identifiers and comments (where psycopg still reads ``%``)."""

    def one(m: re.Match[str]) -> str:
        text = m.group(0)
        if text[0] in "'\"" or text.startswith(("--", "/*")):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({m.group(1)})s"

    return _TOKENS.sub(one, sql)


#: The tables a *group-scoped* write transaction (:mod:`gateway.postgres_durability`, "Group-scoped
#: writes") may touch under its group's lock alone: a message sent or received writes the member's ratchet
#: state and appends to the group's log, rows of that one group only. Every other table is *ordered*: a
#: group-scoped transaction takes the order lock before its first statement on one (:func:`is_ordered`).
#: ``groups`` (memberships' full states) is only read there (a ratchet write's compare-and-swap on the full
#: state's version): whatever writes it holds the write lock exclusive.
GROUP_TABLES = frozenset(
    {"group_ratchets", "group_logs", "group_members", "log_entries", "hosted_pending", "groups"}
)

#: A name after FROM, INTO, UPDATE or JOIN: a table (or a CTE or a set-returning function — counted as
#: ordered, which only costs waiting); not the SET of an upsert's ``DO UPDATE SET``.
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+(?:ONLY\s+)?(?!SET\b)\"?([A-Za-z_]\w*)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def is_ordered(sql: str) -> bool:
    """Whether ``sql`` names any table outside :data:`GROUP_TABLES`."""
    return any(name.lower() not in GROUP_TABLES for name in _TABLE.findall(sql))


#: A statement that writes and answers nothing but its row count: ``INSERT``, ``UPDATE`` or ``DELETE``
#: (a CTE first is not one: it may read), without ``RETURNING``.
_PLAIN_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b(?![^;]*\bRETURNING\b)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def is_plain_write(sql: str) -> bool:
    """Whether ``sql`` only writes and answers nothing but its row count (:class:`QueuedWrite`)."""
    return bool(_PLAIN_WRITE.match(sql))


class QueuedWrite:
    """A write of a write transaction held back to go with the transaction's next statement that answers
    rows, or with its ``COMMIT`` — in that statement's round trip (a psycopg pipeline), in order. Its row
    count is there when asked for (asking sends it at once); :meth:`expect` states the count it must
    reach, checked when it has run — a mismatch raises the given error from the statement that sent it,
    before ``COMMIT`` (:meth:`PgConnection.settle`)."""

    def __init__(self, owner: PgConnection, sql: str, rows: list[Sequence[Any] | dict[str, Any]]) -> None:
        self._owner = owner
        self.sql = sql
        self.rows = rows
        self.cursors: list[psycopg.Cursor[PgRow]] = []
        self.expected: list[tuple[int, Exception]] = []
        self.done = False

    def send(self, conn: psycopg.Connection[Any]) -> None:
        """Queue it on ``conn``'s pipeline (one statement per row of values)."""
        for values in self.rows:
            cur: psycopg.Cursor[PgRow] = conn.cursor(row_factory=row_factory)
            cur.execute(self.sql, values)
            self.cursors.append(cur)

    @property
    def rowcount(self) -> int:
        if not self.done:
            self._owner.send_pending()
        return sum(max(c.rowcount, 0) for c in self.cursors)

    def expect(self, rows: int, error: Exception) -> None:
        """Raise ``error`` unless the write changed ``rows`` rows (now if it ran, else once it has)."""
        self.expected.append((rows, error))
        if self.done:
            self.check()

    def check(self) -> None:
        count = self.rowcount
        for rows, error in self.expected:
            if count != rows:
                raise error

    def ran(self) -> bool:
        """Whether each of its statements has its result (in a pipeline that failed, those before)."""
        return all(c.pgresult is not None for c in self.cursors)

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[PgRow]:
        return []

    def __iter__(self) -> Iterator[PgRow]:
        return iter(())


class QueuedRead:
    """A ``SELECT`` asked for ahead (:meth:`PgConnection.prefetching`): sent with the transaction's next
    statement, its answer kept in the transaction's memo for when it is run (in a write transaction, only
    if no write came after it was asked)."""

    def __init__(
        self, key: tuple[str, Any], sql: str, parameters: Sequence[Any] | dict[str, Any], writes: int = 0
    ) -> None:
        self.key = key
        self.sql = sql
        self.parameters = parameters
        #: The transaction's write count when it was asked for (:meth:`PgConnection._keep_reads`).
        self.writes = writes
        self.cursor: psycopg.Cursor[PgRow] | None = None

    def send(self, conn: psycopg.Connection[Any]) -> None:
        self.cursor = conn.cursor(row_factory=row_factory)
        self.cursor.execute(self.sql, self.parameters)


def _check_until_failed(writes: list[QueuedWrite]) -> None:
    """In a round trip that failed: the first row-count check failed by a queued write that ran, raised —
    it happened first (its caller would not have gone on to the failed statement had it run alone)."""
    for write in writes:
        if not write.ran():
            return
        write.done = True
        write.check()


class PgConnection:
    """The part of :class:`sqlite3.Connection` the mixins use, over one psycopg connection."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        begin: Sequence[str] = (),
        before_ordered: str | None = None,
        select_only: bool = False,
        snapshot: bool = False,
        queue_writes: bool = False,
    ) -> None:
        """``begin``: the statements that open the transaction (``BEGIN``, its settings and locks), sent
        with the first statement in one round trip (a psycopg pipeline) — a transaction that runs none
        never begins. ``before_ordered``: a statement (the order lock of a group-scoped write) sent once,
        just before the first statement that :func:`is_ordered`, in its round trip. ``select_only``:
        anything but a ``SELECT`` is refused (:class:`psycopg.ProgrammingError`) — a lookup outside any
        transaction. ``snapshot``: the connection is in a read-only snapshot; a repeated ``SELECT`` is
        answered from memory (:class:`SnapshotMemo`). ``queue_writes``: a write transaction's plain
        writes wait for its next statement that answers rows, or its ``COMMIT`` (:class:`QueuedWrite`);
        its memo holds only the reads it asked for ahead, until its next write."""
        self._conn = conn
        self._pending: list[str | QueuedWrite | QueuedRead] = list(begin)
        #: The memo keys of the reads queued ahead and not sent yet (:meth:`prefetching`).
        self._ahead: set[tuple[str, Any]] = set()
        self._prefetch = False
        self._begin_count = len(begin)
        self._before_ordered = before_ordered
        self._order_lock = before_ordered
        self._select_only = select_only
        self._queue_writes = queue_writes
        self._memo = SnapshotMemo() if snapshot or queue_writes else None
        #: A write transaction's memo holds only the reads asked for ahead, until its next write.
        self._forget_on_write = queue_writes and not snapshot
        #: Counts the writes of a write transaction: a read asked for before one is not kept after it.
        self._writes = 0
        #: Whether ``begin`` was sent (the transaction must then end with ``COMMIT`` or ``ROLLBACK``).
        self.begun = not begin
        #: The first value the last ``begin`` statement answered (a read snapshot's WAL position).
        self.began_with: Any = None
        #: A prepared statement's plan went stale (the schema changed under it): the connection's prepared
        #: statements must be deallocated once the transaction ended (:mod:`gateway.postgres_store`).
        self.stale_plan = False

    @property
    def wrote(self) -> bool:
        """Whether the transaction has anything to end: it began, or a write waits in its queue."""
        return self.begun or any(isinstance(item, QueuedWrite) for item in self._pending)

    def _check_order(self, sql: str) -> None:
        if self._select_only and not SELECT_ONLY.match(sql):
            raise psycopg.ProgrammingError("only a SELECT may run here")
        if self._before_ordered is not None and is_ordered(sql):
            self._pending.append(self._before_ordered)
            self._before_ordered = None

    @contextlib.contextmanager
    def _watching_plans(self) -> Iterator[None]:
        try:
            yield
        except psycopg.errors.FeatureNotSupported:  # "cached plan must not change result type"
            self.stale_plan = True
            raise

    def _run(self, run: Callable[[], object]) -> None:
        """``run`` (a statement), after the pending ones in the same round trip if there are any; then
        each queued write that went checks its row count."""
        if not self._pending:
            run()
            return
        pending, self._pending = self._pending, []
        opening, self.begun = not self.begun, True  # from here, the transaction must be ended
        writes = [item for item in pending if isinstance(item, QueuedWrite)]
        cursors = []
        try:
            with self._conn.pipeline():
                for item in pending:
                    if isinstance(item, str):  # never prepared: a group's lock names its key in the text
                        cursors.append(self._conn.execute(item, prepare=False))
                    else:
                        item.send(self._conn)
                run()
        except psycopg.Error as e:
            if isinstance(e, psycopg.errors.FeatureNotSupported):  # a stale plan, whatever raises below
                self.stale_plan = True
            _check_until_failed(writes)  # a compare-and-swap lost before the failure is what happened
            raise
        finally:
            self._ahead.clear()
        self._keep_reads(pending)
        if opening and self._begin_count:
            row = cursors[self._begin_count - 1].fetchone()
            self.began_with = None if row is None else row[0]
        for write in writes:
            write.done = True
        for write in writes:
            write.check()

    def _keep_reads(self, sent: list[str | QueuedWrite | QueuedRead]) -> None:
        """The answers of the reads asked for ahead, into the memo (not one asked before a later write)."""
        if self._memo is None:
            return
        for item in sent:
            if isinstance(item, QueuedRead) and item.cursor is not None and item.writes == self._writes:
                self._memo.keep(item.key, item.cursor)

    def _may_ask_ahead(self, sql: str, parameters: Sequence[Any] | dict[str, Any]) -> bool:
        """In a write transaction, whether a statement met while asking ahead is a read to queue: one the
        memo may keep, of the group tables. Anything else is dropped, not run — run, it would send the
        queued writes, and their lost compare-and-swap would be raised inside the hint, which swallows
        it."""
        assert self._memo is not None
        return self._memo.key(sql, parameters) is not None and not is_ordered(sql)

    def _forget_answers(self) -> None:
        """A write transaction wrote (or queued a write): what its memo holds may be out of date."""
        if self._forget_on_write and self._memo is not None:
            self._writes += 1
            self._memo.clear()
            self._ahead.clear()

    @contextlib.contextmanager
    def prefetching(self) -> Iterator[bool]:
        """Inside the block, in a read snapshot or a write transaction: a ``SELECT`` the memo may keep is
        not run but queued, and answers no row; it goes with the transaction's next statement (in its
        round trip), and its answer is kept for when the same ``SELECT`` runs
        (:meth:`gateway.sqlite_store.SqliteTransaction.prefetch`: the reads a request is known to make,
        asked for together). In a write transaction only plain reads of :data:`GROUP_TABLES` are asked
        for (nobody else writes the rows it reads: a group-scoped writer holds its group's lock, a global
        one the write lock exclusive; reading an ordered table ahead would take the order lock early;
        anything else is dropped, :meth:`_may_ask_ahead`), and an answer serves only until the
        transaction's next write. Yields whether it does (not outside a transaction: there the block
        should not run)."""
        self._prefetch = self._memo is not None
        try:
            yield self._prefetch
        finally:
            self._prefetch = False

    def send_pending(self) -> None:
        """Send what waits now, in one round trip."""
        with self._watching_plans():
            self._run(lambda: None)

    def settle(self) -> None:
        """Before ``COMMIT``: send what waits if a queued write has a row count to check, so that a
        mismatch raises while the transaction can still roll back. When every such write comes before the
        order lock, only what precedes the lock goes now: the lock and what follows it wait for
        ``COMMIT``'s round trip, so the one lock every group's writers share is never held while this
        process answers a round trip (:mod:`gateway.postgres_durability`)."""
        pending = self._pending
        checked = [i for i, item in enumerate(pending) if isinstance(item, QueuedWrite) and item.expected]
        if not checked:
            return
        lock = next((i for i, item in enumerate(pending) if item is self._order_lock), None)
        if lock is None or checked[-1] > lock:
            self.send_pending()
            return
        self._pending = pending[:lock]
        self.send_pending()
        self._pending = pending[lock:]

    def finish(self, statements: Sequence[str]) -> None:
        """End the transaction: what waits, then ``statements`` (its ``COMMIT`` …), in one round trip.
        (:meth:`settle` first: a queued write sent here has no row count to check.)"""
        self._pending.extend(statements)
        self.send_pending()

    def link_audit(self, records: list[AuditRecord]) -> None:
        """Append audit records linked to the chain's head by the database (:mod:`gateway.postgres_audit`):
        plain writes, so in a write transaction they go with its ``COMMIT``."""
        self.executemany(LINKED_INSERT, linked_rows(records))

    def execute(
        self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()
    ) -> PgCursor | MemoCursor | QueuedWrite:
        if self._prefetch and self._forget_on_write and not self._may_ask_ahead(sql, parameters):
            return MemoCursor([])  # a hint dropped (see prefetching): nothing runs
        self._check_order(sql)
        if self._queue_writes and is_plain_write(sql):
            self._forget_answers()
            write = QueuedWrite(self, translate(sql), [parameters])
            self._pending.append(write)
            return write
        memo, key = self._memo, None
        if memo is not None and (key := memo.key(sql, parameters)) is not None:
            if self._prefetch:
                if key not in self._ahead and memo.get(key) is None:
                    self._ahead.add(key)
                    self._pending.append(QueuedRead(key, translate(sql), parameters, self._writes))
                return MemoCursor([])
            if key in self._ahead:
                self.send_pending()
            known = memo.get(key)
            if known is not None:
                return known
        elif not SELECT_ONLY.match(sql):
            self._forget_answers()  # a write that answers rows (``RETURNING``), or anything else
        cur: psycopg.Cursor[PgRow] = self._conn.cursor(row_factory=row_factory)
        with self._watching_plans():
            self._run(lambda: cur.execute(translate(sql), parameters))
        if memo is None or key is None or self._forget_on_write:
            return PgCursor(cur)
        return memo.keep(key, cur)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any] | dict[str, Any]]) -> PgCursor | QueuedWrite:
        cur: psycopg.Cursor[PgRow] = self._conn.cursor(row_factory=row_factory)
        rows = [] if self._prefetch and self._forget_on_write else list(seq)  # dropped hint: see execute
        if rows:  # nothing to run: nothing to order either
            self._check_order(sql)
            self._forget_answers()
            if self._queue_writes and is_plain_write(sql):
                write = QueuedWrite(self, translate(sql), rows)
                self._pending.append(write)
                return write
            with self._watching_plans():
                self._run(lambda: None)  # what is pending first: executemany runs a pipeline of its own
                cur.executemany(translate(sql), rows)
        result = PgCursor(cur)
        result.rowcount = max(result.rowcount, 0)  # nothing run: no row changed
        return result


#: libpq's TCP liveness settings for every connection of the gateway (pool and listener), unless the URL
#: sets its own (or names a ``service`` of pg_service.conf, which may): keepalive probes after 30 s idle,
#: every 10 s; and ``tcp_user_timeout`` 30 s, which on Linux bounds both data sent but unacknowledged (a
#: request to a server gone silent) and unanswered probes — an idle connection to a vanished peer is
#: dropped after about 40 s. Without them a server or network that vanishes without a reset (a power cut,
#: a dropped route) leaves a pooled connection or the LISTEN connection waiting for the kernel's
#: retransmissions (~15 min); with them a request answers 503 and the listener reconnects within about a
#: minute. Unix-socket connections ignore them.
LIVENESS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def liveness_options(url: str) -> dict[str, Any]:
    """The :data:`LIVENESS` settings ``url`` does not set itself (connection keyword arguments); none
    when it names a ``service`` (its pg_service.conf entry may set them: keywords would override it)."""
    given = conninfo_to_dict(url)
    if "service" in given:
        return {}
    return {k: v for k, v in LIVENESS.items() if k not in given}


__all__ = [
    "GROUP_TABLES",
    "LIVENESS",
    "PgConnection",
    "QueuedRead",
    "QueuedWrite",
    "is_ordered",
    "is_plain_write",
    "liveness_options",
    "translate",
]
