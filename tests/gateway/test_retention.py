"""Retention per tenant and legal hold: the routes (who may set what, bad input changes nothing), the
background task of a real server purging a tenant's audit records when their retention is over — not
those of a tenant on legal hold — with each purge audited and the chain still verifying; and one run of
:class:`gateway.retention.Retention` on a real SQLite store over every kind of row it keeps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit_chain import PURGE_OPERATION, ChainBroken, verify
from gateway.audit_trail import export_lines
from gateway.auth import Principal
from gateway.config import GatewayConfig
from gateway.persistence import DEFAULT_RETENTION_S
from gateway.retention import Retention
from gateway.sqlite_directory import ClientRecord
from gateway.sqlite_store import SqliteStore
from gateway.store import AuditRecord, IdempotentResponse, Identity, Tenant

from .conftest import StoreEnv
from .gwclient import Client, GatewayServer, Hosted
from .stores import database, database_url, query
from .test_audit_chain import DROP_TRIGGERS, broken, cli, export, verify_folder

ADMIN = Principal("tok_admin", None)


#: Retention policies and the purge task on either store (issue 15).
pytestmark = pytest.mark.both_stores


def erase_by_hand(server: GatewayServer, seq: int, purge_seq: int) -> None:
    """Erase audit row ``seq`` as if purge record ``purge_seq`` had (its append-only guard lifted)."""
    with database(server) as db:
        if database_url(server) is None:
            for drop in filter(str.strip, DROP_TRIGGERS.split(";")):
                db.execute(drop)
        else:
            db.execute("ALTER TABLE audit DISABLE TRIGGER audit_erase_only")
        db.execute(
            "UPDATE audit SET operation = '', request_id = '', purged_by = ? WHERE seq = ?", (purge_seq, seq)
        )


def put(api: Client, path: str, body: object) -> tuple[int, dict[str, object]]:
    r = api.request("PUT", path, body)
    return r.status, r.body


def test_retention_routes_who_may_set_what(gateway: GatewayServer) -> None:
    a_id, a_token = gateway.admin.create_tenant("a")
    b_id, b_token = gateway.admin.create_tenant("b")
    a, b = gateway.client(a_token), gateway.client(b_token)
    doc = a.get(f"/v1/tenants/{a_id}/retention").expect(200).body
    assert doc["audit_s"] is None and doc["legal_hold"] is False and doc["effective"]["audit_s"] > 0
    # A tenant token reaches only its own tenant; the admin reaches every tenant.
    assert b.get(f"/v1/tenants/{a_id}/retention").status == 404
    assert put(b, f"/v1/tenants/{a_id}/retention", {"audit_s": 5})[0] == 404
    assert gateway.admin.get(f"/v1/tenants/{b_id}/retention").status == 200
    assert gateway.admin.get("/v1/tenants/tnt_nobody/retention").status == 404
    # Bad input: a problem document, nothing changed.
    bad = (
        {"audit_s": -1},
        {"audit_s": 1.5},
        {"mailbox_s": "long"},
        {"idempotency_s": 60},
        {"legal_hold": True},
    )
    for body in bad:
        status, problem = put(a, f"/v1/tenants/{a_id}/retention", body)
        assert status == 400 and problem["code"] == "invalid_request", problem
    assert a.get(f"/v1/tenants/{a_id}/retention").expect(200).body == doc
    # A tenant cannot shorten its own audit trail below the default (it could erase it): only an admin.
    status, problem = put(a, f"/v1/tenants/{a_id}/retention", {"audit_s": 3600, "idempotency_s": 90000})
    assert status == 400 and "admin" in problem["detail"]
    assert a.get(f"/v1/tenants/{a_id}/retention").expect(200).body == doc
    longer = {"audit_s": 2 * 31536000, "idempotency_s": 90000}
    assert put(a, f"/v1/tenants/{a_id}/retention", longer)[0] == 200
    body = {"audit_s": 3600, "idempotency_s": 90000}
    status, doc = put(gateway.admin, f"/v1/tenants/{a_id}/retention", body)
    assert status == 200 and doc["audit_s"] == 3600 and doc["effective"]["idempotency_s"] == 90000
    assert doc["mailbox_s"] is None  # absent: back to the default
    # Only an admin sets a legal hold (a tenant cannot lift its own).
    assert put(a, f"/v1/tenants/{a_id}/legal-hold", {"enabled": False})[0] == 404
    assert put(gateway.admin, f"/v1/tenants/{a_id}/legal-hold", {"enabled": "yes"})[0] == 400
    status, doc = put(gateway.admin, f"/v1/tenants/{a_id}/legal-hold", {"enabled": True})
    assert status == 200 and doc["legal_hold"] is True and doc["audit_s"] == 3600
    assert gateway.admin.metric("mlsgw_tenants_on_legal_hold") == 1
    # The policy changes are audited, with who made them.
    gateway.stop()
    changes = query(
        gateway, "SELECT tenant_id, token_id, detail FROM audit WHERE operation = 'retention_policy'"
    )
    assert [c[0] for c in changes] == [a_id, a_id, a_id]  # lengthened (tenant), shortened (admin), hold
    assert json.loads(str(changes[-1][2]))["legal_hold"] is True


def test_the_task_purges_audit_records_except_on_legal_hold(tmp_path: Path, store_env: StoreEnv) -> None:
    env = {"MLSGW_RETENTION_INTERVAL_S": "0.2", "MLSGW_AUDIT_CHECKPOINT_RECORDS": "3", **store_env()}
    server = GatewayServer(tmp_path / "gw", env=env)
    database = database_url(server)
    server.start()
    try:
        held_id, held_token = server.admin.create_tenant("held")
        kept_id, kept_token = server.admin.create_tenant("purged")
        # The held tenant's records are written first: older than the purged tenant's.
        Hosted.create(server.client(held_token), "hal").key_package()
        Hosted.create(server.client(kept_token), "pam").key_package()
        put(server.admin, f"/v1/tenants/{held_id}/legal-hold", {"enabled": True})
        assert put(server.admin, f"/v1/tenants/{held_id}/retention", {"audit_s": 1})[0] == 200
        before = query(server, "SELECT COUNT(*) FROM audit WHERE tenant_id = ?", kept_id)[0][0]
        assert isinstance(before, int) and before >= 3
        status, _ = put(server.admin, f"/v1/tenants/{kept_id}/retention", {"audit_s": 1})
        assert status == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            erased = query(
                server,
                "SELECT COUNT(*) FROM audit WHERE tenant_id = ? AND purged_by IS NOT NULL",
                kept_id,
            )[0][0]
            # A run counts what it purged once all its transactions committed: wait for both.
            counted = server.admin.metric("mlsgw_retention_purged_total", kind="audit")
            if isinstance(erased, int) and erased >= before and counted >= before:
                break
            time.sleep(0.1)
        assert erased >= before, server.log_tail()
        assert server.admin.metric("mlsgw_retention_purged_total", kind="audit") >= before
        assert server.admin.metric("mlsgw_tenants_on_legal_hold") == 1
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()
    # The held tenant's records (older than the purged ones) are all still there.
    held = query(server, "SELECT operation, purged_by FROM audit WHERE tenant_id = ?", held_id)
    assert held and all(op and purged_by is None for op, purged_by in held)
    # Every purge is audited with its counts; the chain still verifies.
    pem = tmp_path / "audit.pem"
    key_args = ("--data-dir", str(server.data_dir), "--out", str(pem))
    assert cli("audit", "public-key", *key_args, database=database).returncode == 0
    lines = export(server.data_dir, tmp_path / "all.jsonl", database=database)
    purges = [r for r in lines if r["type"] == "record" and r["operation"] == PURGE_OPERATION]
    assert purges and {p["tenant_id"] for p in purges} == {kept_id}
    assert sum(json.loads(p["detail"])["audit_records"] for p in purges) >= before
    done = verify_folder(server.data_dir, pem, database)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["purged"] >= before
    # Erasing one more row by hand (hiding it) is named: no purge record accounts for it.
    seq = query(server, "SELECT MIN(seq) FROM audit WHERE tenant_id = ?", held_id)[0][0]
    erase_by_hand(server, int(str(seq)), int(purges[0]["seq"]))
    broken(verify_folder(server.data_dir, pem, database), int(str(seq)), "purge record")


def test_one_run_over_every_kind_of_row(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        for tenant in ("tnt_a", "tnt_b"):
            _tenant_rows(store, tenant)
        with store.transaction() as tx:  # the admin's requests follow the defaults
            tx.put_idempotent("admin:POST:/v1/tenants", "k", IdempotentResponse(b"h", 201, b"sealed"), None)
        retention = Retention(store, GatewayConfig())
        retention.put(ADMIN, "tnt_a", {"audit_s": 1}, "req-1")
        retention.put(ADMIN, "tnt_b", {"audit_s": 1}, "req-2")
        retention.set_legal_hold(ADMIN, "tnt_b", {"enabled": True}, "req-3")
        # Ten days on: mailbox items (7 d) and idempotency records (24 h) of both tenants are gone, the
        # audit records of the tenant not on hold too.
        done = {p.tenant_id: p for p in retention.run(now=time.time() + 10 * 24 * 3600)}
        # tnt_a's audit records: its two key uses and its policy change.
        assert (done["tnt_a"].mailbox, done["tnt_a"].idempotency, done["tnt_a"].audit) == (2, 1, 3)
        assert (done["tnt_b"].mailbox, done["tnt_b"].idempotency, done["tnt_b"].audit) == (2, 1, 0)
        assert done["tnt_b"].audit_seq is not None  # audited even when only its mailboxes went
        assert (done[None].mailbox, done[None].idempotency, done[None].audit) == (0, 1, 0)
        with store.read_transaction() as tx:
            assert tx.box_depths() == {"mailbox": 0, "inbox": 0}
            for tenant in ("tnt_a", "tnt_b"):
                assert tx.get_idempotent(f"{tenant}:POST:/x", "k", 0) is None
        lines = list(export_lines(store))
        key = Ed25519PrivateKey.generate().public_key()
        result = verify(lines, key)
        assert result.purged == 3 and result.records == len(lines) - 1 - 3
        # A second run finds nothing more to purge and writes nothing.
        again = retention.run(now=time.time() + 10 * 24 * 3600)
        assert not any(p.any for p in again)
        assert len(list(export_lines(store))) == len(lines)
        # The erased rows' digest is what the purge record claims: claim one more row, and it fails.
        forged = [dict(line) for line in lines]
        victim = next(r for r in reversed(forged) if r.get("tenant_id") == "tnt_b" and r.get("operation"))
        victim["purged_by"] = done["tnt_a"].audit_seq
        try:
            verify(forged, key)
        except ChainBroken as e:
            assert e.seq == victim["seq"]
        else:
            raise AssertionError("a row hidden as erased verified")
    finally:
        store.close()


def _tenant_rows(store: SqliteStore, tenant: str) -> None:
    """A tenant with an identity, a client, an inbox event, a mailbox item, an idempotency record and two
    audit records."""
    identity = f"idn_{tenant}"
    with store.transaction() as tx:
        tx.add_tenant(Tenant(tenant, tenant))
        tx.add_identity(
            Identity(
                identity, tenant, "x", 1, b"c", b"r" + tenant.encode(), tenant.encode(), "pkcs11", "pkcs11"
            )
        )
        tx.add_client(ClientRecord(f"cli_{tenant}", tenant, "phone"))
        tx.add_inbox_event(identity, b"g", 1, b"sealed")
        tx.add_mailbox_items(tenant, [f"cli_{tenant}"], b"g", 1, "commit")
        tx.put_idempotent(f"{tenant}:POST:/x", "k", IdempotentResponse(b"h", 200, b"body"), identity)
        tx.add_audit(
            [
                AuditRecord("req", tenant, identity, b"g", 1, b"key", "sign", "pkcs11", True, "tok_1"),
                AuditRecord("req", tenant, identity, None, None, b"key", "generate", "pkcs11", True, "tok_1"),
            ]
        )
    assert DEFAULT_RETENTION_S == 24 * 3600.0
