"""A real ``mls-gateway serve`` process and a small HTTP client for it (standard library only).

:class:`GatewayServer` runs ``mls-gateway init --json`` once on a data folder (keeping the admin token
it prints), then ``mls-gateway serve`` on a free local port; it can stop the process with SIGTERM
(graceful, exit code 0 expected), kill it with SIGKILL (a crash) and start it again on the same folder.
:class:`Client` speaks the JSON API over one fresh HTTP connection per request, so it is safe to use
from several threads, and answers :class:`Response` values (status, JSON body, headers) for every
status: tests assert on problem documents as much as on successes.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GATEWAY_EXE = REPO / ".venv" / "bin" / "mls-gateway"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def gid_path(group_id_b64: str) -> str:
    """A group id (standard base64, as the API returns it) as a URL path segment: base64url, no padding."""
    return base64.urlsafe_b64encode(unb64(group_id_b64)).decode("ascii").rstrip("=")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""

    @property
    def code(self) -> str | None:
        """The problem ``code`` of an error answer."""
        return self.body.get("code") if isinstance(self.body, dict) else None

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def expect(self, *statuses: int) -> Response:
        assert self.status in statuses, f"expected {statuses}, got {self.status}: {self.body!r}"
        return self


class Client:
    """JSON over HTTP against one gateway; ``token`` is sent as a bearer token unless None."""

    def __init__(self, port: int, token: str | None = None, *, timeout: float = 60.0) -> None:
        self.port = port
        self.token = token
        self.timeout = timeout

    def with_token(self, token: str | None) -> Client:
        return Client(self.port, token, timeout=self.timeout)

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
        """One request. Connection failures raise (``OSError`` / ``http.client`` errors)."""
        hdrs = {"Accept": "application/json"}
        if self.token is not None:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if idem is not None:
            hdrs["Idempotency-Key"] = idem
        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        parsed: Any = None
        if payload and "json" in resp_headers.get("content-type", ""):
            parsed = json.loads(payload)
        elif payload:
            parsed = payload.decode("utf-8", "replace")
        return Response(resp.status, parsed, resp_headers, payload)

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
        text = self.get("/metrics").expect(200).body
        total = 0.0
        for name, label_text, value in re.findall(r"^(\w+)(?:\{(.*)\})? (\S+)$", text, re.M):
            if name == family and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    # ---- conveniences over the API (all assert success) -------------------------------------------
    def create_tenant(self, name: str) -> tuple[str, str]:
        r = self.post("/v1/tenants", {"name": name}).expect(201)
        return r["tenant_id"], r["token"]

    def create_identity(self, name: str, **extra: Any) -> dict[str, Any]:
        return dict(self.post("/v1/identities", {"name": name, **extra}).expect(201).body)

    def key_packages(self, identity_id: str, count: int = 1, **extra: Any) -> list[str]:
        r = self.post(f"/v1/identities/{identity_id}/key-packages", {"count": count, **extra}).expect(201)
        return [kp["key_package"] for kp in r["key_packages"]]

    def create_group(self, identity_id: str, **extra: Any) -> str:
        """Create a group; returns its id as a path segment (base64url without padding)."""
        r = self.post(f"/v1/identities/{identity_id}/groups", extra).expect(201)
        assert r["epoch"] == 0
        return gid_path(r["group_id"])

    def group(self, identity_id: str, gid: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/identities/{identity_id}/groups/{gid}").expect(200).body)

    def commit(
        self, identity_id: str, gid: str, body: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        return dict(
            self.post(f"/v1/identities/{identity_id}/groups/{gid}/commits", body or {}, **kw).expect(200).body
        )

    def join(self, identity_id: str, welcome: str, **extra: Any) -> dict[str, Any]:
        body = {"welcome": welcome, **extra}
        return dict(self.post(f"/v1/identities/{identity_id}/groups/join", body).expect(201).body)

    def send(self, identity_id: str, gid: str, data: bytes, **kw: Any) -> str:
        r = self.post(
            f"/v1/identities/{identity_id}/groups/{gid}/messages", {"data": b64(data)}, **kw
        ).expect(200)
        return str(r["message"])

    def process(self, identity_id: str, gid: str, message: str, **kw: Any) -> dict[str, Any]:
        r = self.post(f"/v1/identities/{identity_id}/groups/{gid}/process", {"message": message}, **kw)
        return dict(r.expect(200).body)

    def export(self, identity_id: str, gid: str, label: str, length: int, context: bytes = b"") -> bytes:
        body = {"label": label, "length": length, "context": b64(context)}
        return unb64(
            self.post(f"/v1/identities/{identity_id}/groups/{gid}/export", body).expect(200)["secret"]
        )


class GatewayServer:
    """One data folder and the ``mls-gateway serve`` process running on it (at most one at a time)."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {**os.environ, "MLSGW_LOG_LEVEL": "WARNING", **(env or {})}
        for var in ("MLSGW_CONFIG", "MLSGW_DATA_DIR", "MLSGW_LISTEN", "MLSGW_DATABASE", "SOFTHSM2_CONF"):
            if env is None or var not in env:
                self.env.pop(var, None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.admin_token = self._init()

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
            self.kill()
            raise AssertionError(f"mls-gateway serve did not exit within {timeout} s of SIGTERM") from None

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
