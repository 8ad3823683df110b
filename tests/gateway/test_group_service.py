"""The gateway as the delivery service of its groups (api-delivery.md "Guarantees, which tests must show").

Every test drives a real ``mls-gateway serve`` over HTTP and WebSocket only; the group members are hosted
identities, so the gateway applies every accepted log entry to each of them in the background — the tests
never call ``/process``: they only read (a member's group view, ``GET /v1/groups/{gid}``, inboxes).

* No fork under concurrency: 20 members commit a self-update at the same epoch, three rounds: exactly one
  is accepted per round, the 19 others answer ``409 conflict`` with the new ``current_epoch``; without
  ``epoch`` all 20 are accepted at 20 successive epochs. Each time every member reaches the log's epoch
  with the same epoch authenticator and exported secret.
* Nothing lost in concurrent sends: 40 concurrent application messages from three senders reach every
  other member's inbox exactly once (by (group, seq)), in log order, with their plaintexts.
* Bots talk through inboxes: a long-poll returns an event that arrives while it waits; a WebSocket pushes
  events and takes ``{"ack": cursor}``; a webhook whose receiver fails the first deliveries gets every
  event, signed, in order (a retry repeats the failed cursor, nothing is skipped).
* kill -9 during a burst of messages and commits (twice): every request answered 2xx before the kill is
  delivered after the restart, exactly once per receiver; requests in flight are retried with their
  Idempotency-Key and counted once; the members converge on one epoch (no fork, no commit lost or applied
  twice).
* A rejected submission (a stale commit) changes nothing: not the log, not the member, not any inbox.

Waits are polls with generous deadlines (deadlock guards only); nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.webhooks import SIGNATURE_HEADER, verify_signature
from tests.postgres_cluster import fresh_database

from .devices import Deadline
from .gwclient import Client, GatewayServer, Hosted, Response, b64, free_port, unb64

#: Deadlock guard of one wait (seconds): generous, for a loaded 2-core machine.
GUARD = 120.0
#: Pause between two reads of a polled condition (not a synchronisation: the condition is re-checked).
POLL_S = 0.05
EXPORT = {"label": "group-service", "context": b64(b"ctx"), "length": 32}
WEBHOOK_SECRET = "whsec_group_service_" + "s" * 16
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


# ---- servers and groups ----------------------------------------------------------------------------------


def _server(folder: Path, database: str | None = None) -> GatewayServer:
    env = {"MLSGW_WEBHOOK_ALLOW_PRIVATE": "1", **({"MLSGW_DATABASE": database} if database else {})}
    server = GatewayServer(folder, env=env)
    server.start()
    return server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayServer]:
    """One server for the tests that only add groups of their own (loopback webhooks allowed), on each
    store: the data folder's SQLite, and a database of the session's PostgreSQL cluster (issue 15)."""
    database = None
    if request.param == "postgresql":
        database = fresh_database(request.getfixturevalue("postgres_cluster"), "group_service")
    s = _server(tmp_path_factory.mktemp("group-service") / "gw", database)
    yield s
    s.kill()


def tenant(server: GatewayServer, name: str) -> Client:
    _, token = server.admin.create_tenant(name)
    return server.client(token)


def log_head(api: Client, gid: str) -> dict[str, Any]:
    """``GET /v1/groups/{gid}`` with the tenant token: the log's ``{epoch, seq, members}``."""
    return dict(api.get(f"/v1/groups/{gid}").expect(200).body)


def make_group(api: Client, size: int, prefix: str) -> tuple[list[Hosted], str]:
    """``size`` hosted members of a new group: the first creates it and adds the others in one commit (which
    registers the group in the log); the others join from the Welcome by themselves. Returns once every
    member reports epoch 1."""
    members = [Hosted.create(api, f"{prefix}-{n}") for n in range(size)]
    gid = members[0].create_group()
    kps = [m.key_package() for m in members[1:]]
    assert members[0].commit(gid, {"add": kps})["epoch"] == 1
    head = log_head(api, gid)
    assert (head["epoch"], head["seq"]) == (1, 1), head
    converge(api, members, gid)
    return members, gid


def member_view(member: Hosted, gid: str) -> dict[str, Any] | None:
    """The member's view of the group, ``None`` while it has not joined (404)."""
    r = member.api.get(member.path(gid))
    if r.status == 404:
        return None
    return dict(r.expect(200).body)


def converge(api: Client, members: list[Hosted], gid: str, guard: float = GUARD) -> tuple[int, str]:
    """Poll (reads only) until every member is at the log's epoch; then they must agree on the epoch
    authenticator and an exported secret. Returns (epoch, epoch_authenticator)."""
    deadline = Deadline(guard, f"members of {gid} converging")
    epoch = log_head(api, gid)["epoch"]
    views: dict[str, dict[str, Any] | None] = {m.identity_id: None for m in members}
    for m in members:
        while True:
            view = member_view(m, gid)
            views[m.identity_id] = view
            if view is not None and view["epoch"] >= epoch:
                break
            deadline.check(f"({m.name} at {None if view is None else view['epoch']}, log at {epoch})")
            time.sleep(POLL_S)
    assert log_head(api, gid)["epoch"] == epoch, "the log moved while nobody committed"
    states = {(v["epoch"], v["epoch_authenticator"]) for v in views.values() if v is not None}
    assert len(states) == 1, f"fork: the members disagree at log epoch {epoch}: {states}"
    secrets = {m.post(gid, "/export", EXPORT).expect(200)["secret"] for m in members}
    assert len(secrets) == 1, f"fork: the members export {len(secrets)} different secrets"
    (state,) = states
    assert state[0] == epoch
    return state


def concurrently(work: list[Callable[[], Response]]) -> list[Response]:
    """Run every call on its own thread, released together; the answers in order."""
    barrier = threading.Barrier(len(work))

    def run(call: Callable[[], Response]) -> Response:
        barrier.wait(timeout=GUARD)
        return call()

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        return list(pool.map(run, work))


# ---- inboxes ---------------------------------------------------------------------------------------------


@dataclass
class Inbox:
    """A hosted identity's inbox, read with long-polls (``GET …/inbox?after=&wait=``); keeps every event."""

    api: Client
    identity_id: str
    cursor: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def path(self, wait: int, after: Any = None) -> str:
        query = {"wait": str(wait)}
        if after is not None:
            query["after"] = str(after)
        return f"/v1/identities/{self.identity_id}/inbox?{urllib.parse.urlencode(query)}"

    def page(self, body: Any) -> list[dict[str, Any]]:
        """Take one page's events (checked for their fields) and advance the cursor."""
        assert isinstance(body, dict) and isinstance(body.get("events"), list), body
        events: list[dict[str, Any]] = body["events"]
        for e in events:
            assert {"cursor", "group_id", "seq", "kind"} <= set(e), e
        self.events.extend(events)
        nxt = body.get("next_cursor")
        self.cursor = nxt if nxt is not None else (events[-1]["cursor"] if events else self.cursor)
        return events

    def poll(self, wait: int = 5) -> list[dict[str, Any]]:
        return self.page(self.api.get(self.path(wait, self.cursor)).expect(200).body)

    def of(self, gid_bytes: bytes, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if unb64(e["group_id"]) == gid_bytes and (kind is None or e["kind"] == kind)
        ]

    def texts(self, gid_bytes: bytes) -> list[bytes]:
        return [unb64(e["data"]) for e in self.of(gid_bytes, "application")]

    def wait_for(self, gid_bytes: bytes, wanted: set[bytes], deadline: Deadline) -> None:
        """Read until every plaintext of ``wanted`` arrived, then once more without waiting (a trailing
        duplicate would show)."""
        while not wanted <= set(self.texts(gid_bytes)):
            missing = len(wanted - set(self.texts(gid_bytes)))
            deadline.check(f"(inbox of {self.identity_id}: {missing} messages missing)")
            self.poll(min(5, max(1, int(deadline.remaining()))))
        self.poll(0)


def gid_bytes(gid: str) -> bytes:
    return unb64(gid.replace("-", "+").replace("_", "/") + "=" * (-len(gid) % 4))


def check_log_order(inbox: Inbox, gid: bytes) -> None:
    """The group's events came in log order, each log entry once: seq strictly increasing."""
    seqs = [e["seq"] for e in inbox.of(gid)]
    assert seqs == sorted(set(seqs)), f"inbox of {inbox.identity_id}: seqs not strictly increasing: {seqs}"


# ---- 1. no fork under concurrency ------------------------------------------------------------------------


def test_twenty_members_commit_at_once_and_never_fork(server: GatewayServer) -> None:
    api = tenant(server, "no-fork")
    members, gid = make_group(api, 20, "nf")
    epoch = 1
    for _ in range(3):
        answers = concurrently(
            [lambda m=m, e=epoch: m.post(gid, "/commits", {"update": True, "epoch": e}) for m in members]
        )
        won = [r for r in answers if r.status == 200]
        lost = [r for r in answers if r.status != 200]
        assert len(won) == 1, f"{len(won)} commits accepted at epoch {epoch}: {[r.status for r in answers]}"
        assert won[0]["epoch"] == epoch + 1
        for r in lost:
            assert r.status == 409 and r.code == "conflict", (r.status, r.body)
            assert r.body.get("current_epoch") == epoch + 1, r.body
        epoch += 1
        head = log_head(api, gid)
        assert head["epoch"] == epoch, head
        assert converge(api, members, gid)[0] == epoch

    # Without ``epoch``: each commit is built on everything accepted before it; all are accepted.
    answers = concurrently([lambda m=m: m.post(gid, "/commits", {"update": True}) for m in members])
    statuses = [(r.status, r.code) for r in answers]
    assert all(r.status == 200 for r in answers), f"commits without epoch: {statuses}"
    assert sorted(r["epoch"] for r in answers) == list(range(epoch + 1, epoch + 21))
    epoch += 20
    assert log_head(api, gid)["epoch"] == epoch
    assert converge(api, members, gid)[0] == epoch


# ---- 2. nothing lost in concurrent sends -----------------------------------------------------------------


def test_concurrent_messages_reach_every_inbox_once_in_log_order(server: GatewayServer) -> None:
    api = tenant(server, "sends")
    members, gid = make_group(api, 4, "snd")
    group = gid_bytes(gid)
    senders = members[:3]
    sent = [(senders[n % 3], b"message %d from %s" % (n, senders[n % 3].name.encode())) for n in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda s: s[0].post(gid, "/messages", {"data": b64(s[1])}), sent))
    assert [r.status for r in answers] == [200] * 40, [(r.status, r.body) for r in answers if r.status != 200]
    assert log_head(api, gid)["seq"] == 1 + 40

    deadline = Deadline(GUARD, "messages reaching the inboxes")
    leaf_of = {m.identity_id: m.group(gid)["own_leaf_index"] for m in members}
    sender_of = {data: s.identity_id for s, data in sent}
    seq_of: dict[bytes, int] = {}
    for m in members:
        inbox = Inbox(api, m.identity_id)
        wanted = {data for s, data in sent if s is not m}
        inbox.wait_for(group, wanted, deadline)
        texts = inbox.texts(group)
        assert sorted(texts) == sorted(wanted), f"{m.name}: extra or repeated messages"
        assert not inbox.of(group, "rejected"), inbox.of(group, "rejected")
        check_log_order(inbox, group)
        for e in inbox.of(group, "application"):
            assert e["sender"]["leaf_index"] == leaf_of[sender_of[unb64(e["data"])]], e
            # Every receiver sees a message at the same place of the log.
            assert seq_of.setdefault(unb64(e["data"]), e["seq"]) == e["seq"]
    assert sorted(seq_of.values()) == list(range(2, 42))
    converge(api, members, gid)


# ---- 3. bots talk through inboxes ------------------------------------------------------------------------


def test_long_poll_returns_an_event_that_arrives_while_it_waits(server: GatewayServer) -> None:
    api = tenant(server, "long-poll")
    (alice, bob), gid = make_group(api, 2, "lp")
    inbox = Inbox(api, bob.identity_id)
    inbox.wait_for(gid_bytes(gid), set(), Deadline(GUARD, "bob's join event"))
    assert [e["kind"] for e in inbox.events] == ["joined"], inbox.events

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=GUARD)
    try:
        conn.request("GET", inbox.path(30, inbox.cursor), headers={"Authorization": f"Bearer {api.token}"})
        # A second, short long-poll after the same cursor comes back empty: nothing is there yet ...
        assert inbox.api.get(inbox.path(1, inbox.cursor)).expect(200)["events"] == []
        # ... and the first one is still waiting (no answer on its socket).
        assert conn.sock is not None
        assert select.select([conn.sock], [], [], 0)[0] == [], "the long-poll answered before any event"
        alice.send(gid, b"while you wait")
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200, body
    events = inbox.page(body)
    assert [(e["kind"], unb64(e["data"])) for e in events] == [("application", b"while you wait")], events


async def _websocket_session(
    server: GatewayServer, token: str, identity_id: str, after: Any, send: Callable[[bytes], None], n: int
) -> list[dict[str, Any]]:
    """Connect to the inbox socket, send ``n`` messages (from a thread), take the ``n`` pushed events and
    ack the last one."""
    url = f"http://127.0.0.1:{server.port}/v1/identities/{identity_id}/inbox/ws?after={after}"
    got: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        for k in range(n):
            await asyncio.to_thread(send, b"pushed %d" % k)
        while len(got) < n:
            got.append(json.loads(await ws.receive_str(timeout=GUARD)))
        await ws.send_str(json.dumps({"ack": got[-1]["cursor"]}))
        await ws.close()
    return got


def test_websocket_pushes_events_and_takes_acks(server: GatewayServer) -> None:
    api = tenant(server, "websocket")
    (alice, carol), gid = make_group(api, 2, "ws")
    inbox = Inbox(api, carol.identity_id)
    inbox.wait_for(gid_bytes(gid), set(), Deadline(GUARD, "carol's join event"))
    joined = inbox.cursor
    got = asyncio.run(
        _websocket_session(server, str(api.token), carol.identity_id, joined, lambda d: alice.send(gid, d), 5)
    )
    assert [(e["kind"], unb64(e["data"])) for e in got] == [
        ("application", b"pushed %d" % k) for k in range(5)
    ]
    assert [e["seq"] for e in got] == list(range(2, 7))
    # The ack deleted every event up to the last pushed one (the socket's acks work like POST …/ack).
    deadline = Deadline(GUARD, "the WebSocket ack taking effect")
    while (left := api.get(Inbox(api, carol.identity_id).path(0)).expect(200)["events"]) != []:
        deadline.check(f"({len(left)} events left)")
        time.sleep(POLL_S)


class WebhookReceiver:
    """A local aiohttp server (on a thread of its own) taking webhook deliveries: it verifies every
    signature, answers 500 to the first ``fail_first`` requests and 200 afterwards, and logs every request
    as (cursor, status)."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.log: list[tuple[int, int]] = []
        self.bodies: dict[int, dict[str, Any]] = {}
        self.problems: list[str] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            if not verify_signature(WEBHOOK_SECRET, body, request.headers.get(SIGNATURE_HEADER, "")):
                self.problems.append(f"bad signature on {body[:80]!r}")
            event = json.loads(body)
            status = 500 if len(self.log) < self.fail_first else 200
            self.log.append((int(event["cursor"]), status))
            if status == 200:
                self.bodies[int(event["cursor"])] = event
        return web.Response(status=status)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(GUARD)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(GUARD)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(GUARD)
        self.loop.close()

    def delivered(self) -> list[int]:
        with self.lock:
            return [c for c, status in self.log if status == 200]


def test_webhook_gets_every_event_in_order_through_failures(server: GatewayServer) -> None:
    api = tenant(server, "webhook")
    (alice, dave), gid = make_group(api, 2, "wh")
    inbox = Inbox(api, dave.identity_id)
    inbox.wait_for(gid_bytes(gid), set(), Deadline(GUARD, "dave's join event"))
    with WebhookReceiver(fail_first=3) as receiver:
        body = {"url": receiver.url, "secret": WEBHOOK_SECRET}
        api.request("PUT", f"/v1/identities/{dave.identity_id}/webhook", body).expect(200)
        texts = [b"hook %d" % k for k in range(6)]
        for t in texts:
            alice.send(gid, t)
        inbox.wait_for(gid_bytes(gid), set(texts), Deadline(GUARD, "dave's inbox"))
        cursors = [int(e["cursor"]) for e in inbox.events[1:]]  # the events after the PUT
        deadline = Deadline(GUARD, "webhook deliveries")
        while len(receiver.delivered()) < len(cursors):
            deadline.check(f"({receiver.log})")
            time.sleep(POLL_S)
        with receiver.lock:
            log, bodies, problems = list(receiver.log), dict(receiver.bodies), list(receiver.problems)
    assert not problems, problems
    # In order, nothing skipped, nothing early: each request is for the first event not yet answered 200
    # (at least once: a failed cursor is sent again, and only it).
    i = 0
    for cursor, status in log:
        if i > 0 and cursor == cursors[i - 1]:
            continue  # at least once: a repeat of the event just delivered
        assert i < len(cursors) and cursor == cursors[i], f"sent {cursor} while {cursors[i:]} waited: {log}"
        i += status == 200
    assert i == len(cursors) and [s for _, s in log].count(500) == 3, log
    assert [unb64(bodies[c]["data"]) for c in cursors] == texts


# ---- 4. kill -9 during a burst ---------------------------------------------------------------------------

#: Steps per client thread (a bound: the kill comes well before the threads are through).
BURST_STEPS = 40
#: Acknowledged requests before the kill.
ACKED_BEFORE_KILL = 20
#: Kills (each in the middle of a burst of its own).
KILLS = 2


@dataclass
class Sent:
    """One state-changing request of the burst, with its Idempotency-Key and, once answered, its answer."""

    member: Hosted
    tail: str
    body: dict[str, Any]
    idem: str
    data: bytes | None = None  # the plaintext of a message
    answer: Response | None = None


@dataclass
class Burst:
    """Client threads, one per member, sending messages (and, for some, self-updates without ``epoch``)
    until the server goes away."""

    gid: str
    cycle: int
    acked: list[Sent] = field(default_factory=list)
    in_flight: list[Sent] = field(default_factory=list)
    unexpected: list[tuple[int, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, member: Hosted, step: int, commits: bool) -> Sent:
        idem = f"burst-{self.cycle}-{member.name}-{step}"
        if commits and step % 2:
            return Sent(member, "/commits", {"update": True}, idem)
        data = b"burst %d %s %d" % (self.cycle, member.name.encode(), step)
        return Sent(member, "/messages", {"data": b64(data)}, idem, data)

    def run(self, member: Hosted, commits: bool) -> None:
        for step in range(BURST_STEPS):
            sent = self.request(member, step, commits)
            try:
                answer = member.post(self.gid, sent.tail, sent.body, idem=sent.idem)
            except CONNECTION_ERRORS:
                with self.lock:
                    self.in_flight.append(sent)
                return
            with self.lock:
                if answer.status != 200:
                    self.unexpected.append((answer.status, answer.body))
                    return
                sent.answer = answer
                self.acked.append(sent)


def test_kill_during_a_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = _server(tmp_path / "gw")
    try:
        _kill_during_a_burst(server)
    finally:
        server.kill()


def _burst_then_kill(server: GatewayServer, members: list[Hosted], gid: str, cycle: int) -> list[Sent]:
    """Run a burst, SIGKILL the server in its middle, restart it and retry the requests in flight with their
    Idempotency-Keys; returns every request of the burst (all answered 200 now)."""
    burst = Burst(gid, cycle)
    threads = [
        threading.Thread(target=burst.run, args=(m, n >= 2), name=f"burst-{cycle}-{m.name}")
        for n, m in enumerate(members)
    ]
    for t in threads:
        t.start()
    deadline = Deadline(GUARD, "acknowledged requests before the kill")
    while len(burst.acked) < ACKED_BEFORE_KILL and any(t.is_alive() for t in threads):
        deadline.check(f"({len(burst.acked)} acked, {burst.unexpected})")
        time.sleep(POLL_S)
    server.kill()
    for t in threads:
        t.join(GUARD)
        assert not t.is_alive(), f"{t.name} hangs after the kill"
    assert not burst.unexpected, f"non-2xx answers during the burst: {burst.unexpected}"
    assert burst.in_flight, "every thread finished before the kill: nothing was in flight"
    acked_before = list(burst.acked)

    server.start()
    # Requests in flight at the kill may or may not have happened: the Idempotency-Key counts them once.
    for sent in burst.in_flight:
        sent.answer = sent.member.post(gid, sent.tail, sent.body, idem=sent.idem).expect(200)
    # An acknowledged request replays to its first answer (its work committed with its record).
    for sent in acked_before[:: max(1, len(acked_before) // 5)]:
        again = sent.member.post(gid, sent.tail, sent.body, idem=sent.idem).expect(200)
        assert sent.answer is not None and again.body == sent.answer.body, sent.idem
    return acked_before + burst.in_flight


def _kill_during_a_burst(server: GatewayServer) -> None:
    api = tenant(server, "burst")
    members, gid = make_group(api, 5, "kb")
    group = gid_bytes(gid)
    done = [s for cycle in range(KILLS) for s in _burst_then_kill(server, members, gid, cycle)]
    # The group keeps working after the restarts.
    last = Sent(members[0], "/messages", {"data": b64(b"after the restart")}, "after", b"after the restart")
    last.answer = members[0].post(gid, last.tail, last.body, idem=last.idem).expect(200)
    done.append(last)

    commits = [s for s in done if s.tail == "/commits"]
    messages = [s for s in done if s.data is not None]
    commit_epochs = sorted(s.answer["epoch"] for s in commits if s.answer is not None)
    assert commit_epochs == list(range(2, 2 + len(commits))), f"commit epochs {commit_epochs}"
    head = log_head(api, gid)
    assert (head["epoch"], head["seq"]) == (1 + len(commits), 1 + len(commits) + len(messages)), head

    epoch, _ = converge(api, members, gid)
    assert epoch == 1 + len(commits)
    deadline = Deadline(GUARD, "burst messages reaching the inboxes")
    seq_of: dict[bytes, int] = {}
    for m in members:
        inbox = Inbox(api, m.identity_id)
        wanted = [s.data for s in messages if s.member is not m and s.data is not None]
        inbox.wait_for(group, set(wanted), deadline)
        assert sorted(inbox.texts(group)) == sorted(wanted), f"{m.name}: messages lost, extra or repeated"
        check_log_order(inbox, group)
        others_commits = [s for s in commits if s.member is not m]
        assert len(inbox.of(group, "commit")) == len(others_commits), f"{m.name}: commit events"
        assert not inbox.of(group, "rejected"), inbox.of(group, "rejected")
        for e in inbox.of(group, "application"):
            assert seq_of.setdefault(unb64(e["data"]), e["seq"]) == e["seq"], e
    assert len(seq_of) == len(messages)


# ---- 5. a rejected submission changes nothing ------------------------------------------------------------


def test_a_stale_commit_changes_nothing(server: GatewayServer) -> None:
    api = tenant(server, "stale")
    members, gid = make_group(api, 3, "st")
    alice, bob, carol = members
    alice.commit(gid, {"update": True, "epoch": 1})
    bob.send(gid, b"before the stale commit")
    converge(api, members, gid)
    inboxes = [Inbox(api, m.identity_id) for m in members]
    deadline = Deadline(GUARD, "inboxes settling")
    for m, inbox in zip(members, inboxes, strict=True):
        inbox.wait_for(gid_bytes(gid), set() if m is bob else {b"before the stale commit"}, deadline)
    head = log_head(api, gid)
    views = [member_view(m, gid) for m in members]
    assert head["epoch"] == 2

    for member, body in [
        (bob, {"update": True, "epoch": 1}),  # built on an epoch the log left
        (carol, {"remove": [0], "epoch": 1}),
        (bob, {"update": True, "epoch": 0}),
    ]:
        r = member.post(gid, "/commits", body)
        assert (r.status, r.code, r.body.get("current_epoch")) == (409, "conflict", 2), (body, r.body)
    r = carol.post(gid, "/proposals", {"type": "update", "epoch": 1})
    assert (r.status, r.code, r.body.get("current_epoch")) == (409, "conflict", 2), r.body

    assert log_head(api, gid) == head
    assert [member_view(m, gid) for m in members] == views
    for inbox in inboxes:
        assert inbox.poll(0) == [], f"an event after a rejected submission in {inbox.identity_id}"
    # The group goes on from where it was: the next commit is the log's epoch 3, and all agree.
    assert carol.commit(gid, {"update": True, "epoch": 2})["epoch"] == 3
    assert converge(api, members, gid)[0] == 3
