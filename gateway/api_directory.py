"""The HTTP routes of clients (devices) and the KeyPackage directory (api-delivery.md "Clients (devices)",
"KeyPackage directory"): handlers and :data:`DIRECTORY_ROUTES`, part of :data:`gateway.api.ROUTES`.

Creating, listing and deleting clients takes a tenant token; showing a client, its KeyPackages and claiming
take any endpoint token of the tenant (``"endpoint"``), where a client token reaches only its own client.
Uploads of one client, and claims of one tenant, are serialised (the store still checks every claim).
"""

from __future__ import annotations

from aiohttp import web

from . import parsing as rq
from .dispatch import Route, principal, read_body, respond, service
from .errors import invalid
from .key_directory import ClaimRequest, UploadRequest

#: Most KeyPackages one upload (besides its last-resort one), and most endpoints one claim, may carry.
MAX_UPLOAD = 100
MAX_CLAIM = 100


def _client_lock(client_id: str) -> tuple[str, str]:
    return "client", client_id


async def create_client(request: web.Request) -> web.Response:
    name = (await read_body(request)).name("name")
    p, clients = principal(request), service(request).clients
    return await respond(request, lambda scope: clients.create(p, name, scope), idempotent=True)


async def list_clients(request: web.Request) -> web.Response:
    p, clients = principal(request), service(request).clients
    return await respond(request, lambda scope: clients.list(p))


async def get_client(request: web.Request) -> web.Response:
    p, clients, cid = principal(request), service(request).clients, request.match_info["client_id"]
    return await respond(request, lambda scope: clients.show(p, cid))


async def delete_client(request: web.Request) -> web.Response:
    p, clients, cid = principal(request), service(request).clients, request.match_info["client_id"]
    return await respond(request, lambda scope: clients.delete(p, cid, scope), lock=_client_lock(cid))


async def upload_key_packages(request: web.Request) -> web.Response:
    body = await read_body(request)
    items = body.items("key_packages")
    if len(items) > MAX_UPLOAD:
        raise invalid(f"key_packages must be a list of at most {MAX_UPLOAD} items")
    key_packages = [rq.b64decode(v, f"key_packages[{n}]") for n, v in enumerate(items)]
    last_resort = body.optional_b64("last_resort")
    if not key_packages and last_resort is None:
        raise invalid("key_packages must not be empty (unless last_resort is given)")
    cid = request.match_info["client_id"]
    req = UploadRequest(cid, key_packages, last_resort)
    p, directory = principal(request), service(request).key_directory
    return await respond(
        request,
        lambda scope: directory.upload(p, req, scope),
        idempotent=True,
        lock=_client_lock(cid),
        metric="upload_key_packages",
    )


async def key_package_status(request: web.Request) -> web.Response:
    p, directory, cid = principal(request), service(request).key_directory, request.match_info["client_id"]
    return await respond(request, lambda scope: directory.status(p, cid))


def _claim_request(body: rq.Body) -> ClaimRequest:
    endpoints = body.items("endpoints")
    if not endpoints or len(endpoints) > MAX_CLAIM:
        raise invalid(f"endpoints must be a list of 1 to {MAX_CLAIM} endpoint ids")
    for n, e in enumerate(endpoints):
        if not isinstance(e, str) or not 0 < len(e) <= 64:
            raise invalid(f"endpoints[{n}] must be an endpoint id (a client or identity id)")
    if len(set(endpoints)) != len(endpoints):
        raise invalid("endpoints must be distinct")
    suite = body.integer("cipher_suite", None, 1, 0xFFFF) if body.has("cipher_suite") else None
    return ClaimRequest(list(endpoints), suite)


async def claim_key_packages(request: web.Request) -> web.Response:
    req = _claim_request(await read_body(request))
    p, directory = principal(request), service(request).key_directory
    return await respond(
        request,
        lambda scope: directory.claim(p, req, scope),
        idempotent=True,
        lock=("claim", p.tenant_id),
        metric="claim_key_packages",
    )


_C = "/v1/clients/{client_id}"
DIRECTORY_ROUTES: list[Route] = [
    Route("POST", "/v1/clients", create_client, "tenant", "Create a client (device) and its token", True),
    Route("GET", "/v1/clients", list_clients, "tenant", "List clients"),
    Route("GET", _C, get_client, "endpoint", "Get a client"),
    Route("DELETE", _C, delete_client, "tenant", "Delete a client, its mailbox and KeyPackages", True),
    Route("POST", _C + "/key-packages", upload_key_packages, "endpoint", "Upload KeyPackages", True),
    Route("GET", _C + "/key-packages", key_package_status, "endpoint", "Count a client's KeyPackages"),
    Route(
        "POST",
        "/v1/key-packages/claim",
        claim_key_packages,
        "endpoint",
        "Claim one KeyPackage per endpoint",
        True,
    ),
]

__all__ = ["DIRECTORY_ROUTES"]
