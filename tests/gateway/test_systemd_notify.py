"""``mls-gateway serve`` under systemd's readiness protocol (``Type=notify``): a real server started with
``$NOTIFY_SOCKET`` naming a Unix datagram socket this test binds sends ``READY=1`` only once it answers
HTTP, and ``STOPPING=1`` when SIGTERM starts its shutdown; :func:`gateway.systemd_notify.notify` on its
own (path and abstract addresses, no socket, a socket nobody binds)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.systemd_notify import notify

from .gwclient import GATEWAY_EXE, Client, GatewayServer

pytestmark = pytest.mark.timeout(300)

#: A deadlock guard only (the machine is shared): how long to wait for a message that must come.
PATIENCE_S = 120.0


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound Unix datagram socket in a short folder (socket paths are limited to 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="mlsgw-notify-", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(PATIENCE_S)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(folder)


def receive(sock: socket.socket) -> dict[str, str]:
    message = sock.recv(4096).decode("utf-8")
    return dict(line.split("=", 1) for line in message.splitlines())


def test_serve_sends_ready_once_listening_and_stopping_at_sigterm(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    server = GatewayServer(tmp_path / "gw", env={"NOTIFY_SOCKET": path})  # runs `init` (no socket use)
    with server.log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                str(GATEWAY_EXE),
                "serve",
                "--data-dir",
                str(server.data_dir),
                "--listen",
                f"127.0.0.1:{server.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server.env,
            start_new_session=True,
        )
    try:
        ready = receive(sock)  # nothing polled the server before: READY=1 alone says it is up
        assert ready["READY"] == "1", ready
        assert f"listening on http://127.0.0.1:{server.port}" in ready["STATUS"]
        client = Client(server.port)
        client.get("/healthz").expect(200)
        # The first readiness check was recorded before READY=1, before anyone polled /readyz.
        assert client.metric("mlsgw_ready") == 1.0
        client.get("/readyz").expect(200)

        proc.send_signal(signal.SIGTERM)
        stopping = receive(sock)
        assert stopping["STOPPING"] == "1", stopping
        assert proc.wait(timeout=PATIENCE_S) == 0, server.log_tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):  # exactly two messages: nothing after STOPPING=1
        sock.recv(4096)


def test_notify_sends_to_a_path_and_to_an_abstract_address(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("READY=1", "STATUS=ok", env={"NOTIFY_SOCKET": path})
    assert receive(sock) == {"READY": "1", "STATUS": "ok"}
    name = f"mlsgw-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(PATIENCE_S)
        assert notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert receive(abstract) == {"STOPPING": "1"}


def test_notify_without_a_socket_sends_nothing_and_a_dead_socket_does_not_raise(tmp_path: Path) -> None:
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody-binds-this")}) is False
