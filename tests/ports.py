"""Free TCP ports for the servers the tests (and benchmarks) start: :func:`free_port`.

Binding port 0 and handing the number on is racy here: the kernel picks that port from its *ephemeral*
range (``/proc/sys/net/ipv4/ip_local_port_range``), the same range every outgoing connection (HTTP
clients, PostgreSQL connections) takes its local port from, and ``./test.sh`` runs several test processes
at once (pytest-xdist), maybe beside another run or a benchmark. Between the choice and the server's bind,
another process may choose the same number or a connection may take it as its local port: the server then
fails with EADDRINUSE. So the ports handed out here are:

* **below the ephemeral range**, where the kernel never puts a connection's local port, and from 1024 up
  (from 10000 when there is room: above the usual services' ports, e.g. PostgreSQL's 5432);
* from a **block per pytest-xdist worker** (``$PYTEST_XDIST_WORKER`` ``gwN`` of
  ``$PYTEST_XDIST_WORKER_COUNT``; none: a serial run, block 0), so the workers of one run never hand out
  the same number; a counter walks the block, wrapping around, under a lock (threads);
* **locked across runs** of the same user: a port is handed out only with an ``fcntl.flock`` on
  ``<temp dir>/mlsgw-test-ports-<uid>/<port>.lock`` (a folder only that user may use: a lock file in a
  folder anyone can write could be planted as a link to another file), which this process keeps until it
  exits (the kernel drops the locks of a process that died), and only when it can be bound right now (a
  server still listening on it, of whatever origin, is skipped). A process never hands out the same port
  twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import stat
import tempfile
import threading
from pathlib import Path

#: Where the per-port lock files live, shared by every run of this user on the machine (mode 0o700).
LOCK_DIR = Path(tempfile.gettempdir()) / f"mlsgw-test-ports-{os.getuid()}"
#: The lowest port handed out when the space below the ephemeral range allows it.
PREFERRED_FIRST = 10_000

_mutex = threading.Lock()
#: The ports this process handed out, with their lock files kept open (locked) until the process exits.
_held: dict[int, int] = {}
#: Each block's next position (the counter walking it).
_positions: dict[range, int] = {}


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_block(worker: str | None, workers: int = 1) -> range:
    """The ports of pytest-xdist worker ``worker`` (``"gw3"``; None: a serial run) out of ``workers``: the
    space from :data:`PREFERRED_FIRST` (or 1024) to the ephemeral range, split in equal blocks."""
    match = re.fullmatch(r"gw(\d+)", worker or "")
    index = int(match.group(1)) if match else 0
    end = ephemeral_start()
    first = PREFERRED_FIRST if end - PREFERRED_FIRST >= 1000 else 1024
    size = (end - first) // max(workers, index + 1)
    if size < 1:
        raise RuntimeError(f"no room for a block of test ports between {first} and {end} (worker {worker})")
    return range(first + index * size, first + (index + 1) * size)


def this_block() -> range:
    """This process's block: :func:`port_block` of ``$PYTEST_XDIST_WORKER`` (and its count)."""
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    return port_block(os.environ.get("PYTEST_XDIST_WORKER"), int(count) if count.isdigit() else 1)


def lock_path(port: int) -> Path:
    """``port``'s lock file (its folder made if missing; RuntimeError if the folder is not a directory of
    this user's that only this user may write)."""
    with contextlib.suppress(FileExistsError):
        LOCK_DIR.mkdir(mode=0o700)
    info = os.lstat(LOCK_DIR)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{LOCK_DIR} is not a private directory of this user: remove it")
    return LOCK_DIR / f"{port}.lock"


def _lock(port: int) -> int | None:
    """An open, ``flock``-ed descriptor of ``port``'s lock file; None when another process holds it."""
    # O_CLOEXEC (Python's default): not inherited by subprocesses; O_NOFOLLOW: never through a link.
    fd = os.open(lock_path(port), os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _bindable(port: int) -> bool:
    """Whether a server could bind ``127.0.0.1:port`` now (SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_from(block: range) -> int:
    """The next port of ``block`` (from where the last call left it, wrapping around) that no process
    holds and that can be bound now; locked for this process until it exits."""
    with _mutex:
        start = _positions.get(block, 0)
        for step in range(len(block)):
            position = (start + step) % len(block)
            port = block[position]
            if port in _held:
                continue
            fd = _lock(port)
            if fd is None:
                continue
            if not _bindable(port):
                os.close(fd)
                continue
            _held[port] = fd
            _positions[block] = position + 1
            return port
    raise RuntimeError(
        f"no free test port in {block.start}-{block.stop - 1}: each is handed out already, locked by "
        f"another process ({LOCK_DIR}) or in use"
    )


def free_port() -> int:
    """A local TCP port for a server to bind later: no other test process, run or outgoing connection
    gets it (see the module docstring)."""
    return port_from(this_block())
