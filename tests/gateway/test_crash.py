"""Crash safety: ``kill -9`` of a busy server loses no acknowledged work, doubles none, forks no group.

Several client threads, one per group, stream steps against groups whose members are all hosted on one
server: application messages (every other member processes them), self-updates and adds of fresh key
packages (the joiner joins from the Welcome; every other member processes the commit). Every
state-changing request carries an Idempotency-Key derived from (group, step, request), and every body is
a function of the step and of earlier answers, so a step can be run again word for word.

The server is killed with SIGKILL in the middle of the stream, three times, and restarted on the same data
folder. Then each thread runs its interrupted step again from its first request:

* a request answered 2xx before the kill must get the very same answer again (its idempotency record
  committed with its work: the work is reflected);
* the request in flight is either answered from its record (it had committed) or performed now, once;
* the rest of the step is performed normally.

Finally every group's hosted members agree on epoch and epoch_authenticator, the epoch equals the number
of commit steps completed (no commit applied twice, none lost), every acknowledged request of the whole
run still replays to its first answer, and the groups keep working (a new round of messages and commits
after the restart: a sender whose acknowledged state was lost would reuse a generation and be refused).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from .gwclient import Client, GatewayServer, Hosted, Response, b64, unb64

#: On PostgreSQL the gateway process is killed and the database survives: the same guarantees (issue 15).
pytestmark = pytest.mark.both_stores

GROUPS = 4
STREAM_SECONDS = (2.0, 1.2, 2.0)  # three crashes
MAX_MEMBERS = 5

CONNECTION_ERRORS = (OSError, http.client.HTTPException)


class Crashed(Exception):
    """The server went away during a request."""


@dataclass
class Sent:
    """One state-changing request and, once answered, its answer."""

    method: str
    path: str
    body: Any
    idem: str
    response: Response | None = None


@dataclass
class GroupDriver:
    """One client thread's group: the hosted members, the model of the epoch, the requests made."""

    index: int
    api: Client
    members: list[Hosted]
    gid: str
    epoch: int = 1
    step: int = 0
    acked: list[Sent] = field(default_factory=list)  # every 2xx answer of the run
    in_flight: Sent | None = None
    replaying: dict[str, Response] = field(default_factory=dict)  # idem key -> answer before the crash
    error: BaseException | None = None
    commit_steps: int = 0
    requests_replayed: int = 0  # acknowledged before a kill, answered again from the record
    in_flight_done: int = 0  # epoch-changing requests in flight at a kill that had committed
    in_flight_redone: int = 0  # ... that had not, and were performed on the retry

    # ---- requests ----------------------------------------------------------------------------------
    def post(self, path: str, body: Any, idem: str, expect: int) -> Response:
        sent = Sent("POST", path, body, f"g{self.index}-s{self.step}-{idem}")
        self.in_flight = sent
        try:
            r = self.api.post(path, body, idem=sent.idem)
        except CONNECTION_ERRORS as e:
            raise Crashed(f"{path}: {e!r}") from e
        assert r.status == expect, f"group {self.index} step {self.step} {path}: {r.status} {r.body}"
        before = self.replaying.pop(sent.idem, None)
        if before is not None:
            assert r.body == before.body, f"{sent.idem}: the replayed answer differs from the first one"
            self.requests_replayed += 1
        sent.response = r
        self.in_flight = None
        self.acked.append(sent)
        return r

    # ---- steps (deterministic in the step number and the answers) ---------------------------------
    def plan(self) -> tuple[str, Hosted]:
        """The kind of the current step and the member who acts."""
        rng = random.Random(self.index * 100_003 + self.step)
        kind = rng.choice(["message", "message", "update", "add"])
        if kind == "add" and len(self.members) >= MAX_MEMBERS:
            kind = "update"
        return kind, self.members[rng.randrange(len(self.members))]

    def run_step(self) -> None:
        kind, actor = self.plan()
        others = [m for m in self.members if m is not actor]
        if kind == "message":
            text = f"g{self.index} step {self.step}".encode()
            msg = self.post(actor.path(self.gid, "/messages"), {"data": b64(text)}, "send", 200)["message"]
            for m in others:
                r = self.post(m.path(self.gid, "/process"), {"message": msg}, f"proc-{m.name}", 200)
                assert unb64(r["data"]) == text
            return
        joiner: Hosted | None = None
        body: dict[str, Any] = {"update": True}
        if kind == "add":
            name = f"g{self.index}-j{self.step}"
            made = self.post("/v1/identities", {"name": name}, "identity", 201)
            joiner = Hosted(self.api, made["identity_id"], name)
            kp = self.post(f"/v1/identities/{joiner.identity_id}/key-packages", {"count": 1}, "kp", 201)
            body = {"add": [kp["key_packages"][0]["key_package"]]}
        c = self.post(actor.path(self.gid, "/commits"), body, "commit", 200)
        assert c["epoch"] == self.epoch + 1, f"group {self.index}: commit to {c['epoch']} from {self.epoch}"
        for m in others:
            r = self.post(m.path(self.gid, "/process"), {"message": c["commit"]}, f"proc-{m.name}", 200)
            assert r["epoch"] == self.epoch + 1
        if joiner is not None:
            j = self.post(joiner.path(tail="/join"), {"welcome": c["welcome"]}, "join", 201)
            assert j["epoch"] == self.epoch + 1
            self.members.append(joiner)
        self.epoch += 1
        self.commit_steps += 1

    def stream(self, stop: threading.Event) -> None:
        """Run steps until told to stop or the server goes away (the interrupted step is kept)."""
        try:
            while not stop.is_set():
                self.run_step()
                self.step += 1
        except Crashed:
            pass
        except BaseException as e:  # reported by the test
            self.error = e

    def resume(self) -> None:
        """Run the interrupted step again from its start: acknowledged requests must replay."""
        self.replaying = {
            s.idem: s.response
            for s in self.acked
            if s.idem.startswith(f"g{self.index}-s{self.step}-") and s.response is not None
        }
        self.acked = [s for s in self.acked if s.idem not in self.replaying]
        # An epoch-changing request in flight (a commit, or a member processing it): its member is at the
        # step's epoch (it had not committed) or one past it (it had); after the retry, one past it.
        watch: Hosted | None = None
        flight = self.in_flight
        if (
            flight is not None
            and self.plan()[0] != "message"
            and flight.path.endswith(("/commits", "/process"))
        ):
            watch = next(m for m in self.members if flight.path.startswith(m.path(self.gid)))
            before = watch.state(self.gid)[0]
            assert before in (self.epoch, self.epoch + 1), f"group {self.index}: {watch.name} at {before}"
        members_before = list(self.members)
        start_epoch = self.epoch
        try:
            self.run_step()
        except Crashed as e:
            raise AssertionError(f"group {self.index}: the restarted server went away: {e}") from e
        if watch is not None:
            assert watch.state(self.gid)[0] == start_epoch + 1, (
                f"{flight and flight.idem}: applied twice or lost"
            )
            if before == start_epoch + 1:
                self.in_flight_done += 1
            else:
                self.in_flight_redone += 1
        assert not self.replaying, f"acknowledged requests not made again: {sorted(self.replaying)}"
        assert self.members[: len(members_before)] == members_before
        self.step += 1


def _setup(server: GatewayServer) -> list[GroupDriver]:
    api = server.client(server.admin.create_tenant("crash")[1])
    drivers = []
    for g in range(GROUPS):
        a, b = Hosted.create(api, f"g{g}-a"), Hosted.create(api, f"g{g}-b")
        gid = a.create_group()
        c = a.commit(gid, {"add": [b.key_package()]})
        b.join(c["welcome"])
        drivers.append(GroupDriver(g, api, [a, b], gid))
    return drivers


def _stream(drivers: list[GroupDriver], server: GatewayServer, seconds: float) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=d.stream, args=(stop,), name=f"crash-g{d.index}") for d in drivers]
    for t in threads:
        t.start()
    time.sleep(seconds)
    server.kill()  # SIGKILL in the middle of the stream
    stop.set()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a client thread hangs after the kill"
    for d in drivers:
        if d.error is not None:
            raise AssertionError(f"group {d.index} failed before the kill: {d.error!r}") from d.error


def _check_groups(drivers: list[GroupDriver]) -> None:
    for d in drivers:
        states = {m.name: m.state(d.gid) for m in d.members}
        assert len(set(states.values())) == 1, f"group {d.index} forked: {states}"
        epoch = next(iter(states.values()))[0]
        assert epoch == d.epoch == 1 + d.commit_steps, (
            f"group {d.index}: epoch {epoch}, expected {1 + d.commit_steps} after {d.commit_steps} commits"
        )


@pytest.mark.timeout(240)  # a deadlock guard (a loaded 2-core machine; nothing asserts on elapsed time)
def test_kill_9_mid_stream_loses_nothing_and_doubles_nothing(gateway: GatewayServer) -> None:
    drivers = _setup(gateway)
    for seconds in STREAM_SECONDS:
        _stream(drivers, gateway, seconds)
        gateway.start()
        assert gateway.client().get("/readyz").status == 200
        for d in drivers:
            d.resume()
        _check_groups(drivers)

    total_steps = sum(d.step for d in drivers)
    assert total_steps >= 2 * GROUPS, f"the stream did too little to mean anything ({total_steps} steps)"
    print(
        f"crash test: {total_steps} steps, {sum(len(d.acked) for d in drivers)} acknowledged requests, "
        f"{sum(d.requests_replayed for d in drivers)} answered again after a kill, in flight at a kill: "
        f"{sum(d.in_flight_done for d in drivers)} had committed, {sum(d.in_flight_redone for d in drivers)} "
        "performed on the retry"
    )

    # Every acknowledged request of the whole run replays to its first answer.
    for d in drivers:
        for s in d.acked:
            assert s.response is not None
            r = d.api.post(s.path, s.body, idem=s.idem)
            assert (r.status, r.body) == (s.response.status, s.response.body), f"{s.idem} replays differently"

    # The groups keep working: a message from every member, then one more commit, in every group.
    for d in drivers:
        for sender in d.members:
            msg = sender.send(d.gid, b"after the crashes")
            for m in d.members:
                if m is not sender:
                    assert unb64(m.process(d.gid, msg)["data"]) == b"after the crashes"
        c = d.members[-1].commit(d.gid, {"update": True})
        for m in d.members[:-1]:
            m.process(d.gid, c["commit"])
        d.epoch += 1
        d.commit_steps += 1
    _check_groups(drivers)
    assert gateway.stop() == 0


def _ops(server: GatewayServer, operation: str) -> float:
    return server.client().metric("mlsgw_mls_operations_total", operation=operation, outcome="ok")


def _hsm_signs(server: GatewayServer) -> float:
    return server.client().metric("mlsgw_hsm_operations_total", operation="sign")


def _wait(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.timeout(120)
def test_answer_lost_then_kill_9_the_retry_gets_the_stored_answer(gateway: GatewayServer) -> None:
    """Requests that committed but whose answers never reached the client (it hung up), then a crash:
    the retries with the same Idempotency-Key are answered from the records and do the work no second
    time (no new epoch, no new signature)."""
    api = gateway.client(gateway.admin.create_tenant("lost")[1])
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    c = alice.commit(gid, {"add": [bob.key_package()]})
    bob.join(c["welcome"])

    commit_body = {"update": True}
    lost = [api.fire("POST", alice.path(gid, "/commits"), commit_body, idem="lost-commit")]
    _wait(lambda: alice.state(gid)[0] == 2, "the commit to be merged")
    send_body = {"data": b64(b"lost answer")}
    sent_before = _ops(gateway, "protect")
    lost.append(api.fire("POST", alice.path(gid, "/messages"), send_body, idem="lost-send"))
    _wait(lambda: _ops(gateway, "protect") == sent_before + 1, "the message to be protected")
    gateway.kill()
    for conn in lost:  # the answers are never read
        conn.close()
    gateway.start()

    signs = _hsm_signs(gateway)
    r = alice.post(gid, "/commits", commit_body, idem="lost-commit").expect(200)
    assert r["epoch"] == 2
    m = alice.post(gid, "/messages", send_body, idem="lost-send").expect(200)
    assert _hsm_signs(gateway) == signs, "a retry signed again: the work was done twice"
    assert alice.state(gid)[0] == 2
    # The stored answers are the real ones: bob follows the commit and reads the message.
    assert bob.process(gid, r["commit"])["epoch"] == 2
    assert unb64(bob.process(gid, m["message"])["data"]) == b"lost answer"
    assert alice.state(gid) == bob.state(gid)
    # Same key, other body: still a conflict after the crash.
    assert (
        alice.post(gid, "/commits", {"update": True, "handshake": "private"}, idem="lost-commit").status
        == 409
    )
    assert gateway.stop() == 0
