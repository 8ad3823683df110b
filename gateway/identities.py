"""Hosted identities (api-v1.md "Identities"): an MLS client whose signature key lives in the HSM."""

from __future__ import annotations

import logging

from hsm.audit import caller
from hsm.errors import HsmUnavailable
from hsm.keystore import Pkcs11KeyStore
from mls import Credential, MLSError

from .auth import Principal, new_id
from .custody import identity_kek, tenant_mode
from .errors import Problem, not_found
from .group_session import GroupSession, GroupSessions, membership_keys
from .key_references import live_key_package_keys
from .operation_requests import CreateIdentityRequest
from .persistence import Json, PendingWrites, RequestScope, Response
from .quotas import Quotas
from .store import Identity, Store
from .views import identity_json

log = logging.getLogger("mls_gateway")

#: Memberships an identity's deletion removes per transaction (and per worker turn, from the API).
MEMBERSHIP_BATCH = 50


class Identities:
    """Identity operations; :meth:`get` is also every other operation's tenant check."""

    def __init__(self, store: Store, keys: Pkcs11KeyStore, sessions: GroupSessions) -> None:
        self.store = store
        self.keys = keys
        self.sessions = sessions
        #: Per-tenant quotas (gateway.quotas; set from the configuration by the app).
        self.quotas = Quotas()

    def get(self, principal: Principal, identity_id: str) -> Identity:
        """The identity of the caller's tenant (404 for another tenant's: ids cannot be probed)."""
        assert principal.tenant_id is not None
        with self.store.read_transaction() as tx:
            found = tx.get_identity(principal.tenant_id, identity_id)
        if found is None:
            raise not_found("identity")
        return found

    def open_group(self, principal: Principal, identity_id: str, group_id: bytes) -> GroupSession:
        """The unit of work on the caller's identity's membership of a group (404 if either is missing)."""
        return self.sessions.open(self.get(principal, identity_id), group_id)

    def show(self, principal: Principal, identity_id: str) -> Json:
        """``GET /v1/identities/{identity_id}``."""
        identity = self.get(principal, identity_id)
        return identity_json(identity, identity_kek(self.keys, identity))

    def create(self, principal: Principal, request: CreateIdentityRequest, scope: RequestScope) -> Response:
        """``POST /v1/identities``: a signature key generated in the HSM, custody reported truthfully."""
        assert principal.tenant_id is not None
        suite = request.cipher_suite
        tenant_id = principal.tenant_id
        with self.store.read_transaction() as tx:
            tenant = tx.get_tenant(tenant_id)
            self.quotas.check_identities(tx, tenant_id)  # before the key is generated
        keys = self.keys.for_mode(tenant_mode(tenant))
        sig_custody, hpke_custody = keys.custody(suite)
        if sig_custody not in ("pkcs11", "wrapped"):
            raise Problem("unsupported", f"the HSM cannot hold signature keys of cipher suite {suite}")
        credential = request.credential or Credential.basic(request.name.encode())
        identity_id = new_id("idn")
        with caller(identity_id=identity_id):  # the key's generation is audited as the identity's
            signer = keys.new_signature_key(suite)
        identity = Identity(
            identity_id,
            principal.tenant_id,
            request.name,
            suite,
            credential.to_bytes(),
            signer.key_ref,
            signer.public_key,
            sig_custody,
            hpke_custody,
            request.auto_join,
        )
        pending = PendingWrites(
            [lambda tx: self.quotas.check_identities(tx, tenant_id), lambda tx: tx.add_identity(identity)],
            new_keys=[signer.key_ref],
        )
        created = Response(201, identity_json(identity, identity_kek(keys, identity)))
        return self.sessions.persistence.commit(pending, created, scope)

    def _membership_keys(self, identity: Identity, group_id: bytes) -> list[bytes]:
        """The keys of one membership, for deleting the identity: a state that does not open (corrupt,
        unsealable) does not stop the deletion; it is logged, and keys it named stay for reconciliation."""
        try:
            return membership_keys(self.sessions.open(identity, group_id).group)  # out of the cache too
        except HsmUnavailable:
            raise  # the token is down: answer 503 and delete nothing, rather than leave keys behind
        except Problem as e:
            if e.code != "not_found":  # left concurrently: nothing of it to destroy here
                raise
        except MLSError as e:
            log.warning(
                "deleting identity %s: the state of group %s does not open (%s); keys it names are left "
                "for reconciliation",
                identity.identity_id,
                group_id.hex()[:16],
                type(e).__name__,
            )
        return []

    def keys_of(self, identity: Identity) -> list[bytes]:
        """Every private key the identity holds, each once: its signature key, its live KeyPackages' keys
        and its memberships' keys (what deleting it destroys; also a tenant's deletion, per identity)."""
        with self.store.read_transaction() as tx:
            key_packages = tx.list_key_packages(identity.identity_id)
            groups = tx.list_groups(identity.identity_id)
        dead = [identity.signature_key_ref, *live_key_package_keys(key_packages)]
        for g in groups:
            dead += self._membership_keys(identity, g.group_id)
        return list(dict.fromkeys(dead))

    def list(self, principal: Principal) -> Json:
        """``GET /v1/identities``."""
        assert principal.tenant_id is not None
        with self.store.transaction() as tx:
            found = tx.list_identities(principal.tenant_id)
        return {"identities": [identity_json(i) for i in found]}

    def delete_memberships(
        self, principal: Principal, identity_id: str, limit: int = MEMBERSHIP_BATCH
    ) -> int:
        """Delete at most ``limit`` of the identity's memberships (records, then their keys), in one short
        transaction; returns how many. ``DELETE /v1/identities/{id}`` runs this until none is left, then
        :meth:`delete`, so that an identity of thousands of groups never holds the write lock or a
        worker for long (other tenants' requests interleave between batches)."""
        identity = self.get(principal, identity_id)
        with self.store.read_transaction() as tx:
            group_ids = tx.identity_group_ids(identity_id, limit)
        if not group_ids:
            return 0
        dead = [ref for gid in group_ids for ref in self._membership_keys(identity, gid)]
        with self.store.transaction() as tx:
            for gid in group_ids:
                tx.delete_group(identity_id, gid)
        with caller(identity_id=identity_id):  # its keys' destruction is audited as the identity's
            self.sessions.persistence.destroy_keys(list(dict.fromkeys(dead)))
        self.sessions.cache.drop_identity(identity_id)
        return len(group_ids)

    def delete(self, principal: Principal, identity_id: str, scope: RequestScope) -> Response:
        """``DELETE /v1/identities/{identity_id}``: its records, then every private key it held."""
        identity = self.get(principal, identity_id)
        with caller(identity_id=identity_id):  # its keys' destruction is audited as the identity's
            pending = PendingWrites(
                [lambda tx: tx.delete_identity(identity_id)], dead_keys=self.keys_of(identity)
            )
            return self.sessions.persistence.commit(pending, Response(204, None), scope)
