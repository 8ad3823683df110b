"""The admin routes over a tenant beyond its creation (api-v1.md "Tenants"): listing its tokens and
deleting the tenant with everything of it (:mod:`gateway.tenant_deletion`)."""

from __future__ import annotations

from aiohttp import web

from .dispatch import Route, in_pool, respond, service


async def list_tokens(request: web.Request) -> web.Response:
    tenant_id, tenants = request.match_info["tenant_id"], service(request).tenants
    return await respond(request, lambda scope: tenants.list_tokens(tenant_id))


async def delete_tenant(request: web.Request) -> web.Response:
    """Each bounded step of the deletion is its own worker turn (other tenants interleave); 204 at the
    end, as api-v1.md says."""
    tenant_id, deletion = request.match_info["tenant_id"], service(request).tenant_deletion
    steps = deletion.steps(tenant_id)
    while await in_pool(request, lambda scope: next(steps, False) is None, refusable=False):
        pass
    return web.Response(status=204)


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
