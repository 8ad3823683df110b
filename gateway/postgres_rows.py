"""What the PostgreSQL adapter (:mod:`gateway.postgres_sql`) answers with: rows readable by column name and
by index as :class:`sqlite3.Row` allows, a cursor over them, and a read snapshot's memory of the small
``SELECT`` s it already ran (a repeated one is answered without a round trip) — in a write transaction, of
the reads it asked for ahead, until its next write."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

#: One statement that only reads (a defect detector for lookups, not a parser: no second statement, no
#: row locks, no ``SELECT … INTO``, no sequence or advisory-lock functions).
SELECT_ONLY = re.compile(
    r"\s*SELECT\b(?![^;]*(;|\bFOR\s+(UPDATE|SHARE|NO\s+KEY|KEY)\b|\bINTO\b|nextval|pg_advisory))",
    re.IGNORECASE,
)


class PgRow(tuple[Any, ...]):
    """A row readable by index and by column name (like :class:`sqlite3.Row`)."""

    _index: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[bytes | None, ...]) -> type[PgRow]:
    index = {(n or b"").decode(): i for i, n in enumerate(names)}
    return type("PgRow", (PgRow,), {"_index": index})


def row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgRow]:
    """The row class of the cursor's current result, by its column names as libpq gives them (not
    ``cursor.description``, which builds a ``Column`` object per column and result: measured, a tenth of
    the gateway's CPU per message on PostgreSQL)."""
    result = cursor.pgresult
    names = () if result is None else tuple(result.fname(i) for i in range(result.nfields))
    return _row_class(names)


class PgCursor:
    """What the mixins read of a cursor: ``fetchone``, ``fetchall``, iteration and ``rowcount``."""

    def __init__(self, cursor: psycopg.Cursor[PgRow]) -> None:
        self._cursor = cursor
        self.rowcount = cursor.rowcount

    def fetchone(self) -> PgRow | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[PgRow]:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[PgRow]:
        return iter(self._cursor)


#: Functions whose answer changes within one snapshot: a statement naming one is never answered from memory.
_VOLATILE = re.compile(r"clock_timestamp|statement_timestamp|timeofday|random|nextval|currval|pg_|txid", re.I)


@functools.lru_cache(maxsize=1024)
def memoable(sql: str) -> bool:
    """Whether a snapshot may answer ``sql`` again from memory: one plain ``SELECT``, nothing volatile."""
    return bool(SELECT_ONLY.match(sql)) and not _VOLATILE.search(sql)


class MemoCursor:
    """A cursor over rows held in memory (a repeated ``SELECT`` of one snapshot)."""

    def __init__(self, rows: list[PgRow]) -> None:
        self._rows = iter(rows)
        self.rowcount = len(rows)

    def fetchone(self) -> PgRow | None:
        return next(self._rows, None)

    def fetchall(self) -> list[PgRow]:
        return list(self._rows)

    def __iter__(self) -> Iterator[PgRow]:
        return self._rows


def _size(rows: list[PgRow]) -> int:
    """Roughly the bytes ``rows`` hold (their byte and text values)."""
    return sum(len(v) for row in rows for v in row if isinstance(v, bytes | str))


class SnapshotMemo:
    """The answers of the small ``SELECT`` s one transaction ran or asked for (the module docstring): at most
    :attr:`ROWS` rows each, :attr:`ENTRIES` statements and :attr:`BYTES` of values in all; a statement with
    a volatile function is not kept. Values are told apart by type too (``True == 1`` in Python)."""

    ROWS = 16
    ENTRIES = 64
    BYTES = 256 * 1024

    def __init__(self) -> None:
        self._answers: dict[tuple[str, Any], list[PgRow]] = {}
        self._bytes = 0

    @staticmethod
    def key(sql: str, parameters: Sequence[Any] | dict[str, Any]) -> tuple[str, Any] | None:
        """What identifies a statement and its values, or None if it must not be kept."""
        if not memoable(sql):
            return None
        items = sorted(parameters.items()) if isinstance(parameters, dict) else enumerate(parameters)
        values = tuple((name, type(v), v) for name, v in items)
        try:
            hash(values)
        except TypeError:  # a list value (``= ANY(?)``): not kept
            return None
        return sql, values

    def clear(self) -> None:
        self._answers.clear()
        self._bytes = 0

    def get(self, key: tuple[str, Any]) -> MemoCursor | None:
        rows = self._answers.get(key)
        return None if rows is None else MemoCursor(rows)

    def keep(self, key: tuple[str, Any], cursor: psycopg.Cursor[PgRow]) -> PgCursor | MemoCursor:
        """``cursor``'s answer, kept when it is small enough and there is room."""
        if cursor.rowcount > self.ROWS or len(self._answers) >= self.ENTRIES:
            return PgCursor(cursor)
        rows = cursor.fetchall()
        size = _size(rows)
        if self._bytes + size <= self.BYTES:
            self._answers[key] = rows
            self._bytes += size
        return MemoCursor(rows)


__all__ = ["SELECT_ONLY", "MemoCursor", "PgCursor", "PgRow", "SnapshotMemo", "memoable", "row_factory"]
