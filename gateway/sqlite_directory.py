"""Clients (devices), the endpoint key registry and the KeyPackage directory in the store (api-delivery.md).

:class:`DirectoryTransaction` is the part of :class:`gateway.store.Transaction` the client and directory
operations use (:mod:`gateway.clients`, :mod:`gateway.key_directory`); :class:`SqliteDirectoryMixin`
implements it over the ``clients``, ``endpoint_keys`` and ``directory_key_packages`` tables of
:data:`gateway.sqlite_schema.DELIVERY_SCHEMA` (the mixin of :class:`gateway.sqlite_store.SqliteTransaction`).

A claimed directory row is kept (``claimed_at`` set), so that a Welcome naming its KeyPackageRef can be
routed to its client later (:meth:`DirectoryTransaction.endpoint_for_key_package_ref`); only unclaimed
rows are handed out, oldest first, and the last-resort one only when no other is left.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ClientRecord:
    """A client (device) of a tenant: an endpoint with its own keys, token and mailbox."""

    client_id: str
    tenant_id: str
    name: str


@dataclass(frozen=True)
class DirectoryKeyPackage:
    """A KeyPackage a client uploaded (an MLSMessage, verified when uploaded)."""

    client_id: str
    ref: bytes
    cipher_suite: int
    key_package: bytes
    last_resort: bool


@dataclass(frozen=True)
class DirectoryStatus:
    """What a client's directory holds: KeyPackages not handed out yet, and whether it has a last resort."""

    available: int
    last_resort: bool


class DirectoryTransaction(Protocol):
    """Clients, the endpoint key registry and the KeyPackage directory (one store transaction)."""

    def add_client(self, client: ClientRecord) -> None: ...
    def get_client(self, tenant_id: str, client_id: str) -> ClientRecord | None: ...
    def list_clients(self, tenant_id: str) -> list[ClientRecord]: ...
    def delete_client(self, client_id: str) -> None:
        """Delete the client with its mailbox and KeyPackages, revoke its tokens, forget its keys and
        detach its leaves (``group_members.endpoint_id`` becomes ``NULL``: no longer delivered to)."""
        ...

    def endpoint_for_key(self, tenant_id: str, signature_key: bytes) -> str | None:
        """The endpoint that registered this signature public key in the tenant, if any."""
        ...

    def register_endpoint_key(self, tenant_id: str, signature_key: bytes, endpoint_id: str) -> bool:
        """Register a key to an endpoint; ``False`` (nothing changed) when another endpoint has it."""
        ...

    def directory_ref_exists(self, client_id: str, ref: bytes) -> bool:
        """Whether the client's directory has (or had, claimed) the KeyPackage of this ref."""
        ...

    def add_directory_key_packages(self, records: list[DirectoryKeyPackage]) -> None:
        """Store KeyPackages; a last-resort one replaces the client's previous last resort."""
        ...

    def directory_status(self, client_id: str) -> DirectoryStatus: ...
    def next_directory_key_package(
        self, client_id: str, cipher_suite: int | None
    ) -> DirectoryKeyPackage | None:
        """The KeyPackage a claim hands out next: the client's oldest unclaimed one (of the suite, if
        given), else its last-resort one; ``None`` when there is neither."""
        ...

    def claim_directory_key_package(self, client_id: str, ref: bytes) -> bool:
        """Mark the KeyPackage claimed (the row is kept, for routing a Welcome); ``False`` when it is no
        longer there to claim (claimed meanwhile, or a replaced last resort)."""
        ...

    def endpoint_for_key_package_ref(self, tenant_id: str, ref: bytes) -> str | None:
        """The endpoint (``cli_…`` from the directory, or ``idn_…`` from a hosted identity's KeyPackages)
        whose KeyPackage has this KeyPackageRef, within the tenant; for routing a Welcome."""
        ...


def _directory_row(row: sqlite3.Row) -> DirectoryKeyPackage:
    return DirectoryKeyPackage(
        row["client_id"], row["ref"], row["cipher_suite"], row["key_package"], bool(row["last_resort"])
    )


class SqliteDirectoryMixin:
    """:class:`DirectoryTransaction` over SQLite, for :class:`gateway.sqlite_store.SqliteTransaction`."""

    _c: sqlite3.Connection

    def _dir_one(self, sql: str, *args: object) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._c.execute(sql, args).fetchone()
        return row

    # ---- clients ------------------------------------------------------------------------------------
    def add_client(self, client: ClientRecord) -> None:
        self._c.execute(
            "INSERT INTO clients (client_id, tenant_id, name, created_at) VALUES (?, ?, ?, ?)",
            (client.client_id, client.tenant_id, client.name, time.time()),
        )

    def get_client(self, tenant_id: str, client_id: str) -> ClientRecord | None:
        r = self._dir_one("SELECT * FROM clients WHERE client_id = ? AND tenant_id = ?", client_id, tenant_id)
        return None if r is None else ClientRecord(r["client_id"], r["tenant_id"], r["name"])

    def list_clients(self, tenant_id: str) -> list[ClientRecord]:
        rows = self._c.execute(
            "SELECT * FROM clients WHERE tenant_id = ? ORDER BY created_at, rowid", (tenant_id,)
        ).fetchall()
        return [ClientRecord(r["client_id"], r["tenant_id"], r["name"]) for r in rows]

    def delete_client(self, client_id: str) -> None:
        c = self._c
        c.execute(
            "UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
            (time.time(), client_id),
        )
        c.execute("DELETE FROM endpoint_keys WHERE endpoint_id = ?", (client_id,))
        c.execute("UPDATE group_members SET endpoint_id = NULL WHERE endpoint_id = ?", (client_id,))
        c.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))  # mailbox, KeyPackages: cascade

    # ---- endpoint keys --------------------------------------------------------------------------------
    def endpoint_for_key(self, tenant_id: str, signature_key: bytes) -> str | None:
        r = self._dir_one(
            "SELECT endpoint_id FROM endpoint_keys WHERE tenant_id = ? AND signature_key = ?",
            tenant_id,
            signature_key,
        )
        return None if r is None else str(r["endpoint_id"])

    def register_endpoint_key(self, tenant_id: str, signature_key: bytes, endpoint_id: str) -> bool:
        self._c.execute(
            "INSERT INTO endpoint_keys (tenant_id, signature_key, endpoint_id) VALUES (?, ?, ?) "
            "ON CONFLICT (tenant_id, signature_key) DO NOTHING",
            (tenant_id, signature_key, endpoint_id),
        )
        return self.endpoint_for_key(tenant_id, signature_key) == endpoint_id

    # ---- the KeyPackage directory ---------------------------------------------------------------------
    def directory_ref_exists(self, client_id: str, ref: bytes) -> bool:
        sql = "SELECT 1 FROM directory_key_packages WHERE client_id = ? AND ref = ?"
        return self._dir_one(sql, client_id, ref) is not None

    def add_directory_key_packages(self, records: list[DirectoryKeyPackage]) -> None:
        now = time.time()
        for k in records:
            if k.last_resort:
                self._retire_last_resort(k.client_id)
            self._c.execute(
                "INSERT INTO directory_key_packages (client_id, ref, cipher_suite, key_package, last_resort, "
                "claimed_at, created_at) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (k.client_id, k.ref, k.cipher_suite, k.key_package, int(k.last_resort), now),
            )

    def _retire_last_resort(self, client_id: str) -> None:
        """The previous last resort goes: deleted if never handed out, else kept (claimed) for routing."""
        c = self._c
        c.execute(
            "DELETE FROM directory_key_packages "
            "WHERE client_id = ? AND last_resort = 1 AND claimed_at IS NULL",
            (client_id,),
        )
        c.execute(
            "UPDATE directory_key_packages SET last_resort = 0 WHERE client_id = ? AND last_resort = 1",
            (client_id,),
        )

    def directory_status(self, client_id: str) -> DirectoryStatus:
        r = self._dir_one(
            "SELECT COALESCE(SUM(CASE WHEN last_resort = 0 AND claimed_at IS NULL THEN 1 ELSE 0 END), 0) "
            "AS available, "
            "COALESCE(MAX(last_resort), 0) AS last_resort FROM directory_key_packages WHERE client_id = ?",
            client_id,
        )
        assert r is not None
        return DirectoryStatus(int(r["available"]), bool(r["last_resort"]))

    def next_directory_key_package(
        self, client_id: str, cipher_suite: int | None
    ) -> DirectoryKeyPackage | None:
        suite_clause = "" if cipher_suite is None else " AND cipher_suite = ?"
        suite_args: tuple[int, ...] = () if cipher_suite is None else (cipher_suite,)
        r = self._dir_one(
            "SELECT * FROM directory_key_packages WHERE client_id = ?"
            + suite_clause
            + " AND (last_resort = 1 OR claimed_at IS NULL) ORDER BY last_resort, created_at, rowid LIMIT 1",
            client_id,
            *suite_args,
        )
        return None if r is None else _directory_row(r)

    def claim_directory_key_package(self, client_id: str, ref: bytes) -> bool:
        cur = self._c.execute(
            "UPDATE directory_key_packages SET claimed_at = ? "
            "WHERE client_id = ? AND ref = ? AND (last_resort = 1 OR claimed_at IS NULL)",
            (time.time(), client_id, ref),
        )
        return cur.rowcount == 1

    def endpoint_for_key_package_ref(self, tenant_id: str, ref: bytes) -> str | None:
        r = self._dir_one(
            "SELECT d.client_id AS endpoint FROM directory_key_packages d "
            "JOIN clients c ON c.client_id = d.client_id WHERE d.ref = ? AND c.tenant_id = ? "
            "UNION ALL SELECT k.identity_id FROM key_packages k "
            "JOIN identities i ON i.identity_id = k.identity_id WHERE k.ref = ? AND i.tenant_id = ? LIMIT 1",
            ref,
            tenant_id,
            ref,
            tenant_id,
        )
        return None if r is None else str(r["endpoint"])


__all__ = [
    "ClientRecord",
    "DirectoryKeyPackage",
    "DirectoryStatus",
    "DirectoryTransaction",
    "SqliteDirectoryMixin",
]
