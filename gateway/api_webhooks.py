"""The webhook routes of a hosted identity (api-delivery.md, "Webhook for a hosted identity" and
"Details … Webhooks"), tenant token:

- ``PUT /v1/identities/{identity_id}/webhook`` ``{url, secret, after?: cursor}`` → 200 ``{url, after}``:
  set or replace the webhook. ``url`` is an http(s) URL whose host is not (and does not resolve to) a
  loopback, private or otherwise non-public address unless the operator allows them
  (:mod:`gateway.webhooks`); ``secret`` is 16 to 256 bytes of text, stored sealed and never answered.
  Events are delivered from ``after`` on when it is given; otherwise a new webhook starts after the
  inbox's newest event (events from before are not replayed) and a replaced one keeps its place (its
  waiting events are still delivered). Either way the webhook is no longer failing nor paused: a PUT
  resumes a paused webhook. ``after`` in the answer is the cursor delivery continues after.
- ``GET …/webhook`` → ``{url, paused, delivered_cursor, failing_since?}`` (an extension; no secret).
- ``DELETE …/webhook`` → 204.

Another tenant's identity, or an identity without a webhook (GET, DELETE), answers 404. The identity is
looked up before the body is read, so an id of another tenant answers 404 whatever the body.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hsm.envelope import Envelope

from .auth import Principal
from .dispatch import Route, in_worker, principal, read_body, respond, runtime
from .errors import invalid, not_found
from .identities import Identities
from .persistence import Json, Response
from .store import Store, Transaction
from .wakeups import Wakeups
from .webhook_delivery import WEBHOOKS_CHANGED
from .webhooks import MAX_URL_LENGTH, SECRET_MAX_BYTES, UnsafeTarget, check_secret, check_target, seal_secret

WEBHOOK_PATH = "/v1/identities/{identity_id}/webhook"


def store_webhook(
    tx: Transaction, identity_id: str, url: str, sealed_secret: bytes, after: int | None
) -> int:
    """Set the webhook in ``tx``; returns the cursor delivery continues after: ``after`` if given, else the
    replaced webhook's (its waiting events are still delivered), else the inbox's newest (no replay)."""
    if after is None:
        current = tx.get_webhook(identity_id)
        after = current.delivered_cursor if current else tx.last_inbox_cursor(identity_id)
    tx.put_webhook(identity_id, url, sealed_secret, after)
    return after


class WebhookSettings:
    """The webhook operations of one gateway (run in the worker pool)."""

    def __init__(self, store: Store, envelope: Envelope, identities: Identities, wakeups: Wakeups) -> None:
        self.store = store
        self.envelope = envelope
        self.identities = identities
        self.wakeups = wakeups

    def put(self, p: Principal, identity_id: str, url: str, secret: bytes, after: int | None) -> Json:
        self.identities.get(p, identity_id)
        sealed = seal_secret(self.envelope, identity_id, secret)
        with self.store.transaction() as tx:
            cursor = store_webhook(tx, identity_id, url, sealed, after)
        self.wakeups.notify([identity_id, WEBHOOKS_CHANGED])
        return {"url": url, "after": str(cursor)}

    def show(self, p: Principal, identity_id: str) -> Json:
        self.identities.get(p, identity_id)
        with self.store.read_transaction() as tx:
            hook = tx.get_webhook(identity_id)
        if hook is None:
            raise not_found("webhook")
        shown: Json = {"url": hook.url, "paused": hook.paused, "delivered_cursor": str(hook.delivered_cursor)}
        if hook.failing_since is not None:
            shown["failing_since"] = hook.failing_since
        return shown

    def delete(self, p: Principal, identity_id: str) -> Response:
        self.identities.get(p, identity_id)
        with self.store.transaction() as tx:
            removed = tx.delete_webhook(identity_id)
        if not removed:
            raise not_found("webhook")
        self.wakeups.notify([identity_id, WEBHOOKS_CHANGED])
        return Response(204, None)


def _settings(request: web.Request) -> WebhookSettings:
    rt = runtime(request)
    return WebhookSettings(rt.store, rt.envelope, rt.service.identities, rt.service.wakeups)


def _after(value: Any) -> int | None:
    """The optional ``after``: a cursor as the inbox API hands them out (a string of digits)."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    raise invalid("after must be a cursor (a string, as an event's cursor)")


async def _check_identity(request: web.Request) -> tuple[Principal, str]:
    """404 for an identity that is not the caller's tenant's, before anything else is looked at."""
    rt, p, iid = runtime(request), principal(request), request.match_info["identity_id"]
    await in_worker(request, rt.service.identities.get, p, iid)
    return p, iid


async def put_webhook(request: web.Request) -> web.Response:
    p, iid = await _check_identity(request)
    body = await read_body(request)
    url = body.text("url", max_len=MAX_URL_LENGTH)
    text = body.text("secret", max_len=SECRET_MAX_BYTES)
    after = _after(body.data.get("after"))
    try:
        secret = check_secret(text)
        await check_target(url, runtime(request).config.delivery.webhook_allow_private)
    except (UnsafeTarget, ValueError) as e:
        raise invalid(str(e)) from None
    settings = _settings(request)
    return await respond(
        request, lambda scope: settings.put(p, iid, url, secret, after), lock=("webhook", iid)
    )


async def get_webhook(request: web.Request) -> web.Response:
    p, iid, settings = principal(request), request.match_info["identity_id"], _settings(request)
    return await respond(request, lambda scope: settings.show(p, iid))


async def delete_webhook(request: web.Request) -> web.Response:
    p, iid, settings = principal(request), request.match_info["identity_id"], _settings(request)
    return await respond(request, lambda scope: settings.delete(p, iid), lock=("webhook", iid))


WEBHOOK_ROUTES: list[Route] = [
    Route(
        "PUT", WEBHOOK_PATH, put_webhook, "tenant", "Set the identity's webhook (signed event delivery)", True
    ),
    Route("GET", WEBHOOK_PATH, get_webhook, "tenant", "The identity's webhook and its delivery state"),
    Route("DELETE", WEBHOOK_PATH, delete_webhook, "tenant", "Remove the identity's webhook", True),
]


__all__ = ["WEBHOOK_PATH", "WEBHOOK_ROUTES", "WebhookSettings", "store_webhook"]
