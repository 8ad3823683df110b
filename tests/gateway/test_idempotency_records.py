"""Idempotency records at rest: bodies sealed (no token or plaintext in the database file), replayed
unchanged, erased with their identity, expired after the retention and purged; no ``outgoing`` table."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.sqlite_store import SCHEMA_VERSION, SqliteStore

from .gwclient import GatewayServer, Hosted, b64, unb64
from .legacy_schema import pre_migration_database
from .stores import at_rest, change, query, tables

PLAINTEXT = b"the secret words of alice"


@pytest.mark.both_stores
def test_responses_are_sealed_replayed_and_erased_with_their_identity(gateway: GatewayServer) -> None:
    tenant = gateway.admin.post("/v1/tenants", {"name": "sealed"}, idem="t-1").expect(201)
    assert gateway.admin.post("/v1/tenants", {"name": "sealed"}, idem="t-1").expect(201).body == tenant.body
    token = gateway.admin.post(f"/v1/tenants/{tenant['tenant_id']}/tokens", {}, idem="tok-1").expect(201)
    api = gateway.client(tenant["token"])
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    bob.join(alice.commit(gid, {"add": [bob.key_package()]})["welcome"])
    message = alice.send(gid, PLAINTEXT)
    path = bob.path(gid, "/process")
    first = bob.api.post(path, {"message": message}, idem="proc-1").expect(200)
    assert unb64(first["data"]) == PLAINTEXT
    assert bob.api.post(path, {"message": message}, idem="proc-1").expect(200).body == first.body

    raw = at_rest(gateway)
    for secret in (tenant["token"], token["token"]):
        assert secret.encode() not in raw
    assert PLAINTEXT not in raw and b64(PLAINTEXT).encode() not in raw
    assert "outgoing" not in tables(gateway)

    api.delete(f"/v1/identities/{bob.identity_id}").expect(204)
    assert query(gateway, "SELECT count(*) FROM idempotency WHERE identity_id = ?", bob.identity_id) == [(0,)]
    again = bob.api.post(path, {"message": message}, idem="proc-1")
    assert again.status == 404 and b64(PLAINTEXT).encode() not in again.raw
    # Another identity's records are untouched: alice's key is still replayed.
    sent = alice.post(gid, "/messages", {"data": b64(b"x")}, idem="m-1").expect(200)
    assert alice.post(gid, "/messages", {"data": b64(b"x")}, idem="m-1").expect(200).body == sent.body


@pytest.mark.both_stores
def test_expired_records_are_not_replayed_and_are_purged_at_start_up(gateway: GatewayServer) -> None:
    api = gateway.client(gateway.admin.create_tenant("expiry")[1])
    alice = Hosted.create(api, "alice")
    gid = alice.create_group()
    body = {"data": b64(b"hello")}
    first = alice.post(gid, "/messages", body, idem="m-old").expect(200)
    kept = alice.post(gid, "/messages", body, idem="m-kept").expect(200)
    two_days_ago = time.time() - 2 * 86400
    change(gateway, "UPDATE idempotency SET created_at = ? WHERE key = 'm-old'", two_days_ago)

    renewed = alice.post(gid, "/messages", body, idem="m-old").expect(200)  # a new request: new ciphertext
    assert renewed["message"] != first["message"]
    assert alice.post(gid, "/messages", body, idem="m-old").expect(200).body == renewed.body
    assert alice.post(gid, "/messages", body, idem="m-kept").expect(200).body == kept.body

    change(gateway, "UPDATE idempotency SET created_at = ? WHERE key = 'm-kept'", two_days_ago)
    gateway.restart()  # the start-up purge
    deadline = time.monotonic() + 30
    while query(gateway, "SELECT key FROM idempotency WHERE key LIKE 'm-%'") != [("m-old",)]:
        assert time.monotonic() < deadline, "the expired record was not purged at start-up"
        time.sleep(0.1)


def test_schema_3_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    pre_migration_database(path)  # made before versioned migrations
    conn = sqlite3.connect(path)  # back to schema 3: an outgoing table, clear idempotency rows
    conn.executescript(
        "DROP TABLE idempotency; PRAGMA user_version = 3;"
        "CREATE TABLE outgoing (seq INTEGER PRIMARY KEY, message BLOB);"
        "CREATE TABLE idempotency (scope TEXT NOT NULL, key TEXT NOT NULL, request_hash BLOB NOT NULL, "
        "status INTEGER NOT NULL, body BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (scope, key));"
        "INSERT INTO idempotency VALUES ('s', 'k', x'00', 200, 'clear', 0);"
    )
    conn.close()
    store = SqliteStore(path)
    with store.read_transaction() as tx:
        assert tx.get_idempotent("s", "k", 0.0) is None
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'outgoing'").fetchall() == []
    assert conn.execute("SELECT count(*) FROM idempotency").fetchone()[0] == 0
    conn.close()


def test_retention_setting_keeps_the_api_promise() -> None:
    assert load_config(env={}).idempotency_retention_s == 86400
    assert load_config(env={"MLSGW_IDEMPOTENCY_RETENTION_S": "172800"}).idempotency_retention_s == 172800
    with pytest.raises(ConfigError):
        load_config(env={"MLSGW_IDEMPOTENCY_RETENTION_S": "60"})
