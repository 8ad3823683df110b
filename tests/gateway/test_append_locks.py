"""The cross-process append locks of the SQLite store (gateway.sqlite_append_locks): real ``flock`` locks
held by real processes.

* A lock held by another process excludes this one until that process lets go — or dies (``kill -9``:
  the kernel releases it, nothing is left stale); other groups' locks are not held up.
* Two threads of one process exclude each other too (an open file description per hold).
* The lock files are empty; a folder that cannot be made is ``StoreUnavailable``, not an ``OSError``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.sqlite_append_locks import BUCKETS, AppendLocks, bucket, lock_folder
from gateway.store import StoreUnavailable

#: Deadlock guard of one wait (seconds); nothing asserts on elapsed time.
GUARD = 60.0
TENANT = "tenant"

HOLDER = """
import sys, time
from pathlib import Path
from gateway.sqlite_append_locks import AppendLocks
with AppendLocks(Path(sys.argv[1]), 10.0).hold("tenant", bytes.fromhex(sys.argv[2])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _holder(database: Path, group: bytes) -> subprocess.Popen[str]:
    """A process holding ``group``'s lock until a line is written to its stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(database), group.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _other_bucket(group: bytes) -> bytes:
    n = 0
    while bucket(TENANT, b"other %d" % n) == bucket(TENANT, group):
        n += 1
    return b"other %d" % n


def _try_hold(locks: AppendLocks, group: bytes, wait_s: float) -> bool:
    """Whether ``group``'s lock was taken (in a thread) within ``wait_s``; the thread lets it go."""
    taken = threading.Event()
    thread = threading.Thread(target=lambda: _hold_once(locks, group, taken), daemon=True)
    thread.start()
    got = taken.wait(wait_s)
    if got:
        thread.join(GUARD)
    return got


def _hold_once(locks: AppendLocks, group: bytes, taken: threading.Event) -> None:
    with locks.hold(TENANT, group):
        taken.set()


@pytest.mark.parametrize("ending", ["release", "kill -9"])
def test_another_process_holding_the_lock_excludes_this_one_until_it_ends(
    tmp_path: Path, ending: str
) -> None:
    database = tmp_path / "gateway.sqlite3"
    locks, group = AppendLocks(database, GUARD), b"group one"
    holder = _holder(database, group)
    try:
        # Held elsewhere: not taken here (a negative a slow machine cannot turn into a pass)...
        assert not _try_hold(locks, group, 1.0)
        # ...while a group in another bucket is free.
        assert _try_hold(locks, _other_bucket(group), GUARD)
        if ending == "release":
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
        else:
            os.kill(holder.pid, signal.SIGKILL)
        assert _try_hold(locks, group, GUARD)
    finally:
        holder.kill()
        holder.wait(GUARD)


def test_two_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    locks, group = AppendLocks(tmp_path / "gateway.sqlite3", GUARD), b"group"
    inside: list[int] = []
    overlaps = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal overlaps
        for _ in range(50):
            with locks.hold(TENANT, group):
                with guard:
                    inside.append(1)
                    overlaps += len(inside) > 1
                time.sleep(0.0005)
                with guard:
                    inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
    assert overlaps == 0


def test_lock_files_are_empty_and_bounded_in_number(tmp_path: Path) -> None:
    database = tmp_path / "gateway.sqlite3"
    locks = AppendLocks(database, GUARD)
    for n in range(3 * BUCKETS):
        with locks.hold(TENANT, b"g%d" % n):
            pass
    files = list(lock_folder(database).iterdir())
    assert 0 < len(files) <= BUCKETS
    assert all(f.stat().st_size == 0 for f in files)
    assert (lock_folder(database).stat().st_mode & 0o777) == 0o700


def test_a_folder_that_cannot_be_made_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "gateway.sqlite3.locks"
    blocker.write_bytes(b"")  # a file where the folder should be
    with pytest.raises(StoreUnavailable), AppendLocks(tmp_path / "gateway.sqlite3", GUARD).hold(TENANT, b"g"):
        pass


def test_a_lock_held_past_the_timeout_is_store_unavailable_and_other_tenants_are_apart(
    tmp_path: Path,
) -> None:
    """A waiter gives up after the timeout (503, as for the write lock), not blocking its thread for good;
    the same group id of another tenant is another key (its bucket chosen with the tenant)."""
    database = tmp_path / "gateway.sqlite3"
    holder = _holder(database, b"group")
    try:
        with pytest.raises(StoreUnavailable), AppendLocks(database, 0.2).hold(TENANT, b"group"):
            pass
        other = next(
            f"tenant {n}" for n in range(10**4) if bucket(f"tenant {n}", b"group") != bucket(TENANT, b"group")
        )
        with AppendLocks(database, GUARD).hold(other, b"group"):
            pass
    finally:
        holder.kill()
        holder.wait(GUARD)


def test_the_folder_follows_the_database_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert lock_folder(tmp_path / "link" / "gateway.sqlite3") == lock_folder(
        tmp_path / "real" / "gateway.sqlite3"
    )
