"""Per-tenant quotas (issue 17): how much one tenant may keep, so one caller cannot fill the store or the
HSM for everyone.

=================================  ==============================  =======================================
quota (``code`` member ``quota``)  counts                          setting (``[gateway]``)
=================================  ==============================  =======================================
``identities``                     identities of the tenant        ``quota_identities``
``groups_per_identity``            memberships of one identity     ``quota_groups_per_identity``
``key_packages_per_identity``      unconsumed KeyPackages stored   ``quota_key_packages_per_identity``
=================================  ==============================  =======================================

A request that would go over answers 429 ``quota_exceeded`` naming the quota and its limit, and changes
nothing; no ``Retry-After``: waiting does not help, deleting does. Each is checked before the request's
HSM work (so a refused request costs no key generation); identities and KeyPackages are checked again
inside the transaction that adds them, so concurrent requests cannot pass the limit together. (A request
body's size is the fourth limit: ``max_body_bytes``, 413 ``payload_too_large``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import Problem
from .sqlite_queries import SqliteQueries


class QuotaTransaction(Protocol):
    """The counts quotas are checked against, and the bounded listing of an identity's deletion."""

    def count_identities(self, tenant_id: str) -> int: ...
    def count_groups(self, identity_id: str) -> int: ...
    def count_live_key_packages(self, identity_id: str) -> int: ...
    def get_group_version(self, identity_id: str, group_id: bytes) -> int | None: ...
    def identity_group_ids(self, identity_id: str, limit: int) -> list[bytes]:
        """At most ``limit`` of the identity's memberships' group ids (its deletion's next batch)."""
        ...


class SqliteQuotaMixin(SqliteQueries):
    """:class:`QuotaTransaction` of :class:`gateway.sqlite_store.SqliteTransaction` (indexed counts)."""

    def _count(self, sql: str, *args: object) -> int:
        row = self._one(sql, *args)
        return 0 if row is None else int(row[0])

    def count_identities(self, tenant_id: str) -> int:
        return self._count("SELECT COUNT(*) FROM identities WHERE tenant_id = ?", tenant_id)

    def count_groups(self, identity_id: str) -> int:
        return self._count("SELECT COUNT(*) FROM groups WHERE identity_id = ?", identity_id)

    def count_live_key_packages(self, identity_id: str) -> int:
        return self._count(
            "SELECT COUNT(*) FROM key_packages WHERE identity_id = ? AND consumed = 0", identity_id
        )

    def identity_group_ids(self, identity_id: str, limit: int) -> list[bytes]:
        rows = self._all("SELECT group_id FROM groups WHERE identity_id = ? LIMIT ?", identity_id, limit)
        return [bytes(r["group_id"]) for r in rows]


def exceeded(quota: str, limit: int) -> Problem:
    """429 ``quota_exceeded`` naming the quota and its limit."""
    return Problem(
        "quota_exceeded",
        f"the {quota.replace('_', ' ')} quota ({limit}) would be exceeded; delete some first",
        extra={"quota": quota, "limit": limit},
    )


@dataclass(frozen=True)
class Quotas:
    """The limits (see the module docstring); each check raises :func:`exceeded` or returns."""

    identities: int = 10_000
    groups_per_identity: int = 1000
    key_packages_per_identity: int = 1000

    def check_identities(self, tx: QuotaTransaction, tenant_id: str) -> None:
        if tx.count_identities(tenant_id) + 1 > self.identities:
            raise exceeded("identities", self.identities)

    def check_groups(self, tx: QuotaTransaction, identity_id: str) -> None:
        if tx.count_groups(identity_id) + 1 > self.groups_per_identity:
            raise exceeded("groups_per_identity", self.groups_per_identity)

    def check_new_membership(self, tx: QuotaTransaction, identity_id: str, group_id: bytes) -> None:
        """In the transaction that inserts a membership: ``groups_per_identity`` still holds with it (a
        membership that replaces the identity's own in the same group, a resync, adds nothing)."""
        if tx.get_group_version(identity_id, group_id) is None:
            self.check_groups(tx, identity_id)

    def check_key_packages(self, tx: QuotaTransaction, identity_id: str, adding: int) -> None:
        if tx.count_live_key_packages(identity_id) + adding > self.key_packages_per_identity:
            raise exceeded("key_packages_per_identity", self.key_packages_per_identity)


__all__ = ["QuotaTransaction", "Quotas", "SqliteQuotaMixin", "exceeded"]
