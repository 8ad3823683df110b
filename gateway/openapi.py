"""The OpenAPI 3.1 document of the API, generated from the route table (:data:`gateway.api.ROUTES`).

Paths, methods, summaries, authentication and path parameters come from the routes themselves, so the
document cannot list a route that does not exist or miss one that does; request bodies and success
statuses are described here, per route, after docs/api.md (both contracts: api-v1 and the group
service); so are the query parameters of mailbox and inbox reads and the success bodies of the group
service's routes.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from .api import ROUTES, Route
from .errors import CODES

B64 = {"type": "string", "contentEncoding": "base64"}
B64_NULL = {"type": ["string", "null"], "contentEncoding": "base64"}
MLS = {**B64, "description": "A complete MLSMessage (RFC 9420 §6) in wire format, base64"}
CREDENTIAL = {
    "type": "object",
    "required": ["type", "identity"],
    "properties": {"type": {"const": "basic"}, "identity": B64},
}
EXTENSIONS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "data"],
        "properties": {"type": {"type": "integer"}, "data": B64},
    },
}
PSKS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "psk_id": B64,
            "secret": B64,
            "resumption": {"type": "object", "properties": {"group_id": B64, "epoch": {"type": "integer"}}},
        },
    },
}
HANDSHAKE = {"enum": ["public", "private"], "default": "public"}
EPOCH = {
    "type": "integer",
    "minimum": 0,
    "description": "the epoch the intent was built on; a group already past it answers 409 current_epoch",
}
CURSOR = {"type": "string", "pattern": "^[0-9]{1,19}$", "description": "an opaque cursor"}
SEQ = {"type": "integer", "minimum": 1}


def _obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


_G = "/v1/identities/{identity_id}/groups"
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/tenants"): _obj(
        ["name"], name={"type": "string"}, custody={"enum": ["wrapped", "token"], "default": "wrapped"}
    ),
    ("POST", "/v1/identities"): _obj(
        ["name"],
        name={"type": "string"},
        cipher_suite={"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
        credential=CREDENTIAL,
    ),
    ("POST", "/v1/identities/{identity_id}/key-packages"): _obj(
        count={"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
        last_resort={"type": "boolean", "default": False},
        lifetime_days={"type": "integer", "minimum": 1, "maximum": 90, "default": 90},
    ),
    ("POST", _G): _obj(
        group_id=B64,
        extensions=EXTENSIONS,
        external_senders={
            "type": "array",
            "items": _obj(["signature_key", "credential"], signature_key=B64, credential=CREDENTIAL),
        },
    ),
    ("POST", _G + "/join"): _obj(["welcome"], welcome=MLS, ratchet_tree=B64, psks=PSKS),
    ("POST", _G + "/external-join"): _obj(
        ["group_info"],
        group_info=MLS,
        ratchet_tree=B64,
        remove_prior={"type": "boolean"},
        remove_prior_leaf={"type": "integer"},
        psks=PSKS,
    ),
    ("POST", _G + "/{gid}/commits"): _obj(
        add={"type": "array", "items": MLS},
        remove={"type": "array", "items": {"type": "integer"}},
        update={"type": "boolean"},
        psks=PSKS,
        group_context_extensions=EXTENSIONS,
        include_pending={"type": "boolean", "default": True},
        force_path={"type": "boolean"},
        handshake=HANDSHAKE,
        pending={"type": "boolean", "default": False},
        epoch=EPOCH,
    ),
    ("POST", _G + "/{gid}/proposals"): _obj(
        ["type"],
        type={"enum": ["add", "remove", "update", "psk", "group_context_extensions"]},
        key_package=MLS,
        leaf_index={"type": "integer"},
        psk=_obj(["psk_id"], psk_id=B64, secret=B64),
        extensions=EXTENSIONS,
        handshake=HANDSHAKE,
        epoch=EPOCH,
    ),
    ("POST", _G + "/{gid}/messages"): {
        "oneOf": [
            _obj(["data"], data=B64, authenticated_data=B64),
            _obj(
                ["messages"],
                messages={"type": "array", "items": _obj(["data"], data=B64, authenticated_data=B64)},
            ),
        ]
    },
    ("POST", _G + "/{gid}/process"): {
        "oneOf": [
            _obj(["message"], message=MLS),
            _obj(["messages"], messages={"type": "array", "items": MLS}),
        ]
    },
    ("POST", _G + "/{gid}/export"): _obj(
        ["label", "length"],
        label={"type": "string"},
        context=B64,
        length={"type": "integer", "minimum": 1, "maximum": 255},
    ),
    ("POST", "/v1/clients"): _obj(["name"], name={"type": "string"}),
    ("POST", "/v1/clients/{client_id}/key-packages"): _obj(
        key_packages={"type": "array", "items": MLS, "maxItems": 100}, last_resort=MLS
    ),
    ("POST", "/v1/key-packages/claim"): _obj(
        ["endpoints"],
        endpoints={"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 100},
        cipher_suite={"type": "integer", "minimum": 1, "maximum": 65535},
    ),
    ("POST", "/v1/groups/{gid}/commit-bundles"): _obj(
        ["commit", "group_info"], commit=MLS, group_info=MLS, ratchet_tree=B64, welcome=MLS
    ),
    ("POST", "/v1/groups/{gid}/messages"): _obj(["message"], message=MLS),
    ("POST", "/v1/clients/{client_id}/mailbox/ack"): _obj(["up_to"], up_to=CURSOR),
    ("POST", "/v1/identities/{identity_id}/inbox/ack"): _obj(["up_to"], up_to=CURSOR),
    ("PUT", "/v1/identities/{identity_id}/webhook"): _obj(
        ["url", "secret"],
        url={"type": "string", "format": "uri", "maxLength": 2048},
        secret={"type": "string", "description": "16 to 256 bytes of UTF-8 text"},
        after=CURSOR,
    ),
}

SUCCESS: dict[tuple[str, str], int] = {
    ("POST", "/v1/tenants"): 201,
    ("POST", "/v1/tenants/{tenant_id}/tokens"): 201,
    ("DELETE", "/v1/tenants/{tenant_id}/tokens/{token_id}"): 204,
    ("DELETE", "/v1/tenants/{tenant_id}"): 204,
    ("POST", "/v1/identities"): 201,
    ("DELETE", "/v1/identities/{identity_id}"): 204,
    ("POST", "/v1/identities/{identity_id}/key-packages"): 201,
    ("POST", _G): 201,
    ("POST", _G + "/join"): 201,
    ("POST", _G + "/external-join"): 201,
    ("DELETE", _G + "/{gid}"): 204,
    ("DELETE", _G + "/{gid}/pending-commit"): 204,
    ("POST", _G + "/{gid}/proposals"): 201,
    ("POST", "/v1/clients"): 201,
    ("DELETE", "/v1/clients/{client_id}"): 204,
    ("POST", "/v1/clients/{client_id}/key-packages"): 201,
    ("POST", "/v1/groups/{gid}/commit-bundles"): 201,
    ("POST", "/v1/groups/{gid}/messages"): 201,
    ("POST", "/v1/clients/{client_id}/mailbox/ack"): 204,
    ("POST", "/v1/identities/{identity_id}/inbox/ack"): 204,
    ("DELETE", "/v1/identities/{identity_id}/webhook"): 204,
}

_MAILBOX_ITEM = _obj(
    ["cursor", "group_id", "seq", "kind", "message"],
    cursor=CURSOR,
    group_id=B64,
    seq=SEQ,
    kind={"enum": ["welcome", "commit", "proposal", "application"]},
    message=MLS,
)
_INBOX_EVENT = {
    **_obj(
        ["cursor", "group_id", "seq", "kind"],
        cursor=CURSOR,
        group_id=B64,
        seq=SEQ,
        kind={"enum": ["application", "proposal", "commit", "joined", "welcome", "rejected"]},
    ),
    "description": "the /process result of the log entry, or joined / welcome / rejected",
}
_CLIENT = _obj(["client_id", "name"], client_id={"type": "string"}, name={"type": "string"})
_WEBHOOK = _obj(
    ["url", "paused", "delivered_cursor"],
    url={"type": "string"},
    paused={"type": "boolean"},
    delivered_cursor=CURSOR,
    failing_since={"type": "number"},
)
#: Success bodies (JSON) of the group service's routes (api-v1 routes' bodies are in docs/api.md).
RESPONSE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/clients"): _obj(
        ["client_id", "name", "token"],
        client_id={"type": "string"},
        name={"type": "string"},
        token={"type": "string"},
    ),
    ("GET", "/v1/clients"): _obj(["clients"], clients={"type": "array", "items": _CLIENT}),
    ("GET", "/v1/clients/{client_id}"): _CLIENT,
    ("POST", "/v1/clients/{client_id}/key-packages"): _obj(["stored"], stored={"type": "integer"}),
    ("GET", "/v1/clients/{client_id}/key-packages"): _obj(
        ["available", "last_resort"], available={"type": "integer"}, last_resort={"type": "boolean"}
    ),
    ("POST", "/v1/key-packages/claim"): _obj(
        ["key_packages"], key_packages={"type": "object", "additionalProperties": MLS}
    ),
    ("POST", "/v1/groups/{gid}/commit-bundles"): _obj(["seq", "epoch"], seq=SEQ, epoch={"type": "integer"}),
    ("POST", "/v1/groups/{gid}/messages"): _obj(["seq"], seq=SEQ),
    ("GET", "/v1/groups/{gid}"): _obj(
        ["group_id", "epoch", "seq", "cipher_suite", "members"],
        group_id=B64,
        epoch={"type": "integer"},
        seq={"type": "integer"},
        cipher_suite={"type": "integer"},
        members={
            "type": "array",
            "items": _obj(
                ["leaf_index", "endpoint"],
                leaf_index={"type": "integer"},
                endpoint={"type": ["string", "null"]},
            ),
        },
    ),
    ("GET", "/v1/groups/{gid}/group-info"): _obj(
        ["group_info", "ratchet_tree", "epoch"], group_info=MLS, ratchet_tree=B64, epoch={"type": "integer"}
    ),
    ("GET", "/v1/clients/{client_id}/mailbox"): _obj(
        ["items", "next_cursor"], items={"type": "array", "items": _MAILBOX_ITEM}, next_cursor=CURSOR
    ),
    ("GET", "/v1/identities/{identity_id}/inbox"): _obj(
        ["events", "next_cursor"], events={"type": "array", "items": _INBOX_EVENT}, next_cursor=CURSOR
    ),
    ("PUT", "/v1/identities/{identity_id}/webhook"): _obj(
        ["url", "after"], url={"type": "string"}, after=CURSOR
    ),
    ("GET", "/v1/identities/{identity_id}/webhook"): _WEBHOOK,
}

# -- retention and legal hold (gateway.retention) --
_SECONDS = {"type": ["integer", "null"], "minimum": 1, "description": "seconds; null: the default"}
_RETENTION = _obj(
    ["tenant_id", "mailbox_s", "idempotency_s", "audit_s", "effective", "legal_hold"],
    tenant_id={"type": "string"},
    mailbox_s=_SECONDS,
    idempotency_s=_SECONDS,
    audit_s=_SECONDS,
    effective=_obj(
        ["mailbox_s", "idempotency_s", "audit_s"],
        mailbox_s={"type": "number"},
        idempotency_s={"type": "number"},
        audit_s={"type": "number"},
    ),
    legal_hold={"type": "boolean"},
)
REQUEST_BODIES[("PUT", "/v1/tenants/{tenant_id}/retention")] = _obj(
    mailbox_s=_SECONDS, idempotency_s={**_SECONDS, "minimum": 86400}, audit_s=_SECONDS
)
REQUEST_BODIES[("PUT", "/v1/tenants/{tenant_id}/legal-hold")] = _obj(["enabled"], enabled={"type": "boolean"})
for _method in ("GET", "PUT"):
    RESPONSE_BODIES[(_method, "/v1/tenants/{tenant_id}/retention")] = _RETENTION
RESPONSE_BODIES[("PUT", "/v1/tenants/{tenant_id}/legal-hold")] = _RETENTION
# -- end retention and legal hold --

#: Query parameters of mailbox and inbox reads (long-poll) and of their WebSockets.
_AFTER = {"name": "after", "in": "query", "required": False, "schema": CURSOR}
_PAGE = [
    _AFTER,
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "default": 0},
        "description": "seconds to long-poll when nothing is there; above 30 is treated as 30",
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
]
QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/v1/clients/{client_id}/mailbox"): _PAGE,
    ("GET", "/v1/identities/{identity_id}/inbox"): _PAGE,
    ("GET", "/v1/clients/{client_id}/mailbox/ws"): [_AFTER],
    ("GET", "/v1/identities/{identity_id}/inbox/ws"): [_AFTER],
}


def _parameters(route: Route) -> list[dict[str, Any]]:
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            **({"description": "group id, base64url without padding"} if name == "gid" else {}),
        }
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    params += QUERY.get((route.method, route.path), [])
    if route.mutating and route.method == "POST":
        params.append(
            {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
        )
    return params


def _operation(route: Route) -> dict[str, Any]:
    key = (route.method, route.path)
    status = SUCCESS.get(key, 200)
    success: dict[str, Any] = {"description": "success"}
    if key in RESPONSE_BODIES:
        success["content"] = {"application/json": {"schema": RESPONSE_BODIES[key]}}
    responses: dict[str, Any] = {str(status): success}
    for code, (code_status, title) in CODES.items():
        if code in ("internal_error", "method_not_allowed") or (
            route.auth == "none" and code == "unauthorized"
        ):
            continue
        responses.setdefault(
            str(code_status),
            {
                "description": title,
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            },
        )
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "parameters": _parameters(route),
        "responses": responses,
    }
    if route.auth != "none":
        op["security"] = [{"bearer": []}]
        op["tags"] = [route.auth]
    if key in REQUEST_BODIES:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": REQUEST_BODIES[key]}},
        }
    return op


@cache
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MLS gateway",
            "version": "1.0.0",
            "description": (
                "Enterprise MLS (RFC 9420) gateway with HSM key custody: hosted identities and the group"
                " service (clients, KeyPackage directory, group logs, mailboxes, inboxes, webhooks)."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": _obj(
                    ["type", "title", "status", "code"],
                    type={"type": "string"},
                    title={"type": "string"},
                    status={"type": "integer"},
                    code={"enum": sorted(CODES)},
                    detail={"type": "string"},
                    rule={"type": "string"},
                    instance={"type": "string"},
                )
            },
        },
    }
