"""Clients (devices) and the KeyPackage directory over HTTP (api-delivery.md "Clients (devices)",
"KeyPackage directory"), against a real ``mls-gateway serve``.

Device KeyPackages are made here with the project's own ``mls`` library and software keys, as a device's
MLS stack would. Covered: the client lifecycle and its token; uploads verified (RFC 9420 §10.1) and stored
whole or not at all; the signature-key registry; claims that hand a KeyPackage out once (oldest first, the
last-resort one again and again), hosted identities' made on demand, and a ``409`` that claims nothing;
isolation between tenants and between clients; claims audited; a claimed KeyPackage's ref still routes to
its endpoint; deleting a client revokes its token.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.sqlite_store import SqliteStore
from mls import Credential, KeyPackage, MLSMessage, cipher_suite, key_package_ref
from mls.client import Client as MlsClient
from mls.crypto.key_store import SoftwareKeyStore
from mls.tree.leaf_node import Lifetime

from .gwclient import Client, GatewayServer, Response, b64, unb64


class Device:
    """A device's MLS stack: its own signature key, KeyPackages made with software keys."""

    def __init__(self, name: str, suite: int = 1) -> None:
        self.mls = MlsClient(SoftwareKeyStore(), suite, Credential.basic(name.encode()))

    def key_package(self, lifetime: Lifetime | None = None) -> bytes:
        return self.mls.key_package(lifetime=lifetime).message()

    def key_packages(self, n: int) -> list[str]:
        return [b64(self.key_package()) for _ in range(n)]


def _kp(message: bytes) -> KeyPackage:
    kp = MLSMessage.from_bytes(message).body
    assert isinstance(kp, KeyPackage)
    return kp


def _ref(message_b64: str) -> bytes:
    kp = _kp(unb64(message_b64))
    return key_package_ref(cipher_suite(kp.cipher_suite), kp)


@dataclasses.dataclass
class Tenant:
    api: Client
    tenant_id: str


@pytest.fixture(scope="module")
def server(shared_gateway: GatewayServer) -> GatewayServer:
    return shared_gateway


def _tenant(server: GatewayServer, name: str) -> Tenant:
    tenant_id, token = server.admin.create_tenant(name)
    return Tenant(server.client(token), tenant_id)


def _client(t: Tenant, name: str = "phone") -> tuple[str, Client]:
    r = t.api.post("/v1/clients", {"name": name}).expect(201)
    assert r["client_id"].startswith("cli_") and r["name"] == name
    return r["client_id"], t.api.with_token(r["token"])


def _upload(api: Client, cid: str, kps: list[str], last_resort: str | None = None) -> Response:
    body: dict[str, object] = {"key_packages": kps}
    if last_resort is not None:
        body["last_resort"] = last_resort
    return api.post(f"/v1/clients/{cid}/key-packages", body)


def _status(api: Client, cid: str) -> dict[str, object]:
    return dict(api.get(f"/v1/clients/{cid}/key-packages").expect(200).body)


def _claim(api: Client, *endpoints: str, **extra: object) -> Response:
    return api.post("/v1/key-packages/claim", {"endpoints": list(endpoints), **extra})


def _not_found(r: Response, what: str) -> None:
    assert (r.status, r.code) == (404, "not_found"), f"{what}: {r.status} {r.body}"


# ---- clients ------------------------------------------------------------------------------------------


def test_client_lifecycle_and_tokens(server: GatewayServer) -> None:
    t = _tenant(server, "lifecycle")
    cid, device = _client(t, "laptop")
    other_id, other = _client(t, "tablet")
    listed = t.api.get("/v1/clients").expect(200)["clients"]
    assert {"client_id": cid, "name": "laptop"} in listed and len(listed) == 2
    assert t.api.get(f"/v1/clients/{cid}").expect(200).body == {"client_id": cid, "name": "laptop"}
    assert device.get(f"/v1/clients/{cid}").expect(200)["client_id"] == cid
    _not_found(other.get(f"/v1/clients/{cid}"), "another client's token")
    _not_found(t.api.get("/v1/clients/cli_000000000000000000000000"), "unknown client")
    # A client token reaches only the endpoint routes: the tenant's routes do not exist for it.
    for method, path, body in (
        ("GET", "/v1/clients", None),
        ("POST", "/v1/clients", {"name": "x"}),
        ("DELETE", f"/v1/clients/{other_id}", None),
        ("GET", "/v1/identities", None),
        ("POST", "/v1/identities", {"name": "x"}),
    ):
        _not_found(device.request(method, path, body), f"client token on {method} {path}")
    assert len(t.api.get("/v1/clients").expect(200)["clients"]) == 2


def test_other_tenants_and_admin_see_no_client(server: GatewayServer) -> None:
    a, b = _tenant(server, "iso-a"), _tenant(server, "iso-b")
    cid, device = _client(a)
    _upload(device, cid, Device("iso").key_packages(1)).expect(201)
    _, b_device = _client(b)
    for api, who in ((b.api, "B's tenant token"), (b_device, "B's client token")):
        _not_found(api.get(f"/v1/clients/{cid}"), who)
        _not_found(api.get(f"/v1/clients/{cid}/key-packages"), who)
        _not_found(_upload(api, cid, Device("x").key_packages(1)), who)
        _not_found(_claim(api, cid), who)
    _not_found(b.api.delete(f"/v1/clients/{cid}"), "B deletes A's client")
    assert cid not in {c["client_id"] for c in b.api.get("/v1/clients").expect(200)["clients"]}
    _not_found(server.admin.get("/v1/clients"), "admin token")
    assert _status(a.api, cid) == {"available": 1, "last_resort": False}


def test_delete_client_revokes_its_token_and_frees_its_keys(server: GatewayServer) -> None:
    t = _tenant(server, "delete")
    cid, device = _client(t)
    phone = Device("phone")
    _upload(device, cid, [b64(phone.key_package())]).expect(201)
    assert t.api.delete(f"/v1/clients/{cid}").status == 204
    r = device.get(f"/v1/clients/{cid}")
    assert (r.status, r.code) == (401, "unauthorized")
    _not_found(t.api.get(f"/v1/clients/{cid}"), "deleted client")
    _not_found(_claim(t.api, cid), "claim for a deleted client")
    _not_found(t.api.delete(f"/v1/clients/{cid}"), "deleted twice")
    # Its signature key is no longer registered: another client may now register it.
    cid2, device2 = _client(t, "phone-again")
    _upload(device2, cid2, [b64(phone.key_package())]).expect(201)


# ---- uploads ------------------------------------------------------------------------------------------


def test_upload_and_status(server: GatewayServer) -> None:
    t = _tenant(server, "upload")
    cid, device = _client(t)
    phone = Device("phone")
    assert _status(device, cid) == {"available": 0, "last_resort": False}
    r = _upload(device, cid, phone.key_packages(3), b64(phone.key_package())).expect(201)
    assert r.body == {"stored": 4}
    assert _status(device, cid) == {"available": 3, "last_resort": True}
    assert _status(t.api, cid) == {"available": 3, "last_resort": True}
    _upload(t.api, cid, phone.key_packages(1)).expect(201)  # the tenant token uploads for any client
    assert _status(device, cid)["available"] == 4
    # A repeat with the same Idempotency-Key stores nothing twice.
    kps = phone.key_packages(1)
    first = device.post(f"/v1/clients/{cid}/key-packages", {"key_packages": kps}, idem="up-1").expect(201)
    again = device.post(f"/v1/clients/{cid}/key-packages", {"key_packages": kps}, idem="up-1").expect(201)
    assert first.body == again.body and _status(device, cid)["available"] == 5
    # The same KeyPackage uploaded again (without the key) is a conflict.
    assert _upload(device, cid, kps).status == 409
    r = _upload(device, cid, [])
    assert (r.status, r.code) == (400, "invalid_request")


def _bad_signature(d: Device) -> bytes:
    kp = _kp(d.key_package())
    sig = bytearray(kp.signature)
    sig[-1] ^= 1
    return MLSMessage.of(dataclasses.replace(kp, signature=bytes(sig))).to_bytes()


def _expired(d: Device) -> bytes:
    now = int(time.time())
    return d.key_package(lifetime=Lifetime(now - 10 * 86400, now - 86400))


def _too_long(d: Device) -> bytes:
    now = int(time.time())
    return d.key_package(lifetime=Lifetime(now - 60, now + 5 * 365 * 86400))


def _group_info(d: Device) -> bytes:
    return d.mls.create_group().group_info()


def _bad_suite(d: Device) -> bytes:
    kp = _kp(d.key_package())
    return MLSMessage.of(dataclasses.replace(kp, cipher_suite=0x7777)).to_bytes()


BAD = {
    "wrong-signature": (_bad_signature, 422, "10.1/key-package-signature"),
    "expired": (_expired, 422, "7.3/leaf-lifetime-current"),
    "lifetime-too-long": (_too_long, 422, "7.2/leaf-lifetime-maximum"),
    "group-info": (_group_info, 422, "6/key-package-wire-format"),
    "unknown-suite": (_bad_suite, 422, "10.1/directory-cipher-suite"),
    "random-bytes": (lambda d: os.urandom(200), 400, None),
    "truncated": (lambda d: d.key_package()[:-3], 400, None),
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("as_last_resort", [False, True], ids=["listed", "last-resort"])
def test_a_bad_key_package_stores_nothing(server: GatewayServer, kind: str, as_last_resort: bool) -> None:
    t = _tenant(server, f"bad-{kind}")
    cid, device = _client(t)
    d = Device("phone")
    make, status, rule = BAD[kind]
    good, bad = b64(d.key_package()), b64(make(d))
    r = _upload(device, cid, [good], bad) if as_last_resort else _upload(device, cid, [good, bad])
    assert r.status == status, r.body
    if status == 422:
        assert (r.code, r.body.get("rule")) == ("validation_failed", rule), r.body
    else:
        assert r.code == "decode_error", r.body
    assert _status(device, cid) == {"available": 0, "last_resort": False}
    # Nothing was registered either: the good KeyPackage's key is free for another client.
    cid2, device2 = _client(t, "other")
    _upload(device2, cid2, [good]).expect(201)


def test_signature_keys_belong_to_one_endpoint(server: GatewayServer) -> None:
    t = _tenant(server, "keys")
    a_id, a = _client(t, "a")
    b_id, b = _client(t, "b")
    phone = Device("phone")
    _upload(a, a_id, phone.key_packages(1)).expect(201)
    r = _upload(b, b_id, [*Device("mine").key_packages(1), *phone.key_packages(1)])
    assert (r.status, r.code) == (409, "conflict"), r.body
    assert _status(b, b_id)["available"] == 0
    # A hosted identity's KeyPackage is signed by its key, registered to the identity.
    iid = t.api.create_identity("bot")["identity_id"]
    hosted = t.api.key_packages(iid)[0]
    assert _upload(b, b_id, [hosted]).status == 409
    # Another tenant's registry is its own.
    other = _tenant(server, "keys-other")
    o_id, o = _client(other)
    _upload(o, o_id, phone.key_packages(1)).expect(201)


# ---- claims -------------------------------------------------------------------------------------------


def test_claims_hand_out_each_once_oldest_first_then_the_last_resort(server: GatewayServer) -> None:
    t = _tenant(server, "claims")
    cid, device = _client(t)
    _, claimer = _client(t, "claimer")
    phone = Device("phone")
    first, second = phone.key_packages(2)
    _upload(device, cid, [first]).expect(201)
    _upload(device, cid, [second]).expect(201)
    last_resort = b64(phone.key_package())
    _upload(device, cid, [], last_resort).expect(201)
    got = [_claim(claimer, cid).expect(200)["key_packages"][cid] for _ in range(4)]
    assert got == [first, second, last_resort, last_resort]
    assert _status(device, cid) == {"available": 0, "last_resort": True}
    # A new last resort replaces the previous one.
    newer = b64(phone.key_package())
    _upload(device, cid, [], newer).expect(201)
    assert _claim(t.api, cid).expect(200)["key_packages"][cid] == newer
    # Every claimed KeyPackage still routes to its client (a Welcome naming it, later).
    store = SqliteStore(server.data_dir / "gateway.sqlite3")
    try:
        with store.read_transaction() as tx:
            for kp in (first, second, last_resort, newer):
                assert tx.endpoint_for_key_package_ref(t.tenant_id, _ref(kp)) == cid
            assert tx.endpoint_for_key_package_ref("tnt_other", _ref(first)) is None
    finally:
        store.close()


def test_concurrent_claims_never_hand_out_one_twice(server: GatewayServer) -> None:
    t = _tenant(server, "concurrent")
    cid, device = _client(t)
    uploaded = Device("phone").key_packages(8)
    _upload(device, cid, uploaded).expect(201)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: _claim(t.api, cid), range(10)))
    got = [r["key_packages"][cid] for r in replies if r.status == 200]
    assert sorted(got) == sorted(uploaded)
    assert [r.status for r in replies].count(409) == 2


def test_claim_conflict_claims_nothing(server: GatewayServer) -> None:
    t = _tenant(server, "conflict")
    full_id, full = _client(t, "full")
    empty_id, _empty = _client(t, "empty")
    iid = t.api.create_identity("bot")["identity_id"]
    kp = Device("full").key_packages(1)
    _upload(full, full_id, kp).expect(201)
    hosted_before = t.api.get(f"/v1/identities/{iid}/key-packages").expect(200).body
    r = _claim(t.api, iid, full_id, empty_id)
    assert (r.status, r.code) == (409, "conflict"), r.body
    assert _status(t.api, full_id)["available"] == 1
    assert t.api.get(f"/v1/identities/{iid}/key-packages").expect(200).body == hosted_before
    # A cipher suite none of the client's KeyPackages has: 409 as well.
    r = _claim(t.api, full_id, cipher_suite=3)
    assert (r.status, r.code) == (409, "conflict"), r.body
    assert _status(t.api, full_id)["available"] == 1
    _not_found(_claim(t.api, full_id, "cli_000000000000000000000000"), "an unknown endpoint")
    _not_found(_claim(t.api, full_id, "someone"), "not an endpoint id")
    assert _status(t.api, full_id)["available"] == 1
    assert _claim(full, full_id, cipher_suite=1).expect(200)["key_packages"] == {full_id: kp[0]}


def test_claim_makes_hosted_key_packages_on_demand(server: GatewayServer) -> None:
    t = _tenant(server, "hosted")
    cid, device = _client(t)
    _upload(device, cid, Device("phone").key_packages(1)).expect(201)
    iid = t.api.create_identity("bot")["identity_id"]
    got = _claim(device, iid, cid).expect(200)["key_packages"]
    assert list(got) == [iid, cid]
    listed = t.api.get(f"/v1/identities/{iid}/key-packages").expect(200)["key_packages"]
    assert [unb64(k["ref"]) for k in listed] == [_ref(got[iid])]
    again = _claim(device, iid).expect(200)["key_packages"][iid]
    assert again != got[iid]
    r = _claim(device, iid, cipher_suite=3)
    assert (r.status, r.code) == (409, "conflict")
    other = _tenant(server, "hosted-other")
    _not_found(_claim(other.api, iid), "another tenant's identity")
    store = SqliteStore(server.data_dir / "gateway.sqlite3")
    try:
        with store.read_transaction() as tx:
            assert tx.endpoint_for_key_package_ref(t.tenant_id, _ref(got[iid])) == iid
            assert tx.endpoint_for_key_package_ref(other.tenant_id, _ref(got[iid])) is None
    finally:
        store.close()


def test_claims_are_audited(server: GatewayServer) -> None:
    t = _tenant(server, "audit")
    cid, device = _client(t)
    claimer_id, claimer = _client(t, "claimer")
    _upload(device, cid, Device("phone").key_packages(1)).expect(201)
    iid = t.api.create_identity("bot")["identity_id"]
    got = _claim(claimer, cid, iid).expect(200)["key_packages"]
    assert _claim(claimer, cid).status == 409  # refused: not audited as a claim
    conn = sqlite3.connect(Path(server.data_dir) / "gateway.sqlite3")
    try:
        rows = conn.execute(
            "SELECT identity_id, key_ref, custody, ok FROM audit WHERE tenant_id = ? AND operation = ?",
            (t.tenant_id, "claim_key_package"),
        ).fetchall()
    finally:
        conn.close()
    assert sorted(rows) == sorted(
        [(claimer_id, _ref(got[cid]), "client", 1), (claimer_id, _ref(got[iid]), "pkcs11", 1)]
    )
