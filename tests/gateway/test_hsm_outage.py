"""The HSM goes away under a running gateway: requests that need it answer 503 ``hsm_unavailable`` with
``Retry-After`` quickly, ``/readyz`` says so, nothing changes, and service resumes when the token is back.
The log says so once each way: one "down" line and one "up again" line, not one per failed request."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .gwclient import GatewayServer


def _header(reply: object, name: str) -> str:
    headers = {k.lower(): v for k, v in reply.headers.items()}  # type: ignore[attr-defined]
    return str(headers.get(name.lower(), ""))


def _token_dirs(gateway: GatewayServer) -> list[Path]:
    return [p for p in (gateway.data_dir / "softhsm" / "tokens").iterdir() if p.is_dir()]


def test_hsm_outage_answers_503_and_recovers(gateway: GatewayServer, tmp_path: Path) -> None:
    _, token = gateway.admin.create_tenant("acme")
    client = gateway.client(token)
    alice = client.create_identity("alice")["identity_id"]
    before = client.get("/v1/identities").expect(200).body

    (token_dir,) = _token_dirs(gateway)
    parked = tmp_path / "parked-token"
    shutil.move(str(token_dir), parked)  # SoftHSM treats any folder under tokens/ as a token: move it out
    try:
        deadline, reply = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            started = time.monotonic()
            reply = client.post(f"/v1/identities/{alice}/key-packages", {"count": 1})
            if reply.status == 503:
                break
        assert reply is not None and reply.status == 503, reply
        assert reply.code == "hsm_unavailable" and _header(reply, "Retry-After")
        assert _header(reply, "Content-Type").startswith("application/problem+json")
        assert time.monotonic() - started < 10, "an unavailable HSM must fail fast"
        assert client.get("/readyz").status == 503
        assert client.get("/healthz").status == 200
        assert client.get(f"/v1/identities/{alice}/key-packages").expect(200)["key_packages"] == []
        for _ in range(5):  # more failing requests while it is down: still one "down" line
            assert client.post(f"/v1/identities/{alice}/key-packages", {"count": 1}).status == 503
    finally:
        shutil.move(str(parked), token_dir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = client.post(f"/v1/identities/{alice}/key-packages", {"count": 1})
        if reply.status == 201:
            break
        time.sleep(0.5)
    assert reply.status == 201, reply
    assert client.get("/readyz").status == 200
    assert client.get("/v1/identities").expect(200).body == before
    log = gateway.log_path.read_text()
    down = [line for line in log.splitlines() if "HSM token 'mls-gateway' is down" in line]
    up = [line for line in log.splitlines() if "HSM token 'mls-gateway' is up again" in line]
    assert len(down) == 1 and len(up) == 1, log
    assert " WARNING hsm.token " in down[0] and log.index(down[0]) < log.index(up[0])
