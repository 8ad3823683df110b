"""Connections spread round robin over a supervisor's workers (``serve --workers N``).

A listening socket shared by several processes leaves the choice of the accepting process to a race: each
wakes for a new connection, and asyncio accepts up to its backlog of connections in one go. Measured with
28 keep-alive connections opened together (a load generator's) on 2 workers: 22 / 6, 17 / 11 and 16 / 12,
one process doing most of the work while the other idled. So the supervisor accepts, and hands each connection
to the next ready worker in turn (as Node.js's cluster module does on Linux): the connection's file
descriptor goes over a Unix ``SOCK_SEQPACKET`` socket pair of that worker (``SCM_RIGHTS``, one descriptor
a message), and the worker serves it as if it had accepted it (:class:`HandedSite`).

A worker that is not ready (starting) or gone (it closed its end: stopping, or dead) is skipped; with no
worker ready the supervisor stops accepting and connections wait in the listening socket's backlog. A
connection handed to a worker that dies before it took it is lost (its client sees the connection closed),
as an accepted connection of a dying worker would be. Descriptors arrive close-on-exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("mls_gateway")


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A (supervisor end, worker end) pair for handing connections; the supervisor's end never blocks."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.set_inheritable(True)
    return ours, theirs


def hand_over(channel: socket.socket, conn: socket.socket) -> str:
    """Send ``conn``'s descriptor to the worker at the other end of ``channel``: ``"sent"``, ``"full"``
    (its queue is: try another) or ``"gone"`` (it closed its end: stopping, or dead)."""
    try:
        socket.send_fds(channel, [b"c"], [conn.fileno()])
    except BlockingIOError:
        return "full"
    except OSError:  # ECONNRESET, EPIPE, ECONNREFUSED: nobody reads that channel any more
        return "gone"
    return "sent"


class RoundRobin:
    """Hands accepted connections to the channels ``ready()`` returns, each in turn; tells ``gone`` of a
    channel whose worker no longer reads it."""

    def __init__(
        self, ready: Callable[[], list[socket.socket]], gone: Callable[[socket.socket], None]
    ) -> None:
        self._ready = ready
        self._gone = gone
        self._turn = 0

    def hand(self, conn: socket.socket) -> bool:
        """Give ``conn`` to the next ready worker that takes it; ``False`` when none did. The caller closes
        its own descriptor either way (the worker holds a copy)."""
        channels = self._ready()
        for i in range(len(channels)):
            channel = channels[(self._turn + i) % len(channels)]
            outcome = hand_over(channel, conn)
            if outcome == "sent":
                self._turn = (self._turn + i + 1) % len(channels)
                return True
            if outcome == "gone":
                self._gone(channel)
        return False


def accept_ready(listener: socket.socket, handler: RoundRobin, limit: int = 64) -> bool:
    """Accept what the (non-blocking) listening socket has queued, up to ``limit``, and hand each
    connection on. A connection no worker takes is closed, and accepting stops for this pass (the rest
    wait in the backlog). ``False`` when the listening socket itself failed (e.g. EMFILE: out of file
    descriptors): the caller pauses accepting rather than spin on a socket that stays readable."""
    for _ in range(limit):
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return True
        except OSError as e:
            log.warning("accepting connections failed (paused): %s", e)
            return False
        with conn:
            if not handler.hand(conn):
                log.warning("no worker took a connection: closed")
                return True
    return True


class HandedSite(web.BaseSite):
    """An aiohttp site serving the connections a supervisor hands over ``channel`` (instead of accepting
    on a listening socket of its own). Stopping it stops taking connections; the runner's shutdown then
    finishes the ones it serves, as for any site."""

    __slots__ = ("_channel", "_name", "_receiving")

    def __init__(self, runner: web.BaseRunner, channel: socket.socket, name: str) -> None:
        super().__init__(runner)
        self._channel = channel
        self._name = name
        self._receiving = False

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        self._channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._receive)
        self._receiving = True

    async def stop(self) -> None:
        self._stop_receiving()
        await super().stop()

    def _stop_receiving(self) -> None:
        """Take no more connections, and close the channel: the supervisor's next hand-over to this worker
        fails, and it gives the connection to another."""
        if self._receiving:
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
            self._receiving = False
            self._channel.close()

    def _receive(self) -> None:
        """Take every connection queued on the channel and serve each."""
        while self._receiving:
            try:
                data, fds, flags, _addr = socket.recv_fds(self._channel, 16, 1, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # no more connections would come: stop, and the supervisor starts another
                log.error("the supervisor's channel failed: %s; stopping this worker", e)
                self._stop_receiving()
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if not data and not fds:  # the supervisor closed its end
                self._stop_receiving()
                return
            if flags & socket.MSG_CTRUNC:  # out of file descriptors: the kernel closed the connection
                log.warning("a handed-over connection was lost: no file descriptor left to receive it")
            for fd in fds:
                self._serve(fd)

    def _serve(self, fd: int) -> None:
        server = self._runner.server
        try:
            conn = socket.socket(fileno=fd)
        except OSError:
            _close(fd)
            return
        if server is None:  # shutting down
            conn.close()
            return
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._connect(server, conn))
        task.add_done_callback(_log_failure)

    @staticmethod
    async def _connect(server: web.Server, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(server, conn)
        except BaseException:
            conn.close()
            raise


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        socket.close(fd)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a handed-over connection could not be served: %s", task.exception())


__all__ = [
    "HandedSite",
    "RoundRobin",
    "accept_ready",
    "channel_pair",
    "hand_over",
]
