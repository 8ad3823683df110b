"""Reading mailboxes (clients) and inboxes (hosted identities): pages, cursors, long-poll, acks,
isolation, WebSockets and retention (api-delivery.md "Mailboxes (clients) and inboxes", "Cursors").

Mailboxes are read from a real ``mls-gateway serve`` process; their items are written into its database
from the test process with the store's own writer methods (:class:`mailbox_helpers.Writer`), so a
long-poll there sees them by re-reading the store (no wake-up crosses processes). Inboxes (sealed events)
and wake-ups are tested on the app served in this process (:func:`mailbox_helpers.local_gateway`).
No assertion depends on timing: a wait is only bounded by a generous guard against a hang.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gateway.mailboxes import purge_expired_items

from .gwclient import Client, GatewayServer
from .mailbox_helpers import Local, Writer, local_gateway
from .stores import server_database

#: Mailboxes read from a real server on both stores (issue 15); the inbox tests use the in-process app.
pytestmark = pytest.mark.both_stores

GID = b"group-one"
GID2 = b"group-two"
#: Guard against a hang (never reached when the code is right).
GUARD_S = 60.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def writer(shared_gateway: GatewayServer) -> Iterator[Writer]:
    w = Writer(server_database(shared_gateway))
    yield w
    w.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    with local_gateway(tmp_path_factory.mktemp("local")) as gw:
        yield gw


class Tenant:
    """A tenant of the shared gateway with one client, and the clients' tokens."""

    def __init__(self, server: GatewayServer, writer: Writer) -> None:
        self.server, self.writer = server, writer
        self.tenant_id, token = server.admin.create_tenant("mailboxes")
        self.api = server.client(token)
        self.client_id, self.client_token = writer.add_client(self.tenant_id)
        self.device = server.client(self.client_token)

    def mailbox(self, client_id: str | None = None) -> str:
        return f"/v1/clients/{client_id or self.client_id}/mailbox"

    def put(self, kind: str, message: bytes, group_id: bytes = GID, to: list[str] | None = None) -> int:
        return self.writer.deliver(self.tenant_id, to or [self.client_id], group_id, kind, message)


@pytest.fixture
def t(shared_gateway: GatewayServer, writer: Writer) -> Tenant:
    return Tenant(shared_gateway, writer)


# ---- pages and cursors ---------------------------------------------------------------------------------


def test_items_in_order_with_cursors_and_next_cursor(t: Tenant) -> None:
    empty = t.device.get(t.mailbox()).expect(200).body
    assert empty == {"items": [], "next_cursor": "0"}
    seqs = [t.put("application", b"m1"), t.put("welcome", b"w2", GID2), t.put("commit", b"c3")]
    page = t.device.get(t.mailbox()).expect(200).body
    items = page["items"]
    assert [(i["kind"], base64.b64decode(i["message"])) for i in items] == [
        ("application", b"m1"),
        ("welcome", b"w2"),  # a Welcome item carries the Welcome, with the seq of its commit
        ("commit", b"c3"),
    ]
    assert [i["group_id"] for i in items] == [b64(GID), b64(GID2), b64(GID)]
    assert [i["seq"] for i in items] == seqs
    cursors = [int(i["cursor"]) for i in items]
    assert cursors == sorted(cursors) and len(set(cursors)) == 3
    assert page["next_cursor"] == items[-1]["cursor"]
    # The tenant token reads the same mailbox.
    assert t.api.get(t.mailbox()).expect(200).body == page
    # after: strictly after; next_cursor stays at after when nothing follows.
    rest = t.device.get(t.mailbox() + f"?after={items[0]['cursor']}").expect(200).body
    assert rest["items"] == items[1:]
    end = t.device.get(t.mailbox() + f"?after={page['next_cursor']}").expect(200).body
    assert end == {"items": [], "next_cursor": page["next_cursor"]}


def test_limit_pages_through_everything(t: Tenant) -> None:
    for n in range(7):
        t.put("application", b"m%d" % n)
    seen: list[bytes] = []
    after = "0"
    while True:
        page = t.device.get(t.mailbox() + f"?after={after}&limit=3").expect(200).body
        assert len(page["items"]) <= 3
        if not page["items"]:
            break
        seen += [base64.b64decode(i["message"]) for i in page["items"]]
        after = page["next_cursor"]
    assert seen == [b"m%d" % n for n in range(7)]


BAD_QUERIES = ["after=-1", "after=abc", "after=1.5", "after=99999999999999999999", "wait=-1", "wait=abc"]
BAD_QUERIES += ["wait=nan", "wait=inf", "limit=0", "limit=1001", "limit=ten", "limit=-5"]


@pytest.mark.parametrize("query", BAD_QUERIES)
def test_bad_query_parameters_are_400(t: Tenant, query: str) -> None:
    r = t.device.get(t.mailbox() + "?" + query)
    assert (r.status, r.code) == (400, "invalid_request"), r.body
    assert r.headers["content-type"].startswith("application/problem+json")


def test_wait_over_30_is_capped_not_refused(t: Tenant) -> None:
    t.put("application", b"here")
    page = t.device.get(t.mailbox() + "?wait=3600").expect(200).body
    assert [base64.b64decode(i["message"]) for i in page["items"]] == [b"here"]


def test_long_poll_returns_with_an_item_written_mid_wait_by_another_process(t: Tenant) -> None:
    """Nothing there: the request waits; an item committed by another process arrives in the answer."""
    result: dict[str, Any] = {}

    def poll() -> None:
        result["r"] = Client(t.server.port, t.client_token, timeout=GUARD_S).get(t.mailbox() + "?wait=30")

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)  # most likely inside the wait (if not, the first read finds the item: same answer)
    t.put("application", b"late")
    thread.join(GUARD_S)
    assert not thread.is_alive()
    page = result["r"].expect(200).body
    assert [base64.b64decode(i["message"]) for i in page["items"]] == [b"late"]


# ---- acks ----------------------------------------------------------------------------------------------


def test_ack_deletes_up_to_the_cursor_inclusive_and_nothing_else(t: Tenant) -> None:
    for n in range(4):
        t.put("application", b"m%d" % n)
    other, _ = t.writer.add_client(t.tenant_id)
    t.put("application", b"for the other client", to=[other])
    items = t.device.get(t.mailbox()).expect(200)["items"]
    r = t.device.post(t.mailbox() + "/ack", {"up_to": items[1]["cursor"]})
    assert r.status == 204 and not r.raw
    left = t.device.get(t.mailbox()).expect(200)["items"]
    assert left == items[2:]
    assert len(t.api.get(t.mailbox(other)).expect(200)["items"]) == 1
    # Acking again, or behind what is left, is harmless; the tenant token may ack too.
    t.device.post(t.mailbox() + "/ack", {"up_to": items[1]["cursor"]}).expect(204)
    # A cursor is given back as the gateway gave it, a string: the number alone is refused.
    assert t.api.post(t.mailbox() + "/ack", {"up_to": int(items[-1]["cursor"])}).status == 400
    t.api.post(t.mailbox() + "/ack", {"up_to": items[-1]["cursor"]}).expect(204)
    assert t.device.get(t.mailbox()).expect(200)["items"] == []


def test_ack_honours_idempotency_keys(t: Tenant) -> None:
    t.put("application", b"m")
    up_to = t.device.get(t.mailbox()).expect(200)["items"][0]["cursor"]
    t.device.post(t.mailbox() + "/ack", {"up_to": up_to}, idem="ack-1").expect(204)
    t.device.post(t.mailbox() + "/ack", {"up_to": up_to}, idem="ack-1").expect(204)
    assert t.device.post(t.mailbox() + "/ack", {"up_to": "0"}, idem="ack-1").status == 409


@pytest.mark.parametrize(
    "body", [{}, {"up_to": None}, {"up_to": "x"}, {"up_to": -1}, {"up_to": True}, {"up_to": 3}]
)
def test_malformed_ack_is_400(t: Tenant, body: dict[str, Any]) -> None:
    t.put("application", b"kept")
    r = t.device.post(t.mailbox() + "/ack", body)
    assert (r.status, r.code) == (400, "invalid_request"), r.body
    assert len(t.device.get(t.mailbox()).expect(200)["items"]) == 1


# ---- isolation -----------------------------------------------------------------------------------------


def test_other_mailboxes_are_not_found(t: Tenant, shared_gateway: GatewayServer, writer: Writer) -> None:
    t.put("application", b"private")
    other_client, other_token = writer.add_client(t.tenant_id)
    stranger = Tenant(shared_gateway, writer)
    refused = [
        (shared_gateway.client(other_token), t.mailbox()),  # another client's token, same tenant
        (stranger.api, t.mailbox()),  # another tenant's token
        (stranger.device, t.mailbox()),  # another tenant's client
        (t.api, t.mailbox("cli_000000000000000000000000")),  # no such client
        (t.device, f"/v1/identities/{t.client_id}/inbox"),  # client tokens do not reach inboxes
    ]
    for api, path in refused:
        for method, tail, body in (
            ("GET", "", None),
            ("POST", "/ack", {"up_to": "999"}),
            ("GET", "/ws", None),
        ):
            r = api.request(method, path + tail, body)
            assert (r.status, r.code) == (404, "not_found"), (path + tail, r.body)
    assert shared_gateway.client("mlsgw_nope").get(t.mailbox()).status == 401
    assert len(t.device.get(t.mailbox()).expect(200)["items"]) == 1  # nothing was acked
    assert other_client != t.client_id


# ---- WebSocket (real server) ---------------------------------------------------------------------------


async def _ws_session(t: Tenant, after: str) -> list[dict[str, Any]]:
    """Open the socket, take 3 frames, ack the second, write one more item, take it, close."""
    url = f"http://127.0.0.1:{t.server.port}{t.mailbox()}/ws?after={after}"
    headers = {"Authorization": f"Bearer {t.client_token}"}
    got: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        for _ in range(3):
            got.append(json.loads(await ws.receive_str(timeout=GUARD_S)))
        await ws.send_str(json.dumps({"ack": got[1]["cursor"]}))
        await asyncio.to_thread(t.put, "commit", b"pushed")
        got.append(json.loads(await ws.receive_str(timeout=GUARD_S)))
    return got


def test_websocket_pushes_in_order_and_takes_acks(t: Tenant) -> None:
    t.put("application", b"before")
    first = t.device.get(t.mailbox()).expect(200)["items"][0]
    for n in range(3):
        t.put("application", b"m%d" % n)
    got = asyncio.run(_ws_session(t, first["cursor"]))
    assert [base64.b64decode(g["message"]) for g in got] == [b"m0", b"m1", b"m2", b"pushed"]
    assert set(got[0]) == {"cursor", "group_id", "seq", "kind", "message"}
    # The ack frame deleted everything up to the second pushed item, inclusive.
    left = [base64.b64decode(i["message"]) for i in t.device.get(t.mailbox()).expect(200)["items"]]
    assert left == [b"m2", b"pushed"]


async def _ws_frame_refused(t: Tenant, frame: str | bytes) -> tuple[int | None, str]:
    url = f"http://127.0.0.1:{t.server.port}{t.mailbox()}/ws"
    headers = {"Authorization": f"Bearer {t.client_token}"}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
        while True:
            msg = await ws.receive(timeout=GUARD_S)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return ws.close_code, str(msg.extra or "")


@pytest.mark.parametrize("frame", ["nope", "[]", '{"ack": "x"}', '{"ack": "1", "more": 1}', "{}", b"\x00"])
def test_websocket_malformed_frame_closes_with_policy_violation(t: Tenant, frame: str | bytes) -> None:
    t.put("application", b"kept")
    code, _ = asyncio.run(_ws_frame_refused(t, frame))
    assert code == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert len(t.device.get(t.mailbox()).expect(200)["items"]) == 1


def test_websocket_needs_an_upgrade_and_a_cursor(t: Tenant) -> None:
    r = t.device.get(t.mailbox() + "/ws")  # a plain GET
    assert (r.status, r.code) == (400, "invalid_request")
    r = t.device.get(t.mailbox() + "/ws?after=x")
    assert (r.status, r.code) == (400, "invalid_request")


# ---- retention and depth -------------------------------------------------------------------------------


def test_retention_purge_at_start_and_depth_gauge(gateway: GatewayServer) -> None:
    """Items older than delivery.mailbox_retention_s (7 days by default) go at the purge (start-up)."""
    w = Writer(server_database(gateway))
    try:
        t = Tenant(gateway, w)
        t.put("application", b"old")
        w.backdate("mailbox", "client_id", t.client_id, 8 * 24 * 3600)
        t.put("application", b"new")
        assert t.api.metric("mlsgw_mailbox_depth", box="mailbox") == 2
        gateway.restart()  # the retention task runs at start-up, in the background (under its lease)
        deadline = time.monotonic() + GUARD_S
        while len(items := t.device.get(t.mailbox()).expect(200)["items"]) > 1:
            assert time.monotonic() < deadline, "the old item was not purged after the restart"
            time.sleep(0.1)
        assert [base64.b64decode(i["message"]) for i in items] == [b"new"]
        assert t.api.metric("mlsgw_mailbox_depth", box="mailbox") == 1
        assert t.api.metric("mlsgw_deliveries_total", channel="mailbox", outcome="ok") >= 1
    finally:
        w.close()


# ---- inboxes (in-process app: sealed events, wake-ups) -------------------------------------------------


def test_inbox_events_opened_in_order_and_acked(local: Local) -> None:
    _, token = local.tenant()
    iid = local.identity(token)
    path = f"/v1/identities/{iid}/inbox"
    events = [{"kind": "joined", "epoch": 1}, {"kind": "application", "data": b64(b"hi"), "epoch": 1}]
    cursors = [local.add_event(iid, GID, seq, e) for seq, e in enumerate(events, 1)]
    status, page = local.call("GET", path, token)
    assert status == 200
    assert page["events"] == [
        {"cursor": str(c), "group_id": b64(GID), "seq": n, **e}
        for n, (c, e) in enumerate(zip(cursors, events), 1)
    ]
    assert page["next_cursor"] == str(cursors[-1])
    assert local.call("POST", path + "/ack", token, {"up_to": str(cursors[0])})[0] == 204
    assert [e["seq"] for e in local.call("GET", path, token)[1]["events"]] == [2]
    # Another tenant's token, the admin token, unknown identities: 404.
    _, stranger = local.tenant()
    for who, p in ((stranger, path), (local.admin_token, path), (token, "/v1/identities/idn_0/inbox")):
        assert local.call("GET", p, who)[0] == 404
        assert local.call("POST", p + "/ack", who, {"up_to": "9"})[0] == 404


def test_inbox_long_poll_is_woken_by_a_write(local: Local) -> None:
    _, token = local.tenant()
    iid = local.identity(token)
    wakeups = local.runtime.service.wakeups

    async def scenario() -> tuple[int, Any]:
        poll = asyncio.ensure_future(local.acall("GET", f"/v1/identities/{iid}/inbox?wait=30", token))
        async with asyncio.timeout(GUARD_S):
            while iid not in wakeups._watches:  # the request is waiting
                await asyncio.sleep(0.01)
        await asyncio.to_thread(local.add_event, iid, GID, 1, {"kind": "joined", "epoch": 1})
        return await asyncio.wait_for(poll, GUARD_S)

    status, page = local.run(scenario())
    assert status == 200 and [e["kind"] for e in page["events"]] == ["joined"]
    assert iid not in wakeups._watches  # the watch went with the request


def test_many_inbox_sockets_push_and_close_without_leaks(local: Local) -> None:
    _, token = local.tenant()
    iid = local.identity(token)
    wakeups = local.runtime.service.wakeups

    async def scenario() -> list[list[int]]:
        baseline = len(asyncio.all_tasks())
        url, headers = f"/v1/identities/{iid}/inbox/ws", {"Authorization": f"Bearer {token}"}
        sockets = [await local.client.ws_connect(url, headers=headers) for _ in range(40)]
        await asyncio.to_thread(local.add_event, iid, GID, 1, {"kind": "joined", "epoch": 1})
        await asyncio.to_thread(local.add_event, iid, GID, 2, {"kind": "commit", "epoch": 2})
        got = [[json.loads(await ws.receive_str(timeout=GUARD_S))["seq"] for _ in range(2)] for ws in sockets]
        await sockets[0].send_str(json.dumps({"ack": str(1 << 40)}))
        for ws in sockets:
            await ws.close()
        async with asyncio.timeout(GUARD_S):
            while len(asyncio.all_tasks()) > baseline or iid in wakeups._watches:
                await asyncio.sleep(0.02)
        return got

    assert local.run(scenario()) == [[1, 2]] * 40
    assert local.call("GET", f"/v1/identities/{iid}/inbox", token)[1]["events"] == []  # the ack frame


def test_purge_expired_items_keeps_recent_ones(local: Local) -> None:
    tenant_id, token = local.tenant()
    iid = local.identity(token)
    client_id, _ = local.writer.add_client(tenant_id)
    local.add_event(iid, GID, 1, {"kind": "joined", "epoch": 1})
    local.writer.deliver(tenant_id, [client_id], GID, "application", b"old")
    local.writer.backdate("inbox", "identity_id", iid, 100)
    local.writer.backdate("mailbox", "client_id", client_id, 100)
    local.add_event(iid, GID, 2, {"kind": "commit", "epoch": 2})
    local.writer.deliver(tenant_id, [client_id], GID, "application", b"new")
    assert purge_expired_items(local.runtime.store, 50) >= 2
    assert [e["seq"] for e in local.call("GET", f"/v1/identities/{iid}/inbox", token)[1]["events"]] == [2]
    mailbox = local.call("GET", f"/v1/clients/{client_id}/mailbox", token)[1]["items"]
    assert [base64.b64decode(i["message"]) for i in mailbox] == [b"new"]


async def _socket_across_stop(server: GatewayServer, t: Tenant) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.port}{t.mailbox()}/ws"
    headers = {"Authorization": f"Bearer {t.client_token}"}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        code = await asyncio.to_thread(server.stop)
        msg = await ws.receive(timeout=GUARD_S)
        return code, msg.data if msg.type == aiohttp.WSMsgType.CLOSE else msg.type


@pytest.mark.sqlite_only("closing sockets at a graceful stop does not touch the store")
def test_graceful_stop_closes_open_sockets_with_going_away(gateway: GatewayServer) -> None:
    w = Writer(server_database(gateway))
    try:
        t = Tenant(gateway, w)
    finally:
        w.close()
    code, closed = asyncio.run(_socket_across_stop(gateway, t))
    assert code == 0, gateway.log_tail()
    assert closed == aiohttp.WSCloseCode.GOING_AWAY
