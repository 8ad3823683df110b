"""The psycopg adapter of the shared SQL (gateway/postgres_sql.py): the same statement, with SQLite's
placeholders, answers the same on SQLite and on the real throw-away PostgreSQL — whatever ``?``, ``:name``,
``%`` or apostrophes its string literals, quoted identifiers and comments hold (only placeholders outside
them are translated; every ``%`` is doubled, which psycopg reads back as one)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from gateway.postgres_rows import MemoCursor, SnapshotMemo
from gateway.postgres_sql import PgConnection, translate

#: (SQL with SQLite's placeholders, parameters): each answers one row.
STATEMENTS: list[tuple[str, Any]] = [
    ("SELECT 'a ? b :c %' AS v, ? AS w", ("x",)),
    ("SELECT 'it''s ?' AS v, :p AS w", {"p": "x"}),
    ('SELECT 1 AS "odd ? :name %" , ? AS w', ("x",)),
    ("SELECT ? AS v -- the member's ? and :name, 100%\n, ? AS w", ("x", "y")),
    ("SELECT /* it's ? :name % */ ? AS v, ? AS w", ("x", "y")),
    ("SELECT ? AS v /* a\n'multi-line' ? */, ? AS w", ("x", "y")),
    ("SELECT 'a%b' LIKE 'a\\%b' ESCAPE '\\' AS v, ? AS w", ("x",)),
]


@pytest.fixture
def engines(postgres_dsn: str) -> Iterator[tuple[sqlite3.Connection, PgConnection]]:
    lite = sqlite3.connect(":memory:")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield lite, PgConnection(conn)
    lite.close()


@pytest.mark.parametrize(("sql", "params"), STATEMENTS)
def test_a_statement_answers_the_same_on_both_engines(
    engines: tuple[sqlite3.Connection, PgConnection], sql: str, params: Any
) -> None:
    lite, pg = engines
    expected = tuple(lite.execute(sql, params).fetchone())
    got = pg.execute(sql, params).fetchone()
    assert got is not None
    assert tuple(got) == expected


def test_placeholders_are_translated_outside_literals_identifiers_and_comments() -> None:
    assert translate("SELECT ? -- it's ?\n, :a") == "SELECT %s -- it's ?\n, %(a)s"
    assert translate("SELECT 'x?' , \"y?\" , /* ? */ ?") == "SELECT 'x?' , \"y?\" , /* ? */ %s"
    assert translate("SELECT '%', x::text -- 5%") == "SELECT '%%', x::text -- 5%%"


@pytest.fixture
def snapshot(postgres_dsn: str) -> Iterator[tuple[PgConnection, psycopg.Connection[Any]]]:
    """A read-only snapshot adapter over a table of 20 rows, and a second connection that writes."""
    with psycopg.connect(postgres_dsn, autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS memo_t; CREATE TABLE memo_t (k int PRIMARY KEY, v text)")
        setup.execute("INSERT INTO memo_t SELECT g, 'v' || g FROM generate_series(1, 20) g")
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield PgConnection(conn, snapshot=True), setup
            conn.execute("COMMIT")


def test_a_repeated_select_of_a_snapshot_is_answered_from_memory(
    snapshot: tuple[PgConnection, psycopg.Connection[Any]],
) -> None:
    adapter, writer = snapshot
    first = adapter.execute("SELECT v FROM memo_t WHERE k = ?", (1,)).fetchall()
    writer.execute("UPDATE memo_t SET v = 'changed' WHERE k = 1")  # committed after the snapshot began
    again = adapter.execute("SELECT v FROM memo_t WHERE k = ?", (1,))
    assert isinstance(again, MemoCursor) and again.fetchall() == first == [("v1",)]
    assert adapter.execute("SELECT v FROM memo_t WHERE k = ?", (1,)).fetchone() == ("v1",)
    named = adapter.execute("SELECT v FROM memo_t WHERE k = :k", {"k": 2})
    assert named.fetchone()["v"] == "v2"  # type: ignore[index]
    assert adapter.execute("SELECT v FROM memo_t WHERE k = ?", (3,)).fetchall() == [("v3",)]  # other values


def test_what_a_snapshot_does_not_keep(snapshot: tuple[PgConnection, psycopg.Connection[Any]]) -> None:
    adapter, _ = snapshot
    big = adapter.execute("SELECT k FROM memo_t ORDER BY k")  # more rows than SnapshotMemo.ROWS
    assert not isinstance(big, MemoCursor) and len(big.fetchall()) == 20
    assert not isinstance(adapter.execute("SELECT k FROM memo_t ORDER BY k"), MemoCursor)
    t1 = adapter.execute("SELECT clock_timestamp()::text AS t").fetchone()
    t2 = adapter.execute("SELECT clock_timestamp()::text AS t").fetchone()
    assert t1 != t2  # volatile: run each time
    listed = adapter.execute("SELECT count(*) FROM memo_t WHERE k = ANY(?)", ([1, 2],))
    assert not isinstance(listed, MemoCursor) and listed.fetchone() == (2,)
    for k in range(4, 4 + SnapshotMemo.ENTRIES):  # room for ENTRIES statements, then none kept
        adapter.execute("SELECT v FROM memo_t WHERE k = ?", (k,))
    assert not isinstance(adapter.execute("SELECT k FROM memo_t WHERE v = ?", ("v1",)), MemoCursor)


def test_a_write_connection_keeps_nothing(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS memo_w; CREATE TABLE memo_w (k int PRIMARY KEY, v text)")
        conn.execute("BEGIN")
        adapter = PgConnection(conn)
        adapter.execute("INSERT INTO memo_w VALUES (1, 'a')")
        assert adapter.execute("SELECT v FROM memo_w WHERE k = ?", (1,)).fetchone() == ("a",)
        adapter.execute("UPDATE memo_w SET v = 'b' WHERE k = 1")
        assert adapter.execute("SELECT v FROM memo_w WHERE k = ?", (1,)).fetchone() == ("b",)
        conn.execute("ROLLBACK")


def test_values_of_other_types_are_other_statements() -> None:
    sql = "SELECT v FROM memo_t WHERE k = ?"
    assert SnapshotMemo.key(sql, (1,)) != SnapshotMemo.key(sql, (True,))  # 1 == True in Python
    assert SnapshotMemo.key(sql, (b"x",)) != SnapshotMemo.key(sql, ("x",))
    assert SnapshotMemo.key(sql, {"a": 1, "b": 2}) == SnapshotMemo.key(sql, {"b": 2, "a": 1})
    assert SnapshotMemo.key("SELECT clock_timestamp()", ()) is None
    assert SnapshotMemo.key("UPDATE memo_t SET v = ?", ("x",)) is None


def test_a_snapshot_keeps_a_bounded_number_of_bytes(
    snapshot: tuple[PgConnection, psycopg.Connection[Any]],
) -> None:
    adapter, _ = snapshot
    memo = adapter._memo
    assert memo is not None
    big = "SELECT repeat('x', ?) AS v FROM memo_t WHERE k <= ?"
    rows = SnapshotMemo.ROWS  # as many rows as one answer may hold, each a tenth of the budget
    first = adapter.execute(big, (SnapshotMemo.BYTES // 10, rows)).fetchall()
    assert len(first) == rows and len(first[0][0]) == SnapshotMemo.BYTES // 10
    assert memo.get(memo.key(big, (SnapshotMemo.BYTES // 10, rows))) is None  # over the budget: not kept
    assert adapter.execute(big, (SnapshotMemo.BYTES // 10, rows)).fetchall() == first
    small = (SnapshotMemo.BYTES // 100, 2)
    adapter.execute(big, small)
    kept = memo.get(memo.key(big, small))
    assert kept is not None and len(kept.fetchall()) == 2
