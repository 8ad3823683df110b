"""Chaos run (issue 15): three gateway processes over one PostgreSQL and one SoftHSM token, crashed at random.

    python -m benches.chaos [--quick] [--seconds N] [--groups G] [--hosted H] [--devices D] [--kills K]
                            [--seed S] [--out DIR]

What runs (all real: ``tests.postgres_cluster`` makes a throw-away PostgreSQL 15 cluster; three
``mls-gateway serve`` processes share its URL (``MLSGW_DATABASE``) and ONE data folder, so one SoftHSM2
token — as the deploy files' two replicas do):

1. **Setup**: one tenant; per group ``H`` hosted identities and ``D`` device clients (a Python MLS client of
   the project's own ``mls`` library with software keys, its own bearer token and mailbox). The first
   hosted identity claims every other endpoint's KeyPackage and adds them in one commit (epoch 1); hosted
   members join by themselves, devices from the Welcome in their mailbox.
2. **Chaos** (``--seconds``): every member is a thread that, in a loop, takes what is waiting for it (a
   device: its mailbox, decrypting and merging every item; a hosted member: its inbox) and then sends an
   application message or (one time in ``COMMIT_SHARE``) commits a self-update — a hosted member through
   ``POST …/messages`` / ``…/commits``, a device by protecting / committing locally and submitting through
   ``POST /v1/groups/{gid}/messages`` / ``…/commit-bundles`` (merging its pending commit on 201, dropping
   it on 409). Every request goes to the next of the three ports (round robin); a connection error, a
   ``503`` (``store_unavailable``, ``hsm_unavailable``) or a ``5xx`` is retried on the next port with the
   *same* ``Idempotency-Key`` and body, as a real client does; a hosted message answered ``409`` "the
   group's log kept moving; retry" (nothing appended) is sent again under a new key. Meanwhile a
   disruptor kills a random gateway with SIGKILL ``--kills`` times and starts it again, restarts
   PostgreSQL (``pg_ctl restart``) once and crashes it once (``immediate`` stop, then start: crash
   recovery) — the gateways are never restarted for the database: each must answer ``/readyz`` 200 again
   by itself.
3. **Quiescence**: the members drain their mailboxes / inboxes until they are at the log's epoch and have
   every message acknowledged to the others (bounded by a guard).
4. **Invariants** (the report's ``invariants``; every one must be 0 / true):
   - ``forks``: per group, the log's epoch (``GET /v1/groups/{gid}``), every hosted member's epoch and epoch
     authenticator (``GET …/groups/{gid}``) and every device's (its local state) agree;
   - ``lost_sends``: an acknowledged (2xx) application message missing at another member;
     ``lost_commits``: an acknowledged commit whose epoch the log does not hold, or that a device received
     different bytes for; ``double_acked_epochs``: two acknowledged commits for one epoch;
   - ``generations_reused``: two different acknowledged messages with the same (epoch, sender leaf,
     generation) — read on the receiving devices from each PrivateMessage's decrypted SenderData (§6.3.2);
   - ``duplicate_effects``: one message delivered under two different log ``seq`` (a repeated delivery of the
     same ``seq`` is at-least-once delivery and only counted, ``duplicate_deliveries``);
   - ``processing_errors`` (a device could not process an item, a hosted inbox has a ``rejected`` event) and
     ``unexpected_answers`` (a status other than the route's success, 409 where it is legal, or a retried
     503/5xx);
   - ``audit_ok``: ``mls-gateway audit verify`` passes afterwards.

Writes ``chaos.json`` to ``benches/results`` (or ``--out``), prints progress lines and a summary table; exit
code 1 when an invariant fails. ``--quick`` runs ~25 s of chaos. The test suite runs a short one
(tests/gateway/test_chaos.py) and asserts every invariant.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mls import ApplicationMessage, Credential, StagedCommit
from mls.client import Client as MlsClient
from mls.crypto.key_store import SoftwareKeyStore
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.wire.framing import MLSMessage
from mls.wire.message_protection import decrypt_sender_data
from tests.gateway.gwclient import GATEWAY_EXE, Client, GatewayServer, Response
from tests.postgres_cluster import PostgresCluster, throwaway_cluster

RESULTS = Path(__file__).resolve().parent / "results"
SUITE = 1
#: The share of a member's actions that are commits (the rest are application messages).
COMMIT_SHARE = 0.12
#: Long-poll wait (seconds) of the quiescence drain; the chaos loop reads without waiting.
DRAIN_WAIT_S = 1
#: Pause between two attempts of one request (connection error, 503, 5xx).
RETRY_PAUSE_S = 0.2
#: Statuses after which a client retries the same request (same Idempotency-Key, same body).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Pause of a member between two actions (keeps the machine usable; the load is not the point).
THINK_S = 0.02
#: Short leases, so a killed holder's background work (the hosted sweep) moves within seconds, not 15 s.
LEASE_ENV = {"MLSGW_LEASE_TTL_S": "3", "MLSGW_LEASE_CLOCK_MARGIN_S": "0.5"}
#: Times a hosted message answered 409 "the group's log kept moving; retry" is sent again (new key).
LOG_RACE_RETRIES = 5
#: ``application`` content type of a PrivateMessage (RFC 9420 §6).
APPLICATION = 1


@dataclass(frozen=True)
class Settings:
    seconds: float = 60.0
    groups: int = 3
    hosted: int = 3  # hosted identities per group (the first founds it)
    devices: int = 2  # device clients per group
    kills: int = 5
    seed: int = 15
    #: Gateway processes on the one database and token (the issue asks for 3).
    processes: int = 3
    #: True: the processes share one SQLite file instead (a baseline; no database restarts then).
    sqlite: bool = False
    #: False: the same load without any kill or database restart (a baseline that isolates concurrency).
    disrupt: bool = True
    #: Where the gateways' data folder and logs go (kept afterwards); None: a temporary folder.
    workdir: Path | None = None
    #: Bound of every wait: one request's retries, one quiescence, one gateway start.
    guard_s: float = 180.0
    #: Bound of the quiescence drain (a member that does not catch up by then is reported, not waited for).
    drain_guard_s: float = 90.0
    out: Path | None = RESULTS


def quick_settings(**over: Any) -> Settings:
    base = {"seconds": 25.0, "groups": 2, "hosted": 2, "devices": 2, "kills": 3, "drain_guard_s": 60.0}
    return Settings(**{**base, **over})


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def segment(group_id: bytes) -> str:
    return base64.urlsafe_b64encode(group_id).decode("ascii").rstrip("=")


class GuardExpired(AssertionError):
    """A bounded wait ran out: a hang, reported as such."""


# ---- the gateways and the round robin ----------------------------------------------------------------------


class Fleet:
    """Three ``serve`` processes on one data folder and one PostgreSQL; requests spread round robin."""

    def __init__(self, root: Path, cluster: PostgresCluster | None, processes: int = 3) -> None:
        #: ``None``: the processes share the data folder's SQLite file (a baseline, ``--sqlite``).
        self.cluster = cluster
        env = LEASE_ENV if cluster is None else {"MLSGW_DATABASE": cluster.dsn, **LEASE_ENV}
        first = GatewayServer(root / "gw", env=env)
        self.servers = [first] + [first.another_process(f"p{i}") for i in range(1, processes)]
        self._ports = itertools.cycle(range(processes))
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.unexpected: list[str] = []

    def start(self) -> None:
        for s in self.servers:
            s.start()

    def kill_all(self) -> None:
        for s in self.servers:
            s.kill()

    def next_port(self) -> int:
        with self._lock:
            return self.servers[next(self._ports)].port

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def note(self, text: str) -> None:
        with self._lock:
            self.unexpected.append(text)

    def request(
        self,
        token: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...],
        idem: str | None = None,
        guard_s: float = 180.0,
    ) -> Response:
        """One request as a careful client makes it: to the next port; a connection error, a 503 or a 5xx
        is retried on the next port with the same Idempotency-Key and body, until an answer in ``ok``
        (any other answer is noted as unexpected and returned)."""
        deadline = time.monotonic() + guard_s
        while True:
            self.count("requests")
            try:
                r = Client(self.next_port(), token, timeout=30).request(method, path, body, idem=idem)
            except OSError:
                self.count("connection_errors")
                r = None
            if r is not None:
                self.count(f"status_{r.status}")
                if r.status in ok:
                    return r
                if r.status not in RETRY_STATUSES:
                    self.note(f"{method} {path}: {r.status} {r.body!r}"[:400])
                    return r
                if r.status != 503:
                    self.note(f"{method} {path}: {r.status} {r.body!r} (retried)"[:400])
            if time.monotonic() > deadline:
                raise GuardExpired(f"{method} {path}: no answer in {ok} within {guard_s} s")
            self.count("retries")
            time.sleep(RETRY_PAUSE_S)

    def ready(self, server: GatewayServer) -> bool:
        with suppress(OSError):
            return Client(server.port, timeout=5).get("/readyz").status == 200
        return False


# ---- members ----------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """An acknowledged application message."""

    group: int
    sender: str
    payload: bytes


@dataclass
class Committed:
    """An acknowledged commit: its new epoch and its MLSMessage bytes."""

    group: int
    sender: str
    epoch: int
    commit: bytes


@dataclass
class Member:
    """One endpoint in one group: a hosted identity (inbox) or a device (mailbox + local MLS state)."""

    kind: str  # "hosted" | "device"
    name: str
    group: int
    group_id: bytes
    endpoint_id: str
    token: str
    mls: MlsClient | None = None
    state: Group | None = None
    cursor: Any = None
    applied_seq: int = -1
    sent: int = 0
    #: payload -> the log seqs it was delivered under
    received: dict[bytes, set[int]] = field(default_factory=lambda: defaultdict(set))
    #: (epoch, sender leaf, generation) -> payloads (devices, from each PrivateMessage's SenderData)
    generations: dict[tuple[int, int, int], set[bytes]] = field(default_factory=lambda: defaultdict(set))
    #: new epoch -> the commit bytes that led to it (devices)
    commits: dict[int, bytes] = field(default_factory=dict)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    hosted_epoch: int = -1

    @property
    def box(self) -> str:
        if self.kind == "hosted":
            return f"/v1/identities/{self.endpoint_id}/inbox"
        return f"/v1/clients/{self.endpoint_id}/mailbox"

    @property
    def group_path(self) -> str:
        return f"/v1/identities/{self.endpoint_id}/groups/{segment(self.group_id)}"

    def epoch(self, fleet: Fleet) -> tuple[int, bytes]:
        """(epoch, epoch authenticator) of this member's view."""
        if self.kind == "device":
            if self.state is None:
                return -1, b""
            return self.state.epoch, self.state.epoch_authenticator
        g = fleet.request(self.token, "GET", self.group_path, ok=(200,)).body
        return int(g["epoch"]), unb64(g["epoch_authenticator"])


class Ledger:
    """Every acknowledged request, shared by the member threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sends: list[Sent] = []
        self.commits: list[Committed] = []
        self.conflicts = 0

    def send(self, s: Sent) -> None:
        with self.lock:
            self.sends.append(s)

    def commit(self, c: Committed) -> None:
        with self.lock:
            self.commits.append(c)


def read_box(fleet: Fleet, m: Member, wait: float, before: int | None = None) -> int:
    """One page of the member's mailbox / inbox after its cursor, taken and acked (with ``before``: only
    its items of a lower ``seq``); returns how many were taken."""
    query = {"wait": str(int(wait)), "limit": "100"}
    if m.cursor is not None:
        query["after"] = str(m.cursor)
    body = fleet.request(m.token, "GET", f"{m.box}?{urllib.parse.urlencode(query)}", ok=(200,)).body
    items: list[dict[str, Any]] = body["events" if m.kind == "hosted" else "items"]
    if before is not None:
        items = list(itertools.takewhile(lambda i: int(i["seq"]) < before, items))
    for item in items:
        if unb64(item["group_id"]) == m.group_id:
            (take_event if m.kind == "hosted" else take_item)(m, item)
    if items:
        fleet.request(m.token, "POST", f"{m.box}/ack", {"up_to": items[-1]["cursor"]}, ok=(204,))
    nxt = body.get("next_cursor") if before is None else None
    m.cursor = nxt if nxt is not None else (items[-1]["cursor"] if items else m.cursor)
    return len(items)


def take_event(m: Member, ev: dict[str, Any]) -> None:
    """A hosted member's inbox event (the gateway already applied it to the member's state)."""
    kind = ev.get("kind")
    if kind == "application":
        m.received[unb64(ev["data"])].add(int(ev["seq"]))
    elif kind in ("joined", "commit"):
        m.hosted_epoch = max(m.hosted_epoch, int(ev["epoch"]))
    elif kind == "rejected":
        m.errors.append(f"{m.name}: seq {ev.get('seq')} rejected: {ev.get('problem')!r}"[:400])


def sender_key(group: Group, message: bytes) -> tuple[int, int, int] | None:
    """(epoch, sender leaf, generation) of an application PrivateMessage, from its SenderData (§6.3.2)."""
    pm = MLSMessage.from_bytes(message).private_message
    if pm is None or pm.content_type != APPLICATION:
        return None
    if pm.epoch == group.epoch:
        secret = group.state.secrets.sender_data_secret
    else:
        past = next((p for p in group.state.past_epochs if p.epoch == pm.epoch), None)
        if past is None:
            return None  # processing reports the epoch as not retained
        secret = past.sender_data_secret
    sd = decrypt_sender_data(group.cs, pm, secret)
    return pm.epoch, sd.leaf_index, sd.generation


def take_item(m: Member, item: dict[str, Any]) -> None:
    """A device's mailbox item: join, or process in log order (a repeated ``seq`` is skipped, counted)."""
    assert m.mls is not None
    message, seq, kind = unb64(item["message"]), int(item["seq"]), item["kind"]
    if kind == "welcome":
        if m.state is None:
            m.state = m.mls.join(message)
            m.applied_seq = seq
        return
    if m.state is None:
        m.errors.append(f"{m.name}: {kind} seq {seq} before its Welcome")
        return
    if seq <= m.applied_seq:
        m.duplicates += 1
        return
    m.applied_seq = seq
    try:
        key = sender_key(m.state, message) if kind == "application" else None
        out = m.state.process(message)
    except Exception as e:
        m.errors.append(f"{m.name}: {kind} seq {seq}: {type(e).__name__}: {e}"[:400])
        return
    if isinstance(out, StagedCommit):
        m.state.merge(out)
        m.commits[m.state.epoch] = message
    elif isinstance(out, ApplicationMessage):
        m.received[out.data].add(seq)
        if key is not None:
            m.generations[key].add(out.data)


def act(fleet: Fleet, ledger: Ledger, m: Member, rng: random.Random) -> None:
    """One action of a member: an application message, or a self-update commit."""
    m.sent += 1
    idem = f"{m.name}-{m.sent}"
    if rng.random() < COMMIT_SHARE:
        (hosted_commit if m.kind == "hosted" else device_commit)(fleet, ledger, m, idem)
        return
    payload = f"chaos {m.name} {m.sent} ".encode() + rng.randbytes(8).hex().encode()
    if m.kind == "hosted":
        r = hosted_send(fleet, m, payload, idem)
    else:
        assert m.state is not None
        body = {"message": b64(m.state.protect(payload))}
        # 409: made at an epoch the log no longer accepts (it moved on while this request was retried
        # through a kill) — refused, nothing appended (api-delivery.md "Status codes"): not acknowledged.
        r = fleet.request(
            m.token, "POST", f"/v1/groups/{segment(m.group_id)}/messages", body, ok=(201, 409), idem=idem
        )
        if r.status == 409:
            fleet.count("device_send_stale_epoch_409")
    if r.status in (200, 201):
        ledger.send(Sent(m.group, m.name, payload))


def hosted_send(fleet: Fleet, m: Member, payload: bytes, idem: str) -> Response:
    """A hosted member's message; a ``409`` "the group's log kept moving; retry" (the gateway lost its
    retries against other processes' appends and appended nothing) is sent again under a new key."""
    body = {"data": b64(payload)}
    for attempt in range(LOG_RACE_RETRIES):
        key = idem if attempt == 0 else f"{idem}-r{attempt}"
        r = fleet.request(m.token, "POST", f"{m.group_path}/messages", body, ok=(200, 409), idem=key)
        if r.status != 409 or "kept moving" not in str(r.body.get("detail", "")):
            break
        fleet.count("log_kept_moving_409")
    if r.status != 200:
        fleet.note(f"POST {m.group_path}/messages: {r.status} {r.body!r}"[:400])
    return r


def hosted_commit(fleet: Fleet, ledger: Ledger, m: Member, idem: str) -> None:
    r = fleet.request(m.token, "POST", f"{m.group_path}/commits", {"update": True}, ok=(200, 409), idem=idem)
    if r.status == 200:
        ledger.commit(Committed(m.group, m.name, int(r["epoch"]), unb64(r["commit"])))
    elif r.status == 409:
        with ledger.lock:
            ledger.conflicts += 1


def device_commit(fleet: Fleet, ledger: Ledger, m: Member, idem: str) -> None:
    """A self-update committed locally and submitted as a commit bundle: merged on 201, dropped on 409."""
    assert m.state is not None
    staged = m.state.commit(CommitOptions(force_path=True))
    assert staged.commit and staged.group_info and staged.ratchet_tree
    body = {"commit": b64(staged.commit), "group_info": b64(staged.group_info)}
    body["ratchet_tree"] = b64(staged.ratchet_tree)
    path = f"/v1/groups/{segment(m.group_id)}/commit-bundles"
    r = fleet.request(m.token, "POST", path, body, ok=(201, 409), idem=idem)
    if r.status == 201:
        # The log's entries before ours are taken at the old epoch first (in log order): merging at once
        # would leave a late message of an old epoch behind the epochs this device keeps.
        seq = int(r["seq"])
        while read_box(fleet, m, 0, before=seq):
            pass
        m.state.merge_pending_commit()
        m.applied_seq = max(m.applied_seq, seq)
        ledger.commit(Committed(m.group, m.name, int(r["epoch"]), staged.commit))
        return
    m.state.discard_pending_commit()
    if r.status == 409:
        with ledger.lock:
            ledger.conflicts += 1


# ---- setup ------------------------------------------------------------------------------------------------


def make_groups(fleet: Fleet, cfg: Settings) -> tuple[str, list[list[Member]]]:
    """The tenant and its groups, every member in at epoch 1."""
    admin = fleet.servers[0].admin_token
    tenant = fleet.request(admin, "POST", "/v1/tenants", {"name": "chaos"}, ok=(201,)).body
    token = str(tenant["token"])
    groups = []
    for g in range(cfg.groups):
        members = [hosted_member(fleet, token, f"g{g}-h{i}", g) for i in range(cfg.hosted)]
        members += [device_member(fleet, token, f"g{g}-d{i}", g) for i in range(cfg.devices)]
        found(fleet, token, members)
        groups.append(members)
    deadline = time.monotonic() + cfg.guard_s
    for m in (m for ms in groups for m in ms):
        while m.epoch(fleet)[0] < 1 if m.kind == "device" else not joined(fleet, m):
            if time.monotonic() > deadline:
                raise GuardExpired(f"{m.name} did not join within {cfg.guard_s} s")
            if m.kind == "device":
                read_box(fleet, m, DRAIN_WAIT_S)
            else:
                time.sleep(0.1)
    return token, groups


def joined(fleet: Fleet, m: Member) -> bool:
    return fleet.request(m.token, "GET", m.group_path, ok=(200, 404)).status == 200


def hosted_member(fleet: Fleet, token: str, name: str, group: int) -> Member:
    idn = fleet.request(token, "POST", "/v1/identities", {"name": name}, ok=(201,), idem=name).body
    return Member("hosted", name, group, b"", str(idn["identity_id"]), token)


def device_member(fleet: Fleet, token: str, name: str, group: int) -> Member:
    cli = fleet.request(token, "POST", "/v1/clients", {"name": name}, ok=(201,), idem=name).body
    client = MlsClient(SoftwareKeyStore(), SUITE, Credential.basic(name.encode()))
    kp = {"key_packages": [b64(client.key_package().message())]}
    path = f"/v1/clients/{cli['client_id']}/key-packages"
    fleet.request(str(cli["token"]), "POST", path, kp, ok=(201,), idem=f"{name}-kp")
    return Member("device", name, group, b"", str(cli["client_id"]), str(cli["token"]), mls=client)


def found(fleet: Fleet, token: str, members: list[Member]) -> None:
    """The first hosted member creates the group and adds every other endpoint in one commit."""
    founder, others = members[0], members[1:]
    created = fleet.request(
        token, "POST", f"/v1/identities/{founder.endpoint_id}/groups", {}, ok=(201,), idem=f"{founder.name}-g"
    ).body
    group_id = unb64(created["group_id"])
    for m in members:
        m.group_id = group_id
    ids = [m.endpoint_id for m in others]
    claim = {"endpoints": ids, "cipher_suite": SUITE}
    kps = fleet.request(token, "POST", "/v1/key-packages/claim", claim, ok=(200,)).body["key_packages"]
    add = {"add": [kps[i] for i in ids]}
    r = fleet.request(
        token, "POST", f"{founder.group_path}/commits", add, ok=(200,), idem=f"{founder.name}-add"
    )
    assert r["epoch"] == 1, r.body


# ---- the disruptor -----------------------------------------------------------------------------------------


@dataclass
class Disruption:
    at_s: float
    what: str
    target: str
    recovered_s: float | None = None


def schedule(cfg: Settings) -> list[tuple[float, str]]:
    """The disruptions' times: kills spread over the run, a PostgreSQL restart near 40 %, a crash at 70 %."""
    if not cfg.disrupt:
        return []
    if cfg.sqlite:
        return [(cfg.seconds * (i + 0.5) / (cfg.kills + 1), "kill") for i in range(cfg.kills)]
    plan = [(cfg.seconds * (i + 0.5) / (cfg.kills + 1), "kill") for i in range(cfg.kills)]
    plan += [(cfg.seconds * 0.4, "pg_restart"), (cfg.seconds * 0.7, "pg_crash")]
    return sorted(plan)


def disrupt(fleet: Fleet, cfg: Settings, rng: random.Random, t0: float, done: list[Disruption]) -> None:
    for at, what in schedule(cfg):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        started = time.monotonic()
        if what == "kill":
            victim = rng.randrange(len(fleet.servers))
            server = fleet.servers[victim]
            log(f"kill -9 gateway {victim} (pid {server.proc.pid if server.proc else '?'})")
            server.kill()
            time.sleep(0.5)
            server.start(timeout=cfg.guard_s)
            entry = Disruption(started - t0, "kill -9 + start", f"gateway {victim}")
        else:
            log(f"PostgreSQL {what.replace('pg_', '')}")
            assert fleet.cluster is not None
            if what == "pg_restart":
                fleet.cluster.restart()
            else:
                fleet.cluster.kill()
                time.sleep(1.0)
                fleet.cluster.start()
            entry = Disruption(started - t0, what, "postgresql")
        entry.recovered_s = wait_ready(fleet, cfg, started)
        done.append(entry)


def wait_ready(fleet: Fleet, cfg: Settings, since: float) -> float:
    """Seconds from ``since`` until every gateway answers ``/readyz`` 200 (none is restarted for it)."""
    deadline = time.monotonic() + cfg.guard_s
    while not all(fleet.ready(s) for s in fleet.servers):
        if time.monotonic() > deadline:
            raise GuardExpired(f"a gateway not ready within {cfg.guard_s} s of a disruption")
        time.sleep(0.1)
    return time.monotonic() - since


# ---- the run ----------------------------------------------------------------------------------------------


def member_loop(
    fleet: Fleet, ledger: Ledger, m: Member, rng: random.Random, stop: threading.Event, failures: list[str]
) -> None:
    try:
        while not stop.is_set():
            read_box(fleet, m, 0)
            act(fleet, ledger, m, rng)
            time.sleep(THINK_S)
    except Exception as e:
        failures.append(f"{m.name}: {type(e).__name__}: {e}"[:600])


def progress(fleet: Fleet, ledger: Ledger, stop: threading.Event, t0: float) -> None:
    while not stop.wait(5.0):
        s = fleet.stats
        log(
            f"{time.monotonic() - t0:5.1f} s  sends {len(ledger.sends)}  commits {len(ledger.commits)}  "
            f"requests {s['requests']}  retries {s['retries']}  connection errors {s['connection_errors']}"
        )


def quiesce(fleet: Fleet, groups: list[list[Member]], ledger: Ledger, token: str, cfg: Settings) -> None:
    """Drain every member until it is at its log's epoch and has every message sent by the others."""
    deadline = time.monotonic() + cfg.drain_guard_s
    for members in groups:
        log_epoch = int(
            fleet.request(token, "GET", f"/v1/groups/{segment(members[0].group_id)}", ok=(200,))["epoch"]
        )
        for m in members:
            wanted = {s.payload for s in ledger.sends if s.group == m.group and s.sender != m.name}
            while True:
                have = m.epoch(fleet)[0] >= log_epoch and wanted <= set(m.received)
                if read_box(fleet, m, 0 if have else DRAIN_WAIT_S) == 0 and have:
                    break
                if time.monotonic() > deadline:
                    log(f"{m.name}: gave up draining (at epoch {m.epoch(fleet)[0]} of {log_epoch})")
                    break


def check(fleet: Fleet, groups: list[list[Member]], ledger: Ledger, token: str) -> dict[str, Any]:
    """The invariants (module docstring) and the violations found, named."""
    bad: dict[str, list[str]] = defaultdict(list)
    dup_deliveries = 0
    for members in groups:
        g = members[0].group
        gid = segment(members[0].group_id)
        log_view = fleet.request(token, "GET", f"/v1/groups/{gid}", ok=(200,)).body
        views = {m.name: m.epoch(fleet) for m in members}
        if len({v for v in views.values()}) != 1 or next(iter(views.values()))[0] != log_view["epoch"]:
            shown = {n: (e, a.hex()[:16]) for n, (e, a) in views.items()}
            authors = {c.epoch: c.sender for c in ledger.commits if c.group == g}
            bad["forks"].append(
                f"group {g}: log epoch {log_view['epoch']}, members {shown}, "
                f"commits by {dict(sorted(authors.items()))}"
            )
        acked = [c for c in ledger.commits if c.group == g]
        by_epoch: dict[int, list[Committed]] = defaultdict(list)
        for c in acked:
            by_epoch[c.epoch].append(c)
        for epoch, cs in by_epoch.items():
            if len(cs) > 1:
                bad["double_acked_epochs"].append(f"group {g} epoch {epoch}: {[c.sender for c in cs]}")
        for c in acked:
            if c.epoch > log_view["epoch"]:
                bad["lost_commits"].append(f"group {g}: {c.sender}'s commit to {c.epoch} past the log")
            for m in members:
                if m.kind == "device" and m.name != c.sender and m.commits.get(c.epoch, c.commit) != c.commit:
                    bad["lost_commits"].append(f"group {g}: {m.name} took another commit to epoch {c.epoch}")
        gens: dict[tuple[int, int, int], set[bytes]] = defaultdict(set)
        for m in members:
            dup_deliveries += m.duplicates
            for key, payloads in m.generations.items():
                gens[key] |= payloads
            for payload, seqs in m.received.items():
                if len(seqs) > 1:
                    bad["duplicate_effects"].append(f"{m.name}: {payload[:40]!r} under seqs {sorted(seqs)}")
            bad["processing_errors"].extend(m.errors)
        for key, payloads in gens.items():
            if len(payloads) > 1:
                bad["generations_reused"].append(
                    f"group {g} (epoch, leaf, generation) {key}: {len(payloads)}"
                )
        for s in (s for s in ledger.sends if s.group == g):
            for m in members:
                if m.name != s.sender and s.payload not in m.received:
                    bad["lost_sends"].append(f"{s.payload[:40]!r} missing at {m.name}")
    bad["unexpected_answers"] = list(fleet.unexpected)
    names = ("forks", "lost_sends", "lost_commits", "double_acked_epochs", "generations_reused",
             "duplicate_effects", "processing_errors", "unexpected_answers")  # fmt: skip
    invariants: dict[str, Any] = {n: len(bad[n]) for n in names}
    invariants["duplicate_deliveries"] = dup_deliveries
    return {"invariants": invariants, "violations": {n: bad[n][:20] for n in names if bad[n]}}


def audit_verify(fleet: Fleet) -> tuple[bool, str]:
    server = fleet.servers[0]
    out = subprocess.run(
        [str(GATEWAY_EXE), "audit", "verify", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, env=server.env, timeout=300, check=False,
    )  # fmt: skip
    return out.returncode == 0, (out.stdout + out.stderr).strip()[-600:]


def chaos_phase(fleet: Fleet, cfg: Settings, token: str, groups: list[list[Member]]) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    ledger, stop = Ledger(), threading.Event()
    failures: list[str] = []
    disruptions: list[Disruption] = []
    t0 = time.monotonic()
    threads = [
        threading.Thread(
            target=member_loop, args=(fleet, ledger, m, random.Random(rng.random()), stop, failures)
        )
        for members in groups
        for m in members
    ]
    side = [threading.Thread(target=progress, args=(fleet, ledger, stop, t0), daemon=True)]
    for t in threads + side:
        t.start()
    try:
        disrupt(fleet, cfg, rng, t0, disruptions)
        time.sleep(max(0.0, t0 + cfg.seconds - time.monotonic()))
    finally:
        stop.set()
        for t in threads:
            t.join(cfg.guard_s)
    chaos_s = time.monotonic() - t0
    if failures or any(t.is_alive() for t in threads):
        raise AssertionError(f"member threads failed: {failures or 'a thread hung'}")
    log(f"chaos over after {chaos_s:.1f} s; draining")
    quiesce(fleet, groups, ledger, token, cfg)
    result = check(fleet, groups, ledger, token)
    result.update(
        chaos_s=round(chaos_s, 1),
        acknowledged_sends=len(ledger.sends),
        acknowledged_commits=len(ledger.commits),
        commit_conflicts=ledger.conflicts,
        disruptions=[vars(d) for d in disruptions],
        final_epochs=[members[0].epoch(fleet)[0] for members in groups],
    )
    return result


@contextmanager
def fleet_on(root: Path, processes: int, sqlite: bool) -> Iterator[Fleet]:
    with contextlib.ExitStack() as stack:
        cluster = None if sqlite else stack.enter_context(throwaway_cluster())
        fleet = Fleet(root, cluster, processes)
        try:
            fleet.start()
            yield fleet
        finally:
            fleet.kill_all()


@contextmanager
def workdir(cfg: Settings) -> Iterator[Path]:
    if cfg.workdir is not None:
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        yield cfg.workdir
        return
    with tempfile.TemporaryDirectory(prefix="mlsgw-chaos-") as tmp:
        yield Path(tmp)


def run(cfg: Settings) -> dict[str, Any]:
    """The whole run (module docstring); the report."""
    started = time.time()
    with workdir(cfg) as root, fleet_on(root, cfg.processes, cfg.sqlite) as fleet:
        log(
            f"{cfg.processes} gateways on ports {[s.port for s in fleet.servers]}, "
            f"store {'SQLite' if fleet.cluster is None else f'PostgreSQL on {fleet.cluster.port}'}"
        )
        token, groups = make_groups(fleet, cfg)
        log(
            f"{cfg.groups} groups of {cfg.hosted} hosted + {cfg.devices} devices at epoch 1; "
            f"chaos for {cfg.seconds} s"
        )
        result = chaos_phase(fleet, cfg, token, groups)
        for s in fleet.servers:
            s.stop()
        ok, text = audit_verify(fleet)
        result["invariants"]["audit_ok"] = ok
        if not ok:
            result.setdefault("violations", {})["audit"] = [text]
        logs = {f"gateway_{i}": s.log_tail(1500) for i, s in enumerate(fleet.servers)}
    report: dict[str, Any] = {
        "benchmark": "chaos",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "processes": cfg.processes,
        "store": "sqlite" if cfg.sqlite else "postgresql",
        "requests": dict(fleet.stats),
        "kills": sum(1 for d in result["disruptions"] if d["what"].startswith("kill")),
        "postgres_restarts": sum(1 for d in result["disruptions"] if d["what"].startswith("pg")),
        **result,
        "passed": passed(result["invariants"]),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
    }
    if not report["passed"]:
        report["gateway_log_tails"] = logs
    return report


def passed(invariants: dict[str, Any]) -> bool:
    zero = [v for k, v in invariants.items() if k not in ("audit_ok", "duplicate_deliveries")]
    return bool(invariants.get("audit_ok")) and not any(zero)


def print_summary(report: dict[str, Any]) -> None:
    req = report["requests"]
    requests = f"{req.get('requests', 0)} ({req.get('retries', 0)}, {req.get('connection_errors', 0)})"
    commits = f"{report['acknowledged_commits']} ({report['commit_conflicts']})"
    rows: list[tuple[str, Any]] = [
        ("chaos seconds", report["chaos_s"]),
        ("requests (retries, connection errors)", requests),
        ("acknowledged sends", report["acknowledged_sends"]),
        ("acknowledged commits (409 conflicts)", commits),
        ("kill -9 of a gateway", report["kills"]),
        ("PostgreSQL restart / crash", report["postgres_restarts"]),
    ]
    for d in report["disruptions"]:
        rows.append(
            (f"  {d['what']} {d['target']} at {d['at_s']:.1f} s", f"ready after {d['recovered_s']:.1f} s")
        )
    rows += [*report["invariants"].items(), ("PASSED", report["passed"])]
    width = max(len(str(k)) for k, _ in rows)
    print(f"{'chaos run':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for name, items in report.get("violations", {}).items():
        print(f"\n{name}:")
        for item in items:
            print(f"  {item}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benches.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run (~25 s of chaos, 2 groups)")
    p.add_argument("--seconds", type=float, help="seconds of chaos")
    p.add_argument("--groups", type=int)
    p.add_argument("--hosted", type=int, help="hosted identities per group")
    p.add_argument("--devices", type=int, help="device clients per group")
    p.add_argument("--kills", type=int, help="kill -9 of a random gateway, this many times")
    p.add_argument("--seed", type=int)
    p.add_argument("--processes", type=int, help="gateway processes (default 3)")
    p.add_argument("--sqlite", action="store_true", help="one SQLite file instead of PostgreSQL (baseline)")
    p.add_argument("--calm", action="store_true", help="no kills and no database restarts (a baseline)")
    p.add_argument("--workdir", type=Path, help="keep the data folder and the gateways' logs here")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for chaos.json")
    args = p.parse_args(argv)
    over = {
        k: getattr(args, k)
        for k in ("seconds", "groups", "hosted", "devices", "kills", "seed", "workdir", "processes")
    }
    if args.calm:
        over["disrupt"] = False
    if args.sqlite:
        over["sqlite"] = True
    over = {k: v for k, v in over.items() if v is not None}
    cfg = quick_settings(out=args.out, **over) if args.quick else Settings(out=args.out, **over)
    report = run(cfg)
    print_summary(report)
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "chaos.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
