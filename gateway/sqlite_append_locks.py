"""Hosted members' appends to one group's log, serialised across every process on one SQLite database.

In one process, the requests of hosted members that may append to a group's log run one at a time (the
log's asyncio lock, :func:`gateway.dispatch.log_lock`): each reads the head and the member's state, does
its MLS work, then appends with a compare-and-swap on the head (:mod:`gateway.delivery_store`). With
several processes on one database (``serve --workers N``, or a second ``serve`` on the same data folder)
that lock is per process, so two processes' appends to one group race: the loser re-reads and runs again,
and a process starved of CPU can lose every retry to the other process's queue of requests (measured: a
send answered 409 after :data:`gateway.delivery_store.LOG_RETRIES` lost races, beside a CPU hog).

:class:`AppendLocks` is the cross-process twin of that lock: an exclusive ``flock(2)`` on one of
:data:`BUCKETS` files in a folder beside the database (``<database>.locks/``), chosen by a hash of the
tenant and group ids, held around the whole operation (its reads, its MLS work, its write and any retry).
``flock`` locks belong to an open file description, so two threads of one process exclude each other as
two processes do; the kernel releases a lock when its holder dies (``kill -9``), so nothing is left stale.
A waiter gives up after the store's busy timeout (:class:`gateway.store.StoreUnavailable`, 503 with
Retry-After — what a write lock held as long gives too), so a holder stuck in the HSM cannot pin other
requests' threads for good. Two groups in one bucket only share a lock (1 in :data:`BUCKETS`). The files
are empty: nothing secret. The folder is found from the database's resolved path, so two processes that
name one database by different paths (a symlink) still share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .store import StoreUnavailable

#: How many lock files (groups are spread over them by a hash of their tenant's and their own ids).
BUCKETS = 1024

#: The first and the longest pause between two tries of a held lock (it doubles up to the longest).
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.0005, 0.02


def lock_folder(database: Path) -> Path:
    """The folder of the lock files of the database at ``database``."""
    resolved = database.resolve()
    return resolved.with_name(resolved.name + ".locks")


def bucket(tenant_id: str, group: bytes) -> int:
    """The lock file a group's appends take."""
    key = b"mlsgw-append\0" + tenant_id.encode() + b"\0" + group
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % BUCKETS


class AppendLocks:
    """Exclusive ``flock`` locks per group, shared by every process that opens the same database."""

    def __init__(self, database: Path, timeout_s: float) -> None:
        self.folder = lock_folder(database)
        #: How long a waiter tries before :class:`StoreUnavailable`.
        self.timeout_s = timeout_s

    def _open(self, tenant_id: str, group: bytes) -> int:
        path = self.folder / f"{bucket(tenant_id, group):04d}"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                return os.open(path, flags, 0o600)
            except FileNotFoundError:
                self.folder.mkdir(mode=0o700, exist_ok=True)
                return os.open(path, flags, 0o600)
        except OSError as e:
            raise StoreUnavailable(f"cannot open the append lock file: {type(e).__name__}") from None

    @contextlib.contextmanager
    def hold(self, tenant_id: str, group: bytes) -> Iterator[None]:
        """Hold the group's lock for the block: waits while another thread or process holds it (each
        holder finishes one request; a dead holder's lock is released by the kernel), at most
        :attr:`timeout_s`."""
        fd = self._open(tenant_id, group)
        try:
            self._lock(fd)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _lock(self, fd: int) -> None:
        """Take the lock on ``fd`` (tries without blocking, pausing between them, until the timeout)."""
        deadline, pause = time.monotonic() + self.timeout_s, FIRST_PAUSE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable("the group's append lock is held (busy timeout)") from None
            except OSError as e:
                raise StoreUnavailable(f"cannot lock the group's appends: {type(e).__name__}") from None
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_S)


__all__ = ["BUCKETS", "AppendLocks", "bucket", "lock_folder"]
