"""Several gateway processes on one machine (issue 15): ``mls-gateway serve --workers N`` and a second
``serve`` on the same SQLite data folder (docs/architecture.md "Several processes").

Real ``mls-gateway serve`` processes, SoftHSM and SQLite, driven over HTTP:

* ``--workers 2`` answers from both workers (the access log's ``pid`` field names two processes), gives
  connections to them in turn (eight opened at once: four each), and
  ``/metrics``, whichever worker answers it, counts the requests of both: the total equals the requests
  made, at every scrape.
* Concurrent sends of one member spread over two processes: every send answered 200, the receiver
  processes every message to its plaintext (a reused generation would be refused as already used, a
  lost one missing), through the workers and through two unrelated ``serve`` processes on one folder.
* A credential policy set through one process refuses in the other, without a restart; a token key made
  by the other process is found here after this process wrote the token too (SoftHSM hid it: 422).
* The audit chain both processes appended to verifies (``mls-gateway audit verify``).
* kill -9 of one worker: the supervisor starts another, the gateway serves on, counters do not go back;
  SIGTERM: the supervisor and its workers exit, with 0; SIGTERM in the middle of a burst of sends: each
  is answered 200 or never reached a worker, and every answered one is kept; kill -9 of the supervisor:
  its workers stop too (nobody listens any more), and the next supervisor removes its metrics folder.
* Under systemd: ``READY=1`` once both workers listen (the workers' own go to the supervisor), then
  ``STOPPING=1`` at SIGTERM, nothing else; a worker that cannot start (wrong PIN) stops the supervisor
  with its exit code.
* ``workers`` is a setting (``[gateway] workers``, ``MLSGW_WORKERS``), at least 1.
"""

from __future__ import annotations

import copy
import http.client
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from gateway.config import ConfigError, load_config
from gateway.parsing import group_id_from_path
from gateway.sqlite_append_locks import AppendLocks
from gateway.supervisor import Supervisor

from .gwclient import GATEWAY_EXE, Client, GatewayServer, Hosted, b64, free_port, unb64
from .test_credential_policy import make_pki

#: Deadlock guard of one wait (seconds); nothing asserts on elapsed time.
GUARD = 60.0
WORKERS_ENV = {"MLSGW_LOG_LEVEL": "INFO"}  # the access log names the answering worker's pid


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux's /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _serve_healthz(client: Client, n: int) -> bool:
    """``n`` requests of ``/healthz``, each on a new connection, each answered 200."""
    return all(client.get("/healthz").status == 200 for _ in range(n))


def _answering_pids(server: GatewayServer, route: str) -> list[int]:
    """The pid of every access-log line of ``route`` so far."""
    pattern = re.compile(rf"mls_gateway\.access GET {re.escape(route)} 200 .* pid=(\d+)")
    return [int(m.group(1)) for m in pattern.finditer(server.log_tail(10**8))]


def _start_workers(folder: Path, env: dict[str, str] | None = None) -> GatewayServer:
    """``serve --workers 2`` on ``folder``, once both workers listen (the supervisor's line says so; the
    first worker answers ``/healthz`` before the second is started); ``env``: more settings."""
    server = GatewayServer(folder, env={**WORKERS_ENV, **(env or {})}, args=["--workers", "2"])
    server.start()
    try:
        _wait_for(lambda: "(2 workers)" in server.log_tail(10**8), "both workers listening")
    except AssertionError:
        server.kill()
        raise
    return server


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """One ``serve --workers 2`` for the module's read-mostly tests."""
    server = _start_workers(tmp_path_factory.mktemp("workers") / "gw")
    try:
        yield server
    finally:
        server.stop()


def test_both_workers_answer_and_metrics_count_both(workers: GatewayServer) -> None:
    supervisor = workers.proc
    assert supervisor is not None
    pids = _children(supervisor.pid)
    assert len(pids) == 2
    client = workers.client()
    made = 0
    # The supervisor hands the connections out in turn (other tests' connections move the turn): ask
    # until both answered (each request a new connection), within a generous bound.
    while len(set(_answering_pids(workers, "/healthz"))) < 2:
        assert made < 5000, f"only {set(_answering_pids(workers, '/healthz'))} of {pids} answered"
        for _ in range(20):
            assert client.get("/healthz").status == 200
        made += 20
        time.sleep(0.05)  # the access lines are written after the answers
    assert set(_answering_pids(workers, "/healthz")) == pids  # answered by the two workers, no other
    # Every access line, with the start-up's readiness polls: what the workers counted.
    _wait_for(lambda: len(_answering_pids(workers, "/healthz")) >= made, "every access line")
    answered = len(_answering_pids(workers, "/healthz"))
    for _ in range(6):  # every scrape, whichever worker answers it, counts every worker's requests
        assert client.metric("mlsgw_http_requests_total", route="/healthz", status="200") == answered
    assert client.metric("mlsgw_ready") == 1.0  # the lowest of the live workers'
    scrapers = set(_answering_pids(workers, "/metrics"))
    assert scrapers <= pids


def _pair(server: GatewayServer, name: str) -> tuple[Client, Hosted, Hosted, str]:
    api = server.client(server.admin.create_tenant(name)[1])
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    bob.join(alice.commit(gid, {"add": [bob.key_package()]})["welcome"])
    return api, alice, bob, gid


def _concurrent_sends(apis: list[Client], alice: Hosted, bob: Hosted, gid: str, n: int) -> None:
    """``n`` concurrent sends of ``alice``, spread round-robin over ``apis``: every one answered 200, and
    ``bob`` processes every message to its plaintext (no generation reused, none lost)."""
    path = alice.path(gid, "/messages")
    sent: dict[int, str] = {}
    lock = threading.Lock()

    def send(i: int) -> None:
        response = apis[i % len(apis)].post(path, {"data": b64(b"message %d" % i)}).expect(200)
        with lock:
            sent[i] = response.body["message"]

    with ThreadPoolExecutor(10) as pool:
        for future in [pool.submit(send, i) for i in range(n)]:
            future.result(timeout=GUARD)
    assert len(sent) == n
    for i, message in sorted(sent.items()):
        got = bob.api.post(bob.path(gid, "/process"), {"message": message})
        assert got.status == 200, (i, got.body)
        assert unb64(got.body["data"]) == b"message %d" % i


def test_concurrent_sends_of_one_member_over_the_workers(workers: GatewayServer) -> None:
    """The sends of one member, spread by the kernel over both workers, are serialised across them by the
    group's append lock (gateway.sqlite_append_locks): none loses a race to another and runs again
    (before it, a worker starved of CPU could lose every retry: a 409 after LOG_RETRIES, beside a hog)."""
    api, alice, bob, gid = _pair(workers, "workers-sends")
    client = workers.client()
    lost = client.metric("mlsgw_log_lost_races_total", operation="send")
    _concurrent_sends([api], alice, bob, gid, 20)
    assert client.metric("mlsgw_log_lost_races_total", operation="send") == lost
    assert unb64(bob.process(gid, alice.send(gid, b"after"))["data"]) == b"after"


def test_a_send_waits_for_the_append_lock_another_process_holds(workers: GatewayServer) -> None:
    """While another process (this test) holds the group's append lock, a send of a member of that group
    does not run, whichever worker takes it; it is answered once the lock is let go, and bob reads it."""
    tenant_id, token = workers.admin.create_tenant("workers-lock")
    api = workers.client(token)
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    bob.join(alice.commit(gid, {"add": [bob.key_package()]})["welcome"])
    locks = AppendLocks(workers.data_dir / "gateway.sqlite3", GUARD)
    with ThreadPoolExecutor(1) as pool:
        with locks.hold(tenant_id, group_id_from_path(gid)):
            pending = pool.submit(lambda: api.post(alice.path(gid, "/messages"), {"data": b64(b"held")}))
            time.sleep(1.0)  # ample for a send; the assertion cannot fail by the machine being slow
            assert not pending.done()
        sent = pending.result(timeout=GUARD).expect(200).body["message"]
    assert unb64(bob.process(gid, sent)["data"]) == b"held"


def test_a_second_serve_on_the_same_sqlite_folder_keeps_the_guarantees(gateway: GatewayServer) -> None:
    """The issue's measurement (two processes, one data folder, 20 concurrent sends of one member): every
    send is answered and the receiver reads them all, each once (docs/architecture.md, the SQLite rule)."""
    api, alice, bob, gid = _pair(gateway, "two-processes")
    other = _second_process(gateway)
    try:
        elsewhere = other.client(api.token)
        _concurrent_sends([api, elsewhere], alice, bob, gid, 20)
        _concurrent_sends([elsewhere, api], alice, bob, gid, 20)
    finally:
        assert other.stop() == 0
    assert unb64(bob.process(gid, alice.send(gid, b"after"))["data"]) == b"after"
    # Both processes appended to one audit chain: it verifies (each link read in its writing transaction).
    verify = subprocess.run(
        [str(GATEWAY_EXE), "audit", "verify", "--data-dir", str(gateway.data_dir)],
        capture_output=True,
        text=True,
        env=gateway.env,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_connections_go_round_robin_over_the_workers(workers: GatewayServer) -> None:
    """Eight keep-alive connections opened at once: the supervisor hands them out in turn, four to each
    worker (a shared listening socket let one worker accept most of such a burst)."""
    connections = [http.client.HTTPConnection("127.0.0.1", workers.port, timeout=GUARD) for _ in range(8)]
    try:
        for conn in connections:
            conn.connect()
        served_by = []
        for conn in connections:
            before = len(_answering_pids(workers, "/healthz"))
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() is not None
            _wait_for(lambda n=before: len(_answering_pids(workers, "/healthz")) > n, "the access line")
            served_by.append(_answering_pids(workers, "/healthz")[-1])
    finally:
        for conn in connections:
            conn.close()
    assert sorted(Counter(served_by).values()) == [4, 4], served_by


def test_a_killed_worker_is_replaced_and_sigterm_stops_all(tmp_path: Path) -> None:
    server = _start_workers(tmp_path / "gw")
    try:
        assert server.proc is not None
        supervisor = server.proc.pid
        before = _children(supervisor)
        api, alice, bob, gid = _pair(server, "workers-crash")
        client = server.client()
        for _ in range(10):
            assert client.get("/healthz").status == 200
        counted = client.metric("mlsgw_http_requests_total", route="/healthz", status="200")
        assert counted >= 10
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: len(_children(supervisor) - before) == 1, "a new worker")
        after = _children(supervisor)
        assert victim not in after and len(after) == 2
        _wait_for(lambda: "worker_exit" in server.log_tail(10**8), "the exit logged")
        assert re.search(
            rf"worker \d \(pid {victim}\) exited \(signal 9\); restarting", server.log_tail(10**8)
        )
        replacement = (after - before).pop()
        _wait_for(
            lambda: _serve_healthz(client, 10) and replacement in _answering_pids(server, "/healthz"),
            "the new worker serving",
        )
        # The killed worker's counts stay in the totals: a counter never goes back between scrapes.
        assert client.metric("mlsgw_http_requests_total", route="/healthz", status="200") >= counted + 1
        _concurrent_sends([api], alice, bob, gid, 10)
        assert server.stop() == 0  # SIGTERM to the supervisor: it stops its workers and exits 0
        _wait_for(lambda: not any(_alive(pid) for pid in after), "the workers gone")
        assert "Traceback" not in server.log_tail(10**8)
    finally:
        server.kill()


def test_workers_is_a_setting_of_at_least_one(tmp_path: Path) -> None:
    assert load_config(env={}).workers == 1
    assert load_config(env={"MLSGW_WORKERS": "3"}).workers == 3
    toml = tmp_path / "gw.toml"
    toml.write_text("[gateway]\nworkers = 2\n")
    assert load_config(toml, env={}).workers == 2
    assert load_config(toml, env={}, workers=4).workers == 4  # --workers wins
    for bad in ("0", "-1", "257"):
        with pytest.raises(ConfigError, match=r"workers must be in 1\.\.256"):
            load_config(env={"MLSGW_WORKERS": bad})
    with pytest.raises(ConfigError):
        load_config(env={"MLSGW_WORKERS": "two"})


def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_exit_code(tmp_path: Path) -> None:
    """A wrong PIN fails every worker alike: the supervisor says so and exits with the worker's code (7,
    wrong PIN) instead of restarting it for ever."""
    server = GatewayServer(tmp_path / "gw")  # initialised, not started
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin\n")
    wrong.chmod(0o600)
    env = {**server.env, "MLSGW_HSM_PIN_FILE": str(wrong)}
    listen = f"127.0.0.1:{free_port()}"
    run = subprocess.run(
        [str(GATEWAY_EXE), "serve", "--data-dir", str(server.data_dir), "--listen", listen, "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 7, run.stderr
    assert "failed to start (exit code 7)" in run.stderr


def test_systemd_hears_ready_once_all_workers_listen_and_stopping_at_sigterm(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mlsgw-notify-", dir="/tmp"))  # socket paths: <= 107 bytes
    path = str(folder / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(GUARD)
        server = GatewayServer(
            tmp_path / "gw", env={**WORKERS_ENV, "NOTIFY_SOCKET": path}, args=["--workers", "2"]
        )
        try:
            server.start()
            ready = _received(sock)  # the workers' own READY=1 went to the supervisor, not here
            assert ready["READY"] == "1" and "2 workers listening" in ready["STATUS"], ready
            assert server.proc is not None and len(_children(server.proc.pid)) == 2
            assert _answering_pids(server, "/healthz")  # a worker answered before; both listen now
            assert server.stop() == 0
            assert _received(sock)["STOPPING"] == "1"
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):  # exactly two messages
                sock.recv(4096)
        finally:
            server.kill()
            os.unlink(path)
            folder.rmdir()


def _received(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode("utf-8").splitlines())


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    """SIGTERM in the middle of a burst of sends: every request is answered 200 or never reached a worker
    (a connection error, never a 5xx); after a restart each answered send replays to its very answer and
    the receiver reads every one of them."""
    server = _start_workers(tmp_path / "gw")
    try:
        api, alice, bob, gid = _pair(server, "workers-sigterm")
        path = alice.path(gid, "/messages")
        answered: dict[int, dict[str, str]] = {}
        refused: list[int] = []
        lock = threading.Lock()

        def send(i: int) -> None:
            try:
                response = api.post(path, {"data": b64(b"burst %d" % i)}, idem=f"burst-{i}")
            except (OSError, aiohttp.ClientError):
                with lock:
                    refused.append(i)
                return
            assert response.status == 200, (i, response.status, response.body)
            with lock:
                answered[i] = response.body

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, i) for i in range(24)]
            _wait_for(lambda: bool(answered), "a first answer")
            assert server.stop() == 0
            for future in futures:
                future.result(timeout=GUARD)
        assert len(answered) + len(refused) == 24 and answered
        server.start()
        for i, body in answered.items():  # replayed, not sent again
            assert api.post(path, {"data": b64(b"burst %d" % i)}, idem=f"burst-{i}").expect(200).body == body
        for i, body in sorted(answered.items()):
            assert unb64(bob.process(gid, body["message"])["data"]) == b"burst %d" % i
    finally:
        server.kill()


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    # A temporary folder of its own: any other supervisor that starts on this machine (another test process's)
    # sweeps the metrics folders of dead supervisors in the shared one.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = _start_workers(tmp_path / "gw", env={"TMPDIR": str(scratch)})
    try:
        assert server.proc is not None
        supervisor = server.proc.pid
        workers = _children(supervisor)
        assert len(workers) == 2
    finally:
        server.kill()  # kill -9 of the supervisor alone: the kernel sends its workers SIGTERM
    _wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers gone")
    with pytest.raises(OSError):
        Client(server.port, timeout=5).get("/healthz")  # nobody listens any more
    left = list(scratch.glob(f"mlsgw-metrics-{supervisor}-*"))
    assert len(left) == 1  # the killed supervisor could not remove its metrics folder ...
    server.start()
    try:
        assert not left[0].exists()  # ... the next one did
    finally:
        assert server.stop() == 0


def _second_process(server: GatewayServer) -> GatewayServer:
    """Another ``serve`` on ``server``'s data folder (its own port and log)."""
    other = copy.copy(server)
    other.port, other.proc, other.log_path = free_port(), None, server.log_path.with_suffix(".2.log")
    other.start()
    return other


def test_a_policy_set_through_one_process_holds_in_the_other(gateway: GatewayServer) -> None:
    """Credential policies are cached per process: the other process's cache is checked against the store
    (every ``POLICY_RECHECK_S``), so a policy set elsewhere refuses there too, without a restart."""
    tenant_id, token = gateway.admin.create_tenant("policy-elsewhere")
    other = _second_process(gateway)
    try:
        here, there = gateway.client(token), other.client(token)
        identity = here.post("/v1/identities", {"name": "plain"}).expect(201)["identity_id"]
        path = f"/v1/identities/{identity}/key-packages"
        there.post(path, {"count": 1}).expect(201)  # no policy yet: the other process caches that
        here.request("PUT", f"/v1/tenants/{tenant_id}/credential-policy", make_pki().policy()).expect(200)
        refused: list[str] = []

        def refused_there() -> bool:
            response = there.post(path, {"count": 1})
            if response.status == 422:
                refused.append(response.body["reason"])
                return True
            assert response.status == 201, response.body
            return False

        _wait_for(refused_there, "the policy to hold in the other process")
        assert refused == ["type_not_allowed"]  # a basic credential in an x509-only tenant
    finally:
        assert other.stop() == 0


def test_a_token_key_made_by_the_other_process_is_found(gateway: GatewayServer) -> None:
    """SoftHSM re-indexes its token files only when the token's generation moved since this process's own
    last write: a key made by the other process, then a write here, hid that key here ("no key for this
    reference", 422). Not found, the token is read again once and the key is found."""
    other = _second_process(gateway)
    try:
        _, token = gateway.admin.create_tenant("keys-elsewhere")
        here, there = gateway.client(token), other.client(token)
        made_there = Hosted.create(there, "made-there")  # a token key pair written by the other process
        Hosted.create(here, "made-here")  # then a write of this process's own
        gid = Hosted(here, made_there.identity_id, "made-there").create_group()  # signs with the key
        assert Hosted(there, made_there.identity_id, "made-there").group(gid)["epoch"] == 0
    finally:
        assert other.stop() == 0


@pytest.mark.parametrize("was_ready", [False, True])
def test_only_a_worker_that_never_got_ready_stops_the_supervisor(tmp_path: Path, was_ready: bool) -> None:
    """A worker exiting with an error before the gateway was announced stops the supervisor only if it
    never said READY itself (it would fail again); one that had been ready is started again."""
    supervisor = Supervisor(["serve"], "127.0.0.1", 0, workers=2)
    supervisor.metrics_dir = str(tmp_path)
    slot = supervisor.slots[0]
    slot.proc = subprocess.Popen(["sh", "-c", "exit 3"])
    slot.proc.wait()
    slot.ready = slot.was_ready = was_ready
    outcome = supervisor._check(slot, time.monotonic())
    assert outcome == (None if was_ready else 3)
    assert slot.proc is None and not slot.ready
    assert (slot.restart_at is not None) == was_ready
