"""The reading side of mailboxes (clients) and inboxes (hosted identities) in the store: who owns a
mailbox, acknowledgements, retention and depth (api-delivery.md "Mailboxes (clients) and inboxes").

The items themselves are read with :meth:`gateway.delivery_store.LogTransaction.mailbox_after` and
``inbox_after``; the writers are the group service's (:mod:`gateway.sqlite_delivery`). Cursors are the
tables' ``AUTOINCREMENT`` keys: increasing, never reused, so "after" and "up to" are plain comparisons.
"""

from __future__ import annotations

from typing import Protocol

from .sqlite_queries import SqliteQueries


class MailboxTransaction(Protocol):
    """Acknowledgement, retention and depth of mailboxes and inboxes (:class:`gateway.store.Transaction`)."""

    def mailbox_client_tenant(self, client_id: str) -> str | None:
        """The tenant of a client (the owner of a mailbox), ``None`` when there is no such client."""
        ...

    def ack_mailbox(self, client_id: str, up_to: int) -> int:
        """Delete the client's items with ``cursor <= up_to``; returns how many."""
        ...

    def ack_inbox(self, identity_id: str, up_to: int) -> int:
        """Delete the identity's events with ``cursor <= up_to``; returns how many."""
        ...

    def purge_mailboxes(self, older_than: float) -> int:
        """Delete mailbox items written before ``older_than`` (unix time); returns how many."""
        ...

    def purge_inboxes(self, older_than: float) -> int:
        """Delete inbox events written before ``older_than`` (unix time); returns how many."""
        ...

    def box_depths(self) -> dict[str, int]:
        """Items waiting: ``{"mailbox": n, "inbox": m}`` (the ``mlsgw_mailbox_depth`` gauge)."""
        ...


class SqliteMailboxMixin(SqliteQueries):
    """The :class:`MailboxTransaction` methods of :class:`gateway.sqlite_store.SqliteTransaction`."""

    def mailbox_client_tenant(self, client_id: str) -> str | None:
        r = self._one("SELECT tenant_id FROM clients WHERE client_id = ?", client_id)
        return None if r is None else str(r["tenant_id"])

    def ack_mailbox(self, client_id: str, up_to: int) -> int:
        cur = self._c.execute("DELETE FROM mailbox WHERE client_id = ? AND cursor <= ?", (client_id, up_to))
        return cur.rowcount

    def ack_inbox(self, identity_id: str, up_to: int) -> int:
        cur = self._c.execute("DELETE FROM inbox WHERE identity_id = ? AND cursor <= ?", (identity_id, up_to))
        return cur.rowcount

    def purge_mailboxes(self, older_than: float) -> int:
        return self._c.execute("DELETE FROM mailbox WHERE created_at < ?", (older_than,)).rowcount

    def purge_inboxes(self, older_than: float) -> int:
        return self._c.execute("DELETE FROM inbox WHERE created_at < ?", (older_than,)).rowcount

    def box_depths(self) -> dict[str, int]:
        r = self._one("SELECT (SELECT COUNT(*) FROM mailbox) AS m, (SELECT COUNT(*) FROM inbox) AS i")
        assert r is not None
        return {"mailbox": int(r["m"]), "inbox": int(r["i"])}


__all__ = ["MailboxTransaction", "SqliteMailboxMixin"]
