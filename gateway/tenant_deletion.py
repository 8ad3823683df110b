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

Each batch is one step of :meth:`TenantDeletion.steps`: the API runs every step as its own turn of the
worker pool (gateway.request_limits), so deleting a huge tenant holds neither the write lock nor a worker
for long and other tenants' requests interleave; the CLI runs them back to back (:meth:`delete`).

An interrupted deletion (crash, HSM outage) leaves a tenant whose tokens are revoked; running it again
finishes it. Keys a crash left behind are orphans for reconciliation (``mls-gateway keys reconcile``).
The audit log is append-only: its records of the tenant stay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

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
        #: Called with the tenant's id once it is deleted (the service drops its cached policy).
        self.on_deleted: Callable[[str], None] = lambda tenant_id: None

    def delete(self, tenant_id: str) -> None:
        """Delete the tenant and everything of it (404 for an unknown tenant), all steps at once."""
        for _ in self.steps(tenant_id):
            pass

    def steps(self, tenant_id: str) -> Iterator[None]:
        """The deletion as bounded steps: each ``next()`` runs one short batch (the first raises 404 for
        an unknown tenant). Steps may run on different threads, one after the other."""
        with self.store.transaction() as tx:
            if tx.get_tenant(tenant_id) is None:
                raise not_found("tenant")
            tx.revoke_tenant_tokens(tenant_id)
        counts = {"identities": 0, "clients": 0, "rows": 0}
        while n := self._delete_identities(tenant_id):
            counts["identities"] += n
            yield
        while n := self._delete_clients(tenant_id):
            counts["clients"] += n
            yield
        for table in TENANT_TABLES:
            while n := self._purge_table(tenant_id, table):
                counts["rows"] += n
                yield
        while n := self._purge_idempotency(tenant_id):
            counts["rows"] += n
            yield
        with self.store.transaction() as tx:
            tx.delete_tenant(tenant_id)
        self.on_deleted(tenant_id)
        log.info(
            "tenant %s deleted: %d identities, %d clients, %d other rows",
            tenant_id,
            counts["identities"],
            counts["clients"],
            counts["rows"],
        )

    def _delete_identities(self, tenant_id: str) -> int:
        """One batch of identities (records, then their keys); how many."""
        with self.store.read_transaction() as tx:
            ids = tx.tenant_identity_ids(tenant_id, self.batch)
            found = [i for i in (tx.get_identity(tenant_id, iid) for iid in ids) if i is not None]
        if not found:
            return 0
        dead = [ref for identity in found for ref in self.identities.keys_of(identity)]
        with self.store.transaction() as tx:
            for identity in found:
                tx.delete_identity(identity.identity_id)
        self.persistence.destroy_keys(list(dict.fromkeys(dead)))
        self._forget(found)
        return len(found)

    def _forget(self, identities: list[Identity]) -> None:
        """Drop the deleted identities' decoded states from the state cache."""
        for identity in identities:
            self.identities.sessions.cache.drop_identity(identity.identity_id)

    def _delete_clients(self, tenant_id: str) -> int:
        with self.store.transaction() as tx:
            ids = tx.tenant_client_ids(tenant_id, self.batch)
            for client_id in ids:
                tx.delete_client(client_id)
        return len(ids)

    def _purge_table(self, tenant_id: str, table: str) -> int:
        with self.store.transaction() as tx:
            return tx.purge_tenant_rows(tenant_id, table, ROW_BATCH)

    def _purge_idempotency(self, tenant_id: str) -> int:
        with self.store.transaction() as tx:
            return tx.purge_tenant_idempotency(tenant_id, ROW_BATCH)


__all__ = ["BATCH", "ROW_BATCH", "TenantDeletion"]
