"""Static checks of the container and systemd packaging (no container runtime or PID-1 systemd here):
deploy/Containerfile, the build-context ignore files, deploy/compose.yaml and deploy/mls-gateway.service.
``systemd-analyze security --offline`` scores the unit when systemd-analyze is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

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


def test_compose_mounts_rules_provisions_grafana_and_pins_images() -> None:
    compose = (DEPLOY / "compose.yaml").read_text()
    images = re.findall(r"^\s+image:\s*(\S+)$", compose, re.M)
    external = [i for i in images if not i.startswith("mls-gateway:")]
    assert len(external) == 3, images
    for image in external:
        tag = image.partition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag) or "@sha256:" in image, f"{image} is not pinned"
    # rule_files: ["alerts.yml"] is relative to prometheus.yml: the folder is mounted, not just the file.
    assert '"./prometheus:/etc/prometheus:ro"' in compose
    assert 'rule_files: ["alerts.yml"]' in (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert '"./grafana/provisioning:/etc/grafana/provisioning:ro"' in compose
    assert '"./grafana/dashboards:/var/lib/grafana/dashboards:ro"' in compose
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "mls-gateway.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "url: http://prometheus:9090" in datasource and "type: prometheus" in datasource
    alertmanager = compose.split("  alertmanager:\n", 1)[1]
    assert re.search(r"^\s+profiles: \[alerting\]$", alertmanager, re.M)
    assert (DEPLOY / "alertmanager" / "alertmanager.yml").exists()


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
