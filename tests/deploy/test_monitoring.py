"""The shipped dashboard and alert rules against a real gateway and a real Prometheus.

Two gateways (``mls-gateway serve``, tests/gateway/gwclient.py; a data folder each) stand for
compose.yaml's two replicas: the first gets a little traffic of every kind the dashboard draws, the
second stays idle. Debian's ``prometheus`` runs on deploy/prometheus/prometheus.yml (its two targets
rewritten to them, 1 s intervals) with alerts.yml. A missing ``prometheus``/``promtool`` is a failure:
deploy/bootstrap.sh installs them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.gwclient import GatewayServer, Hosted, free_port

from .monitoring import (
    PROMETHEUS_DIR,
    Prometheus,
    alert_rules,
    dashboard_queries,
    exported_names,
    metric_names,
    require_tool,
    start_prometheus,
)

pytestmark = pytest.mark.timeout(120)


def traffic(server: GatewayServer) -> None:
    """Requests of every kind the dashboard draws: tenants, identities, a group with a commit, a join, an
    application message, readiness polls, one 404."""
    _, token = server.admin.create_tenant("monitoring")
    api = server.client(token)
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    welcome = alice.commit(gid, {"add": [bob.key_package()]})["welcome"]
    bob.join(welcome)
    bob.process(gid, alice.send(gid, b"hello"))
    alice.group(gid)
    server.client().get("/readyz").expect(200)
    api.get("/v1/identities/does-not-exist/groups").expect(404)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = GatewayServer(tmp_path_factory.mktemp("deploy") / "gw")
    server.start()
    try:
        traffic(server)
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def second_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """The second replica: idle (an idle gateway must raise no alert either)."""
    server = GatewayServer(tmp_path_factory.mktemp("deploy") / "gw2")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def prometheus(
    gateway: GatewayServer, second_gateway: GatewayServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    prom = start_prometheus(
        tmp_path_factory.mktemp("prometheus"),
        targets=[f"127.0.0.1:{gateway.port}", f"127.0.0.1:{second_gateway.port}"],
        port=free_port(),
        alertmanager=f"127.0.0.1:{free_port()}",
    )
    try:
        # Two scrapes before and after a second round of traffic, so that rate() sees an increase.
        wait_for(prom, 'count(up{job="mls-gateway"} == 1) == 2', 20)
        time.sleep(1.5)
        traffic(gateway)
        time.sleep(2.5)
        yield prom
    finally:
        prom.stop()


def wait_for(prom: Prometheus, expr: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = prom.query(expr)
        if answer.get("status") == "success" and answer["data"]["result"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{expr} returned nothing within {timeout} s:\n{prom.log_tail()}")


def test_every_metric_the_dashboard_and_alerts_read_is_exported(gateway: GatewayServer) -> None:
    exported = exported_names(gateway.client().get("/metrics").expect(200).body)
    used: dict[str, set[str]] = {}
    for title, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    rules = alert_rules()
    assert {"MlsGatewayDown", "MlsGatewayHsmUnavailable", "MlsGatewayNotReady"} <= set(rules)
    for alert, expr in rules.items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"alert {alert}")
    assert len(used) >= 10, used
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"metric names the gateway does not export: {missing}"


def test_both_replicas_are_scraped_as_instances_of_one_job(
    prometheus: Prometheus, gateway: GatewayServer, second_gateway: GatewayServer
) -> None:
    """compose.yaml's replicas: one job, an instance each, both up; per-instance series keep them apart
    (the alerts group by instance, the dashboard's instance variable lists both)."""
    targets = prometheus.api("/api/v1/targets", state="active")["data"]["activeTargets"]
    assert {(t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets} == {
        ("mls-gateway", f"127.0.0.1:{gateway.port}", "up"),
        ("mls-gateway", f"127.0.0.1:{second_gateway.port}", "up"),
    }, targets
    ready = prometheus.query('mlsgw_ready{job="mls-gateway"}')["data"]["result"]
    assert sorted(r["metric"]["instance"] for r in ready) == sorted(
        f"127.0.0.1:{s.port}" for s in (gateway, second_gateway)
    )
    assert all(r["value"][1] == "1" for r in ready), ready
    # Only the first replica had traffic: its tenant shows there, and not on the idle one.
    identities = {
        r["metric"]["instance"]: float(r["value"][1])
        for r in prometheus.query('mlsgw_identities{job="mls-gateway"}')["data"]["result"]
    }
    assert identities[f"127.0.0.1:{gateway.port}"] >= 2, identities
    assert identities.get(f"127.0.0.1:{second_gateway.port}", 0.0) == 0.0, identities


def test_dashboard_queries_are_valid_and_return_data(prometheus: Prometheus) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    deadline = time.monotonic() + 20
    while True:
        empty = []
        for title, expr in queries:
            answer = prometheus.query(expr)
            assert answer.get("status") == "success", f"panel {title!r}: {expr}\n{answer}"
            if not answer["data"]["result"]:
                empty.append((title, expr))
        if not empty:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"dashboard queries without data after traffic: {empty}")
        time.sleep(0.5)


def test_identities_and_groups_are_both_drawn(prometheus: Prometheus, gateway: GatewayServer) -> None:
    """The old panel ``mlsgw_identities or mlsgw_groups`` never showed groups (``or`` matches label sets)."""
    drawn = {
        q.split("{")[0]
        for title, q in dashboard_queries()
        if title == "Identities and groups" and prometheus.query(q)["data"]["result"]
    }
    assert drawn == {"mlsgw_identities", "mlsgw_groups"}
    groups = prometheus.query(f'mlsgw_groups{{job="mls-gateway",instance="127.0.0.1:{gateway.port}"}}')
    groups = groups["data"]["result"]
    assert float(groups[0]["value"][1]) >= 2


def test_alert_rules_are_loaded_valid_and_quiet(prometheus: Prometheus) -> None:
    shipped = alert_rules()
    for expr in shipped.values():
        answer = prometheus.query(expr)
        assert answer.get("status") == "success", f"{expr}\n{answer}"
    deadline = time.monotonic() + 60  # a deadlock guard: evaluation waits on a loaded machine
    while True:
        groups = prometheus.api("/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        if set(loaded) == set(shipped) and all(
            r.get("lastEvaluation", "").startswith("2") for r in loaded.values()
        ):
            break
        assert time.monotonic() < deadline, f"rules loaded: {sorted(loaded)}, shipped: {sorted(shipped)}"
        time.sleep(0.3)
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        # A healthy gateway with a few requests raises nothing. (A load-dependent expression such as the
        # latency one may be pending on a busy machine, but its `for` keeps it from firing.)
        assert rule["state"] != "firing", f"{name} is firing: {rule.get('alerts')}"


def test_promtool_checks_the_config_and_runs_the_alert_unit_tests(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    check = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr
    tests = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout + tests.stderr
