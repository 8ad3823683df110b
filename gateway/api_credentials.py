"""The credential routes (issue 16): a tenant's credential policy, and X.509 certificates for hosted
identities whose signature keys stay in the HSM.

- ``PUT /v1/tenants/{tenant_id}/credential-policy`` (admin token, or the tenant's own token)
  ``{allowed_types, x509?}`` → 200, the policy as stored; ``GET`` → 200 the policy (404 when none);
  ``DELETE`` → 204 (404 when none). The body is checked strictly
  (:func:`gateway.credential_policy.parse_policy`): anything wrong is a 400 and nothing is stored.
  Enforcement: :mod:`gateway.credential_policy`.
- ``POST /v1/identities/{identity_id}/csr`` ``{subject: RFC 4514 string}`` → 200 ``{csr: PEM}``: a PKCS#10
  request for the identity's signature key, signed in the HSM (:mod:`hsm.csr`; the key use is audited).
- ``PUT /v1/identities/{identity_id}/credential`` ``{x509_chain: [PEM, end entity first]}`` → 200 the
  identity: the chain must certify the identity's signature key and meet the tenant's policy (which must
  allow ``x509``), else 422 ``credential_rejected``. New KeyPackages carry it; in a group, a commit with
  ``update: true`` (``force_path``) puts it into the member's leaf (its UpdatePath leaf node).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsm.csr import certification_request
from hsm.keystore import Pkcs11KeyStore
from mls import Credential

from .auth import Principal
from .credential_policy import CredentialPolicies, CredentialRejected, PolicyError, parse_policy
from .dispatch import Route, check_identity, principal, read_body, respond, runtime
from .errors import invalid, not_found
from .identities import Identities
from .persistence import Json, PendingWrites, Persistence, RequestScope, Response, group_audit_context
from .views import identity_json

POLICY_PATH = "/v1/tenants/{tenant_id}/credential-policy"
CSR_PATH = "/v1/identities/{identity_id}/csr"
CREDENTIAL_PATH = "/v1/identities/{identity_id}/credential"
MAX_SUBJECT_CHARS = 1024
MAX_CHAIN_ITEMS = 8
MAX_CERTIFICATE_PEM_CHARS = 65536


class CredentialOperations:
    """The operations behind the credential routes (run in the worker pool)."""

    def __init__(
        self,
        policies: CredentialPolicies,
        identities: Identities,
        keys: Pkcs11KeyStore,
        persistence: Persistence,
    ) -> None:
        self.policies = policies
        self.identities = identities
        self.keys = keys
        self.persistence = persistence

    # ---- the tenant's policy ------------------------------------------------------------------------
    def _check_tenant(self, p: Principal, tenant_id: str) -> None:
        """The admin, or the tenant itself; anything else (and an unknown tenant) is a 404."""
        if p.tenant_id is not None and p.tenant_id != tenant_id:
            raise not_found("tenant")
        with self.identities.store.read_transaction() as tx:
            if tx.get_tenant(tenant_id) is None:
                raise not_found("tenant")

    def put_policy(self, p: Principal, tenant_id: str, body: Any) -> Json:
        self._check_tenant(p, tenant_id)
        try:
            policy = parse_policy(body)
        except PolicyError as e:
            raise invalid(str(e)) from None
        self.policies.put(tenant_id, policy)
        return policy.document

    def show_policy(self, p: Principal, tenant_id: str) -> Json:
        self._check_tenant(p, tenant_id)
        policy = self.policies.get(tenant_id)
        if policy is None:
            raise not_found("credential policy")
        return policy.document

    def delete_policy(self, p: Principal, tenant_id: str) -> Response:
        self._check_tenant(p, tenant_id)
        if not self.policies.delete(tenant_id):
            raise not_found("credential policy")
        return Response(204, None)

    # ---- an identity's certificate ------------------------------------------------------------------
    def csr(self, p: Principal, identity_id: str, subject: x509.Name, scope: RequestScope) -> Json:
        """A PKCS#10 request for the identity's signature key, signed in the HSM."""
        identity = self.identities.get(p, identity_id)
        signer = self.keys.signer(identity.signature_key_ref)
        with group_audit_context(identity_id, b""):
            csr = certification_request(signer, signer.kind, identity.signature_public_key, subject)
        self.persistence.write_audit(scope.records)
        return {"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}

    def take_credential(
        self, p: Principal, identity_id: str, chain: list[bytes], scope: RequestScope
    ) -> Response:
        """The identity uses the X.509 credential of ``chain`` from now on, if its tenant's policy accepts it
        for the identity's signature key (RFC 9420 §5.3.1)."""
        identity = self.identities.get(p, identity_id)
        credential = Credential.x509(chain)
        if self.policies.get(identity.tenant_id) is None:
            raise CredentialRejected(
                "5.3.1/policy-x509-required",
                "the tenant has no credential policy: set one that allows x509 first",
                "type_not_allowed",
            )
        validator = self.policies.leaf_policy(identity.tenant_id).credential_validator
        validator.validate(credential, identity.signature_public_key)
        encoded = credential.to_bytes()
        pending = PendingWrites([lambda tx: tx.set_identity_credential(identity_id, encoded)])
        updated = identity_json(dataclasses.replace(identity, credential=encoded))
        return self.persistence.commit(pending, Response(200, updated), scope)


def _operations(request: web.Request) -> CredentialOperations:
    rt = runtime(request)
    svc = rt.service
    return CredentialOperations(svc.credential_policies, svc.identities, rt.keys, svc.persistence)


def _subject(value: Any) -> x509.Name:
    """An RFC 4514 distinguished name string, e.g. ``"CN=alice,O=Example"``."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SUBJECT_CHARS:
        raise invalid(f"subject must be an RFC 4514 name of 1 to {MAX_SUBJECT_CHARS} characters")
    try:
        name = x509.Name.from_rfc4514_string(value)
    except ValueError:
        raise invalid("subject is not an RFC 4514 distinguished name") from None
    if not len(name):
        raise invalid("subject must have at least one attribute")
    return name


def _chain(value: Any) -> list[bytes]:
    """``x509_chain``: 1 to 8 PEM certificates, end entity first, as DER."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_CHAIN_ITEMS:
        raise invalid(f"x509_chain must be a list of 1 to {MAX_CHAIN_ITEMS} PEM certificates")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_CERTIFICATE_PEM_CHARS:
            raise invalid(f"x509_chain[{i}] must be a PEM certificate")
        try:
            cert = x509.load_pem_x509_certificate(item.encode())
        except ValueError:
            raise invalid(f"x509_chain[{i}] is not a PEM certificate") from None
        out.append(cert.public_bytes(serialization.Encoding.DER))
    return out


async def put_policy(request: web.Request) -> web.Response:
    p, tid = principal(request), request.match_info["tenant_id"]
    body = await read_body(request)
    ops = _operations(request)
    return await respond(request, lambda scope: ops.put_policy(p, tid, body.data), lock=("policy", tid))


async def get_policy(request: web.Request) -> web.Response:
    p, tid, ops = principal(request), request.match_info["tenant_id"], _operations(request)
    return await respond(request, lambda scope: ops.show_policy(p, tid))


async def delete_policy(request: web.Request) -> web.Response:
    p, tid, ops = principal(request), request.match_info["tenant_id"], _operations(request)
    return await respond(request, lambda scope: ops.delete_policy(p, tid), lock=("policy", tid))


async def post_csr(request: web.Request) -> web.Response:
    p, iid = await check_identity(request)
    body = await read_body(request)
    subject = _subject(body.data.get("subject"))
    ops = _operations(request)
    return await respond(request, lambda scope: ops.csr(p, iid, subject, scope))


async def put_credential(request: web.Request) -> web.Response:
    p, iid = await check_identity(request)
    body = await read_body(request)
    chain = _chain(body.data.get("x509_chain"))
    ops = _operations(request)
    return await respond(
        request, lambda scope: ops.take_credential(p, iid, chain, scope), lock=("credential", iid)
    )


_PEM_LIST = {"type": "array", "items": {"type": "string", "description": "PEM"}}
#: OpenAPI request schemas and success statuses of these routes (merged into gateway.openapi's tables).
CREDENTIAL_REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", POLICY_PATH): {
        "type": "object",
        "required": ["allowed_types"],
        "properties": {
            "allowed_types": {"type": "array", "items": {"enum": ["basic", "x509"]}, "minItems": 1},
            "x509": {
                "type": "object",
                "required": ["trust_anchors"],
                "properties": {
                    "trust_anchors": _PEM_LIST,
                    "intermediates": _PEM_LIST,
                    "crls": _PEM_LIST,
                    "san_pattern": {"type": "string", "maxLength": 256},
                    "required_eku": {"type": "array", "items": {"type": "string", "description": "OID"}},
                },
            },
        },
    },
    ("POST", CSR_PATH): {
        "type": "object",
        "required": ["subject"],
        "properties": {
            "subject": {"type": "string", "description": "RFC 4514 name, e.g. CN=alice,O=Example"}
        },
    },
    ("PUT", CREDENTIAL_PATH): {
        "type": "object",
        "required": ["x509_chain"],
        "properties": {"x509_chain": {**_PEM_LIST, "minItems": 1, "maxItems": MAX_CHAIN_ITEMS}},
    },
}
CREDENTIAL_SUCCESS: dict[tuple[str, str], int] = {("DELETE", POLICY_PATH): 204}

CREDENTIAL_ROUTES: list[Route] = [
    Route("PUT", POLICY_PATH, put_policy, "tenant_or_admin", "Set the tenant's credential policy", True),
    Route("GET", POLICY_PATH, get_policy, "tenant_or_admin", "The tenant's credential policy"),
    Route(
        "DELETE", POLICY_PATH, delete_policy, "tenant_or_admin", "Remove the tenant's credential policy", True
    ),
    Route(
        "POST", CSR_PATH, post_csr, "tenant", "A PKCS#10 request signed in the HSM with the identity's key"
    ),
    Route("PUT", CREDENTIAL_PATH, put_credential, "tenant", "Use an X.509 credential for the identity", True),
]


__all__ = [
    "CREDENTIAL_REQUEST_BODIES",
    "CREDENTIAL_ROUTES",
    "CREDENTIAL_SUCCESS",
    "CredentialOperations",
]
