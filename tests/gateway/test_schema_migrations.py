"""Versioned schema migrations (gateway.schema_migrations) on real SQLite files and the real throw-away
PostgreSQL: a new database gets every migration; databases made before migrations (schema versions 6 and
5) are adopted or upgraded with every row kept; a migration this code does not know (a newer gateway's) is
refused, and so are pending ones when auto-migration is off; a failing migration changes nothing; two
processes migrating one database at once both succeed and each migration applies once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config
from gateway.migrate_cli import database_of
from gateway.operator_cli import Exit
from gateway.schema_migrations import (
    MIGRATION_TABLE,
    SchemaError,
    describe,
    known_migrations,
    migrate,
    migrations_directory,
    prepare,
    status,
)
from gateway.sqlite_schema import SCHEMA_VERSION
from gateway.sqlite_store import SqliteStore
from gateway.store import StoreUnavailable

from .gwclient import GATEWAY_EXE, GatewayServer
from .legacy_schema import pre_migration_database

REPO = Path(__file__).resolve().parents[2]
SQLITE_MIGRATIONS = REPO / "gateway" / "migrations" / "sqlite"
#: Every SQLite migration, in order (a new one is appended here and never edits an older one).
ALL_SQLITE = ["0001.baseline", "0002.leases_notifications"]

#: Rows of a database made before migrations (every table the old code wrote to is represented).
_OLD_ROWS = [
    "INSERT INTO tenants (tenant_id, name, created_at) VALUES ('t1', 'acme', 1.0)",
    "INSERT INTO tokens (token_id, tenant_id, token_hash, created_at) VALUES ('k1', 't1', x'01', 1.0)",
    "INSERT INTO identities (identity_id, tenant_id, name, cipher_suite, credential, signature_key_ref, "
    "signature_public_key, custody_signature, custody_hpke, created_at) "
    "VALUES ('i1', 't1', 'alice', 1, x'02', x'03', x'04', 'token', 'token', 1.0)",
    "INSERT INTO endpoint_keys (tenant_id, signature_key, endpoint_id) VALUES ('t1', x'04', 'i1')",
    "INSERT INTO groups (identity_id, group_id, epoch, state, updated_at) "
    "VALUES ('i1', x'05', 3, x'06', 1.0)",
    "INSERT INTO audit (at, request_id, tenant_id, identity_id, key_ref, operation, custody, ok) "
    "VALUES (1.0, 'r1', 't1', 'i1', x'07', 'sign', 'token', 1)",
    "INSERT INTO idempotency (scope, key, request_hash, status, body, created_at, identity_id) "
    "VALUES ('s', 'k', x'08', 200, x'09', 1.0, 'i1')",
    "INSERT INTO clients (client_id, tenant_id, name, created_at) VALUES ('c1', 't1', 'phone', 1.0)",
    "INSERT INTO mailbox (client_id, tenant_id, group_id, seq, kind, created_at) "
    "VALUES ('c1', 't1', x'05', 1, 'commit', 1.0)",
]


def _rows(path: Path) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every table of the gateway (yoyo's own left out)."""
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if "yoyo" not in r[0]
        ]
        return {t: set(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        conn.close()


def _sql(path: Path, *statements: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows: list[tuple[Any, ...]] = []
        for statement in statements:
            rows = conn.execute(statement).fetchall()
        return rows
    finally:
        conn.close()


def _one_line(e: pytest.ExceptionInfo[SchemaError], *words: str) -> None:
    text = str(e.value)
    assert "\n" not in text
    for word in words:
        assert word in text, (word, text)


def test_a_new_database_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    SqliteStore(path).close()
    state = status(str(path))
    assert [mid for mid, _ in state.applied] == known_migrations(SQLITE_MIGRATIONS) == ALL_SQLITE
    assert state.pending == [] and state.unknown == []
    assert _sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert migrate(str(path)) == []  # nothing left to do
    SqliteStore(path).close()  # opening again applies nothing more
    assert _sql(path, f"SELECT count(*) FROM {MIGRATION_TABLE}") == [(len(ALL_SQLITE),)]


def _schema(path: Path) -> set[tuple[Any, ...]]:
    """Every table, index and trigger of the gateway with its SQL (yoyo's own left out)."""
    return {
        row
        for row in _sql(path, "SELECT type, name, tbl_name, sql FROM sqlite_master")
        if "yoyo" not in row[1]
    }


def test_a_database_migrated_by_the_baseline_alone_gets_exactly_the_current_schema(tmp_path: Path) -> None:
    """A database that applied 0001.baseline before 0002 existed (as main did): the next start applies
    0002 and the schema is then exactly a new database's — nothing a later migration added is missing."""
    only_baseline = tmp_path / "baseline-only"
    only_baseline.mkdir()
    (only_baseline / "0001.baseline.py").write_bytes((SQLITE_MIGRATIONS / "0001.baseline.py").read_bytes())
    old, fresh = tmp_path / "old.sqlite3", tmp_path / "fresh.sqlite3"
    assert migrate(str(old), directory=only_baseline) == ["0001.baseline"]
    _sql(old, *_OLD_ROWS)
    before = _rows(old)
    assert not {"leases", "notifications"} & set(before)  # the baseline is frozen: it never makes them
    assert status(str(old)).pending == ALL_SQLITE[1:]
    store = SqliteStore(old)  # the start-up check applies the rest
    store.close()
    SqliteStore(fresh).close()
    assert _schema(old) == _schema(fresh)
    assert {"leases", "notifications"} <= {row[1] for row in _schema(old)}
    after = _rows(old)
    assert {t: after[t] for t in before} == before  # every row kept
    assert [mid for mid, _ in status(str(old)).applied] == ALL_SQLITE


def test_a_version_6_database_is_adopted_without_data_loss(tmp_path: Path) -> None:
    path = tmp_path / "v6.sqlite3"
    pre_migration_database(path)
    _sql(path, *_OLD_ROWS)
    before = _rows(path)
    assert status(str(path)).pending == ALL_SQLITE
    store = SqliteStore(path)
    with store.read_transaction() as tx:
        group = tx.get_group("i1", b"\x05")
        assert group is not None and (group.epoch, group.state) == (3, b"\x06")
    store.close()
    after = _rows(path)
    assert {t: after[t] for t in before} == before  # every row of every table, unchanged
    assert [mid for mid, _ in status(str(path)).applied] == ALL_SQLITE


def test_a_version_5_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite3"
    pre_migration_database(path, version=5)
    _sql(path, *_OLD_ROWS)
    before = _rows(path)
    assert "group_ratchets" not in before and "hash" not in _columns(path, "audit")
    SqliteStore(path).close()
    after = _rows(path)
    for table, rows in before.items():  # the audit rows gain the chain's columns, empty
        width = len(next(iter(rows))) if rows else 0
        assert {row[:width] for row in after[table]} == rows, table
    assert {"group_ratchets", "credential_policies", "audit_checkpoints", "tenant_retention"} <= set(after)
    assert {"token_id", "detail", "prev_hash", "hash", "purged_by"} <= _columns(path, "audit")
    triggers = {r[0] for r in _sql(path, "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert "audit_erase_only" in triggers and "audit_append_only_update" not in triggers
    assert _sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def _columns(path: Path, table: str) -> set[str]:
    return {r[1] for r in _sql(path, f"PRAGMA table_info({table})")}


def test_a_migration_of_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite3"
    SqliteStore(path).close()
    _sql(
        path,
        f"INSERT INTO {MIGRATION_TABLE} (migration_hash, migration_id, applied_at_utc) "
        "VALUES ('f00d', '0099.from-a-newer-gateway', '2030-01-01T00:00:00')",
    )
    for attempt in (
        lambda: SqliteStore(path),
        lambda: SqliteStore(path, migrate=False),
        lambda: migrate(str(path)),
    ):
        with pytest.raises(SchemaError) as e:
            attempt()
        _one_line(e, "0099.from-a-newer-gateway", "newer mls-gateway")
    assert status(str(path)).unknown == ["0099.from-a-newer-gateway"]


def test_pending_migrations_are_refused_when_auto_migration_is_off(tmp_path: Path) -> None:
    path = tmp_path / "v6.sqlite3"
    pre_migration_database(path)
    _sql(path, *_OLD_ROWS)
    before = _rows(path)
    with pytest.raises(SchemaError) as e:
        SqliteStore(path, migrate=False)
    _one_line(e, "2 pending schema migrations", *ALL_SQLITE, "migrate_on_start", "mls-gateway migrate")
    assert _rows(path) == before and status(str(path)).pending == ALL_SQLITE  # nothing changed
    assert migrate(str(path)) == ALL_SQLITE
    SqliteStore(path, migrate=False).close()  # up to date: opens


def test_a_new_database_is_created_even_when_auto_migration_is_off(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    SqliteStore(path, migrate=False).close()
    assert status(str(path)).pending == []


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_later_migrations_apply_in_order_and_a_failing_one_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "steps.sqlite3")
    first = {"0001.notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"}
    assert migrate(path, directory=_write(tmp_path / "v1", first)) == ["0001.notes"]
    second = {**first, "0002.notes-author.sql": "ALTER TABLE notes ADD COLUMN author TEXT;"}
    v2 = _write(tmp_path / "v2", second)
    assert status(path, directory=v2).pending == ["0002.notes-author"]
    with pytest.raises(SchemaError) as e:
        prepare(path, apply=False, directory=v2)
    _one_line(e, "0002.notes-author", "mls-gateway migrate")
    assert prepare(path, apply=True, directory=v2) == ["0002.notes-author"]
    broken = {**second, "0003.broken.sql": "CREATE TABLE tags (id INTEGER);\nINSERT INTO missing VALUES (1);"}
    v3 = _write(tmp_path / "v3", broken)
    with pytest.raises(SchemaError) as e:
        migrate(path, directory=v3)
    _one_line(e, "failed", "missing")
    assert status(path, directory=v3).pending == ["0003.broken"]
    assert _sql(Path(path), "SELECT name FROM sqlite_master WHERE name = 'tags'") == []  # rolled back
    assert [c for c in _columns(Path(path), "notes")] and "author" in _columns(Path(path), "notes")


def test_the_database_is_named_without_its_password() -> None:
    url = "postgresql://mlsgw:s3cret@db.example:5432/gateway?sslmode=require&password=other"
    assert describe(url) == "postgresql://mlsgw@db.example:5432/gateway"
    assert describe("/var/lib/mls-gateway/gateway.sqlite3") == "/var/lib/mls-gateway/gateway.sqlite3"


#: Passwords as an operator may paste them: URL metacharacters, unencoded, anywhere.
_PASSWORD_MIDDLES = st.text(alphabet=st.sampled_from(list("@:/?#[]%&=+ ;!$'\"ab1")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(middle=_PASSWORD_MIDDLES, port=st.sampled_from([":1", ":9"]), query=st.sampled_from(["", "?x=1"]))
def test_no_error_names_any_part_of_a_password(middle: str, port: str, query: str) -> None:
    """Whatever a password holds, neither the description nor the error of a URL that cannot be read
    quotes it, or any part of it (the markers Zq and Qz stand for its two ends)."""
    password = f"Zq{middle}Qz"
    url = f"postgresql://mlsgw:{password}@127.0.0.1{port}/gateway{query}"
    texts = [describe(url)]
    try:
        status(url)  # refused before any connection when the URL cannot be read
    except StoreUnavailable as e:
        texts.append(str(e))
    for text in texts:
        assert "Zq" not in text and "Qz" not in text, (url, text)


def test_a_url_with_an_unencoded_password_is_refused_in_one_line() -> None:
    url = "postgresql://mlsgw:s3cr3t#x@host/db"  # urlsplit: a port 's3cr3t' (ValueError naming it), before
    assert describe(url) == "postgresql://(a URL that cannot be read)"
    with pytest.raises(StoreUnavailable) as e:
        migrate(url)
    assert "s3cr3t" not in str(e.value) and "percent-encode" in str(e.value) and "\n" not in str(e.value)


def test_migrations_are_package_data() -> None:
    """Every migration file is matched by pyproject's package-data globs (so a regular install has it)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["gateway"]
    files = [
        p
        for p in (REPO / "gateway" / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert files
    for f in files:
        relative = f.relative_to(REPO / "gateway").as_posix()
        assert any(fnmatch(relative, g) for g in globs), relative
    assert migrations_directory("/x.sqlite3") == SQLITE_MIGRATIONS
    assert migrations_directory("postgresql://h/db") == REPO / "gateway" / "migrations" / "postgresql"


def test_migrate_on_start_setting() -> None:
    assert load_config(env={}).migrate_on_start is True
    assert load_config(env={"MLSGW_MIGRATE_ON_START": "false"}).migrate_on_start is False
    assert load_config(env={"MLSGW_MIGRATE_ON_START": "1"}).migrate_on_start is True
    with pytest.raises(ConfigError, match="migrate_on_start"):
        load_config(env={"MLSGW_MIGRATE_ON_START": "later"})


def test_migrate_on_start_in_toml(tmp_path: Path) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text("[gateway]\nmigrate_on_start = false\n")
    assert load_config(toml, env={}).migrate_on_start is False
    toml.write_text('[gateway]\nmigrate_on_start = "no"\n')
    with pytest.raises(ConfigError, match="migrate_on_start must be true or false"):
        load_config(toml, env={})


# ---- PostgreSQL (the throw-away cluster of tests/postgres_cluster.py) ----


def _pg(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def test_postgresql_migrations_step_by_step(tmp_path: Path, postgres_dsn: str) -> None:
    first = {"0001.notes.sql": "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);"}
    v1 = _write(tmp_path / "v1", first)
    assert prepare(postgres_dsn, apply=False, directory=v1) == ["0001.notes"]  # new, empty: created
    _pg(postgres_dsn, "INSERT INTO notes (body) VALUES ('kept')")
    second = {**first, "0002.notes-author.sql": "ALTER TABLE notes ADD COLUMN author TEXT;"}
    v2 = _write(tmp_path / "v2", second)
    with pytest.raises(SchemaError) as e:
        prepare(postgres_dsn, apply=False, directory=v2)
    _one_line(e, "0002.notes-author", "mls-gateway migrate", describe(postgres_dsn))
    assert migrate(postgres_dsn, directory=v2) == ["0002.notes-author"]
    assert _pg(postgres_dsn, "SELECT body, author FROM notes") == [("kept", None)]
    state = status(postgres_dsn, directory=v2)
    assert [mid for mid, _ in state.applied] == ["0001.notes", "0002.notes-author"] and not state.pending
    assert all(when is not None for _, when in state.applied)
    with pytest.raises(SchemaError) as e:  # the older code (v1) meets the newer database
        prepare(postgres_dsn, apply=True, directory=v1)
    _one_line(e, "0002.notes-author", "newer mls-gateway")
    broken = {**second, "0003.broken.sql": "CREATE TABLE tags (id INT);\nINSERT INTO missing VALUES (1);"}
    with pytest.raises(SchemaError):
        migrate(postgres_dsn, directory=_write(tmp_path / "v3", broken))
    assert _pg(postgres_dsn, "SELECT to_regclass('tags')") == [(None,)]  # rolled back
    assert status(postgres_dsn, directory=tmp_path / "v3").pending == ["0003.broken"]


_MIGRATE_AND_REPORT = """
import json, sys
from pathlib import Path
from gateway.schema_migrations import migrate
print(json.dumps(migrate(sys.argv[1], directory=Path(sys.argv[2]))))
"""

#: A slow first migration (the second process arrives while it runs) and one that fails if run twice.
_SLOW_SET = {
    "0001.slow.py": "import time\nfrom yoyo import step\nsteps = [step(lambda conn: time.sleep(3))]\n",
    "0002.once.sql": "CREATE TABLE once_only (id INTEGER PRIMARY KEY);",
}


def _lock_taken(database: str) -> bool:
    if database.startswith("postgresql"):
        return bool(_pg(database, "SELECT to_regclass('yoyo_lock')")[0][0]) and bool(
            _pg(database, "SELECT count(*) FROM yoyo_lock")[0][0]
        )
    try:
        return bool(_sql(Path(database), "SELECT count(*) FROM yoyo_lock")[0][0])
    except sqlite3.OperationalError:  # not created yet, or busy
        return False


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_two_processes_migrate_one_database_at_once(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    database = (
        str(request.getfixturevalue("postgres_dsn"))
        if engine == "postgresql"
        else str(tmp_path / "db.sqlite3")
    )
    directory = _write(tmp_path / "migrations", _SLOW_SET)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_AND_REPORT, database, str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    first = start()
    deadline = time.monotonic() + 60
    while not _lock_taken(database):  # the first one is inside its run, holding yoyo's lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = start()
    results = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == ["0001.slow", "0002.once"] and results[1] == []
    state = status(database, directory=directory)
    assert [mid for mid, _ in state.applied] == ["0001.slow", "0002.once"] and not state.pending


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_migration_run_killed_mid_way_blocks_no_later_run(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    """kill -9 of a run inside a (slow) migration, holding yoyo's lock row: the next run proceeds at once
    — its lock died with the process — instead of waiting out the lock timeout (before: 300 s, then a
    refusal), and applies every migration once."""
    database = (
        str(request.getfixturevalue("postgres_dsn"))
        if engine == "postgresql"
        else str(tmp_path / "db.sqlite3")
    )
    sleeps = "import time\nfrom yoyo import step\nsteps = [step(lambda conn: time.sleep(600))]\n"
    slow = _write(tmp_path / "slow", {"0001.slow.py": sleeps})
    first = subprocess.Popen(
        [sys.executable, "-c", _MIGRATE_AND_REPORT, database, str(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not _lock_taken(database):  # inside its run: yoyo's lock row is there
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
    finally:
        first.kill()  # SIGKILL: no clean-up of any kind
        first.communicate()
    assert _lock_taken(database)  # the dead run's row is left behind
    fast = _write(tmp_path / "fast", {**_SLOW_SET, "0001.slow.py": "from yoyo import step\nsteps = []\n"})
    # the timeout would refuse the run if the dead lock still counted (no absolute time is measured)
    assert migrate(database, directory=fast, lock_timeout_s=30) == ["0001.slow", "0002.once"]
    assert not _lock_taken(database)
    assert [mid for mid, _ in status(database, directory=fast).applied] == ["0001.slow", "0002.once"]


# ---- mls-gateway migrate and the start-up policy, through the real command line ----


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLSGW_") and k != "SOFTHSM2_CONF"}
    return subprocess.run(
        [str(GATEWAY_EXE), *args],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(REPO), "MLSGW_LOG_LEVEL": "WARNING", **(env or {})},
        timeout=120,
        check=False,
    )


def _refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 11 (Exit.SCHEMA), one line on stderr naming ``words``, no traceback."""
    assert done.returncode == Exit.SCHEMA, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mls-gateway: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_serve_refuses_an_unknown_schema_and_migrate_brings_it_up_to_date(tmp_path: Path) -> None:
    off = {"MLSGW_MIGRATE_ON_START": "false"}
    server = GatewayServer(tmp_path / "data", env=off)  # init: a new database is created even when off
    database = server.data_dir / "gateway.sqlite3"
    data = ["--data-dir", str(server.data_dir)]
    serve = ["serve", *data, "--listen", f"127.0.0.1:{server.port}"]
    # the database as the gateway before migrations left it (the same schema, no migration recorded)
    _sql(
        database, *(f"DROP TABLE {t}" for t in ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock"))
    )
    _refused(_cli(*serve, env=off), "0001.baseline", "pending", "run `mls-gateway migrate`")
    listing = _cli("migrate", "--list", *data)
    assert listing.returncode == 0 and listing.stdout.split() == [
        *("0001.baseline", "pending"),
        *("0002.leases_notifications", "pending"),
    ], listing
    done = _cli("migrate", *data)
    assert done.returncode == 0, done
    assert done.stdout.strip() == f"applied 2 schema migrations: {', '.join(ALL_SQLITE)}", done
    done = _cli("migrate", *data, "--json")
    assert json.loads(done.stdout) == {"database": str(database), "applied_now": [], "applied": 2}
    listing = _cli("migrate", "--list", *data)
    lines = listing.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[mid, "applied"] for mid in ALL_SQLITE], listing
    assert all(line.endswith(" UTC") for line in lines), listing
    server.start()  # up to date: serves with auto-migration off
    try:
        assert server.admin.create_tenant("after-migrate")[0]  # reads and writes on the migrated database
        assert server.stop() == 0
    finally:
        server.kill()  # a failed assertion leaves no server running
    # a newer gateway's migration: always refused, by serve, init and migrate alike
    _sql(
        database,
        f"INSERT INTO {MIGRATION_TABLE} (migration_hash, migration_id, applied_at_utc) "
        "VALUES ('f00d', '0099.from-a-newer-gateway', '2030-01-01T00:00:00')",
    )
    for command in (serve, ["init", *data], ["migrate", *data]):
        _refused(_cli(*command), "0099.from-a-newer-gateway", "newer mls-gateway")
    listing = _cli("migrate", "--list", "--json", *data)
    assert json.loads(listing.stdout)["unknown"] == ["0099.from-a-newer-gateway"]
    assert "0099.from-a-newer-gateway  unknown" in _cli("migrate", "--list", *data).stdout
    # its backup says so, and this version refuses to restore it (nothing is left behind)
    backup, restored = tmp_path / "backup", tmp_path / "restored"
    assert _cli("backup", str(backup), *data).returncode == 0
    manifest = json.loads((backup / "backup.json").read_text())
    assert manifest["schema_migrations"] == [*ALL_SQLITE, "0099.from-a-newer-gateway"]
    assert manifest["schema_version"] == SCHEMA_VERSION
    _refused(_cli("restore", str(backup), "--data-dir", str(restored)), "0099.from-a-newer-gateway", "newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "data", "data.log"]


def test_migrate_refuses_a_data_folder_never_initialised(tmp_path: Path) -> None:
    done = _cli("migrate", "--data-dir", str(tmp_path / "nothing"))
    assert done.returncode == Exit.NOT_INITIALISED and "mls-gateway init" in done.stderr, done


def test_a_migration_file_that_does_not_load_is_refused_not_skipped(tmp_path: Path) -> None:
    path = str(tmp_path / "bad.sqlite3")
    files = {"0001.ok.sql": "CREATE TABLE ok (id INTEGER);", "0002.bad.py": "steps = [step(\n"}
    with pytest.raises(SchemaError) as e:
        migrate(path, directory=_write(tmp_path / "m", files))
    _one_line(e, "0002.bad", "cannot be loaded")
    assert status(path, directory=tmp_path / "m").pending == ["0001.ok", "0002.bad"]  # nothing applied


def test_migrate_break_lock_removes_the_lock_of_a_killed_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = data / "gateway.sqlite3"
    pre_migration_database(database)
    _sql(  # what a run killed while it held yoyo's lock leaves behind
        database,
        "CREATE TABLE yoyo_lock (locked INT DEFAULT 1, ctime TIMESTAMP, pid INT NOT NULL, "
        "PRIMARY KEY (locked))",
        "INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, '2026-01-01T00:00:00', 999999)",
    )
    done = _cli("migrate", "--break-lock", "--data-dir", str(data))
    assert done.returncode == 0 and done.stdout.strip() == "the migration lock is removed", done
    assert _sql(database, "SELECT count(*) FROM yoyo_lock") == [(0,)]
    done = _cli("migrate", "--data-dir", str(data))
    assert done.returncode == 0 and "0001.baseline" in done.stdout, done


def test_migrate_takes_a_postgresql_url_as_configured(tmp_path: Path) -> None:
    """``[gateway] database`` as a URL reaches the migrations unchanged (a Path makes ``postgresql:/h``)."""
    cfg = load_config(env={"MLSGW_DATA_DIR": str(tmp_path)})
    assert database_of(cfg) == str(tmp_path / "gateway.sqlite3")
    url = "postgresql://mlsgw:pw@db.example:5432/gateway?sslmode=require"
    assert database_of(replace(cfg, database=url)) == url  # type: ignore[arg-type]
    assert str(Path(url)) != url


def test_serve_refuses_a_database_without_the_notifications_table_in_one_line(tmp_path: Path) -> None:
    """A database that records 0002 but lacks its table (dropped by hand): ``serve`` exits 11 with one
    line naming the migration, not a traceback from the listener."""
    server = GatewayServer(tmp_path / "data")
    _sql(server.data_dir / "gateway.sqlite3", "DROP TABLE notifications")
    serve = ["serve", "--data-dir", str(server.data_dir), "--listen", f"127.0.0.1:{server.port}"]
    _refused(_cli(*serve), "0002.leases_notifications", "no such table: notifications", "mls-gateway migrate")
