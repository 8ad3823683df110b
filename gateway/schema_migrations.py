"""Versioned schema migrations with yoyo-migrations (PostgreSQL here; the SQLite side is a later step).

:func:`migrate` applies the pending migrations of ``gateway/migrations/postgresql/`` to a ``postgresql://``
URL (yoyo's psycopg 3 backend, ``postgresql+psycopg://``) under yoyo's lock table, so several processes
starting at once apply each migration once.
"""

from __future__ import annotations

from pathlib import Path

from yoyo import get_backend, read_migrations

#: The migration folders, one per store kind.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _yoyo_url(database: str) -> str:
    scheme, sep, rest = database.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError("schema migrations here take a postgresql:// URL")
    return f"postgresql+psycopg://{rest}"


def migrate(database: str) -> list[str]:
    """Apply the pending migrations of the PostgreSQL database at the URL ``database``; their ids."""
    backend = get_backend(_yoyo_url(database))
    try:
        migrations = read_migrations(str(MIGRATIONS / "postgresql"))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    finally:
        backend.connection.close()


__all__ = ["MIGRATIONS", "migrate"]
