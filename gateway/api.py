"""The HTTP API of api-v1.md: a route table, its handlers, and how a request reaches the service.

Every route is declared once in :data:`ROUTES` (method, path, handler, who may call it, summary); the
aiohttp router and the OpenAPI document (:mod:`gateway.openapi`) are both built from it. A handler
parses and checks its input on the event loop, then runs the operation in the bounded worker pool under
the group's lock (requests on one group are serialised; different groups run in parallel).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mls.group.group import CommitOptions, Handshake

from . import parsing as rq
from .auth import Principal
from .context import APP, PRINCIPAL, RAW_BODY, REQUEST_ID, Runtime
from .errors import invalid
from .service import Idempotency, Outcome

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    auth: str  # "none", "admin" or "tenant"
    summary: str
    mutating: bool = False


# ---- plumbing ----------------------------------------------------------------------------------------

def runtime(request: web.Request) -> Runtime:
    return request.app[APP]


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def json_response(outcome: Outcome) -> web.Response:
    if outcome.body is None:
        return web.Response(status=outcome.status)
    return web.json_response(outcome.body, status=outcome.status)


async def read_body(request: web.Request) -> rq.Body:
    raw = await request.read()
    request[RAW_BODY] = raw
    return rq.Body(rq.parse_json(raw))


def idempotency(request: web.Request) -> Idempotency | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= 255:
        raise invalid("Idempotency-Key must be 1 to 255 characters")
    p = principal(request)
    scope = f"{p.tenant_id or 'admin'}:{request.method}:{request.path}"
    return Idempotency(scope, key, hashlib.sha256(request.get(RAW_BODY, b"")).digest())


async def call(request: web.Request, fn: Callable[..., Any], *, lock: Any = None, idem: bool = False,
               operation: str | None = None) -> Any:
    """Run ``fn(records[, idem])`` in the worker pool with the request's audit context and group lock."""
    rt = runtime(request)
    key = idempotency(request) if idem else None
    request_id = request[REQUEST_ID]

    def work() -> Any:
        with rt.service.request(request.get(PRINCIPAL), request_id) as records:
            if idem:
                replay = rt.service.replay(key)
                if replay is not None:
                    return replay
                return fn(records, key)
            return fn(records)

    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    outcome = "error"
    try:
        if lock is None:
            result = await loop.run_in_executor(rt.executor, ctx.run, work)
        else:
            async with rt.locks.hold(lock):
                result = await loop.run_in_executor(rt.executor, ctx.run, work)
        outcome = "ok"
        return result
    finally:
        if operation is not None:
            rt.metrics.mls_ops.labels(operation, outcome).inc()
            rt.metrics.mls_latency.labels(operation).observe(time.perf_counter() - started)


def group_path(request: web.Request) -> tuple[str, bytes]:
    return request.match_info["identity_id"], rq.group_id_from_path(request.match_info["gid"])


# ---- service -----------------------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = runtime(request)
    problems = await asyncio.get_running_loop().run_in_executor(rt.executor, rt.readiness)
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503,
                                 headers={"Retry-After": "5"})
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    rt = runtime(request)
    body = await asyncio.get_running_loop().run_in_executor(rt.executor, rt.render_metrics)
    return web.Response(body=body, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def openapi(request: web.Request) -> web.Response:
    from .openapi import document

    return web.json_response(document())


# ---- tenants -------------------------------------------------------------------------------------------

async def create_tenant(request: web.Request) -> web.Response:
    body = await read_body(request)
    name = body.text("name")
    svc = runtime(request).service
    return json_response(await call(request, lambda r, i: svc.create_tenant(name, i, r), idem=True))


async def list_tenants(request: web.Request) -> web.Response:
    svc = runtime(request).service
    return web.json_response(await call(request, lambda r: svc.list_tenants()))


async def create_token(request: web.Request) -> web.Response:
    await read_body(request)
    tenant_id = request.match_info["tenant_id"]
    svc = runtime(request).service
    return json_response(await call(request, lambda r, i: svc.create_token(tenant_id, i, r), idem=True))


async def revoke_token(request: web.Request) -> web.Response:
    tenant_id, token_id = request.match_info["tenant_id"], request.match_info["token_id"]
    svc = runtime(request).service
    return json_response(await call(request, lambda r: svc.revoke_token(tenant_id, token_id)))


# ---- identities and key packages ------------------------------------------------------------------------

async def create_identity(request: web.Request) -> web.Response:
    body = await read_body(request)
    name = body.text("name")
    suite = body.integer("cipher_suite", 1, 1, 7)
    cred = rq.credential(body.data["credential"]) if body.has("credential") else None
    p, svc = principal(request), runtime(request).service
    return json_response(await call(request, lambda r, i: svc.create_identity(p, name, suite, cred, i, r),
                                    idem=True, operation="create_identity"))


async def list_identities(request: web.Request) -> web.Response:
    p, svc = principal(request), runtime(request).service
    return web.json_response(await call(request, lambda r: svc.list_identities(p)))


async def get_identity(request: web.Request) -> web.Response:
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return web.json_response(await call(request, lambda r: svc.identity_json(svc.identity(p, iid))))


async def delete_identity(request: web.Request) -> web.Response:
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return json_response(await call(request, lambda r: svc.delete_identity(p, iid, r), lock=("identity", iid)))


async def create_key_packages(request: web.Request) -> web.Response:
    body = await read_body(request)
    count = body.integer("count", 1, 1, 100)
    last_resort = body.boolean("last_resort", False)
    days = body.integer("lifetime_days", 90, 1, 90)
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return json_response(await call(
        request, lambda r, i: svc.create_key_packages(p, iid, count, last_resort, days, i, r),
        idem=True, operation="key_package"))


async def list_key_packages(request: web.Request) -> web.Response:
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return web.json_response(await call(request, lambda r: svc.list_key_packages(p, iid)))


# ---- groups ---------------------------------------------------------------------------------------------

async def create_group(request: web.Request) -> web.Response:
    body = await read_body(request)
    gid = body.optional_b64("group_id")
    if gid is not None and not 0 < len(gid) <= 255:
        raise invalid("group_id must be 1 to 255 bytes")
    exts = rq.extensions(body.items("extensions"))
    senders = rq.external_senders(body.items("external_senders"))
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return json_response(await call(request, lambda r, i: svc.create_group(p, iid, gid, exts, senders, i, r),
                                    idem=True, operation="create_group"))


async def list_groups(request: web.Request) -> web.Response:
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return web.json_response(await call(request, lambda r: svc.list_groups(p, iid)))


async def get_group(request: web.Request) -> web.Response:
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return web.json_response(await call(request, lambda r: svc.get_group(p, iid, gid), lock=(iid, gid)))


async def delete_group(request: web.Request) -> web.Response:
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return json_response(await call(request, lambda r: svc.delete_group(p, iid, gid, r), lock=(iid, gid)))


def _psk_secrets(body: rq.Body) -> list[tuple[bytes, bytes]]:
    out = []
    for i, item in enumerate(body.items("psks")):
        if not isinstance(item, dict):
            raise invalid(f"psks[{i}] must be an object")
        out.append((rq.b64decode(item.get("psk_id"), f"psks[{i}].psk_id"),
                    rq.b64decode(item.get("secret"), f"psks[{i}].secret")))
    return out


async def join(request: web.Request) -> web.Response:
    body = await read_body(request)
    welcome, tree, psks = body.b64("welcome"), body.optional_b64("ratchet_tree"), _psk_secrets(body)
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return json_response(await call(request, lambda r, i: svc.join(p, iid, welcome, tree, psks, i, r),
                                    idem=True, operation="join", lock=("identity", iid)))


async def external_join(request: web.Request) -> web.Response:
    body = await read_body(request)
    gi, tree, psks = body.b64("group_info"), body.optional_b64("ratchet_tree"), _psk_secrets(body)
    remove_prior = body.boolean("remove_prior", False)
    prior = body.integer("remove_prior_leaf", None, 0, 2**32 - 1) if body.has("remove_prior_leaf") else None
    p, svc, iid = principal(request), runtime(request).service, request.match_info["identity_id"]
    return json_response(await call(request, lambda r, i: svc.external_join(p, iid, gi, tree, remove_prior, prior,
                                                                            psks, i, r),
                                    idem=True, operation="external_join", lock=("identity", iid)))


def _commit_psks(body: rq.Body) -> tuple[list[tuple[bytes, bytes | None]], list[tuple[bytes, int]]]:
    """External PSKs as (psk_id, secret or None) and resumption PSKs as (group_id, epoch)."""
    external: list[tuple[bytes, bytes | None]] = []
    resumption: list[tuple[bytes, int]] = []
    for i, item in enumerate(body.items("psks")):
        if not isinstance(item, dict):
            raise invalid(f"psks[{i}] must be an object")
        b = rq.Body(item)
        if "resumption" in item:
            res = b.object("resumption")
            resumption.append((res.b64("group_id"), res.integer("epoch", None, 0, 2**63 - 1)))
        else:
            external.append((b.b64("psk_id"), b.optional_b64("secret")))
    return external, resumption


async def commit(request: web.Request) -> web.Response:
    body = await read_body(request)
    adds = [rq.b64decode(v, f"add[{n}]") for n, v in enumerate(body.items("add"))]
    removes = [rq.Body({"i": v}).integer("i", None, 0, 2**32 - 1) for v in body.items("remove")]
    gce = rq.extensions(body.items("group_context_extensions")) if body.has("group_context_extensions") else None
    external, resumption = _commit_psks(body)
    opts = CommitOptions(
        remove=removes, group_context_extensions=gce, include_pending=body.boolean("include_pending", True),
        force_path=body.boolean("force_path", False) or body.boolean("update", False),
        handshake=Handshake(body.choice("handshake", "public", ("public", "private"))),
    )
    pending = body.boolean("pending", False)
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return json_response(await call(
        request, lambda r, i: svc.commit(p, iid, gid, opts, pending, adds, external, resumption, i, r),
        idem=True, operation="commit", lock=(iid, gid)))


async def merge_pending(request: web.Request) -> web.Response:
    await read_body(request)
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return json_response(await call(request, lambda r, i: svc.merge_pending(p, iid, gid, i, r), idem=True,
                                    operation="commit", lock=(iid, gid)))


async def discard_pending(request: web.Request) -> web.Response:
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return json_response(await call(request, lambda r: svc.discard_pending(p, iid, gid, r), lock=(iid, gid)))


def _proposal_spec(body: rq.Body) -> dict[str, Any]:
    kind = body.choice("type", "", ("add", "remove", "update", "psk", "group_context_extensions"))
    spec: dict[str, Any] = {"kind": kind}
    if kind == "add":
        spec["key_package"] = body.b64("key_package")
    elif kind == "remove":
        spec["leaf_index"] = body.integer("leaf_index", None, 0, 2**32 - 1)
    elif kind == "psk":
        psk = body.object("psk")
        spec["psk_id"] = psk.b64("psk_id")
        spec["secret"] = psk.optional_b64("secret")
    elif kind == "group_context_extensions":
        spec["extensions"] = rq.extensions(body.items("extensions"))
    return spec


async def propose(request: web.Request) -> web.Response:
    body = await read_body(request)
    spec = _proposal_spec(body)
    handshake = Handshake(body.choice("handshake", "public", ("public", "private")))
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return json_response(await call(request, lambda r, i: svc.propose(p, iid, gid, spec, handshake, i, r),
                                    idem=True, operation="propose", lock=(iid, gid)))


async def send_messages(request: web.Request) -> web.Response:
    body = await read_body(request)
    batch = "messages" in body.data
    raw_items = body.items("messages") if batch else [body.data]
    if not raw_items:
        raise invalid("messages must not be empty")
    items = []
    for n, item in enumerate(raw_items):
        if not isinstance(item, dict):
            raise invalid(f"messages[{n}] must be an object")
        b = rq.Body(item)
        items.append((b.b64("data"), b.optional_b64("authenticated_data") or b""))
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return json_response(await call(request, lambda r, i: svc.send(p, iid, gid, items, batch, i, r),
                                    idem=True, operation="protect", lock=(iid, gid)))


async def process(request: web.Request) -> web.Response:
    body = await read_body(request)
    batch = "messages" in body.data
    if batch:
        messages = [rq.b64decode(v, f"messages[{n}]") for n, v in enumerate(body.items("messages"))]
        if not messages:
            raise invalid("messages must not be empty")
    else:
        messages = [body.b64("message")]
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return json_response(await call(request, lambda r, i: svc.process(p, iid, gid, messages, batch, i, r),
                                    idem=True, operation="unprotect", lock=(iid, gid)))


async def group_info(request: web.Request) -> web.Response:
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return web.json_response(await call(request, lambda r: svc.group_info(p, iid, gid, r), lock=(iid, gid)))


async def export(request: web.Request) -> web.Response:
    body = await read_body(request)
    label = body.text("label", max_len=255)
    context = body.optional_b64("context") or b""
    length = body.integer("length", None, 1, 255)
    iid, gid = group_path(request)
    p, svc = principal(request), runtime(request).service
    return web.json_response(await call(request, lambda r: svc.export(p, iid, gid, label, context, length),
                                        lock=(iid, gid), operation="export"))


_G = "/v1/identities/{identity_id}/groups"
ROUTES: list[Route] = [
    Route("GET", "/healthz", healthz, "none", "Liveness: the process serves"),
    Route("GET", "/readyz", readyz, "none", "Readiness: the HSM session pool and the store answer"),
    Route("GET", "/metrics", metrics, "none", "Prometheus metrics"),
    Route("GET", "/v1/openapi.json", openapi, "none", "This API's OpenAPI 3.1 document"),
    Route("POST", "/v1/tenants", create_tenant, "admin", "Create a tenant and its first token", True),
    Route("GET", "/v1/tenants", list_tenants, "admin", "List tenants"),
    Route("POST", "/v1/tenants/{tenant_id}/tokens", create_token, "admin", "Create a tenant token", True),
    Route("DELETE", "/v1/tenants/{tenant_id}/tokens/{token_id}", revoke_token, "admin", "Revoke a token", True),
    Route("POST", "/v1/identities", create_identity, "tenant", "Create a hosted identity (keys in the HSM)", True),
    Route("GET", "/v1/identities", list_identities, "tenant", "List identities"),
    Route("GET", "/v1/identities/{identity_id}", get_identity, "tenant", "Get an identity"),
    Route("DELETE", "/v1/identities/{identity_id}", delete_identity, "tenant", "Delete an identity and its keys", True),
    Route("POST", "/v1/identities/{identity_id}/key-packages", create_key_packages, "tenant", "Create KeyPackages", True),
    Route("GET", "/v1/identities/{identity_id}/key-packages", list_key_packages, "tenant", "List KeyPackages"),
    Route("POST", _G, create_group, "tenant", "Create a group", True),
    Route("GET", _G, list_groups, "tenant", "List the identity's groups"),
    Route("POST", _G + "/join", join, "tenant", "Join from a Welcome", True),
    Route("POST", _G + "/external-join", external_join, "tenant", "Join by external commit", True),
    Route("GET", _G + "/{gid}", get_group, "tenant", "Group state summary"),
    Route("DELETE", _G + "/{gid}", delete_group, "tenant", "Leave locally: delete this identity's group state", True),
    Route("POST", _G + "/{gid}/commits", commit, "tenant", "Create a commit (merged unless pending)", True),
    Route("POST", _G + "/{gid}/pending-commit/merge", merge_pending, "tenant", "Merge the pending commit", True),
    Route("DELETE", _G + "/{gid}/pending-commit", discard_pending, "tenant", "Discard the pending commit", True),
    Route("POST", _G + "/{gid}/proposals", propose, "tenant", "Send a proposal", True),
    Route("POST", _G + "/{gid}/messages", send_messages, "tenant", "Protect application messages", True),
    Route("POST", _G + "/{gid}/process", process, "tenant", "Process incoming MLS messages", True),
    Route("GET", _G + "/{gid}/group-info", group_info, "tenant", "Signed GroupInfo with external_pub"),
    Route("POST", _G + "/{gid}/export", export, "tenant", "MLS-Exporter secret", False),
]


def make_request_id() -> str:
    return uuid.uuid4().hex


__all__ = ["ROUTES", "Route", "make_request_id"]
