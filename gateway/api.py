"""The HTTP API of api-v1.md: a route table, its handlers, and how a request reaches the service.

Every route is declared once in :data:`ROUTES` (method, path, handler, who may call it, summary); the
aiohttp router and the OpenAPI document (:mod:`gateway.openapi`) are both built from it. A handler
parses and checks its input on the event loop into the operation's request
(:mod:`gateway.operation_requests`), then runs the operation through :mod:`gateway.dispatch` in the
bounded worker pool under the group's lock (requests on one group are serialised; different groups run
in parallel). Nothing here knows ``mls``: the operations translate their requests.
"""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from . import parsing as rq
from .api_credentials import CREDENTIAL_ROUTES
from .api_directory import DIRECTORY_ROUTES
from .api_log import LOG_ROUTES
from .api_mailboxes import MAILBOX_ROUTES
from .api_retention import RETENTION_ROUTES
from .api_tenants import TENANT_ADMIN_ROUTES
from .api_webhooks import WEBHOOK_ROUTES
from .dispatch import (
    Route,
    group_address,
    group_lock,
    hosted_log_locks,
    identity_lock,
    in_pool,
    principal,
    read_body,
    respond,
    runtime,
    service,
)
from .errors import invalid
from .operation_requests import (
    CommitRequest,
    CreateGroupRequest,
    CreateIdentityRequest,
    CreateKeyPackagesRequest,
    ExportRequest,
    ExternalJoinRequest,
    ExternalPsk,
    GroupAddress,
    JoinRequest,
    ProcessRequest,
    ProposalRequest,
    SendRequest,
)
from .tenants import CUSTODY_MODES

# ---- service -----------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = runtime(request)
    problems = await asyncio.get_running_loop().run_in_executor(rt.probe_executor, rt.readiness)
    if problems:
        return web.json_response(
            {"status": "unavailable", "problems": problems}, status=503, headers={"Retry-After": "5"}
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.StreamResponse:
    """prometheus-client's own aiohttp handler on the app's registry (content negotiation, ``name[]``
    filters, compression), once the gauges read from the token and the store are refreshed."""
    rt = runtime(request)
    await asyncio.get_running_loop().run_in_executor(rt.probe_executor, rt.refresh_metrics)
    response = await rt.metrics.handler(request)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def openapi(request: web.Request) -> web.Response:
    from .openapi import document

    return web.json_response(document())


# ---- tenants -------------------------------------------------------------------------------------------


async def create_tenant(request: web.Request) -> web.Response:
    body = await read_body(request)
    name, custody = body.name("name"), body.data.get("custody", "wrapped")
    if custody not in CUSTODY_MODES:
        raise invalid("custody must be one of " + ", ".join(CUSTODY_MODES))
    tenants = service(request).tenants
    return await respond(request, lambda scope: tenants.create(name, scope, custody), idempotent=True)


async def list_tenants(request: web.Request) -> web.Response:
    tenants = service(request).tenants
    return await respond(request, lambda scope: tenants.list())


async def create_token(request: web.Request) -> web.Response:
    await read_body(request)
    tenant_id, tenants = request.match_info["tenant_id"], service(request).tenants
    return await respond(request, lambda scope: tenants.create_token(tenant_id, scope), idempotent=True)


async def revoke_token(request: web.Request) -> web.Response:
    tenant_id, token_id = request.match_info["tenant_id"], request.match_info["token_id"]
    tenants = service(request).tenants
    return await respond(request, lambda scope: tenants.revoke_token(tenant_id, token_id))


# ---- identities and key packages ------------------------------------------------------------------------


async def create_identity(request: web.Request) -> web.Response:
    body = await read_body(request)
    req = CreateIdentityRequest(
        body.name("name"),
        body.integer("cipher_suite", 1, 1, 7),
        rq.credential(body.data["credential"]) if body.has("credential") else None,
        body.boolean("auto_join", True),
    )
    p, identities = principal(request), service(request).identities
    return await respond(
        request, lambda scope: identities.create(p, req, scope), idempotent=True, metric="create_identity"
    )


async def list_identities(request: web.Request) -> web.Response:
    p, identities = principal(request), service(request).identities
    return await respond(request, lambda scope: identities.list(p))


async def get_identity(request: web.Request) -> web.Response:
    p, identities, iid = principal(request), service(request).identities, request.match_info["identity_id"]
    return await respond(request, lambda scope: identities.show(p, iid))


async def delete_identity(request: web.Request) -> web.Response:
    """Batches of its memberships, each its own short transaction and worker turn (other tenants'
    requests interleave), then the identity itself: still one synchronous 204 (api-v1.md)."""
    p, identities, iid = principal(request), service(request).identities, request.match_info["identity_id"]
    async with runtime(request).locks.hold(identity_lock(iid)):
        while await in_pool(request, lambda scope: identities.delete_memberships(p, iid), refusable=False):
            pass
    return await respond(request, lambda scope: identities.delete(p, iid, scope), lock=identity_lock(iid))


async def create_key_packages(request: web.Request) -> web.Response:
    body = await read_body(request)
    req = CreateKeyPackagesRequest(
        request.match_info["identity_id"],
        body.integer("count", 1, 1, 100),
        body.boolean("last_resort", False),
        body.integer("lifetime_days", 90, 1, 90),
    )
    p, key_packages = principal(request), service(request).key_packages
    return await respond(
        request, lambda scope: key_packages.create(p, req, scope), idempotent=True, metric="key_package"
    )


async def list_key_packages(request: web.Request) -> web.Response:
    p, key_packages, iid = (
        principal(request),
        service(request).key_packages,
        request.match_info["identity_id"],
    )
    return await respond(request, lambda scope: key_packages.list(p, iid))


# ---- groups ---------------------------------------------------------------------------------------------


async def create_group(request: web.Request) -> web.Response:
    body = await read_body(request)
    gid = body.optional_b64("group_id")
    if gid is not None and not 0 < len(gid) <= 255:
        raise invalid("group_id must be 1 to 255 bytes")
    req = CreateGroupRequest(
        request.match_info["identity_id"],
        gid,
        rq.extensions(body.items("extensions")),
        rq.external_senders(body.items("external_senders")),
        rq.group_settings(body),
    )
    p, groups = principal(request), service(request).groups
    return await respond(
        request, lambda scope: groups.create(p, req, scope), idempotent=True, metric="create_group"
    )


async def list_groups(request: web.Request) -> web.Response:
    p, groups, iid = principal(request), service(request).groups, request.match_info["identity_id"]
    return await respond(request, lambda scope: groups.list(p, iid))


async def get_group(request: web.Request) -> web.Response:
    address, p, groups = group_address(request), principal(request), service(request).groups
    return await respond(request, lambda scope: groups.show(p, address), lock=group_lock(address))


async def delete_group(request: web.Request) -> web.Response:
    address, p, groups = group_address(request), principal(request), service(request).groups
    return await respond(request, lambda scope: groups.delete(p, address, scope), lock=group_lock(address))


async def join(request: web.Request) -> web.Response:
    body = await read_body(request)
    iid = request.match_info["identity_id"]
    req = JoinRequest(
        iid,
        body.b64("welcome"),
        body.optional_b64("ratchet_tree"),
        rq.psk_secrets(body),
        rq.group_settings(body),
    )
    p, groups = principal(request), service(request).groups
    return await respond(
        request,
        lambda scope: groups.join(p, req, scope),
        idempotent=True,
        metric="join",
        lock=identity_lock(iid),
    )


async def external_join(request: web.Request) -> web.Response:
    body = await read_body(request)
    iid = request.match_info["identity_id"]
    gi, tree, psks = body.b64("group_info"), body.optional_b64("ratchet_tree"), rq.psk_secrets(body)
    remove_prior = body.boolean("remove_prior", False)
    prior = rq.leaf_index(body, "remove_prior_leaf") if body.has("remove_prior_leaf") else None
    req = ExternalJoinRequest(iid, gi, tree, remove_prior, prior, psks, rq.group_settings(body))
    p, groups = principal(request), service(request).groups
    return await respond(
        request,
        lambda scope: groups.external_join(p, req, scope),
        idempotent=True,
        metric="external_join",
        lock=identity_lock(iid),
    )


async def commit(request: web.Request) -> web.Response:
    body = await read_body(request)
    adds = [rq.b64decode(v, f"add[{n}]") for n, v in enumerate(body.items("add"))]
    removes = [rq.leaf_index(rq.Body({"i": v}), "i") for v in body.items("remove")]
    gce = (
        rq.extensions(body.items("group_context_extensions"))
        if body.has("group_context_extensions")
        else None
    )
    external, resumption = rq.commit_psks(body)
    include_pending = body.boolean("include_pending", True)
    force_path = body.boolean("force_path", False) or body.boolean("update", False)
    handshake = rq.handshake_name(body)
    pending = body.boolean("pending", False)
    address = group_address(request)
    req = CommitRequest(
        address.identity_id,
        address.group_id,
        adds,
        removes,
        external,
        resumption,
        gce,
        include_pending,
        force_path,
        handshake,
        pending,
        _epoch(body),
    )
    p, operations = principal(request), service(request).group_operations
    return await respond(
        request,
        lambda scope: operations.commit(p, req, scope),
        idempotent=True,
        metric="commit",
        lock=hosted_log_locks(request, address),
    )


async def merge_pending(request: web.Request) -> web.Response:
    await read_body(request)
    address, p, operations = group_address(request), principal(request), service(request).group_operations
    return await respond(
        request,
        lambda scope: operations.merge_pending(p, address, scope),
        idempotent=True,
        metric="commit",
        lock=hosted_log_locks(request, address),
    )


async def discard_pending(request: web.Request) -> web.Response:
    address, p, operations = group_address(request), principal(request), service(request).group_operations
    return await respond(
        request, lambda scope: operations.discard_pending(p, address, scope), lock=group_lock(address)
    )


def _proposal_request(body: rq.Body, address: GroupAddress) -> ProposalRequest:
    kind = rq.proposal_kind(body)
    key_package = body.b64("key_package") if kind == "add" else None
    leaf_index = rq.leaf_index(body, "leaf_index") if kind == "remove" else None
    psk = None
    if kind == "psk":
        psk_body = body.object("psk")
        psk = ExternalPsk(psk_body.b64("psk_id"), psk_body.optional_b64("secret"))
    extensions = rq.extensions(body.items("extensions")) if kind == "group_context_extensions" else []
    return ProposalRequest(
        address.identity_id,
        address.group_id,
        kind,
        rq.handshake_name(body),
        key_package,
        leaf_index,
        psk,
        extensions,
        _epoch(body),
    )


def _epoch(body: rq.Body) -> int | None:
    """The optional ``epoch`` a commit or proposal was built on (api-delivery.md)."""
    return body.integer("epoch", None, 0, (1 << 63) - 1) if body.has("epoch") else None


async def propose(request: web.Request) -> web.Response:
    body = await read_body(request)
    address = group_address(request)
    req = _proposal_request(body, address)
    p, operations = principal(request), service(request).group_operations
    return await respond(
        request,
        lambda scope: operations.propose(p, req, scope),
        idempotent=True,
        metric="propose",
        lock=hosted_log_locks(request, address),
    )


async def send_messages(request: web.Request) -> web.Response:
    body = await read_body(request)
    items, batch = rq.application_messages(body)
    address = group_address(request)
    req = SendRequest(address.identity_id, address.group_id, items, batch)
    p, operations = principal(request), service(request).group_operations
    return await respond(
        request,
        lambda scope: operations.send(p, req, scope),
        idempotent=True,
        metric="protect",
        lock=hosted_log_locks(request, address),
    )


async def process(request: web.Request) -> web.Response:
    body = await read_body(request)
    messages, batch = rq.incoming_messages(body)
    address = group_address(request)
    req = ProcessRequest(address.identity_id, address.group_id, messages, batch)
    p, operations = principal(request), service(request).group_operations
    return await respond(
        request,
        lambda scope: operations.process(p, req, scope),
        idempotent=True,
        metric="unprotect",
        lock=group_lock(address),
    )


async def group_info(request: web.Request) -> web.Response:
    address, p, operations = group_address(request), principal(request), service(request).group_operations
    in_extension = rq.tree_placement(request.query.get("ratchet_tree", "separate"))
    return await respond(
        request,
        lambda scope: operations.group_info(p, address, scope, in_extension),
        lock=group_lock(address),
    )


async def export(request: web.Request) -> web.Response:
    body = await read_body(request)
    label = body.name("label", max_len=255)
    context = body.optional_b64("context") or b""
    length = body.integer("length", None, 1, 255)
    address = group_address(request)
    req = ExportRequest(address.identity_id, address.group_id, label, length, context)
    p, operations = principal(request), service(request).group_operations
    return await respond(
        request, lambda scope: operations.export(p, req), lock=group_lock(address), metric="export"
    )


#: The path of an identity's groups; every group route is under it.
GROUPS = "/v1/identities/{identity_id}/groups"
ROUTES: list[Route] = [
    Route("GET", "/healthz", healthz, "none", "Liveness: the process serves"),
    Route("GET", "/readyz", readyz, "none", "Readiness: the HSM pool answers, the store takes writes"),
    Route("GET", "/metrics", metrics, "none", "Prometheus metrics"),
    Route("GET", "/v1/openapi.json", openapi, "none", "This API's OpenAPI 3.1 document"),
    Route("POST", "/v1/tenants", create_tenant, "admin", "Create a tenant and its first token", True),
    Route("GET", "/v1/tenants", list_tenants, "admin", "List tenants"),
    Route("POST", "/v1/tenants/{tenant_id}/tokens", create_token, "admin", "Create a tenant token", True),
    Route(
        "DELETE", "/v1/tenants/{tenant_id}/tokens/{token_id}", revoke_token, "admin", "Revoke a token", True
    ),
    *TENANT_ADMIN_ROUTES,
    Route(
        "POST",
        "/v1/identities",
        create_identity,
        "tenant",
        "Create a hosted identity (keys in the HSM)",
        True,
    ),
    Route("GET", "/v1/identities", list_identities, "tenant", "List identities"),
    Route("GET", "/v1/identities/{identity_id}", get_identity, "tenant", "Get an identity"),
    Route(
        "DELETE",
        "/v1/identities/{identity_id}",
        delete_identity,
        "tenant",
        "Delete an identity and its keys",
        True,
    ),
    Route(
        "POST",
        "/v1/identities/{identity_id}/key-packages",
        create_key_packages,
        "tenant",
        "Create KeyPackages",
        True,
    ),
    Route(
        "GET", "/v1/identities/{identity_id}/key-packages", list_key_packages, "tenant", "List KeyPackages"
    ),
    Route("POST", GROUPS, create_group, "tenant", "Create a group", True),
    Route("GET", GROUPS, list_groups, "tenant", "List the identity's groups"),
    Route("POST", GROUPS + "/join", join, "tenant", "Join from a Welcome", True),
    Route("POST", GROUPS + "/external-join", external_join, "tenant", "Join by external commit", True),
    Route("GET", GROUPS + "/{gid}", get_group, "tenant", "Group state summary"),
    Route(
        "DELETE",
        GROUPS + "/{gid}",
        delete_group,
        "tenant",
        "Leave locally: delete this identity's group state",
        True,
    ),
    Route(
        "POST", GROUPS + "/{gid}/commits", commit, "tenant", "Create a commit (merged unless pending)", True
    ),
    Route(
        "POST",
        GROUPS + "/{gid}/pending-commit/merge",
        merge_pending,
        "tenant",
        "Merge the pending commit",
        True,
    ),
    Route(
        "DELETE",
        GROUPS + "/{gid}/pending-commit",
        discard_pending,
        "tenant",
        "Discard the pending commit",
        True,
    ),
    Route("POST", GROUPS + "/{gid}/proposals", propose, "tenant", "Send a proposal", True),
    Route("POST", GROUPS + "/{gid}/messages", send_messages, "tenant", "Protect application messages", True),
    Route("POST", GROUPS + "/{gid}/process", process, "tenant", "Process incoming MLS messages", True),
    Route("GET", GROUPS + "/{gid}/group-info", group_info, "tenant", "Signed GroupInfo with external_pub"),
    Route("POST", GROUPS + "/{gid}/export", export, "tenant", "MLS-Exporter secret", False),
    *LOG_ROUTES,
    *DIRECTORY_ROUTES,
    *MAILBOX_ROUTES,
]
ROUTES += WEBHOOK_ROUTES
ROUTES += CREDENTIAL_ROUTES
ROUTES += RETENTION_ROUTES  # per-tenant retention and legal hold (gateway.retention)


def make_request_id() -> str:
    return uuid.uuid4().hex


__all__ = ["ROUTES", "Route", "make_request_id"]
