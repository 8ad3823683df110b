"""The SQLite store's files are its owner's alone (gateway/sqlite_files.py): a new database, its WAL and
its shared-memory file are created 0600 whatever the umask, and an existing store's wider modes are
narrowed when it opens."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sqlite_files import make_owner_only
from gateway.sqlite_store import SqliteStore
from gateway.store import Tenant


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default umask (SQLite would make its files 0644 under it)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(database: Path) -> dict[str, int]:
    """The mode of the database file and of its WAL and shared-memory files, those that exist."""
    files = [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
    return {f.name: stat.S_IMODE(f.stat().st_mode) for f in files if f.exists()}


def write_something(database: Path) -> None:
    store = SqliteStore(database)
    try:
        with store.transaction() as tx:
            tx.add_tenant(Tenant("ten_1", "one"))
        found = modes(database)  # while it is open: the WAL and shared-memory files exist
    finally:
        store.close()
    assert len(found) == 3, found
    assert set(found.values()) == {0o600}, found


@pytest.mark.usefixtures("permissive_umask")
def test_a_new_store_makes_its_files_owner_only(tmp_path: Path) -> None:
    write_something(tmp_path / "gateway.sqlite3")


@pytest.mark.usefixtures("permissive_umask")
def test_an_existing_store_with_wider_modes_is_narrowed_when_it_opens(tmp_path: Path) -> None:
    database = tmp_path / "gateway.sqlite3"
    write_something(database)
    for name in modes(database):
        os.chmod(tmp_path / name, 0o644)
    assert set(modes(database).values()) == {0o644}
    store = SqliteStore(database)
    try:
        assert set(modes(database).values()) == {0o600}
    finally:
        store.close()


def test_an_open_connection_keeps_its_locks(tmp_path: Path) -> None:
    """``make_owner_only`` on a file this process holds open must not drop its SQLite locks (closing any
    descriptor of a file drops all of a process's POSIX locks on it): another process still finds the
    database locked."""
    database = tmp_path / "gateway.sqlite3"
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("BEGIN IMMEDIATE")  # the write lock (a POSIX lock on the file)
        make_owner_only(database)
        other = subprocess.run(
            [sys.executable, "-c", TRY_WRITE_LOCK, str(database)], capture_output=True, text=True, timeout=60
        )
        assert other.returncode != 0 and "locked" in other.stderr, other
    finally:
        conn.close()


TRY_WRITE_LOCK = """
import sqlite3, sys
sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
"""
