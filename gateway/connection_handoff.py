"""Connections spread round robin over a supervisor's workers (``serve --workers N``).

A listening socket shared by several processes leaves the choice of the accepting process to a race: each
wakes for a new connection, and asyncio accepts up to its backlog of connections in one go. Measured with
24 keep-alive clients connecting at once on 2 workers: 22 / 6, 17 / 11 and 16 / 12 connections, and one
process doing most of the work while the other idled. So the supervisor accepts, and hands each connection
to the next ready worker in turn (as Node.js's cluster module does on Linux): the connection's file
descriptor goes over a Unix ``SOCK_SEQPACKET`` socket pair of that worker (``SCM_RIGHTS``, one descriptor
a message), and the worker serves it as if it had accepted it (:class:`HandedSite`).

A worker that is not ready (starting) or gone (its end of the pair closed) is skipped; with no worker ready
the supervisor stops accepting and connections wait in the listening socket's backlog. A connection handed
to a worker that dies before it took it is lost (its client sees the connection closed), as an accepted
connection of a dying worker would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("mls_gateway")

#: Descriptors a worker takes from its channel per read (several connections may be queued).
RECEIVE_BATCH = 32


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A (supervisor end, worker end) pair for handing connections; the supervisor's end never blocks."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.set_inheritable(True)
    return ours, theirs


def hand_over(channel: socket.socket, conn: socket.socket) -> bool:
    """Send ``conn``'s descriptor to the worker at the other end of ``channel``: whether it went (not when
    the worker is gone or its queue is full)."""
    try:
        socket.send_fds(channel, [b"c"], [conn.fileno()])
    except OSError:  # BlockingIOError (its queue is full), BrokenPipeError (gone), ...
        return False
    return True


class RoundRobin:
    """Hands accepted connections to the channels ``ready()`` returns, each in turn."""

    def __init__(self, ready: Callable[[], list[socket.socket]]) -> None:
        self._ready = ready
        self._turn = 0

    def hand(self, conn: socket.socket) -> bool:
        """Give ``conn`` to the next ready worker that takes it; ``False`` when none did. The caller closes
        its own descriptor either way (the worker holds a copy)."""
        channels = self._ready()
        for i in range(len(channels)):
            channel = channels[(self._turn + i) % len(channels)]
            if hand_over(channel, conn):
                self._turn = (self._turn + i + 1) % len(channels)
                return True
        return False


def accept_ready(listener: socket.socket, handler: RoundRobin, limit: int = 64) -> int:
    """Accept what the (non-blocking) listening socket has queued, up to ``limit``, and hand each
    connection on (closed when no worker took it); returns how many were accepted."""
    accepted = 0
    while accepted < limit:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:  # e.g. EMFILE, ECONNABORTED: this connection only
            log.warning("accepting a connection failed: %s", e)
            break
        accepted += 1
        with conn:
            if not handler.hand(conn):
                log.warning("no worker took a connection: closed")
    return accepted


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
        if self._receiving:
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
            self._receiving = False

    def _receive(self) -> None:
        """Take every connection queued on the channel and serve each."""
        while self._receiving:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._channel, 16, RECEIVE_BATCH)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.error("the supervisor's channel failed: %s", e)
                self._stop_receiving()
                return
            if not data and not fds:  # the supervisor closed its end
                self._stop_receiving()
                return
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
