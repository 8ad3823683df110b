"""The connection adapter that runs the store's portable SQL (the ``Sqlite*Mixin`` classes) on psycopg 3.

The mixins call ``execute(sql, params)`` / ``executemany`` with SQLite's placeholders (``?`` and
``:name``) and read rows by column name and by index, as :class:`sqlite3.Row` allows. :class:`PgConnection`
gives them the same over one psycopg connection: :func:`translate` turns the placeholders into psycopg's
(``%s`` / ``%(name)s``, a literal ``%`` doubled), and rows are :class:`PgRow` s (a tuple also indexed by
column name, with ``keys()``).

Values are bound on the client (:class:`psycopg.ClientCursor`): PostgreSQL infers no type for a bare
parameter (``? IS NULL OR at >= ?``), while a client-side literal carries one, as SQLite's loose typing
expects. The SQL itself is portable (``ON CONFLICT``, ``RETURNING``, ``CASE``): nothing is rewritten but
the placeholders.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

#: Text copied as it is but for ``%`` doubled — a string literal, a quoted identifier, a comment — or a
#: placeholder, or a ``%`` outside them.
_TOKENS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?|(?<![:\w]):([A-Za-z_]\w*)|%", re.DOTALL
)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite's placeholders as psycopg's: ``?`` -> ``%s``, ``:name`` -> ``%(name)s``, ``%`` -> ``%%``;
    not inside string literals, quoted identifiers and comments (where psycopg still reads ``%``)."""

    def one(m: re.Match[str]) -> str:
        text = m.group(0)
        if text[0] in "'\"" or text.startswith(("--", "/*")):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({m.group(1)})s"

    return _TOKENS.sub(one, sql)


#: The tables a *group-scoped* write transaction (:mod:`gateway.postgres_durability`, "Group-scoped
#: writes") may touch under its group's lock alone: a message sent or received writes the member's ratchet
#: state and appends to the group's log, rows of that one group only. Every other table is *ordered*: a
#: group-scoped transaction takes the order lock before its first statement on one (:func:`is_ordered`).
GROUP_TABLES = frozenset({"group_ratchets", "group_logs", "group_members", "log_entries", "hosted_pending"})

#: A name after FROM, INTO, UPDATE or JOIN: a table (or a CTE or a set-returning function — counted as
#: ordered, which only costs waiting); not the SET of an upsert's ``DO UPDATE SET``.
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+(?:ONLY\s+)?(?!SET\b)\"?([A-Za-z_]\w*)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def is_ordered(sql: str) -> bool:
    """Whether ``sql`` names any table outside :data:`GROUP_TABLES`."""
    return any(name.lower() not in GROUP_TABLES for name in _TABLE.findall(sql))


#: One statement that only reads (a defect detector for lookups, not a parser: no second statement, no
#: row locks, no ``SELECT … INTO``, no sequence or advisory-lock functions).
_SELECT = re.compile(
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


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgRow]:
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


class PgConnection:
    """The part of :class:`sqlite3.Connection` the mixins use, over one psycopg connection."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        before_ordered: Callable[[], None] | None = None,
        select_only: bool = False,
    ) -> None:
        """``before_ordered``: called once, before the first statement that :func:`is_ordered` (a
        group-scoped write transaction takes the order lock there). ``select_only``: anything but a
        ``SELECT`` is refused (:class:`psycopg.ProgrammingError`) — a lookup outside any transaction."""
        self._conn = conn
        self._before_ordered = before_ordered
        self._select_only = select_only

    def _check_order(self, sql: str) -> None:
        if self._select_only and not _SELECT.match(sql):
            raise psycopg.ProgrammingError("only a SELECT may run here")
        if self._before_ordered is not None and is_ordered(sql):
            take, self._before_ordered = self._before_ordered, None
            take()

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> PgCursor:
        self._check_order(sql)
        cur: psycopg.Cursor[PgRow] = self._conn.cursor(row_factory=_row_factory)
        cur.execute(translate(sql), parameters)
        return PgCursor(cur)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any] | dict[str, Any]]) -> PgCursor:
        cur: psycopg.Cursor[PgRow] = self._conn.cursor(row_factory=_row_factory)
        rows = list(seq)
        if rows:  # nothing to run: nothing to order either
            self._check_order(sql)
            cur.executemany(translate(sql), rows)
        result = PgCursor(cur)
        result.rowcount = max(result.rowcount, 0)  # nothing run: no row changed
        return result


#: libpq's TCP liveness settings for every connection of the gateway (pool and listener), unless the URL
#: sets its own (or names a ``service`` of pg_service.conf, which may): keepalive probes after 30 s idle,
#: every 10 s; and ``tcp_user_timeout`` 30 s, which on Linux bounds both data sent but unacknowledged (a
#: request to a server gone silent) and unanswered probes — an idle connection to a vanished peer is
#: dropped after about 40 s. Without them a server or network that vanishes without a reset (a power cut,
#: a dropped route) leaves a pooled connection or the LISTEN connection waiting for the kernel's
#: retransmissions (~15 min); with them a request answers 503 and the listener reconnects within about a
#: minute. Unix-socket connections ignore them.
LIVENESS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


def liveness_options(url: str) -> dict[str, Any]:
    """The :data:`LIVENESS` settings ``url`` does not set itself (connection keyword arguments); none
    when it names a ``service`` (its pg_service.conf entry may set them: keywords would override it)."""
    given = conninfo_to_dict(url)
    if "service" in given:
        return {}
    return {k: v for k, v in LIVENESS.items() if k not in given}


__all__ = [
    "GROUP_TABLES",
    "LIVENESS",
    "PgConnection",
    "PgCursor",
    "PgRow",
    "is_ordered",
    "liveness_options",
    "translate",
]
