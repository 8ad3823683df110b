"""A real ``mls-gateway serve`` process, and the shipped client (:mod:`gateway.client`) for tests.

:class:`GatewayServer` runs ``mls-gateway init --json`` once on a data folder (keeping the admin token
it prints), then ``mls-gateway serve`` on a free local port; it can stop the process with SIGTERM
(graceful, exit code 0 expected), kill it with SIGKILL (a crash) and start it again on the same folder.
:class:`Client` is the shipped :class:`gateway.client.GatewayClient` used synchronously: every request
runs on one event loop thread (:class:`gateway.client.LoopThread`) over one shared session that opens a
fresh connection per request, so it is safe to use from several threads and across server restarts.
Its raw form (:meth:`Client.request`, ``get``, ``post``, ``delete``) answers a :class:`Response` for every
status — tests assert on problem documents as much as on successes — and its conveniences call the
client's typed route methods (a failure raises :class:`gateway.client.GatewayError`). A request that gets
no answer raises :class:`gateway.client.GatewayConnectionError`, an ``OSError``.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from gateway.client import ApiResponse, GatewayClient, LoopThread, b64, gid_segment, unb64

from ..ports import free_port

REPO = Path(__file__).resolve().parents[2]
GATEWAY_EXE = REPO / ".venv" / "bin" / "mls-gateway"

T = TypeVar("T")

__all__ = [
    "GATEWAY_EXE",
    "REPO",
    "Client",
    "GatewayServer",
    "Hosted",
    "Response",
    "b64",
    "free_port",
    "unb64",
]


def gid_path(group_id_b64: str) -> str:
    """A group id (standard base64, as the API returns it) as a URL path segment: base64url, no padding."""
    return gid_segment(unb64(group_id_b64))


@dataclass(frozen=True)
class Response(ApiResponse):
    """An answer of any status (``status``, ``body``, lower-cased ``headers``, ``raw``, ``code``)."""

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def expect(self, *statuses: int) -> Response:
        assert self.status in statuses, f"expected {statuses}, got {self.status}: {self.body!r}"
        return self


class _Shared:
    """The tests' one loop thread and its one session (a connection per request: no stale keep-alive
    connection to a server that was killed and started again)."""

    lock = threading.Lock()
    loop: LoopThread | None = None
    session: aiohttp.ClientSession | None = None

    @classmethod
    def get(cls) -> tuple[LoopThread, aiohttp.ClientSession]:
        with cls.lock:
            if cls.loop is None or cls.session is None:
                cls.loop = LoopThread()
                cls.session = cls.loop.run(_new_session())
                atexit.register(cls.close)
            return cls.loop, cls.session

    @classmethod
    def close(cls) -> None:
        with cls.lock:
            if cls.loop is not None and cls.session is not None:
                cls.loop.run(cls.session.close())
                cls.loop.stop()
            cls.loop = cls.session = None


async def _new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


class Client:
    """One gateway as one caller; ``token`` is sent as a bearer token unless None."""

    def __init__(self, port: int, token: str | None = None, *, timeout: float = 60.0) -> None:
        self.port = port
        self.token = token
        self.timeout = timeout
        self._loop, session = _Shared.get()
        self.api = GatewayClient(f"http://127.0.0.1:{port}", token, session=session, timeout=timeout)

    def with_token(self, token: str | None) -> Client:
        return Client(self.port, token, timeout=self.timeout)

    def run(self, operation: Callable[[GatewayClient], Awaitable[T]]) -> T:
        """``operation`` on the shipped client, e.g. ``api.run(lambda c: c.list_clients())``."""

        async def call() -> T:
            return await operation(self.api)

        return self._loop.run(call())

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idem: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        """One request, answered whatever its status."""
        r = self.run(lambda c: c.request(method, path, body, idempotency_key=idem, headers=headers, raw=raw))
        return Response(r.status, r.body, r.headers, r.raw)

    def fire(
        self, method: str, path: str, body: Any, *, idem: str | None = None
    ) -> http.client.HTTPConnection:
        """Send a request and do not read the answer: the caller closes the returned connection unread
        (a client that lost the response). Hanging up before the server read the whole request may
        legitimately abort it, so close only after its effect is seen."""
        hdrs = {"Content-Type": "application/json"}
        if self.token is not None:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if idem is not None:
            hdrs["Idempotency-Key"] = idem
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        conn.request(method, path, body=json.dumps(body).encode(), headers=hdrs)
        return conn

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, {} if body is None else body, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def metric(self, family: str, **labels: str) -> float:
        """The sum of the samples of one /metrics family whose labels include ``labels``."""
        text = self.run(lambda c: c.metrics())
        total = 0.0
        for name, label_text, value in re.findall(r"^(\w+)(?:\{(.*)\})? (\S+)$", text, re.M):
            if name == family and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    # ---- conveniences over the shipped client's route methods (a failure raises GatewayError) ------
    def create_tenant(self, name: str) -> tuple[str, str]:
        r = self.run(lambda c: c.create_tenant(name))
        return r["tenant_id"], r["token"]

    def create_identity(self, name: str, **extra: Any) -> dict[str, Any]:
        return self.run(lambda c: c.create_identity(name, **extra))

    def key_packages(self, identity_id: str, count: int = 1, **extra: Any) -> list[str]:
        r = self.run(lambda c: c.create_key_packages(identity_id, count=count, **extra))
        return [kp["key_package"] for kp in r["key_packages"]]

    def create_group(self, identity_id: str, **extra: Any) -> str:
        """Create a group; returns its id as a path segment (base64url without padding)."""
        if isinstance(extra.get("group_id"), str):
            extra["group_id"] = unb64(extra["group_id"])
        r = self.run(lambda c: c.create_group(identity_id, **extra))
        assert r["epoch"] == 0
        return gid_path(r["group_id"])

    def group(self, identity_id: str, gid: str) -> dict[str, Any]:
        return self.run(lambda c: c.get_group(identity_id, gid))

    def commit(
        self, identity_id: str, gid: str, body: dict[str, Any] | None = None, *, idem: str | None = None
    ) -> dict[str, Any]:
        return self.run(lambda c: c.commit(identity_id, gid, **(body or {}), idempotency_key=idem))

    def join(self, identity_id: str, welcome: str, **extra: Any) -> dict[str, Any]:
        return self.run(lambda c: c.join_group(identity_id, welcome, **extra))

    def send(self, identity_id: str, gid: str, data: bytes, *, idem: str | None = None) -> str:
        r = self.run(lambda c: c.send_message(identity_id, gid, data, idempotency_key=idem))
        return str(r["message"])

    def process(self, identity_id: str, gid: str, message: str, *, idem: str | None = None) -> dict[str, Any]:
        return self.run(lambda c: c.process(identity_id, gid, message, idempotency_key=idem))

    def export(self, identity_id: str, gid: str, label: str, length: int, context: bytes = b"") -> bytes:
        return self.run(lambda c: c.export_secret(identity_id, gid, label, length, context=context))


class GatewayServer:
    """One data folder and the ``mls-gateway serve`` process running on it (at most one at a time)."""

    def __init__(
        self, data_dir: Path, *, env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        #: More ``serve`` arguments (e.g. ``--workers 2``).
        self.args = list(args)
        self.port = free_port()
        self.env = {**os.environ, "MLSGW_LOG_LEVEL": "WARNING", **(env or {})}
        for var in ("MLSGW_CONFIG", "MLSGW_DATA_DIR", "MLSGW_LISTEN", "MLSGW_DATABASE", "SOFTHSM2_CONF"):
            if env is None or var not in env:
                self.env.pop(var, None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.admin_token = self._init()

    def another_process(self, name: str = "second") -> GatewayServer:
        """Another ``serve`` process on this data folder (same database, token and admin token), not
        started, with a port and a log file of its own."""
        other = copy.copy(self)
        other.port, other.proc = free_port(), None
        other.log_path = self.data_dir.parent / f"{self.data_dir.name}-{name}.log"
        return other

    def _init(self) -> str:
        out = subprocess.run(
            [str(GATEWAY_EXE), "init", "--data-dir", str(self.data_dir), "--json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, f"mls-gateway init failed ({out.returncode}): {out.stderr}"
        report = json.loads(out.stdout.strip().splitlines()[-1])
        token = report["admin_token"]
        assert isinstance(token, str) and token
        return token

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        assert not self.running
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [
                    str(GATEWAY_EXE),
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"mls-gateway serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if Client(self.port, timeout=2).get("/healthz").status == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise AssertionError(
            f"mls-gateway serve did not answer /healthz within {timeout} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGABRT first: the server's faulthandler writes every thread's stack to its log (what hung)
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self.kill()
            raise AssertionError(
                f"mls-gateway serve did not exit within {timeout} s of SIGTERM:\n{self.log_tail(12000)}"
            ) from None

    def kill(self) -> None:
        """SIGKILL (a crash: no clean-up of any kind) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        code = self.stop()
        assert code == 0, f"mls-gateway serve exited with {code} on SIGTERM:\n{self.log_tail()}"
        self.start()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def client(self, token: str | None = None) -> Client:
        return Client(self.port, token)

    @property
    def admin(self) -> Client:
        return Client(self.port, self.admin_token)


@dataclass(frozen=True)
class Hosted:
    """A hosted identity, reached with its tenant's client: the group operations of api-v1 for it."""

    api: Client
    identity_id: str
    name: str

    @classmethod
    def create(cls, api: Client, name: str, **extra: Any) -> Hosted:
        return cls(api, api.create_identity(name, **extra)["identity_id"], name)

    def path(self, gid: str | None = None, tail: str = "") -> str:
        base = f"/v1/identities/{self.identity_id}/groups"
        return base + ("" if gid is None else f"/{gid}") + tail

    def key_package(self, **extra: Any) -> str:
        return self.api.key_packages(self.identity_id, 1, **extra)[0]

    def create_group(self, **extra: Any) -> str:
        return self.api.create_group(self.identity_id, **extra)

    def group(self, gid: str) -> dict[str, Any]:
        return self.api.group(self.identity_id, gid)

    def state(self, gid: str) -> tuple[int, str]:
        """(epoch, epoch_authenticator) of this member's view of the group."""
        g = self.group(gid)
        return g["epoch"], g["epoch_authenticator"]

    def commit(self, gid: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return self.api.commit(self.identity_id, gid, body, **kw)

    def join(self, welcome: str, **extra: Any) -> dict[str, Any]:
        return self.api.join(self.identity_id, welcome, **extra)

    def send(self, gid: str, data: bytes, **kw: Any) -> str:
        return self.api.send(self.identity_id, gid, data, **kw)

    def process(self, gid: str, message: str | bytes, **kw: Any) -> dict[str, Any]:
        return self.api.process(
            self.identity_id, gid, message if isinstance(message, str) else b64(message), **kw
        )

    def export(self, gid: str, label: str = "e2e", length: int = 32, context: bytes = b"") -> bytes:
        return self.api.export(self.identity_id, gid, label, length, context)

    def post(self, gid: str, tail: str, body: Any = None, **kw: Any) -> Response:
        return self.api.post(self.path(gid, tail), body, **kw)
