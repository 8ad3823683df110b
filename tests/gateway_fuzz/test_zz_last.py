"""Last in the package (they change state): the group still works, and every base body the fuzzers corrupt is
accepted as it is — so the refusals of the fuzz tests come from the defects, not from the bases."""

from __future__ import annotations

import base64

from gateway.api import ROUTES

from .harness import Gateway, b64
from .routes import SPECS, param_value


def test_group_still_works_after_fuzzing(gw: Gateway) -> None:
    """The messages kept fresh for mutation are still accepted (no mutated copy burnt their keys), and a new
    message and the exporter still agree between alice and bob."""
    w = gw.world
    g_alice, g_bob = w.group_path(w.alice), w.group_path(w.bob)
    got = gw.ok("POST", g_bob + "/process", {"message": b64(w.messages["application"])})
    assert base64.b64decode(got["data"]) == b"never processed"
    got = gw.ok("POST", g_alice + "/process", {"message": b64(w.messages["application_bob"])})
    assert base64.b64decode(got["data"]) == b"hello alice, never processed"
    # bob's proposal reached alice through the group's log: she commits it before sending (RFC 9420 §12.4).
    gw.ok("POST", g_alice + "/commits", {})
    sent = gw.ok("POST", g_alice + "/messages", {"data": b64(b"after the fuzz")})
    got = gw.ok("POST", g_bob + "/process", sent)
    assert base64.b64decode(got["data"]) == b"after the fuzz"
    export = {"label": "fuzz", "length": 32}
    assert gw.ok("POST", g_alice + "/export", export) == gw.ok("POST", g_bob + "/export", export)


#: The order the base bodies are sent in (each changes state that a later one may depend on): alice's
#: messages before her proposals (a member with pending proposals may not send), bob's processing before
#: alice's commit moves the epoch on.
ORDER = [
    "PUT /v1/identities/{identity_id}/webhook",
    "PUT /v1/tenants/{tenant_id}/retention",
    "PUT /v1/tenants/{tenant_id}/legal-hold",
    "POST /v1/clients/{client_id}/mailbox/ack",
    "POST /v1/identities/{identity_id}/inbox/ack",
    "POST /v1/tenants",
    "POST /v1/tenants/{tenant_id}/tokens",
    "POST /v1/identities",
    "POST /v1/identities/{identity_id}/key-packages",
    "POST /v1/identities/{identity_id}/groups",
    "POST /v1/identities/{identity_id}/groups/join",
    "POST /v1/identities/{identity_id}/groups/external-join",
    "POST /v1/identities/{identity_id}/groups/{gid}/export",
    "POST /v1/identities/{identity_id}/groups/{gid}/messages",
    "POST /v1/identities/{identity_id}/groups/{gid}/process",
    "POST /v1/identities/{identity_id}/groups/{gid}/commits",
    "POST /v1/identities/{identity_id}/groups/{gid}/pending-commit/merge",
    "POST /v1/identities/{identity_id}/groups/{gid}/proposals",
    # the group service: the log's base messages are alice's, of the epoch her proposals left current
    "POST /v1/clients",
    "POST /v1/clients/{client_id}/key-packages",
    "POST /v1/key-packages/claim",
    "POST /v1/groups/{gid}/messages",
    "POST /v1/groups/{gid}/commit-bundles",
    "PUT /v1/tenants/{tenant_id}/credential-policy",
    "POST /v1/identities/{identity_id}/csr",
    "PUT /v1/identities/{identity_id}/credential",
]
#: Routes whose base body is refused by design: merging when there is no pending commit.
REFUSED = {
    # a certificate for nobody's key, under a basic-only policy
    "PUT /v1/identities/{identity_id}/credential": 422,
    "POST /v1/identities/{identity_id}/groups/{gid}/pending-commit/merge": 409,
    # The seeded bundle (a discarded pending commit) carries no tree of its new epoch: refused as it is, so
    # its fuzzing only shows that defects are refused too (an acceptable base bundle is still to be built).
    "POST /v1/groups/{gid}/commit-bundles": 422,
}


def test_base_bodies_are_accepted(gw: Gateway) -> None:
    w = gw.world
    # bob's proposal reached alice through the group's log: she commits it before sending (RFC 9420 §12.4).
    gw.ok("POST", w.group_path(w.alice) + "/commits", {})
    body_routes = {f"{r.method} {r.path}" for r in ROUTES if SPECS[f"{r.method} {r.path}"].variants}
    assert set(ORDER) == body_routes
    methods = {f"{r.method} {r.path}": r for r in ROUTES}
    for key in ORDER:
        spec, route = SPECS[key], methods[key]
        path = route.path.format(**{name: param_value(w, symbol) for name, symbol in spec.params.items()})
        for variant in spec.variants:
            if key.endswith("/process"):  # a fresh message from alice for each variant
                sent = gw.ok(
                    "POST", w.group_path(w.alice) + "/messages", {"data": b64(variant.name.encode())}
                )
                w.messages["application"] = base64.b64decode(sent["message"])
            auth = "admin" if route.auth == "admin" else "tenant"
            reply = gw.request(route.method, path, json_body=variant.base(w), auth=auth)
            if key in REFUSED:
                assert reply.status == REFUSED[key], (key, variant.name, reply)
            else:
                assert 200 <= reply.status < 300, (key, variant.name, reply)
