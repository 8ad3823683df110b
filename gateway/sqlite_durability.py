"""Group commit of durability: concurrent write transactions share one ``fsync`` of the SQLite WAL.

The store runs SQLite in WAL mode with ``synchronous = NORMAL``: a ``COMMIT`` appends the transaction's
frames to the ``-wal`` file (so they survive a crash of the process at once: they are in the operating
system's page cache) but does not wait for the disk; SQLite itself syncs the WAL before each checkpoint
and the database file after it, so the file stays consistent across a power loss. What ``NORMAL`` alone
gives up is durability of the last commits across a power loss. :class:`WalSync` restores it, shared:

* a writer's ``COMMIT`` takes a ticket (:meth:`WalSync.commit`), and the writer waits
  (:meth:`WalSync.wait_durable`) until an ``fsync`` of the WAL *that started after its ticket* has
  completed;
* one waiter at a time (the leader) runs that ``fsync``, covering every ticket taken before it started;
  writers that commit while it runs wait for the next one, which one of them leads. Under load one
  ``fsync`` makes a whole batch of transactions durable, and the write lock is never held across an
  ``fsync`` (``COMMIT`` released it).

Other requests may *read* a commit during the ``fsync`` that makes it durable (WAL readers see it once
``COMMIT`` returned); one whose answer depends on another's write being durable waits for every commit so
far first: a replayed Idempotency-Key answer (:meth:`gateway.persistence.Persistence.replay`, through
:meth:`gateway.sqlite_store.SqliteStore.sync`) is never an acknowledgment of a write that is not on disk.
Any later fsync of the append-only WAL also covers every earlier commit, so a write based on such a read
is durable only with what it read.

A request is answered only after its transaction's ``wait_durable`` returned (:meth:`SqliteStore
.transaction` calls it before leaving the block), so no acknowledged write can be lost. ``fsync`` acts on
the file, not the descriptor: the WAL is opened by path for each ``fsync``, so a WAL reset or re-created
by a checkpoint of another process is still the one synced. When there is no WAL file (the last
connection closed and SQLite checkpointed it into the database, syncing it), the database file is synced.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


class WalSync:
    """Leader/follower group commit of ``fsync`` for one SQLite database in WAL mode (module docstring)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.wal = database.with_name(database.name + "-wal")
        self._cond = threading.Condition()
        self._tickets = 0  # commits registered
        self._synced = 0  # every ticket <= this is durable
        self._leading = False
        self._dir_synced = False
        #: How many ``fsync`` batches ran and how many commits they covered (metrics, tests).
        self.syncs = 0
        self.commits = 0

    def commit(self, conn: sqlite3.Connection) -> int:
        """``COMMIT`` the connection's write transaction and take its ticket, both under the lock, so that
        a barrier taken once this returned (:meth:`wait_durable` without a ticket) covers it. SQLite runs
        one write transaction at a time anyway (the write lock), so this serialises nothing more."""
        with self._cond:
            conn.execute("COMMIT")
            self._tickets += 1
            self.commits += 1
            return self._tickets

    def wait_durable(self, ticket: int | None = None) -> None:
        """Return once the commit of ``ticket`` — by default every commit so far — is on disk (one shared
        fsync for every waiter it covers)."""
        with self._cond:
            mine = self._tickets if ticket is None else ticket
            while self._synced < mine:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                target = self._tickets
                self._cond.release()
                try:
                    self._fsync()
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
                self._synced = max(self._synced, target)
                self.syncs += 1

    def _fsync(self) -> None:
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:
            fd = os.open(self.database, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not self._dir_synced:  # the WAL's directory entry, once (the WAL is created with the database)
            self._sync_directory()
            self._dir_synced = True

    def _sync_directory(self) -> None:
        fd = os.open(self.database.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["WalSync"]
