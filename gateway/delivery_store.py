"""The group service's records and the store methods of group logs, mailboxes and inboxes
(api-delivery.md).

A group's **log** is its head (:class:`LogHead`: epoch, last ``seq``, the latest accepted GroupInfo and
ratchet tree), its members (:class:`Member`: leaf index -> endpoint) and its entries (:class:`LogEntry`).
Appending is a compare-and-swap on the head's ``seq`` (:meth:`LogTransaction.put_log_head`), in the same
transaction as everything the append changes (fan-out to mailboxes, the sender's state), so the log and
what it reflects cannot disagree and two writers cannot both append the same ``seq`` (or two commits for
one epoch). Mailbox items (clients) point at log entries; inbox events (hosted identities) hold the result
of applying an entry, sealed (they may hold application plaintext). ``hosted_pending`` says which hosted
memberships have log entries to apply: written with the append, cleared when applied, swept at start-up.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


def message_digest(message: bytes) -> bytes:
    """How a log entry is found by its bytes (a repeated delivery, a Welcome's group): SHA-256."""
    return hashlib.sha256(message).digest()


#: The kinds of log entries (and of mailbox items, plus ``"welcome"``).
LOG_KINDS = ("commit", "proposal", "application")


#: How many times an append is built (or written) again when another append to the same log won the race.
LOG_RETRIES = 8

#: The longest pause before the first retry of a lost race; it doubles per retry up to 32× (full jitter:
#: a uniformly random pause up to it). Retrying at once against writers that keep winning — several
#: processes on one busy group — tends to lose again and again; spreading the retries lets each through.
RETRY_PAUSE_S = 0.001


def retry_pause(attempt: int) -> float:
    """The random pause before retry number ``attempt`` (1, 2, …) of an operation that lost a race."""
    return random.uniform(0.0, RETRY_PAUSE_S * 2 ** min(attempt - 1, 5))


def retrying_races(
    operation: Callable[[], T],
    races: tuple[type[Exception], ...],
    give_up: Callable[[], Exception],
    lost: Callable[[], None] = lambda: None,
) -> T:
    """``operation()``, run again after a short random pause (:func:`retry_pause`) each time it raises one
    of ``races`` (another append won: it re-reads and builds on the new head), at most :data:`LOG_RETRIES`
    times in all; then ``give_up()`` is raised (the API's 409). Each lost race is told to ``lost()``."""
    for attempt in range(LOG_RETRIES):
        if attempt:
            time.sleep(retry_pause(attempt))
        try:
            return operation()
        except races:
            lost()
    raise give_up()


class LogConflict(Exception):
    """The log's head moved since it was read (another append won): re-read and retry, or 409.

    Not an :class:`gateway.store.EpochConflict`: :class:`gateway.persistence.Persistence` lets it through
    unchanged so that the operation can retry on the new head."""


@dataclass(frozen=True)
class LogPosition:
    """Where a group's log stands, without the head's blobs (read per message: its size must not grow
    with the group)."""

    tenant_id: str
    group_id: bytes
    cipher_suite: int
    #: The epoch after the last accepted commit.
    epoch: int
    #: The last entry's sequence number (entries are numbered from 1).
    seq: int


@dataclass(frozen=True)
class LogHead(LogPosition):
    """The position and the latest accepted commit's GroupInfo and ratchet tree (joins, ``group-info``)."""

    #: The latest accepted commit bundle's GroupInfo (an MLSMessage), bytes exactly as submitted.
    group_info: bytes
    #: The ratchet tree of that epoch (TLS ``optional<Node> ratchet_tree<V>``).
    ratchet_tree: bytes


@dataclass(frozen=True)
class Member:
    leaf_index: int
    #: The endpoint (``idn_…`` or ``cli_…``) that registered the leaf's signature key; ``None`` if none.
    endpoint_id: str | None


@dataclass(frozen=True)
class LogEntry:
    seq: int
    #: The epoch of the message (for a commit: the epoch it was accepted at, the new one is ``epoch + 1``).
    epoch: int
    kind: str
    #: The endpoint that submitted it (left out of its fan-out), if known.
    sender: str | None
    message: bytes
    #: A commit's Welcome, if any.
    welcome: bytes | None = None
    #: A commit's GroupInfo and ratchet tree of the new epoch (what a joiner from its Welcome needs).
    group_info: bytes | None = None
    ratchet_tree: bytes | None = None
    #: When it was appended (seconds since the epoch), for delivery latency.
    created_at: float = 0.0


@dataclass(frozen=True)
class HostedWork:
    """A hosted membership with log entries to apply, up to ``up_to_seq`` (or a Welcome to join from)."""

    identity_id: str
    tenant_id: str
    group_id: bytes
    up_to_seq: int


@dataclass(frozen=True)
class InboxRecord:
    cursor: int
    group_id: bytes
    seq: int
    #: The event's JSON, sealed (:mod:`gateway.inbox_events`).
    sealed_event: bytes
    #: When the event was written (unix time; 0 when not read): delivery latency.
    created_at: float = 0.0


@dataclass(frozen=True)
class MailboxRecord:
    cursor: int
    group_id: bytes
    seq: int
    kind: str
    message: bytes
    #: When the item was written (unix time; 0 when not read): delivery latency.
    created_at: float = 0.0


class EndpointRegistry(Protocol):
    """Which endpoint a signature key or a KeyPackageRef belongs to (tenant-scoped)."""

    def endpoint_for_key(self, tenant_id: str, signature_key: bytes) -> str | None: ...
    def register_endpoint_key(self, tenant_id: str, signature_key: bytes, endpoint_id: str) -> bool:
        """Register a key to an endpoint; ``False`` (nothing changed) when another endpoint has it."""
        ...

    def endpoint_for_key_package_ref(self, tenant_id: str, ref: bytes) -> str | None:
        """The client (directory) or hosted identity whose KeyPackage has this KeyPackageRef."""
        ...


class LogTransaction(EndpointRegistry, Protocol):
    """The log, and mailboxes and inboxes (the endpoint key registry is the directory's,
    :mod:`gateway.sqlite_directory`)."""

    def get_log_head(self, tenant_id: str, group_id: bytes) -> LogHead | None: ...
    def get_log_position(self, tenant_id: str, group_id: bytes) -> LogPosition | None:
        """The head without its GroupInfo and tree (what an application message's path reads)."""
        ...

    def advance_log_seq(self, position: LogPosition, seq: int) -> None:
        """Move the head's ``seq`` on (entries appended within its epoch) only if it is still
        ``position.seq``; raises :class:`LogConflict` otherwise. Writes no blob."""
        ...

    def put_log_head(self, head: LogHead, expected_seq: int | None) -> None:
        """Insert (``expected_seq is None``) or update only if the stored ``seq`` is still
        ``expected_seq``; raises :class:`LogConflict` otherwise."""
        ...

    def append_log_entries(self, tenant_id: str, group_id: bytes, entries: list[LogEntry]) -> None: ...
    def log_entries(self, tenant_id: str, group_id: bytes, after_seq: int, up_to_seq: int) -> list[LogEntry]:
        """The entries with ``after_seq < seq <= up_to_seq``, in order."""
        ...

    def welcome_entries(self, tenant_id: str, group_id: bytes, up_to_seq: int) -> list[LogEntry]:
        """The entries with a Welcome, up to ``up_to_seq``, newest first."""
        ...

    def log_seq_of(self, tenant_id: str, group_id: bytes, digest: bytes) -> int | None:
        """The ``seq`` of the entry whose message has this SHA-256 (a Welcome: :meth:`welcome_log`)."""
        ...

    def welcome_log(self, tenant_id: str, digest: bytes) -> tuple[bytes, int] | None:
        """The (group id, seq) of the commit a Welcome with this SHA-256 came with, in this tenant."""
        ...

    def get_members(self, tenant_id: str, group_id: bytes) -> list[Member]: ...
    def get_delivered_members(self, tenant_id: str, group_id: bytes) -> list[Member]:
        """The members that have an endpoint (those a message is delivered to), read through an index
        of their own: a large group's other leaves are not read."""
        ...

    def set_members(self, tenant_id: str, group_id: bytes, members: list[Member]) -> None: ...
    def endpoint_groups(self, endpoint_id: str) -> list[tuple[str, bytes]]:
        """The (tenant, group id) of the logs in which the endpoint owns a leaf."""
        ...

    def add_mailbox_items(
        self, tenant_id: str, client_ids: list[str], group_id: bytes, seq: int, kind: str
    ) -> None: ...
    def mailbox_after(self, client_id: str, after_cursor: int, limit: int) -> list[MailboxRecord]:
        """A client's items after a cursor, in order, with the message bytes of their log entries."""
        ...

    def inbox_after(self, identity_id: str, after_cursor: int, limit: int) -> list[InboxRecord]:
        """An identity's events after a cursor, in order (sealed)."""
        ...

    def add_inbox_event(self, identity_id: str, group_id: bytes, seq: int, sealed_event: bytes) -> int:
        """Append an event; returns its cursor."""
        ...

    def put_inbox_event(self, identity_id: str, group_id: bytes, seq: int, sealed_event: bytes) -> None:
        """:meth:`add_inbox_event` without asking for the cursor: on PostgreSQL a write that waits for the
        transaction's ``COMMIT`` (no round trip of its own while the order lock is held)."""
        ...

    def inbox_event_at(self, identity_id: str, group_id: bytes, seq: int) -> InboxRecord | None:
        """The (unacknowledged) event the log entry ``seq`` produced for this identity, if still there."""
        ...

    def mark_hosted_pending(self, work: list[HostedWork]) -> None:
        """Record hosted memberships (or joiners) with log entries to apply (the highest ``up_to_seq``)."""
        ...

    def hosted_pending(self, limit: int) -> list[HostedWork]: ...
    def clear_hosted_pending(self, identity_id: str, group_id: bytes, applied_seq: int) -> None:
        """Forget the work when everything up to ``applied_seq`` covers it."""
        ...

    def hosted_progress(
        self, tenant_id: str, identity_id: str, group_id: bytes
    ) -> tuple[LogPosition | None, int | None, int | None]:
        """A hosted membership's place in its group's log, in one statement: the log's position
        (``None``: no log), the last entry applied to the membership (``None``: no membership) and the
        ``up_to_seq`` of its pending work (``None``: none) — so that a reader can tell whether
        :meth:`clear_hosted_pending` has anything to do without taking the write lock."""
        ...


__all__ = [
    "LOG_KINDS",
    "LOG_RETRIES",
    "RETRY_PAUSE_S",
    "HostedWork",
    "InboxRecord",
    "LogConflict",
    "LogEntry",
    "LogHead",
    "LogTransaction",
    "MailboxRecord",
    "Member",
    "message_digest",
    "retry_pause",
    "retrying_races",
]
