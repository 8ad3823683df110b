"""Two real ``mls-gateway serve`` processes on one data folder (SQLite): each background task's lease is
held by exactly one of them (``mlsgw_lease_held``), a kill -9 of the holder moves every lease to the other
after the TTL, and a long-poll on one process is answered when a message is posted through the other
(the wake-up crosses processes through the store's notifications, gateway.notifications).

Waits are bounded by a guard against a hang; the long-poll's bound is its own ``wait``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.leases import LEASED_TASKS

from .gwclient import Client, GatewayServer, Hosted

GUARD_S = 90.0
#: A short lease for the test (the default is 15 s): takeover after a kill -9 within the guard.
ENV = {"MLSGW_LEASE_TTL_S": "1", "MLSGW_LEASE_CLOCK_MARGIN_S": "0.2"}
WAIT_S = 30  # the long-poll's wait (the gateway caps it at 30 s)


def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not cond():
        assert time.monotonic() < deadline, f"not within {GUARD_S} s: {what}"
        time.sleep(0.1)


def held(server: GatewayServer, lease: str) -> float:
    return server.admin.metric("mlsgw_lease_held", lease=lease)


def test_two_processes_share_leases_and_wake_each_other(tmp_path: Path) -> None:
    a = GatewayServer(tmp_path / "gw", env=ENV)
    b = a.another_process()
    try:
        a.start()
        b.start()
        for lease in LEASED_TASKS:
            until(lambda n=lease: held(a, n) + held(b, n) == 1, f"exactly one holder of {lease}")
        latency = _long_poll_answered_across_processes(a, b)
        print(f"long-poll on one process answered {latency:.3f} s after a send through the other")
        holder, other = (a, b) if held(a, LEASED_TASKS[0]) == 1 else (b, a)
        holder.kill()  # no release: the other takes over once the TTL passed
        for lease in LEASED_TASKS:
            until(lambda n=lease: held(other, n) == 1, f"{lease} taken over after the holder's kill -9")
    finally:
        a.kill()
        b.kill()


def _long_poll_answered_across_processes(a: GatewayServer, b: GatewayServer) -> float:
    """Bob's inbox is long-polled on ``a``; alice sends through ``b`` (whose hosted delivery writes bob's
    event); the poll is answered with it before its wait ends. Returns send-to-answer seconds."""
    _, token = a.admin.create_tenant("several")
    api_a, api_b = a.client(token), b.client(token)
    alice, bob = Hosted.create(api_a, "alice"), Hosted.create(api_a, "bob")
    gid = alice.create_group()
    alice.commit(gid, {"add": [bob.key_package()]})
    until(lambda: bob.api.get(bob.path(gid)).status == 200, "bob joined from the log")
    inbox = f"/v1/identities/{bob.identity_id}/inbox"
    until(lambda: bool(api_a.get(inbox).expect(200)["events"]), "bob's joined event")
    cursor = api_a.get(inbox).expect(200)["next_cursor"]
    result: dict[str, Any] = {}

    def poll() -> None:
        r = Client(a.port, token, timeout=GUARD_S).get(f"{inbox}?after={cursor}&wait={WAIT_S}")
        result["answered"], result["r"] = time.monotonic(), r

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)  # most likely inside the wait (if not, its first read finds the event: same answer)
    sent = time.monotonic()
    Hosted(api_b, alice.identity_id, "alice").send(gid, b"across processes")
    thread.join(GUARD_S)
    assert not thread.is_alive()
    events = result["r"].expect(200)["events"]
    assert events, "the long-poll ended at its timeout without the event"
    latency = float(result["answered"] - sent)
    assert latency < WAIT_S  # answered before the long-poll's timeout
    return latency
