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
    with psycopg.connect(postgres_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
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
