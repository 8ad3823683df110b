"""A typed Python client of the gateway's HTTP API (docs/api.md: api-v1.md and api-delivery.md).

Modules: :mod:`.wire` (base64 fields, answers, problem documents, route marks), :mod:`.transport` (the
session and a request), the route methods by resource (:mod:`.accounts`, :mod:`.groups`,
:mod:`.delivery`, :mod:`.boxes`), :mod:`.api` (:class:`GatewayClient`, all of them) and
:mod:`.blocking` (synchronous use).


:class:`GatewayClient` is asynchronous, over one ``aiohttp.ClientSession``; it has one method per route
of :data:`gateway.api.ROUTES` (each marked with the route it calls, see :func:`client_routes`;
``tests/gateway/test_client.py`` fails when a route has none). A method sends the contract's JSON —
``Content-Type: application/json``, binary fields as canonical padded base64 (RFC 4648 §4), a group id
in a path as base64url without padding (RFC 4648 §5) — and answers the response body (a ``dict``, or
``None`` for ``204``). A failure answer raises :class:`GatewayError`, which carries the problem document
(RFC 9457: ``status``, ``code``, ``detail`` and the extra members such as ``current_epoch``); a request
that got no answer raises :class:`GatewayConnectionError` (a :class:`ConnectionError`).

Every state-changing ``POST`` takes ``idempotency_key`` (the ``Idempotency-Key`` header of docs/api.md).
Mailboxes and inboxes are read page by page (:meth:`GatewayClient.read_mailbox`), followed with long
polls (:meth:`GatewayClient.follow_mailbox`), or over their WebSocket
(:meth:`GatewayClient.mailbox_socket`, a :class:`BoxSocket`).

:class:`BlockingClient` is the synchronous form: it runs a coroutine of a :class:`GatewayClient` on an
event loop of its own thread (:class:`LoopThread`) and waits for it::

    with BlockingClient("http://127.0.0.1:8080", token) as gw:
        alice = gw(lambda c: c.create_identity("alice"))
"""

from .api import GatewayClient, client_routes
from .blocking import BlockingClient, LoopThread
from .boxes import BoxSocket
from .wire import (
    JSON,
    ApiResponse,
    Binary,
    BoxClosed,
    GatewayConnectionError,
    GatewayError,
    GroupId,
    b64,
    basic_credential,
    binary,
    extension,
    external_psk,
    gid_segment,
    group_id_bytes,
    resumption_psk,
    route,
    unb64,
)

__all__ = [
    "JSON",
    "ApiResponse",
    "Binary",
    "BlockingClient",
    "BoxClosed",
    "BoxSocket",
    "GatewayClient",
    "GatewayConnectionError",
    "GatewayError",
    "GroupId",
    "LoopThread",
    "b64",
    "basic_credential",
    "binary",
    "client_routes",
    "extension",
    "external_psk",
    "gid_segment",
    "group_id_bytes",
    "resumption_psk",
    "route",
    "unb64",
]
