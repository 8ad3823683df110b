"""An identity's KeyPackages (api-v1.md; RFC 9420 §10): init and leaf keys generated in the HSM."""

from __future__ import annotations

import functools
from collections.abc import Callable

from hsm.audit import caller
from hsm.keystore import Pkcs11KeyStore
from mls import (
    Credential,
    LeafPolicy,
    MLSMessage,
    Signer,
    cipher_suite,
    create_key_package,
    default_lifetime,
    key_package_ref,
)

from .auth import Principal
from .credential_policy import check_own_credential
from .custody import mode_of
from .identities import Identities
from .operation_requests import CreateKeyPackagesRequest
from .persistence import Json, PendingWrites, Persistence, RequestScope, Response
from .store import Identity, KeyPackageRecord, Store, Transaction
from .views import b64, key_packages_json


class KeyPackages:
    """Publishing and listing KeyPackages; joins consume them (:mod:`gateway.groups`)."""

    def __init__(
        self, store: Store, keys: Pkcs11KeyStore, identities: Identities, persistence: Persistence
    ) -> None:
        self.store = store
        self.keys = keys
        self.identities = identities
        self.persistence = persistence
        #: The leaf policy of a tenant (its credential policy; set by the service).
        self.leaf_policy: Callable[[str], LeafPolicy] = lambda tenant_id: LeafPolicy()

    def create(
        self, principal: Principal, request: CreateKeyPackagesRequest, scope: RequestScope
    ) -> Response:
        """``POST .../key-packages``: ``count`` fresh KeyPackages, all written in one transaction."""
        identity = self.identities.get(principal, request.identity_id)
        check_own_credential(self.leaf_policy(identity.tenant_id), identity)
        quotas, count, iid = self.identities.quotas, request.count, identity.identity_id
        with self.store.read_transaction() as tx:
            quotas.check_key_packages(tx, iid, count)  # before any key is generated
        with caller(identity_id=iid):  # its key uses are audited as the identity's
            signer = self.keys.signer(identity.signature_key_ref)
            credential = Credential.from_bytes(identity.credential)
            pending, out = PendingWrites([lambda tx: quotas.check_key_packages(tx, iid, count)]), []
            try:
                for _ in range(request.count):
                    record = self.new_key_package(identity, signer, credential, request, pending)
                    pending.writes.append(functools.partial(_add_key_package, record=record))
                    out.append({"ref": b64(record.ref), "key_package": b64(record.key_package)})
            except BaseException:
                self.persistence.destroy_keys(pending.new_keys)
                raise
            return self.persistence.commit(pending, Response(201, {"key_packages": out}), scope)

    def new_key_package(
        self,
        identity: Identity,
        signer: Signer,
        credential: Credential,
        request: CreateKeyPackagesRequest,
        pending: PendingWrites,
    ) -> KeyPackageRecord:
        """One KeyPackage with fresh init and leaf keys (recorded in ``pending.new_keys`` as made)."""
        cs = cipher_suite(identity.cipher_suite)
        keys = self.keys.for_mode(mode_of(identity))
        init_key = keys.new_hpke_key(cs.suite_id)
        pending.new_keys.append(init_key.key_ref)
        leaf_key = keys.new_hpke_key(cs.suite_id)
        pending.new_keys.append(leaf_key.key_ref)
        kp = create_key_package(
            cs,
            signer,
            init_key=init_key.public_key,
            encryption_key=leaf_key.public_key,
            credential=credential,
            lifetime=default_lifetime(request.lifetime_days),
        )
        return KeyPackageRecord(
            key_package_ref(cs, kp),
            identity.identity_id,
            MLSMessage.of(kp).to_bytes(),
            init_key.key_ref,
            leaf_key.key_ref,
            request.last_resort,
            False,
        )

    def list(self, principal: Principal, identity_id: str) -> Json:
        """``GET .../key-packages``."""
        self.identities.get(principal, identity_id)
        with self.store.transaction() as tx:
            return key_packages_json(tx.list_key_packages(identity_id))


def _add_key_package(tx: Transaction, record: KeyPackageRecord) -> None:
    tx.add_key_package(record)
