"""Reading mailboxes (clients) and inboxes (hosted identities): pages, acknowledgements, retention
(api-delivery.md "Mailboxes (clients) and inboxes (hosted identities)" and "Cursors").

A **box** is one endpoint's queue as seen by one caller: :class:`ClientMailbox` (a client's items, each a
log entry's message or a Welcome) or :class:`IdentityInbox` (a hosted identity's events, opened from their
sealed form here). Every read and acknowledgement checks, in its own transaction, that the caller may see
the box — another tenant's, an unknown one, or another client's mailbox with a client token answer 404
alike — so a box deleted while a long-poll or a WebSocket waits stops answering. Their methods do store
and HSM work: they run in the worker pool (:mod:`gateway.api_mailboxes`).

**Cursors** are opaque to clients; here they are the decimal strings of the store's increasing item keys.
``after`` and ``up_to`` take such a string (a JSON integer is accepted too); ``up_to`` is inclusive;
``next_cursor`` is the last item's cursor, or ``after`` when the page is empty (``"0"``: the start).
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hsm.envelope import Envelope

from .auth import Principal
from .delivery_metrics import DeliveryMetrics
from .errors import invalid, not_found
from .inbox_events import open_event
from .persistence import PendingWrites, Persistence, RequestScope, Response
from .store import Store, Transaction

Json = dict[str, Any]

#: api-delivery.md: ``wait`` above 30 s is treated as 30.
MAX_WAIT_S = 30.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: The largest cursor (SQLite's INTEGER PRIMARY KEY range).
MAX_CURSOR = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_cursor(value: Any, name: str) -> int:
    """A cursor given by a client, as the gateway gave it: a string (400 ``invalid_request`` naming
    ``name`` when it is not one — cursors are opaque, api-delivery.md)."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        cursor = int(value)
    else:
        raise invalid(f"{name} must be a cursor (an item's cursor or a page's next_cursor)")
    if not 0 <= cursor <= MAX_CURSOR:
        raise invalid(f"{name} is not a cursor of this gateway")
    return cursor


def parse_wait(value: str | None) -> float:
    """``wait`` seconds: a non-negative number, capped at :data:`MAX_WAIT_S`; absent means 0."""
    if value is None:
        return 0.0
    try:
        wait = float(value)
    except ValueError:
        raise invalid("wait must be a number of seconds (0 to 30)") from None
    if not math.isfinite(wait) or wait < 0:
        raise invalid("wait must be a number of seconds (0 to 30)")
    return min(wait, MAX_WAIT_S)


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise invalid(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


@dataclass(frozen=True)
class PageQuery:
    """``?after=&wait=&limit=`` of a mailbox or inbox read."""

    after: int = 0
    wait_s: float = 0.0
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> PageQuery:
        after = query.get("after")
        return cls(
            0 if after in (None, "") else parse_cursor(after, "after"),
            parse_wait(query.get("wait")),
            parse_limit(query.get("limit")),
        )


@dataclass(frozen=True)
class Page:
    """One read of a box: its JSON objects in order, when each was written, and the next cursor."""

    #: ``"items"`` (mailbox) or ``"events"`` (inbox): the name of the response's list.
    list_name: str
    entries: list[Json] = field(default_factory=list)
    #: The unix time each entry was written (0 when unknown): delivery latency.
    written_at: list[float] = field(default_factory=list)
    next_cursor: int = 0

    def body(self) -> Json:
        return {self.list_name: self.entries, "next_cursor": str(self.next_cursor)}


def record_deliveries(metrics: DeliveryMetrics, channel: str, written_at: list[float]) -> None:
    """``mlsgw_deliveries`` and the latency histogram, one count per delivered entry."""
    now = time.time()
    for at in written_at:
        metrics.delivered(channel, True, now - at if at else None)


class Box(Protocol):
    """One endpoint's mailbox or inbox, as one caller may read it (methods run in the worker pool)."""

    @property
    def endpoint_id(self) -> str:
        """The endpoint whose wake-ups concern this box (:mod:`gateway.wakeups`)."""
        ...

    @property
    def channel(self) -> str:
        """The metrics channel of a read (``"mailbox"`` or ``"inbox"``)."""
        ...

    def check(self) -> None:
        """Raise 404 unless the caller may see this box."""
        ...

    def read(self, after: int, limit: int) -> Page: ...
    def ack(self, up_to: int, scope: RequestScope) -> Response:
        """Delete the entries with ``cursor <= up_to``: ``204``, committed as one request's write
        (:meth:`gateway.persistence.Persistence.commit`: audit, Idempotency-Key)."""
        ...


@dataclass(frozen=True, kw_only=True)
class StoredBox:
    """What a mailbox and an inbox share: the caller's access check in each transaction, a page read, and
    an ack committed as one request's write. Subclasses say how to check, read and delete."""

    persistence: Persistence
    principal: Principal
    endpoint_id: str

    def _check(self, tx: Transaction) -> None:
        raise NotImplementedError

    def _page(self, tx: Transaction, after: int, limit: int) -> tuple[list[Json], list[float], int | None]:
        """The entries after ``after``, their append times and the last cursor (``None`` when empty)."""
        raise NotImplementedError

    def _delete_up_to(self, tx: Transaction, up_to: int) -> None:
        raise NotImplementedError

    #: ``"items"`` or ``"events"``: the page's list field.
    field: str = ""

    def check(self) -> None:
        with self.persistence.store.read_transaction() as tx:
            self._check(tx)

    def read(self, after: int, limit: int) -> Page:
        with self.persistence.store.read_transaction() as tx:
            self._check(tx)
            entries, times, last = self._page(tx, after, limit)
        return Page(self.field, entries, times, after if last is None else last)

    def ack(self, up_to: int, scope: RequestScope) -> Response:
        def write(tx: Transaction) -> None:
            self._check(tx)
            self._delete_up_to(tx, up_to)

        return self.persistence.commit(PendingWrites([write]), Response(204, None), scope)


@dataclass(frozen=True, kw_only=True)
class ClientMailbox(StoredBox):
    """A client's mailbox: its own token, or a tenant token of its tenant (api-delivery.md)."""

    channel: str = "mailbox"
    field: str = "items"

    def _check(self, tx: Transaction) -> None:
        p = self.principal
        if p.client_id not in (None, self.endpoint_id) or p.tenant_id is None:
            raise not_found("client")
        if tx.mailbox_client_tenant(self.endpoint_id) != p.tenant_id:
            raise not_found("client")

    def _page(self, tx: Transaction, after: int, limit: int) -> tuple[list[Json], list[float], int | None]:
        records = tx.mailbox_after(self.endpoint_id, after, limit)
        entries: list[Json] = [
            {
                "cursor": str(r.cursor),
                "group_id": b64(r.group_id),
                "seq": r.seq,
                "kind": r.kind,
                "message": b64(r.message),
            }
            for r in records
        ]
        return entries, [r.created_at for r in records], records[-1].cursor if records else None

    def _delete_up_to(self, tx: Transaction, up_to: int) -> None:
        tx.ack_mailbox(self.endpoint_id, up_to)


@dataclass(frozen=True, kw_only=True)
class IdentityInbox(StoredBox):
    """A hosted identity's inbox: tenant tokens of its tenant (hosted identities have no tokens)."""

    envelope: Envelope
    channel: str = "inbox"
    field: str = "events"

    def _check(self, tx: Transaction) -> None:
        tenant = self.principal.tenant_id
        if tenant is None or self.principal.is_client or tx.get_identity(tenant, self.endpoint_id) is None:
            raise not_found("identity")

    def _page(self, tx: Transaction, after: int, limit: int) -> tuple[list[Json], list[float], int | None]:
        records = tx.inbox_after(self.endpoint_id, after, limit)
        entries = []
        for r in records:
            event = open_event(self.envelope, self.endpoint_id, r.group_id, r.seq, r.sealed_event)
            head: Json = {"cursor": str(r.cursor), "group_id": b64(r.group_id), "seq": r.seq}
            entries.append(head | {k: v for k, v in event.items() if k not in head})
        return entries, [r.created_at for r in records], records[-1].cursor if records else None

    def _delete_up_to(self, tx: Transaction, up_to: int) -> None:
        tx.ack_inbox(self.endpoint_id, up_to)


def purge_expired_items(store: Store, retention_s: float) -> int:
    """Delete mailbox items and inbox events older than ``retention_s`` (``[delivery]
    mailbox_retention_s``): unacknowledged items are kept that long (api-delivery.md). Returns how many."""
    older_than = time.time() - retention_s
    with store.transaction() as tx:
        return tx.purge_mailboxes(older_than) + tx.purge_inboxes(older_than)


def refresh_depths(metrics: DeliveryMetrics, store: Store) -> None:
    """Set the ``mlsgw_mailbox_depth`` gauge (``box="mailbox"|"inbox"``) from the store."""
    with store.read_transaction() as tx:
        depths = tx.box_depths()
    for box, depth in depths.items():
        metrics.mailbox_depth.labels(box).set(depth)


__all__ = [
    "MAX_WAIT_S",
    "Box",
    "ClientMailbox",
    "IdentityInbox",
    "Page",
    "PageQuery",
    "StoredBox",
    "parse_cursor",
    "purge_expired_items",
    "record_deliveries",
    "refresh_depths",
]
