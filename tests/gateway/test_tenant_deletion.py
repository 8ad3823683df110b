"""Deleting a tenant through the real server (``DELETE /v1/tenants/{id}``) and the CLI: everything of it
goes — rows in every table (but the append-only audit trail) and keys in the token — in bounded batches;
another tenant is untouched and keeps working. Token listing never shows a token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import StoreEnv
from .gwclient import Client, GatewayServer, Hosted, gid_path
from .stores import contains_sql, database_url, query, tables, text_columns
from .test_directory import Device
from .token_objects import token_object_ids

REPO = Path(__file__).resolve().parents[2]


#: Deleting a tenant removes its rows from either store (issue 15).
pytestmark = pytest.mark.both_stores


@pytest.fixture
def server(tmp_path: Path, store_env: StoreEnv) -> Iterator[GatewayServer]:
    """A server of its own that may register loopback webhooks (nothing listens there)."""
    gw = GatewayServer(tmp_path / "gw", env={"MLSGW_WEBHOOK_ALLOW_PRIVATE": "1", **store_env()})
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()


def _ids(server: GatewayServer) -> set[bytes]:
    return set(token_object_ids(server.data_dir))


def _rows_naming(server: GatewayServer, values: set[str]) -> dict[str, int]:
    """Rows of every table but the audit trail with a text column equal to one of ``values`` or an
    idempotency scope naming one of them."""
    found: dict[str, int] = {}
    names = sorted(values)
    for table in sorted(tables(server)):
        if table == "audit" or table.startswith("sqlite_"):
            continue
        columns = text_columns(server, table)
        if not columns:
            continue
        marks = ", ".join("?" * len(names))
        where = " OR ".join(f"{c} IN ({marks})" for c in columns)
        args = [v for _ in columns for v in names]
        if "scope" in columns:
            where += "".join(" OR " + contains_sql(server, "scope") for _ in names)
            args += names
        count = query(server, f"SELECT COUNT(*) FROM {table} WHERE {where}", *args)[0][0]
        if count:
            found[table] = count
    return found


def _tenant_rows(server: GatewayServer, tenant_id: str) -> dict[str, int]:
    """The tenant's rows in the tables keyed by ``tenant_id``."""
    out = {}
    for table in sorted(tables(server)):
        if table == "audit" or "tenant_id" not in text_columns(server, table):
            continue
        n = query(server, f"SELECT COUNT(*) FROM {table} WHERE tenant_id = ?", tenant_id)[0][0]
        if n:
            out[table] = n
    return out


def _populate(server: GatewayServer, api: Client, tenant_id: str, name: str) -> dict[str, object]:
    """A tenant with hosted identities (KeyPackages, a webhook, a group with two members, stored
    idempotent responses), a client with KeyPackages in the directory and a Welcome in its mailbox."""
    alice, bob = Hosted.create(api, f"{name}-alice"), Hosted.create(api, f"{name}-bob")
    api.key_packages(bob.identity_id, 2, last_resort=True)
    gid = gid_path(alice.api.post(alice.path(), {}, idem=f"{name}-group").expect(201)["group_id"])
    api.request(
        "PUT",
        f"/v1/identities/{alice.identity_id}/webhook",
        {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32},
    ).expect(200)
    client_id = api.post("/v1/clients", {"name": f"{name}-device"}, idem=f"{name}-client").expect(201)[
        "client_id"
    ]
    device = Device(f"{name}-device")
    api.post(f"/v1/clients/{client_id}/key-packages", {"key_packages": device.key_packages(2)}).expect(201)
    claimed = api.post("/v1/key-packages/claim", {"endpoints": [client_id]}).expect(200)
    kp = claimed["key_packages"][client_id]
    alice.commit(gid, {"add": [bob.key_package(), kp]})
    token_id = server.admin.post(f"/v1/tenants/{tenant_id}/tokens", {}, idem=f"{name}-tok").expect(201)[
        "token_id"
    ]
    return {"alice": alice, "bob": bob, "gid": gid, "client_id": client_id, "token_id": token_id}


def test_delete_tenant_removes_everything_and_spares_the_other(server: GatewayServer) -> None:
    admin = server.admin
    tenant_b, token_b = admin.create_tenant("keeps")
    b = server.client(token_b)
    kept = _populate(server, b, tenant_b, "b")
    server.stop()
    before = _ids(server)
    server.start()

    tenant_a, token_a = admin.create_tenant("goes")
    a = server.client(token_a)
    gone = _populate(server, a, tenant_a, "a")
    assert _tenant_rows(server, tenant_a).keys() >= {"group_logs", "group_members", "log_entries", "mailbox"}
    listed = admin.get(f"/v1/tenants/{tenant_a}/tokens").expect(200)["tokens"]
    assert {t["token_id"] for t in listed} >= {gone["token_id"]}
    assert any("client_id" in t for t in listed) and token_a not in json.dumps(listed)
    assert all(set(t) <= {"token_id", "created_at", "revoked", "client_id"} for t in listed)

    admin.delete(f"/v1/tenants/{tenant_a}").expect(204)
    assert a.get("/v1/identities").status == 401  # its tokens stop working
    assert admin.delete(f"/v1/tenants/{tenant_a}").status == 404
    assert admin.get(f"/v1/tenants/{tenant_a}/tokens").status == 404
    assert tenant_a not in json.dumps(admin.get("/v1/tenants").expect(200).body)
    # The other tenant works on: its group, its client, its identities.
    alice_b = kept["alice"]
    assert isinstance(alice_b, Hosted)
    alice_b.send(str(kept["gid"]), b"still here")
    assert b.get(f"/v1/clients/{kept['client_id']}").status == 200
    assert len(b.get("/v1/identities").expect(200)["identities"]) == 2

    server.stop()
    names = {tenant_a, str(gone["client_id"]), str(gone["token_id"])}
    names |= {m.identity_id for m in (gone["alice"], gone["bob"]) if isinstance(m, Hosted)}
    assert _rows_naming(server, names) == {}
    assert _tenant_rows(server, tenant_a) == {}
    assert _ids(server) == before  # every key of the tenant destroyed, none of the other's
    assert _tenant_rows(server, tenant_b)  # the other tenant's rows are all there


def _cli(server: GatewayServer, *args: str) -> subprocess.CompletedProcess[str]:
    """An operator command on the server's data folder and store (``MLSGW_DATABASE`` on PostgreSQL)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("MLSGW_CONFIG", "MLSGW_DATA_DIR", "MLSGW_DATABASE", "SOFTHSM2_CONF"):
        env.pop(var, None)
    url = database_url(server)
    if url is not None:
        env["MLSGW_DATABASE"] = url
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
        cwd=REPO,
    )


@pytest.mark.sqlite_only("the HTTP test above deletes a tenant on PostgreSQL; the CLI runs the same deletion")
def test_cli_lists_tokens_and_deletes_a_tenant_in_batches(server: GatewayServer) -> None:
    """``admin tokens`` and ``admin delete-tenant`` on a stopped server's data folder, with more identities
    than one batch; the admin token still works afterwards."""
    tenant, token = server.admin.create_tenant("many")
    api = server.client(token)
    ids = [api.create_identity(f"m{i}")["identity_id"] for i in range(55)]  # > one batch of 50
    server.stop()
    listed = _cli(server, "admin", "tokens", tenant, "--json")
    assert listed.returncode == 0, listed.stderr
    tokens = json.loads(listed.stdout)["tokens"]
    assert len(tokens) == 1 and tokens[0]["revoked"] is False and token not in listed.stdout
    done = _cli(server, "admin", "delete-tenant", tenant)
    assert done.returncode == 0, done.stderr
    assert _rows_naming(server, {tenant, *ids}) == {}
    again = _cli(server, "admin", "delete-tenant", tenant)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    server.start()
    assert server.admin.get("/v1/tenants").status == 200
    assert server.client(token).get("/v1/identities").status == 401
