"""``mls-gateway`` for operators, through the real command line (a subprocess each): ``--version``,
``hsm check``, ``admin rotate-admin-token``, and every operator mistake answered in one line on stderr
with its own exit code, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.operator_cli import Exit

from .gwclient import GatewayServer

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLSGW_LOG_LEVEL": "WARNING"}
    for var in ("MLSGW_CONFIG", "MLSGW_DATA_DIR", "MLSGW_LISTEN", "MLSGW_DATABASE", "SOFTHSM2_CONF"):
        env.pop(var, None)
    return env


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``mls-gateway ARGS``; a run that hangs fails with what it wrote (``serve`` writes every thread's
    stack 20 s into a shutdown that is still running: what it waits for)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=timeout,
            check=False,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(
            f"mls-gateway {' '.join(args)} hung for {timeout} s; its stderr:\n{err[-12000:]}"
        ) from None


def one_line(done: subprocess.CompletedProcess[str], code: Exit, *words: str) -> None:
    """Failed with ``code``, one line on stderr naming ``words``, no traceback."""
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mls-gateway: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("operator") / "data"
    done = cli("init", "--data-dir", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    return folder


def test_version() -> None:
    from importlib.metadata import version

    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"mls-gateway {version('mls-gateway')}"


def test_hsm_check_reports_custody_per_suite(data_dir: Path) -> None:
    done = cli("hsm", "check", "--data-dir", str(data_dir), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [s["cipher_suite"] for s in report["suites"]] == list(range(1, 8))
    for s in report["suites"]:
        assert s["signature_custody"] in ("pkcs11", "unsupported")
        assert s["hpke_custody"] in ("pkcs11", "software", "unsupported")
        assert s["signature_in_token"] == (s["signature_custody"] == "pkcs11")
    assert report["suites"][0]["signature_in_token"]  # SoftHSM2 holds Ed25519 keys
    text = cli("hsm", "check", "--data-dir", str(data_dir))
    assert text.returncode == 0 and text.stdout.count("\nsuite ") == 7


def test_hsm_check_reports_wrapping_per_suite_and_the_aes_mechanisms(data_dir: Path) -> None:
    """SoftHSM2 2.6 (hsm-facts.md): P-curve keys wrap under the KEK, Ed25519/X25519 keys do not (they stay
    token objects for wrapped-custody tenants); the wrap key's and the KEK's AES mechanisms are listed."""
    report = json.loads(cli("hsm", "check", "--data-dir", str(data_dir), "--json").stdout)
    by_id = {s["cipher_suite"]: s for s in report["suites"]}
    for suite_id in (2, 5, 7):  # P-256, P-521, P-384
        assert by_id[suite_id]["signature_wrappable"] and by_id[suite_id]["hpke_wrappable"], by_id[suite_id]
    assert not by_id[1]["signature_wrappable"] and not by_id[1]["hpke_wrappable"]
    assert "ed25519" in report["wrapped_custody"]["refused"]
    assert report["mechanisms"] == {
        "CKM_AES_KEY_GEN": True,
        "CKM_AES_GCM": True,
        "CKM_AES_KEY_WRAP": True,
        "CKM_AES_KEY_WRAP_PAD": True,
    }
    text = cli("hsm", "check", "--data-dir", str(data_dir)).stdout
    assert "suite 2 MLS_128_DHKEMP256_AES128GCM_SHA256_P256: signature keys in the token, wrappable" in text
    assert "signature keys in the token, not wrappable (token objects)" in text
    assert "CKM_AES_GCM listed" in text and "wrap probe: ed25519" in text


def test_wrong_pin(data_dir: Path, tmp_path: Path) -> None:
    pin = tmp_path / "wrong.pin"
    pin.write_text("not-the-pin\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[hsm]\npin_file = "{pin}"\n')
    one_line(cli("hsm", "check", "--data-dir", str(data_dir), "--config", str(config)), Exit.HSM_PIN, "PIN")
    missing = tmp_path / "d.toml"
    missing.write_text(f'[hsm]\npin_file = "{tmp_path / "nowhere.pin"}"\n')
    one_line(cli("hsm", "check", "--data-dir", str(data_dir), "--config", str(missing)), Exit.HSM_PIN)


def test_missing_token_and_module(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "label.toml"
    config.write_text('[hsm]\ntoken_label = "no-such-token"\n')
    done = cli("hsm", "check", "--data-dir", str(data_dir), "--config", str(config))
    one_line(done, Exit.HSM_TOKEN, "no-such-token")
    module = tmp_path / "module.toml"
    module.write_text(f'[hsm]\nmodule_path = "{tmp_path / "nope.so"}"\npin_file = "{data_dir / "hsm.pin"}"\n')
    done = cli("serve", "--data-dir", str(data_dir), "--config", str(module))
    one_line(done, Exit.HSM_MODULE, "nope.so")


def test_port_in_use(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == Exit.LISTEN, done.stderr
    assert "Traceback" not in done.stderr and "address already in use" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[gateway]\nlisten = [\n", ("cannot read",)),
        ('[gateway]\nlistn = "127.0.0.1:1"\n', ("[gateway]", "listn")),
        ("[hsm]\npool = 4\n", ("[hsm]", "pool")),
        ("[delivery]\npast_epoch = 2\nfoo = 1\n", ("[delivery]", "foo", "past_epoch")),
        ("[gatewey]\n", ("gatewey",)),
        ('[hsm]\npin = "1234"\n', ("pin_env or pin_file",)),
        ('[gateway]\nlisten = "nowhere"\n', ("HOST:PORT",)),
        ('[gateway]\nworker_threads = "many"\n', ("invalid",)),
    ],
)
def test_bad_configuration(data_dir: Path, tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    one_line(cli("serve", "--data-dir", str(data_dir), "--config", str(config)), Exit.CONFIG, *words)


def test_unreadable_configuration(data_dir: Path, tmp_path: Path) -> None:
    done = cli("serve", "--data-dir", str(data_dir), "--config", str(tmp_path / "missing.toml"))
    one_line(done, Exit.CONFIG, "missing.toml")


def test_data_folder_not_initialised(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    for args in (["hsm", "check"], ["admin", "tokens", "tnt_x"], ["admin", "rotate-admin-token"]):
        one_line(cli(*args, "--data-dir", str(empty)), Exit.NOT_INITIALISED, "mls-gateway init")
    assert not empty.exists()  # nothing created


def test_missing_pin_file_makes_no_second_token(tmp_path: Path) -> None:
    """A folder whose token exists but whose ``hsm.pin`` is gone (a restore without the PIN, a slip):
    ``serve`` and ``init`` refuse in one line and the token folder is left exactly as it was."""
    folder = tmp_path / "data"
    assert cli("init", "--data-dir", str(folder), "--json").returncode == 0
    (folder / "hsm.pin").unlink()
    tokens = folder / "softhsm" / "tokens"
    before = sorted(p.name for p in tokens.iterdir())
    for command in ("serve", "init"):
        one_line(cli(command, "--data-dir", str(folder)), Exit.HSM_PIN, "PIN file", "hsm.pin")
    assert sorted(p.name for p in tokens.iterdir()) == before
    assert not (folder / "hsm.pin").exists()


@pytest.fixture
def server(tmp_path: Path, data_dir: Path) -> Iterator[GatewayServer]:
    folder = tmp_path / "gw"
    gw = GatewayServer(folder)
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()
        shutil.rmtree(folder, ignore_errors=True)


def test_rotate_admin_token_is_the_recovery_path(server: GatewayServer) -> None:
    old = server.admin_token
    server.stop()
    done = cli("admin", "rotate-admin-token", "--data-dir", str(server.data_dir), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["revoked"] == 1 and report["admin_token"] != old
    server.start()
    assert server.client(old).get("/v1/tenants").status == 401
    assert server.client(report["admin_token"]).get("/v1/tenants").status == 200
    # The admin-token count stays one: a later rotation revokes the new one in turn.
    again = json.loads(
        cli("admin", "rotate-admin-token", "--data-dir", str(server.data_dir), "--json").stdout
    )
    assert again["revoked"] == 1
    assert server.client(report["admin_token"]).get("/v1/tenants").status == 401
    assert server.client(again["admin_token"]).get("/v1/tenants").status == 200


def test_unknown_tenant_is_one_line(data_dir: Path) -> None:
    done = cli("admin", "tokens", "tnt_000000000000000000000000", "--data-dir", str(data_dir))
    one_line(done, Exit.FAILED, "tenant")
