"""Custody modes per tenant through the real server: ``wrapped`` (the default) and ``token``.

A wrapped P-256 tenant's identities sign and decapsulate through a full group round trip while their keys
exist at rest only as blobs in ``wrapped_keys`` (wrapped by the token under its KEK: the hsm tests show a
blob does not unwrap under another KEK), the token's object files do not grow with the number of keys,
deleting an identity deletes its blobs, and orphan blobs are reconciled like software keys.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hsm.kinds import ECDH_P256, new_ref

from .gwclient import Client, GatewayServer, Hosted, unb64
from .test_reconciliation import object_files, reconcile_cli

P256 = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256


def _db(server: GatewayServer) -> sqlite3.Connection:
    return sqlite3.connect(Path(server.data_dir) / "gateway.sqlite3")


def _count(server: GatewayServer, table: str) -> int:
    with _db(server) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _tenant(server: GatewayServer, name: str, custody: str | None = None) -> tuple[Client, str]:
    body = {"name": name} if custody is None else {"name": name, "custody": custody}
    r = server.admin.post("/v1/tenants", body).expect(201)
    return server.client(r["token"]), r["custody"]


def test_custody_is_chosen_per_tenant_and_reported_truthfully(gateway: GatewayServer) -> None:
    wrapped_api, mode = _tenant(gateway, "acme")
    assert mode == "wrapped"
    token_api, mode = _tenant(gateway, "globex", "token")
    assert mode == "token"
    assert gateway.admin.post("/v1/tenants", {"name": "x", "custody": "clear"}).status == 400
    listed = {t["name"]: t["custody"] for t in gateway.admin.get("/v1/tenants").expect(200)["tenants"]}
    assert listed == {"acme": "wrapped", "globex": "token"}

    def custody(api: Client, suite: int) -> dict[str, str]:
        return dict(api.create_identity(f"i{suite}", cipher_suite=suite)["custody"])

    assert custody(wrapped_api, P256) == {"signature": "wrapped", "hpke": "wrapped", "kek": "mlsgw/kek/v1"}
    assert custody(token_api, P256) == {"signature": "pkcs11", "hpke": "pkcs11"}
    # Ed25519 and X25519 are not wrappable on SoftHSM: token objects, said so
    assert custody(wrapped_api, 1) == {"signature": "pkcs11", "hpke": "pkcs11"}


def test_wrapped_p256_group_round_trip_and_key_lifecycle(gateway: GatewayServer) -> None:
    api, _ = _tenant(gateway, "wrapped")
    alice, bob = (Hosted.create(api, n, cipher_suite=P256) for n in ("alice", "bob"))
    gid = alice.create_group()
    c = alice.commit(gid, {"add": [bob.key_package()]})
    assert bob.join(c["welcome"])["epoch"] == 1  # bob's wrapped init key decapsulated the Welcome
    assert unb64(bob.process(gid, alice.send(gid, b"hello"))["data"]) == b"hello"
    update = bob.commit(gid)  # a new wrapped leaf key, and a path alice decapsulates
    alice.process(gid, update["commit"])
    assert alice.state(gid) == bob.state(gid)
    assert unb64(alice.process(gid, bob.send(gid, b"back"))["data"]) == b"back"
    assert _count(gateway, "software_keys") == 0

    # 200 wrapped keys more: no token object more
    files, rows = object_files(gateway), _count(gateway, "wrapped_keys")
    dave = Hosted.create(api, "dave", cipher_suite=P256)
    api.key_packages(dave.identity_id, 100)
    assert object_files(gateway) == files
    assert _count(gateway, "wrapped_keys") == rows + 1 + 200
    with _db(gateway) as conn:
        assert len({r[0] for r in conn.execute("SELECT kek_id FROM wrapped_keys")}) == 1

    # deleting an identity deletes its blobs (signature key and KeyPackage keys)
    assert api.delete(f"/v1/identities/{dave.identity_id}").status == 204
    assert _count(gateway, "wrapped_keys") == rows


def test_orphan_blobs_are_reconciled(gateway: GatewayServer) -> None:
    api, _ = _tenant(gateway, "orphans")
    Hosted.create(api, "erin", cipher_suite=P256)
    gateway.stop()
    orphan = new_ref(ECDH_P256, "wrapped")
    with _db(gateway) as conn:
        conn.execute(
            "INSERT INTO wrapped_keys (key_ref, blob, kek_id, created_at) VALUES (?, ?, ?, 0)",
            (orphan, b"\x01\x01" + bytes(65 + 40), bytes(8)),
        )
    rows = _count(gateway, "wrapped_keys")
    report = reconcile_cli(gateway, "--grace-s", "0")
    assert report["orphans"]["wrapped"] == 1 and report["destroyed"]["wrapped"] == 1
    assert report["destroyed_refs"] == [orphan.hex()]
    assert _count(gateway, "wrapped_keys") == rows - 1
    gateway.start()
