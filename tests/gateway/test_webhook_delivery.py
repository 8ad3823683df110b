"""Webhook delivery end to end (api-delivery.md, "Webhook for a hosted identity", "Details … Webhooks").

The dispatcher runs over a real store (SQLite in tmp_path), a real envelope (a SoftHSM2 token of this
module's own) and delivers to a real local aiohttp server that checks every signature and answers 500 to
the attempts it is told to fail. Inbox events are written as the integrator's writers write them
(``tx.add_inbox_event(… seal_event(…))`` then ``wakeups.notify``). The tests show: order per identity,
nothing lost, no event sent while an earlier one is failing, a pause after the give-up window (a short
schedule) and a resume by PUT, a restart going on from ``delivered_cursor``, independent identities,
no replay of events from before the PUT unless ``after`` is given, the address policy applied again at
delivery time, and no secret in logs. The HTTP routes are checked against a real ``mls-gateway serve``.
Waits are bounded polls for a condition, never assertions on elapsed time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.api_webhooks import store_webhook
from gateway.delivery_metrics import DeliveryMetrics
from gateway.inbox_events import seal_event
from gateway.sqlite_store import SqliteStore
from gateway.sqlite_webhooks import WebhookRecord
from gateway.store import Identity, Tenant
from gateway.wakeups import Wakeups
from gateway.webhook_delivery import WEBHOOKS_CHANGED, DeliveryOptions, WebhookDispatcher
from gateway.webhooks import SIGNATURE_HEADER, RetrySchedule, seal_secret, verify_signature
from hsm import Token
from hsm.bootstrap import init_softhsm_token
from hsm.envelope import Envelope, create_wrap_key

from .gwclient import GatewayServer, b64

PIN_ENV = "MLSGW_WEBHOOK_TEST_PIN"
SECRET = "whsec_" + "k" * 26
GROUP = b"group-of-the-webhook-tests"
FAST = RetrySchedule(initial_s=0.02, max_s=0.1, give_up_after_s=3600.0)
#: How long a condition may take to become true before a test fails (generous: CI under load).
DEADLINE_S = 30.0


# ---- fixtures: a token, a store, identities --------------------------------------------------------------


@pytest.fixture(scope="module")
def envelope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envelope]:
    """An envelope over a SoftHSM2 token of this module (SOFTHSM2_CONF is put back afterwards)."""
    saved = {name: os.environ.get(name) for name in ("SOFTHSM2_CONF", PIN_ENV)}
    pin = secrets.token_hex(6)
    made = init_softhsm_token(
        tmp_path_factory.mktemp("webhook-hsm"),
        label=f"mlsgw-webhooks-{secrets.token_hex(4)}",
        pin=pin,
        so_pin=secrets.token_hex(6),
    )
    made.activate()
    os.environ[PIN_ENV] = pin
    token = Token.open(made.token_config(pin_env=PIN_ENV))
    create_wrap_key(token)
    env = Envelope(token)
    try:
        yield env
    finally:
        env.close()
        token.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "gateway.sqlite3")
    with s.transaction() as tx:
        tx.add_tenant(Tenant("tnt_webhooks", "webhooks"))
    yield s
    s.close()


def new_identity(store: SqliteStore) -> str:
    iid = f"idn_{secrets.token_hex(12)}"
    identity = Identity(
        iid, "tnt_webhooks", "bot", 1, b"cred", b"ref-" + iid.encode(), os.urandom(32), "p", "p"
    )
    with store.transaction() as tx:
        tx.add_identity(identity)
    return iid


def add_events(
    store: SqliteStore, envelope: Envelope, wakeups: Wakeups | None, iid: str, n: int
) -> list[int]:
    """Write ``n`` application events to the identity's inbox (one transaction), then wake the waiters."""
    cursors = []
    with store.transaction() as tx:
        for _ in range(n):
            seq = tx.last_inbox_cursor(iid) + 1
            event = {"kind": "application", "sender": {"type": "member", "leaf_index": 0}, "epoch": 1}
            event |= {"data": b64(b"hello %d" % seq), "authenticated_data": ""}
            cursors.append(tx.add_inbox_event(iid, GROUP, seq, seal_event(envelope, iid, GROUP, seq, event)))
    if wakeups is not None:
        wakeups.notify([iid])
    return cursors


def set_webhook(
    store: SqliteStore, envelope: Envelope, wakeups: Wakeups, iid: str, url: str, after: int | None = None
) -> int:
    """What ``PUT …/webhook`` does after its checks (:func:`gateway.api_webhooks.store_webhook`)."""
    with store.transaction() as tx:
        cursor = store_webhook(tx, iid, url, seal_secret(envelope, iid, SECRET.encode()), after)
    wakeups.notify([iid, WEBHOOKS_CHANGED])
    return cursor


def webhook(store: SqliteStore, iid: str) -> WebhookRecord:
    with store.read_transaction() as tx:
        found = tx.get_webhook(iid)
    assert found is not None
    return found


async def until(what: str, predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


# ---- the receiver ----------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A local webhook endpoint: checks each request, answers 500 while told to fail, logs everything."""

    secret: str = SECRET
    #: cursor -> how many more attempts of it fail
    fail: dict[int, int] = field(default_factory=dict)
    fail_all: bool = False
    #: cursor -> how many more attempts of it get no answer in time (the request hangs, then 200)
    hang: dict[int, int] = field(default_factory=dict)
    #: (cursor, status answered) of every request, in arrival order
    log: list[tuple[int, int]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(self.secret, body, request.headers.get(SIGNATURE_HEADER, "")):
            self.problems.append("bad signature")
        if request.content_type != "application/json":
            self.problems.append(f"content type {request.content_type}")
        event = json.loads(body)
        cursor = int(event["cursor"])
        if self.hang.get(cursor, 0) > 0:
            self.hang[cursor] -= 1
            self.log.append((cursor, 0))
            await asyncio.sleep(1.0)  # well past the sender's attempt timeout
            return web.Response(status=200)
        failing = self.fail_all or self.fail.get(cursor, 0) > 0
        if failing and not self.fail_all:
            self.fail[cursor] -= 1
        status = 500 if failing else 200
        self.log.append((cursor, status))
        self.bodies.append(event)
        return web.Response(status=status)

    def delivered(self) -> list[int]:
        return [c for c, status in self.log if status == 200]

    def check_order(self, cursors: list[int]) -> None:
        """Every request was for the first event not yet acknowledged: in order, none skipped, none early."""
        assert not self.problems, self.problems
        i = 0
        for cursor, status in self.log:
            assert i < len(cursors) and cursor == cursors[i], (
                f"sent {cursor} while {cursors[i:]} waited: {self.log}"
            )
            i += status == 200
        assert i == len(cursors), f"not all delivered: {self.log}"


@contextlib.asynccontextmanager
async def receiver(**kw: Any) -> AsyncIterator[Receiver]:
    r = Receiver(**kw)
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    r.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield r
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def dispatcher(
    store: SqliteStore,
    envelope: Envelope,
    wakeups: Wakeups,
    metrics: DeliveryMetrics | None = None,
    **options: Any,
) -> AsyncIterator[WebhookDispatcher]:
    opts = {"allow_private": True, "schedule": FAST, "poll_interval_s": 0.2, **options}
    d = WebhookDispatcher(store, envelope, wakeups, metrics=metrics, options=DeliveryOptions(**opts))
    task = asyncio.create_task(d.run())
    try:
        yield d
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- delivery --------------------------------------------------------------------------------------------


def test_events_are_delivered_in_order_through_failures(store: SqliteStore, envelope: Envelope) -> None:
    registry = CollectorRegistry()
    metrics = DeliveryMetrics(registry)

    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        async with receiver() as r, dispatcher(store, envelope, wakeups, metrics):
            assert set_webhook(store, envelope, wakeups, iid, r.url) == 0
            r.fail = {1: 3, 4: 2}  # the first and the fourth event of this fresh store
            cursors = add_events(store, envelope, wakeups, iid, 6)
            assert cursors == [1, 2, 3, 4, 5, 6]
            await until("all delivered", lambda: len(r.delivered()) == 6)
            await until("cursor stored", lambda: webhook(store, iid).delivered_cursor == cursors[-1])
        r.check_order(cursors)
        assert [c for c, s in r.log if s == 500] == [cursors[0]] * 3 + [cursors[3]] * 2
        first = r.bodies[3]  # the first event's fourth attempt, the one that succeeded
        assert first["cursor"] == str(cursors[0]) and first["seq"] == 1
        assert base64.b64decode(first["group_id"], validate=True) == GROUP
        assert first["kind"] == "application" and base64.b64decode(first["data"]) == b"hello 1"
        hook = webhook(store, iid)
        assert (hook.attempts, hook.failing_since, hook.next_attempt_at, hook.paused) == (
            0,
            None,
            None,
            False,
        )

    asyncio.run(scenario())
    assert registry.get_sample_value("mlsgw_webhook_retries_total") == 5
    for outcome, count in (("ok", 6), ("failed", 5)):
        labels = {"channel": "webhook", "outcome": outcome}
        assert registry.get_sample_value("mlsgw_deliveries_total", labels) == count


def test_an_attempt_that_times_out_is_retried(store: SqliteStore, envelope: Envelope) -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        async with receiver() as r, dispatcher(store, envelope, wakeups, attempt_timeout_s=0.1):
            set_webhook(store, envelope, wakeups, iid, r.url)
            r.hang = {1: 2}
            cursors = add_events(store, envelope, wakeups, iid, 2)
            await until("delivered after time-outs", lambda: len(r.delivered()) == 2)
        r.check_order(cursors)
        assert [c for c, status in r.log if status == 0] == [cursors[0]] * 2

    asyncio.run(scenario())


def test_new_events_wake_the_dispatcher_and_polling_finds_the_others(
    store: SqliteStore, envelope: Envelope
) -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        # A poll interval longer than the deadline: only the wake-ups can deliver in time.
        async with receiver() as r, dispatcher(store, envelope, wakeups, poll_interval_s=3600.0):
            set_webhook(store, envelope, wakeups, iid, r.url)
            woken = add_events(store, envelope, wakeups, iid, 2)
            await until("woken delivery", lambda: len(r.delivered()) == 2)
            # Delivery is at least once: the receiver may hold an event whose cursor the dispatcher has
            # not saved yet; stopping it then would send that event again. Wait for the saved cursor.
            await until("cursor saved", lambda: webhook(store, iid).delivered_cursor >= woken[-1])
        # Written by "another process" (no wake-up): a short poll finds them.
        async with receiver() as r2:
            set_webhook(store, envelope, wakeups, iid, r2.url)  # a new URL keeps the cursor
            async with dispatcher(store, envelope, wakeups, poll_interval_s=0.1):
                await asyncio.sleep(0.1)
                unnotified = add_events(store, envelope, None, iid, 2)
                await until("polled delivery", lambda: len(r2.delivered()) == 2)
        r.check_order(woken)
        r2.check_order(unnotified)

    asyncio.run(scenario())


def test_pause_after_the_give_up_window_and_resume_by_put(store: SqliteStore, envelope: Envelope) -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        schedule = RetrySchedule(initial_s=0.02, max_s=0.05, give_up_after_s=0.5)
        async with receiver(fail_all=True) as r, dispatcher(store, envelope, wakeups, schedule=schedule):
            set_webhook(store, envelope, wakeups, iid, r.url)
            cursors = add_events(store, envelope, wakeups, iid, 3)
            await until("paused", lambda: webhook(store, iid).paused)
            hook = webhook(store, iid)
            assert hook.delivered_cursor == 0 and hook.attempts >= 2 and hook.failing_since is not None
            assert {c for c, _ in r.log} == {cursors[0]}  # never a later event while the first failed
            attempts = len(r.log)
            await asyncio.sleep(0.5)  # paused: nothing more is sent (events wait in the inbox)
            assert len(r.log) == attempts and webhook(store, iid).paused
            with store.read_transaction() as tx:
                assert [e.cursor for e in tx.inbox_after(iid, 0, 10)] == cursors

            r.fail_all = False
            assert set_webhook(store, envelope, wakeups, iid, r.url) == 0  # the PUT keeps the place
            await until("resumed", lambda: len(r.delivered()) == 3)
            hook = webhook(store, iid)
            assert not hook.paused and hook.failing_since is None
        r.check_order(cursors)

    asyncio.run(scenario())


def test_a_restarted_dispatcher_goes_on_from_the_delivered_cursor(
    store: SqliteStore, envelope: Envelope
) -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        async with receiver() as r:
            async with dispatcher(store, envelope, wakeups):
                set_webhook(store, envelope, wakeups, iid, r.url)
                before = add_events(store, envelope, wakeups, iid, 3)
                await until("first run", lambda: webhook(store, iid).delivered_cursor == before[-1])
            after = add_events(store, envelope, wakeups, iid, 3)  # while no dispatcher runs
            r.fail = {after[0]: 1}
            async with dispatcher(store, envelope, Wakeups()):
                await until("second run", lambda: webhook(store, iid).delivered_cursor == after[-1])
        r.check_order(before + after)

    asyncio.run(scenario())


def test_identities_do_not_wait_for_each_other(store: SqliteStore, envelope: Envelope) -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        stuck, fine = new_identity(store), new_identity(store)
        async with receiver(fail_all=True) as bad, receiver() as good:
            async with dispatcher(store, envelope, wakeups):
                set_webhook(store, envelope, wakeups, stuck, bad.url)
                set_webhook(store, envelope, wakeups, fine, good.url)
                add_events(store, envelope, wakeups, stuck, 2)
                cursors = add_events(store, envelope, wakeups, fine, 4)
                await until("the other identity's events", lambda: len(good.delivered()) == 4)
                await until("retries of the failing one", lambda: webhook(store, stuck).attempts >= 2)
            assert webhook(store, stuck).delivered_cursor == 0
        good.check_order(cursors)

    asyncio.run(scenario())


def test_events_before_the_put_are_not_replayed_unless_asked(store: SqliteStore, envelope: Envelope) -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        old = add_events(store, envelope, wakeups, iid, 2)
        async with receiver() as r, dispatcher(store, envelope, wakeups):
            assert set_webhook(store, envelope, wakeups, iid, r.url) == old[-1]
            new = add_events(store, envelope, wakeups, iid, 1)
            await until("the new event", lambda: len(r.delivered()) == 1)
            r.check_order(new)
            r.log.clear()
            assert set_webhook(store, envelope, wakeups, iid, r.url, after=0) == 0  # replay from the start
            await until("the replay", lambda: len(r.delivered()) == 3)
            r.check_order(old + new)

    asyncio.run(scenario())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_non_public_targets_fail_at_delivery_time(store: SqliteStore, envelope: Envelope, host: str) -> None:
    """A webhook set while allowed (or whose name resolves differently now) is checked at each attempt."""

    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        async with receiver() as r, dispatcher(store, envelope, wakeups, allow_private=False):
            set_webhook(store, envelope, wakeups, iid, r.url.replace("127.0.0.1", host))
            add_events(store, envelope, wakeups, iid, 1)
            await until("failed attempts", lambda: webhook(store, iid).attempts >= 2)
        assert r.log == []
        assert webhook(store, iid).delivered_cursor == 0

    asyncio.run(scenario())


def test_secrets_stay_out_of_logs_and_reprs(
    store: SqliteStore, envelope: Envelope, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        wakeups = Wakeups()
        iid = new_identity(store)
        async with receiver(fail_all=True) as r, dispatcher(store, envelope, wakeups):
            set_webhook(store, envelope, wakeups, iid, r.url)
            add_events(store, envelope, wakeups, iid, 1)
            await until("failures", lambda: webhook(store, iid).attempts >= 3)
            assert SECRET not in repr(webhook(store, iid))
            assert "sealed_secret" not in repr(webhook(store, iid))

    asyncio.run(scenario())
    assert "webhook delivery for" in caplog.text  # the failures were logged ...
    assert SECRET not in caplog.text  # ... without the secret


# ---- the HTTP routes against a real server ---------------------------------------------------------------


@contextlib.contextmanager
def server(folder: Path, env: dict[str, str] | None = None) -> Iterator[GatewayServer]:
    s = GatewayServer(folder, env=env)
    s.start()
    try:
        yield s
    finally:
        s.kill()


def test_webhook_routes(tmp_path: Path) -> None:
    secret = "s3cr3t-" + secrets.token_hex(16)
    with server(tmp_path / "gw", {"MLSGW_WEBHOOK_ALLOW_PRIVATE": "1"}) as gw:
        api = gw.client(gw.admin.create_tenant("a")[1])
        other = gw.client(gw.admin.create_tenant("b")[1])
        iid = api.create_identity("bot")["identity_id"]
        path = f"/v1/identities/{iid}/webhook"
        url = "http://127.0.0.1:9/hook"

        api.get(path).expect(404)
        put = api.request("PUT", path, {"url": url, "secret": secret}).expect(200)
        assert put.body == {"url": url, "after": "0"} and secret.encode() not in put.raw
        shown = api.get(path).expect(200)
        assert shown.body == {"url": url, "paused": False, "delivered_cursor": "0"}
        assert secret.encode() not in shown.raw
        assert (
            api.request("PUT", path, {"url": url, "secret": secret, "after": "7"}).expect(200)["after"] == "7"
        )
        assert api.get(path).expect(200)["delivered_cursor"] == "7"

        for body in (
            {"url": "ftp://127.0.0.1/hook", "secret": secret},
            {"url": "https://user:pw@127.0.0.1/hook", "secret": secret},
            {"url": url, "secret": "short"},
            {"url": url, "secret": "x" * 257},
            {"url": url},
            {"secret": secret},
            {"url": url, "secret": secret, "after": "-1"},
            {"url": url, "secret": secret, "after": "abc"},
            {"url": url, "secret": secret, "after": 7},
            {"url": 7, "secret": secret},
        ):
            r = api.request("PUT", path, body)
            assert (r.status, r.code) == (400, "invalid_request"), (body, r.body)
            assert secret.encode() not in r.raw

        for client, p in ((other, path), (api, "/v1/identities/idn_000000000000000000000000/webhook")):
            assert client.request("PUT", p, {"url": url, "secret": secret}).status == 404
            assert client.get(p).status == 404
            assert client.delete(p).status == 404
        assert api.get(path).expect(200)["url"] == url  # untouched by the other tenant

        db = (gw.data_dir / "gateway.sqlite3").read_bytes()
        wal = gw.data_dir / "gateway.sqlite3-wal"
        assert secret.encode() not in db + (wal.read_bytes() if wal.exists() else b"")
        api.delete(path).expect(204)
        api.get(path).expect(404)
        api.delete(path).expect(404)
        assert secret not in gw.log_tail(10**6)


def test_private_webhook_urls_are_refused_unless_allowed(tmp_path: Path) -> None:
    with server(tmp_path / "gw") as gw:
        api = gw.client(gw.admin.create_tenant("a")[1])
        iid = api.create_identity("bot")["identity_id"]
        path = f"/v1/identities/{iid}/webhook"
        for url in (
            "http://127.0.0.1:8080/hook",
            "http://localhost:8080/hook",
            "http://[::1]/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "https://169.254.169.254/latest/meta-data",
            "http://192.168.0.10/hook",
        ):
            r = api.request("PUT", path, {"url": url, "secret": SECRET})
            assert (r.status, r.code) == (400, "invalid_request"), (url, r.body)
        # A public literal address is taken (nothing listens there in a test: deliveries would just fail).
        api.request("PUT", path, {"url": "https://93.184.216.34/hook", "secret": SECRET}).expect(200)
        api.delete(path).expect(204)
        with sqlite3.connect(gw.data_dir / "gateway.sqlite3") as conn:
            assert conn.execute("SELECT count(*) FROM webhooks").fetchone() == (0,)
