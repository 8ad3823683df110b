"""The KeyPackage directory (api-delivery.md "KeyPackage directory"): clients upload KeyPackages, any
endpoint of the tenant claims them for the endpoints it adds to a group.

**Upload.** Every KeyPackage is verified as RFC 9420 §10.1 says a group verifies one an Add proposal
carries (the library's own ``validate_key_package``): version and cipher suite, the leaf node (§7.3: its
signature, source ``key_package``, lifetime current and not longer than :data:`MAX_LIFETIME_S`, basic
credential with a non-empty identity, capabilities), the KeyPackage signature and an init key distinct from
the leaf's encryption key. Its leaf signature key is registered to the client (a key another endpoint
registered is a ``409``). A request is stored whole or not at all.

**Claim.** Each claim hands a client's KeyPackage out once, oldest first; the last-resort one only when no
other is left, and then again and again. A hosted identity's KeyPackage is made on demand (the code path of
``POST /v1/identities/{id}/key-packages``, :class:`gateway.key_packages.KeyPackages`). An endpoint with none
(of the requested suite) answers ``409`` and nothing is claimed for any endpoint of the request. One audit
record per KeyPackage handed out (operation ``claim_key_package``, ``key_ref`` = its KeyPackageRef,
``identity_id`` = the claimer: its client id, or its token id for a tenant token).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from hsm.audit import caller_context
from mls import (
    BasicCredentialValidator,
    Credential,
    CredentialValidator,
    DecodeError,
    KeyPackage,
    LeafPolicy,
    MLSMessage,
    UnsupportedError,
    ValidationError,
    cipher_suite,
    key_package_ref,
    validate_key_package,
)

from .auth import Principal
from .clients import Clients
from .credential_policy import CredentialRejected, PolicyCredentialValidator
from .errors import Problem, conflict, not_found
from .identities import Identities
from .key_packages import KeyPackages
from .operation_requests import CreateKeyPackagesRequest
from .persistence import Json, PendingWrites, Persistence, RequestScope, Response
from .sqlite_directory import DirectoryKeyPackage
from .store import AuditRecord, Identity, KeyPackageRecord, Store, Transaction
from .views import b64

#: The longest KeyPackage lifetime accepted (RFC 9420 §7.2: applications MUST set a maximum).
MAX_LIFETIME_S = 366 * 86400
#: Attempts of a claim whose KeyPackage another request took between choosing and claiming it.
CLAIM_ATTEMPTS = 3
CLAIM_OPERATION = "claim_key_package"


@dataclass(frozen=True)
class UploadRequest:
    client_id: str
    key_packages: list[bytes]
    last_resort: bytes | None


@dataclass(frozen=True)
class ClaimRequest:
    #: Client ids (``cli_…``) and hosted identity ids (``idn_…``), distinct.
    endpoints: list[str]
    cipher_suite: int | None


@dataclass(frozen=True)
class _Uploaded:
    record: DirectoryKeyPackage
    signature_key: bytes


@dataclass(frozen=True)
class _Claimed:
    endpoint_id: str
    ref: bytes
    key_package: bytes
    #: ``"client"`` for a directory KeyPackage (the client holds its keys), else the identity's HPKE custody.
    custody: str
    in_directory: bool = False


class _ClaimRaced(Exception):
    """The KeyPackage chosen for a claim was taken (or replaced) meanwhile: choose again."""


def verify_key_package(
    data: bytes, field: str, now: int, validator: CredentialValidator | None = None
) -> tuple[KeyPackage, bytes]:
    """The KeyPackage of an MLSMessage, verified (RFC 9420 §10.1), and its KeyPackageRef (§5.2)."""
    try:
        kp = MLSMessage.from_bytes(data).body
    except DecodeError as e:
        raise Problem("decode_error", f"{field}: {e}") from None
    if not isinstance(kp, KeyPackage):
        raise Problem(
            "validation_failed",
            f"{field} is not an MLSMessage carrying a KeyPackage",
            rule="6/key-package-wire-format",
        )
    try:
        cs = cipher_suite(kp.cipher_suite)
    except UnsupportedError:
        raise Problem(
            "validation_failed",
            f"{field}: cipher suite {kp.cipher_suite} is not supported",
            rule="10.1/directory-cipher-suite",
        ) from None
    policy = LeafPolicy(validator or BasicCredentialValidator(), now=now, max_lifetime=MAX_LIFETIME_S)
    try:
        validate_key_package(cs, kp, policy)
    except CredentialRejected:
        raise  # the tenant's credential policy: 422 credential_rejected with its reason
    except ValidationError as e:
        raise Problem("validation_failed", f"{field}: {e.message}", rule=e.rule) from None
    return kp, key_package_ref(cs, kp)


class KeyDirectory:
    """Uploading, counting and claiming KeyPackages."""

    def __init__(
        self,
        store: Store,
        clients: Clients,
        identities: Identities,
        key_packages: KeyPackages,
        persistence: Persistence,
    ) -> None:
        self.store = store
        self.clients = clients
        self.identities = identities
        self.key_packages = key_packages
        self.persistence = persistence
        #: A tenant's leaf policy (its credential policy; set by the service): uploads are checked by it.
        self.tenant_policy: Callable[[str], LeafPolicy] = lambda tenant_id: LeafPolicy()

    # ---- upload -------------------------------------------------------------------------------------
    def upload(self, principal: Principal, request: UploadRequest, scope: RequestScope) -> Response:
        """``POST /v1/clients/{client_id}/key-packages``: every KeyPackage verified, all stored or none."""
        client = self.clients.get(principal, request.client_id)
        uploads = self._verified(client.client_id, request, self._validator(client.tenant_id))
        write = functools.partial(_store_uploads, tenant_id=client.tenant_id, uploads=uploads)
        return self.persistence.commit(PendingWrites([write]), Response(201, {"stored": len(uploads)}), scope)

    def _validator(self, tenant_id: str) -> CredentialValidator:
        """The tenant's credential policy, or (a tenant without one) basic credentials only."""
        validator = self.tenant_policy(tenant_id).credential_validator
        return validator if isinstance(validator, PolicyCredentialValidator) else BasicCredentialValidator()

    def _verified(
        self, client_id: str, request: UploadRequest, validator: CredentialValidator
    ) -> list[_Uploaded]:
        now = int(time.time())
        items = [(data, f"key_packages[{n}]", False) for n, data in enumerate(request.key_packages)]
        if request.last_resort is not None:
            items.append((request.last_resort, "last_resort", True))
        out: list[_Uploaded] = []
        for data, field, last_resort in items:
            kp, ref = verify_key_package(data, field, now, validator)
            if any(u.record.ref == ref for u in out):
                raise conflict(f"{field} is a KeyPackage this request already carries")
            record = DirectoryKeyPackage(client_id, ref, kp.cipher_suite, data, last_resort)
            out.append(_Uploaded(record, kp.leaf_node.signature_key))
        return out

    def status(self, principal: Principal, client_id: str) -> Json:
        """``GET /v1/clients/{client_id}/key-packages``: ``{available, last_resort}``."""
        client = self.clients.get(principal, client_id)
        with self.store.read_transaction() as tx:
            found = tx.directory_status(client.client_id)
        return {"available": found.available, "last_resort": found.last_resort}

    # ---- claim --------------------------------------------------------------------------------------
    def claim(self, principal: Principal, request: ClaimRequest, scope: RequestScope) -> Response:
        """``POST /v1/key-packages/claim``: one KeyPackage per endpoint, or ``409`` and none at all."""
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                return self._claim_once(principal, request, scope)
            except _ClaimRaced:
                if attempt == CLAIM_ATTEMPTS - 1:
                    raise conflict("the KeyPackages were claimed concurrently; retry") from None
        raise AssertionError("unreachable")

    def _claim_once(self, principal: Principal, request: ClaimRequest, scope: RequestScope) -> Response:
        clients, hosted = self._endpoints(principal, request.endpoints)
        chosen = self._choose(clients, request.cipher_suite)
        for identity in hosted:
            if request.cipher_suite not in (None, identity.cipher_suite):
                raise conflict(
                    f"{identity.identity_id} has no KeyPackage of cipher suite {request.cipher_suite}"
                )
        pending = PendingWrites([functools.partial(_claim_chosen, chosen=chosen)])
        try:
            for identity in hosted:
                chosen.append(self._hosted_key_package(identity, pending))
        except BaseException:
            self.persistence.destroy_keys(pending.new_keys)
            raise
        records = _audit_records(principal, chosen)
        pending.writes.append(lambda tx: tx.add_audit(records))  # with the claims, never without them
        by_endpoint = {c.endpoint_id: b64(c.key_package) for c in chosen}
        body = {"key_packages": {e: by_endpoint[e] for e in request.endpoints}}
        return self.persistence.commit(pending, Response(200, body), scope)

    def _endpoints(self, principal: Principal, endpoints: list[str]) -> tuple[list[str], list[Identity]]:
        """The request's clients and hosted identities, all of the caller's tenant (404 otherwise)."""
        assert principal.tenant_id is not None
        clients, hosted = [], []
        with self.store.read_transaction() as tx:
            for endpoint in endpoints:
                if endpoint.startswith("cli_") and tx.get_client(principal.tenant_id, endpoint) is not None:
                    clients.append(endpoint)
                    continue
                identity = (
                    tx.get_identity(principal.tenant_id, endpoint) if endpoint.startswith("idn_") else None
                )
                if identity is None:
                    raise not_found("endpoint")
                hosted.append(identity)
        return clients, hosted

    def _choose(self, clients: list[str], suite: int | None) -> list[_Claimed]:
        """The KeyPackage each client's claim will hand out (409 for a client with none)."""
        chosen = []
        with self.store.read_transaction() as tx:
            for client_id in clients:
                found = tx.next_directory_key_package(client_id, suite)
                if found is None:
                    raise conflict(f"{client_id} has no KeyPackage to claim")
                chosen.append(_Claimed(client_id, found.ref, found.key_package, "client", True))
        return chosen

    def _hosted_key_package(self, identity: Identity, pending: PendingWrites) -> _Claimed:
        """A fresh KeyPackage of a hosted identity, written with the claim (its keys in ``pending``)."""
        record: KeyPackageRecord = self.key_packages.new_key_package(
            identity,
            self.key_packages.keys.signer(identity.signature_key_ref),
            Credential.from_bytes(identity.credential),
            CreateKeyPackagesRequest(identity.identity_id),
            pending,
        )
        pending.writes.append(lambda tx: tx.add_key_package(record))
        return _Claimed(identity.identity_id, record.ref, record.key_package, identity.custody_hpke)


def _store_uploads(tx: Transaction, tenant_id: str, uploads: list[_Uploaded]) -> None:
    for u in uploads:
        if tx.directory_ref_exists(u.record.client_id, u.record.ref):
            raise conflict("a KeyPackage of this request was uploaded before")
        if not tx.register_endpoint_key(tenant_id, u.signature_key, u.record.client_id):
            raise conflict("a KeyPackage's signature key is registered to another endpoint")
    tx.add_directory_key_packages([u.record for u in uploads])


def _claim_chosen(tx: Transaction, chosen: list[_Claimed]) -> None:
    for c in chosen:
        if c.in_directory and not tx.claim_directory_key_package(c.endpoint_id, c.ref):
            raise _ClaimRaced()


def _audit_records(principal: Principal, chosen: list[_Claimed]) -> list[AuditRecord]:
    request_id = caller_context.get().get("request_id", "-")
    claimer = principal.client_id or principal.token_id
    return [
        AuditRecord(
            request_id,
            principal.tenant_id,
            claimer,
            None,
            None,
            c.ref,
            CLAIM_OPERATION,
            c.custody,
            True,
            token_id=principal.token_id,
        )
        for c in chosen
    ]


__all__ = ["ClaimRequest", "KeyDirectory", "UploadRequest", "verify_key_package"]
