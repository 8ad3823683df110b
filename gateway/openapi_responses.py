"""The OpenAPI document's response side (gateway/openapi.py): each route's success status and success body
(docs/api.md), answers that are not JSON, and the readiness probe's 503."""

from __future__ import annotations

from typing import Any

from .api_credentials import CREDENTIAL_PATH, CREDENTIAL_REQUEST_BODIES, CSR_PATH, POLICY_PATH
from .openapi_requests import (
    B64,
    B64_NULL,
    BOOL,
    CURSOR,
    GROUP_CONFIG,
    GROUPS,
    INT,
    MLS,
    SEQ,
    STR,
    obj,
)

SUCCESS: dict[tuple[str, str], int] = {
    ("GET", "/v1/clients/{client_id}/mailbox/ws"): 101,
    ("GET", "/v1/identities/{identity_id}/inbox/ws"): 101,
    ("POST", "/v1/tenants"): 201,
    ("POST", "/v1/tenants/{tenant_id}/tokens"): 201,
    ("DELETE", "/v1/tenants/{tenant_id}/tokens/{token_id}"): 204,
    ("DELETE", "/v1/tenants/{tenant_id}"): 204,
    ("POST", "/v1/identities"): 201,
    ("DELETE", "/v1/identities/{identity_id}"): 204,
    ("POST", "/v1/identities/{identity_id}/key-packages"): 201,
    ("POST", GROUPS): 201,
    ("POST", GROUPS + "/join"): 201,
    ("POST", GROUPS + "/external-join"): 201,
    ("DELETE", GROUPS + "/{gid}"): 204,
    ("DELETE", GROUPS + "/{gid}/pending-commit"): 204,
    ("POST", GROUPS + "/{gid}/proposals"): 201,
    ("POST", "/v1/clients"): 201,
    ("DELETE", "/v1/clients/{client_id}"): 204,
    ("POST", "/v1/clients/{client_id}/key-packages"): 201,
    ("POST", "/v1/groups/{gid}/commit-bundles"): 201,
    ("POST", "/v1/groups/{gid}/messages"): 201,
    ("POST", "/v1/clients/{client_id}/mailbox/ack"): 204,
    ("POST", "/v1/identities/{identity_id}/inbox/ack"): 204,
    ("DELETE", "/v1/identities/{identity_id}/webhook"): 204,
}

_MAILBOX_ITEM = obj(
    ["cursor", "group_id", "seq", "kind", "message"],
    cursor=CURSOR,
    group_id=B64,
    seq=SEQ,
    kind={"enum": ["welcome", "commit", "proposal", "application"]},
    message=MLS,
)
_INBOX_EVENT = {
    **obj(
        ["cursor", "group_id", "seq", "kind"],
        cursor=CURSOR,
        group_id=B64,
        seq=SEQ,
        kind={"enum": ["application", "proposal", "commit", "joined", "welcome", "rejected"]},
    ),
    "description": "the /process result of the log entry, or joined / welcome / rejected",
}
_CLIENT = obj(["client_id", "name"], client_id={"type": "string"}, name={"type": "string"})
_WEBHOOK = obj(
    ["url", "paused", "delivered_cursor"],
    url={"type": "string"},
    paused={"type": "boolean"},
    delivered_cursor=CURSOR,
    failing_since={"type": "number"},
)
#: Success bodies (JSON) of the group service's routes.
_GROUP_SERVICE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/clients"): obj(
        ["client_id", "name", "token"],
        client_id={"type": "string"},
        name={"type": "string"},
        token={"type": "string"},
    ),
    ("GET", "/v1/clients"): obj(["clients"], clients={"type": "array", "items": _CLIENT}),
    ("GET", "/v1/clients/{client_id}"): _CLIENT,
    ("POST", "/v1/clients/{client_id}/key-packages"): obj(["stored"], stored={"type": "integer"}),
    ("GET", "/v1/clients/{client_id}/key-packages"): obj(
        ["available", "last_resort"], available={"type": "integer"}, last_resort={"type": "boolean"}
    ),
    ("POST", "/v1/key-packages/claim"): obj(
        ["key_packages"], key_packages={"type": "object", "additionalProperties": MLS}
    ),
    ("POST", "/v1/groups/{gid}/commit-bundles"): obj(["seq", "epoch"], seq=SEQ, epoch={"type": "integer"}),
    ("POST", "/v1/groups/{gid}/messages"): obj(["seq"], seq=SEQ),
    ("GET", "/v1/groups/{gid}"): obj(
        ["group_id", "epoch", "seq", "cipher_suite", "members"],
        group_id=B64,
        epoch={"type": "integer"},
        seq={"type": "integer"},
        cipher_suite={"type": "integer"},
        members={
            "type": "array",
            "items": obj(
                ["leaf_index", "endpoint"],
                leaf_index={"type": "integer"},
                endpoint={"type": ["string", "null"]},
            ),
        },
    ),
    ("GET", "/v1/groups/{gid}/group-info"): obj(
        ["group_info", "ratchet_tree", "epoch"], group_info=MLS, ratchet_tree=B64, epoch={"type": "integer"}
    ),
    ("GET", "/v1/clients/{client_id}/mailbox"): obj(
        ["items", "next_cursor"], items={"type": "array", "items": _MAILBOX_ITEM}, next_cursor=CURSOR
    ),
    ("GET", "/v1/identities/{identity_id}/inbox"): obj(
        ["events", "next_cursor"], events={"type": "array", "items": _INBOX_EVENT}, next_cursor=CURSOR
    ),
    ("PUT", "/v1/identities/{identity_id}/webhook"): obj(
        ["url", "after"], url={"type": "string"}, after=CURSOR
    ),
    ("GET", "/v1/identities/{identity_id}/webhook"): _WEBHOOK,
}

_CREDENTIAL_OUT = obj(
    ["type"],
    type={"enum": ["basic", "x509"]},
    identity=B64,
    certificates={"type": "array", "items": B64},
)
_CUSTODY = {"enum": ["pkcs11", "wrapped", "software"]}
_IDENTITY = obj(
    ["identity_id", "name", "cipher_suite", "credential", "signature_public_key", "custody", "auto_join"],
    identity_id=STR,
    name=STR,
    cipher_suite=INT,
    credential=_CREDENTIAL_OUT,
    signature_public_key=B64,
    custody=obj(["signature", "hpke"], signature=_CUSTODY, hpke=_CUSTODY),
    auto_join=BOOL,
)
_TENANT_CUSTODY = {"enum": ["wrapped", "token"]}
_SENDER = obj(
    ["type"],
    type={"enum": ["member", "external", "new_member_proposal", "new_member_commit"]},
    leaf_index=INT,
    sender_index=INT,
)
#: What ``POST …/process`` answers for one message (RFC 9420 §12: an application message, a proposal,
#: or a commit merged at once).
_PROCESSED = {
    "oneOf": [
        obj(
            ["kind", "sender", "data", "authenticated_data", "epoch"],
            kind={"const": "application"},
            sender=_SENDER,
            data=B64,
            authenticated_data=B64,
            epoch=INT,
        ),
        obj(
            ["kind", "sender", "ref", "proposal_type", "epoch"],
            kind={"const": "proposal"},
            sender=_SENDER,
            ref=B64,
            proposal_type=STR,
            epoch=INT,
        ),
        obj(
            ["kind", "sender", "epoch", "removed", "epoch_authenticator"],
            kind={"const": "commit"},
            sender=_SENDER,
            epoch=INT,
            removed=BOOL,
            epoch_authenticator=B64,
        ),
    ]
}
_GROUP_VIEW = obj(
    [
        "group_id",
        "epoch",
        "cipher_suite",
        "own_leaf_index",
        "epoch_authenticator",
        "tree_hash",
        "active",
        "members",
        "pending_proposals",
        "pending_commit",
        "config",
    ],
    group_id=B64,
    epoch=INT,
    cipher_suite=INT,
    own_leaf_index=INT,
    epoch_authenticator=B64,
    tree_hash=B64,
    active=BOOL,
    members={
        "type": "array",
        "items": obj(
            ["leaf_index", "credential", "signature_key"],
            leaf_index=INT,
            credential=_CREDENTIAL_OUT,
            signature_key=B64,
        ),
    },
    pending_proposals={
        "type": "array",
        "items": obj(["ref", "type", "sender"], ref=B64, type=STR, sender=_SENDER),
    },
    pending_commit=BOOL,
    config=GROUP_CONFIG,
)
_GROUP_ENTRY = obj(["group_id", "epoch"], group_id=B64, epoch=INT)
#: Success bodies of the service routes and of api-v1's (tenants, hosted identities, their groups).
_V1_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/healthz"): obj(["status"], status={"const": "ok"}),
    ("GET", "/readyz"): obj(["status"], status={"const": "ready"}),
    ("GET", "/v1/openapi.json"): obj(["openapi", "info", "paths"], openapi=STR, info=obj(), paths=obj()),
    ("POST", "/v1/tenants"): obj(
        ["tenant_id", "token", "custody"], tenant_id=STR, token=STR, custody=_TENANT_CUSTODY
    ),
    ("GET", "/v1/tenants"): obj(
        ["tenants"],
        tenants={
            "type": "array",
            "items": obj(["tenant_id", "name", "custody"], tenant_id=STR, name=STR, custody=_TENANT_CUSTODY),
        },
    ),
    ("POST", "/v1/tenants/{tenant_id}/tokens"): obj(["token_id", "token"], token_id=STR, token=STR),
    ("GET", "/v1/tenants/{tenant_id}/tokens"): obj(
        ["tokens"],
        tokens={
            "type": "array",
            "items": obj(
                ["token_id", "created_at", "revoked"],
                token_id=STR,
                created_at={"type": "number"},
                revoked=BOOL,
                client_id=STR,
            ),
        },
    ),
    ("POST", "/v1/identities"): _IDENTITY,
    ("GET", "/v1/identities"): obj(["identities"], identities={"type": "array", "items": _IDENTITY}),
    ("GET", "/v1/identities/{identity_id}"): _IDENTITY,
    ("POST", "/v1/identities/{identity_id}/key-packages"): obj(
        ["key_packages"],
        key_packages={"type": "array", "items": obj(["ref", "key_package"], ref=B64, key_package=MLS)},
    ),
    ("GET", "/v1/identities/{identity_id}/key-packages"): obj(
        ["key_packages"],
        key_packages={
            "type": "array",
            "items": obj(["ref", "consumed", "last_resort"], ref=B64, consumed=BOOL, last_resort=BOOL),
        },
    ),
    ("POST", GROUPS): _GROUP_ENTRY,
    ("GET", GROUPS): obj(["groups"], groups={"type": "array", "items": _GROUP_ENTRY}),
    ("POST", GROUPS + "/join"): obj(
        ["group_id", "epoch", "epoch_authenticator"], group_id=B64, epoch=INT, epoch_authenticator=B64
    ),
    ("POST", GROUPS + "/external-join"): obj(
        ["group_id", "epoch", "commit"], group_id=B64, epoch=INT, commit=MLS
    ),
    ("GET", GROUPS + "/{gid}"): _GROUP_VIEW,
    ("POST", GROUPS + "/{gid}/commits"): obj(
        ["commit", "welcome", "group_info", "epoch"],
        commit=MLS,
        welcome=B64_NULL,
        group_info=MLS,
        ratchet_tree=B64_NULL,
        epoch=INT,
    ),
    ("POST", GROUPS + "/{gid}/pending-commit/merge"): obj(["epoch"], epoch=INT),
    ("POST", GROUPS + "/{gid}/proposals"): obj(["proposal", "ref"], proposal=MLS, ref=B64),
    ("POST", GROUPS + "/{gid}/messages"): {
        "oneOf": [
            obj(["message"], message=MLS),
            obj(["messages"], messages={"type": "array", "items": MLS}),
        ]
    },
    ("POST", GROUPS + "/{gid}/process"): {
        "oneOf": [
            _PROCESSED,
            obj(
                ["results"],
                results={
                    "type": "array",
                    "items": {"anyOf": [_PROCESSED, {"$ref": "#/components/schemas/Problem"}]},
                },
            ),
        ]
    },
    ("GET", GROUPS + "/{gid}/group-info"): obj(
        ["group_info", "ratchet_tree"], group_info=MLS, ratchet_tree=B64
    ),
    ("POST", GROUPS + "/{gid}/export"): obj(["secret"], secret=B64),
}
_POLICY = CREDENTIAL_REQUEST_BODIES[("PUT", POLICY_PATH)]
_COMPLIANCE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", POLICY_PATH): _POLICY,
    ("GET", POLICY_PATH): _POLICY,
    ("POST", CSR_PATH): obj(["csr"], csr=STR),
    ("PUT", CREDENTIAL_PATH): _IDENTITY,
}
#: Every success body (JSON) by route.
RESPONSE_BODIES = {**_V1_BODIES, **_GROUP_SERVICE_BODIES, **_COMPLIANCE_BODIES}
#: Answers other than a JSON body: Prometheus text (the WebSocket upgrades, 101, have none).
TEXT_BODIES = {("GET", "/metrics"): "text/plain"}
#: Answers besides the success and the problem documents: the readiness probe's 503.
OTHER_RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/readyz"): {
        "503": {
            "description": "not ready (Retry-After: 5)",
            "content": {
                "application/json": {
                    "schema": obj(
                        ["status", "problems"],
                        status={"const": "unavailable"},
                        problems={"type": "array", "items": STR},
                    )
                }
            },
        }
    }
}
