"""The store's in-process write turn (gateway.sqlite_store.SqliteStore.transaction): this process's writers
queue on a lock before ``BEGIN IMMEDIATE`` instead of in SQLite's sleeping busy handler; the turn is
released at the end of every transaction, committed or failed, and writers of another connection still
meet SQLite's own write lock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.sqlite_store import SqliteStore
from gateway.store import StoreUnavailable, Tenant


def _tenants(store: SqliteStore) -> list[str]:
    with store.read_transaction() as tx:
        return [t.tenant_id for t in tx.list_tenants()]


def _turn_is_free(store: SqliteStore) -> bool:
    """Whether another thread can take the write turn now."""
    got: list[bool] = []

    def probe() -> None:
        ok = store._write_turn.acquire(blocking=False)
        if ok:
            store._write_turn.release()
        got.append(ok)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return got[0]


def test_concurrent_writers_take_turns_and_both_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.db", busy_timeout_s=30.0)
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with store.transaction() as tx:
                tx.add_tenant(Tenant("t-first", "first"))
                inside.set()
                assert release.wait(30)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def second() -> None:
        try:
            with store.transaction() as tx:
                tx.add_tenant(Tenant("t-second", "second"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t1 = threading.Thread(target=first)
    t1.start()
    assert inside.wait(30)
    assert not _turn_is_free(store)  # the first writer holds the turn for its whole transaction
    t2 = threading.Thread(target=second)
    t2.start()
    t2.join(0.2)
    assert t2.is_alive()  # waits for its turn (not refused)
    release.set()
    t1.join(30)
    t2.join(30)
    assert not errors
    assert sorted(_tenants(store)) == ["t-first", "t-second"]
    assert _turn_is_free(store)


def test_a_failed_transaction_releases_the_turn_and_writes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.db")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.add_tenant(Tenant("t-1", "one"))
        raise RuntimeError("the operation failed")
    assert _turn_is_free(store)
    assert _tenants(store) == []
    with store.transaction() as tx:  # the next writer goes on at once
        tx.add_tenant(Tenant("t-2", "two"))
    assert _tenants(store) == ["t-2"]


def test_a_writer_of_another_connection_still_holds_sqlites_lock(tmp_path: Path) -> None:
    """Another process's writer (here another connection) is not behind the turn: SQLite's write lock
    still keeps the two apart, and the busy timeout still bounds the wait."""
    store = SqliteStore(tmp_path / "gw.db", busy_timeout_s=0.2)
    other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable), store.transaction() as tx:
            tx.add_tenant(Tenant("t-0", "zero"))
        assert _turn_is_free(store)
        other.execute("ROLLBACK")
    finally:
        other.close()
    with store.transaction() as tx:
        tx.add_tenant(Tenant("t-1", "one"))
    assert _tenants(store) == ["t-1"]
