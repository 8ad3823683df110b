"""Handing accepted connections to workers (gateway.connection_handoff), in one process: real sockets, a
real TCP connection whose descriptor crosses a Unix socket pair (SCM_RIGHTS)."""

from __future__ import annotations

import socket

from gateway.connection_handoff import RoundRobin, accept_ready, channel_pair


def _received(worker_end: socket.socket) -> list[socket.socket]:
    """The connections queued on a worker's end of a channel."""
    worker_end.setblocking(False)
    out = []
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(worker_end, 16, 8)
        except BlockingIOError:
            return out
        out.extend(socket.socket(fileno=fd) for fd in fds)


def test_connections_alternate_and_each_arrives_usable() -> None:
    (a, a_worker), (b, b_worker) = channel_pair(), channel_pair()
    gone: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(4)]
    try:
        handler = RoundRobin(lambda: [a, b], gone.append)
        got_a: list[socket.socket] = []
        got_b: list[socket.socket] = []
        while len(got_a) + len(got_b) < 4:
            assert accept_ready(listener, handler)
            got_a += _received(a_worker)
            got_b += _received(b_worker)
        assert gone == []
        assert (len(got_a), len(got_b)) == (2, 2)
        for client, served in zip(clients, [got_a[0], got_b[0], got_a[1], got_b[1]], strict=True):
            client.sendall(b"ping")  # the handed descriptor is the accepted connection itself
            served.setblocking(True)
            assert served.recv(4) == b"ping"
            served.close()
    finally:
        for s in [listener, a, a_worker, b, b_worker, *clients]:
            s.close()


def test_a_gone_worker_is_skipped_and_reported_and_none_left_closes_the_connection() -> None:
    (a, a_worker), (b, b_worker) = channel_pair(), channel_pair()
    b_worker.close()  # that worker stopped (or died): it closed its end
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    gone: list[socket.socket] = []
    try:
        handler = RoundRobin(lambda: [c for c in (b, a) if c not in gone], gone.append)
        conns = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        received: list[socket.socket] = []
        while len(received) < 3:
            assert accept_ready(listener, handler)
            received += _received(a_worker)
        assert gone == [b]  # reported once, then skipped
        a_worker.close()
        lonely = socket.create_connection(listener.getsockname())
        lonely.settimeout(10)
        while not gone[1:]:
            assert accept_ready(listener, handler)
        assert gone == [b, a]
        assert lonely.recv(1) == b""  # no worker took it: closed, not left hanging
        for c in [*conns, *received, lonely]:
            c.close()
    finally:
        for s in [listener, a, b]:
            s.close()


def test_a_listener_that_fails_pauses_accepting() -> None:
    """An accept that fails for the listening socket itself (here: it is not listening) answers False:
    the supervisor pauses instead of spinning on a socket that stays readable."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        assert accept_ready(sock, RoundRobin(list, lambda c: None)) is False
    finally:
        sock.close()
