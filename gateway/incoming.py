"""``POST …/process`` (api-v1.md) for a hosted member, with the group service in mind (api-delivery.md).

A message that went through the group's log has been (or is about to be) applied to the member by the
gateway itself: processing it again would fail (its generation is used) or, for a commit, fork. So such a
message is recognised by its bytes (a repeated delivery) — the member is first brought up to it, then the
answer is the event it produced, while that event is still in the inbox. Messages that arrive by other
paths are processed as before, after the member took the log's entries; in a group the log orders, a
commit from elsewhere that the member merges is appended to the log in the same transaction (with a
GroupInfo the member signs), so the other members follow it — or, when the log already accepted another
commit for that epoch, the request answers 409 and changes nothing. A commit or proposal for an epoch
the member already left answers ``409 conflict`` with ``current_epoch`` (api-v1.md's stale epoch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from mls import MLSError, StagedCommit, inspect_message

from .delivery_store import LogPosition, message_digest
from .errors import Problem, conflict, problem_from_exception, stale_epoch
from .group_session import GroupSession, GroupSessions
from .hosted_submission import HostedSubmission
from .persistence import Json, RequestScope, Response
from .store import PREFETCHED, Identity, Transaction
from .views import result_json


@dataclass(frozen=True)
class RecordedProblem:
    """The problem an entry of the log met when it was applied (a ``rejected`` event), answered again."""

    code: str
    detail: str
    rule: str | None

    @classmethod
    def of(cls, document: Json) -> RecordedProblem:
        return cls(str(document["code"]), str(document["detail"]), document.get("rule"))


class IncomingMessages:
    """Processes messages for a hosted member (see the module docstring)."""

    def __init__(self, sessions: GroupSessions, submission: HostedSubmission) -> None:
        self.store = submission.store
        self.sessions = sessions
        self.hosted = submission.hosted
        self.submission = submission

    def process(
        self,
        load_identity: Callable[[], Identity],
        group_id: bytes,
        messages: list[bytes],
        batch: bool,
        scope: RequestScope,
    ) -> Response:
        """Each message in order; a commit is merged at once. In the batch form a failed message answers a
        problem document in its place and the others still count.

        The identity, the messages' places in the log, the membership, the log's head and entries and the
        recorded events are read in one read transaction (one snapshot, no write lock) — unless the member
        must first take entries from the log (:meth:`HostedDelivery.advance`, its own write), then in a
        second one after it; everything else is written by the commit below."""
        with self.store.read_transaction() as tx:
            identity = load_identity()
            self._prefetch(tx, identity, group_id, messages)
            positions = self._log_positions(identity, group_id, messages)
            behind = any(p is not None for p in positions) and not self.hosted.settled(identity, group_id)
            outcome = None if behind else self._outcome(identity, group_id, messages, positions, batch)
        if outcome is None:
            self.hosted.advance(identity, group_id, force_join=True)
            with self.store.read_transaction():
                outcome = self._outcome(identity, group_id, messages, positions, batch)
        session, results = outcome
        body = {"results": results} if batch else results[0]
        return session.commit(Response(200, body), scope)

    def _outcome(
        self,
        identity: Identity,
        group_id: bytes,
        messages: list[bytes],
        positions: list[int | None],
        batch: bool,
    ) -> tuple[GroupSession, list[Json]]:
        """The membership (uncommitted) and each message's answer."""
        session = self.sessions.open(identity, group_id)
        head = self.submission.prepare(session)
        results = []
        with session.audit_context():
            for message, seq in zip(messages, positions, strict=True):
                one = self._recorded if seq is not None else self._process_one
                results.append(_answer(one, (session, message, seq, head), batch))
        return session, results

    @staticmethod
    def _prefetch(tx: Transaction, identity: Identity, group_id: bytes, messages: list[bytes]) -> None:
        """The reads that follow, asked for together (one round trip on PostgreSQL)."""
        tenant_id, identity_id = identity.tenant_id, identity.identity_id
        tx.prefetch(
            lambda: tx.get_log_position(tenant_id, group_id),
            *[partial(tx.log_seq_of, tenant_id, group_id, message_digest(m)) for m in messages[:PREFETCHED]],
            lambda: tx.hosted_progress(tenant_id, identity_id, group_id),
            lambda: tx.get_group_version(identity_id, group_id),
        )

    def _log_positions(self, identity: Identity, group_id: bytes, messages: list[bytes]) -> list[int | None]:
        """Each message's ``seq`` in the group's log (``None`` if it is not there)."""
        with self.store.read_transaction() as tx:
            if tx.get_log_position(identity.tenant_id, group_id) is None:
                return [None] * len(messages)
            return [tx.log_seq_of(identity.tenant_id, group_id, message_digest(m)) for m in messages]

    def _recorded(
        self, session: GroupSession, message: bytes, seq: int | None, head: LogPosition | None
    ) -> Json:
        """What a log entry produced for this member (a repeated delivery changes nothing)."""
        assert seq is not None
        event = self.hosted.recorded_event(session.identity, session.group.group_id, seq)
        if event is None:
            raise conflict(
                f"this message was applied from the group's log (seq {seq}); its event is gone", seq=seq
            )
        if event.get("kind") in ("joined", "welcome"):
            raise stale_epoch(session.group.epoch)  # the member joined from this commit's Welcome
        if event.get("kind") == "rejected":
            recorded = RecordedProblem.of(event["problem"])
            raise Problem(recorded.code, recorded.detail, rule=recorded.rule)
        return event

    def _process_one(
        self, session: GroupSession, message: bytes, seq: int | None, head: LogPosition | None
    ) -> Json:
        group = session.group
        if group.pending_commit is not None:
            raise conflict("a pending commit must be merged or discarded first")
        info = inspect_message(message)
        if info.kind != "application" and info.epoch < group.epoch:
            raise stale_epoch(group.epoch)
        result = group.process(message)
        if isinstance(result, StagedCommit):
            session.merge(result)
            self.submission.submit_foreign_commit(session, head, message)
        return result_json(result, group)


def _answer(
    run: Callable[[GroupSession, bytes, int | None, LogPosition | None], Json],
    args: tuple[GroupSession, bytes, int | None, LogPosition | None],
    batch: bool,
) -> Json:
    """The result of ``run(*args)``, or in the batch form its failure as a problem document."""
    try:
        return run(*args)
    except (MLSError, Problem) as e:
        if not batch:
            raise
        return problem_from_exception(e).document()


__all__ = ["IncomingMessages"]
