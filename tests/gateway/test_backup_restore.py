"""``mls-gateway backup`` while a real gateway serves traffic, ``restore`` into a new folder, and a gateway
on the restored folder that reads and writes the old groups (README, "Backup and restore"); every mistake
one line on stderr, a non-zero exit code, nothing changed."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.operator_cli import Exit

from .gwclient import Client, GatewayServer, Hosted, unb64
from .test_operator_cli import REPO, _env, cli, one_line

pytestmark = pytest.mark.timeout(600)


def key_inventory(command: str, data_dir: Path) -> dict[str, Any]:
    """``tests/gateway/key_inventory.py`` on a stopped data folder (a subprocess: its own SoftHSM config)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.gateway.key_inventory", command, str(data_dir)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


class RestoredServer(GatewayServer):
    """A gateway on a restored data folder: no ``init`` (the admin token is the backed-up one)."""

    def __init__(self, data_dir: Path, admin_token: str) -> None:
        self._restored_token = admin_token
        super().__init__(data_dir)

    def _init(self) -> str:
        return self._restored_token


def on(client: Client, member: Hosted) -> Hosted:
    return Hosted(client, member.identity_id, member.name)


def plaintext(processed: dict[str, object]) -> bytes:
    data = processed["data"]
    assert isinstance(data, str)
    return unb64(data)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Traffic:
    """Writes of every kind while the backup runs, on a thread: new keys in the token (KeyPackages) and
    group state (application messages sent and processed)."""

    def __init__(self, alice: Hosted, bob: Hosted, gid: str) -> None:
        self.alice, self.bob, self.gid = alice, bob, gid
        self.stop_event = threading.Event()
        self.first_round = threading.Event()
        self.failures: list[str] = []
        self.rounds = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.bob.key_package()
                message = f"during backup {self.rounds}".encode()
                assert plaintext(self.bob.process(self.gid, self.alice.send(self.gid, message))) == message
            except AssertionError as e:  # reported by the test, not swallowed
                self.failures.append(str(e))
                return
            self.rounds += 1
            self.first_round.set()

    def running(self) -> None:
        """Wait until one round went through (a deadlock guard only, not a timing assertion)."""
        assert self.first_round.wait(timeout=120) or self.failures, "no traffic round within 120 s"

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()


def test_backup_of_a_running_gateway_restores_into_a_gateway_that_reads_the_old_groups(
    tmp_path: Path,
) -> None:
    original = GatewayServer(tmp_path / "gw")
    original.start()
    try:
        _, token = original.admin.create_tenant("backup")
        api = original.client(token)
        alice, bob, carol = (Hosted.create(api, n) for n in ("alice", "bob", "carol"))
        gid = alice.create_group()
        welcome = alice.commit(gid, {"add": [bob.key_package(), carol.key_package()]})["welcome"]
        bob.join(welcome)
        carol.join(welcome)
        for i in range(3):
            sent = alice.send(gid, f"before {i}".encode())
            assert plaintext(bob.process(gid, sent)) == f"before {i}".encode()
            assert plaintext(carol.process(gid, sent)) == f"before {i}".encode()

        traffic = Traffic(alice, bob, gid)
        traffic.running()
        done = cli("backup", str(tmp_path / "backup"), "--data-dir", str(original.data_dir), "--json")
        traffic.stop()
        assert done.returncode == Exit.OK, done.stderr
        assert not traffic.failures, traffic.failures
        report = json.loads(done.stdout)
        assert report["token"] == "embedded" and report["contains_pin"] is True
        epoch_at_backup = alice.state(gid)[0]

        # The original moves on after the backup: the restored gateway will not know this epoch.
        alice.commit(gid, {})
        assert alice.state(gid)[0] == epoch_at_backup + 1
        assert original.stop() == 0
    finally:
        original.kill()

    restored_dir = tmp_path / "restored"
    done = cli("restore", str(tmp_path / "backup"), "--data-dir", str(restored_dir))
    assert done.returncode == Exit.OK, done.stderr
    assert "rolled back" in done.stdout and "never run this gateway beside the original" in done.stdout

    # Every key the restored database references is in the restored token (or at rest in the database).
    inventory = key_inventory("missing", restored_dir)
    assert inventory["missing"] == [] and inventory["referenced"] >= 9, inventory

    restored = RestoredServer(restored_dir, original.admin_token)
    restored.start()
    try:
        api = restored.client(token)
        alice, bob, carol = (on(api, m) for m in (alice, bob, carol))
        assert alice.state(gid)[0] == epoch_at_backup  # rolled back (README: never beside the original)
        sent = alice.send(gid, b"after restore")
        assert plaintext(bob.process(gid, sent)) == b"after restore"
        assert plaintext(carol.process(gid, sent)) == b"after restore"
        reply = bob.send(gid, b"bob after restore")
        assert plaintext(alice.process(gid, reply)) == b"bob after restore"
        # The epoch moves on in the restored gateway too, and the admin token of the backup works.
        alice.commit(gid, {})
        assert plaintext(carol.process(gid, alice.send(gid, b"next epoch"))) == b"next epoch"
        restored.admin.get("/v1/tenants").expect(200)
    finally:
        restored.kill()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("backup-errors") / "data"
    done = cli("init", "--data-dir", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture(scope="module")
def good_backup(data_dir: Path) -> Path:
    folder = data_dir.parent / "good-backup"
    done = cli("backup", str(folder), "--data-dir", str(data_dir))
    assert done.returncode == Exit.OK, done.stderr
    return folder


def test_backup_refuses_a_non_empty_destination_and_an_uninitialised_folder(
    data_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    one_line(
        cli("backup", str(dest), "--data-dir", str(data_dir)), Exit.FAILED, str(dest), "not an empty folder"
    )
    assert snapshot(dest) == {"keep.txt": b"mine"}
    one_line(cli("backup", str(tmp_path / "b2"), "--data-dir", str(tmp_path / "never")), Exit.NOT_INITIALISED)
    assert not (tmp_path / "b2").exists() and not (tmp_path / "never").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]  # no staging folder left behind


def test_backup_into_an_empty_folder(data_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    done = cli("backup", str(dest), "--data-dir", str(data_dir), "--json")
    assert done.returncode == Exit.OK, done.stderr
    manifest = json.loads((dest / "backup.json").read_text())
    assert {"gateway.sqlite3", "hsm.pin"} <= set(manifest["files"])
    assert any(name.startswith("softhsm/tokens/") for name in manifest["files"])
    assert stat.S_IMODE((dest / "gateway.sqlite3").stat().st_mode) == 0o600  # sealed state, the audit chain


def test_restore_refuses_a_non_empty_folder(good_backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "gateway.sqlite3").write_bytes(b"someone else's")
    one_line(cli("restore", str(good_backup), "--data-dir", str(target)), Exit.FAILED, "not an empty folder")
    assert snapshot(target) == {"gateway.sqlite3": b"someone else's"}


def test_restore_refuses_what_is_not_a_backup(data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    one_line(cli("restore", str(data_dir), "--data-dir", str(target)), Exit.FAILED, "not a gateway backup")
    assert not target.exists()


@pytest.mark.parametrize("damage", ["token", "database", "missing"])
def test_restore_refuses_a_damaged_backup_and_creates_nothing(
    good_backup: Path, tmp_path: Path, damage: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(good_backup, broken)
    if damage == "missing":
        (broken / "hsm.pin").unlink()
    else:
        victim = broken / "gateway.sqlite3" if damage == "database" else next(broken.rglob("*.object"))
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    target = tmp_path / "target"
    one_line(cli("restore", str(broken), "--data-dir", str(target)), Exit.FAILED, "damaged")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_restore_needs_a_data_folder(good_backup: Path) -> None:
    done = cli("restore", str(good_backup))
    assert done.returncode == Exit.USAGE and "--data-dir" in done.stderr
