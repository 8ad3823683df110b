"""SQLite implementation of the gateway store (WAL mode, one connection per thread for writing and one
for reading).

Writes use ``BEGIN IMMEDIATE`` so that a transaction takes the write lock up front and commits or rolls
back as a whole; reads (:meth:`SqliteStore.read_transaction`) use ``BEGIN DEFERRED`` on a connection of
their own under ``PRAGMA query_only``: one WAL snapshot, no write lock, so they never wait for writers nor
block them. Durability is a group commit (:mod:`gateway.sqlite_durability`): ``synchronous = NORMAL``
and, after each write transaction's ``COMMIT`` and before the block returns, a wait for a shared
``fsync`` of the WAL, so a committed transaction survives a crash of the process or the machine and
concurrent writers share one ``fsync``. The schema is created, or brought up to date, when the store
opens, by the versioned migrations of :mod:`gateway.schema_migrations` (once per store, before its first
connection).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from .quotas import SqliteQuotaMixin
from .schema_migrations import prepare
from .sqlite_append_locks import AppendLocks
from .sqlite_audit import SqliteAuditMixin, add_chained
from .sqlite_credentials import SqliteCredentialMixin
from .sqlite_delivery import SqliteDeliveryMixin
from .sqlite_directory import SqliteDirectoryMixin
from .sqlite_durability import WalSync
from .sqlite_erasure import WalErasure
from .sqlite_groups import SqliteGroupsMixin
from .sqlite_leases import SqliteLeaseMixin
from .sqlite_mailboxes import SqliteMailboxMixin
from .sqlite_rewrap import SqliteRewrapMixin
from .sqlite_schema import SCHEMA_VERSION as SCHEMA_VERSION  # the baseline's user_version (tests read it)
from .sqlite_tenants import SqliteTenantAdminMixin
from .sqlite_webhooks import SqliteWebhookMixin
from .sqlite_write_queue import WriteQueue, probe_write_lock
from .store import (
    AuditRecord,
    IdempotentResponse,
    Identity,
    KeyPackageRecord,
    StoreFault,
    StoreUnavailable,
    Tenant,
    TokenRecord,
)

#: SQLite's primary result codes for "not now": BUSY, LOCKED, NOMEM, INTERRUPT, IOERR, FULL, CANTOPEN,
#: PROTOCOL. Every other failed statement (CONSTRAINT, READONLY — a write in a read transaction —, ERROR,
#: MISMATCH, CORRUPT, …) is a :class:`StoreFault`: retrying will not help.
_TRANSIENT_CODES = frozenset({5, 6, 7, 9, 10, 13, 14, 15})


def _statement_error(what: str, e: sqlite3.Error) -> StoreUnavailable:
    """:class:`StoreUnavailable` for a statement SQLite could not run now, else :class:`StoreFault`."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is None and isinstance(e, sqlite3.OperationalError):
        return StoreUnavailable(f"{what}: {e}")
    if code is not None and code & 0xFF in _TRANSIENT_CODES:
        return StoreUnavailable(f"{what}: {e}")
    return StoreFault(f"{what}: {type(e).__name__} ({getattr(e, 'sqlite_errorname', 'no SQLite code')})")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the connection's transaction, if SQLite has not already: after FULL, IOERR, NOMEM, BUSY
    or INTERRUPT it may have rolled it back itself, and a second ``ROLLBACK`` would raise."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


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
        bool(row["auto_join"]),
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


class SqliteTransaction(
    SqliteGroupsMixin,
    SqliteDirectoryMixin,
    SqliteDeliveryMixin,
    SqliteWebhookMixin,
    SqliteMailboxMixin,
    SqliteTenantAdminMixin,
    SqliteCredentialMixin,
    SqliteAuditMixin,
    SqliteRewrapMixin,
    SqliteQuotaMixin,
    SqliteLeaseMixin,
):
    """The :class:`gateway.store.Transaction` of one SQLite transaction."""

    # ---- tenants and tokens ---------------------------------------------------------------------
    def add_tenant(self, tenant: Tenant) -> None:
        self._c.execute(
            "INSERT INTO tenants (tenant_id, name, created_at, custody_mode) VALUES (?, ?, ?, ?)",
            (tenant.tenant_id, tenant.name, time.time(), tenant.custody_mode),
        )

    def list_tenants(self) -> list[Tenant]:
        return [
            Tenant(r["tenant_id"], r["name"], r["custody_mode"])
            for r in self._all("SELECT * FROM tenants ORDER BY created_at")
        ]

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        r = self._one("SELECT * FROM tenants WHERE tenant_id = ?", tenant_id)
        return None if r is None else Tenant(r["tenant_id"], r["name"], r["custody_mode"])

    def add_token(
        self, token_id: str, tenant_id: str | None, token_hash: bytes, client_id: str | None = None
    ) -> None:
        self._c.execute(
            "INSERT INTO tokens (token_id, tenant_id, token_hash, created_at, client_id) "
            "VALUES (?, ?, ?, ?, ?)",
            (token_id, tenant_id, token_hash, time.time(), client_id),
        )

    def token_by_hash(self, token_hash: bytes) -> TokenRecord | None:
        r = self._one("SELECT * FROM tokens WHERE token_hash = ?", token_hash)
        return (
            None
            if r is None
            else TokenRecord(r["token_id"], r["tenant_id"], r["revoked_at"] is not None, r["client_id"])
        )

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
            "INSERT INTO identities (identity_id, tenant_id, name, cipher_suite, credential, "
            "signature_key_ref, signature_public_key, custody_signature, custody_hpke, created_at, "
            "auto_join) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                int(i.auto_join),
            ),
        )
        # A hosted identity's leaves are found by its signature key (api-delivery.md "Endpoints").
        self._c.execute(
            "INSERT INTO endpoint_keys (tenant_id, signature_key, endpoint_id) VALUES (?, ?, ?) "
            "ON CONFLICT (tenant_id, signature_key) DO UPDATE SET endpoint_id = excluded.endpoint_id",
            (i.tenant_id, i.signature_public_key, i.identity_id),
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
        self._c.execute("DELETE FROM endpoint_keys WHERE endpoint_id = ?", (identity_id,))
        # Its leaves are no longer delivered to (api-delivery.md); its pending work and inbox go (cascade).
        self._c.execute("UPDATE group_members SET endpoint_id = NULL WHERE endpoint_id = ?", (identity_id,))

    def add_key_package(self, k: KeyPackageRecord) -> None:
        self._c.execute(
            "INSERT INTO key_packages (identity_id, ref, key_package, init_key_ref, leaf_key_ref, "
            "last_resort, consumed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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

    # ---- keys, audit, idempotency --------- ------------------------------------------------------------
    def put_software_key(self, key_ref: bytes, sealed: bytes) -> None:
        self._c.execute(
            "INSERT INTO software_keys (key_ref, sealed) VALUES (?, ?) "
            "ON CONFLICT (key_ref) DO UPDATE SET sealed = excluded.sealed",
            (key_ref, sealed),
        )

    def get_software_key(self, key_ref: bytes) -> bytes | None:
        r = self._one("SELECT sealed FROM software_keys WHERE key_ref = ?", key_ref)
        return None if r is None else bytes(r["sealed"])

    def delete_software_key(self, key_ref: bytes) -> None:
        self._c.execute("DELETE FROM software_keys WHERE key_ref = ?", (key_ref,))

    def list_software_key_refs(self) -> list[bytes]:
        return [bytes(r["key_ref"]) for r in self._all("SELECT key_ref FROM software_keys")]

    def put_wrapped_key(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None:
        self._c.execute(
            "INSERT INTO wrapped_keys (key_ref, blob, kek_id, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key_ref) DO UPDATE SET blob = excluded.blob, kek_id = excluded.kek_id, "
            "created_at = excluded.created_at",
            (key_ref, blob, kek_id, time.time()),
        )

    def get_wrapped_key(self, key_ref: bytes) -> bytes | None:
        r = self._one("SELECT blob FROM wrapped_keys WHERE key_ref = ?", key_ref)
        return None if r is None else bytes(r["blob"])

    def delete_wrapped_key(self, key_ref: bytes) -> None:
        self._c.execute("DELETE FROM wrapped_keys WHERE key_ref = ?", (key_ref,))

    def list_wrapped_key_refs(self) -> list[bytes]:
        return [bytes(r["key_ref"]) for r in self._all("SELECT key_ref FROM wrapped_keys")]

    def put_psk(self, identity_id: str, psk_id: bytes, sealed: bytes) -> None:
        self._c.execute(
            "INSERT INTO psks (identity_id, psk_id, sealed) VALUES (?, ?, ?) "
            "ON CONFLICT (identity_id, psk_id) DO UPDATE SET sealed = excluded.sealed",
            (identity_id, psk_id, sealed),
        )

    def list_psks(self, identity_id: str) -> list[tuple[bytes, bytes]]:
        return [
            (bytes(r["psk_id"]), bytes(r["sealed"]))
            for r in self._all("SELECT psk_id, sealed FROM psks WHERE identity_id = ?", identity_id)
        ]

    def add_audit(self, records: list[AuditRecord]) -> None:
        add_chained(self._c, records)  # the hash chain (gateway.audit_chain), in this transaction

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
            "INSERT INTO idempotency (scope, key, request_hash, status, body, created_at, identity_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET "
            "request_hash = excluded.request_hash, status = excluded.status, body = excluded.body, "
            "created_at = excluded.created_at, identity_id = excluded.identity_id",
            (scope, key, response.request_hash, response.status, response.body, time.time(), identity_id),
        )

    def purge_idempotent(self, older_than: float) -> int:
        cur = self._c.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,))
        return cur.rowcount


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


class SqliteStore:
    """A store in one SQLite database file."""

    lookup_is_local = True  # Store.lookup_is_local

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0, migrate: bool = True) -> None:
        """Open (or create) the database and check its schema (:func:`gateway.schema_migrations.prepare`):
        pending migrations are applied, or, without ``migrate`` (``migrate_on_start = false``), refused
        unless the database is new; a migration this code does not know is always refused."""
        self.path = Path(path)
        prepare(str(self.path), apply=migrate)  # SchemaError, or StoreUnavailable: cannot be opened
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        #: The shared fsync of committed write transactions (group commit).
        self.durability = WalSync(self.path)
        #: The background checkpoint erasing replaced sealed states (:mod:`.sqlite_erasure`), not awaited.
        self.erasure = WalErasure(self.path)
        #: Hosted members' appends to one group, serialised across processes (:meth:`serialise_appends`).
        self.append_locks = AppendLocks(self.path, busy_timeout_s)
        self.write_queue = WriteQueue(self.path, busy_timeout_s)  # writers wait in turn, not by sleeping
        with self.transaction() as tx:
            del tx  # the writing connection opens (and the WAL file with it)

    def _connect(self, *, reader: bool = False) -> sqlite3.Connection:
        """This thread's writing connection, or (``reader``) its reading one, which is ``query_only``."""
        name = "reader" if reader else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is not None:
            return conn
        if reader:
            self._connect()  # the writing connection first: WAL mode and the schema before any read
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
            )
            conn.row_factory = sqlite3.Row
            for pragma in (
                "journal_mode = WAL",
                "synchronous = NORMAL",  # + the group-commit fsync of :class:`WalSync`
                "foreign_keys = ON",
                f"busy_timeout = {self._busy_ms}",
                "secure_delete = ON",  # freed pages zeroed: gateway.sqlite_erasure
            ):
                conn.execute(f"PRAGMA {pragma}")
            if reader:
                conn.execute("PRAGMA query_only = ON")
            else:
                self.erasure.watch(conn)  # marks transactions that replace or delete sealed state
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open the database: {e}") from None
        setattr(self._local, name, conn)
        with self._lock:
            self._all_conns.append(conn)
        return conn

    @contextmanager
    def transaction(self, group: bytes | None = None) -> Iterator[SqliteTransaction]:
        """A transaction that may write: in the write queue (:mod:`.sqlite_write_queue`), ``BEGIN IMMEDIATE``
        takes the write lock (one writer: ``group`` makes no difference); returns once its commit is on
        disk (a shared fsync, WalSync)."""
        conn = self._connect()
        changes = conn.total_changes
        tickets: list[int] = []
        self.erasure.take_due()  # forget a mark of an earlier, rolled-back transaction

        def commit(c: sqlite3.Connection) -> None:
            if c.total_changes == changes:  # nothing to make durable
                c.execute("COMMIT")
            else:
                tickets.append(self.durability.commit(c))

        with self.write_queue.hold(), self._transaction(conn, "BEGIN IMMEDIATE", commit) as tx:
            yield tx
        if tickets:
            self._wait_durable(tickets[0])
            if self.erasure.take_due():  # a sealed state was replaced or deleted: its old bytes go, soon
                self.erasure.request()

    def sync(self) -> None:
        """Return once every transaction committed so far is on disk (a shared fsync when one is due)."""
        self._wait_durable(None)

    def _wait_durable(self, ticket: int | None) -> None:
        try:
            self.durability.wait_durable(ticket)
        except OSError as e:
            raise StoreUnavailable(f"cannot sync the database: {e}") from None

    def serialise_appends(self, tenant_id: str, group: bytes) -> AbstractContextManager[None]:
        """An exclusive ``flock`` shared by every process on this database (:mod:`.sqlite_append_locks`)."""
        return self.append_locks.hold(tenant_id, group)

    def lookup(self) -> AbstractContextManager[SqliteTransaction]:
        """One ``SELECT`` (:meth:`gateway.store.Store.lookup`) in autocommit on the ``query_only`` reading
        connection: its own snapshot, no ``BEGIN``/``COMMIT``; inside a read transaction, within that."""
        return self._reading(self._connect(reader=True))

    @contextmanager
    def _reading(self, conn: sqlite3.Connection) -> Iterator[SqliteTransaction]:
        try:
            yield SqliteTransaction(conn)
        except sqlite3.Error as e:
            raise _statement_error("database error", e) from None

    @contextmanager
    def read_transaction(self) -> Iterator[SqliteTransaction]:
        """A read-only transaction on the thread's reading connection: one snapshot, no write lock
        (``query_only`` refuses any write). Inside another read of the same thread (e.g. a blob's KEK
        looked up while a page of blobs is read) it reads within that snapshot."""
        conn = self._connect(reader=True)
        if conn.in_transaction:
            with self._reading(conn) as inner:
                yield inner
            return
        with self._transaction(conn, "BEGIN DEFERRED", _commit) as tx:
            yield tx

    @contextmanager
    def _transaction(
        self, conn: sqlite3.Connection, begin: str, commit: Callable[[sqlite3.Connection], None]
    ) -> Iterator[SqliteTransaction]:
        try:
            conn.execute(begin)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot start a transaction: {e}") from None
        try:
            yield SqliteTransaction(conn)
        except sqlite3.Error as e:
            _rollback(conn)
            raise _statement_error("database error", e) from None
        except BaseException:
            _rollback(conn)
            raise
        try:
            commit(conn)
        except sqlite3.Error as e:
            _rollback(conn)
            raise _statement_error("commit failed", e) from None

    def write_probe(self, timeout_s: float) -> str | None:
        """``None`` if the write queue and the write lock can be taken within ``timeout_s`` (nothing is
        written: :func:`gateway.sqlite_write_queue.probe_write_lock`), else why not."""
        return probe_write_lock(self.path, timeout_s)

    def ping(self) -> None:
        try:
            self._connect().execute("SELECT 1").fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(str(e)) from None

    def close(self) -> None:
        self.erasure.close()
        self.write_queue.close()
        with self._lock:
            for conn in self._all_conns:
                conn.close()
            self._all_conns.clear()
        self._local = threading.local()
