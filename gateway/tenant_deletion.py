"""Deleting a tenant and everything of it (``DELETE /v1/tenants/{tenant_id}``, ``mls-gateway admin
delete-tenant``), in bounded batches.

The steps, each its own short transaction so that a huge tenant never holds the write lock for long:

1. its tokens are revoked (all at once: from the next request on, none of them is accepted);
2. its identities, :data:`BATCH` per transaction, as ``DELETE /v1/identities/{id}`` deletes one (records,
   KeyPackages, group states, PSKs, inbox, webhook, its idempotent responses), each batch's keys destroyed
   in the HSM once the batch committed (:meth:`gateway.identities.Identities.keys_of`);
3. its clients, :data:`BATCH` per transaction (mailboxes and directory KeyPackages cascade);
4. the rest of its group service rows (group logs, members, entries, Welcomes, mailbox items, endpoint
   keys) and its stored idempotent responses, :data:`ROW_BATCH` rows per transaction;
5. its tokens and the tenant row, last.

An interrupted deletion (crash, HSM outage) leaves a tenant whose tokens are revoked; running it again
finishes it. Keys a crash left behind are orphans for reconciliation (``mls-gateway keys reconcile``).
The audit log is append-only: its records of the tenant stay.
"""

from __future__ import annotations

import logging

from .errors import not_found
from .identities import Identities
from .persistence import Persistence
from .sqlite_tenants import TENANT_TABLES
from .store import Identity, Store

log = logging.getLogger("mls_gateway")

#: Identities (or clients) deleted per transaction.
BATCH = 50
#: Rows of the group service's tables deleted per transaction.
ROW_BATCH = 1000


class TenantDeletion:
    """Deletes tenants (see the module docstring)."""

    def __init__(
        self, store: Store, persistence: Persistence, identities: Identities, *, batch: int = BATCH
    ) -> None:
        self.store = store
        self.persistence = persistence
        self.identities = identities
        self.batch = batch

    def delete(self, tenant_id: str) -> None:
        """Delete the tenant and everything of it (404 for an unknown tenant)."""
        with self.store.transaction() as tx:
            if tx.get_tenant(tenant_id) is None:
                raise not_found("tenant")
            tx.revoke_tenant_tokens(tenant_id)
        identities = self._delete_identities(tenant_id)
        clients = self._delete_clients(tenant_id)
        rows = self._purge_rows(tenant_id)
        with self.store.transaction() as tx:
            tx.delete_tenant(tenant_id)
        log.info(
            "tenant %s deleted: %d identities, %d clients, %d other rows",
            tenant_id,
            identities,
            clients,
            rows,
        )

    def _delete_identities(self, tenant_id: str) -> int:
        done = 0
        while True:
            with self.store.read_transaction() as tx:
                ids = tx.tenant_identity_ids(tenant_id, self.batch)
                found = [i for i in (tx.get_identity(tenant_id, iid) for iid in ids) if i is not None]
            if not found:
                return done
            dead = [ref for identity in found for ref in self.identities.keys_of(identity)]
            with self.store.transaction() as tx:
                for identity in found:
                    tx.delete_identity(identity.identity_id)
            self.persistence.destroy_keys(list(dict.fromkeys(dead)))
            self._forget(found)
            done += len(found)

    def _forget(self, identities: list[Identity]) -> None:
        """Drop the deleted identities' decoded states from the state cache."""
        for identity in identities:
            self.identities.sessions.cache.drop_identity(identity.identity_id)

    def _delete_clients(self, tenant_id: str) -> int:
        done = 0
        while True:
            with self.store.transaction() as tx:
                ids = tx.tenant_client_ids(tenant_id, self.batch)
                for client_id in ids:
                    tx.delete_client(client_id)
            if not ids:
                return done
            done += len(ids)

    def _purge_rows(self, tenant_id: str) -> int:
        done = 0
        for table in TENANT_TABLES:
            while True:
                with self.store.transaction() as tx:
                    n = tx.purge_tenant_rows(tenant_id, table, ROW_BATCH)
                done += n
                if n < ROW_BATCH:
                    break
        while True:
            with self.store.transaction() as tx:
                n = tx.purge_tenant_idempotency(tenant_id, ROW_BATCH)
            done += n
            if n < ROW_BATCH:
                return done


__all__ = ["BATCH", "ROW_BATCH", "TenantDeletion"]
