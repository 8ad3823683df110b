"""The SQLite side of a KEK rotation (:mod:`gateway.kek_rotation`): the ``keks`` table, and the rows whose
sealed or wrapped bytes name a KEK that is no longer current.

Every column that holds an envelope blob (:mod:`hsm.envelope`) is listed in :data:`SEALED_COLUMNS` with
the AAD its writer binds (the same functions the writers use), so a blob of an older envelope version can
be sealed again; a version 3 blob's re-wrap needs no AAD (its key record alone changes). Blobs of
version 2 and 3 name their KEK in bytes 2..9 (``substr(col, 2, 8)``); version 1 blobs name none.

A re-wrapped row is written by compare-and-swap on the bytes it was read with (``UPDATE ... WHERE rowid
= ? AND col = ?``): a request that wrote the row meanwhile wins, and the row is picked up again by the
next batch if what it wrote still names an old KEK.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from .inbox_events import _aad as _event_aad
from .persistence import Idempotency, _response_aad
from .sealed_keys import _AAD as _SOFTWARE_KEY_AAD
from .sealed_state import _pending_aad, _psk_aad, _ratchet_aad, _state_aad
from .webhooks import _secret_aad

#: The first byte of a blob the envelope writes now (:data:`hsm.envelope.VERSION`).
_CURRENT_VERSION = b"\x03"


@dataclass(frozen=True)
class SealedColumn:
    """A column of envelope blobs: its table, the columns its AAD binds, and that AAD."""

    table: str
    column: str
    keys: tuple[str, ...]
    aad: Callable[[sqlite3.Row], bytes]

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    SealedColumn(
        "groups",
        "state",
        ("identity_id", "group_id"),
        lambda r: _state_aad(r["identity_id"], bytes(r["group_id"])),
    ),
    SealedColumn(
        "groups",
        "pending",
        ("identity_id", "group_id"),
        lambda r: _pending_aad(r["identity_id"], bytes(r["group_id"])),
    ),
    SealedColumn(
        "group_ratchets",
        "sealed",
        ("identity_id", "group_id", "version"),
        lambda r: _ratchet_aad(r["identity_id"], bytes(r["group_id"]), int(r["version"])),
    ),
    SealedColumn(
        "psks", "sealed", ("identity_id", "psk_id"), lambda r: _psk_aad(r["identity_id"], bytes(r["psk_id"]))
    ),
    SealedColumn("software_keys", "sealed", ("key_ref",), lambda r: _SOFTWARE_KEY_AAD + bytes(r["key_ref"])),
    SealedColumn(
        "idempotency",
        "body",
        ("scope", "key"),
        lambda r: _response_aad(Idempotency(r["scope"], r["key"], b"")),
    ),
    SealedColumn(
        "inbox",
        "event",
        ("identity_id", "group_id", "seq"),
        lambda r: _event_aad(r["identity_id"], bytes(r["group_id"]), int(r["seq"])),
    ),
    SealedColumn("webhooks", "secret", ("identity_id",), lambda r: _secret_aad(r["identity_id"])),
)


@dataclass(frozen=True)
class KekRow:
    """One KEK version of the ``keks`` table."""

    label: str
    kind: str
    version: int
    state: str
    created_at: float
    retired_at: float | None
    destroyed_at: float | None


@dataclass(frozen=True)
class StaleRow:
    """A row whose blob must move to the current KEK: its rowid, its AAD, the bytes read."""

    rowid: int
    aad: bytes
    blob: bytes


class SqliteRewrapMixin:
    """The ``keks`` table and the re-wrap queries, on the connection ``_c`` of one transaction."""

    _c: sqlite3.Connection

    # ---- keks ------------------------------------------------------------------------------------
    def list_keks(self) -> list[KekRow]:
        rows = self._c.execute(
            "SELECT label, kind, version, state, created_at, retired_at, destroyed_at FROM keks "
            "ORDER BY kind, version"
        ).fetchall()
        return [KekRow(*tuple(r)) for r in rows]

    def add_kek(self, label: str, kind: str, version: int, state: str) -> bool:
        """Insert a KEK version (nothing when its label is already there); whether it was inserted."""
        cur = self._c.execute(
            "INSERT INTO keks (label, kind, version, state, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (label, kind, version, state, time.time()),
        )
        return cur.rowcount == 1

    def make_current(self, label: str, kind: str) -> None:
        """``label`` becomes the current KEK of ``kind``; the one current before starts retiring."""
        now = time.time()
        self._c.execute(
            "UPDATE keks SET state = 'retiring', retired_at = ? "
            "WHERE kind = ? AND state = 'current' AND label != ?",
            (now, kind, label),
        )
        self._c.execute("UPDATE keks SET state = 'current' WHERE label = ?", (label,))

    def mark_kek_destroyed(self, label: str) -> None:
        self._c.execute(
            "UPDATE keks SET state = 'destroyed', destroyed_at = ? WHERE label = ? AND state = 'retiring'",
            (time.time(), label),
        )

    # ---- sealed columns --------------------------------------------------------------------------
    def sealed_kek_counts(self, column: SealedColumn) -> dict[bytes | None, int]:
        """How many blobs of ``column`` name each KEK id (None: version 1 blobs, which name none)."""
        rows = self._c.execute(
            f"SELECT substr({column.column}, 1, 1) AS v, substr({column.column}, 2, 8) AS k, COUNT(*) AS n "
            f"FROM {column.table} WHERE {column.column} IS NOT NULL GROUP BY v, k"
        ).fetchall()
        counts: dict[bytes | None, int] = {}
        for r in rows:
            kid = None if bytes(r["v"]) == b"\x01" else bytes(r["k"])
            counts[kid] = counts.get(kid, 0) + int(r["n"])
        return counts

    def stale_sealed_rows(
        self, column: SealedColumn, current: bytes, limit: int, after: int = 0
    ) -> list[StaleRow]:
        """Up to ``limit`` rows of ``column`` after rowid ``after`` (in rowid order) not sealed as the
        current version under the KEK ``current``."""
        keys = ", ".join(column.keys)
        rows = self._c.execute(
            f"SELECT rowid AS rowid_, {keys}, {column.column} AS blob_ FROM {column.table} "
            f"WHERE rowid > ? AND {column.column} IS NOT NULL "
            f"AND (substr({column.column}, 1, 1) != ? OR substr({column.column}, 2, 8) != ?) "
            "ORDER BY rowid LIMIT ?",
            (after, _CURRENT_VERSION, current, limit),
        ).fetchall()
        return [StaleRow(int(r["rowid_"]), column.aad(r), bytes(r["blob_"])) for r in rows]

    def swap_sealed(self, column: SealedColumn, rowid: int, old: bytes, new: bytes) -> bool:
        """Compare-and-swap of one blob: written only when the row still holds ``old``."""
        cur = self._c.execute(
            f"UPDATE {column.table} SET {column.column} = ? WHERE rowid = ? AND {column.column} = ?",
            (new, rowid, old),
        )
        return cur.rowcount == 1

    # ---- wrapped keys ----------------------------------------------------------------------------
    def wrapped_kek_counts(self) -> dict[bytes, int]:
        rows = self._c.execute("SELECT kek_id, COUNT(*) AS n FROM wrapped_keys GROUP BY kek_id").fetchall()
        return {bytes(r["kek_id"]): int(r["n"]) for r in rows}

    def stale_wrapped_keys(self, current: bytes, limit: int, after: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key reference, blob) of wrapped keys under another KEK than ``current``, with
        references after ``after`` (in order)."""
        rows = self._c.execute(
            "SELECT key_ref, blob FROM wrapped_keys WHERE key_ref > ? AND kek_id != ? "
            "ORDER BY key_ref LIMIT ?",
            (after, current, limit),
        ).fetchall()
        return [(bytes(r["key_ref"]), bytes(r["blob"])) for r in rows]

    def swap_wrapped_key(self, key_ref: bytes, old: bytes, new: bytes, kek_id: bytes) -> bool:
        """Compare-and-swap of one wrapped blob (a key destroyed meanwhile stays destroyed)."""
        cur = self._c.execute(
            "UPDATE wrapped_keys SET blob = ?, kek_id = ? WHERE key_ref = ? AND blob = ?",
            (new, kek_id, key_ref, old),
        )
        return cur.rowcount == 1


__all__ = ["SEALED_COLUMNS", "KekRow", "SealedColumn", "SqliteRewrapMixin", "StaleRow"]
