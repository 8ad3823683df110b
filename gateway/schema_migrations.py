"""Versioned schema migrations of both stores, with yoyo-migrations (docs/architecture.md, "Schema
migrations"; README, "Operating": ``mls-gateway migrate``).

A store's migrations are the files of ``gateway/migrations/sqlite/`` or ``gateway/migrations/postgresql/``
(package data), applied in the order of their ids (``0001.baseline``, ``0002.…``). yoyo records each applied
migration in the database (table ``_yoyo_migration``). Concurrent runs are serialised by a lock that dies
with its process (:func:`_run_lock`: a PostgreSQL advisory lock, a file lock beside a SQLite database),
inside which yoyo's own lock row is taken: when several processes start at once, one applies the pending
migrations and the others wait, then find nothing left to do; a run killed with ``kill -9`` blocks no one.

At start-up (:func:`prepare`) a database that holds a migration this code does not know — written by a
newer gateway — is always refused; pending migrations are applied, or, when the operator turned that off
(``[gateway] migrate_on_start = false``), refused with "run ``mls-gateway migrate``". A new, empty
database is always created at the current schema. Each refusal is a :class:`SchemaError`: one line, the
database named without its password.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from yoyo import read_migrations
from yoyo.backends.base import DatabaseBackend
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.backends.core.sqlite3 import SQLiteBackend
from yoyo.connections import parse_uri
from yoyo.exceptions import BadMigration, LockTimeout

from .sqlite_files import make_owner_only
from .store import StoreUnavailable

#: yoyo's record of applied migrations (its default name).
MIGRATION_TABLE = "_yoyo_migration"
#: Seconds a process waits for another one's migration run (yoyo's lock) before giving up.
LOCK_TIMEOUT_S = 300.0
#: PostgreSQL: the session-level advisory lock key of a migration run (the ASCII of "mlsgw_mg").
PG_ADVISORY_LOCK = int.from_bytes(b"mlsgw_mg", "big")
#: Seconds a SQLite statement waits for another connection's write lock (the store's own is 10 s).
SQLITE_BUSY_TIMEOUT_S = 30.0
#: The URL schemes of a PostgreSQL database (anything else is a SQLite file path).
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


class SchemaError(Exception):
    """The database's schema is not the one this gateway runs on (one line for the operator)."""


@dataclass(frozen=True)
class MigrationState:
    """What :func:`status` reads: migrations applied (id, when, UTC), pending, and unknown to this code."""

    applied: list[tuple[str, datetime | None]]
    pending: list[str]
    unknown: list[str]


def is_postgresql(database: str) -> bool:
    return database.startswith(POSTGRESQL_SCHEMES)


def describe(database: str) -> str:
    """The database as an error may name it: a URL without its password (and query), or the file path.
    A URL that does not split unambiguously (:func:`_url_parts`) is named by its scheme alone: no part of
    its credentials ever reaches an error or a log."""
    if not is_postgresql(database):
        return database
    parts = _url_parts(database)
    if parts is None:
        return f"{database.split('://', 1)[0]}://(a URL that cannot be read)"
    scheme, user, host, port, path = parts
    netloc = f"{user}@{host}" if user else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, path, "", ""))


def _url_parts(database: str) -> tuple[str, str | None, str, int | None, str] | None:
    """``(scheme, user, host, port, path)`` of a ``postgresql://`` URL, or ``None`` when it cannot be
    split without guessing where the password ends: a password with an unencoded ``@ / ? # [ ]`` makes
    the host, port or path hold part of it (a fragment ``#``, a second ``@``, userinfo the parser did
    not see), so nothing of such a URL is shown and it is refused (:func:`check_url`)."""
    rest = database.split("://", 1)[1]
    if "#" in rest or rest.count("@") > 1:
        return None
    try:
        parts = urlsplit(database)
        if ("@" in rest) != ("@" in parts.netloc):
            return None
        return parts.scheme, parts.username, parts.hostname or "", parts.port, parts.path
    except ValueError:  # a port that is not a number, an unbalanced bracket
        return None


def check_url(database: str) -> None:
    """Refuse (:class:`gateway.store.StoreUnavailable`) a ``postgresql://`` URL that cannot be read
    unambiguously, naming none of it but its scheme (see :func:`_url_parts`)."""
    if is_postgresql(database) and _url_parts(database) is None:
        raise StoreUnavailable(
            f"the database URL {describe(database)} cannot be read: percent-encode the characters "
            "@ : / ? # [ ] % in its user name and password (e.g. # as %23)"
        )


def migrations_directory(database: str) -> Path:
    """The installed migrations of the store ``database`` is for (package data of ``gateway``)."""
    kind = "postgresql" if is_postgresql(database) else "sqlite"
    return Path(str(resources.files("gateway") / "migrations" / kind))


def known_migrations(directory: Path) -> list[str]:
    """The ids of the migrations in ``directory``, in the order they apply."""
    return [m.id for m in read_migrations(str(directory))]


class _SqliteBackend(SQLiteBackend):  # type: ignore[misc]
    """yoyo's SQLite backend, on the file path as it is (yoyo's own puts it into a URI unquoted and uses
    SQLite's shared cache), with the gateway's busy timeout."""

    def connect(self, dburi: Any) -> sqlite3.Connection:
        make_owner_only(dburi.database)  # the first to open the store's file: it is created 0600
        conn = sqlite3.connect(
            f"file:{quote(dburi.database)}?mode=rwc",
            uri=True,
            timeout=SQLITE_BUSY_TIMEOUT_S,
            isolation_level=None,
        )
        conn.execute("PRAGMA journal_mode = WAL")  # the store's mode (kept in the file); one fsync a commit
        return conn

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        """As yoyo's, times stored as ISO 8601 text (yoyo's converters are process-wide; none is used)."""
        if params:
            params = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items()}
        return super().execute(sql, params)


@contextmanager
def _backend(database: str) -> Iterator[DatabaseBackend]:
    """A yoyo backend on ``database``, connected; its lock table is made only by a run that applies
    (``init_database``), so reading the state writes nothing but the journal mode."""
    check_url(database)
    try:
        if is_postgresql(database):
            parsed = parse_uri("postgresql+psycopg://" + database.split("://", 1)[1])
            backend_class: type[DatabaseBackend] = PostgresqlPsycopgBackend
        else:
            parsed = parse_uri("sqlite://")._replace(database=str(Path(database).absolute()))
            backend_class = _SqliteBackend
    except ValueError:  # what check_url let through and yoyo still cannot read: its text may quote it
        raise StoreUnavailable(f"the database URL {describe(database)} cannot be read") from None
    try:
        backend = backend_class(parsed, MIGRATION_TABLE)
    except Exception as e:  # sqlite3.Error, psycopg.Error: the database cannot be reached
        raise StoreUnavailable(f"cannot open the database {describe(database)}: {_first_line(e)}") from None
    try:
        yield backend
    except backend.DatabaseError as e:
        raise StoreUnavailable(f"the database {describe(database)}: {_first_line(e)}") from None
    finally:
        backend.connection.close()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _applied(backend: DatabaseBackend) -> list[tuple[str, datetime | None]]:
    """The migrations ``backend``'s database recorded, oldest first (none when yoyo never ran there)."""
    if MIGRATION_TABLE not in backend.list_tables():
        return []
    cursor = backend.execute(
        f"SELECT migration_id, applied_at_utc FROM {MIGRATION_TABLE} ORDER BY applied_at_utc, migration_id"
    )
    return [(str(r[0]), _utc(r[1])) for r in cursor.fetchall()]


def _utc(value: Any) -> datetime | None:
    """yoyo's ``applied_at_utc``: a datetime (PostgreSQL) or ISO 8601 text (SQLite), naive UTC."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _state(backend: DatabaseBackend, known: list[str]) -> MigrationState:
    applied = _applied(backend)
    done = {mid for mid, _ in applied}
    return MigrationState(
        applied=applied,
        pending=[mid for mid in known if mid not in done],
        unknown=[mid for mid, _ in applied if mid not in set(known)],
    )


def status(database: str, *, directory: Path | None = None) -> MigrationState:
    """The migrations applied to ``database``, those pending, and those this code does not know."""
    directory = directory or migrations_directory(database)
    with _backend(database) as backend:
        return _state(backend, known_migrations(directory))


def _refuse_unknown(database: str, state: MigrationState) -> None:
    if state.unknown:
        raise SchemaError(
            f"the database {describe(database)} holds schema migrations this mls-gateway does not know "
            f"({', '.join(state.unknown)}): a newer mls-gateway wrote it; run that version or newer"
        )


def migrate(
    database: str, *, directory: Path | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S
) -> list[str]:
    """Apply the pending migrations of ``database`` (a SQLite file path or a ``postgresql://`` URL);
    returns the ids applied (none when another process applied them first). Refuses (:class:`SchemaError`)
    a database holding a migration this code does not know, or locked by a live run for more than
    ``lock_timeout_s``."""
    directory = directory or migrations_directory(database)
    migrations = read_migrations(str(directory))
    known = [m.id for m in migrations]
    with _backend(database) as backend:
        state = _state(backend, known)
        _refuse_unknown(database, state)
        if not state.pending:
            return []
        try:
            backend.init_database()  # yoyo's lock table
            with _run_lock(backend, database, lock_timeout_s), _yoyo_lock(backend, lock_timeout_s):
                state = _state(backend, known)  # another process may have migrated while we waited
                _refuse_unknown(database, state)
                to_apply = backend.to_apply(migrations)
                for m in to_apply:
                    m.load()  # a file that does not load is refused here (yoyo would skip it)
                backend.apply_migrations(to_apply)
                return [m.id for m in to_apply]
        except LockTimeout:
            raise SchemaError(
                f"the database {describe(database)} is locked by another migration run, still running "
                f"after {lock_timeout_s:.0f} s"
            ) from None
        except BadMigration as e:
            why = _first_line(e.args[1]) if len(e.args) > 1 else "see the log"
            raise SchemaError(f"the schema migration {e.args[0]} cannot be loaded: {why}") from None
        except backend.DatabaseError as e:
            raise SchemaError(
                f"a schema migration of the database {describe(database)} failed: {_first_line(e)}"
            ) from None


@contextmanager
def _run_lock(backend: DatabaseBackend, database: str, timeout_s: float) -> Iterator[None]:
    """Hold the lock of one migration run, which a killed run gives up with its process: on PostgreSQL
    the session-level advisory lock :data:`PG_ADVISORY_LOCK` (the server releases it when the session
    ends), on SQLite an ``flock`` of ``<database>.migrate-lock`` (the kernel releases it when the process
    dies). Raises yoyo's ``LockTimeout`` after ``timeout_s`` seconds of a live holder."""
    deadline = time.monotonic() + timeout_s
    if is_postgresql(database):
        conn = backend.connection  # autocommit: the lock outlives the migrations' transactions
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (PG_ADVISORY_LOCK,)).fetchone()[0]:
            _wait_or_give_up(deadline)
        try:
            yield
        finally:
            with suppress(Exception):  # a lost connection released it already
                conn.execute("SELECT pg_advisory_unlock(%s)", (PG_ADVISORY_LOCK,))
        return
    fd = os.open(f"{Path(database).absolute()}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _wait_or_give_up(deadline)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def _yoyo_lock(backend: DatabaseBackend, timeout_s: float) -> Iterator[None]:
    """yoyo's own lock row, taken inside :func:`_run_lock` (what ``yoyo_lock`` shows an operator): a row
    found there is a killed run's, since a live run would hold the run lock, so it is removed first."""
    backend.break_lock()
    with backend.lock(timeout=timeout_s):
        yield


def _wait_or_give_up(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise LockTimeout("the migration lock is held")
    time.sleep(0.1)


def break_lock(database: str) -> None:
    """Remove yoyo's lock left by a migration run that died (``mls-gateway migrate --break-lock``)."""
    with _backend(database) as backend:
        backend.init_database()
        backend.break_lock()


def prepare(database: str, *, apply: bool, directory: Path | None = None) -> list[str]:
    """The start-up check: refuse a database with unknown migrations; apply the pending ones (``apply``),
    or refuse them unless the database is new and empty. Returns the ids applied."""
    directory = directory or migrations_directory(database)
    with _backend(database) as backend:
        state = _state(backend, known_migrations(directory))
        empty = not backend.list_tables()
    _refuse_unknown(database, state)
    if not state.pending:
        return []
    if not apply and not empty:
        raise SchemaError(
            f"the database {describe(database)} has {len(state.pending)} pending schema migration"
            f"{'s' if len(state.pending) > 1 else ''} ({', '.join(state.pending)}) and migrate_on_start "
            "is off: run `mls-gateway migrate`"
        )
    return migrate(database, directory=directory)


__all__ = [
    "MigrationState",
    "SchemaError",
    "break_lock",
    "check_url",
    "describe",
    "is_postgresql",
    "known_migrations",
    "migrate",
    "migrations_directory",
    "prepare",
    "status",
]
