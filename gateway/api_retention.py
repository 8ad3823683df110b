"""The retention routes of a tenant (:mod:`gateway.retention`): its retention document, readable and
replaceable by the admin and by the tenant's own tokens (``tenant_or_admin`` routes), and its legal hold,
which only an admin token may set (a tenant cannot lift its own hold)."""

from __future__ import annotations

from aiohttp import web

from .context import REQUEST_ID
from .dispatch import Route, principal, read_body, respond, runtime
from .retention import Retention


def _retention(request: web.Request) -> Retention:
    rt = runtime(request)
    return Retention(rt.store, rt.config, rt.metrics)


async def get_retention(request: web.Request) -> web.Response:
    tenant_id, who, retention = request.match_info["tenant_id"], principal(request), _retention(request)
    return await respond(request, lambda scope: retention.show(who, tenant_id))


async def put_retention(request: web.Request) -> web.Response:
    tenant_id, who, retention = request.match_info["tenant_id"], principal(request), _retention(request)
    body, request_id = await read_body(request), request[REQUEST_ID]
    return await respond(request, lambda scope: retention.put(who, tenant_id, body.data, request_id))


async def put_legal_hold(request: web.Request) -> web.Response:
    tenant_id, who, retention = request.match_info["tenant_id"], principal(request), _retention(request)
    body, request_id = await read_body(request), request[REQUEST_ID]
    return await respond(
        request, lambda scope: retention.set_legal_hold(who, tenant_id, body.data, request_id)
    )


RETENTION_ROUTES = [
    Route(
        "GET",
        "/v1/tenants/{tenant_id}/retention",
        get_retention,
        "tenant_or_admin",
        "A tenant's retention (overrides, what applies) and legal hold",
    ),
    Route(
        "PUT",
        "/v1/tenants/{tenant_id}/retention",
        put_retention,
        "tenant_or_admin",
        "Replace a tenant's retention overrides (null: the configured default)",
        True,
    ),
    Route(
        "PUT",
        "/v1/tenants/{tenant_id}/legal-hold",
        put_legal_hold,
        "admin",
        "Put a tenant's audit records on legal hold, or lift it",
        True,
    ),
]

__all__ = ["RETENTION_ROUTES"]
