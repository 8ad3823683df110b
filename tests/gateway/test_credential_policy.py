"""Credential policies and X.509 credentials of hosted identities (issue 16), end to end against the real
``mls-gateway serve`` with SoftHSM: a tenant's policy (an Ed25519 root CA with an intermediate, a CRL, a
subjectAltName pattern, a required EKU), an identity certified through a CSR signed in the HSM, a ts-mls
member carrying an X.509 credential from the same CA, and members with a self-signed, expired, revoked or
wrongly named certificate refused wherever they would enter a hosted member's view of a group — at add
(KeyPackage), at join (a Welcome whose tree holds one) and at process (a commit that adds one, or whose
UpdatePath leaf carries one) — with ``422 credential_rejected`` and no change of state.

The members outside the gateway with certificates are this project's own library (``mls.client.Client``)
and, for the member that joins the hosted identity's group, ts-mls (tests/interop/peer.mjs ``set_x509``:
ts-mls carries X.509 credentials as opaque certificate chains).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mls import Credential, ExternalSender, ExternalSenders, KeyPackage, MLSMessage
from mls.client import Client as MlsClient
from mls.crypto.key_store import SoftwareKeyStore
from mls.group.commit_options import CommitOptions
from tests.interop.ts_mls_peer import TsMlsPeer

from .cert_authority import CLIENT_AUTH, Authority, crl_pem, der, mls_public_key, pem, self_signed
from .gwclient import Client, GatewayServer, Hosted, b64, gid_path, unb64

SAN_PATTERN = r"mls:[a-z0-9]+@example\.com"
BAD_KINDS = ("self_signed", "expired", "revoked", "wrong_san")
EXPECTED_REASON = {
    "self_signed": "untrusted_chain",
    "expired": "expired",
    "revoked": "revoked",
    "wrong_san": "san_mismatch",
}


@dataclass
class Pki:
    root: Authority
    inter: Authority
    #: Library members whose certificate the policy refuses, by kind (the revoked one is on the CRL).
    bad: dict[str, MlsClient]

    def certify(self, signature_key: bytes, user: str, **kw: Any) -> list[x509.Certificate]:
        """A chain for an MLS signature key from the intermediate: end entity, intermediate."""
        cert = self.inter.issue(mls_public_key(signature_key), user, san=(f"mls:{user}@example.com",), **kw)
        return [cert, self.inter.cert]

    def member(self, user: str) -> MlsClient:
        """A library member (suite 1) with a valid certificate of this PKI."""
        return library_member(lambda key: self.certify(key, user))

    def policy(self, **extra: Any) -> dict[str, Any]:
        revoked = self.bad["revoked"].credential.certificates
        assert revoked is not None
        crl = self.inter.crl([x509.load_der_x509_certificate(revoked[0].cert_data)])
        return {
            "allowed_types": ["x509"],
            "x509": {
                "trust_anchors": [pem(self.root.cert)],
                "intermediates": [pem(self.inter.cert)],
                "crls": [crl_pem(crl)],
                "san_pattern": SAN_PATTERN,
                "required_eku": [CLIENT_AUTH],
                **extra,
            },
        }


def library_member(chain_for: Callable[[bytes], list[x509.Certificate]]) -> MlsClient:
    """A member made with this project's library: a software Ed25519 key and an X.509 credential."""
    store = SoftwareKeyStore()
    signer = store.new_signature_key(1)
    credential = Credential.x509([der(c) for c in chain_for(signer.public_key)])
    return MlsClient(store, 1, credential, signer=signer)


def make_pki() -> Pki:
    root = Authority.root()
    inter = root.intermediate()
    rogue = Authority.root("Rogue CA")

    def chain(key: bytes, user: str, **kw: Any) -> list[x509.Certificate]:
        cert = inter.issue(mls_public_key(key), user, san=(f"mls:{user}@example.com",), **kw)
        return [cert, inter.cert]

    bad = {
        "self_signed": library_member(lambda k: [self_signed(mls_public_key(k), rogue.key, "selfie")]),
        "expired": library_member(lambda k: chain(k, "old", valid_days=(-30, -1))),
        "revoked": library_member(lambda k: chain(k, "gone")),
        "wrong_san": library_member(
            lambda k: [inter.issue(mls_public_key(k), "mallory", san=("mls:mallory@evil.org",)), inter.cert]
        ),
    }
    return Pki(root, inter, bad)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def kp_b64(member: MlsClient) -> str:
    return b64(member.key_package().message())


def tenant_with_policy(server: GatewayServer, pki: Pki, name: str, **extra: Any) -> tuple[str, Client]:
    tenant_id, token = server.admin.create_tenant(name)
    api = server.client(token)
    put = api.request("PUT", f"/v1/tenants/{tenant_id}/credential-policy", pki.policy(**extra))
    put.expect(200)
    return tenant_id, api


def certified(api: Client, pki: Pki, user: str, *, omit_intermediate: bool = True) -> Hosted:
    """A hosted identity (basic credential first) that gets a CSR signed in the HSM, has the CA certify it
    and takes the chain as its credential."""
    h = Hosted.create(api, user)
    identity = api.get(f"/v1/identities/{h.identity_id}").expect(200).body
    csr_pem = api.post(f"/v1/identities/{h.identity_id}/csr", {"subject": f"CN={user},O=Example"}).expect(200)
    csr = x509.load_pem_x509_csr(csr_pem["csr"].encode())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == f"CN={user},O=Example"
    key = unb64(identity["signature_public_key"])
    assert csr.public_key() == mls_public_key(key)
    cert = pki.inter.issue(csr.public_key(), user, san=(f"mls:{user}@example.com",))  # type: ignore[arg-type]
    chain = [pem(cert)] if omit_intermediate else [pem(cert), pem(pki.inter.cert)]
    taken = api.request("PUT", f"/v1/identities/{h.identity_id}/credential", {"x509_chain": chain}).expect(
        200
    )
    assert taken["credential"]["type"] == "x509"
    assert [unb64(c) for c in taken["credential"]["certificates"]] == [
        der(x509.load_pem_x509_certificate(c.encode())) for c in chain
    ]
    return h


def key_package_credential(kp_b64_value: str) -> Credential:
    kp = MLSMessage.from_bytes(unb64(kp_b64_value)).body
    assert isinstance(kp, KeyPackage)
    return kp.leaf_node.credential


def assert_rejected(resp: Any, reason: str) -> None:
    assert resp.status == 422, resp.body
    assert resp.body["code"] == "credential_rejected", resp.body
    assert resp.body["reason"] == reason, resp.body


# ---- the happy path: CSR → chain → KeyPackages → a ts-mls member -------------------------------------
def test_csr_chain_key_packages_and_ts_mls_member(
    shared_gateway: GatewayServer, pki: Pki, ts_mls_peer: TsMlsPeer
) -> None:
    _, api = tenant_with_policy(shared_gateway, pki, "certified")
    alice = certified(api, pki, "alice")
    kp = alice.key_package()
    credential = key_package_credential(kp)
    assert credential.credential_type == 2 and credential.certificates is not None
    leaf_cert = x509.load_der_x509_certificate(credential.certificates[0].cert_data)
    assert leaf_cert.issuer == pki.inter.cert.subject
    identity = api.get(f"/v1/identities/{alice.identity_id}").expect(200).body
    assert leaf_cert.public_key() == mls_public_key(unb64(identity["signature_public_key"]))

    # A ts-mls member certified by the same CA (the chain with the intermediate) joins alice's group.
    peer, tess = ts_mls_peer, "tess-x509"
    key = peer.new_client(tess, b"tess", 1)
    peer.set_x509(tess, [der(c) for c in pki.certify(key, "tess")])
    gid = alice.create_group()
    commit = alice.commit(gid, {"add": [b64(peer.key_package(tess))]})
    tree = api.get(alice.path(gid, "/group-info")).expect(200)["ratchet_tree"]
    assert peer.join(tess, unb64(commit["welcome"]), unb64(tree)).epoch == 1
    members = alice.group(gid)["members"]
    assert [m["credential"]["type"] for m in members] == ["x509", "x509"]
    assert peer.process(tess, unb64(alice.send(gid, b"hi tess"))).data == b"hi tess"
    assert alice.process(gid, peer.send(tess, b"hi alice"))["data"] == b64(b"hi alice")

    # The credential is refused for a key that is not the identity's, and without a policy that allows x509.
    other = Hosted.create(api, "other")
    wrong = api.request(
        "PUT", f"/v1/identities/{other.identity_id}/credential", {"x509_chain": [pem(leaf_cert)]}
    )
    assert_rejected(wrong, "key_mismatch")
    assert api.get(f"/v1/identities/{other.identity_id}").expect(200)["credential"]["type"] == "basic"


# ---- refusals -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_refused_at_add(shared_gateway: GatewayServer, pki: Pki, kind: str) -> None:
    _, api = tenant_with_policy(shared_gateway, pki, f"add-{kind}")
    alice = certified(api, pki, "alice", omit_intermediate=False)
    gid = alice.create_group()
    bad = kp_b64(pki.bad[kind])
    assert_rejected(alice.post(gid, "/commits", {"add": [bad]}), EXPECTED_REASON[kind])
    assert_rejected(alice.post(gid, "/proposals", {"type": "add", "key_package": bad}), EXPECTED_REASON[kind])
    assert alice.group(gid)["epoch"] == 0
    # A valid member is still added afterwards.
    good = pki.member("bob")
    assert alice.commit(gid, {"add": [kp_b64(good)]})["epoch"] == 1


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_refused_at_join(shared_gateway: GatewayServer, pki: Pki, kind: str) -> None:
    _, api = tenant_with_policy(shared_gateway, pki, f"join-{kind}")
    alice = certified(api, pki, "alice")
    outsider = pki.member("gina")
    group = outsider.create_group()
    kp = alice.key_package()
    kp_obj = MLSMessage.from_bytes(unb64(kp)).body
    assert isinstance(kp_obj, KeyPackage)
    staged = group.commit(CommitOptions(add=[kp_obj, pki.bad[kind].key_package().key_package]))
    assert staged.welcome is not None
    refused = api.post(f"/v1/identities/{alice.identity_id}/groups/join", {"welcome": b64(staged.welcome)})
    assert_rejected(refused, EXPECTED_REASON[kind])
    assert api.get(f"/v1/identities/{alice.identity_id}/groups").expect(200)["groups"] == []
    listed = api.get(f"/v1/identities/{alice.identity_id}/key-packages").expect(200)["key_packages"]
    assert [k["consumed"] for k in listed] == [False]
    # The same KeyPackage joins a group without the bad member.
    clean = pki.member("hank").create_group()
    welcome = clean.commit(CommitOptions(add=[kp_obj])).welcome
    assert welcome is not None
    joined = api.post(f"/v1/identities/{alice.identity_id}/groups/join", {"welcome": b64(welcome)})
    assert joined.expect(201)["epoch"] == 1


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_refused_at_process(shared_gateway: GatewayServer, pki: Pki, kind: str) -> None:
    _, api = tenant_with_policy(shared_gateway, pki, f"process-{kind}")
    alice = certified(api, pki, "alice")
    outsider = pki.member("gina")
    group = outsider.create_group()
    kp_obj = MLSMessage.from_bytes(unb64(alice.key_package())).body
    assert isinstance(kp_obj, KeyPackage)
    staged = group.commit(CommitOptions(add=[kp_obj]))
    group.merge(staged)
    assert staged.welcome is not None
    gid = gid_path(alice.join(b64(staged.welcome))["group_id"])
    before = alice.state(gid)

    adding = group.commit(CommitOptions(add=[pki.bad[kind].key_package().key_package]))
    refused = alice.post(gid, "/process", {"message": b64(adding.commit or b"")})
    assert_rejected(refused, EXPECTED_REASON[kind])
    assert alice.state(gid) == before
    group.discard_pending_commit()

    # A valid commit from the same member is processed afterwards.
    valid = group.commit(CommitOptions(add=[pki.member("ivan").key_package().key_package]))
    assert alice.process(gid, valid.commit or b"")["epoch"] == 2
    group.merge(valid)
    assert alice.export(gid) == group.export("e2e", b"", 32)


def test_refused_update_path_leaf(shared_gateway: GatewayServer, pki: Pki) -> None:
    """A commit whose UpdatePath leaf node carries an expired certificate (for the committer's own key)."""
    _, api = tenant_with_policy(shared_gateway, pki, "update-path")
    alice = certified(api, pki, "alice")
    gina = pki.member("gina")
    group = gina.create_group()
    kp_obj = MLSMessage.from_bytes(unb64(alice.key_package())).body
    assert isinstance(kp_obj, KeyPackage)
    staged = group.commit(CommitOptions(add=[kp_obj]))
    group.merge(staged)
    assert staged.welcome is not None
    gid = gid_path(alice.join(b64(staged.welcome))["group_id"])
    expired = Credential.x509(
        [der(c) for c in pki.certify(gina.signer.public_key, "gina", valid_days=(-9, -1))]
    )
    bad = group.commit(CommitOptions(credential=expired))
    assert_rejected(alice.post(gid, "/process", {"message": b64(bad.commit or b"")}), "expired")
    assert alice.group(gid)["epoch"] == 1
    group.discard_pending_commit()
    renewed = Credential.x509([der(c) for c in pki.certify(gina.signer.public_key, "gina")])
    good = group.commit(CommitOptions(credential=renewed))
    assert alice.process(gid, good.commit or b"")["epoch"] == 2
    leaves = {m["leaf_index"]: m for m in alice.group(gid)["members"]}
    assert [unb64(c) for c in leaves[0]["credential"]["certificates"]] == [
        c.cert_data for c in renewed.certificates or ()
    ]


# ---- an identity updates its leaf to the new credential ------------------------------------------------
def test_update_commit_carries_the_new_credential(shared_gateway: GatewayServer, pki: Pki) -> None:
    policy = pki.policy()
    policy["allowed_types"] = ["basic", "x509"]
    tenant_id, token = shared_gateway.admin.create_tenant("mixed")
    api = shared_gateway.client(token)
    api.request("PUT", f"/v1/tenants/{tenant_id}/credential-policy", policy).expect(200)
    alice = Hosted.create(api, "alice")
    gid = alice.create_group()
    gina = pki.member("gina")
    commit = alice.commit(gid, {"add": [kp_b64(gina)]})
    group = gina.join(unb64(commit["welcome"]))
    assert group.state.tree.leaf(0).credential == Credential.basic(b"alice")  # type: ignore[union-attr]

    alice_x509 = certified(api, pki, "alice2")  # a second identity, certified, shows the CSR path works
    assert alice_x509.identity_id != alice.identity_id
    csr = api.post(f"/v1/identities/{alice.identity_id}/csr", {"subject": "CN=alice"}).expect(200)["csr"]
    cert = pki.inter.issue(
        x509.load_pem_x509_csr(csr.encode()).public_key(),  # type: ignore[arg-type]
        "alice",
        san=("mls:alice@example.com",),
    )
    api.request("PUT", f"/v1/identities/{alice.identity_id}/credential", {"x509_chain": [pem(cert)]}).expect(
        200
    )
    assert alice.group(gid)["members"][0]["credential"]["type"] == "basic"  # until it commits a path
    update = alice.commit(gid, {"update": True})
    processed = group.process(unb64(update["commit"]))
    group.merge(processed)  # type: ignore[arg-type]
    leaf = group.state.tree.leaf(0)
    assert leaf is not None and leaf.credential.certificates is not None
    assert leaf.credential.certificates[0].cert_data == der(cert)
    ours = alice.group(gid)["members"][0]["credential"]
    assert ours["type"] == "x509" and unb64(ours["certificates"][0]) == der(cert)
    assert alice.export(gid) == group.export("e2e", b"", 32)


# ---- no policy, and the policy routes ---------------------------------------------------------------
def test_tenant_without_policy_behaves_as_today(shared_gateway: GatewayServer, pki: Pki) -> None:
    tenant_id, token = shared_gateway.admin.create_tenant("no-policy")
    api = shared_gateway.client(token)
    api.get(f"/v1/tenants/{tenant_id}/credential-policy").expect(404)
    alice = Hosted.create(api, "alice")
    gid = alice.create_group()
    assert alice.commit(gid, {"add": [kp_b64(pki.bad["self_signed"])]})["epoch"] == 1
    cert = pki.inter.issue(
        mls_public_key(unb64(api.get(f"/v1/identities/{alice.identity_id}").body["signature_public_key"])),
        "alice",
    )
    refused = api.request(
        "PUT", f"/v1/identities/{alice.identity_id}/credential", {"x509_chain": [pem(cert)]}
    )
    assert_rejected(refused, "type_not_allowed")


def test_policy_routes(shared_gateway: GatewayServer, pki: Pki) -> None:
    tenant_id, token = shared_gateway.admin.create_tenant("routes")
    other_id, other_token = shared_gateway.admin.create_tenant("routes-other")
    api, admin, other = shared_gateway.client(token), shared_gateway.admin, shared_gateway.client(other_token)
    path = f"/v1/tenants/{tenant_id}/credential-policy"
    policy = pki.policy()
    x = policy["x509"]
    bad_bodies = [
        {},
        {"allowed_types": []},
        {"allowed_types": ["x509"]},
        {"allowed_types": ["basic"], "x509": x},
        {"allowed_types": ["x509", "x509"], "x509": x},
        {"allowed_types": ["x509"], "x509": {**x, "trust_anchors": ["not a pem"]}},
        {"allowed_types": ["x509"], "x509": {**x, "trust_anchors": []}},
        {
            "allowed_types": ["x509"],
            "x509": {**x, "crls": ["-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"]},
        },
        {"allowed_types": ["x509"], "x509": {**x, "crls": [crl_pem(Authority.root("Other").crl([]))]}},
        {"allowed_types": ["x509"], "x509": {**x, "san_pattern": "("}},
        {"allowed_types": ["x509"], "x509": {**x, "san_pattern": "a" * 257}},
        {"allowed_types": ["x509"], "x509": {**x, "required_eku": ["1.2.x"]}},
        {"allowed_types": ["x509"], "x509": {**x, "required_eku": ["3.1"]}},
        {"allowed_types": ["x509"], "x509": {**x, "unknown": 1}},
        {"allowed_types": ["x509"], "x509": x, "extra": True},
    ]
    for body in bad_bodies:
        r = api.request("PUT", path, body)
        assert r.status == 400 and r.body["code"] == "invalid_request", (body, r.body)
    api.get(path).expect(404)

    assert admin.request("PUT", path, policy).expect(200).body == {**policy, "x509": {**x}}
    assert api.get(path).expect(200).body["allowed_types"] == ["x509"]
    other.get(path).expect(404)
    other.request("PUT", path, policy).expect(404)
    other.request("DELETE", path).expect(404)
    assert admin.get(f"/v1/tenants/{other_id}/credential-policy").status == 404
    basic_only = {"allowed_types": ["basic"]}
    assert api.request("PUT", path, basic_only).expect(200).body == basic_only
    # basic only: an x509 KeyPackage is refused as a type not allowed.
    alice = Hosted.create(api, "alice")
    gid = alice.create_group()
    assert_rejected(alice.post(gid, "/commits", {"add": [kp_b64(pki.member("bob"))]}), "type_not_allowed")
    api.delete(path).expect(204)
    api.delete(path).expect(404)
    assert alice.commit(gid, {"add": [kp_b64(pki.member("bob"))]})["epoch"] == 1


def test_external_senders_are_checked(shared_gateway: GatewayServer, pki: Pki) -> None:
    """External senders enter a member's view at group creation and with a Welcome's group context."""
    _, api = tenant_with_policy(shared_gateway, pki, "external-senders")
    alice = certified(api, pki, "alice")
    basic_sender = {
        "signature_key": b64(b"\x01" * 32),
        "credential": {"type": "basic", "identity": b64(b"ds")},
    }
    refused = api.post(alice.path(), {"external_senders": [basic_sender]})
    assert_rejected(refused, "type_not_allowed")
    assert api.get(alice.path()).expect(200)["groups"] == []

    kp_obj = MLSMessage.from_bytes(unb64(alice.key_package())).body
    assert isinstance(kp_obj, KeyPackage)
    for kind, sender in (("revoked", pki.bad["revoked"]), (None, pki.member("ds"))):
        ext = ExternalSenders((ExternalSender(sender.signer.public_key, sender.credential),)).to_extension()
        group = pki.member("gina").create_group(extensions=[ext])
        welcome = group.commit(CommitOptions(add=[kp_obj])).welcome
        assert welcome is not None
        answer = api.post(f"/v1/identities/{alice.identity_id}/groups/join", {"welcome": b64(welcome)})
        if kind is None:
            assert answer.expect(201)["epoch"] == 1
        else:
            assert_rejected(answer, EXPECTED_REASON[kind])


def _sign_audits(server: GatewayServer, identity_id: str) -> list[tuple[str, int]]:
    conn = sqlite3.connect(Path(server.data_dir) / "gateway.sqlite3")
    try:
        rows = conn.execute(
            "SELECT custody, ok FROM audit WHERE identity_id = ? AND operation = 'sign'", (identity_id,)
        ).fetchall()
    finally:
        conn.close()
    return [(str(c), int(ok)) for c, ok in rows]


@pytest.mark.parametrize("suite", [1, 2, 5, 7])
def test_csr_is_signed_in_the_hsm_and_audited(shared_gateway: GatewayServer, suite: int) -> None:
    """Ed25519 and ECDSA P-256/P-521/P-384 identities: the request verifies under the identity's key and
    the signature is one audited use of the token key."""
    _, token = shared_gateway.admin.create_tenant(f"csr-{suite}")
    api = shared_gateway.client(token)
    identity = api.create_identity(f"bot{suite}", cipher_suite=suite)
    before = _sign_audits(shared_gateway, identity["identity_id"])
    answer = api.post(f"/v1/identities/{identity['identity_id']}/csr", {"subject": "CN=bot,O=Example,C=DE"})
    csr = x509.load_pem_x509_csr(answer.expect(200)["csr"].encode())
    assert csr.is_signature_valid
    assert csr.public_key() == mls_public_key(unb64(identity["signature_public_key"]))
    assert _sign_audits(shared_gateway, identity["identity_id"]) == [
        *before,
        (identity["custody"]["signature"], 1),
    ]
    for bad in ("", "not a name", "CN=" + "x" * 1100, 7):
        refused = api.post(f"/v1/identities/{identity['identity_id']}/csr", {"subject": bad})
        assert (refused.status, refused.code) == (400, "invalid_request"), bad
    assert _sign_audits(shared_gateway, identity["identity_id"]) == [
        *before,
        (identity["custody"]["signature"], 1),
    ]


def test_an_identity_the_policy_refuses_makes_no_key_package_and_no_group(
    shared_gateway: GatewayServer, pki: Pki
) -> None:
    """A basic identity in an x509-only tenant: its own leaf would be refused by every member, so it makes
    no KeyPackage and creates, joins and externally joins nothing (422, nothing stored, no key made)."""
    _, api = tenant_with_policy(shared_gateway, pki, "own-leaf")
    identity = api.post("/v1/identities", {"name": "plain"}).expect(201)["identity_id"]
    base = f"/v1/identities/{identity}"
    for path, body in (
        (f"{base}/key-packages", {"count": 2}),
        (f"{base}/groups", {}),
    ):
        refused = api.post(path, body).expect(422)
        assert refused["code"] == "credential_rejected" and refused["reason"] == "type_not_allowed"
    assert api.get(f"{base}/key-packages").expect(200)["key_packages"] == []
    assert api.get(f"{base}/groups").expect(200)["groups"] == []


def test_device_key_packages_are_checked_against_the_policy_at_upload(
    shared_gateway: GatewayServer, pki: Pki
) -> None:
    """A device of a tenant with a policy uploads KeyPackages: one whose certificate the policy refuses (or a
    basic one) is refused with its reason and nothing of the request is stored; a certified one is kept."""
    _, api = tenant_with_policy(shared_gateway, pki, "devices")
    device = api.post("/v1/clients", {"name": "phone"}).expect(201)
    dev = shared_gateway.client(device["token"])
    path = f"/v1/clients/{device['client_id']}/key-packages"
    plain = MlsClient(SoftwareKeyStore(), 1, Credential.basic(b"plain"))
    good = kp_b64(pki.member("phone"))
    for member, reason in [(pki.bad[k], EXPECTED_REASON[k]) for k in BAD_KINDS] + [
        (plain, "type_not_allowed")
    ]:
        refused = dev.post(path, {"key_packages": [good, kp_b64(member)]}).expect(422)
        assert refused["code"] == "credential_rejected" and refused["reason"] == reason
    assert dev.get(path).expect(200)["available"] == 0
    assert dev.post(path, {"key_packages": [good]}).expect(201)["stored"] == 1
