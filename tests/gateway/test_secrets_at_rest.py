"""Issue 14's search: every secret a test creates — bearer tokens (admin, tenant, a second token created
with an Idempotency-Key, so its answer is a stored response), application plaintexts (sent, processed
with an Idempotency-Key, delivered to an inbox), an external PSK a member remembers, an exporter secret
and the token's user PIN — is looked for in the SQLite database file, its write-ahead log and the
server's log (at INFO), while the server runs and after it stopped: none is there, in clear or in
base64."""

from __future__ import annotations

import base64
from pathlib import Path

from .gwclient import GatewayServer, Hosted, b64, unb64

PLAINTEXTS = (b"first secret words of alice", b"second secret words of alice")
PSK_ID, PSK_SECRET = b"fleet psk id", b"fleet psk secret, 32 bytes long!"


def _forms(secret: bytes) -> list[bytes]:
    """The secret as bytes, in base64 and in URL-safe base64 without padding (the API's two forms)."""
    return [secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


def _stored(server: GatewayServer) -> dict[str, bytes]:
    database = server.data_dir / "gateway.sqlite3"
    wal = database.with_name(database.name + "-wal")
    return {
        "database": database.read_bytes(),
        "wal": wal.read_bytes() if wal.exists() else b"",
        "log": server.log_path.read_bytes(),
    }


def _found(server: GatewayServer, secrets: dict[str, bytes]) -> list[str]:
    """Where any form of any secret is found: ``"<secret> in <place>"``."""
    places = _stored(server)
    return [
        f"{name} in {place}"
        for name, secret in secrets.items()
        for place, raw in places.items()
        if any(form in raw for form in _forms(secret))
    ]


def test_no_secret_a_test_created_is_in_the_database_wal_or_log(tmp_path: Path) -> None:
    server = GatewayServer(tmp_path / "gw", env={"MLSGW_LOG_LEVEL": "INFO"})
    try:
        server.start()
        tenant_id, tenant_token = server.admin.create_tenant("secrets")
        second = server.admin.post(f"/v1/tenants/{tenant_id}/tokens", {}, idem="tok-1").expect(201)
        api = server.client(tenant_token)
        alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
        gid = alice.create_group()
        psk = {"psk_id": b64(PSK_ID), "secret": b64(PSK_SECRET)}
        welcome = alice.commit(gid, {"add": [bob.key_package()], "psks": [psk]})["welcome"]
        bob.join(welcome, psks=[psk])
        for n, plaintext in enumerate(PLAINTEXTS):
            message = alice.send(gid, plaintext)
            got = bob.post(gid, "/process", {"message": message}, idem=f"proc-{n}").expect(200)
            assert unb64(got["data"]) == plaintext
        exported = alice.export(gid, "secrets", 32)
        assert exported == bob.export(gid, "secrets", 32)
        events = api.get(f"/v1/identities/{bob.identity_id}/inbox").expect(200)["events"]
        assert [unb64(e["data"]) for e in events if e["kind"] == "application"] == list(PLAINTEXTS)

        secrets = {
            "admin token": server.admin_token.encode(),
            "tenant token": tenant_token.encode(),
            "second token": str(second["token"]).encode(),
            "PSK secret": PSK_SECRET,
            "exporter secret": exported,
            "user PIN": (server.data_dir / "hsm.pin").read_text().strip().encode(),
            **{f"plaintext {n}": p for n, p in enumerate(PLAINTEXTS)},
        }
        assert _found(server, secrets) == []  # while it runs: the WAL not yet checkpointed
        assert server.stop() == 0
        assert _found(server, secrets) == []  # and at rest
        assert len(secrets["user PIN"]) >= 8
        # The search finds what is there: the tenant's name is stored in clear.
        assert _found(server, {"tenant name": b"secrets"}) == ["tenant name in database"]
    finally:
        server.kill()
