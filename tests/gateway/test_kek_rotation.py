"""KEK rotation online through the real server and the real command (SoftHSM, SQLite, ``mls-gateway``).

* Under load: clients send and process messages and create KeyPackages (wrapped keys) through a running
  ``mls-gateway serve`` while ``mls-gateway keys rotate-kek`` runs beside it. No request fails; at the end
  every sealed row and every wrapped blob names the new KEKs, the old KEKs are gone from the token
  (objects counted by label), and after a restart the groups still work.
* A crash: ``rotate-kek --no-wait`` leaves the re-wrap to the server, which is killed -9 mid-way; the
  restarted server resumes, finishes and destroys the old KEKs.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config
from hsm.kek_ring import kek_id

from .gwclient import GATEWAY_EXE, REPO, Client, GatewayServer, Hosted, unb64
from .test_reconciliation import wait_for
from .token_objects import token_object_ids

P256 = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256: wrapped custody on SoftHSM
X25519 = 1  # token custody (not wrappable on SoftHSM)
OLD = ("mlsgw/wrap/v1", "mlsgw/kek/v1")
NEW = ("mlsgw/wrap/v2", "mlsgw/kek/v2")
#: The envelope's wrap-key ids: a blob of any column naming one of them is an envelope blob. The columns
#: are found by scanning every column of every table (not from gateway.sqlite_rewrap.SEALED_COLUMNS), so
#: a sealed column the rotation does not know keeps naming the old KEK and fails the checks below.
WRAP_IDS = {kek_id(OLD[0]), kek_id(NEW[0])}


def _server(folder: Path, **hsm: float) -> GatewayServer:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "gateway.toml"
    config.write_text("[hsm]\n" + "".join(f"{k} = {v}\n" for k, v in hsm.items()))
    server = GatewayServer(folder / "gw", env={"MLSGW_CONFIG": str(config)})
    server.start()
    return server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[GatewayServer]]:
    made: list[GatewayServer] = []
    yield made
    for server in made:
        server.kill()


def _keys(server: GatewayServer, command: str, *flags: str, code: int = 0) -> dict[str, Any]:
    argv = [str(GATEWAY_EXE), "keys", command, "--data-dir", str(server.data_dir), "--json", *flags]
    out = subprocess.run(
        argv, capture_output=True, text=True, env=server.env, cwd=REPO, timeout=600, check=False
    )
    assert out.returncode == code, f"keys {command} exited {out.returncode}: {out.stderr[-3000:]}"
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _rotate(server: GatewayServer, *flags: str, code: int = 0) -> dict[str, Any]:
    return _keys(server, "rotate-kek", *flags, code=code)


def _db(server: GatewayServer) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "gateway.sqlite3", timeout=30)


def _columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [(t, c[1]) for t in tables for c in conn.execute(f"PRAGMA table_info({t})")]


def _kek_ids(server: GatewayServer) -> dict[str, dict[bytes, int]]:
    """What the rows name: envelope blobs by (version, KEK id), wrapped blobs by KEK id (column and blob)."""
    sealed: dict[bytes, int] = {}
    wrapped: dict[bytes, int] = {}
    with _db(server) as conn:
        for table, column in _columns(conn):
            for (blob,) in conn.execute(
                f"SELECT {column} FROM {table} WHERE typeof({column}) = 'blob' AND length({column}) > 9"
            ):
                if bytes(blob[1:9]) in WRAP_IDS:
                    key = bytes(blob[:9])
                    sealed[key] = sealed.get(key, 0) + 1
        for kid, blob in conn.execute("SELECT kek_id, blob FROM wrapped_keys"):
            assert bytes(blob[0:1]) == b"\x02" and bytes(blob[2:10]) == bytes(kid)
            wrapped[bytes(kid)] = wrapped.get(bytes(kid), 0) + 1
    return {"sealed": sealed, "wrapped": wrapped}


def _all_under(server: GatewayServer, wrap: str, kek: str) -> bool:
    ids = _kek_ids(server)
    return set(ids["sealed"]) == {b"\x03" + kek_id(wrap)} and set(ids["wrapped"]) == {kek_id(kek)}


def _states(server: GatewayServer) -> dict[str, str]:
    with _db(server) as conn:
        return dict(conn.execute("SELECT label, state FROM keks").fetchall())


def _token_labels(server: GatewayServer) -> dict[str, int]:
    ids = token_object_ids(server.data_dir)
    return {label: ids[label.encode()] for label in OLD + NEW}


def _pair(api: Client, name: str, suite: int) -> tuple[Hosted, Hosted, str]:
    alice, bob = (
        Hosted.create(api, f"{name}-a", cipher_suite=suite),
        Hosted.create(api, f"{name}-b", cipher_suite=suite),
    )
    gid = alice.create_group()
    bob.join(alice.commit(gid, {"add": [bob.key_package()]})["welcome"])
    return alice, bob, gid


def _view_kek(api: Client, who: Hosted) -> str | None:
    custody = api.get(f"/v1/identities/{who.identity_id}").expect(200)["custody"]
    return custody.get("kek")


def _talk(alice: Hosted, bob: Hosted, gid: str, text: bytes) -> None:
    assert unb64(bob.process(gid, alice.send(gid, text))["data"]) == text


class Load:
    """Client threads until stopped: message pairs, commits and KeyPackages; every failure is kept."""

    def __init__(self, api: Client, pairs: list[tuple[Hosted, Hosted, str]], kp_owner: Hosted) -> None:
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.done = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._messages, args=(p, i)) for i, p in enumerate(pairs)]
        self.threads.append(threading.Thread(target=self._key_packages, args=(api, kp_owner)))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _run(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # every failure is what the test reports
            with self._lock:
                self.failures.append(f"{what}: {type(e).__name__}: {e}")
        else:
            with self._lock:
                self.done += 1

    def _messages(self, pair: tuple[Hosted, Hosted, str], n: int) -> None:
        alice, bob, gid = pair
        i = 0
        while not self.stop.is_set():
            i += 1
            self._run(f"message {n}.{i}", functools.partial(_talk, alice, bob, gid, b"m%d" % i))
            if i % 7 == 0:  # a commit: new epoch state, a new wrapped leaf key
                self._run(f"commit {n}.{i}", lambda: alice.process(gid, bob.commit(gid)["commit"]))

    def _key_packages(self, api: Client, owner: Hosted) -> None:
        while not self.stop.is_set():
            self._run("key packages", lambda: api.key_packages(owner.identity_id, 3))


def test_kek_rotation_under_load_loses_nothing(servers: list[GatewayServer], tmp_path: Path) -> None:
    server = _server(tmp_path / "load", kek_poll_s=0.3, kek_retire_grace_s=2, kek_rewrap_batch=16)
    servers.append(server)
    api = server.client(server.admin.post("/v1/tenants", {"name": "acme"}).expect(201)["token"])
    pairs = [_pair(api, f"p{i}", P256) for i in range(2)] + [_pair(api, "x", X25519)]
    owner = Hosted.create(api, "kp", cipher_suite=P256)
    api.key_packages(owner.identity_id, 40)
    for alice, bob, gid in pairs:
        _talk(alice, bob, gid, b"before")
    quiet = _pair(api, "quiet", P256)  # left alone from here: its ratchet-state rows move only by re-wrap
    _talk(*quiet, b"before")
    with _db(server) as conn:
        assert conn.execute("SELECT COUNT(*) FROM group_ratchets").fetchone()[0] >= 2
    assert _all_under(server, *OLD)
    assert _view_kek(api, owner) == OLD[1] and _view_kek(api, pairs[-1][0]) is None  # X25519: in the token
    before = _kek_ids(server)
    assert sum(before["wrapped"].values()) > 80

    with Load(api, pairs, owner) as load:
        time.sleep(1.0)
        report = _rotate(server)
        time.sleep(1.0)
    assert load.failures == [], load.failures[:5]
    assert load.done > 20
    assert report["created"] == list(NEW)
    assert set(report["destroyed"]) <= set(OLD)  # the server's background pass may destroy one first
    assert report["remaining"] == {"envelope": 0, "custody": 0} and report["failed"] == {
        "envelope": 0,
        "custody": 0,
    }
    assert sum(report["rewrapped"].values()) >= sum(before["sealed"].values()) // 2

    # What the load wrote meanwhile is under the new KEKs too; the server says so in its metrics.
    wait_for(lambda: _all_under(server, *NEW), 30, "every row under the new KEKs")
    assert _states(server) == {OLD[0]: "destroyed", OLD[1]: "destroyed", NEW[0]: "current", NEW[1]: "current"}
    wait_for(lambda: server.admin.metric("mlsgw_kek_versions", state="destroyed") == 2, 30, "the metric")
    assert _view_kek(api, owner) == NEW[1]
    assert api.create_identity("new", cipher_suite=P256)["custody"]["kek"] == NEW[1]
    assert server.admin.metric("mlsgw_kek_rewrap_remaining") == 0
    with _db(server) as conn:
        audited = {r[0] for r in conn.execute("SELECT operation FROM audit WHERE request_id LIKE 'kek-%'")}
    assert {"kek_create", "kek_destroy", "rewrap", "wrap", "unwrap"} <= audited

    assert server.stop() == 0
    assert _token_labels(server) == {OLD[0]: 0, OLD[1]: 0, NEW[0]: 1, NEW[1]: 1}
    server.start()
    for alice, bob, gid in [*pairs, quiet]:  # every state opens under the new KEKs alone, keys unwrap
        _talk(alice, bob, gid, b"after restart")
        alice.process(gid, bob.commit(gid)["commit"])
        _talk(bob, alice, gid, b"and back")
    assert len(api.key_packages(owner.identity_id, 2)) == 2
    with _db(server) as conn:  # the restarted server unwrapped keys on cache misses: audited, KEK named
        unwraps = conn.execute(
            "SELECT COUNT(*) FROM audit WHERE operation = 'unwrap' AND custody = ? "
            "AND request_id NOT LIKE 'kek-%'",
            (f"wrapped:{NEW[1]}",),
        ).fetchone()[0]
    assert unwraps >= 4


def test_a_crash_mid_rewrap_resumes_after_restart(servers: list[GatewayServer], tmp_path: Path) -> None:
    server = _server(
        tmp_path / "crash", kek_poll_s=0.3, kek_retire_grace_s=1, kek_rewrap_batch=4, data_key_max_seals=2
    )
    servers.append(server)
    api = server.client(server.admin.post("/v1/tenants", {"name": "acme"}).expect(201)["token"])
    pairs = [_pair(api, f"p{i}", P256) for i in range(2)]
    owner = Hosted.create(api, "kp", cipher_suite=P256)
    api.key_packages(owner.identity_id, 40)
    total = sum(_kek_ids(server)["wrapped"].values())
    # [hsm] data_key_max_seals = 2 reaches the envelope: no data key sealed more than two of the blobs
    with _db(server) as conn:
        states = [bytes(r[0]) for r in conn.execute("SELECT state FROM groups")]
    assert len({b[9:25] for b in states}) * 2 >= len(states) >= 4

    report = _rotate(server, "--no-wait")
    assert report["created"] == list(NEW) and report["destroyed"] == []

    def moved() -> int:
        return _kek_ids(server)["wrapped"].get(kek_id(NEW[1]), 0)

    wait_for(lambda: moved() >= 8, 60, "the server's re-wrap to start")
    server.kill()  # kill -9 mid-way
    assert 0 < moved() < total
    assert _states(server)[OLD[1]] == "retiring"

    config = Path(server.env["MLSGW_CONFIG"])  # the restarted server resumes in larger batches
    config.write_text(config.read_text().replace("kek_rewrap_batch = 4", "kek_rewrap_batch = 64"))
    server.start()
    wait_for(
        lambda: _states(server)[OLD[1]] == "destroyed" and _states(server)[OLD[0]] == "destroyed",
        300,
        "resume",
    )
    assert _all_under(server, *NEW)
    for alice, bob, gid in pairs:
        _talk(alice, bob, gid, b"after the crash")
    assert server.stop() == 0
    assert _token_labels(server) == {OLD[0]: 0, OLD[1]: 0, NEW[0]: 1, NEW[1]: 1}


def test_rotation_and_data_key_settings_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[hsm]\ndata_key_max_seals = 100\ndata_key_max_age_s = 30\nwrapped_handle_cache = 8\n"
        "kek_poll_s = 0.5\nkek_retire_grace_s = 10\nkek_rewrap_batch = 32\n"
    )
    hsm = load_config(path, env={}).hsm
    assert (hsm.data_key_max_seals, hsm.data_key_max_age_s, hsm.wrapped_handle_cache) == (100, 30, 8)
    assert (hsm.kek_poll_s, hsm.kek_retire_grace_s, hsm.kek_rewrap_batch) == (0.5, 10, 32)
    defaults = load_config(None, env={}).hsm
    assert (defaults.wrapped_handle_cache, defaults.kek_poll_s, defaults.kek_retire_grace_s) == (
        1024,
        5.0,
        60.0,
    )
    for bad in (
        "data_key_max_seals = 0",
        "data_key_max_seals = 4294967297",
        "data_key_max_age_s = 0",
        "wrapped_handle_cache = 0",
        "kek_poll_s = 0",
        "kek_retire_grace_s = -1",
        "kek_poll_s = 5\nkek_retire_grace_s = 10",  # under three polls: a process may not have switched
        "kek_rewrap_batch = 0",
    ):
        path.write_text(f"[hsm]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(path, env={})


def test_a_blob_that_does_not_open_keeps_its_kek(servers: list[GatewayServer], tmp_path: Path) -> None:
    """The command on a stopped gateway's folder: a tampered state is reported, and its KEK is kept until
    the row opens again (here: restored), then ``--resume`` finishes."""
    server = _server(tmp_path / "tamper", kek_retire_grace_s=0)
    servers.append(server)
    api = server.client(server.admin.post("/v1/tenants", {"name": "acme"}).expect(201)["token"])
    alice, bob, gid = _pair(api, "p", P256)
    assert server.stop() == 0
    with _db(server) as conn:
        rowid, state = conn.execute("SELECT rowid, state FROM groups LIMIT 1").fetchone()
        tampered = bytearray(state)
        tampered[60] ^= 1  # inside the wrapped data key
        conn.execute("UPDATE groups SET state = ? WHERE rowid = ?", (bytes(tampered), rowid))

    report = _rotate(server, code=1)
    assert report["failed"] == {"envelope": 1, "custody": 0}
    assert report["remaining"] == {"envelope": 1, "custody": 0} and report["destroyed"] == [OLD[1]]
    keks = {k["label"]: (k["state"], k["blobs"]) for k in _keys(server, "keks")["keks"]}
    assert (
        keks[OLD[0]] == ("retiring", 1) and keks[OLD[1]] == ("destroyed", 0) and keks[NEW[0]][0] == "current"
    )

    with _db(server) as conn:
        conn.execute("UPDATE groups SET state = ? WHERE rowid = ?", (bytes(state), rowid))
    report = _rotate(server, "--resume")
    assert (
        report["created"] == [] and report["destroyed"] == [OLD[0]] and report["rewrapped"]["envelope"] == 1
    )
    assert _all_under(server, *NEW)
    assert _token_labels(server) == {OLD[0]: 0, OLD[1]: 0, NEW[0]: 1, NEW[1]: 1}
    server.start()
    _talk(alice, bob, gid, b"restored")
