"""Hosted members are always online (api-delivery.md): the gateway applies every accepted log entry to
each hosted member's state itself, in log order, exactly once (by ``seq``), and what it yields becomes an
event in the member's inbox.

A membership's state records ``applied_seq``, the last entry applied to it, written in the same
compare-and-swap transaction as the state (:class:`gateway.group_session.GroupSession`): an entry is applied
once, whatever crashes or retries happen. The log's appends mark the hosted members with entries to apply
(``hosted_pending``); :meth:`HostedDelivery.advance` applies them, and :mod:`gateway.hosted_worker` runs it
in the background, woken after each append and sweeping the store for work left by a crash.

An identity named in a Welcome that went through the log joins by itself (``auto_join``); one that does not
auto-join gets a ``welcome`` event instead and joins with ``POST …/groups/join``. A member's own pending
(staged) commit loses when the log accepted another commit for its epoch: it is discarded first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mls import MLSError, StagedCommit, welcome_key_package_refs

from .delivery_store import LogEntry, LogPosition
from .errors import Problem, conflict, problem_from_exception
from .group_session import GroupSession, GroupSessions
from .inbox_events import open_event, seal_event
from .operation_requests import GroupSettings
from .persistence import Json, Response
from .store import Identity, Store, Transaction
from .views import b64, result_json

log = logging.getLogger("mls_gateway")

#: Log entries applied per transaction.
BATCH = 100
#: Times :meth:`HostedDelivery.advance` starts again after losing a race for the membership.
RACES = 5

#: Joins a hosted identity from a Welcome: (identity, welcome, ratchet tree, external PSKs, settings) -> an
#: uncommitted session (:meth:`gateway.groups.Groups.join_session`).
Joiner = Callable[
    [Identity, bytes, bytes | None, Sequence[tuple[bytes, bytes]], GroupSettings | None], GroupSession
]


class Progress(NamedTuple):
    """One snapshot of a hosted membership's place in its group's log."""

    #: The log's head (``None``: the group has no log).
    head: LogPosition | None
    #: The last entry applied to the membership (``None``: not a member).
    applied: int | None
    #: The ``up_to_seq`` of its work mark (``hosted_pending``; ``None``: none).
    mark: int | None

    @property
    def settled(self) -> bool:
        """Nothing to apply and no work mark that the applied position covers. (A mark is written with
        its append, so within one snapshot it never exceeds the head; one above ``applied`` with nothing
        left to apply is stale, and clearing it is not this pass's to do.)"""
        if self.head is None:
            return self.mark is None
        if self.applied is None or self.applied < self.head.seq:
            return False
        return self.mark is None or self.mark > self.applied


@dataclass(frozen=True)
class JoinOptions:
    """What a member's own ``POST …/groups/join`` of a Welcome of the log adds to the join."""

    psks: Sequence[tuple[bytes, bytes]] = ()
    settings: GroupSettings | None = None


class HostedDelivery:
    """Applies group logs to hosted memberships (see the module docstring)."""

    def __init__(self, store: Store, sessions: GroupSessions, notify: Callable[[list[str]], None]) -> None:
        self.store = store
        self.sessions = sessions
        #: Wakes the inbox readers of these identities (after a commit).
        self.notify = notify
        #: Set by the service: joins from a Welcome (:meth:`gateway.groups.Groups.join_session`).
        self.joiner: Joiner | None = None
        #: Set by the app: told of each entry applied (``ok`` unless rejected) and its seconds since append.
        self.on_delivered: Callable[[bool, float], None] | None = None

    # ---- inside another operation's unit of work ---------------------------------------------------------
    def catch_up(self, session: GroupSession, up_to: int) -> None:
        """Apply the log's entries after ``session.applied_seq`` up to ``up_to`` to the session's group;
        their events join the session's writes (committed with it)."""
        tenant_id, group_id = session.identity.tenant_id, session.group.group_id
        while session.applied_seq < up_to:
            with self.store.read_transaction() as tx:
                entries = tx.log_entries(
                    tenant_id, group_id, session.applied_seq, min(up_to, session.applied_seq + BATCH)
                )
            if not entries:
                break
            for entry in entries:
                self._apply(session, entry)

    def _apply(self, session: GroupSession, entry: LogEntry) -> None:
        """Apply one entry (skipping its own and, once removed, every later one) and record its event."""
        group = session.group
        session.applied_seq = entry.seq
        if entry.kind == "commit" and group.pending_commit is not None:
            if group.pending_commit.commit == entry.message:
                session.merge(group.pending_commit)  # our staged commit, carried to the log by the caller
                return
            session.discard_pending()  # the log accepted another commit for this epoch: ours lost
        if entry.sender == session.identity_id or not group.state.active:
            return
        try:
            with session.audit_context():
                result = group.process(entry.message)
            if isinstance(result, StagedCommit):
                session.merge(result)
            event = result_json(result, group)
        except MLSError as e:
            event = {"kind": "rejected", "problem": problem_from_exception(e).document()}
        self._add_event(session, entry.seq, event)
        self._count(session, event.get("kind") != "rejected", entry.created_at)

    def _count(self, session: GroupSession, ok: bool, appended_at: float) -> None:
        """Count the delivery once the session committed (a rolled-back one delivered nothing)."""
        report = self.on_delivered
        if report is not None:
            session.after_commit.append(lambda: report(ok, time.time() - appended_at))

    def _add_event(self, session: GroupSession, seq: int, event: Json) -> None:
        identity_id, group_id = session.identity_id, session.group.group_id
        sealed = seal_event(self.sessions.sealer.envelope, identity_id, group_id, seq, event)

        def write(tx: Transaction) -> None:
            tx.put_inbox_event(identity_id, group_id, seq, sealed)

        session.pending.writes.append(write)

    # ---- on its own -------------------------------------------------------------------------------------
    def advance(
        self,
        identity: Identity,
        group_id: bytes,
        *,
        force_join: bool = False,
        join: JoinOptions | None = None,
    ) -> int | None:
        """Apply everything the log holds for this membership (joining first from a Welcome when it is not
        a member yet) as one snapshot of the store shows it; returns the applied ``seq`` (``None`` when
        there is nothing for it). Entries appended after that snapshot have their own work marks and
        wake-ups (:mod:`gateway.hosted_worker` applies them) — except after a join, which looks once more
        (see :meth:`_advancing`). A concurrent writer of the same membership (a request, another process)
        makes it start again on its result."""
        return self._advancing(lambda: identity, group_id, force_join, join or JoinOptions())

    def advance_by_id(self, tenant_id: str, identity_id: str, group_id: bytes) -> int | None:
        """:meth:`advance` for an identity named by its id (the hosted-delivery worker's): it is read in
        the same snapshot as the membership's place in the log; ``None`` when it no longer exists."""

        def load() -> Identity | None:
            with self.store.read_transaction() as tx:
                tx.prefetch(  # what the pass reads first, in one round trip on PostgreSQL
                    lambda: tx.get_identity(tenant_id, identity_id),
                    lambda: tx.hosted_progress(tenant_id, identity_id, group_id),
                    lambda: tx.get_group_version(identity_id, group_id),
                )
                return tx.get_identity(tenant_id, identity_id)

        return self._advancing(load, group_id, False, JoinOptions())

    def _advancing(
        self, load: Callable[[], Identity | None], group_id: bytes, force: bool, join: JoinOptions
    ) -> int | None:
        for _ in range(RACES):
            try:
                applied, joined = self._advance(load, group_id, force, join)
                if joined:
                    # A delivery that ran beside the join saw no membership yet: it may have recorded a
                    # welcome event and cleared the work marks of entries appended after the join's
                    # snapshot. Nothing else would apply those: look once more, now as a member.
                    applied, _ = self._advance(load, group_id, force, join)
                return applied
            except Problem as e:
                if e.code != "conflict":
                    raise
        raise conflict("the membership kept changing concurrently; retry")

    def settled(self, identity: Identity, group_id: bytes) -> bool:
        """Whether :meth:`advance` would do nothing now (no entry to apply, no work mark to clear): a read,
        within the caller's read transaction if it has one."""
        return self._progress(identity, group_id).settled

    def _progress(self, identity: Identity, group_id: bytes) -> Progress:
        with self.store.read_transaction() as tx:
            return Progress(*tx.hosted_progress(identity.tenant_id, identity.identity_id, group_id))

    def _advance(
        self, load: Callable[[], Identity | None], group_id: bytes, force: bool, join: JoinOptions
    ) -> tuple[int | None, bool]:
        """One pass over what one snapshot shows: the applied ``seq`` and whether the pass joined."""
        session: GroupSession | None = None
        with self.store.read_transaction():  # one snapshot: identity, head, membership, entries to apply
            identity = load()
            if identity is None:
                return None, False
            head, applied, _ = progress = self._progress(identity, group_id)
            if head is not None and applied is not None and applied < head.seq:
                session = self.sessions.open(identity, group_id)
                self.catch_up(session, head.seq)
        if progress.settled:
            return (None if head is None else applied), False
        if head is None:  # only a work mark to clear (every one: there is no log)
            self._clear(identity, group_id, None)
            return None, False
        if applied is not None and applied >= head.seq:  # only a work mark to clear
            self._clear(identity, group_id, applied)
            return applied, False
        if applied is None:
            session = self._join(identity, head, force, join)
            if session is None:
                return None, False
            self.catch_up(session, head.seq)
        assert session is not None
        self._commit(session)
        return session.applied_seq, applied is None

    def _commit(self, session: GroupSession) -> None:
        identity_id, group_id, applied = session.identity_id, session.group.group_id, session.applied_seq
        session.pending.writes.append(lambda tx: tx.clear_hosted_pending(identity_id, group_id, applied))
        persistence = self.sessions.persistence
        with persistence.request(None, "hosted-delivery") as scope:
            session.commit(Response(200, None), scope)
        self.notify([identity_id])

    def _join(
        self, identity: Identity, head: LogPosition, force: bool, join: JoinOptions
    ) -> GroupSession | None:
        """Join from the latest Welcome of the log for one of the identity's KeyPackages, or record a
        ``welcome`` event when the identity does not join by itself."""
        found = self._welcome_for(identity, head)
        if found is None:
            self._clear(identity, head.group_id, head.seq)
            return None
        entry = found
        assert entry.welcome is not None
        if not (identity.auto_join or force):
            self._welcome_event(identity, head, entry)
            return None
        assert self.joiner is not None
        try:
            session = self.joiner(identity, entry.welcome, entry.ratchet_tree, join.psks, join.settings)
        except Problem as e:
            if e.code == "conflict":
                raise  # joined concurrently (its KeyPackage is consumed): advance starts again
            log.warning("hosted identity could not join from the log's Welcome (seq %d): %s", entry.seq, e)
            self._welcome_event(identity, head, entry, e.document())
            return None
        except MLSError as e:
            log.warning("hosted identity could not join from the log's Welcome (seq %d): %s", entry.seq, e)
            self._welcome_event(identity, head, entry, problem_from_exception(e).document())
            return None
        session.applied_seq = entry.seq
        self._add_event(session, entry.seq, {"kind": "joined", "epoch": session.group.epoch})
        return session

    def _welcome_for(self, identity: Identity, head: LogPosition) -> LogEntry | None:
        with self.store.read_transaction() as tx:
            for entry in tx.welcome_entries(identity.tenant_id, head.group_id, head.seq):
                if entry.welcome is not None and self._names(tx, identity, entry.welcome):
                    return entry
        return None

    @staticmethod
    def _names(tx: Transaction, identity: Identity, welcome: bytes) -> bool:
        _, refs = welcome_key_package_refs(welcome)
        for ref in refs:
            kp = tx.get_key_package(identity.identity_id, ref)
            if kp is not None and (kp.last_resort or not kp.consumed):
                return True
        return False

    def _welcome_event(
        self, identity: Identity, head: LogPosition, entry: LogEntry, problem: Json | None = None
    ) -> None:
        assert entry.welcome is not None
        event: Json = {"kind": "welcome", "welcome": b64(entry.welcome), "epoch": entry.epoch + 1}
        if entry.ratchet_tree is not None:
            event["ratchet_tree"] = b64(entry.ratchet_tree)
        if problem is not None:
            event = {"kind": "rejected", "problem": problem, "welcome": event["welcome"]}
        sealed = seal_event(
            self.sessions.sealer.envelope, identity.identity_id, head.group_id, entry.seq, event
        )
        identity_id, group_id, seq = identity.identity_id, head.group_id, entry.seq
        with self.store.transaction() as tx:
            # once per Welcome: entries appended after it mark the identity again until it joins
            added = tx.inbox_event_at(identity_id, group_id, seq) is None
            if added:
                tx.put_inbox_event(identity_id, group_id, seq, sealed)
            tx.clear_hosted_pending(identity_id, group_id, head.seq)
        if added:
            self.notify([identity_id])

    def _clear(self, identity: Identity, group_id: bytes, applied: int | None) -> None:
        with self.store.transaction() as tx:
            tx.clear_hosted_pending(
                identity.identity_id, group_id, applied if applied is not None else 1 << 62
            )

    def recorded_event(self, identity: Identity, group_id: bytes, seq: int) -> Json | None:
        """The event the log entry ``seq`` produced for this identity, while it is still in the inbox."""
        with self.store.read_transaction() as tx:
            record = tx.inbox_event_at(identity.identity_id, group_id, seq)
        if record is None:
            return None
        return open_event(
            self.sessions.sealer.envelope, identity.identity_id, group_id, seq, record.sealed_event
        )


__all__ = ["HostedDelivery", "Joiner"]
