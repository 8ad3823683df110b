"""SQLite implementation of the gateway store (WAL mode, one connection per thread).

Writes use ``BEGIN IMMEDIATE`` so that a transaction takes the write lock up front and commits or rolls
back as a whole; reads (:meth:`SqliteStore.read_transaction`) use ``BEGIN DEFERRED`` under
``PRAGMA query_only``: one WAL snapshot, no write lock, so they never wait for writers nor block them;
``synchronous=FULL`` so that a committed transaction survives a crash of the process or the machine.
The schema is created on first use and versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .store import (
    AuditRecord,
    EpochConflict,
    GroupRecord,
    IdempotentResponse,
    Identity,
    KeyPackageRecord,
    StoreUnavailable,
    Tenant,
    TokenRecord,
)

#: 3: ``groups.version`` (compare-and-swap and the state cache's validation). 4: ``idempotency.identity_id``
#: (records erased with their identity; bodies sealed) and no ``outgoing`` table (written, never read). An
#: older database is upgraded in place when opened (:func:`_upgrade`); a migration tool is a later issue.
SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, tenant_id TEXT REFERENCES tenants(tenant_id), token_hash BLOB NOT NULL UNIQUE,
    created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS identities (
    identity_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), name TEXT NOT NULL,
    cipher_suite INTEGER NOT NULL, credential BLOB NOT NULL, signature_key_ref BLOB NOT NULL,
    signature_public_key BLOB NOT NULL, custody_signature TEXT NOT NULL, custody_hpke TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS identities_by_tenant ON identities(tenant_id);
CREATE TABLE IF NOT EXISTS key_packages (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, ref BLOB NOT NULL,
    key_package BLOB NOT NULL, init_key_ref BLOB NOT NULL, leaf_key_ref BLOB NOT NULL,
    last_resort INTEGER NOT NULL, consumed INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    PRIMARY KEY (identity_id, ref));
CREATE TABLE IF NOT EXISTS groups (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL, state BLOB NOT NULL, pending BLOB, updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (identity_id, group_id));
CREATE TABLE IF NOT EXISTS software_keys (key_ref BLOB PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, request_id TEXT NOT NULL, tenant_id TEXT,
    identity_id TEXT, group_id BLOB, epoch INTEGER, key_ref BLOB NOT NULL, operation TEXT NOT NULL,
    custody TEXT NOT NULL, ok INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TABLE IF NOT EXISTS psks (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, psk_id BLOB NOT NULL,
    sealed BLOB NOT NULL, PRIMARY KEY (identity_id, psk_id));
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, request_hash BLOB NOT NULL, status INTEGER NOT NULL,
    body BLOB NOT NULL, created_at REAL NOT NULL, identity_id TEXT, PRIMARY KEY (scope, key));
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency(created_at);
"""

#: After :data:`SCHEMA`: the index needs the column an older table gets in :func:`_upgrade` first.
_IDEMPOTENCY_IDENTITY_INDEX = (
    "CREATE INDEX IF NOT EXISTS idempotency_by_identity ON idempotency(identity_id) "
    "WHERE identity_id IS NOT NULL"
)


def _identity(row: sqlite3.Row) -> Identity:
    return Identity(
        row["identity_id"],
        row["tenant_id"],
        row["name"],
        row["cipher_suite"],
        row["credential"],
        row["signature_key_ref"],
        row["signature_public_key"],
        row["custody_signature"],
        row["custody_hpke"],
    )


def _key_package(row: sqlite3.Row) -> KeyPackageRecord:
    return KeyPackageRecord(
        row["ref"],
        row["identity_id"],
        row["key_package"],
        row["init_key_ref"],
        row["leaf_key_ref"],
        bool(row["last_resort"]),
        bool(row["consumed"]),
    )


def _group(row: sqlite3.Row) -> GroupRecord:
    return GroupRecord(
        row["identity_id"], row["group_id"], row["epoch"], row["state"], row["pending"], row["version"]
    )


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring a database of an older schema version up to :data:`SCHEMA_VERSION`.

    Steps in code for now: 2 -> 3 adds ``groups.version`` (existing rows start at 0); 3 -> 4 drops
    ``outgoing`` and adds ``idempotency.identity_id``. Idempotency rows of a version-3 database held their
    bodies in clear and no identity: there is no installed base, so they are deleted, not migrated. A
    migration tool with explicit, recorded steps comes with a later issue."""
    conn.executescript(SCHEMA)
    if "version" not in _columns(conn, "groups"):
        conn.execute("ALTER TABLE groups ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
    if "identity_id" not in _columns(conn, "idempotency"):
        conn.execute("DELETE FROM idempotency")
        conn.execute("ALTER TABLE idempotency ADD COLUMN identity_id TEXT")
    conn.execute(_IDEMPOTENCY_IDENTITY_INDEX)
    conn.execute("DROP TABLE IF EXISTS outgoing")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r["name"] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}


class SqliteTransaction:
    """The :class:`gateway.store.Transaction` of one SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return list(self._c.execute(sql, args).fetchall())

    # ---- tenants and tokens ---------------------------------------------------------------------
    def add_tenant(self, tenant: Tenant) -> None:
        self._c.execute("INSERT INTO tenants VALUES (?, ?, ?)", (tenant.tenant_id, tenant.name, time.time()))

    def list_tenants(self) -> list[Tenant]:
        return [
            Tenant(r["tenant_id"], r["name"]) for r in self._all("SELECT * FROM tenants ORDER BY created_at")
        ]

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        r = self._one("SELECT * FROM tenants WHERE tenant_id = ?", tenant_id)
        return None if r is None else Tenant(r["tenant_id"], r["name"])

    def add_token(self, token_id: str, tenant_id: str | None, token_hash: bytes) -> None:
        self._c.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, NULL)", (token_id, tenant_id, token_hash, time.time())
        )

    def token_by_hash(self, token_hash: bytes) -> TokenRecord | None:
        r = self._one("SELECT * FROM tokens WHERE token_hash = ?", token_hash)
        return None if r is None else TokenRecord(r["token_id"], r["tenant_id"], r["revoked_at"] is not None)

    def revoke_token(self, tenant_id: str, token_id: str) -> bool:
        cur = self._c.execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND tenant_id = ? AND revoked_at IS NULL",
            (time.time(), token_id, tenant_id),
        )
        return cur.rowcount == 1

    def count_admin_tokens(self) -> int:
        r = self._one("SELECT COUNT(*) AS n FROM tokens WHERE tenant_id IS NULL AND revoked_at IS NULL")
        return int(r["n"]) if r else 0

    # ---- identities and key packages --------------------------------------------------------------
    def add_identity(self, i: Identity) -> None:
        self._c.execute(
            "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                i.identity_id,
                i.tenant_id,
                i.name,
                i.cipher_suite,
                i.credential,
                i.signature_key_ref,
                i.signature_public_key,
                i.custody_signature,
                i.custody_hpke,
                time.time(),
            ),
        )

    def get_identity(self, tenant_id: str, identity_id: str) -> Identity | None:
        r = self._one(
            "SELECT * FROM identities WHERE identity_id = ? AND tenant_id = ?", identity_id, tenant_id
        )
        return None if r is None else _identity(r)

    def list_identities(self, tenant_id: str) -> list[Identity]:
        return [
            _identity(r)
            for r in self._all("SELECT * FROM identities WHERE tenant_id = ? ORDER BY created_at", tenant_id)
        ]

    def delete_identity(self, identity_id: str) -> None:
        # Its stored responses go with it: a replay of its requests must not answer their plaintexts.
        self._c.execute("DELETE FROM idempotency WHERE identity_id = ?", (identity_id,))
        self._c.execute("DELETE FROM identities WHERE identity_id = ?", (identity_id,))

    def add_key_package(self, k: KeyPackageRecord) -> None:
        self._c.execute(
            "INSERT INTO key_packages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                k.identity_id,
                k.ref,
                k.key_package,
                k.init_key_ref,
                k.leaf_key_ref,
                int(k.last_resort),
                int(k.consumed),
                time.time(),
            ),
        )

    def get_key_package(self, identity_id: str, ref: bytes) -> KeyPackageRecord | None:
        r = self._one("SELECT * FROM key_packages WHERE identity_id = ? AND ref = ?", identity_id, ref)
        return None if r is None else _key_package(r)

    def list_key_packages(self, identity_id: str) -> list[KeyPackageRecord]:
        return [
            _key_package(r)
            for r in self._all(
                "SELECT * FROM key_packages WHERE identity_id = ? ORDER BY created_at", identity_id
            )
        ]

    def mark_key_package_consumed(self, identity_id: str, ref: bytes) -> bool:
        cur = self._c.execute(
            "UPDATE key_packages SET consumed = 1 "
            "WHERE identity_id = ? AND ref = ? AND (consumed = 0 OR last_resort = 1)",
            (identity_id, ref),
        )
        return cur.rowcount == 1

    # ---- groups ---------------------------------------------------------------------------------------
    def get_group(self, identity_id: str, group_id: bytes) -> GroupRecord | None:
        r = self._one("SELECT * FROM groups WHERE identity_id = ? AND group_id = ?", identity_id, group_id)
        return None if r is None else _group(r)

    def list_groups(self, identity_id: str) -> list[GroupRecord]:
        return [
            _group(r)
            for r in self._all("SELECT * FROM groups WHERE identity_id = ? ORDER BY updated_at", identity_id)
        ]

    def get_group_version(self, identity_id: str, group_id: bytes) -> int | None:
        r = self._one(
            "SELECT version FROM groups WHERE identity_id = ? AND group_id = ?", identity_id, group_id
        )
        return None if r is None else int(r["version"])

    def put_group(self, g: GroupRecord, expected_version: int | None) -> int:
        now = time.time()
        if expected_version is None:
            try:
                self._c.execute(
                    "INSERT INTO groups (identity_id, group_id, epoch, state, pending, updated_at, version) "
                    "VALUES (?, ?, ?, ?, ?, ?, 1)",
                    (g.identity_id, g.group_id, g.epoch, g.state, g.pending, now),
                )
            except sqlite3.IntegrityError:
                raise EpochConflict("this identity is already a member of that group") from None
            return 1
        cur = self._c.execute(
            "UPDATE groups SET epoch = ?, state = ?, pending = ?, updated_at = ?, version = version + 1 "
            "WHERE identity_id = ? AND group_id = ? AND version = ?",
            (g.epoch, g.state, g.pending, now, g.identity_id, g.group_id, expected_version),
        )
        if cur.rowcount != 1:
            # The 409's wording is the API's (api-v1.md): a concurrent write of the group's state.
            raise EpochConflict("the group's epoch changed concurrently")
        return expected_version + 1

    def delete_group(self, identity_id: str, group_id: bytes) -> bool:
        cur = self._c.execute(
            "DELETE FROM groups WHERE identity_id = ? AND group_id = ?", (identity_id, group_id)
        )
        return cur.rowcount == 1

    # ---- keys, audit, idempotency --------- ------------------------------------------------------------
    def put_software_key(self, key_ref: bytes, sealed: bytes) -> None:
        self._c.execute("INSERT OR REPLACE INTO software_keys VALUES (?, ?)", (key_ref, sealed))

    def get_software_key(self, key_ref: bytes) -> bytes | None:
        r = self._one("SELECT sealed FROM software_keys WHERE key_ref = ?", key_ref)
        return None if r is None else bytes(r["sealed"])

    def delete_software_key(self, key_ref: bytes) -> None:
        self._c.execute("DELETE FROM software_keys WHERE key_ref = ?", (key_ref,))

    def put_psk(self, identity_id: str, psk_id: bytes, sealed: bytes) -> None:
        self._c.execute("INSERT OR REPLACE INTO psks VALUES (?, ?, ?)", (identity_id, psk_id, sealed))

    def list_psks(self, identity_id: str) -> list[tuple[bytes, bytes]]:
        return [
            (bytes(r["psk_id"]), bytes(r["sealed"]))
            for r in self._all("SELECT psk_id, sealed FROM psks WHERE identity_id = ?", identity_id)
        ]

    def add_audit(self, records: list[AuditRecord]) -> None:
        now = time.time()
        self._c.executemany(
            "INSERT INTO audit (at, request_id, tenant_id, identity_id, group_id, epoch, key_ref, operation, "
            "custody, ok) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    now,
                    a.request_id,
                    a.tenant_id,
                    a.identity_id,
                    a.group_id,
                    a.epoch,
                    a.key_ref,
                    a.operation,
                    a.custody,
                    int(a.ok),
                )
                for a in records
            ],
        )

    def counts(self) -> dict[str, int]:
        row = self._one("SELECT (SELECT COUNT(*) FROM identities) AS i, (SELECT COUNT(*) FROM groups) AS g")
        assert row is not None
        return {"identities": int(row["i"]), "groups": int(row["g"])}

    def get_idempotent(self, scope: str, key: str, not_before: float) -> IdempotentResponse | None:
        sql = "SELECT * FROM idempotency WHERE scope = ? AND key = ? AND created_at >= ?"
        r = self._one(sql, scope, key, not_before)
        return None if r is None else IdempotentResponse(r["request_hash"], r["status"], r["body"])

    def put_idempotent(
        self, scope: str, key: str, response: IdempotentResponse, identity_id: str | None
    ) -> None:
        # REPLACE: a row still there is an expired one (the caller found no live record in this transaction).
        self._c.execute(
            "INSERT OR REPLACE INTO idempotency (scope, key, request_hash, status, body, created_at, "
            "identity_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (scope, key, response.request_hash, response.status, response.body, time.time(), identity_id),
        )

    def purge_idempotent(self, older_than: float) -> int:
        cur = self._c.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,))
        return cur.rowcount


class SqliteStore:
    """A store in one SQLite database file."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self.transaction() as tx:
            del tx  # schema created by _connect

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
            )
            conn.row_factory = sqlite3.Row
            for pragma in (
                "journal_mode = WAL",
                "synchronous = FULL",
                "foreign_keys = ON",
                f"busy_timeout = {self._busy_ms}",
            ):
                conn.execute(f"PRAGMA {pragma}")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                _upgrade(conn)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open the database: {e}") from None
        self._local.conn = conn
        with self._lock:
            self._all_conns.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        """A transaction that may write: ``BEGIN IMMEDIATE`` takes the write lock up front."""
        with self._transaction("BEGIN IMMEDIATE") as tx:
            yield tx

    @contextmanager
    def read_transaction(self) -> Iterator[SqliteTransaction]:
        """A read-only transaction: one snapshot, no write lock (``query_only`` refuses any write)."""
        conn = self._connect()
        try:
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot start a transaction: {e}") from None
        try:
            with self._transaction("BEGIN DEFERRED") as tx:
                yield tx
        finally:
            conn.execute("PRAGMA query_only = OFF")

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[SqliteTransaction]:
        conn = self._connect()
        try:
            conn.execute(begin)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot start a transaction: {e}") from None
        try:
            yield SqliteTransaction(conn)
        except sqlite3.Error as e:
            conn.execute("ROLLBACK")
            raise StoreUnavailable(f"database error: {e}") from None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.execute("ROLLBACK")
            raise StoreUnavailable(f"commit failed: {e}") from None

    def ping(self) -> None:
        try:
            self._connect().execute("SELECT 1").fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(str(e)) from None

    def close(self) -> None:
        with self._lock:
            for conn in self._all_conns:
                conn.close()
            self._all_conns.clear()
        self._local = threading.local()
