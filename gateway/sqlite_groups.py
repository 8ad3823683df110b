"""The group records of the SQLite store: memberships' sealed states and their ratchet states.

A membership is a ``groups`` row (the sealed full state, its pending commit, its epoch) and, after
application messages, a ``group_ratchets`` row (the sealed ratchet state: docs/architecture.md "Hot
path"). While the ratchet row exists its ``version`` and ``applied_seq`` are the membership's: a ratchet
write leaves the ``groups`` row, whose large state SQLite would rewrite on any UPDATE, alone.
"""

from __future__ import annotations

import sqlite3
import time

from .sqlite_queries import SqliteQueries
from .store import EpochConflict, GroupRecord

#: A membership's record with its ratchet state (hot path: docs/architecture.md).
_GROUP_SELECT = (
    "SELECT g.identity_id, g.group_id, g.epoch, g.state, g.pending, "
    "COALESCE(r.version, g.version) AS version, COALESCE(r.applied_seq, g.applied_seq) AS applied_seq, "
    "r.sealed AS ratchet, g.version AS full_version FROM groups g "
    "LEFT JOIN group_ratchets r ON r.identity_id = g.identity_id AND r.group_id = g.group_id"
)
#: A membership's version: its ratchet state's when it has one (written after the full state), else the
#: full state's. SQLite rewrites a whole row on UPDATE, so a ratchet write leaves the ``groups`` row alone.
_VERSION = (
    "COALESCE((SELECT r.version FROM group_ratchets r WHERE r.identity_id = groups.identity_id "
    "AND r.group_id = groups.group_id), groups.version)"
)


def _group(row: sqlite3.Row) -> GroupRecord:
    return GroupRecord(
        row["identity_id"],
        row["group_id"],
        row["epoch"],
        row["state"],
        row["pending"],
        row["version"],
        row["applied_seq"],
        row["ratchet"],
        row["full_version"],
    )


def _swap_lost() -> EpochConflict:
    """A compare-and-swap on a membership's version found another version (api-v1.md: 409)."""
    # The 409's wording is the API's (api-v1.md): a concurrent write of the group's state.
    return EpochConflict("the group's epoch changed concurrently")


class SqliteGroupsMixin(SqliteQueries):
    """The group-record methods of :class:`gateway.sqlite_store.SqliteTransaction`."""

    def get_group(self, identity_id: str, group_id: bytes) -> GroupRecord | None:
        sql = _GROUP_SELECT + " WHERE g.identity_id = ? AND g.group_id = ?"
        r = self._one(sql, identity_id, group_id)
        return None if r is None else _group(r)

    def list_groups(self, identity_id: str) -> list[GroupRecord]:
        return [
            _group(r)
            for r in self._all(_GROUP_SELECT + " WHERE g.identity_id = ? ORDER BY g.updated_at", identity_id)
        ]

    def get_group_version(self, identity_id: str, group_id: bytes) -> int | None:
        r = self._one(
            f"SELECT {_VERSION} AS version FROM groups WHERE identity_id = ? AND group_id = ?",
            identity_id,
            group_id,
        )
        return None if r is None else int(r["version"])

    def put_group(self, g: GroupRecord, expected_version: int | None) -> int:
        now = time.time()
        if expected_version is None:
            # No exception decides (a failed statement would abort a PostgreSQL transaction): an existing
            # membership or a deleted identity (concurrently) leaves the row count at 0.
            cur = self._c.execute(
                "INSERT INTO groups (identity_id, group_id, epoch, state, pending, updated_at, version, "
                "applied_seq) SELECT identity_id, ?, ?, ?, ?, ?, 1, ? FROM identities WHERE identity_id = ? "
                "ON CONFLICT (identity_id, group_id) DO NOTHING",
                (g.group_id, g.epoch, g.state, g.pending, now, g.applied_seq, g.identity_id),
            )
            if cur.rowcount != 1:
                raise EpochConflict("this identity is already a member of that group")
            return 1
        new_version = expected_version + 1
        cur = self._c.execute(
            "UPDATE groups SET epoch = :epoch, state = :state, pending = :pending, updated_at = :now, "
            "version = :new, applied_seq = :seq WHERE identity_id = :identity_id AND group_id = :group_id "
            f"AND {_VERSION} = :expected",
            {
                "epoch": g.epoch,
                "state": g.state,
                "pending": g.pending,
                "now": now,
                "new": new_version,
                "seq": g.applied_seq,
                "identity_id": g.identity_id,
                "group_id": g.group_id,
                "expected": expected_version,
            },
        )
        self._expect(cur, 1, _swap_lost())
        self._c.execute(
            "DELETE FROM group_ratchets WHERE identity_id = ? AND group_id = ?", (g.identity_id, g.group_id)
        )
        return new_version

    def put_group_ratchet(
        self, identity_id: str, group_id: bytes, applied_seq: int, sealed: bytes, expected_version: int
    ) -> int:
        new_version = expected_version + 1
        # One statement, a compare-and-swap on the membership's version: its ratchet state's if it has one
        # (then replaced), else its full state's (then its first ratchet state).
        cur = self._c.execute(
            "INSERT INTO group_ratchets (identity_id, group_id, version, applied_seq, sealed) "
            "SELECT g.identity_id, g.group_id, :new, :seq, :sealed FROM groups g "
            "LEFT JOIN group_ratchets r ON r.identity_id = g.identity_id AND r.group_id = g.group_id "
            "WHERE g.identity_id = :identity_id AND g.group_id = :group_id "
            "AND COALESCE(r.version, g.version) = :expected "
            "ON CONFLICT (identity_id, group_id) DO UPDATE SET version = excluded.version, "
            "applied_seq = excluded.applied_seq, sealed = excluded.sealed "
            "WHERE group_ratchets.version = :expected",
            {
                "new": new_version,
                "seq": applied_seq,
                "sealed": sealed,
                "identity_id": identity_id,
                "group_id": group_id,
                "expected": expected_version,
            },
        )
        self._expect(cur, 1, _swap_lost())
        return new_version

    def delete_group(self, identity_id: str, group_id: bytes) -> bool:
        cur = self._c.execute(
            "DELETE FROM groups WHERE identity_id = ? AND group_id = ?", (identity_id, group_id)
        )
        return cur.rowcount == 1


__all__ = ["SqliteGroupsMixin"]
