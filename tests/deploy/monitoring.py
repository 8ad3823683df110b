"""What tests/deploy reads from the shipped monitoring configuration (deploy/prometheus, deploy/grafana),
and a real Prometheus process (Debian's ``prometheus`` package, installed by deploy/bootstrap.sh)."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mls-gateway.json"

#: What Grafana substitutes for the dashboard's variables when "All" instances are selected.
GRAFANA_VARIABLES = {"$instance": ".*", "${instance}": ".*"}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    assert path, (
        f"{name} is not installed: run deploy/bootstrap.sh (it installs Debian's prometheus package, "
        "which has prometheus and promtool)"
    )
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, variables substituted as Grafana does for
    "All", plus the instance variable's own query (the selector inside Grafana's label_values())."""
    doc = json.loads(DASHBOARD.read_text())
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                out.append((panel["title"], substitute(target["expr"])))

    walk(doc["panels"])
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"]["query"])
            assert m, f"variable {var['name']}: unexpected query {var['query']!r}"
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a dashboard variable this test does not know: {expr}"
    return expr


def alert_rules() -> dict[str, str]:
    """alert name -> expression, read from alerts.yml (plain and folded ``>-`` scalars: what it uses)."""
    rules: dict[str, str] = {}
    lines = (PROMETHEUS_DIR / "alerts.yml").read_text().splitlines()
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"\s*- alert:\s*(\S+)\s*$", line):
            name = m.group(1)
        elif m := re.match(r"(\s*)expr:\s*(.*)$", line):
            assert name is not None, f"expr before any alert name: {line!r}"
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in (">", ">-", "|", "|-"):
                block = []
                while i + 1 < len(lines) and (
                    not lines[i + 1].strip() or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                ):
                    i += 1
                    block.append(lines[i].strip())
                value = " ".join(b for b in block if b)
            rules[name] = value
            name = None
        i += 1
    return rules


def metric_names(expr: str) -> set[str]:
    """The gateway's metric names an expression reads."""
    return set(re.findall(r"\bmlsgw_[A-Za-z0-9_]+", expr))


def exported_names(metrics_text: str) -> set[str]:
    """Every sample name a /metrics page declares (# TYPE), whether or not a labelled family has a child
    yet: counters as name_total, histograms as _bucket/_count/_sum."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.M):
        if kind == "counter":  # the text format's TYPE line names a counter with or without _total
            family = family.removesuffix("_total")
        names.update(family + s for s in suffixes.get(kind, ("",)))
    return names


@dataclass
class Prometheus:
    """One ``prometheus`` process on the shipped configuration, its scrape targets rewritten."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", f"{path}?{query}" if query else path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        return json.loads(body) if body.startswith(b"{") else {"status": resp.status, "body": body}

    def query(self, expr: str) -> dict[str, Any]:
        return dict(self.api("/api/v1/query", query=expr))

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


#: The gateway job's targets line in deploy/prometheus/prometheus.yml (one address per gateway process).
SHIPPED_TARGETS = '- targets: ["gateway-1:8080", "gateway-2:8080"]'


def shipped_config_for(targets: list[str], alertmanager: str) -> str:
    """deploy/prometheus/prometheus.yml with the gateway targets (compose.yaml's two replicas) and
    Alertmanager rewritten and the intervals shortened to 1 s (so that rate() has samples within seconds)."""
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    for old, new in (
        (SHIPPED_TARGETS, "- targets: " + json.dumps(targets)),
        ('"alertmanager:9093"', f'"{alertmanager}"'),
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
    ):
        assert text.count(old) == 1, f"prometheus.yml no longer has {old} once: update tests/deploy"
        text = text.replace(old, new)
    return text


def start_prometheus(folder: Path, targets: list[str], port: int, alertmanager: str) -> Prometheus:
    exe = require_tool("prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(shipped_config_for(targets, alertmanager))
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", folder / "alerts.yml")
    log_path = folder / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(port, proc, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{prom.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if prom.api("/-/ready").get("status") == 200:
                return prom
        time.sleep(0.1)
    prom.stop()
    raise AssertionError(f"prometheus was not ready within 30 s:\n{prom.log_tail()}")
