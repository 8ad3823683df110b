"""The embedded token's SO-PIN is not kept: ``init`` writes none, and an ``hsm.so-pin`` an earlier version
left in the data folder is deleted by ``init`` and by ``serve`` (one warning line each time it finds one)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .gwclient import GATEWAY_EXE, GatewayServer

OLD_FILE = "hsm.so-pin"
LINE = "the HSM SO-PIN is no longer kept"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def _init(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSGW_") and k != "SOFTHSM2_CONF"}
    return subprocess.run(
        [str(GATEWAY_EXE), "init", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        env={**env, "MLSGW_LOG_LEVEL": "WARNING"},
        timeout=120,
        check=True,
    )


def test_init_keeps_no_so_pin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = _init(data)
    assert (data / "hsm.pin").is_file()
    assert not [n for n in _names(data) if any(s in n.lower() for s in ("so-pin", "so_pin", "sopin"))]
    assert LINE not in done.stderr


def test_init_and_serve_delete_an_old_so_pin_file(tmp_path: Path) -> None:
    server = GatewayServer(tmp_path / "data")  # init
    old = server.data_dir / OLD_FILE
    old.write_text("an-so-pin-an-older-init-kept\n")
    again = _init(server.data_dir)
    assert not old.exists()
    assert again.stderr.count(LINE) == 1, again.stderr
    assert _init(server.data_dir).stderr.count(LINE) == 0  # nothing left to say

    old.write_text("an-so-pin-an-older-init-kept\n")
    server.start()
    try:
        assert not old.exists()
        assert server.log_tail().count(LINE) == 1, server.log_tail()
        server.client().get("/healthz").expect(200)  # and the gateway runs on its user PIN alone
    finally:
        server.kill()
