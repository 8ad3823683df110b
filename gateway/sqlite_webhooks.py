"""Webhook records (api-delivery.md "Webhook for a hosted identity") and their store methods.

One row of ``webhooks`` per hosted identity: the URL, the secret **sealed** under the wrap-key envelope
(:mod:`gateway.api_webhooks` seals it; the store never sees it in the clear), ``delivered_cursor`` (the
inbox cursor up to which events were delivered), and the retry state of the event after it (``attempts``,
``failing_since``, ``next_attempt_at``, ``paused``). ``created_at`` is rewritten by every PUT and always
grows: it is the configuration's generation, so a delivery that finishes after the webhook was replaced
cannot move the new configuration's cursor (:meth:`WebhookTransaction.webhook_delivered`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Protocol

from .delivery_store import InboxRecord
from .sqlite_queries import SqliteQueries


@dataclass(frozen=True)
class WebhookRecord:
    identity_id: str
    url: str
    #: The secret, sealed (never shown: not in reprs either).
    sealed_secret: bytes = field(repr=False)
    delivered_cursor: int
    #: Consecutive failed attempts of the event after ``delivered_cursor``.
    attempts: int
    #: Unix time of the first of those failures (``None`` when the last attempt succeeded).
    failing_since: float | None
    #: Unix time before which the next attempt is not made (``None``: at once).
    next_attempt_at: float | None
    paused: bool
    #: When the webhook was set; also its generation (grows with every PUT).
    created_at: float


@dataclass(frozen=True)
class PendingEvent:
    """An inbox event waiting for a webhook, with the time it was written (for the latency metric)."""

    record: InboxRecord
    created_at: float


class WebhookTransaction(Protocol):
    """The webhook methods of :class:`gateway.store.Transaction`."""

    def put_webhook(self, identity_id: str, url: str, sealed_secret: bytes, delivered_cursor: int) -> float:
        """Set (or replace) the identity's webhook, not failing nor paused; returns its generation."""
        ...

    def get_webhook(self, identity_id: str) -> WebhookRecord | None: ...
    def delete_webhook(self, identity_id: str) -> bool: ...
    def active_webhooks(self) -> list[WebhookRecord]:
        """The webhooks that are not paused."""
        ...

    def last_inbox_cursor(self, identity_id: str) -> int:
        """The identity's newest inbox cursor (0 when its inbox is empty)."""
        ...

    def webhook_backlog(self, identity_id: str, after_cursor: int, limit: int) -> list[PendingEvent]:
        """The identity's inbox events after a cursor, in order (sealed), with their write times."""
        ...

    def webhook_delivered(self, identity_id: str, generation: float, cursor: int) -> bool:
        """Record a success up to ``cursor`` (and clear the failure state) if the webhook is still of
        ``generation`` and behind ``cursor``; returns whether it was."""
        ...

    def webhook_failed(
        self,
        identity_id: str,
        generation: float,
        *,
        attempts: int,
        failing_since: float,
        next_attempt_at: float | None,
        paused: bool,
    ) -> bool:
        """Record a failed attempt (the retry state) if the webhook is still of ``generation``."""
        ...


def _record(r: sqlite3.Row) -> WebhookRecord:
    return WebhookRecord(
        r["identity_id"],
        r["url"],
        bytes(r["secret"]),
        int(r["delivered_cursor"]),
        int(r["attempts"]),
        r["failing_since"],
        r["next_attempt_at"],
        bool(r["paused"]),
        float(r["created_at"]),
    )


class SqliteWebhookMixin(SqliteQueries):
    """The webhook methods of :class:`gateway.sqlite_store.SqliteTransaction`."""

    def put_webhook(self, identity_id: str, url: str, sealed_secret: bytes, delivered_cursor: int) -> float:
        previous = self._one("SELECT created_at FROM webhooks WHERE identity_id = ?", identity_id)
        generation = time.time()
        if previous is not None:
            generation = max(generation, float(previous["created_at"]) + 1e-3)
        self._c.execute(
            "INSERT INTO webhooks (identity_id, url, secret, delivered_cursor, attempts, failing_since, "
            "next_attempt_at, paused, created_at) VALUES (?, ?, ?, ?, 0, NULL, NULL, 0, ?) "
            "ON CONFLICT (identity_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, "
            "delivered_cursor = excluded.delivered_cursor, attempts = 0, failing_since = NULL, "
            "next_attempt_at = NULL, paused = 0, created_at = excluded.created_at",
            (identity_id, url, sealed_secret, delivered_cursor, generation),
        )
        return generation

    def get_webhook(self, identity_id: str) -> WebhookRecord | None:
        r = self._one("SELECT * FROM webhooks WHERE identity_id = ?", identity_id)
        return None if r is None else _record(r)

    def delete_webhook(self, identity_id: str) -> bool:
        return self._c.execute("DELETE FROM webhooks WHERE identity_id = ?", (identity_id,)).rowcount == 1

    def active_webhooks(self) -> list[WebhookRecord]:
        return [_record(r) for r in self._all("SELECT * FROM webhooks WHERE paused = 0 ORDER BY identity_id")]

    def last_inbox_cursor(self, identity_id: str) -> int:
        r = self._one("SELECT MAX(cursor) AS c FROM inbox WHERE identity_id = ?", identity_id)
        return 0 if r is None or r["c"] is None else int(r["c"])

    def webhook_backlog(self, identity_id: str, after_cursor: int, limit: int) -> list[PendingEvent]:
        rows = self._all(
            "SELECT cursor, group_id, seq, event, created_at FROM inbox WHERE identity_id = ? AND cursor > ? "
            "ORDER BY cursor LIMIT ?",
            identity_id,
            after_cursor,
            limit,
        )
        return [
            PendingEvent(
                InboxRecord(r["cursor"], bytes(r["group_id"]), r["seq"], r["event"]), r["created_at"]
            )
            for r in rows
        ]

    def webhook_delivered(self, identity_id: str, generation: float, cursor: int) -> bool:
        cur = self._c.execute(
            "UPDATE webhooks SET delivered_cursor = ?, attempts = 0, failing_since = NULL, "
            "next_attempt_at = NULL WHERE identity_id = ? AND created_at = ? AND delivered_cursor < ?",
            (cursor, identity_id, generation, cursor),
        )
        return cur.rowcount == 1

    def webhook_failed(
        self,
        identity_id: str,
        generation: float,
        *,
        attempts: int,
        failing_since: float,
        next_attempt_at: float | None,
        paused: bool,
    ) -> bool:
        cur = self._c.execute(
            "UPDATE webhooks SET attempts = ?, failing_since = ?, next_attempt_at = ?, paused = ? "
            "WHERE identity_id = ? AND created_at = ?",
            (attempts, failing_since, next_attempt_at, int(paused), identity_id, generation),
        )
        return cur.rowcount == 1


__all__ = ["PendingEvent", "SqliteWebhookMixin", "WebhookRecord", "WebhookTransaction"]
