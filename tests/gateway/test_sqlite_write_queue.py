"""The SQLite write queue (:mod:`gateway.sqlite_write_queue`): the writers of every thread and process on
one database take turns through an ``flock``, a waiter gives up after the busy timeout (503), a wait given
up leaks nothing, and a holder killed with ``kill -9`` frees it.

Another process is a real one (a small Python program holding the lock file's ``flock``); nothing is
timed but the waiter's own timeout.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway import sqlite_write_queue
from gateway.sqlite_store import SqliteStore
from gateway.sqlite_write_queue import WriteQueue
from gateway.store import StoreUnavailable

#: Holds the write queue's flock of the database named by argv[1] until its standard input closes; says
#: "busy" if it cannot have it within 30 s (a lock leaked by the process under test fails, not hangs).
_HOLDER = """
import fcntl, os, sys, time
from gateway.sqlite_append_locks import lock_folder
from pathlib import Path
path = lock_folder(Path(sys.argv[1])) / "write"
path.parent.mkdir(mode=0o700, exist_ok=True)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
deadline = time.monotonic() + 30
while True:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        if time.monotonic() > deadline:
            print("busy", flush=True)
            sys.exit(1)
        time.sleep(0.01)
print("held", flush=True)
sys.stdin.read()
"""


def start_writer(writes: WriteQueue) -> tuple[threading.Thread, threading.Event]:
    """A thread taking the write queue once (the event set while it holds it)."""
    took = threading.Event()

    def writer() -> None:
        with writes.hold():
            took.set()

    waiting = threading.Thread(target=writer)
    waiting.start()
    return waiting, took


def turn_free(writes: WriteQueue) -> bool:
    """Whether the process's turn comes free within 30 s (a given-up wait's helper releases it)."""
    deadline = time.monotonic() + 30
    while writes._threads.locked():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def other_process_holding(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``database``'s write queue (released when the block ends)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
        proc.wait(timeout=30)


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    writes = WriteQueue(tmp_path / "db.sqlite3", timeout_s=30)
    inside, overlaps, done = [0], [], []

    def writer() -> None:
        for _ in range(200):
            with writes.hold():
                inside[0] += 1
                if inside[0] != 1:
                    overlaps.append(inside[0])
                inside[0] -= 1
        done.append(1)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    writes.close()
    assert len(done) == 4 and overlaps == []


def test_a_writer_waits_for_another_process_and_goes_on_when_it_lets_go(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    writes = WriteQueue(database, timeout_s=60)
    with other_process_holding(database):
        waiting, took = start_writer(writes)
        assert not took.wait(0.3), "took the write queue while another process held it"
    waiting.join(timeout=60)  # woken by the release (its timeout is a minute)
    assert took.is_set()
    writes.close()


def test_a_wait_given_up_answers_unavailable_and_leaks_nothing(tmp_path: Path) -> None:
    """Past the timeout the writer gets :class:`StoreUnavailable` and the process's turn stays with the
    helper still waiting for the lock; once the other process lets go, the helper takes the lock, lets it
    go and hands the turn on: another process, then this one, take it."""
    database = tmp_path / "db.sqlite3"
    writes = WriteQueue(database, timeout_s=0.2)
    with other_process_holding(database):
        with pytest.raises(StoreUnavailable, match="busy timeout"), writes.hold():
            pass
        assert writes._threads.locked(), "the waiter that gave up released the turn itself"
        with pytest.raises(StoreUnavailable, match="busy timeout"), writes.hold():
            pass
    assert turn_free(writes), "the helper kept the process's turn"
    with other_process_holding(database):  # the helper let the lock go (it is not ours now)
        pass
    writes.timeout_s = 60
    for _ in range(3):
        with writes.hold():
            pass
    writes.close()


def test_a_wait_cut_short_by_an_exception_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in the middle of a wait (e.g. KeyboardInterrupt) gives the wait up like a timeout."""
    database = tmp_path / "db.sqlite3"
    writes = WriteQueue(database, timeout_s=60)

    class Interrupted(Exception):
        pass

    class InterruptedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise Interrupted()

    class InterruptedWait(sqlite_write_queue._Wait):
        def __init__(self, fd: int) -> None:
            super().__init__(fd)
            self.done = InterruptedEvent()

    with other_process_holding(database):
        monkeypatch.setattr(sqlite_write_queue, "_Wait", InterruptedWait)
        with pytest.raises(Interrupted), writes.hold():
            pass
        monkeypatch.undo()
        assert writes._threads.locked()
    assert turn_free(writes)
    with other_process_holding(database):
        pass
    writes.close()


def test_closing_with_a_wait_given_up_leaves_its_descriptor_to_it(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    writes = WriteQueue(database, timeout_s=0.2)
    with other_process_holding(database):
        with pytest.raises(StoreUnavailable), writes.hold():
            pass
        writes.close()  # does not wait, and does not close what the helper still uses
        assert writes._fd is not None
    assert turn_free(writes)
    with other_process_holding(database):
        pass
    writes.close()
    assert writes._fd is None


def test_a_holder_killed_lets_a_waiting_writer_in(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    writes = WriteQueue(database, timeout_s=60)
    with other_process_holding(database) as holder:
        waiting, took = start_writer(writes)
        assert not took.wait(0.3)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        waiting.join(timeout=60)
    assert took.is_set()
    writes.close()


def test_a_store_write_waits_in_the_queue_and_reads_do_not(tmp_path: Path) -> None:
    database = tmp_path / "gateway.sqlite3"
    store = SqliteStore(database, busy_timeout_s=0.3)
    try:
        assert store.write_probe(0.2) is None
        with other_process_holding(database):
            with pytest.raises(StoreUnavailable), store.transaction() as tx:
                tx.add_token("tok_x", None, b"h" * 32)
            assert store.write_probe(0.2) == "the write queue is held (writes would wait and answer 503)"
            with store.read_transaction() as tx:
                assert tx.count_admin_tokens() == 0
        store.write_queue.timeout_s = 60
        with store.transaction() as tx:
            tx.add_token("tok_x", None, b"h" * 32)
        with store.lookup() as tx:
            assert tx.token_by_hash(b"h" * 32) is not None
    finally:
        store.close()
