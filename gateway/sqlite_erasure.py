"""Erasure at rest: a replaced or deleted sealed group state does not linger in the SQLite files.

SQLite leaves old bytes in two places (docs/architecture.md "Forward secrecy at rest"):

* **the database file**: pages an UPDATE or DELETE freed keep their old content on the freelist. The store
  runs with ``PRAGMA secure_delete = ON``, so SQLite overwrites deleted content and freed pages with
  zeros (in the transaction's own WAL frames, copied into the database file by the next checkpoint);
* **the WAL**: the frames of earlier writes (the old state as it was written) stay in the ``-wal`` file
  until a checkpoint has copied the WAL into the database *and* a later writer overwrote them, which has no
  bound. A ``PRAGMA wal_checkpoint(TRUNCATE)`` copies every frame into the database (the zeroed pages over
  the old ones) and truncates the WAL to zero bytes.

Which transactions are due (:meth:`WalErasure.watch`): temporary triggers on the writing connection mark a
transaction that updated ``groups.state`` or deleted a ``groups`` or ``group_ratchets`` row, whichever
statement did it, a cascade included (``DELETE`` of an identity or a tenant).

Off the request path (:class:`WalErasure`): once such a transaction is durable the store only *asks* for
an erasure (:meth:`WalErasure.request`) and answers. One eraser thread per process and store, on a
connection of its own with a busy timeout of a few milliseconds (``busy_ms``), runs the checkpoint. A
``TRUNCATE`` checkpoint holds SQLite's write lock while it waits for readers of older snapshots, so it
never waits long: when a reader (any process) still reads a snapshot older than the WAL's end, or the write
lock is taken, it gives up after ``busy_ms`` (having copied what it could, as a ``PASSIVE`` checkpoint
would) and tries again after a back-off doubling from ``min_backoff_s`` to ``max_backoff_s``.

The guarantee: the old bytes of a state replaced or deleted by a transaction are gone from the database
file and the WAL at the first checkpoint that completes after that transaction was acknowledged — at most
``max_backoff_s`` (1 s) plus the checkpoint's own I/O after the last reader of a snapshot older than the
end of the WAL finished, when a write lock is free within ``busy_ms``. Writers are never held up by the
eraser for more than ``busy_ms`` plus the copy of the WAL. A checkpoint covers every request made before it
started. :attr:`WalErasure.pending_seconds` (metric ``mlsgw_erasure_pending_seconds``) says how long the
oldest erasure not yet done has been waiting. Not covered: a process killed before its eraser ran leaves
the bytes until the next completed checkpoint of any process (or SQLite's own checkpoint when the last
connection closes).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Temporary triggers (this connection only; no schema change) marking a transaction that replaced or
#: deleted sealed group state, directly or by ``ON DELETE CASCADE``.
_TRIGGERS = (
    "CREATE TEMP TRIGGER IF NOT EXISTS mlsgw_erase_replaced AFTER UPDATE OF state ON main.groups "
    "BEGIN SELECT mlsgw_erase_due(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS mlsgw_erase_deleted AFTER DELETE ON main.groups "
    "BEGIN SELECT mlsgw_erase_due(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS mlsgw_erase_deleted_ratchet AFTER DELETE ON main.group_ratchets "
    "BEGIN SELECT mlsgw_erase_due(); END",
)
#: An eraser with nothing to do for this long ends its thread (the next request starts one again).
_IDLE_S = 5.0
#: An erasure pending for this long is logged (once per streak of incomplete checkpoints).
_WARN_AFTER_S = 60.0


class WalErasure:
    """Background ``wal_checkpoint(TRUNCATE)`` after writes that replaced sealed state (module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        busy_ms: int = 20,
        min_backoff_s: float = 0.01,
        max_backoff_s: float = 1.0,
    ) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._due = threading.local()  # set by the triggers, on the thread of the writing connection
        self._cond = threading.Condition()
        self._requested = 0  # erasures asked for (each after its transaction was durable)
        self._done = 0  # every request <= this is erased
        self._pending_since: float | None = None  # monotonic: when the oldest request not done was made
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = False
        #: Checkpoints run, and how many of them could not complete (readers held older snapshots).
        self.runs = 0
        self.incomplete = 0

    def watch(self, conn: sqlite3.Connection) -> None:
        """Install the triggers on a writing connection (used by one thread, as the store's are)."""
        conn.create_function("mlsgw_erase_due", 0, self._mark)
        for sql in _TRIGGERS:
            conn.execute(sql)

    def _mark(self) -> None:
        self._due.flag = True

    def take_due(self) -> bool:
        """Whether this thread's writing connection replaced or deleted a sealed state since the last call
        (the store calls it before ``BEGIN``, to forget a rolled-back one, and after the commit)."""
        due = bool(getattr(self._due, "flag", False))
        self._due.flag = False
        return due

    def request(self) -> None:
        """Ask for an erasure of what the transactions acknowledged so far replaced; returns at once."""
        with self._cond:
            self._requested += 1
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            if not alive:  # none yet, idle and gone, or this is a forked child
                self._stop = False
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="mlsgw-wal-eraser", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @property
    def pending_seconds(self) -> float:
        """How long the oldest erasure not yet done has been waiting (0.0 when none is)."""
        with self._cond:
            return self._pending_age()

    def progress(self) -> tuple[float, int, int]:
        """:attr:`pending_seconds`, :attr:`runs` and :attr:`incomplete`, read together (the metrics)."""
        with self._cond:
            return self._pending_age(), self.runs, self.incomplete

    def _pending_age(self) -> float:
        since = self._pending_since
        return 0.0 if since is None else time.monotonic() - since

    def drain(self, timeout_s: float) -> bool:
        """Wait until every erasure requested before this call is done; ``False`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._requested
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop the eraser thread (it makes one last attempt when an erasure is pending)."""
        with self._cond:
            self._stop = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_ms / 1000)
        except sqlite3.Error as e:
            log.warning("wal eraser cannot open the database: %s", e)
            with self._cond:
                self._thread = None
            return
        try:
            self._loop(conn)
        finally:
            conn.close()

    def _loop(self, conn: sqlite3.Connection) -> None:
        backoff = self._min_backoff_s
        warned = False
        while True:
            with self._cond:
                idle_until = time.monotonic() + _IDLE_S
                while self._done >= self._requested and not self._stop:
                    left = idle_until - time.monotonic()
                    if left <= 0:
                        self._thread = None  # the next request starts another
                        return
                    self._cond.wait(left)
                if self._done >= self._requested:  # stopping with nothing pending
                    return
                target, started = self._requested, time.monotonic()
                stopping = self._stop
            complete = self._checkpoint(conn)
            with self._cond:
                self.runs += 1
                if complete:
                    self._done = max(self._done, target)
                    self._pending_since = None if self._done >= self._requested else started
                    self._cond.notify_all()
                else:
                    self.incomplete += 1
                pending = self._pending_age()
            if stopping:
                return
            if complete:
                backoff, warned = self._min_backoff_s, False
                continue
            if pending >= _WARN_AFTER_S and not warned:
                warned = True
                log.warning("replaced sealed states wait %.0f s for readers of older snapshots", pending)
            with self._cond:
                self._cond.wait_for(lambda: self._stop, backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        """One ``TRUNCATE`` checkpoint that waits at most ``busy_ms``; whether it completed."""
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as e:  # e.g. locked: tried again after the back-off
            log.debug("wal checkpoint failed: %s", e)
            return False
        return not busy


__all__ = ["WalErasure"]
