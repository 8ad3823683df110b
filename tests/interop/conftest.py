"""Fixtures for the live interop tests: install the ts-mls peer once, then hand out peer processes.

A missing Node.js or a failed install FAILS the tests with the reason: the project's install step
(deploy/bootstrap.sh) is responsible for Node, so a missing Node is a broken setup, never a skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from .ts_mls_peer import INTEROP_DIR, TsMlsPeer

PeerFactory = Callable[[], TsMlsPeer]


@pytest.fixture(scope="session")
def ts_mls_installed() -> None:
    """Run tests/interop/install.sh once per session (it is a no-op when node_modules is current)."""
    try:
        proc = subprocess.run(
            ["bash", str(INTEROP_DIR / "install.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"tests/interop/install.sh could not run: {e}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"tests/interop/install.sh failed (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()}\n{proc.stdout.strip()}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def ts_mls_peer_factory(ts_mls_installed: None) -> Iterator[PeerFactory]:
    """A factory of :class:`TsMlsPeer` processes; every peer it made is shut down at session end."""
    peers: list[TsMlsPeer] = []

    def make() -> TsMlsPeer:
        peer = TsMlsPeer()
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()
