"""The OpenAPI 3.1 document of the API, generated from the route table (:data:`gateway.api.ROUTES`).

Paths, methods, summaries, authentication and path parameters come from the routes themselves, so the
document cannot list a route that does not exist or miss one that does; request bodies and query
parameters (:mod:`gateway.openapi_requests`), success statuses and success bodies
(:mod:`gateway.openapi_responses`) are described per route after docs/api.md (both contracts: api-v1
and the group service). Every operation has a
request schema (an empty object for a ``POST`` without fields; none for ``GET`` and ``DELETE``), a success
response (a JSON schema, ``text/plain`` for ``/metrics``, no content for ``204`` and ``101``) and the
problem-document responses (RFC 9457) of its failures. ``tests/test_openapi.py`` checks that each is there;
``tests/gateway/test_client.py`` checks real answers of a running server against them.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from .api import ROUTES, Route
from .api_credentials import CREDENTIAL_REQUEST_BODIES, CREDENTIAL_SUCCESS
from .errors import CODES
from .openapi_requests import GROUPS, QUERY, REQUEST_BODIES, STR, obj
from .openapi_responses import OTHER_RESPONSES, RESPONSE_BODIES, SUCCESS, TEXT_BODIES

_G = GROUPS  # the name tests/test_api_reference.py uses

REQUEST_BODIES.update(CREDENTIAL_REQUEST_BODIES)
SUCCESS.update(CREDENTIAL_SUCCESS)

# -- retention and legal hold (gateway.retention) --
_SECONDS = {"type": ["integer", "null"], "minimum": 1, "description": "seconds; null: the default"}
_RETENTION = obj(
    ["tenant_id", "mailbox_s", "idempotency_s", "audit_s", "effective", "legal_hold"],
    tenant_id=STR,
    mailbox_s=_SECONDS,
    idempotency_s=_SECONDS,
    audit_s=_SECONDS,
    effective=obj(
        ["mailbox_s", "idempotency_s", "audit_s"],
        mailbox_s={"type": "number"},
        idempotency_s={"type": "number"},
        audit_s={"type": "number"},
    ),
    legal_hold={"type": "boolean"},
)
REQUEST_BODIES[("PUT", "/v1/tenants/{tenant_id}/retention")] = obj(
    mailbox_s=_SECONDS, idempotency_s={**_SECONDS, "minimum": 86400}, audit_s=_SECONDS
)
REQUEST_BODIES[("PUT", "/v1/tenants/{tenant_id}/legal-hold")] = obj(["enabled"], enabled={"type": "boolean"})
for _method in ("GET", "PUT"):
    RESPONSE_BODIES[(_method, "/v1/tenants/{tenant_id}/retention")] = _RETENTION
RESPONSE_BODIES[("PUT", "/v1/tenants/{tenant_id}/legal-hold")] = _RETENTION
# -- end retention and legal hold --


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


def _success(key: tuple[str, str]) -> dict[str, Any]:
    """The success response of a route: its JSON schema, its text type, or no content (204, 101)."""
    status = SUCCESS.get(key, 200)
    if status == 101:
        return {"description": "switching protocols: the WebSocket (JSON text frames, docs/api.md)"}
    if status == 204:
        return {"description": "success, no content"}
    if key in TEXT_BODIES:
        return {"description": "success", "content": {TEXT_BODIES[key]: {"schema": STR}}}
    if key not in RESPONSE_BODIES:  # a route described nowhere yet: tests/test_openapi.py fails on it
        return {"description": "success"}
    return {"description": "success", "content": {"application/json": {"schema": RESPONSE_BODIES[key]}}}


def _operation(route: Route) -> dict[str, Any]:
    key = (route.method, route.path)
    responses: dict[str, Any] = {str(SUCCESS.get(key, 200)): _success(key), **OTHER_RESPONSES.get(key, {})}
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
                "Problem": obj(
                    ["type", "title", "status", "code"],
                    type={"type": "string"},
                    title={"type": "string"},
                    status={"type": "integer"},
                    code={"enum": sorted(CODES)},
                    detail={"type": "string"},
                    rule={"type": "string"},
                    instance={"type": "string"},
                    current_epoch={
                        "type": "integer",
                        "description": "a stale epoch's 409: the group's epoch",
                    },
                    seq={"type": "integer", "description": "a repeated delivery's 409: the log entry"},
                )
            },
        },
    }
