"""Store methods of the credential features (issue 16): a tenant's credential policy (one JSON document
per tenant, :mod:`gateway.credential_policy`) and an identity's replacement credential."""

from __future__ import annotations

import time
from typing import Protocol

from .sqlite_queries import SqliteQueries


class CredentialTransaction(Protocol):
    """The credential methods of :class:`gateway.store.Transaction`."""

    def get_credential_policy(self, tenant_id: str) -> str | None:
        """The tenant's policy document (canonical JSON), or ``None``."""
        ...

    def put_credential_policy(self, tenant_id: str, document: str) -> None: ...
    def delete_credential_policy(self, tenant_id: str) -> bool:
        """Remove the tenant's policy; whether there was one."""
        ...

    def set_identity_credential(self, identity_id: str, credential: bytes) -> None:
        """The credential (TLS-encoded ``Credential``) the identity uses from now on."""
        ...


class SqliteCredentialMixin(SqliteQueries):
    """:class:`CredentialTransaction` over SQLite (table ``credential_policies``)."""

    def get_credential_policy(self, tenant_id: str) -> str | None:
        row = self._one("SELECT document FROM credential_policies WHERE tenant_id = ?", tenant_id)
        return None if row is None else str(row["document"])

    def put_credential_policy(self, tenant_id: str, document: str) -> None:
        self._c.execute(
            "INSERT INTO credential_policies (tenant_id, document, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(tenant_id) DO UPDATE SET document = excluded.document, "
            "updated_at = excluded.updated_at",
            (tenant_id, document, time.time()),
        )

    def delete_credential_policy(self, tenant_id: str) -> bool:
        cur = self._c.execute("DELETE FROM credential_policies WHERE tenant_id = ?", (tenant_id,))
        return cur.rowcount > 0

    def set_identity_credential(self, identity_id: str, credential: bytes) -> None:
        self._c.execute(
            "UPDATE identities SET credential = ? WHERE identity_id = ?", (credential, identity_id)
        )


__all__ = ["CredentialTransaction", "SqliteCredentialMixin"]
