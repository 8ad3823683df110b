"""The SQLite schema of the gateway store, and its upgrade from older schema versions.

:func:`upgrade` is the baseline migration ``0001.baseline`` of :mod:`gateway.schema_migrations`
(``gateway/migrations/sqlite/``): it creates the schema, or brings a database made before migrations (one
whose ``PRAGMA user_version`` is 2..6) to it, inside the migration's transaction. From then on every schema
change is a new migration file, recorded by yoyo; ``PRAGMA user_version`` stays at :data:`SCHEMA_VERSION`,
the version the baseline reached (what older gateways and ``mls-gateway backup`` read).

**Frozen.** Because :func:`upgrade` *is* ``0001.baseline``, nothing here changes once released: a database
that applied the baseline never runs it again, so a table added here would never reach it. Every schema
change is a new file in ``gateway/migrations/sqlite/`` (and its twin in ``gateway/migrations/postgresql/``),
e.g. ``0002.leases_notifications.sql`` (leases and cross-process wake-ups, issue 15).
"""

from __future__ import annotations

import sqlite3

#: 3: ``groups.version`` (compare-and-swap and the state cache's validation). 4: ``idempotency.identity_id``
#: (records erased with their identity; bodies sealed) and no ``outgoing`` table (written, never read).
#: 5: the group service (:data:`DELIVERY_SCHEMA`), ``groups.applied_seq`` (the last log entry applied to a
#: hosted membership), ``identities.auto_join`` and ``tokens.client_id``. 6: tenant credential policies,
#: the audit hash chain and its checkpoints, per-tenant retention, and the ratchet-state rows of the hot path
#: (``group_ratchets``).
SCHEMA_VERSION = 6

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL,
    custody_mode TEXT NOT NULL DEFAULT 'token');
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, tenant_id TEXT REFERENCES tenants(tenant_id), token_hash BLOB NOT NULL UNIQUE,
    created_at REAL NOT NULL, revoked_at REAL, client_id TEXT);
CREATE TABLE IF NOT EXISTS identities (
    identity_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), name TEXT NOT NULL,
    cipher_suite INTEGER NOT NULL, credential BLOB NOT NULL, signature_key_ref BLOB NOT NULL,
    signature_public_key BLOB NOT NULL, custody_signature TEXT NOT NULL, custody_hpke TEXT NOT NULL,
    created_at REAL NOT NULL, auto_join INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS identities_by_tenant ON identities(tenant_id);
CREATE TABLE IF NOT EXISTS key_packages (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, ref BLOB NOT NULL,
    key_package BLOB NOT NULL, init_key_ref BLOB NOT NULL, leaf_key_ref BLOB NOT NULL,
    last_resort INTEGER NOT NULL, consumed INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    PRIMARY KEY (identity_id, ref));
CREATE TABLE IF NOT EXISTS groups (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL, state BLOB NOT NULL, pending BLOB, updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0, applied_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (identity_id, group_id));
CREATE TABLE IF NOT EXISTS software_keys (key_ref BLOB PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS wrapped_keys (
    key_ref BLOB PRIMARY KEY, blob BLOB NOT NULL, kek_id BLOB NOT NULL, created_at REAL NOT NULL);
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
-- KEK rotation (gateway.kek_rotation): every KEK version of the token, per kind ('envelope': the wrap key
-- of sealed state; 'custody': the wrapped-custody KEK), state 'current' | 'retiring' | 'destroyed'.
CREATE TABLE IF NOT EXISTS keks (
    label TEXT PRIMARY KEY, kind TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL, retired_at REAL, destroyed_at REAL, UNIQUE (kind, version));
"""


#: The group service (api-delivery.md): clients, the signature keys of every endpoint, the KeyPackage
#: directory, each group's log (head, members, entries), mailboxes (clients), inboxes (hosted identities,
#: events sealed), hosted members' pending log work, webhooks. Mailbox items point into ``log_entries``
#: (a commit's bytes are stored once, not once per recipient).
DELIVERY_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), name TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS clients_by_tenant ON clients(tenant_id);
CREATE TABLE IF NOT EXISTS endpoint_keys (
    tenant_id TEXT NOT NULL, signature_key BLOB NOT NULL, endpoint_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, signature_key));
CREATE INDEX IF NOT EXISTS endpoint_keys_by_endpoint ON endpoint_keys(endpoint_id);
CREATE TABLE IF NOT EXISTS directory_key_packages (
    client_id TEXT NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE, ref BLOB NOT NULL,
    cipher_suite INTEGER NOT NULL, key_package BLOB NOT NULL, last_resort INTEGER NOT NULL,
    claimed_at REAL, created_at REAL NOT NULL, PRIMARY KEY (client_id, ref));
CREATE INDEX IF NOT EXISTS directory_by_ref ON directory_key_packages(ref);
CREATE TABLE IF NOT EXISTS group_logs (
    tenant_id TEXT NOT NULL, group_id BLOB NOT NULL, cipher_suite INTEGER NOT NULL, epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL, group_info BLOB NOT NULL, ratchet_tree BLOB NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (tenant_id, group_id));
CREATE TABLE IF NOT EXISTS group_members (
    tenant_id TEXT NOT NULL, group_id BLOB NOT NULL, leaf_index INTEGER NOT NULL, endpoint_id TEXT,
    PRIMARY KEY (tenant_id, group_id, leaf_index));
CREATE INDEX IF NOT EXISTS group_members_by_endpoint ON group_members(endpoint_id);
CREATE TABLE IF NOT EXISTS log_entries (
    tenant_id TEXT NOT NULL, group_id BLOB NOT NULL, seq INTEGER NOT NULL, epoch INTEGER NOT NULL,
    kind TEXT NOT NULL, sender TEXT, message BLOB NOT NULL, welcome BLOB, group_info BLOB, ratchet_tree BLOB,
    digest BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (tenant_id, group_id, seq));
CREATE INDEX IF NOT EXISTS log_entries_by_digest ON log_entries(tenant_id, group_id, digest);
CREATE TABLE IF NOT EXISTS log_welcomes (
    tenant_id TEXT NOT NULL, group_id BLOB NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (tenant_id, digest));
CREATE TABLE IF NOT EXISTS mailbox (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL REFERENCES clients(client_id) ON DELETE CASCADE, tenant_id TEXT NOT NULL,
    group_id BLOB NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS mailbox_by_client ON mailbox(client_id, cursor);
CREATE TABLE IF NOT EXISTS inbox (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, group_id BLOB NOT NULL,
    seq INTEGER NOT NULL, event BLOB NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_by_identity ON inbox(identity_id, cursor);
CREATE INDEX IF NOT EXISTS inbox_by_seq ON inbox(identity_id, group_id, seq);
CREATE TABLE IF NOT EXISTS hosted_pending (
    identity_id TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE, tenant_id TEXT NOT NULL,
    group_id BLOB NOT NULL, up_to_seq INTEGER NOT NULL, PRIMARY KEY (identity_id, group_id));
-- hot path (issue 13): a membership's sealed ratchet state, written by application messages in place of
-- the full state's secret trees; while it exists, its version and applied_seq are the membership's (the
-- groups row, with its large state, is not rewritten); a write of the full state deletes it.
CREATE TABLE IF NOT EXISTS group_ratchets (
    identity_id TEXT NOT NULL, group_id BLOB NOT NULL, version INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL, sealed BLOB NOT NULL,
    PRIMARY KEY (identity_id, group_id),
    FOREIGN KEY (identity_id, group_id) REFERENCES groups(identity_id, group_id) ON DELETE CASCADE);
-- the members a message is delivered to, without reading every leaf of a large group
CREATE INDEX IF NOT EXISTS group_members_with_endpoint ON group_members(tenant_id, group_id, leaf_index)
    WHERE endpoint_id IS NOT NULL;
-- end hot path
CREATE TABLE IF NOT EXISTS webhooks (
    identity_id TEXT PRIMARY KEY REFERENCES identities(identity_id) ON DELETE CASCADE, url TEXT NOT NULL,
    secret BLOB NOT NULL, delivered_cursor INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    failing_since REAL, next_attempt_at REAL, paused INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
-- Credential policies (issue 16, gateway.credential_policy): one canonical JSON document per tenant.
CREATE TABLE IF NOT EXISTS credential_policies (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(tenant_id) ON DELETE CASCADE, document TEXT NOT NULL,
    updated_at REAL NOT NULL);
"""

#: After :data:`SCHEMA`: the index needs the column an older table gets in :func:`_upgrade` first.
_IDEMPOTENCY_IDENTITY_INDEX = (
    "CREATE INDEX IF NOT EXISTS idempotency_by_identity ON idempotency(identity_id) "
    "WHERE identity_id IS NOT NULL"
)


#: Columns added to tables of older versions: (table, column, definition).
_ADDED_COLUMNS = [
    ("groups", "version", "INTEGER NOT NULL DEFAULT 0"),
    ("groups", "applied_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("identities", "auto_join", "INTEGER NOT NULL DEFAULT 1"),
    ("tokens", "client_id", "TEXT"),
    ("tenants", "custody_mode", "TEXT NOT NULL DEFAULT 'token'"),
    # -- audit chain and retention (issue 16, gateway.audit_chain / gateway.retention) --
    ("audit", "token_id", "TEXT"),
    ("audit", "detail", "TEXT"),
    ("audit", "prev_hash", "BLOB"),
    ("audit", "hash", "BLOB"),
    ("audit", "purged_by", "INTEGER"),
    # -- end audit chain and retention --
]

# -- audit chain and retention (issue 16): checkpoints signed in the HSM (gateway.audit_chain), each
# tenant's retention overrides and legal hold (gateway.retention). The audit table's update trigger is
# replaced by one that allows a single kind of update: retention erasing a row's contents in place,
# keeping its seq, time, tenant and chain link (hash, prev_hash) and naming the purge (purged_by).
AUDIT_CHAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER PRIMARY KEY, head BLOB NOT NULL, at_ms INTEGER NOT NULL, signature BLOB NOT NULL,
    key_label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenant_retention (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(tenant_id) ON DELETE CASCADE, mailbox_s REAL,
    idempotency_s REAL, audit_s REAL, legal_hold INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit(tenant_id, at);
DROP TRIGGER IF EXISTS audit_append_only_update;
CREATE TRIGGER IF NOT EXISTS audit_erase_only BEFORE UPDATE ON audit
    WHEN NOT (OLD.purged_by IS NULL AND NEW.purged_by IS NOT NULL AND NEW.seq = OLD.seq AND NEW.at = OLD.at
        AND NEW.tenant_id IS OLD.tenant_id AND NEW.hash = OLD.hash AND NEW.prev_hash = OLD.prev_hash
        AND NEW.request_id = '' AND NEW.identity_id IS NULL AND NEW.token_id IS NULL AND NEW.group_id IS NULL
        AND NEW.epoch IS NULL AND NEW.key_ref = X'' AND NEW.operation = '' AND NEW.custody = ''
        AND NEW.ok = 0 AND NEW.detail IS NULL)
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only (retention only erases them)'); END;
"""
# -- end audit chain and retention --


def upgrade(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring a database of an older schema version up to :data:`SCHEMA_VERSION`.

    2 -> 3 adds ``groups.version`` (existing rows start at 0); 3 -> 4 drops ``outgoing`` and adds
    ``idempotency.identity_id`` (idempotency rows of a version-3 database held their bodies in clear and
    no identity: there is no installed base, so they are deleted, not migrated); 4 -> 5 adds the group
    service's tables and columns and registers every identity's signature key as its endpoint's; 5 -> 6 adds
    the tables and columns of credential policies, the audit chain, retention and ratchet states (audit
    records of a version-5 database have no chain link: ``audit verify`` reports them as before the chain).

    Statement by statement (no ``executescript``, which commits): the caller's transaction holds it all."""
    _execute_script(conn, SCHEMA + DELIVERY_SCHEMA)
    for table, column, definition in _ADDED_COLUMNS:
        if column not in _columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    if "identity_id" not in _columns(conn, "idempotency"):
        conn.execute("DELETE FROM idempotency")
        conn.execute("ALTER TABLE idempotency ADD COLUMN identity_id TEXT")
    conn.execute(_IDEMPOTENCY_IDENTITY_INDEX)
    _execute_script(conn, AUDIT_CHAIN_SCHEMA)  # after the audit columns it names (issue 16)
    conn.execute("DROP TABLE IF EXISTS outgoing")
    conn.execute(
        "INSERT OR IGNORE INTO endpoint_keys (tenant_id, signature_key, endpoint_id) "
        "SELECT tenant_id, signature_public_key, identity_id FROM identities"
    )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run each statement of ``script`` in turn (a trigger's body is kept whole: a statement ends where
    :func:`sqlite3.complete_statement` says so)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in statement.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement in the schema: {statement.strip()[:60]}")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
