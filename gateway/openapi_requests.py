"""The OpenAPI document's request side (gateway/openapi.py): the schema pieces every part shares, the request
body of each route that takes one, and the query parameters of mailbox and inbox reads (docs/api.md)."""

from __future__ import annotations

from typing import Any

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
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STR = {"type": "string"}
GROUP_CONFIG = {
    "type": "object",
    "description": "this member's configuration of the group (defaults from the [delivery] settings)",
    "properties": {
        "out_of_order_tolerance": {"type": "integer", "minimum": 0, "maximum": 1000},
        "max_forward_distance": {"type": "integer", "minimum": 0, "maximum": 100000},
        "past_epochs": {"type": "integer", "minimum": 0, "maximum": 64},
    },
}
#: The request body of a POST that takes no fields (``{}``; an empty body counts as ``{}``).
NO_FIELDS = {"type": "object", "description": "no fields: {} or an empty body"}


def obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


#: The path of an identity's groups; every group route is under it.
GROUPS = "/v1/identities/{identity_id}/groups"
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/tenants"): obj(
        ["name"], name={"type": "string"}, custody={"enum": ["wrapped", "token"], "default": "wrapped"}
    ),
    ("POST", "/v1/identities"): obj(
        ["name"],
        name={"type": "string"},
        cipher_suite={"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
        credential=CREDENTIAL,
        auto_join={"type": "boolean", "default": True},
    ),
    ("POST", "/v1/tenants/{tenant_id}/tokens"): NO_FIELDS,
    ("POST", GROUPS + "/{gid}/pending-commit/merge"): NO_FIELDS,
    ("POST", "/v1/identities/{identity_id}/key-packages"): obj(
        count={"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
        last_resort={"type": "boolean", "default": False},
        lifetime_days={"type": "integer", "minimum": 1, "maximum": 90, "default": 90},
    ),
    ("POST", GROUPS): obj(
        group_id=B64,
        extensions=EXTENSIONS,
        external_senders={
            "type": "array",
            "items": obj(["signature_key", "credential"], signature_key=B64, credential=CREDENTIAL),
        },
        config=GROUP_CONFIG,
    ),
    ("POST", GROUPS + "/join"): obj(
        ["welcome"], welcome=MLS, ratchet_tree=B64, psks=PSKS, config=GROUP_CONFIG
    ),
    ("POST", GROUPS + "/external-join"): obj(
        ["group_info"],
        group_info=MLS,
        ratchet_tree=B64,
        remove_prior={"type": "boolean"},
        remove_prior_leaf={"type": "integer"},
        psks=PSKS,
        config=GROUP_CONFIG,
    ),
    ("POST", GROUPS + "/{gid}/commits"): obj(
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
    ("POST", GROUPS + "/{gid}/proposals"): obj(
        ["type"],
        type={"enum": ["add", "remove", "update", "psk", "group_context_extensions"]},
        key_package=MLS,
        leaf_index={"type": "integer"},
        psk=obj(["psk_id"], psk_id=B64, secret=B64),
        extensions=EXTENSIONS,
        handshake=HANDSHAKE,
        epoch=EPOCH,
    ),
    ("POST", GROUPS + "/{gid}/messages"): {
        "oneOf": [
            obj(["data"], data=B64, authenticated_data=B64),
            obj(
                ["messages"],
                messages={"type": "array", "items": obj(["data"], data=B64, authenticated_data=B64)},
            ),
        ]
    },
    ("POST", GROUPS + "/{gid}/process"): {
        "oneOf": [
            obj(["message"], message=MLS),
            obj(["messages"], messages={"type": "array", "items": MLS}),
        ]
    },
    ("POST", GROUPS + "/{gid}/export"): obj(
        ["label", "length"],
        label={"type": "string"},
        context=B64,
        length={"type": "integer", "minimum": 1, "maximum": 255},
    ),
    ("POST", "/v1/clients"): obj(["name"], name={"type": "string"}),
    ("POST", "/v1/clients/{client_id}/key-packages"): obj(
        key_packages={"type": "array", "items": MLS, "maxItems": 100}, last_resort=MLS
    ),
    ("POST", "/v1/key-packages/claim"): obj(
        ["endpoints"],
        endpoints={"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 100},
        cipher_suite={"type": "integer", "minimum": 1, "maximum": 65535},
    ),
    ("POST", "/v1/groups/{gid}/commit-bundles"): obj(
        ["commit", "group_info"], commit=MLS, group_info=MLS, ratchet_tree=B64, welcome=MLS
    ),
    ("POST", "/v1/groups/{gid}/messages"): obj(["message"], message=MLS),
    ("POST", "/v1/clients/{client_id}/mailbox/ack"): obj(["up_to"], up_to=CURSOR),
    ("POST", "/v1/identities/{identity_id}/inbox/ack"): obj(["up_to"], up_to=CURSOR),
    ("PUT", "/v1/identities/{identity_id}/webhook"): obj(
        ["url", "secret"],
        url={"type": "string", "format": "uri", "maxLength": 2048},
        secret={"type": "string", "description": "16 to 256 bytes of UTF-8 text"},
        after=CURSOR,
    ),
}


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
