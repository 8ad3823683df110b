"""Tenant isolation over HTTP: another tenant's resources do not exist for a tenant, in every route.

Tenant A has identities, a group with two members, key packages, a pending proposal and a second token.
Every route of :data:`gateway.api.ROUTES` is called with tenant B's token and tenant A's ids (and with
well-formed bodies made from A's real MLS messages, so nothing fails for a reason other than the id):
the answer is 404 ``not_found``, indistinguishable from the answer for ids that never existed, never
2xx, 403 or 5xx. Admin routes answer 404 to tenant tokens, tenant routes 404 to the admin token, any
protected route 401 without a token or with an unknown or revoked one. Tenant A's state is unchanged
afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.api import ROUTES, Route

from .cert_authority import Authority, pem
from .gwclient import Client, GatewayServer, Hosted, Response, b64
from .test_directory import Device

_G = "/v1/identities/{identity_id}/groups"


@dataclass
class World:
    server: GatewayServer
    a: Client
    b: Client
    tenant_a: str
    tenant_b: str
    token_a_id: str
    alice: Hosted
    bob: Hosted
    carol: Hosted
    gid: str
    b_own: str  # an identity of tenant B
    ids: dict[str, str]  # path parameter -> tenant A's value
    bodies: dict[tuple[str, str], Any]
    snapshot: dict[str, Any]


def _snapshot(w: World) -> dict[str, Any]:
    return {
        "alice": w.alice.group(w.gid),
        "bob": w.bob.group(w.gid),
        "identities": w.a.get("/v1/identities").expect(200).body,
        "key_packages": w.a.get(f"/v1/identities/{w.carol.identity_id}/key-packages").expect(200).body,
        "clients": w.a.get("/v1/clients").expect(200).body,
        "directory": w.a.get(f"/v1/clients/{w.ids['client_id']}/key-packages").expect(200).body,
        "groups": w.a.get(w.alice.path()).expect(200).body,
    }


@pytest.fixture(scope="module")
def world(shared_gateway: GatewayServer) -> World:
    server = shared_gateway
    tenant_a, token_a = server.admin.create_tenant("tenant-a")
    tenant_b, token_b = server.admin.create_tenant("tenant-b")
    a, b = server.client(token_a), server.client(token_b)
    token_a_id = server.admin.post(f"/v1/tenants/{tenant_a}/tokens", {}).expect(201)["token_id"]
    alice, bob, carol = (Hosted.create(a, n) for n in ("alice", "bob", "carol"))
    gid = alice.create_group()
    c = alice.commit(gid, {"add": [bob.key_package()]})
    bob.join(c["welcome"])
    # Material for well-formed bodies: a message from bob, a proposal from alice, a Welcome for carol,
    # a GroupInfo.
    message = bob.send(gid, b"for alice")
    proposal = alice.post(gid, "/proposals", {"type": "update"}).expect(201)["proposal"]
    kp = carol.key_package()
    staged = bob.commit(gid, {"add": [kp], "pending": True})
    assert a.delete(bob.path(gid, "/pending-commit")).status == 204
    info = a.get(alice.path(gid, "/group-info")).expect(200).body
    client_id = a.post("/v1/clients", {"name": "a-device"}).expect(201)["client_id"]
    device = Device("a-device")
    a.post(f"/v1/clients/{client_id}/key-packages", {"key_packages": device.key_packages(1)}).expect(201)
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/tenants"): {"name": "intruder"},
        ("POST", "/v1/tenants/{tenant_id}/tokens"): {},
        ("POST", "/v1/identities"): {"name": "b-identity"},
        ("POST", "/v1/identities/{identity_id}/key-packages"): {"count": 1},
        ("POST", _G): {},
        ("POST", _G + "/join"): {"welcome": staged["welcome"]},
        ("POST", _G + "/external-join"): {
            "group_info": info["group_info"],
            "ratchet_tree": info["ratchet_tree"],
        },
        ("POST", _G + "/{gid}/commits"): {"update": True},
        ("POST", _G + "/{gid}/pending-commit/merge"): {},
        ("POST", _G + "/{gid}/proposals"): {"type": "remove", "leaf_index": 1},
        ("POST", _G + "/{gid}/messages"): {"data": b64(b"from b")},
        ("POST", _G + "/{gid}/process"): {"messages": [message, proposal]},
        ("POST", _G + "/{gid}/export"): {"label": "x", "length": 16},
        ("POST", "/v1/clients"): {"name": "b-device"},
        ("POST", "/v1/clients/{client_id}/key-packages"): {"key_packages": Device("b").key_packages(1)},
        ("POST", "/v1/key-packages/claim"): {"endpoints": [client_id, carol.identity_id]},
        ("POST", "/v1/groups/{gid}/commit-bundles"): {
            "commit": staged["commit"],
            "group_info": staged["group_info"],
            "ratchet_tree": info["ratchet_tree"],
        },
        ("POST", "/v1/groups/{gid}/messages"): {"message": message},
        ("POST", "/v1/clients/{client_id}/mailbox/ack"): {"up_to": "1"},
        ("POST", "/v1/identities/{identity_id}/inbox/ack"): {"up_to": "1"},
        ("POST", "/v1/identities/{identity_id}/csr"): {"subject": "CN=intruder"},
        ("PUT", "/v1/identities/{identity_id}/credential"): {
            "x509_chain": [pem(Authority.root("intruder").cert)]
        },
        ("PUT", "/v1/tenants/{tenant_id}/credential-policy"): {"allowed_types": ["basic"]},
    }
    ids = {
        "tenant_id": tenant_a,
        "token_id": token_a_id,
        "identity_id": alice.identity_id,
        "gid": gid,
        "client_id": client_id,
    }
    b_own = b.create_identity("b-own")["identity_id"]
    w = World(server, a, b, tenant_a, tenant_b, token_a_id, alice, bob, carol, gid, b_own, ids, bodies, {})
    w.snapshot = _snapshot(w)
    return w


def _fill(route: Route, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], route.path)


def _call(client: Client, route: Route, path: str, bodies: dict[tuple[str, str], Any]) -> Response:
    body = bodies.get((route.method, route.path))
    if route.method == "POST" and body is None:
        raise AssertionError(f"no request body for {route.method} {route.path}: add one to the walk")
    return client.request(route.method, path, body)


def _not_found(r: Response, what: str) -> None:
    assert r.status == 404, f"{what}: {r.status} {r.body}"
    assert r.code == "not_found", f"{what}: {r.body}"
    assert r.headers["content-type"].startswith("application/problem+json"), what


def _comparable(r: Response) -> tuple[int, str | None, str | None]:
    return r.status, r.code, r.body.get("detail") if isinstance(r.body, dict) else None


PROTECTED = [r for r in ROUTES if r.auth != "none"]
WITH_IDS = [r for r in PROTECTED if "{" in r.path]


def _route_id(r: Route) -> str:
    return f"{r.method} {r.path}"


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    yield
    assert _snapshot(world) == world.snapshot, "tenant A's state changed"


@pytest.mark.parametrize("route", WITH_IDS, ids=_route_id)
def test_other_tenants_ids_are_not_found(world: World, route: Route, unchanged: None) -> None:
    """Tenant B's token with tenant A's ids: 404, the same answer as for ids that do not exist."""
    r = _call(world.b, route, _fill(route, world.ids), world.bodies)
    _not_found(r, f"B on A's ids: {route.method} {route.path}")
    unknown = {
        "tenant_id": "tnt_000000000000000000000000",
        "token_id": "tok_000000000000000000000000",
        "identity_id": "idn_000000000000000000000000",
        "gid": world.gid,
        "client_id": "cli_000000000000000000000000",
    }
    r2 = _call(world.b, route, _fill(route, unknown), world.bodies)
    assert _comparable(r2) == _comparable(r), "A's existing ids answer differently from unknown ids"
    if "{gid}" in route.path:
        # B's own identity with A's group id: still 404.
        r3 = _call(world.b, route, _fill(route, {**world.ids, "identity_id": world.b_own}), world.bodies)
        _not_found(r3, f"B's identity, A's group: {route.method} {route.path}")


@pytest.mark.parametrize("route", [r for r in PROTECTED if r.auth == "admin"], ids=_route_id)
def test_admin_routes_are_not_found_for_tenant_tokens(world: World, route: Route, unchanged: None) -> None:
    for client, who in ((world.a, "A"), (world.b, "B")):
        r = _call(client, route, _fill(route, world.ids), world.bodies)
        _not_found(r, f"{who}'s tenant token on {route.method} {route.path}")


@pytest.mark.parametrize("route", [r for r in PROTECTED if r.auth in ("tenant", "endpoint")], ids=_route_id)
def test_tenant_routes_are_not_found_for_the_admin_token(world: World, route: Route, unchanged: None) -> None:
    r = _call(world.server.admin, route, _fill(route, world.ids), world.bodies)
    _not_found(r, f"admin token on {route.method} {route.path}")


@pytest.mark.parametrize("route", PROTECTED, ids=_route_id)
def test_missing_or_unknown_token_is_401(world: World, route: Route, unchanged: None) -> None:
    path = _fill(route, world.ids)
    for client, why in (
        (world.server.client(), "no token"),
        (world.server.client("mlsgw_unknown"), "unknown"),
        (world.server.client(""), "empty"),
    ):
        r = _call(client, route, path, world.bodies)
        assert (r.status, r.code) == (401, "unauthorized"), f"{why}: {route.method} {route.path}: {r.body}"
    for header in (
        "Basic " + world.a.token if world.a.token else "",
        "Bearer",
        "bearer  ",
        world.a.token or "",
    ):
        r = world.server.client().request(
            route.method,
            path,
            world.bodies.get((route.method, route.path)),
            headers={"Authorization": header},
        )
        assert r.status == 401, f"Authorization {header[:12]!r}...: {route.method} {route.path}: {r.status}"


def test_lists_show_only_the_own_tenant(world: World, unchanged: None) -> None:
    """The routes without ids, with tenant B's token: B's own resources only, never A's."""
    created = world.b.post("/v1/identities", world.bodies[("POST", "/v1/identities")]).expect(201).body
    listed = world.b.get("/v1/identities").expect(200).body["identities"]
    ids = {i["identity_id"] for i in listed}
    assert created["identity_id"] in ids
    assert not ids & {world.alice.identity_id, world.bob.identity_id, world.carol.identity_id}
    made = world.b.post("/v1/clients", world.bodies[("POST", "/v1/clients")]).expect(201).body
    clients = {c["client_id"] for c in world.b.get("/v1/clients").expect(200).body["clients"]}
    assert made["client_id"] in clients and world.ids["client_id"] not in clients
    # Claiming another tenant's endpoints: they do not exist.
    claim = world.bodies[("POST", "/v1/key-packages/claim")]
    _not_found(world.b.post("/v1/key-packages/claim", claim), "B claims A's endpoints")
    # The routes without authentication serve everyone and leak nothing tenant-specific.
    for route in (r for r in ROUTES if r.auth == "none"):
        r = world.b.request(route.method, route.path)
        assert r.status == 200, route.path
        text = r.raw.decode()
        for secret in (world.alice.identity_id, world.tenant_a, world.token_a_id, world.a.token or "x"):
            assert secret not in text, f"{route.path} shows {secret}"


def test_every_route_is_walked() -> None:
    """A route added to ROUTES is covered by the walk above (or is public)."""
    covered = {(r.method, r.path) for r in WITH_IDS} | {
        (r.method, r.path) for r in ROUTES if r.auth == "none"
    }
    covered |= {("GET", "/v1/identities"), ("POST", "/v1/identities")}  # test_lists_show_only_the_own_tenant
    covered |= {("GET", "/v1/clients"), ("POST", "/v1/clients"), ("POST", "/v1/key-packages/claim")}
    covered |= {(r.method, r.path) for r in PROTECTED if r.auth == "admin"}
    assert covered == {(r.method, r.path) for r in ROUTES}


def test_revoked_token_is_refused_at_once(world: World, unchanged: None) -> None:
    admin = world.server.admin
    made = admin.post(f"/v1/tenants/{world.tenant_a}/tokens", {}).expect(201).body
    c = world.server.client(made["token"])
    assert c.get(world.alice.path(world.gid)).status == 200
    # Another tenant's id in the path cannot revoke it.
    r = admin.delete(f"/v1/tenants/{world.tenant_b}/tokens/{made['token_id']}")
    assert r.status == 404
    assert c.get(world.alice.path(world.gid)).status == 200
    assert admin.delete(f"/v1/tenants/{world.tenant_a}/tokens/{made['token_id']}").status == 204
    for route in PROTECTED:
        if route.auth not in ("tenant", "endpoint"):
            continue
        r = _call(c, route, _fill(route, world.ids), world.bodies)
        assert (r.status, r.code) == (401, "unauthorized"), f"revoked token: {route.method} {route.path}"
    # Revoking again: the token no longer exists as a live one, A's other tokens still work.
    assert world.a.get("/v1/identities").status == 200


def test_tenant_admin_routes_keep_to_their_tenant(world: World, unchanged: None) -> None:
    """Listing tenant B's tokens shows none of A's; deleting another tenant leaves A as it was."""
    admin = world.server.admin
    listed = admin.get(f"/v1/tenants/{world.tenant_b}/tokens").expect(200)["tokens"]
    assert listed and world.token_a_id not in {t["token_id"] for t in listed}
    mine = {t["token_id"] for t in admin.get(f"/v1/tenants/{world.tenant_a}/tokens").expect(200)["tokens"]}
    assert world.token_a_id in mine
    tenant_c, token_c = admin.create_tenant("doomed")
    doomed = world.server.client(token_c)
    doomed.create_identity("c-one")
    admin.delete(f"/v1/tenants/{tenant_c}").expect(204)
    assert doomed.get("/v1/identities").status == 401
    assert world.a.get("/v1/identities").status == 200
