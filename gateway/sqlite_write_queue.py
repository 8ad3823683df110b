"""The writers of every process on one SQLite database queue for its write lock in the kernel, not in
SQLite's busy handler.

SQLite has one writer at a time. A ``BEGIN IMMEDIATE`` that finds the write lock held does not wait to be
told it is free: its busy handler sleeps 1, 2, 5, 10, 15, 20, 25 … 100 ms between tries until the busy
timeout. Under load, with the worker threads of ``serve --workers 2`` taking turns, the lock is held for
well under a millisecond at a time, yet 45 % of the write transactions found it held and then waited 3.3
to 3.6 ms on average (counted per ``BEGIN IMMEDIATE`` in both workers of a benches.load-style run: the
1 ms sleep is the least a waiter sleeps, and 2–3 % slept 30 ms or more), the lock free for most of it —
time both processes spent idle.

:class:`WriteQueue` is taken around every write transaction of :class:`gateway.sqlite_store.SqliteStore`,
before its ``BEGIN IMMEDIATE`` and released after its ``COMMIT`` (before the wait for the shared fsync, so
that writers still share fsyncs): the threads of one process queue on a :class:`threading.Lock`, the
processes on an exclusive ``flock(2)`` of one file beside the database (``<database>.locks/write``, the
folder of :mod:`gateway.sqlite_append_locks`). A released ``flock`` wakes the next waiter at once; the
kernel releases the lock of a process that dies (``kill -9``); the file is empty. ``BEGIN IMMEDIATE`` then
finds the lock free, unless a writer outside the queue holds it (a backup, a readiness probe, another
program): SQLite's busy handler still covers those.

A waiter gives up after the store's busy timeout (:class:`gateway.store.StoreUnavailable`, as SQLite's
busy timeout did; one deadline for its turn in the process and the lock). ``flock`` has no timeout of its
own, so a process's one waiting thread hands the blocking ``flock`` to a helper thread and waits for it
with a timeout; a wait given up (or cut short by an exception) hands the process's turn to the helper,
which releases the lock when it gets it and only then lets the process's next writer in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .sqlite_append_locks import lock_folder
from .store import StoreUnavailable


class _Wait:
    """One blocking ``flock`` the helper runs for a waiting writer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.done = threading.Event()
        self.error: OSError | None = None
        #: The writer gave up: whoever gets the lock releases it (under :attr:`WriteQueue._decide`).
        self.abandoned = False


class WriteQueue:
    """The write lock of one SQLite database, queued across threads and processes (module docstring)."""

    def __init__(self, database: Path, timeout_s: float) -> None:
        self.path = lock_folder(database) / "write"
        #: How long a writer waits (for its turn in the process and for the lock, together) before
        #: :class:`StoreUnavailable`.
        self.timeout_s = timeout_s
        self._threads = threading.Lock()  # this process's turn: one writer (or a given-up wait) at a time
        self._decide = threading.Lock()  # a wait given up or done: decided once
        self._fd: int | None = None  # one open file description: the process's flock
        self._waits: queue.SimpleQueue[_Wait | None] = queue.SimpleQueue()
        self._helper: threading.Thread | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the database's write queue for the block (at most :attr:`timeout_s` of waiting)."""
        deadline = time.monotonic() + self.timeout_s
        if not self._threads.acquire(timeout=self.timeout_s):
            raise StoreUnavailable(_BUSY)
        handed: list[bool] = []  # the turn went to the helper with a wait given up: not ours to release
        try:
            fd = self._file()
            if not _try_lock(fd):
                self._wait(fd, deadline, handed)
        except BaseException:
            if not handed:
                self._threads.release()
            raise
        try:
            yield
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                self._threads.release()

    def _file(self) -> int:
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            try:
                self.path.parent.mkdir(mode=0o700, exist_ok=True)
                self._fd = os.open(self.path, flags, 0o600)
            except OSError as e:
                raise StoreUnavailable(f"cannot open the write lock file: {type(e).__name__}") from None
        return self._fd

    def _wait(self, fd: int, deadline: float, handed: list[bool]) -> None:
        """Wait for the ``flock`` through the helper until ``deadline``. Not had by then, or the wait cut
        short by an exception: the wait is given up and the process's turn handed to the helper
        (``handed`` is appended to), which releases both once it has the lock."""
        wait = _Wait(fd)
        self._start_helper()
        self._waits.put(wait)
        try:
            wait.done.wait(max(0.0, deadline - time.monotonic()))
        finally:
            with self._decide:
                if not wait.done.is_set():
                    wait.abandoned = True
                    handed.append(True)
        if handed:
            raise StoreUnavailable(_BUSY)
        if wait.error is not None:
            raise StoreUnavailable(f"cannot lock the database's writes: {type(wait.error).__name__}")

    def _start_helper(self) -> None:
        if self._helper is None or not self._helper.is_alive():
            helper = threading.Thread(target=self._help, name="mlsgw-write-queue", daemon=True)
            try:
                helper.start()
            except RuntimeError as e:  # no thread can be started now
                raise StoreUnavailable(f"cannot wait for the write lock: {e}") from None
            self._helper = helper

    def _help(self) -> None:
        while (wait := self._waits.get()) is not None:
            try:
                fcntl.flock(wait.fd, fcntl.LOCK_EX)
            except OSError as e:
                wait.error = e
            with self._decide:
                if not wait.abandoned:
                    wait.done.set()
                    continue
            try:  # the writer gave up: the lock and the process's turn go
                if wait.error is None:
                    fcntl.flock(wait.fd, fcntl.LOCK_UN)
            except OSError:
                pass  # the lock goes with the descriptor when it is closed
            finally:
                self._threads.release()

    def close(self) -> None:
        """Stop the helper and close the lock file — unless a writer or a given-up wait holds the
        process's turn now: the descriptor is then left open for it (closed with the process)."""
        if not self._threads.acquire(blocking=False):
            return
        try:
            if self._helper is not None and self._helper.is_alive():
                self._waits.put(None)
                self._helper.join()
            self._helper = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        finally:
            self._threads.release()


_BUSY = "the database's write lock is held (busy timeout)"


def _queue_free_within(database: Path, timeout_s: float) -> bool:
    """Whether the write queue's ``flock`` can be had within ``timeout_s`` (tried every 5 ms: a probe)."""
    path = lock_folder(database) / "write"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # no writer has queued yet
    except OSError:
        return False
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except StoreUnavailable:
        return False
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        raise StoreUnavailable(f"cannot lock the database's writes: {type(e).__name__}") from None
    return True


def probe_write_lock(database: Path, timeout_s: float) -> str | None:
    """``None`` if the write queue and then SQLite's write lock can each be taken within ``timeout_s``
    (the queue's ``flock`` on a descriptor of its own, let go at once; ``BEGIN IMMEDIATE``, then
    ``ROLLBACK`` on a connection of its own: nothing is written), else why not."""
    if not _queue_free_within(database, timeout_s):
        return "the write queue is held (writes would wait and answer 503)"
    try:
        conn = sqlite3.connect(database, timeout=timeout_s, isolation_level=None)
    except sqlite3.Error as e:
        return f"cannot open the database ({type(e).__name__})"
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return "the write lock is held (writes would wait and answer 503)"
        return f"not writable ({e})"
    except sqlite3.Error as e:
        return f"not writable ({type(e).__name__})"
    finally:
        conn.close()
    return None


__all__ = ["WriteQueue", "probe_write_lock"]
