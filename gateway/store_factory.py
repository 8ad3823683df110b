"""The one place a configured store is opened: SQLite for a file path, PostgreSQL for a ``postgresql://``
URL (``[gateway] database`` / ``MLSGW_DATABASE``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .postgres_store import PostgresStore
from .sqlite_store import SqliteStore

if TYPE_CHECKING:
    from .config import GatewayConfig

#: ``mls-gateway backup``/``restore`` on PostgreSQL (README "Backup and restore").
POSTGRES_BACKUP_REFUSAL = (
    "the database is PostgreSQL: back it up with pg_dump or the server's continuous archiving (PITR), "
    "and the HSM token with its own tools; mls-gateway backup/restore copy a SQLite data folder only"
)


def open_store(config: GatewayConfig) -> SqliteStore | PostgresStore:
    """The store ``config`` names, opened (schema created or migrated)."""
    url = config.postgres_url
    if url is None:
        return SqliteStore(config.database_path, migrate=config.migrate_on_start)
    # Each worker may hold a write transaction and a read nested in it; token checks and the background
    # tasks (readiness, hosted delivery, webhooks, retention, rotation) read on threads of their own.
    return PostgresStore(
        url,
        pool_size=2 * config.worker_pool_threads + config.auth_threads + 6,
        migrate=config.migrate_on_start,
    )


__all__ = ["POSTGRES_BACKUP_REFUSAL", "open_store"]
