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
group id, held around the whole operation (its reads, its MLS work, its write and any retry). ``flock``
locks belong to an open file description, so two threads of one process exclude each other as two
processes do; the kernel releases a lock when its holder dies (``kill -9``), so nothing is left stale.
Two groups in one bucket only share a lock (1 in :data:`BUCKETS`). The files are empty: nothing secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from .store import StoreUnavailable

#: How many lock files (groups are spread over them by a hash of their id).
BUCKETS = 1024


def lock_folder(database: Path) -> Path:
    """The folder of the lock files of the database at ``database``."""
    return database.with_name(database.name + ".locks")


def bucket(group: bytes) -> int:
    """The lock file a group's appends take."""
    return int.from_bytes(hashlib.sha256(b"mlsgw-append\0" + group).digest()[:4], "big") % BUCKETS


class AppendLocks:
    """Exclusive ``flock`` locks per group, shared by every process that opens the same database."""

    def __init__(self, database: Path) -> None:
        self.folder = lock_folder(database)

    def _open(self, group: bytes) -> int:
        path = self.folder / f"{bucket(group):04d}"
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
    def hold(self, group: bytes) -> Iterator[None]:
        """Hold the group's lock for the block: waits while another thread or process holds it (each
        holder finishes one request; a dead holder's lock is released by the kernel)."""
        fd = self._open(group)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                raise StoreUnavailable(f"cannot lock the group's appends: {type(e).__name__}") from None
            yield
        finally:
            os.close(fd)  # releases the lock


__all__ = ["BUCKETS", "AppendLocks", "bucket", "lock_folder"]
