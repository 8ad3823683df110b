"""A hosted member's commits, proposals and application messages go through its group's log
(api-delivery.md "Details": hosted members' messages go through the log).

Before building on its state, the member takes everything the log accepted before this request
(:meth:`HostedSubmission.prepare`, which applies it in the same unit of work); what it makes is appended
in the unit of work's transaction with compare-and-swap on the log's head, its state written with the new
``applied_seq``: the state and the log cannot disagree, and when another append won in between the
transaction rolls back with :class:`gateway.delivery_store.LogConflict` and the operation runs again on
the new head. An ``epoch`` given by the caller that the log already left answers ``409`` with
``current_epoch`` before anything is touched. A group the log does not know stays an api-v1 group (its
messages are carried by the caller), except that its first commit (epoch 0 -> 1) registers it.
"""

from __future__ import annotations

from collections.abc import Callable

from mls import StagedCommit, inspect_message, state_view, welcome_key_package_refs

from .delivery_store import LogConflict, LogPosition, message_digest
from .errors import stale_epoch
from .group_log import Appended, GroupLog, PreparedBundle, PreparedMessage
from .group_session import GroupSession
from .hosted_delivery import HostedDelivery
from .store import Store, Transaction

#: Called with what an append did, after its transaction committed (wake-ups, hosted fan-out).
AfterAppend = Callable[[Appended], None]


class HostedSubmission:
    """Submits a hosted member's handshake and application messages to its group's log."""

    def __init__(
        self, store: Store, log: GroupLog, hosted: HostedDelivery, after_append: AfterAppend
    ) -> None:
        self.store = store
        self.log = log
        self.hosted = hosted
        self.after_append = after_append

    def prepare(self, session: GroupSession, epoch: int | None = None) -> LogPosition | None:
        """The log's head (``None`` for a group the log does not know), after the member took every entry
        before it; ``409`` when ``epoch`` is given and the group already left it."""
        with self.store.read_transaction() as tx:
            head = tx.get_log_position(session.identity.tenant_id, session.group.group_id)
        current = head.epoch if head is not None else session.group.epoch
        if epoch is not None and epoch < current:
            raise stale_epoch(current)
        if head is not None:
            self.hosted.catch_up(session, head.seq)
        return head

    def carried(self, session: GroupSession, staged: StagedCommit) -> bool:
        """Whether the group's log already holds this staged commit (the caller submitted it itself)."""
        if staged.commit is None:
            return False
        with self.store.read_transaction() as tx:
            seq = tx.log_seq_of(
                session.identity.tenant_id, session.group.group_id, message_digest(staged.commit)
            )
        return seq is not None

    def submit_commit(self, session: GroupSession, head: LogPosition | None, staged: StagedCommit) -> None:
        """Append a commit the member made (the state merges it in the same transaction)."""
        if head is None and session.group.epoch != 0:
            return
        assert staged.commit is not None and staged.group_info is not None and staged.state is not None
        refs = () if staged.welcome is None else welcome_key_package_refs(staged.welcome)[1]
        bundle = PreparedBundle(
            staged.commit,
            inspect_message(staged.commit),
            staged.group_info,
            state_view(staged.state),
            staged.welcome,
            refs,
        )
        self._append(
            session,
            lambda tx: self.log.append_bundle(
                tx, session.identity.tenant_id, bundle, session.identity_id, caller=None
            ),
        )

    def submit_foreign_commit(self, session: GroupSession, head: LogPosition | None, commit: bytes) -> None:
        """Append a commit that reached the member by another path (``/process``) and that it merged: it
        is for the log's epoch (or the log rolls back with a conflict), and the new epoch's GroupInfo is
        the member's own, signed by it (any member may sign one, RFC 9420 §12.4.3)."""
        if head is None:
            return
        group = session.group
        with session.audit_context():
            group_info = group.group_info(with_ratchet_tree=False)
        bundle = PreparedBundle(
            commit, inspect_message(commit), group_info, state_view(group.state), None, ()
        )
        tenant_id = session.identity.tenant_id
        self._append(session, lambda tx: self.log.append_bundle(tx, tenant_id, bundle, None, caller=None))

    def submit_external_commit(self, session: GroupSession, commit: bytes) -> None:
        """Append a hosted identity's external commit (its join, RFC 9420 §12.4.3.2) when the log knows the
        group: accepted only for the log's epoch (else 409 with ``current_epoch``), with a GroupInfo of the
        new epoch the new member signs; it then has everything up to its own commit."""
        group = session.group
        with self.store.read_transaction() as tx:
            head = tx.get_log_position(session.identity.tenant_id, group.group_id)
        if head is None:
            return
        session.applied_seq = head.seq
        self.submit_foreign_commit(session, head, commit)

    def submit_messages(self, session: GroupSession, head: LogPosition | None, messages: list[bytes]) -> None:
        """Append proposals or application messages the member made, in order."""
        if head is None:
            return
        group_id = session.group.group_id
        prepared = [PreparedMessage(m, inspect_message(m)) for m in messages]
        tenant_id = session.identity.tenant_id
        self._append(
            session,
            lambda tx: self.log.append_messages(
                tx, tenant_id, group_id, prepared, session.identity_id, caller=None
            ),
            len(messages),
        )

    def _append(
        self, session: GroupSession, append: Callable[[Transaction], Appended], count: int = 1
    ) -> None:
        """Join the append to the session's transaction; the state records the seq it will have (the
        member took every entry before it, :meth:`prepare`). The append must land right after those
        entries: when another append (another process's) came in between, the transaction rolls back with
        :class:`gateway.delivery_store.LogConflict` and the operation runs again on the new head — else the
        state would record as applied an entry the member never took (a commit skipped: a fork; a message:
        lost). A repeated submission (nothing appended) is left as it was."""
        caught_up = session.applied_seq
        session.applied_seq += count
        expected = session.applied_seq
        done: list[Appended] = []

        def write(tx: Transaction) -> None:
            appended = append(tx)
            if appended.kinds and appended.seq != expected:
                raise LogConflict(f"the group's log moved past seq {caught_up} before this append")
            done.append(appended)

        session.pending.writes.append(write)
        session.after_commit.append(lambda: [self.after_append(a) for a in done])


__all__ = ["AfterAppend", "HostedSubmission"]
