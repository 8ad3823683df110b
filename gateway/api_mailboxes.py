"""HTTP and WebSocket routes of mailboxes (clients) and inboxes (hosted identities), api-delivery.md
"Mailboxes (clients) and inboxes (hosted identities)": :data:`MAILBOX_ROUTES`.

**Long-poll** (``GET …/mailbox``, ``GET …/inbox``): with ``wait`` and nothing after ``after``, the request
registers its wake-up watch (:mod:`gateway.wakeups`) *before* reading the store, then waits for a wake-up
and reads again, until something is there or ``wait`` is over; it also re-reads every :data:`POLL_S`
seconds (a write by another gateway process wakes nobody here). It answers the (possibly empty) page.

**WebSocket** (``GET …/mailbox/ws``, ``GET …/inbox/ws``, bearer token in ``Authorization``, checked
before the upgrade: a refused one answers the same problem documents as the other routes). The server
pushes one item (or event) per text frame, in order, the same JSON objects as the long-poll's, starting
after the ``after`` query parameter, then waits for wake-ups (and re-reads every :data:`POLL_S` s). The
client sends ``{"ack": cursor}`` text frames, with the effect of the ``…/ack`` route. Closing codes:

* 1008 (policy violation) — a frame that is not exactly ``{"ack": cursor}`` as JSON text, or a box the
  caller may no longer see (deleted); the close reason says which;
* 1011 (internal error) — the store or the HSM failed: reconnect later with ``after`` = the last cursor
  received (delivery is at least once);
* 1001 (going away) — the gateway is shutting down (:func:`close_sockets`, the app's ``on_shutdown``).

Each socket has one push task, cancelled and awaited when the socket ends, whichever side ends it; store
reads and acknowledgements run in the worker pool (``runtime.executor``) like every other operation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from functools import partial
from typing import Any, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web

from .context import REQUEST_ID
from .dispatch import Route, in_pool, principal, read_body, respond, runtime
from .errors import Problem, invalid, problem_from_exception
from .mailboxes import (
    Box,
    ClientMailbox,
    IdentityInbox,
    Page,
    PageQuery,
    parse_cursor,
    record_deliveries,
)

log = logging.getLogger("mls_gateway")

T = TypeVar("T")

#: Seconds between two reads of the store while a long-poll or a socket waits without a wake-up.
POLL_S = 5.0
#: Items read from the store at once for a socket.
PUSH_BATCH = 100
#: WebSocket ping interval (a peer that does not answer is closed).
HEARTBEAT_S = 30.0
#: The largest frame a client may send (an ack is a few dozen bytes).
MAX_FRAME_BYTES = 4096


def client_mailbox(request: web.Request) -> ClientMailbox:
    persistence = runtime(request).service.persistence
    return ClientMailbox(
        persistence=persistence, principal=principal(request), endpoint_id=request.match_info["client_id"]
    )


def identity_inbox(request: web.Request) -> IdentityInbox:
    rt = runtime(request)
    persistence, iid = rt.service.persistence, request.match_info["identity_id"]
    return IdentityInbox(
        persistence=persistence, envelope=rt.envelope, principal=principal(request), endpoint_id=iid
    )


# ---- long-poll and ack -------------------------------------------------------------------------------


async def _read(request: web.Request, box: Box, after: int, limit: int, channel: str, count: bool) -> Page:
    """One read in the worker pool; a failure of ours counts as a ``failed`` delivery of ``channel``, and
    with ``count`` the entries read count as delivered (``mlsgw_deliveries``, latency)."""
    metrics = runtime(request).metrics.delivery
    try:
        # A box read follows an admitted request (a long poll's next look, a socket's push): never 429.
        page = await in_pool(request, lambda scope: box.read(after, limit), refusable=False)
    except Exception as e:
        if problem_from_exception(e).status >= 500:
            metrics.delivered(channel, False)
        raise
    if count:
        record_deliveries(metrics, channel, page.written_at)
    return page


async def long_poll(request: web.Request, box: Box) -> web.Response:
    """``GET …/mailbox`` / ``GET …/inbox``: a page, waiting up to ``wait`` seconds for a first entry."""
    q = PageQuery.parse(request.query)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + q.wait_s
    async with runtime(request).service.wakeups.watch(box.endpoint_id) as watch:
        while True:
            page = await _read(request, box, q.after, q.limit, box.channel, True)
            remaining = deadline - loop.time()
            if page.entries or remaining <= 0:
                return web.json_response(page.body())
            await watch.wait(min(remaining, POLL_S))


async def ack(request: web.Request, box: Box) -> web.Response:
    """``POST …/ack`` ``{up_to: cursor}``: entries up to ``up_to`` (inclusive) are deleted; 204. Acking
    twice is harmless; an ``Idempotency-Key`` is honoured as on every state-changing POST (api-v1.md)."""
    body = await read_body(request)
    up_to = parse_cursor(body.data.get("up_to"), "up_to")
    return await respond(request, lambda scope: box.ack(up_to, scope), idempotent=True)


async def get_mailbox(request: web.Request) -> web.Response:
    return await long_poll(request, client_mailbox(request))


async def ack_mailbox(request: web.Request) -> web.Response:
    return await ack(request, client_mailbox(request))


async def get_inbox(request: web.Request) -> web.Response:
    return await long_poll(request, identity_inbox(request))


async def ack_inbox(request: web.Request) -> web.Response:
    return await ack(request, identity_inbox(request))


# ---- WebSocket ---------------------------------------------------------------------------------------


def ack_frame(data: str) -> int | None:
    """The cursor of an ``{"ack": cursor}`` frame, or ``None`` when the frame is anything else."""
    try:
        frame: Any = json.loads(data)
        if not isinstance(frame, dict) or set(frame) != {"ack"}:
            return None
        return parse_cursor(frame["ack"], "ack")
    except (ValueError, RecursionError, Problem):
        return None


def _close_code(exc: BaseException) -> tuple[int, bytes]:
    """How a socket closes after a failure: 1008 for the caller's (4xx), 1011 for ours."""
    problem = problem_from_exception(exc)
    if problem.status < 500:
        return WSCloseCode.POLICY_VIOLATION, problem.code.encode()
    if problem.code == "internal_error":
        log.error("mailbox socket failed", exc_info=exc)
    return WSCloseCode.INTERNAL_ERROR, problem.code.encode()


async def _push(request: web.Request, ws: web.WebSocketResponse, box: Box, after: int) -> None:
    """Send every entry after ``after`` as it arrives; on a failure, close the socket."""
    metrics = runtime(request).metrics.delivery
    try:
        async with runtime(request).service.wakeups.watch(box.endpoint_id) as watch:
            while not ws.closed:
                page = await _read(request, box, after, PUSH_BATCH, "websocket", False)
                for entry, written_at in zip(page.entries, page.written_at):
                    await ws.send_str(json.dumps(entry))
                    record_deliveries(metrics, "websocket", [written_at])
                after = page.next_cursor
                if not page.entries:
                    await watch.wait(POLL_S)
    except (ConnectionError, RuntimeError):  # the peer went away while we sent
        metrics.delivered("websocket", False)
    except Exception as e:
        code, reason = _close_code(e)
        await ws.close(code=code, message=reason)


async def _receive(request: web.Request, ws: web.WebSocketResponse, box: Box) -> None:
    """Take the client's ``{"ack": cursor}`` frames until it closes (or breaks the protocol)."""
    async for msg in ws:
        if msg.type == WSMsgType.ERROR:
            return
        up_to = ack_frame(msg.data) if msg.type == WSMsgType.TEXT else None
        if up_to is None:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b'frames must be {"ack": cursor}')
            return
        try:
            await in_pool(request, partial(box.ack, up_to), refusable=False)
        except Exception as e:
            code, reason = _close_code(e)
            await ws.close(code=code, message=reason)
            return


async def serve_socket(request: web.Request, box: Box) -> web.WebSocketResponse:
    """Check the query and the caller's right to the box, upgrade, then push and take acks."""
    after_q = request.query.get("after")
    after = 0 if after_q in (None, "") else parse_cursor(after_q, "after")
    # First: a box the caller may not see answers 404, whether the request is an upgrade or not.
    await in_pool(request, lambda scope: box.check())
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
    if not ws.can_prepare(request).ok:
        raise invalid("this route takes a WebSocket upgrade (GET with Upgrade: websocket)")
    ws.headers["X-Request-Id"] = request[REQUEST_ID]
    await ws.prepare(request)
    pusher = asyncio.create_task(_push(request, ws, box, after), name="mailbox-push")
    sockets = _OPEN.setdefault(request.app, set())
    sockets.add(ws)
    try:
        await _receive(request, ws, box)
    finally:
        sockets.discard(ws)
        pusher.cancel()
        await asyncio.wait([pusher])
        await ws.close()
    return ws


#: The open sockets of each app, closed when it shuts down (:func:`close_sockets`).
_OPEN: weakref.WeakKeyDictionary[web.Application, set[web.WebSocketResponse]] = weakref.WeakKeyDictionary()


async def close_sockets(app: web.Application) -> None:
    """The app's ``on_shutdown`` hook: close every open socket with 1001 (going away), so that a graceful
    stop does not wait for its shutdown timeout; clients reconnect with ``after`` = their last cursor."""
    sockets = list(_OPEN.pop(app, ()))
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
        return_exceptions=True,
    )


async def mailbox_ws(request: web.Request) -> web.WebSocketResponse:
    return await serve_socket(request, client_mailbox(request))


async def inbox_ws(request: web.Request) -> web.WebSocketResponse:
    return await serve_socket(request, identity_inbox(request))


_MAILBOX = "/v1/clients/{client_id}/mailbox"
_INBOX = "/v1/identities/{identity_id}/inbox"
MAILBOX_ROUTES: list[Route] = [
    Route("GET", _MAILBOX, get_mailbox, "endpoint", "Read a client's mailbox (long-poll with wait)"),
    Route("POST", _MAILBOX + "/ack", ack_mailbox, "endpoint", "Acknowledge (delete) mailbox items", True),
    Route("GET", _MAILBOX + "/ws", mailbox_ws, "endpoint", "A client's mailbox over a WebSocket"),
    Route("GET", _INBOX, get_inbox, "tenant", "Read a hosted identity's inbox (long-poll with wait)"),
    Route("POST", _INBOX + "/ack", ack_inbox, "tenant", "Acknowledge (delete) inbox events", True),
    Route("GET", _INBOX + "/ws", inbox_ws, "tenant", "A hosted identity's inbox over a WebSocket"),
]

__all__ = ["MAILBOX_ROUTES", "POLL_S", "ack_frame", "close_sockets"]
