"""``mls-gateway serve --workers N``: one supervisor process handing connections to N gateway processes.

* **The socket** — the supervisor binds and listens, accepts, and hands each connection to the next ready
  worker in turn (:mod:`gateway.connection_handoff`: over a Unix socket pair per worker, inherited as
  ``$MLSGW_WORKER_FD``; a shared listening socket spread 28 keep-alive connections 22 / 6 over two
  workers).
  It *spawns* each worker (a new interpreter: ``python -m gateway.cli`` with the same arguments, never a
  fork). The supervisor opens neither the HSM nor the store (docs/hsm-facts.md: PKCS#11 is initialised in each
  process); every worker opens its own token session pool, store connections and caches, exactly as a
  single ``serve`` does.
* **Readiness** — a worker's :func:`gateway.systemd_notify.notify` goes to the supervisor (the worker's
  ``$NOTIFY_SOCKET`` is the supervisor's own datagram socket) with ``READY=1`` and its ``MAINPID``. Workers
  start one after the other (each once the previous one listens: concurrent logins to one SoftHSM token
  fail now and then, hsm-facts.md §3); once all listen the supervisor tells systemd ``READY=1``.
* **Crashes** — a worker that exits while the supervisor is not stopping (kill -9, a crash) is logged and
  started again after a back-off (0.5 s, doubling to 30 s; back to 0.5 s once a worker has run 30 s). A
  worker that exits with an error before it and the gateway were ever ready (a wrong PIN, a token that
  is not there) stops the supervisor with its exit code: it would fail again.
* **Stopping** — SIGTERM or SIGINT: ``STOPPING=1`` to systemd, SIGTERM to every worker (each finishes its
  in-flight requests, aiohttp's graceful shutdown, and closes its runtime), SIGKILL to any still running
  after :data:`STOP_TIMEOUT_S`; the supervisor exits 0. A worker whose supervisor dies gets SIGTERM from the
  kernel (``PR_SET_PDEATHSIG``), so no worker outlives it.
* **Metrics** — the workers write their samples to a per-run folder (prometheus-client's multiprocess
  mode, ``$PROMETHEUS_MULTIPROC_DIR``), which :class:`gateway.metrics.Metrics` aggregates on every
  ``/metrics``; the supervisor marks a dead worker's live gauges dead and removes the folder at exit (and
  the folders of supervisors that are gone, at start).
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from .connection_handoff import RoundRobin, accept_ready, channel_pair
from .systemd_notify import notify

log = logging.getLogger("mls_gateway")

#: A worker's end of its connection channel, a file descriptor (set by the supervisor only).
WORKER_FD_ENV = "MLSGW_WORKER_FD"
#: The supervisor's pid in a worker (a worker whose parent is another process stops at once).
SUPERVISOR_ENV = "MLSGW_SUPERVISOR_PID"
#: prometheus-client's multiprocess folder (read when prometheus_client is first imported).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds the workers have to finish their in-flight requests after SIGTERM (the worker's own
#: graceful-shutdown timeout is 10 s), before SIGKILL (within deploy/mls-gateway.service's TimeoutStopSec=20).
STOP_TIMEOUT_S = 15.0
#: The per-run metrics folder's name: this prefix, the supervisor's pid, a random part (in the temp dir).
METRICS_PREFIX = "mlsgw-metrics-"
FIRST_BACKOFF_S, MAX_BACKOFF_S, HEALTHY_AFTER_S = 0.5, 30.0, 30.0
#: Seconds the supervisor stops accepting after the listening socket failed (as asyncio does on EMFILE).
ACCEPT_PAUSE_S = 1.0
_PR_SET_PDEATHSIG = 1


def is_worker(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a worker of a supervisor (``serve --workers N`` with N > 1)."""
    return WORKER_FD_ENV in (os.environ if env is None else env)


def inherited_channel() -> socket.socket:
    """A worker's end of the channel its supervisor hands connections over (inherited); the worker stops
    with its supervisor."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != os.environ.get(SUPERVISOR_ENV):  # the supervisor died before prctl
        raise SystemExit("mls-gateway worker: its supervisor is gone")
    channel = socket.socket(fileno=int(os.environ[WORKER_FD_ENV]))
    channel.setblocking(False)
    return channel


def _sweep_metrics_dirs() -> None:
    """Remove the metrics folders of supervisors that are gone (killed with -9: no clean-up of their own)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{METRICS_PREFIX}*-*"):
        pid = folder.name.removeprefix(METRICS_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            continue


@dataclass
class _Slot:
    """One worker position: its current process, when it started, and its restart back-off."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None
    #: Whether the worker takes connections now (READY=1 came; cleared when its channel is gone).
    ready: bool = False
    #: Whether the current process ever said READY=1 (a failure before that stops the supervisor).
    was_ready: bool = False
    exits: list[int] = field(default_factory=list)
    #: The supervisor's end of the worker's connection channel (while the worker runs).
    channel: socket.socket | None = None


class Supervisor:
    """Runs ``workers`` gateway processes serving ``host:port`` (see the module doc)."""

    def __init__(self, argv: Sequence[str], host: str, port: int, workers: int) -> None:
        self.argv, self.host, self.port = list(argv), host, port
        self.slots = [_Slot(i) for i in range(workers)]
        self.stopping = False
        self.announced = False
        self._systemd = os.environ.get("NOTIFY_SOCKET")

    # ---- the run ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or until a worker fails before the gateway was ever ready (its
        exit code)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host, self.port), family=family, backlog=1024)
        listener.setblocking(False)
        _sweep_metrics_dirs()
        self.metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
        self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify_name = f"@mlsgw-supervisor-{os.getpid()}-{os.urandom(4).hex()}"
        self.notify_sock.bind("\0" + self.notify_name[1:])
        self.notify_sock.setblocking(False)
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.notify_sock, selectors.EVENT_READ, "notify")
        self.accepting = False
        self.round_robin = RoundRobin(self._ready_channels, self._channel_gone)
        self.accept_paused_until = 0.0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "supervisor of %d workers on %s:%d",
            len(self.slots),
            self.host,
            self.port,
            extra={"event": "supervisor_start", "workers": len(self.slots)},
        )
        try:
            return self._loop()
        finally:
            self.selector.close()
            listener.close()  # new clients are refused at once, not reset after their handshake
            self._stop_all()
            self.notify_sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _loop(self) -> int:
        self._spawn(self.slots[0])
        while not self.stopping:
            self._wait_for_events(0.2)
            now = time.monotonic()
            for slot in self.slots:
                failed = self._check(slot, now)
                if failed is not None:
                    return failed
            self._start_next(now)
        notify("STOPPING=1", "STATUS=shutting down", env=self._systemd_env())
        log.info("supervisor stopping its workers", extra={"event": "supervisor_stop"})
        return 0

    def _start_next(self, now: float) -> None:
        """Start the slots without a process: at first one after the other (each once the previous one
        listens), later every one whose restart back-off is over."""
        for slot in self.slots:
            if slot.proc is None and (slot.restart_at is None or now >= slot.restart_at):
                self._spawn(slot)
                if not self.announced:
                    return  # first start: one at a time
            elif slot.proc is not None and not slot.ready and not self.announced:
                return

    # ---- connections ------------------------------------------------------------------------------
    def _wait_for_events(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a worker's readiness message or a connection, and handle them;
        connections are accepted only while a worker is ready to take them and the supervisor is not
        stopping, and not for a second after the listener failed (e.g. out of file descriptors)."""
        self._accept_while(
            not self.stopping
            and time.monotonic() >= self.accept_paused_until
            and bool(self._ready_channels())
        )
        for key, _ in self.selector.select(timeout_s):
            if key.data == "notify":
                self._receive()
            elif not self.stopping and not accept_ready(self.listener, self.round_robin):
                self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S

    def _accept_while(self, wanted: bool) -> None:
        if wanted and not self.accepting:
            self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        elif not wanted and self.accepting:
            self.selector.unregister(self.listener)
        self.accepting = wanted

    def _ready_channels(self) -> list[socket.socket]:
        return [s.channel for s in self.slots if s.ready and s.proc is not None and s.channel is not None]

    def _channel_gone(self, channel: socket.socket) -> None:
        """A worker's channel refused a connection for good (the worker closed it: stopping, or gone):
        it gets no more until it is started again."""
        for slot in self.slots:
            if slot.channel is channel:
                slot.ready = False

    # ---- workers ----------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        ours, theirs = channel_pair()
        fd = theirs.fileno()
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            WORKER_FD_ENV: str(fd),
            SUPERVISOR_ENV: str(os.getpid()),
            METRICS_DIR_ENV: self.metrics_dir,
            "NOTIFY_SOCKET": self.notify_name,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        }
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *self.argv], env=env, pass_fds=(fd,)
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        slot.channel = ours
        slot.started, slot.ready, slot.was_ready, slot.restart_at = time.monotonic(), False, False, None
        log.info(
            "worker %d started (pid %d)",
            slot.index,
            slot.proc.pid,
            extra={"event": "worker_start", "worker": slot.index, "worker_pid": slot.proc.pid},
        )

    def _check(self, slot: _Slot, now: float) -> int | None:
        """Reap ``slot``'s worker if it exited: schedule its restart, or return the exit code that stops
        the supervisor (a failure before the gateway was ever ready)."""
        if slot.proc is None or (code := slot.proc.poll()) is None:
            return None
        pid, slot.proc, slot.ready, was_ready = slot.proc.pid, None, False, slot.was_ready
        if slot.channel is not None:
            slot.channel.close()  # connections handed over but not taken are closed with it
            slot.channel = None
        multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        if self.stopping:
            return None
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if code > 0 and not was_ready and not self.announced:  # it failed to start: it would again
            log.error(
                "worker %d (pid %d) failed to start (%s): stopping",
                slot.index,
                pid,
                how,
                extra={"event": "worker_failed", "worker": slot.index, "worker_pid": pid},
            )
            return code if code > 0 else 1
        if now - slot.started >= HEALTHY_AFTER_S:
            slot.backoff_s = FIRST_BACKOFF_S
        slot.restart_at = now + slot.backoff_s
        log.warning(
            "worker %d (pid %d) exited (%s); restarting in %.1f s",
            slot.index,
            pid,
            how,
            slot.backoff_s,
            extra={"event": "worker_exit", "worker": slot.index, "worker_pid": pid, "exit": how},
        )
        slot.backoff_s = min(MAX_BACKOFF_S, slot.backoff_s * 2)
        return None

    def _receive(self) -> None:
        """One readiness message from a worker (``READY=1`` with its ``MAINPID``), if one is there."""
        try:
            data = self.notify_sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        lines = data.decode("utf-8", "replace").splitlines()
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        if fields.get("READY") != "1":
            return
        for slot in self.slots:
            if slot.proc is not None and str(slot.proc.pid) == fields.get("MAINPID"):
                slot.ready = slot.was_ready = True
        if not self.announced and all(s.was_ready for s in self.slots):
            self.announced = True
            address = f"http://{self.host}:{self.port}"
            print(f"mls-gateway listening on {address} ({len(self.slots)} workers)", flush=True)
            status = f"STATUS={len(self.slots)} workers listening on {address}"
            notify("READY=1", status, env=self._systemd_env())

    def _systemd_env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self._systemd} if self._systemd else {}

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for their graceful shutdown, SIGKILL the ones still running."""
        running = [s.proc for s in self.slots if s.proc is not None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time: killed", proc.pid)
                proc.kill()
                proc.wait()
        for slot in self.slots:
            slot.proc = None


__all__ = ["Supervisor", "inherited_channel", "is_worker"]
