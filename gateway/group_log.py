"""Each group's log (api-delivery.md "The model"): one total order, one accepted commit per epoch,
membership from verified commit bundles, and fan-out of every accepted entry.

Submissions are checked in two steps. :func:`prepare_bundle` / :func:`prepare_messages` decode and verify
what can be verified without the store and without group secrets (:mod:`mls.group.observer`: the
framing, the new epoch's GroupInfo signed by the committer over a tree with its tree hash, the Welcome's
KeyPackageRefs) — CPU work done before any lock. :meth:`GroupLog.append_bundle` /
:meth:`GroupLog.append_messages` then run inside the request's store transaction: they read the log's
head, check the epoch and the sender against it, append with compare-and-swap on the head's ``seq``
(:class:`gateway.delivery_store.LogConflict` when another append won), record the new membership, and
fan out — mailbox items for clients, pending work for hosted members (applied by
:mod:`gateway.hosted_delivery`). Everything is one transaction with the state change it belongs to, so a
crash leaves an entry accepted *and* deliverable, or neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from mls import (
    GroupView,
    MessageInfo,
    SenderType,
    inspect_message,
    verify_group_info,
    welcome_key_package_refs,
)

from .delivery_store import HostedWork, LogEntry, LogHead, LogPosition, Member, message_digest
from .errors import Problem, not_found, stale_epoch
from .store import PREFETCHED, Transaction


@dataclass(frozen=True)
class PreparedBundle:
    """A commit bundle whose parts decoded and verified (:func:`prepare_bundle`)."""

    commit: bytes
    info: MessageInfo
    group_info: bytes
    view: GroupView
    welcome: bytes | None
    welcome_refs: tuple[bytes, ...]


@dataclass(frozen=True)
class PreparedMessage:
    message: bytes
    info: MessageInfo


@dataclass
class Appended:
    """What an append did: the last ``seq``, the log's epoch after it, and whom to wake."""

    seq: int
    epoch: int
    clients: set[str] = field(default_factory=set)
    hosted: list[HostedWork] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


def prepare_bundle(
    group_id: bytes, commit: bytes, group_info: bytes, ratchet_tree: bytes | None, welcome: bytes | None
) -> PreparedBundle:
    """Decode and verify a commit bundle (raises ``mls`` errors or a :class:`Problem`)."""
    info = inspect_message(commit)
    if info.kind != "commit":
        raise Problem("invalid_request", "commit must hold a commit (proposals and messages go to /messages)")
    view = verify_group_info(group_info, ratchet_tree)
    _check_bundle(group_id, info, view)
    refs: tuple[bytes, ...] = ()
    if welcome is not None:
        suite, refs = welcome_key_package_refs(welcome)
        if suite != view.cipher_suite:
            raise Problem(
                "validation_failed",
                "the Welcome's cipher suite is not the group's",
                rule="12.4.3.1/welcome-suite",
            )
    return PreparedBundle(commit, info, group_info, view, welcome, refs)


def _check_bundle(group_id: bytes, info: MessageInfo, view: GroupView) -> None:
    if info.group_id != group_id or view.group_id != group_id:
        raise Problem("invalid_request", "the commit and GroupInfo must be for the group in the path")
    if view.epoch != info.epoch + 1:
        raise Problem(
            "validation_failed",
            "the GroupInfo must be of the epoch the commit creates (the commit's epoch + 1)",
            rule="12.4.3/group-info-next-epoch",
        )


def prepare_messages(group_id: bytes, messages: list[bytes]) -> list[PreparedMessage]:
    """Decode proposals and application messages for the log (commits go in bundles)."""
    out = []
    for message in messages:
        info = inspect_message(message)
        if info.kind == "commit":
            raise Problem("invalid_request", "a commit goes to /commit-bundles with its GroupInfo")
        if info.group_id != group_id:
            raise Problem("invalid_request", "the message is for another group than the one in the path")
        out.append(PreparedMessage(message, info))
    return out


class GroupLog:
    """Appends to group logs inside a store transaction (see the module docstring). A message (or commit)
    whose bytes the log already holds is a repeated submission: it is answered with its first ``seq`` and
    appended again to nothing (api-delivery.md: no duplicate effects)."""

    def __init__(self, past_epochs: int = 2) -> None:
        #: How many epochs back receivers still read application messages (``[delivery] past_epochs``).
        self.past_epochs = past_epochs

    def head(self, tx: Transaction, tenant_id: str, group_id: bytes) -> LogHead:
        """The head with its GroupInfo and tree (404 for a group the log does not know)."""
        head = tx.get_log_head(tenant_id, group_id)
        if head is None:
            raise not_found("group")
        return head

    def position(self, tx: Transaction, tenant_id: str, group_id: bytes) -> LogPosition:
        """The head without its blobs (404 for a group the log does not know)."""
        position = tx.get_log_position(tenant_id, group_id)
        if position is None:
            raise not_found("group")
        return position

    def append_bundle(
        self,
        tx: Transaction,
        tenant_id: str,
        bundle: PreparedBundle,
        sender: str | None,
        *,
        caller: str | None,
    ) -> Appended:
        """Accept a commit for the log's epoch (the first one wins; any other epoch answers 409 with
        ``current_epoch``); ``caller`` is the submitting client (checked against the sender's leaf)."""
        group_id, info, view = bundle.info.group_id, bundle.info, bundle.view
        repeated = tx.log_seq_of(tenant_id, group_id, message_digest(bundle.commit))
        if repeated is not None:  # a repeated submission: the answer of the first, nothing appended
            return Appended(repeated, info.epoch + 1, kinds=[])
        head = tx.get_log_position(tenant_id, group_id)
        if head is None:
            if info.epoch != 0:
                raise not_found("group (a group's log starts with the commit of epoch 0)")
            old_members: list[Member] = []
        else:
            if info.epoch != head.epoch:
                raise stale_epoch(head.epoch)
            if view.cipher_suite != head.cipher_suite:
                raise Problem("invalid_request", "the GroupInfo's cipher suite is not the group's")
            old_members = tx.get_members(tenant_id, group_id)
            self._check_sender(info, old_members, caller)
        seq = (head.seq if head else 0) + 1
        new_head = LogHead(
            tenant_id, group_id, view.cipher_suite, view.epoch, seq, bundle.group_info, view.ratchet_tree
        )
        tx.put_log_head(new_head, None if head is None else head.seq)
        entry = LogEntry(
            seq,
            info.epoch,
            "commit",
            sender,
            bundle.commit,
            bundle.welcome,
            bundle.group_info,
            view.ratchet_tree,
        )
        tx.append_log_entries(tenant_id, group_id, [entry])
        members = self._members(tx, tenant_id, view, info, caller)
        tx.set_members(tenant_id, group_id, members)
        appended = Appended(seq, view.epoch, kinds=["commit"])
        # The commit goes to every member of the epoch it ends (removed ones too), but not its sender.
        self._fan_out(tx, tenant_id, group_id, seq, "commit", _endpoints(old_members) - {sender}, appended)
        joiners = self._welcome_endpoints(tx, tenant_id, bundle.welcome_refs)
        self._fan_out(tx, tenant_id, group_id, seq, "welcome", joiners, appended)
        return appended

    def _check_sender(self, info: MessageInfo, members: list[Member], caller: str | None) -> None:
        """A client may submit only as the owner of a leaf (for a PublicMessage: the sender's leaf);
        new members' external commits and proposals come from any endpoint of the tenant."""
        if caller is None or info.sender_type in (
            SenderType.new_member_commit,
            SenderType.new_member_proposal,
        ):
            return
        owned = {m.leaf_index for m in members if m.endpoint_id == caller}
        if info.sender_type == SenderType.external:
            return
        if not owned or (info.leaf_index is not None and info.leaf_index not in owned):
            raise Problem("not_a_member", "the caller owns no leaf of this group that sent this message")

    def _members(
        self, tx: Transaction, tenant_id: str, view: GroupView, info: MessageInfo, caller: str | None
    ) -> list[Member]:
        """The owner of every leaf of the new tree; a new member's external commit registers its leaf's
        key to the submitting client when no endpoint has it yet."""
        members = []
        external = info.sender_type == SenderType.new_member_commit and caller is not None
        for leaf_index, key in view.leaves:
            owner = tx.endpoint_for_key(tenant_id, key)
            joining = external and owner is None and leaf_index == view.signer
            if joining and caller is not None and tx.register_endpoint_key(tenant_id, key, caller):
                owner = caller
            members.append(Member(leaf_index, owner))
        return members

    def _welcome_endpoints(self, tx: Transaction, tenant_id: str, refs: tuple[bytes, ...]) -> set[str]:
        found = (tx.endpoint_for_key_package_ref(tenant_id, ref) for ref in refs)
        return {e for e in found if e is not None}

    def append_messages(
        self,
        tx: Transaction,
        tenant_id: str,
        group_id: bytes,
        messages: list[PreparedMessage],
        sender: str | None,
        *,
        caller: str | None,
    ) -> Appended:
        """Accept proposals (for the log's epoch) and application messages (for it or an epoch the
        receivers still keep), in order, each with the next ``seq``."""
        digests = [message_digest(m.message) for m in messages]
        tx.prefetch(  # on PostgreSQL one round trip for the three kinds of read (they read this group's rows)
            lambda: tx.get_log_position(tenant_id, group_id),
            *[partial(tx.log_seq_of, tenant_id, group_id, d) for d in digests[:PREFETCHED]],
            lambda: tx.get_delivered_members(tenant_id, group_id),
        )
        head = self.position(tx, tenant_id, group_id)
        repeated = [tx.log_seq_of(tenant_id, group_id, d) for d in digests]
        if all(seq is not None for seq in repeated):  # a repeated submission: nothing appended again
            return Appended(max(s for s in repeated if s is not None), head.epoch, kinds=[])
        if any(seq is not None for seq in repeated):
            raise Problem("invalid_request", "some of these messages are already in the group's log")
        members = tx.get_delivered_members(tenant_id, group_id)  # the sender check needs no other leaf
        for m in messages:
            self._check_message_epoch(m.info, head.epoch)
            self._check_sender(m.info, members, caller)
        entries = [
            LogEntry(head.seq + n, m.info.epoch, m.info.kind, sender, m.message)
            for n, m in enumerate(messages, 1)
        ]
        last = entries[-1].seq
        tx.advance_log_seq(head, last)
        tx.append_log_entries(tenant_id, group_id, entries)
        appended = Appended(last, head.epoch, kinds=[e.kind for e in entries])
        receivers = _endpoints(members) - {sender}
        for e in entries:
            self._fan_out(tx, tenant_id, group_id, e.seq, e.kind, receivers, appended)
        return appended

    def _check_message_epoch(self, info: MessageInfo, epoch: int) -> None:
        if info.epoch > epoch:
            raise Problem(
                "invalid_request", f"the message is for epoch {info.epoch}; the group is at {epoch}"
            )
        if info.kind == "proposal" and info.epoch != epoch:
            raise stale_epoch(epoch)
        if info.epoch < epoch - self.past_epochs:
            raise stale_epoch(epoch)

    @staticmethod
    def _fan_out(
        tx: Transaction,
        tenant_id: str,
        group_id: bytes,
        seq: int,
        kind: str,
        endpoints: set[str],
        out: Appended,
    ) -> None:
        clients = sorted(e for e in endpoints if e.startswith("cli_"))
        if clients:
            tx.add_mailbox_items(tenant_id, clients, group_id, seq, kind)
            out.clients.update(clients)
        hosted = sorted(e for e in endpoints if e.startswith("idn_"))
        work = [HostedWork(i, tenant_id, group_id, seq) for i in hosted]
        if work:
            tx.mark_hosted_pending(work)
            out.hosted.extend(work)


def _endpoints(members: list[Member]) -> set[str]:
    return {m.endpoint_id for m in members if m.endpoint_id is not None}


__all__ = ["Appended", "GroupLog", "PreparedBundle", "PreparedMessage", "prepare_bundle", "prepare_messages"]
