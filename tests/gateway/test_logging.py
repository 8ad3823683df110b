"""The operator's view of a running gateway: JSON log lines, the access log, request ids, start-up and
shutdown lines, no secret in any line, and prometheus-client's standard collectors on ``/metrics``."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from .gwclient import GatewayServer, Hosted, b64

PLAINTEXT = b"the quarterly numbers are in the blue folder"


def _json_lines(server: GatewayServer) -> list[dict[str, Any]]:
    """Every line of the server's log (after ``init``'s output) parsed as one JSON object."""
    lines = server.log_path.read_text().splitlines()
    out = []
    for line in lines:
        if line.startswith("mls-gateway listening on"):  # the serve command's own stdout line
            continue
        record = json.loads(line)  # every log line is one JSON object
        assert isinstance(record, dict), line
        out.append(record)
    return out


def _access(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["logger"] == "mls_gateway.access"]


@pytest.fixture
def json_gateway(tmp_path: Path) -> Any:
    server = GatewayServer(tmp_path / "gw", env={"MLSGW_LOG_FORMAT": "json", "MLSGW_LOG_LEVEL": "INFO"})
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_json_lines_access_log_request_ids_and_no_secrets(json_gateway: GatewayServer) -> None:
    gw = json_gateway
    admin = gw.admin
    _, tenant_token = admin.create_tenant("acme")
    api = gw.client(tenant_token)
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    alice.commit(gid, {"add": [bob.key_package()]})
    sent = alice.send(gid, PLAINTEXT)

    mine = api.get(f"/v1/identities/{alice.identity_id}", headers={"X-Request-Id": "ops.trace-42_A"})
    assert mine.status == 200 and mine.headers["x-request-id"] == "ops.trace-42_A"
    bad_ids = ["has space", "x" * 129, "semi;colon"]
    for bad in bad_ids:
        r = api.get("/v1/identities", headers={"X-Request-Id": bad})
        assert r.status == 200
        assert r.headers["x-request-id"] != bad and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    problem = api.get("/v1/identities/nope", headers={"X-Request-Id": "missing-1"})
    assert problem.status == 404 and problem.headers["x-request-id"] == "missing-1"
    assert problem["instance"] == "missing-1"  # the problem document names it too
    assert gw.client().get("/v1/identities").status == 401  # no token: an access line without a tenant
    assert gw.stop() == 0

    records = _json_lines(gw)
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
    access = _access(records)
    by_id = {r["request_id"]: r for r in access}
    line = by_id["ops.trace-42_A"]
    assert line["method"] == "GET" and line["status"] == 200
    assert line["route"] == "/v1/identities/{identity_id}"  # the template, not the path as sent
    assert line["tenant_id"] and line["bytes_out"] > 0 and line["duration_ms"] >= 0
    assert by_id["missing-1"]["status"] == 404
    assert not any(bad in by_id for bad in bad_ids)
    assert any(r["status"] == 401 and r["tenant_id"] is None for r in access)
    # one access line per request: every response's request id appears exactly once
    assert len(by_id) == len(access)

    audit = [r for r in records if r["logger"] == "mls_gateway.audit"]
    assert audit and all(r["event"] == "key_use" and r["key_ref"] and r["request_id"] for r in audit)

    text = gw.log_path.read_text()
    for secret in (gw.admin_token, tenant_token):
        assert secret not in text
    for plain in (PLAINTEXT.decode(), b64(PLAINTEXT), sent):
        assert plain not in text
    assert alice.identity_id not in {r.get("route") for r in access}


def test_startup_and_shutdown_lines(json_gateway: GatewayServer) -> None:
    assert json_gateway.stop() == 0
    records = _json_lines(json_gateway)
    (startup,) = [r for r in records if r.get("event") == "startup"]
    assert startup["listen"] == f"127.0.0.1:{json_gateway.port}"
    assert startup["version"] and startup["crypto_backend"] in ("python", "native")
    assert startup["token_label"] == "mls-gateway" and startup["token_state"] == "up"
    assert startup["custody"]["kinds"]  # what the token holds, in which PKCS#11 form
    events = [r.get("event") for r in records]
    assert events.index("startup") < events.index("shutdown") < events.index("stopped")


def test_text_is_the_default_format(gateway_factory: Any) -> None:
    server = gateway_factory()
    server.env["MLSGW_LOG_LEVEL"] = "INFO"
    server.restart()
    server.admin.get("/v1/tenants", headers={"X-Request-Id": "text-1"}).expect(200)
    assert server.stop() == 0
    lines = [line for line in server.log_path.read_text().splitlines() if "mls_gateway.access" in line]
    (line,) = [line for line in lines if "request_id=text-1" in line]
    assert " INFO mls_gateway.access GET /v1/tenants 200 " in line and "route=/v1/tenants" in line
    assert server.admin_token not in server.log_path.read_text()


def test_metrics_has_the_standard_collectors(shared_gateway: GatewayServer) -> None:
    r = shared_gateway.client().get("/metrics").expect(200)
    text = r.body
    assert r.headers["content-type"].startswith("text/plain")
    for family in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert re.search(rf"^{family}(\{{.*\}})? ", text, re.M), family
    assert "python_gc_collections_total" in text
    assert "mlsgw_identities" in text  # the gateway's own gauges, refreshed before rendering
    om = shared_gateway.client().get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")


def test_sigabrt_writes_every_threads_stack_to_the_log(gateway_factory: Any) -> None:
    """faulthandler is on in ``serve``: a crash or SIGABRT leaves every thread's stack (frames, no values)
    in the log — what a hung shutdown was waiting for (the tests' ``stop`` sends it before SIGKILL)."""
    server = gateway_factory()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGABRT)
    assert server.proc.wait(timeout=30) != 0
    log = server.log_tail(50000)
    assert "most recent call first" in log and log.count("Thread 0x") >= 2, log[-3000:]
