"""The test ports (:mod:`tests.ports`): below the kernel's ephemeral range, a block per pytest-xdist worker,
never the same port to two live processes, never a port something listens on. No servers, a few
``python -c`` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from . import ports

ROOT = Path(__file__).resolve().parents[1]

#: Hands out ``argv[1]`` ports with :func:`tests.ports.free_port`, prints them, and keeps them (and their
#: locks) until its stdin closes.
ALLOCATE = (
    "import sys; from tests.ports import free_port; "
    "print(*(free_port() for _ in range(int(sys.argv[1]))), flush=True); sys.stdin.read()"
)
#: Takes the lock of the port whose lock file is ``argv[1]`` (``busy``: another process has it already,
#: which holds it as well) and keeps it until its stdin closes.
HOLD_LOCK = (
    "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o600)\n"
    "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('locked', flush=True)\n"
    "except BlockingIOError:\n    print('busy', flush=True)\n"
    "sys.stdin.read()"
)


@contextmanager
def python(code: str, *args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``python -c code args`` from the repository root, alive until the block ends (its stdin closed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the process ended without an answer ({proc.wait(timeout=30)})"
    return line.strip()


def quiet_ports(count: int) -> Iterator[int]:
    """Ports near the end of this process's block, which other runs reach last, not handed out here."""
    block = ports.this_block()
    return (port for port in block[-count:] if port not in ports._held)


@contextmanager
def listening(candidates: Iterator[int]) -> Iterator[socket.socket]:
    """A socket listening on the first of ``candidates`` it can bind (without SO_REUSEADDR)."""
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            s.listen()
            yield s
            return
    raise AssertionError("no port to listen on")


def test_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    handed = [ports.free_port() for _ in range(200)]
    assert len(set(handed)) == len(handed)
    assert all(1024 <= port < ports.ephemeral_start() for port in handed)
    assert set(handed) <= set(ports.this_block())


def test_workers_of_one_run_get_disjoint_blocks() -> None:
    blocks = [ports.port_block(f"gw{i}", 4) for i in range(4)]
    for i, block in enumerate(blocks):
        assert block.start >= 1024 and block.stop <= ports.ephemeral_start() and len(block) >= 100
        assert all(not set(block) & set(other) for other in blocks[i + 1 :])
    assert ports.port_block(None, 1) == ports.port_block("gw0", 1)
    # As the workers see it: each process takes its block from $PYTEST_XDIST_WORKER.
    env = {"PYTEST_XDIST_WORKER_COUNT": "2"}
    with (
        python(ALLOCATE, "30", env={**env, "PYTEST_XDIST_WORKER": "gw0"}) as gw0,
        python(ALLOCATE, "30", env={**env, "PYTEST_XDIST_WORKER": "gw1"}) as gw1,
    ):
        got0 = {int(p) for p in first_line(gw0).split()}
        got1 = {int(p) for p in first_line(gw1).split()}
    assert len(got0) == len(got1) == 30
    assert got0 <= set(ports.port_block("gw0", 2)) and got1 <= set(ports.port_block("gw1", 2))


def test_two_runs_at_once_never_share_a_port() -> None:
    """Two processes of one block (two runs' ``gw0``, both from the block's start): each skips the other's."""
    env = {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"}
    with python(ALLOCATE, "30", env=env) as one, python(ALLOCATE, "30", env=env) as two:
        got = [int(p) for p in first_line(one).split() + first_line(two).split()]
    assert len(set(got)) == 60
    assert set(got) <= set(ports.port_block("gw0", 2))


def test_a_port_locked_by_another_process_is_skipped() -> None:
    port = next(quiet_ports(2000))
    with python(HOLD_LOCK, str(ports.lock_path(port))) as holder:
        assert first_line(holder) in ("locked", "busy")
        got = ports.port_from(range(port, port + 50))  # would start at ``port``
    assert port < got < port + 50


def test_a_port_something_listens_on_is_skipped_and_a_block_can_run_out() -> None:
    with listening(quiet_ports(1000)) as server:
        port = server.getsockname()[1]
        assert port not in ports._held
        got = ports.port_from(range(port, port + 50))
        assert port < got < port + 50
        with pytest.raises(RuntimeError, match="no free test port"):
            ports.port_from(range(port, port + 1))
    # Nothing listens any more: the port is handed out (and then never again by this process).
    assert ports.port_from(range(port, port + 1)) == port
    with pytest.raises(RuntimeError, match="no free test port"):
        ports.port_from(range(port, port + 1))


def test_the_counter_wraps_around_its_block() -> None:
    with listening(p for p in quiet_ports(500) if p + 1 not in ports._held) as server:
        port = server.getsockname()[1]
        block = range(port, port + 2)
        assert ports.port_from(block) == port + 1
    assert ports.port_from(block) == port  # from the end of the block back to its start


def test_a_lock_folder_others_could_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock file in a folder another user can write (or one planted as a link) could be a link to any
    file the test run then opens: only a private directory of this user is used."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setattr(ports, "LOCK_DIR", shared)
    with pytest.raises(RuntimeError, match="not a private directory"):
        ports.lock_path(10_000)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(private)
    monkeypatch.setattr(ports, "LOCK_DIR", link)
    with pytest.raises(RuntimeError, match="not a private directory"):
        ports.lock_path(10_000)
    monkeypatch.setattr(ports, "LOCK_DIR", private)
    assert ports.lock_path(10_000) == private / "10000.lock"
