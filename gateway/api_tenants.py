"""The admin routes over a tenant beyond its creation (api-v1.md "Tenants"): listing its tokens and
deleting the tenant with everything of it (:mod:`gateway.tenant_deletion`)."""

from __future__ import annotations

from aiohttp import web

from .dispatch import Route, respond, service
from .persistence import RequestScope, Response


async def list_tokens(request: web.Request) -> web.Response:
    tenant_id, tenants = request.match_info["tenant_id"], service(request).tenants
    return await respond(request, lambda scope: tenants.list_tokens(tenant_id))


async def delete_tenant(request: web.Request) -> web.Response:
    tenant_id, deletion = request.match_info["tenant_id"], service(request).tenant_deletion

    def run(scope: RequestScope) -> Response:
        deletion.delete(tenant_id)
        return Response(204, None)

    return await respond(request, run)


TENANT_ADMIN_ROUTES = [
    Route(
        "GET",
        "/v1/tenants/{tenant_id}/tokens",
        list_tokens,
        "admin",
        "List a tenant's tokens (never a token)",
    ),
    Route(
        "DELETE",
        "/v1/tenants/{tenant_id}",
        delete_tenant,
        "admin",
        "Delete a tenant and everything of it (keys destroyed)",
        True,
    ),
]

__all__ = ["TENANT_ADMIN_ROUTES"]
