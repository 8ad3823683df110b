"""Fixtures for the end-to-end tests: real ``mls-gateway serve`` processes driven only over HTTP.

``gateway_factory`` makes servers on fresh data folders (``init --json`` first, for the admin token;
then ``serve`` on a free local port, ready once ``/healthz`` answers); every server it made is killed at
teardown. ``ts_mls_peer`` is one ts-mls peer process (tests/interop) for a non-hosted group member.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop.ts_mls_peer import INTEROP_DIR, TsMlsPeer

from .gwclient import GatewayServer

ServerFactory = Callable[[], GatewayServer]


@contextmanager
def _servers(folder: Path) -> Iterator[ServerFactory]:
    servers: list[GatewayServer] = []

    def make() -> GatewayServer:
        server = GatewayServer(folder / f"gw{len(servers)}")
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Makes servers on fresh data folders under the test's tmp_path; all are killed at teardown."""
    with _servers(tmp_path) as make:
        yield make


@pytest.fixture
def gateway(gateway_factory: ServerFactory) -> GatewayServer:
    """A running server of its own for one test (tests that restart or kill it)."""
    return gateway_factory()


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """One running server for a whole module (tests that only add state of their own to it)."""
    with _servers(tmp_path_factory.mktemp("gateway")) as make:
        yield make()


@pytest.fixture(scope="session")
def ts_mls_peer() -> Iterator[TsMlsPeer]:
    """One ts-mls peer process (installing its Node packages first, a no-op when current)."""
    proc = subprocess.run(
        ["bash", str(INTEROP_DIR / "install.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"tests/interop/install.sh failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}",
            pytrace=False,
        )
    peer = TsMlsPeer()
    yield peer
    peer.close()
