"""The decoded group-state cache: validated against the stored record version, left clean by failures,
bounded by bytes, disabled by ``state_cache_bytes = 0``; and a database of schema 2 is upgraded."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, cast

from gateway.sqlite_store import SCHEMA_VERSION, SqliteStore
from gateway.state_cache import CachedState, StateCache
from gateway.store import GroupRecord

from .gwclient import Client, GatewayServer, Hosted, unb64
from .legacy_schema import pre_migration_database


def _entry(version: int, size: int) -> CachedState:
    return CachedState(version, cast(Any, object()), None, size)


def test_cache_is_lru_bounded_by_bytes_and_validated_by_version() -> None:
    lookups: list[bool] = []
    cache = StateCache(100, lookups.append)
    for n in range(3):
        cache.put(("i", bytes([n])), _entry(1, 40))
    assert len(cache) == 2 and cache.size_bytes == 80  # the first was evicted
    assert cache.peek(("i", b"\x00"), 1) is None
    assert cache.peek(("i", b"\x01"), 2) is None  # another version: a miss, and the entry is gone
    assert cache.take(("i", b"\x02"), 1) is not None and len(cache) == 0  # taken out
    cache.put(("i", b"\x03"), _entry(5, 10))
    cache.put(("i", b"\x03"), _entry(4, 10))  # never replaced by an older version
    assert cache.peek(("i", b"\x03"), 5) is not None
    cache.put(("j", b"\x04"), _entry(1, 10))
    cache.drop_identity("i")
    assert len(cache) == 1
    assert lookups == [False, False, True, True]
    disabled = StateCache(0, lookups.append)
    disabled.put(("i", b"\x00"), _entry(1, 1))
    assert len(disabled) == 0 and disabled.take(("i", b"\x00"), 1) is None


def test_schema_2_database_is_upgraded_and_put_group_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    pre_migration_database(path)  # made before versioned migrations
    conn = sqlite3.connect(path)  # back to the schema of version 2: no groups.version
    conn.executescript("DROP TABLE groups; PRAGMA user_version = 2;")
    conn.execute(
        "CREATE TABLE groups (identity_id TEXT NOT NULL, group_id BLOB NOT NULL, epoch INTEGER NOT NULL, "
        "state BLOB NOT NULL, pending BLOB, updated_at REAL NOT NULL, PRIMARY KEY (identity_id, group_id))"
    )
    conn.execute("INSERT INTO groups VALUES ('idn', x'01', 3, x'aa', NULL, 0)")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    with store.read_transaction() as tx:
        assert tx.get_group_version("idn", b"\x01") == 0
    with store.transaction() as tx:
        assert tx.put_group(GroupRecord("idn", b"\x01", 3, b"bb", None), 0) == 1
        assert tx.put_group(GroupRecord("idn", b"\x01", 3, b"cc", None), 1) == 2  # same epoch, new version
    with store.read_transaction() as tx:
        record = tx.get_group("idn", b"\x01")
        assert record is not None and (record.version, record.state) == (2, b"cc")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    store.close()


def _pair(server: GatewayServer) -> tuple[Client, Hosted, Hosted, str]:
    api = server.client(server.admin.create_tenant("cache")[1])
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    c = alice.commit(gid, {"add": [bob.key_package()]})
    bob.join(c["welcome"])
    return api, alice, bob, gid


def _second_process(server: GatewayServer) -> GatewayServer:
    """Another ``serve`` process on the same data folder (database and token)."""
    other = server.another_process()
    other.start()
    return other


def test_a_write_by_another_process_is_seen_and_no_generation_is_reused(gateway: GatewayServer) -> None:
    api, alice, bob, gid = _pair(gateway)
    for n in range(3):  # warm: alice's and bob's states are cached
        assert unb64(bob.process(gid, alice.send(gid, b"warm %d" % n))["data"]) == b"warm %d" % n
    hits = api.metric("mlsgw_state_cache_hits_total")
    assert hits > 0
    other = _second_process(gateway)
    try:
        alice_elsewhere = Hosted(other.client(api.token), alice.identity_id, "alice")
        sent_elsewhere = [alice_elsewhere.send(gid, b"elsewhere %d" % n) for n in range(2)]
    finally:
        other.stop()
    sent_here = alice.send(gid, b"here again")  # must continue after the other process's generations
    for n, message in enumerate(sent_elsewhere):
        assert unb64(bob.process(gid, message)["data"]) == b"elsewhere %d" % n
    assert unb64(bob.process(gid, sent_here)["data"]) == b"here again"
    assert api.metric("mlsgw_state_cache_misses_total") > 0


def test_failed_requests_leave_the_cache_usable(gateway: GatewayServer) -> None:
    _, alice, bob, gid = _pair(gateway)
    assert unb64(bob.process(gid, alice.send(gid, b"one"))["data"]) == b"one"
    # a message that fails validation, an epoch-stale commit, an Idempotency-Key reused with another body
    assert bob.api.post(bob.path(gid, "/process"), {"message": "AAEC"}).status >= 400
    stale = alice.commit(gid, {})["commit"]
    assert bob.process(gid, stale)["epoch"] == 2
    # Delivered again: recognised (it went through the group's log), the same answer, nothing applied twice.
    assert bob.api.post(bob.path(gid, "/process"), {"message": stale}).expect(200).body["epoch"] == 2
    assert unb64(bob.process(gid, alice.send(gid, b"two"))["data"]) == b"two"
    path = alice.path(gid, "/messages")
    alice.api.post(path, {"data": "AQ=="}, idem="k1").expect(200)
    assert alice.api.post(path, {"data": "Ag=="}, idem="k1").status == 409
    for text in (b"three", b"four"):
        assert unb64(bob.process(gid, alice.send(gid, text))["data"]) == text
    assert unb64(alice.process(gid, bob.send(gid, b"back"))["data"]) == b"back"


def test_state_cache_bytes_0_disables_the_cache(tmp_path: Path) -> None:
    server = GatewayServer(tmp_path / "gw", env={"MLSGW_STATE_CACHE_BYTES": "0"})
    server.start()
    try:
        api, alice, bob, gid = _pair(server)
        for n in range(3):
            assert unb64(bob.process(gid, alice.send(gid, b"m%d" % n))["data"]) == b"m%d" % n
        assert api.metric("mlsgw_state_cache_hits_total") == 0
        assert api.metric("mlsgw_state_cache_misses_total") == 0
    finally:
        server.kill()
