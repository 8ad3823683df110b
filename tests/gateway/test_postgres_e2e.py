"""The real ``mls-gateway serve`` on PostgreSQL (``MLSGW_DATABASE`` = a ``postgresql://`` URL): the api-v1
basics, a restart, and the loss and return of the database server without restarting the gateway
(issue 15)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.postgres_cluster import PostgresCluster

from .gwclient import GATEWAY_EXE, GatewayServer, Hosted, b64, unb64
from .test_e2e import agree, found_group, tenant


def test_api_v1_basics_on_postgresql(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    server = GatewayServer(tmp_path / "gw", env={"MLSGW_DATABASE": postgres_dsn})
    assert not (server.data_dir / "gateway.sqlite3").exists()  # the state is in PostgreSQL
    server.start()
    try:
        api = tenant(server, "acme")
        alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
        gid = found_group(alice, [bob])
        msg = alice.send(gid, b"hello over postgresql")
        assert unb64(bob.process(gid, msg)["data"]) == b"hello over postgresql"
        r1 = alice.post(gid, "/commits", {"update": True}, idem="commit-1").expect(200)
        assert alice.post(gid, "/commits", {"update": True}, idem="commit-1").expect(200).body == r1.body
        assert bob.process(gid, r1["commit"])["epoch"] == 2
        agree(gid, [alice, bob])
        assert server.client().get("/readyz").status == 200

        server.restart()  # everything is in the database
        agree(gid, [alice, bob])

        postgres_cluster.kill()
        try:
            r = alice.post(gid, "/messages", {"data": b64(b"lost?")})
            assert (r.status, r.code) == (503, "store_unavailable")
            assert r.headers["retry-after"] == "5"
            assert server.client().get("/readyz").status == 503
        finally:
            postgres_cluster.start()
        deadline = time.monotonic() + 60
        while server.client().get("/readyz").status != 200:  # no gateway restart
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        msg = alice.send(gid, b"after the database came back")
        assert unb64(bob.process(gid, msg)["data"]) == b"after the database came back"
        agree(gid, [alice, bob])
    finally:
        server.kill()


def test_backup_and_restore_refuse_postgresql(tmp_path: Path) -> None:
    env = {**os.environ, "MLSGW_DATABASE": "postgresql://mlsgw@127.0.0.1:1/mlsgw"}
    for args in (["backup", str(tmp_path / "b")], ["restore", str(tmp_path / "b")]):
        out = subprocess.run(
            [str(GATEWAY_EXE), *args, "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "pg_dump" in lines[0] and "PITR" in lines[0], out.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()
