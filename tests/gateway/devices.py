"""Devices for the end-to-end tests: ts-mls clients that use the gateway as their delivery service.

A :class:`Device` is one named ts-mls client in a shared :class:`TsMlsPeer` plus its gateway client
(``cli_…``) and bearer token (api-delivery.md). It uploads KeyPackages to the directory, reads its mailbox
(long-polling with ``wait``) and applies every item in order — a Welcome joins (the tree from the
Welcome's GroupInfo ``ratchet_tree`` extension, else from ``GET /v1/groups/{gid}/group-info``), a commit,
proposal or application message is processed, application plaintexts are kept — then acks. It sends
application messages through the group's log, and commits with retry: a *pending* ts-mls commit is
submitted as a commit bundle; on ``201`` it is merged, on ``409 conflict`` dropped, the mailbox is drained
up to the log's epoch, and a new commit is made. Delivery is at least once, so an item whose ``seq`` the
device already applied for its group is skipped.

:class:`HostedInbox` reads a hosted identity's inbox (``GET /v1/identities/{id}/inbox``) the same way.
Every HTTP answer that is not the expected one fails with the route, the status and the problem body, so a
missing route reads as such rather than as a hang.
"""

from __future__ import annotations

import base64
import binascii
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.interop.ts_mls_peer import CommitResult, PeerError, TsMlsPeer

from .gwclient import Client, Response, b64, unb64

#: The cipher suite of every device (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519).
DEVICE_SUITE = 1
#: The kinds of mailbox items.
MAILBOX_KINDS = ("welcome", "commit", "proposal", "application")
#: Long-poll wait per mailbox/inbox request (seconds; the gateway caps it at 30).
POLL_WAIT = 5

T = TypeVar("T")
R = TypeVar("R")


class GatewayAnswerError(AssertionError):
    """The gateway answered a route with an unexpected status (a missing route shows as 404/405)."""


def expect(resp: Response, what: str, *statuses: int) -> Response:
    """``resp`` if its status is one of ``statuses``; else fail naming the route and the answer."""
    if resp.status not in statuses:
        raise GatewayAnswerError(f"{what}: expected {statuses}, got {resp.status}: {resp.body!r}")
    return resp


def gid_segment(group_id: bytes) -> str:
    """A group id as a URL path segment: base64url without padding (api-v1.md conventions)."""
    return base64.urlsafe_b64encode(group_id).decode("ascii").rstrip("=")


def group_id_of_segment(segment: str) -> bytes:
    """The group id bytes of a path segment (base64url, padding optional)."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64_field(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a base64 string, got {value!r}")
    try:
        return unb64(value)
    except binascii.Error as e:
        raise ValueError(f"{name} is not standard padded base64: {value!r}") from e


def _int_field(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class MailboxItem:
    """One item of a client's mailbox (api-delivery.md), decoded and checked."""

    cursor: Any  # opaque: handed back as ``after`` / ``up_to`` exactly as received
    group_id: bytes
    seq: int  # the log entry's; a Welcome carries its commit's
    kind: str
    message: bytes

    @classmethod
    def from_json(cls, obj: Any) -> MailboxItem:
        if not isinstance(obj, dict):
            raise ValueError(f"a mailbox item must be an object, got {obj!r}")
        if obj.get("cursor") is None:
            raise ValueError(f"mailbox item without a cursor: {obj!r}")
        kind = obj.get("kind")
        if kind not in MAILBOX_KINDS:
            raise ValueError(f"mailbox item kind must be one of {MAILBOX_KINDS}, got {kind!r}")
        return cls(
            obj["cursor"],
            _b64_field(obj, "group_id"),
            _int_field(obj, "seq"),
            kind,
            _b64_field(obj, "message"),
        )


@dataclass(frozen=True)
class MailboxPage:
    items: list[MailboxItem]
    #: Where the next read starts: the page's ``next_cursor``, else its last item's, else ``after``.
    next_cursor: Any

    @classmethod
    def from_json(cls, body: Any, after: Any) -> MailboxPage:
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ValueError(f"a mailbox page must be an object with an items list, got {body!r}")
        items = [MailboxItem.from_json(i) for i in body["items"]]
        nxt = body.get("next_cursor")
        if nxt is None:
            nxt = items[-1].cursor if items else after
        return cls(items, nxt)


@dataclass(frozen=True)
class Submission:
    """The log's answer to a commit bundle: accepted (``seq``, new ``epoch``) or a conflict."""

    accepted: bool
    epoch: int  # accepted: the new epoch; conflict: the log's current epoch
    seq: int | None = None

    @classmethod
    def from_response(cls, resp: Response, what: str) -> Submission:
        """201 ``{seq, epoch}`` or 409 ``{code: "conflict", current_epoch}``; anything else fails."""
        expect(resp, what, 201, 409)
        if resp.status == 201:
            return cls(True, _int_field(resp.body, "epoch"), _int_field(resp.body, "seq"))
        if resp.code != "conflict":
            raise GatewayAnswerError(f"{what}: 409 without code 'conflict': {resp.body!r}")
        return cls(False, _int_field(resp.body, "current_epoch"))


@dataclass(frozen=True)
class Received:
    """An application message a device decrypted."""

    group_id: bytes
    seq: int
    data: bytes


class Deadline:
    """A deadlock guard: ``check`` fails once ``seconds`` have passed since creation."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.what = what

    def check(self, detail: str = "") -> None:
        if time.monotonic() > self.end:
            raise AssertionError(f"gave up waiting: {self.what} {detail}".rstrip())

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


@dataclass
class Device:
    """One ts-mls client (``name`` in ``peer``) registered at the gateway as ``client_id``."""

    peer: TsMlsPeer
    name: str
    client_id: str
    api: Client  # with the device's own bearer token
    cursor: Any = None
    #: Per group: the highest log ``seq`` applied (items at or below it are repeats).
    applied: dict[bytes, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    #: Every commit-bundle answer, in order (for the test's accounting of wins and conflicts).
    submissions: list[Submission] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Device({self.name}, {self.client_id})"

    # ---- the directory ------------------------------------------------------------------------------
    def upload_key_packages(self, count: int = 1) -> int:
        """Make ``count`` KeyPackages and upload them; returns the gateway's ``stored``."""
        # The directory refuses lifetimes over a year (RFC 9420 §7.2: applications bound them): 30 days.
        now = int(time.time())
        life = {"not_before": now - 3600, "not_after": now + 30 * 86400}
        kps = [b64(self.peer.key_package(self.name, **life)) for _ in range(count)]
        path = f"/v1/clients/{self.client_id}/key-packages"
        resp = expect(self.api.post(path, {"key_packages": kps}), f"POST {path}", 201)
        return int(resp["stored"])

    # ---- the mailbox --------------------------------------------------------------------------------
    def poll(self, wait: float = POLL_WAIT, limit: int = 100) -> MailboxPage:
        """One mailbox read after the device's cursor (long-polls up to ``wait`` s when empty)."""
        query = {"wait": str(int(wait)), "limit": str(limit)}
        if self.cursor is not None:
            query["after"] = str(self.cursor)
        path = f"/v1/clients/{self.client_id}/mailbox?{urllib.parse.urlencode(query)}"
        resp = expect(self.api.get(path), f"GET {path}", 200)
        return MailboxPage.from_json(resp.body, self.cursor)

    def ack(self, up_to: Any) -> None:
        path = f"/v1/clients/{self.client_id}/mailbox/ack"
        expect(self.api.post(path, {"up_to": up_to}), f"POST {path}", 204)

    def drain_once(self, wait: float = POLL_WAIT) -> int:
        """Read one page, apply its items in order, ack them; returns how many items came."""
        page = self.poll(wait)
        for item in page.items:
            self.apply(item)
        if page.items:
            self.ack(page.items[-1].cursor)
        self.cursor = page.next_cursor
        return len(page.items)

    def sync(self, done: Callable[[Device], bool], deadline: Deadline) -> None:
        """Drain the mailbox until ``done(self)`` holds (or the deadline passes)."""
        while not done(self):
            deadline.check(f"({self!r} at {self.describe()})")
            self.drain_once(min(POLL_WAIT, max(1.0, deadline.remaining())))

    def sync_past(self, group_id: bytes, epoch: int, deadline: Deadline) -> None:
        """Drain the mailbox until the device is at ``epoch`` or later."""
        self.sync(lambda d: d.epoch(group_id) >= epoch, deadline)

    def sync_to_epoch(self, group_id: bytes, epoch: int, deadline: Deadline) -> None:
        self.sync_past(group_id, epoch, deadline)
        assert self.epoch(group_id) == epoch, f"{self!r} went past epoch {epoch}: {self.describe()}"

    # ---- applying items -----------------------------------------------------------------------------
    def apply(self, item: MailboxItem) -> None:
        """Apply one mailbox item (a repeat of an applied ``seq`` is skipped)."""
        if item.kind == "welcome":
            self._join(item)
            return
        last = self.applied.get(item.group_id)
        if last is None:
            raise AssertionError(f"{self!r}: {item.kind} seq {item.seq} for a group it has not joined")
        if item.seq <= last:
            return
        res = self.peer.process(self.name, item.message)
        assert res.kind == item.kind, f"{self!r}: mailbox says {item.kind}, the message is a {res.kind}"
        if res.data is not None:
            self.received.append(Received(item.group_id, item.seq, res.data))
        self.applied[item.group_id] = item.seq

    def _join(self, item: MailboxItem) -> None:
        if item.group_id in self.applied:
            return  # a repeated Welcome
        try:
            joined = self.peer.join(self.name, item.message)
        except PeerError as e:
            if "ratchet" not in e.message.lower():
                raise
            joined = self.peer.join(self.name, item.message, self.tree_from_gateway(item.group_id))
        assert joined.group_id == item.group_id, f"{self!r}: Welcome for another group than its item's"
        self.applied[item.group_id] = item.seq

    def tree_from_gateway(self, group_id: bytes) -> bytes:
        """The ratchet tree of the latest accepted GroupInfo (for a Welcome without the extension)."""
        path = f"/v1/groups/{gid_segment(group_id)}/group-info"
        return unb64(expect(self.api.get(path), f"GET {path}", 200)["ratchet_tree"])

    # ---- state --------------------------------------------------------------------------------------
    def epoch(self, group_id: bytes) -> int:
        """The device's epoch in the group, -1 before it joined."""
        if group_id not in self.applied:
            return -1
        return self.peer.epoch_authenticator(self.name, group_id=group_id)[1]

    def epoch_authenticator(self, group_id: bytes) -> tuple[bytes, int]:
        return self.peer.epoch_authenticator(self.name, group_id=group_id)

    def export(self, group_id: bytes, label: str, context: bytes, length: int) -> bytes:
        return self.peer.export(self.name, label, context, length, group_id=group_id)

    def texts(self, group_id: bytes) -> list[bytes]:
        """The application plaintexts received in the group, in log order."""
        return [r.data for r in self.received if r.group_id == group_id]

    def describe(self) -> str:
        return f"cursor={self.cursor!r} applied={ {b64(g): s for g, s in self.applied.items()} }"

    # ---- sending through the log --------------------------------------------------------------------
    def send(self, group_id: bytes, data: bytes) -> int:
        """Encrypt ``data`` for the group and submit it to the log; returns its ``seq``."""
        message = self.peer.send(self.name, data, group_id=group_id)
        path = f"/v1/groups/{gid_segment(group_id)}/messages"
        resp = expect(self.api.post(path, {"message": b64(message)}), f"POST {path}", 201)
        return _int_field(resp.body, "seq")

    def submit_bundle(self, group_id: bytes, commit: CommitResult) -> Submission:
        """Submit a pending commit as a commit bundle; merge it on 201, drop it on 409."""
        assert commit.pending and commit.group_info is not None
        body = {
            "commit": b64(commit.commit),
            "group_info": b64(commit.group_info),
            "ratchet_tree": b64(commit.ratchet_tree),
        }
        if commit.welcome is not None:
            body["welcome"] = b64(commit.welcome)
        path = f"/v1/groups/{gid_segment(group_id)}/commit-bundles"
        outcome = Submission.from_response(self.api.post(path, body), f"POST {path}")
        self.submissions.append(outcome)
        if outcome.accepted:
            assert outcome.epoch == commit.epoch, (
                f"{self!r}: log says epoch {outcome.epoch}, not {commit.epoch}"
            )
            self.peer.merge_pending(self.name, group_id=group_id)
        else:
            self.peer.discard_pending(self.name, group_id=group_id)
        return outcome

    def prepare_update(self, group_id: bytes) -> CommitResult:
        """A pending self-update commit (full path) for the device's current epoch."""
        return self.peer.update(self.name, pending=True, group_id=group_id)

    def commit_with_retry(
        self, group_id: bytes, deadline: Deadline, first: CommitResult | None = None, attempts: int = 20
    ) -> Submission:
        """Commit a self-update until the log accepts one; after each conflict take the winner's commit
        from the mailbox first. ``first`` is an already prepared pending commit to start with."""
        commit = first
        for _ in range(attempts):
            commit = commit or self.prepare_update(group_id)
            outcome = self.submit_bundle(group_id, commit)
            if outcome.accepted:
                return outcome
            self.sync_past(group_id, outcome.epoch, deadline)
            commit = None
        raise AssertionError(f"{self!r}: no commit accepted in {attempts} attempts: {self.submissions}")


def create_devices(
    api: Client, peers: Sequence[TsMlsPeer], count: int, prefix: str = "device"
) -> list[Device]:
    """``count`` devices: each a gateway client (``POST /v1/clients`` with the tenant token ``api``) and
    a ts-mls client of suite 1, spread over ``peers`` round-robin."""
    devices = []
    for n in range(count):
        name = f"{prefix}-{n}"
        resp = expect(api.post("/v1/clients", {"name": name}), "POST /v1/clients", 201)
        client_id, token = resp["client_id"], resp["token"]
        assert isinstance(client_id, str) and client_id.startswith("cli_"), resp.body
        assert isinstance(token, str) and token, resp.body
        peer = peers[n % len(peers)]
        peer.new_client(name, name.encode(), DEVICE_SUITE)
        devices.append(Device(peer, name, client_id, api.with_token(token)))
    return devices


def in_parallel(items: Sequence[T], work: Callable[[T], R]) -> list[R]:
    """Run ``work`` for every item on its own thread; results in order, the first failure re-raised."""
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(work, items))


@dataclass
class HostedInbox:
    """A hosted identity's inbox, read with long-polls; keeps every event read."""

    api: Client
    identity_id: str
    cursor: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def poll(self, wait: float = POLL_WAIT) -> list[dict[str, Any]]:
        """One read after the cursor; the events are kept and returned."""
        query = {"wait": str(int(wait))}
        if self.cursor is not None:
            query["after"] = str(self.cursor)
        path = f"/v1/identities/{self.identity_id}/inbox?{urllib.parse.urlencode(query)}"
        body = expect(self.api.get(path), f"GET {path}", 200).body
        assert isinstance(body, dict) and isinstance(body.get("events"), list), f"GET {path}: {body!r}"
        events: list[dict[str, Any]] = body["events"]
        self.events.extend(events)
        nxt = body.get("next_cursor")
        self.cursor = nxt if nxt is not None else (events[-1]["cursor"] if events else self.cursor)
        return events

    def application_data(self, group_id: bytes) -> list[bytes]:
        """The application plaintexts of the group's events, in inbox order."""
        return [
            unb64(e["data"])
            for e in self.events
            if e.get("kind") == "application" and unb64(e["group_id"]) == group_id
        ]

    def wait_for(self, group_id: bytes, wanted: Sequence[bytes], deadline: Deadline) -> None:
        """Read until every plaintext of ``wanted`` arrived in the group."""
        while not set(wanted) <= set(self.application_data(group_id)):
            deadline.check(f"(inbox of {self.identity_id}: {len(self.events)} events)")
            self.poll(min(POLL_WAIT, max(1.0, deadline.remaining())))


__all__ = [
    "DEVICE_SUITE",
    "Deadline",
    "Device",
    "GatewayAnswerError",
    "HostedInbox",
    "MailboxItem",
    "MailboxPage",
    "Received",
    "Submission",
    "create_devices",
    "expect",
    "gid_segment",
    "group_id_of_segment",
    "in_parallel",
]
