"""How an HTTP request reaches an operation: the running gateway, the caller, the body, the
Idempotency-Key, and the bounded worker pool under the membership's lock.

The handlers of :mod:`gateway.api` parse their input on the event loop, then call :func:`respond` with the
operation: it runs in the worker pool with the request's audit context (``contextvars``), serialised per
lock (one membership, or one identity's membership changes), replays a stored response for a repeated
Idempotency-Key, and records the operation's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aiohttp import web

from . import parsing as rq
from .auth import Principal
from .context import APP, PRINCIPAL, RAW_BODY, REQUEST_ID, Runtime
from .errors import invalid
from .operation_requests import GroupAddress
from .persistence import Idempotency, RequestScope, Response
from .request_limits import read_limited, require_json_content_type, tenant_key
from .service import GatewayService

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One route of the API: the aiohttp router and the OpenAPI document are both built from these.

    ``auth`` is who may call it: ``"none"``, ``"admin"`` (admin tokens), ``"tenant"`` (tenant tokens) or
    ``"endpoint"`` (tenant tokens and the tenant's client tokens, api-delivery.md) or ``"tenant_or_admin"``
    (admin tokens and tenant tokens; the route checks a tenant token acts on its own tenant)."""

    method: str
    path: str
    handler: Handler
    auth: str
    summary: str
    mutating: bool = False


def runtime(request: web.Request) -> Runtime:
    return request.app[APP]


def service(request: web.Request) -> GatewayService:
    return request.app[APP].service


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def json_response(result: Response | dict[str, Any]) -> web.Response:
    """An operation's answer: a :class:`Response`, or the JSON body of a 200."""
    if not isinstance(result, Response):
        return web.json_response(result)
    if result.body is None:
        return web.Response(status=result.status)
    return web.json_response(result.body, status=result.status)


async def read_body(request: web.Request) -> rq.Body:
    """The JSON object body, read within the configured deadline and declared ``application/json``."""
    raw = await read_limited(request, runtime(request).config.body_timeout_s)
    require_json_content_type(request, raw)
    request[RAW_BODY] = raw
    return rq.Body(rq.parse_json(raw))


def idempotency(request: web.Request) -> Idempotency | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= 255:
        raise invalid("Idempotency-Key must be 1 to 255 characters")
    p = principal(request)
    caller = p.tenant_id or "admin" if p.client_id is None else f"{p.tenant_id}/{p.client_id}"
    scope = f"{caller}:{request.method}:{request.path}"
    body_hash = hashlib.sha256(request.get(RAW_BODY, b"")).digest()
    return Idempotency(scope, key, body_hash, request.match_info.get("identity_id"))


async def respond(
    request: web.Request,
    operation: Callable[[RequestScope], Any],
    *,
    lock: Hashable | list[Hashable] | None = None,
    idempotent: bool = False,
    metric: str | None = None,
) -> web.Response:
    """Run ``operation(scope)`` in the worker pool with the request's audit context and group lock; with
    ``idempotent``, a repeat of an earlier request (same Idempotency-Key) answers the stored response."""
    rt = runtime(request)
    key = idempotency(request) if idempotent else None
    request_id = request[REQUEST_ID]

    def work() -> Any:
        with rt.service.persistence.request(request.get(PRINCIPAL), request_id) as scope:
            scope.idempotency = key
            replayed = rt.service.persistence.replay(key)
            return replayed if replayed is not None else operation(scope)

    ctx = contextvars.copy_context()
    started = time.perf_counter()
    outcome = "error"
    try:
        async with contextlib.AsyncExitStack() as stack:
            for held in [] if lock is None else lock if isinstance(lock, list) else [lock]:
                await stack.enter_async_context(rt.locks.hold(held))
            result = await in_worker(request, ctx.run, work)
        outcome = "ok"
        return json_response(result)
    finally:
        if metric is not None:
            rt.metrics.mls_ops.labels(metric, outcome).inc()
            rt.metrics.mls_latency.labels(metric).observe(time.perf_counter() - started)


async def check_identity(request: web.Request) -> tuple[Principal, str]:
    """The caller and the path's ``identity_id``: 404 for an identity that is not the caller's tenant's,
    before anything else (the body) is looked at, so another tenant's id answers 404 whatever the body."""
    rt, p, iid = runtime(request), principal(request), request.match_info["identity_id"]
    await in_worker(request, rt.service.identities.get, p, iid)
    return p, iid


async def in_worker(request: web.Request, fn: Callable[..., Any], *args: Any, refusable: bool = True) -> Any:
    """``fn(*args)`` in the worker pool once the caller's tenant is admitted (gateway.request_limits:
    round robin between tenants, a bounded share each, 429 when its queue is full unless not
    ``refusable``)."""
    rt = runtime(request)
    p = request.get(PRINCIPAL)
    async with rt.scheduler.slot(tenant_key(p.tenant_id if p is not None else None), refusable=refusable):
        return await asyncio.get_running_loop().run_in_executor(rt.executor, fn, *args)


async def in_pool(request: web.Request, fn: Callable[[RequestScope], T], *, refusable: bool = True) -> T:
    """Run ``fn(scope)`` in the worker pool with the request's audit context (as :func:`respond` does),
    answering its result as is; ``refusable`` as for :func:`in_worker`."""
    rt = runtime(request)
    who, request_id = request.get(PRINCIPAL), request[REQUEST_ID]

    def work() -> T:
        with rt.service.persistence.request(who, request_id) as scope:
            return fn(scope)

    ctx = contextvars.copy_context()
    return cast(T, await in_worker(request, ctx.run, work, refusable=refusable))


def group_address(request: web.Request) -> GroupAddress:
    return GroupAddress(request.match_info["identity_id"], rq.group_id_from_path(request.match_info["gid"]))


def group_lock(address: GroupAddress) -> tuple[str, bytes]:
    """Requests on one membership are serialised."""
    return address.identity_id, address.group_id


def log_lock(p: Principal, group_id: bytes) -> tuple[str, str | None, bytes]:
    """Appends to one group's log are serialised in this process (taken before a membership's lock)."""
    return "log", p.tenant_id, group_id


def hosted_log_locks(request: web.Request, address: GroupAddress) -> list[Hashable]:
    """A hosted member's request that may append to its group's log: the log's lock, then its own."""
    return [log_lock(principal(request), address.group_id), group_lock(address)]


def identity_lock(identity_id: str) -> tuple[str, str]:
    """Requests that create or delete memberships of one identity are serialised."""
    return "identity", identity_id
