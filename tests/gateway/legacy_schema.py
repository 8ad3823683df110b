"""Databases as the gateway made them before versioned migrations (gateway.schema_migrations): the schema
steps of gateway.sqlite_schema run on a plain connection, no migration recorded, ``PRAGMA user_version``
the version reached."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.sqlite_schema import SCHEMA_VERSION, upgrade

#: What version 6 added over version 5 (gateway.sqlite_schema.upgrade's docstring), undone for a version-5
#: database: its tables and index, the audit chain's columns and the erase-only trigger (back to the
#: append-only one).
_BACK_TO_5 = """
DROP TABLE group_ratchets; DROP TABLE credential_policies; DROP TABLE audit_checkpoints;
DROP TABLE tenant_retention; DROP INDEX group_members_with_endpoint; DROP INDEX audit_by_tenant;
DROP TRIGGER audit_erase_only;
ALTER TABLE audit DROP COLUMN token_id; ALTER TABLE audit DROP COLUMN detail;
ALTER TABLE audit DROP COLUMN prev_hash; ALTER TABLE audit DROP COLUMN hash;
ALTER TABLE audit DROP COLUMN purged_by;
CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
PRAGMA user_version = 5;
"""


def pre_migration_database(path: Path, version: int = SCHEMA_VERSION) -> None:
    """A database at ``version`` (6: what the last gateway before migrations made; 5: the one before),
    without any migration recorded."""
    assert version in (5, SCHEMA_VERSION)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        upgrade(conn)
        conn.execute("COMMIT")
        if version == 5:
            conn.executescript(_BACK_TO_5)
    finally:
        conn.close()
