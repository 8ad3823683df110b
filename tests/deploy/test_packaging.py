"""Static checks of the container and systemd packaging (no container runtime or PID-1 systemd here):
deploy/Containerfile, the build-context ignore files, deploy/compose.yaml (PostgreSQL, two gateway
replicas, monitoring), deploy/compose.single.yaml (one gateway on SQLite) and deploy/mls-gateway.service.
``systemd-analyze security --offline`` scores the unit when systemd-analyze is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .monitoring import DEPLOY, REPO

UNIT = DEPLOY / "mls-gateway.service"


def stages() -> list[str]:
    """The Containerfile's stages, each from its FROM line; continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    out: list[str] = []
    for line in lines:
        if line.startswith("FROM "):
            out.append("")
        if out:
            out[-1] += line + "\n"
    return out


def test_containerfile_is_multi_stage_non_root_with_healthcheck_and_no_compiler() -> None:
    build, final = stages()
    assert re.search(r"^FROM \S+ AS build$", build, re.M)
    assert "gcc" in build and "libssl-dev" in build
    assert "COPY . ." not in build + final, "the whole context (secrets, .venv) must not be copied"
    assert re.search(r"^COPY --from=build ", final, re.M)
    for tool in ("gcc", "-dev", "pkg-config", "build-essential", "clang"):
        assert tool not in final, f"the final stage installs {tool}"
    assert "libssl3" in final and "softhsm2" in final
    users = re.findall(r"^USER (\S+)$", final, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    health = re.findall(r"^HEALTHCHECK .*$", final, re.M)
    assert len(health) == 1 and "/healthz" in health[0], health
    assert re.search(r"^FROM \$\{DEBIAN_IMAGE\}$", final, re.M)
    assert re.search(r"^ARG DEBIAN_IMAGE=debian:12\.\d+-slim$", (DEPLOY / "Containerfile").read_text(), re.M)


def test_ignore_files_keep_secrets_and_local_state_out_of_the_build_context() -> None:
    container = (REPO / ".containerignore").read_text()
    assert (REPO / ".dockerignore").read_text() == container
    patterns = {ln.strip() for ln in container.splitlines() if ln.strip() and not ln.startswith("#")}
    for needed in (".git", ".venv", "**/node_modules", "data", "**/__pycache__", "**/*.so", ".pytest_cache"):
        assert needed in patterns, f"{needed} is not ignored"


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file parsed by Debian's ``yq`` (anchors and ``<<`` merge keys resolved, as compose does;
    compose's own ``${VAR}`` interpolation is left as text)."""
    yq = shutil.which("yq")
    assert yq is not None, "yq is missing: run ./deploy/bootstrap.sh (it installs Debian's yq)"
    done = subprocess.run([yq, "-c", ".", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert isinstance(doc, dict)
    return doc


def compose_file(name: str) -> dict[str, Any]:
    return read_yaml(DEPLOY / name)


#: What every gateway container keeps, whichever compose file runs it.
HARDENING = {
    "read_only": True,
    "tmpfs": ["/tmp"],
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "restart": "unless-stopped",
}

#: ``${VAR:?message}``: compose refuses to start when VAR is unset (nothing falls back to a default).
REQUIRED_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]+\}")


def replicas(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if name.startswith("gateway-")}


def test_compose_mounts_rules_provisions_grafana_and_pins_images() -> None:
    services = compose_file("compose.yaml")["services"]
    external = {name: s["image"] for name, s in services.items() if not s["image"].startswith("mls-gateway:")}
    assert set(external) == {"postgres", "prometheus", "grafana", "alertmanager"}, external
    for name, image in external.items():
        tag = image.partition(":")[2]
        # PostgreSQL's versions are major.minor; 15 is the major the tests run (bootstrap's postgresql-15).
        pinned = r"15\.\d+(-\w+)?" if name == "postgres" else r"v?\d+\.\d+\.\d+"
        assert re.fullmatch(pinned, tag) or "@sha256:" in image, f"{image} is not pinned"
    assert "postgresql-15" in (DEPLOY / "bootstrap.sh").read_text()
    # rule_files: ["alerts.yml"] is relative to prometheus.yml: the folder is mounted, not just the file.
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert 'rule_files: ["alerts.yml"]' in (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    grafana = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "mls-gateway.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "url: http://prometheus:9090" in datasource and "type: prometheus" in datasource
    assert services["alertmanager"]["profiles"] == ["alerting"]
    assert (DEPLOY / "alertmanager" / "alertmanager.yml").exists()


def test_compose_postgres_is_healthchecked_private_and_keeps_its_data() -> None:
    doc = compose_file("compose.yaml")
    pg = doc["services"]["postgres"]
    assert pg["healthcheck"]["test"][:2] == ["CMD", "pg_isready"], pg["healthcheck"]
    # The TCP address: during the image's first-run initialisation the server listens on its socket only,
    # so the check passes only once the real server accepts the gateways' connections.
    assert "--host=127.0.0.1" in pg["healthcheck"]["test"]
    assert f"--username={pg['environment']['POSTGRES_USER']}" in pg["healthcheck"]["test"]
    assert f"--dbname={pg['environment']['POSTGRES_DB']}" in pg["healthcheck"]["test"]
    assert "ports" not in pg, "PostgreSQL is reached by the gateways over the compose network only"
    volume, _, path = pg["volumes"][0].partition(":")
    assert path == "/var/lib/postgresql/data" and volume in doc["volumes"]
    assert pg["cap_drop"] == ["ALL"] and pg["security_opt"] == ["no-new-privileges:true"]
    assert "scram-sha-256" in pg["environment"]["POSTGRES_INITDB_ARGS"]


def test_compose_replicas_share_image_database_and_hsm_token_and_keep_the_hardening() -> None:
    doc = compose_file("compose.yaml")
    services = doc["services"]
    gateways = replicas(services)
    assert len(gateways) >= 2, sorted(services)
    first, *others = gateways.values()
    per_replica = {"ports", "depends_on"}

    def shared(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k not in per_replica}

    for other in others:
        assert shared(other) == shared(first), "the replicas differ in more than their port and start order"
    assert first["image"] == "mls-gateway:local"
    assert {k: first[k] for k in HARDENING} == HARDENING
    assert "/readyz" in " ".join(first["healthcheck"]["test"])
    # A stop lets serve's graceful shutdown (10 s; --workers' supervisor 15 s) release the leases.
    assert re.fullmatch(r"(\d+)s", first["stop_grace_period"]) and int(first["stop_grace_period"][:-1]) > 15
    # One database for all: a PostgreSQL URL naming the compose service, with no password in it.
    url = urlsplit(first["environment"]["MLSGW_DATABASE"])
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.password is None, url
    assert url.username == services["postgres"]["environment"]["POSTGRES_USER"]
    assert url.path == "/" + services["postgres"]["environment"]["POSTGRES_DB"]
    # One HSM token for all: the same named volume at the data folder (token, PIN file).
    volume, _, path = first["volumes"][0].partition(":")
    assert path == "/data" and volume in doc["volumes"]
    # Each on its own loopback port; each starts once the database answers.
    ports = [g["ports"] for g in gateways.values()]
    assert all(len(p) == 1 and p[0].startswith("127.0.0.1:") and p[0].endswith(":8080") for p in ports)
    assert len({p[0] for p in ports}) == len(ports), ports
    for name, g in gateways.items():
        assert g["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
    # A first start without `init` makes the token: the replicas must not make two at once.
    for name, g in list(gateways.items())[1:]:
        assert g["depends_on"][next(iter(gateways))] == {"condition": "service_healthy"}, name


def test_prometheus_scrapes_every_replica_under_the_job_the_alerts_read() -> None:
    services = compose_file("compose.yaml")["services"]
    scrape = read_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert [job["job_name"] for job in scrape] == ["mls-gateway"], scrape
    (static,) = scrape[0]["static_configs"]
    assert sorted(static["targets"]) == sorted(f"{name}:8080" for name in replicas(services))
    assert set(services["prometheus"]["depends_on"]) == set(replicas(services))
    selectors = set(re.findall(r'job=\\?"([^"\\]+)', (DEPLOY / "prometheus" / "alerts.yml").read_text()))
    selectors |= set(
        re.findall(r'job=\\?"([^"\\]+)', (DEPLOY / "grafana" / "dashboards" / "mls-gateway.json").read_text())
    )
    assert selectors == {"mls-gateway"}, selectors


def test_no_password_is_committed_in_the_compose_files() -> None:
    """Every password-like value is compose's ``${VAR:?...}`` from deploy/.env, which git ignores."""
    text = (DEPLOY / "compose.yaml").read_text()
    services = compose_file("compose.yaml")["services"]
    secrets = {
        (name, key): value
        for name, s in services.items()
        for key, value in (s.get("environment") or {}).items()
        if re.search(r"PASSWORD|SECRET|TOKEN|PIN", key)
    }
    assert {key for _, key in secrets} == {"POSTGRES_PASSWORD", "PGPASSWORD"}, secrets
    for where, value in secrets.items():
        m = REQUIRED_VARIABLE.fullmatch(value)
        assert m and m[1] == "MLSGW_POSTGRES_PASSWORD", f"{where}: {value!r} is not ${{VAR:?...}}"
    assert {m[1] for m in REQUIRED_VARIABLE.finditer(text)} == {"MLSGW_POSTGRES_PASSWORD"}
    for s in services.values():
        for value in (s.get("environment") or {}).values():
            assert urlsplit(str(value)).password is None, value
    assert "deploy/.env" in (REPO / ".gitignore").read_text().splitlines()
    # .containerignore leaves deploy/ (and so deploy/.env) out of the image build context.
    assert "deploy" in (REPO / ".containerignore").read_text().splitlines()


def test_single_gateway_compose_keeps_sqlite_its_data_and_the_same_hardening() -> None:
    single = compose_file("compose.single.yaml")
    assert list(single["services"]) == ["gateway"]
    gateway = single["services"]["gateway"]
    replica = next(iter(replicas(compose_file("compose.yaml")["services"]).values()))
    assert "MLSGW_DATABASE" not in (gateway.get("environment") or {}), "SQLite in the data folder"
    assert gateway["volumes"] == ["gateway-data:/data"] and "gateway-data" in single["volumes"]
    assert gateway["ports"] == ["127.0.0.1:8080:8080"]
    for key in (*HARDENING, "image", "build", "healthcheck", "stop_grace_period"):
        assert gateway[key] == replica[key], key


def unit_options() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            options.setdefault(key, []).append(value)
    return options


def test_systemd_unit_is_sandboxed_and_takes_the_pin_as_a_credential() -> None:
    o = unit_options()
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "UMask": "0077",
        "User": "mlsgw",
    }
    for key, value in expected.items():
        assert o.get(key) == [value], f"{key}={o.get(key)}, expected {value!r}"
    # Stopping: SIGTERM to the supervisor alone (it stops its workers in order), SIGKILL to all at timeout.
    assert o.get("KillMode") == ["mixed"] and o.get("KillSignal") == ["SIGTERM"]
    assert "@system-service" in o["SystemCallFilter"]
    # The PIN: a credential, read through gateway.config's pin_file; never in the environment.
    assert o["LoadCredential"] == ["hsm-pin:/etc/mls-gateway/hsm-pin"]
    envs = o["Environment"]
    assert "MLSGW_HSM_PIN_FILE=%d/hsm-pin" in envs
    assert not any(e.startswith("MLSGW_HSM_PIN=") for e in envs)
    # The admin token never reaches the journal: no init in the unit, and serve refuses an empty folder.
    assert "ExecStartPre" not in o
    assert o["AssertPathExists"] == ["/var/lib/mls-gateway/gateway.sqlite3"]
    # Type=notify only once the gateway tells systemd it is ready.
    sends_ready = any("READY=1" in p.read_text() for p in (REPO / "gateway").rglob("*.py"))
    assert o["Type"] == (["notify"] if sends_ready else ["exec"])
    if sends_ready:
        assert o["NotifyAccess"] == ["main"]


def test_systemd_analyze_scores_the_unit_ok() -> None:
    """``systemd-analyze`` (Debian's ``systemd`` package, installed by the set-up commands) scores the
    unit's sandboxing offline."""
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze is missing: run ./deploy/bootstrap.sh (it installs systemd)"
    verify = subprocess.run(
        [tool, "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for mls-gateway\.service: (\d+\.\d+)", verify.stdout)
    assert m, verify.stdout[-2000:] + verify.stderr
    assert float(m.group(1)) <= 2.0, verify.stdout[-4000:]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` parses every option (a misspelt one is a warning on stderr, exit 0, so
    stderr must be empty); ExecStart is pointed at this checkout's ``mls-gateway``, which it checks for."""
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze is missing: run ./deploy/bootstrap.sh (it installs systemd)"
    shipped = "/opt/mls-gateway/.venv/bin/mls-gateway"
    text = UNIT.read_text()
    assert f"ExecStart={shipped} serve" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(shipped, str(REPO / ".venv" / "bin" / "mls-gateway")))
    verify = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr


def test_documented_compose_commands_name_services_of_their_file() -> None:
    """Every ``docker compose -f deploy/FILE run --rm SERVICE`` in the README and in the compose files'
    own comments names a service FILE has (``init`` and ``migrate`` run in a gateway's container)."""
    text = "\n".join(
        path.read_text()
        for path in (
            REPO / "README.md",
            DEPLOY / "compose.yaml",
            DEPLOY / "compose.single.yaml",
            DEPLOY / "Containerfile",
        )
    )
    commands = re.findall(r"docker compose -f deploy/(\S+) run --rm (\S+) (\w+)", text)
    for file, service, command in commands:
        assert service in compose_file(file)["services"], f"{file} has no service {service}"
        assert command in ("init", "migrate"), command
    assert {(file, command) for file, _, command in commands} >= {
        ("compose.yaml", "init"),
        ("compose.single.yaml", "init"),
    }, commands
    # A bare ``docker compose run`` names no file: it would be the reader's guess which one.
    assert not re.search(r"docker compose run", text)
