"""Erasure at rest: a replaced or deleted sealed group state does not linger in the SQLite files.

SQLite leaves old bytes in two places (docs/architecture.md "Forward secrecy at rest"):

* **the database file**: pages an UPDATE or DELETE freed keep their old content on the freelist. The store
  runs with ``PRAGMA secure_delete = ON``, so SQLite overwrites deleted content and freed pages with
  zeros (in the transaction's own WAL frames, copied into the database file by the next checkpoint);
* **the WAL**: the frames of earlier writes (the old state as it was written) stay in the ``-wal`` file
  until a checkpoint has copied the WAL into the database *and* a later writer overwrote them, which has no
  bound. :class:`WalErasure` runs ``PRAGMA wal_checkpoint(TRUNCATE)`` after a transaction that replaced or
  deleted a full state: every frame is copied into the database (the zeroed pages over the old ones) and
  the WAL is truncated to zero bytes.

The checkpoint is shared like the group commit of :mod:`gateway.sqlite_durability`: one caller at a time
runs it, and it covers every request taken before it started, so concurrent writers do not each run one.
``TRUNCATE`` waits (busy handler) for readers of older snapshots; when it still cannot finish it reports
``busy`` (or fails), the request counts as not erased (:attr:`WalErasure.incomplete`, a warning in the
log; the request itself succeeded: its write is committed and durable) and the next erasure covers it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)


class WalErasure:
    """Coalesced ``wal_checkpoint(TRUNCATE)`` after writes that replaced a sealed state (module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._run = threading.Lock()
        self._requested = 0  # erasures asked for (each after its transaction committed)
        self._done = 0  # every request <= this is erased
        #: Checkpoints run, and how many of them could not complete (readers held older snapshots).
        self.runs = 0
        self.incomplete = 0

    def erase(self, conn: sqlite3.Connection) -> bool:
        """Return once the bytes a transaction committed before this call replaced are gone from the WAL
        and the database file (a shared checkpoint), or ``False`` when the checkpoint could not complete.
        ``conn``: the caller's writing connection, outside any transaction."""
        with self._cond:
            self._requested += 1
            mine = self._requested
        with self._run:
            with self._cond:
                if self._done >= mine:
                    return True  # a checkpoint that started after our commit completed meanwhile
                target = self._requested
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as e:  # the write is committed and durable: the request still succeeds
                log.warning("wal checkpoint failed: %s", e)
                busy = 1
            self.runs += 1
            if busy:
                self.incomplete += 1
                log.warning("wal checkpoint could not complete: replaced states stay in the WAL for now")
                return False
            with self._cond:
                self._done = max(self._done, target)
            return True


__all__ = ["WalErasure"]
