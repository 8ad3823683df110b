"""Operator methods of the store over tenants: token listing, admin-token rotation, and the bounded steps of
a tenant's deletion (:mod:`gateway.tenant_deletion`).

A tenant's deletion runs as many short transactions, each deleting at most ``limit`` rows (or identities,
or clients), so that deleting a huge tenant never holds SQLite's write lock for long. Rows keyed by the
tenant are found by ``tenant_id``; stored idempotent responses by their scope (``tenant:`` or
``tenant/client:`` for the tenant's own requests, ``admin:...:/v1/tenants/{tenant}/...`` for the admin's
requests about it: those hold its tokens, sealed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from .sqlite_queries import SqliteQueries

#: The tables of a tenant's group service rows, deleted in bounded batches after its identities and
#: clients (whose own rows cascade): each keyed by ``tenant_id``.
TENANT_TABLES = (
    "mailbox",
    "log_welcomes",
    "log_entries",
    "group_members",
    "group_logs",
    "endpoint_keys",
    "credential_policies",
)


@dataclass(frozen=True)
class TokenInfo:
    """A token as an operator sees it: never the token nor its hash."""

    token_id: str
    created_at: float
    revoked: bool
    client_id: str | None


class TenantAdminTransaction(Protocol):
    """The operator methods of :class:`gateway.store.Transaction` (see the module docstring)."""

    def list_tokens(self, tenant_id: str) -> list[TokenInfo]: ...
    def rotate_admin_token(self, token_id: str, token_hash: bytes) -> int:
        """Add an admin token and revoke every other admin token; returns how many were revoked."""
        ...

    def revoke_tenant_tokens(self, tenant_id: str) -> int: ...
    def tenant_identity_ids(self, tenant_id: str, limit: int) -> list[str]: ...
    def tenant_client_ids(self, tenant_id: str, limit: int) -> list[str]: ...
    def purge_tenant_rows(self, tenant_id: str, table: str, limit: int) -> int:
        """Delete at most ``limit`` rows of one of :data:`TENANT_TABLES` of the tenant; returns how many."""
        ...

    def purge_tenant_idempotency(self, tenant_id: str, limit: int) -> int:
        """Delete at most ``limit`` stored responses of (or about) the tenant; returns how many."""
        ...

    def delete_tenant(self, tenant_id: str) -> None:
        """Delete the tenant's tokens and the tenant (its other rows are gone by then)."""
        ...


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqliteTenantAdminMixin(SqliteQueries):
    """The operator methods of :class:`gateway.sqlite_store.SqliteTransaction`."""

    def list_tokens(self, tenant_id: str) -> list[TokenInfo]:
        rows = self._all(
            "SELECT token_id, created_at, revoked_at, client_id FROM tokens WHERE tenant_id = ? "
            "ORDER BY created_at, rowid",
            tenant_id,
        )
        return [
            TokenInfo(r["token_id"], r["created_at"], r["revoked_at"] is not None, r["client_id"])
            for r in rows
        ]

    def rotate_admin_token(self, token_id: str, token_hash: bytes) -> int:
        cur = self._c.execute(
            "UPDATE tokens SET revoked_at = ? WHERE tenant_id IS NULL AND revoked_at IS NULL", (time.time(),)
        )
        self._c.execute(
            "INSERT INTO tokens (token_id, tenant_id, token_hash, created_at) VALUES (?, NULL, ?, ?)",
            (token_id, token_hash, time.time()),
        )
        return cur.rowcount

    def revoke_tenant_tokens(self, tenant_id: str) -> int:
        cur = self._c.execute(
            "UPDATE tokens SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL",
            (time.time(), tenant_id),
        )
        return cur.rowcount

    def tenant_identity_ids(self, tenant_id: str, limit: int) -> list[str]:
        rows = self._all("SELECT identity_id FROM identities WHERE tenant_id = ? LIMIT ?", tenant_id, limit)
        return [r["identity_id"] for r in rows]

    def tenant_client_ids(self, tenant_id: str, limit: int) -> list[str]:
        rows = self._all("SELECT client_id FROM clients WHERE tenant_id = ? LIMIT ?", tenant_id, limit)
        return [r["client_id"] for r in rows]

    def purge_tenant_rows(self, tenant_id: str, table: str, limit: int) -> int:
        if table not in TENANT_TABLES:
            raise ValueError(f"not a tenant table: {table}")
        cur = self._c.execute(
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE tenant_id = ? LIMIT ?)",
            (tenant_id, limit),
        )
        return cur.rowcount

    def purge_tenant_idempotency(self, tenant_id: str, limit: int) -> int:
        t = _like(tenant_id)
        cur = self._c.execute(
            "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency WHERE "
            "scope LIKE ? ESCAPE '\\' OR scope LIKE ? ESCAPE '\\' OR scope LIKE ? ESCAPE '\\' LIMIT ?)",
            (f"{t}:%", f"{t}/%", f"admin:%:/v1/tenants/{t}/%", limit),
        )
        return cur.rowcount

    def delete_tenant(self, tenant_id: str) -> None:
        self._c.execute("DELETE FROM tokens WHERE tenant_id = ?", (tenant_id,))
        self._c.execute("DELETE FROM tenants WHERE tenant_id = ?", (tenant_id,))


__all__ = ["TENANT_TABLES", "SqliteTenantAdminMixin", "TenantAdminTransaction", "TokenInfo"]
