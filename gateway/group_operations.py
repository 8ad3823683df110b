"""Operations inside one group (api-v1.md "Groups"): commit, pending commit merge and discard, propose,
send, process, GroupInfo, exporter.

Each runs on one :class:`~gateway.group_session.GroupSession` (loaded once, sealed and written once) and
translates its request dataclass (:mod:`gateway.operation_requests`) into the ``mls`` calls: the commit's
:class:`mls.CommitOptions`, the proposal, the PSK ids.
"""

from __future__ import annotations

from collections.abc import Callable

from mls import (
    Add,
    CommitOptions,
    Credential,
    GroupContextExtensions,
    MemoryPskStore,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    Remove,
)

from .auth import Principal
from .delivery_store import LogConflict, LogPosition, retrying_races
from .errors import Problem, conflict, kept_moving
from .group_session import GroupSession, new_leaf_key
from .hosted_submission import HostedSubmission
from .identities import Identities
from .incoming import IncomingMessages
from .mls_inputs import decode_key_package, external_psk_id, handshake, resumption_psk_id
from .operation_requests import (
    CommitRequest,
    ExportRequest,
    ExternalPsk,
    GroupAddress,
    ProcessRequest,
    ProposalRequest,
    ResumptionPsk,
    SendRequest,
)
from .persistence import Json, Persistence, RequestScope, Response, StaleState
from .views import b64, commit_json


class GroupOperations:
    """The operations of a member inside one group."""

    def __init__(
        self, identities: Identities, persistence: Persistence, submission: HostedSubmission
    ) -> None:
        self.identities = identities
        self.persistence = persistence
        #: The group's log: hosted members' commits, proposals and messages go through it.
        self.submission = submission
        self.incoming = IncomingMessages(identities.sessions, submission)
        #: Told of each hosted commit the log refused (metrics; set by the service).
        self.on_commit_rejected: Callable[[str], None] = lambda reason: None
        #: Told of each operation that lost a race and runs again (metrics; set by the service).
        self.on_lost_race: Callable[[str], None] = lambda operation: None

    def _retrying(self, name: str, operation: Callable[[], Response]) -> Response:
        """Run an operation again when another append won the race (it then builds on the new head,
        api-delivery.md) or another writer changed the membership's state since it was loaded
        (:class:`gateway.persistence.StaleState`: it runs on the stored state); after
        :data:`gateway.delivery_store.LOG_RETRIES` lost races (a short random pause before each retry),
        409. Each lost race is told to :attr:`on_lost_race` with ``name``, the operation."""
        return retrying_races(
            operation, (LogConflict, StaleState), kept_moving, lambda: self.on_lost_race(name)
        )

    def _appending(
        self, name: str, principal: Principal, group_id: bytes, operation: Callable[[], Response]
    ) -> Response:
        """:meth:`_retrying` for an operation that appends to the group's log (the requests that hold the
        in-process log lock, :func:`gateway.dispatch.hosted_log_locks`), holding the group's
        cross-process append lock as well (:meth:`gateway.store.Store.serialise_appends`): hosted
        appends to one group do not race each other across the processes of one SQLite database."""
        with self.submission.store.serialise_appends(principal.tenant_id or "", group_id):
            return self._retrying(name, operation)

    def _open(
        self, principal: Principal, identity_id: str, group_id: bytes, *, read_only: bool = False
    ) -> GroupSession:
        """The caller's membership; ``read_only`` for an operation that does not change the state."""
        identity = self.identities.get(principal, identity_id)
        return self.identities.sessions.open(identity, group_id, read_only=read_only)

    def _open_at_head(
        self, principal: Principal, identity_id: str, group_id: bytes, epoch: int | None = None
    ) -> tuple[GroupSession, LogPosition | None]:
        """The caller's membership, caught up with the group's log, and the log's head
        (:meth:`HostedSubmission.prepare`): the reads of identity, membership, log head and entries share
        one read transaction (one snapshot, no write lock; nothing is written before the commit); PSKs are
        read if an operation names one."""
        with self.submission.store.read_transaction() as tx:
            tenant_id = principal.tenant_id
            if tenant_id is not None:  # the reads below, in one round trip on PostgreSQL
                tx.prefetch(
                    lambda: tx.get_identity(tenant_id, identity_id),
                    lambda: tx.get_group_version(identity_id, group_id),
                    lambda: tx.get_log_position(tenant_id, group_id),
                )
            session = self._open(principal, identity_id, group_id)
            return session, self.submission.prepare(session, epoch)

    def commit(self, principal: Principal, request: CommitRequest, scope: RequestScope) -> Response:
        """``POST .../commits`` (RFC 9420 §12.4): through the group's log and merged at once, or staged
        with ``pending`` (submitted when merged)."""
        try:
            return self._appending(
                "commit", principal, request.group_id, lambda: self._commit(principal, request, scope)
            )
        except Problem as e:
            if e.code == "conflict" and "current_epoch" in e.extra:
                self.on_commit_rejected("stale_epoch")
            raise

    def _commit(self, principal: Principal, request: CommitRequest, scope: RequestScope) -> Response:
        session, head = self._open_at_head(principal, request.identity_id, request.group_id, request.epoch)
        group = session.group
        options = CommitOptions(
            add=[decode_key_package(kp, f"add[{n}]") for n, kp in enumerate(request.add)],
            remove=request.remove,
            psks=self._psk_ids(session, request.external_psks, request.resumption_psks),
            group_context_extensions=request.group_context_extensions,
            include_pending=request.include_pending,
            force_path=request.force_path,
            handshake=handshake(request.handshake),
            credential=_taken_credential(session) if request.force_path else None,
        )
        with session.audit_context():
            staged = group.commit(options)
        session.pending.new_keys += new_leaf_key(group, staged)
        session.remember_psks([(p.psk_id, p.secret) for p in request.external_psks if p.secret is not None])
        body = commit_json(staged, group.epoch if request.pending else staged.epoch)
        if not request.pending:
            self.submission.submit_commit(session, head, staged)
            session.merge(staged)
        return session.commit(Response(200, body), scope)

    def _psk_ids(
        self, session: GroupSession, external: list[ExternalPsk], resumption: list[ResumptionPsk]
    ) -> list[PreSharedKeyID]:
        """PreSharedKeyIDs with fresh nonces; secrets given inline join the group's PSK store."""
        group, suite = session.group, session.identity.cipher_suite
        store = group.psks
        assert isinstance(store, MemoryPskStore)
        out = []
        for psk in external:
            if psk.secret is not None:
                store.external[psk.psk_id] = psk.secret
            out.append(external_psk_id(psk.psk_id, suite))
        for res in resumption:
            out.append(resumption_psk_id(res.group_id, res.epoch, suite))
            if res.group_id != group.group_id:
                store.resumption[(res.group_id, res.epoch)] = self._resumption_psk(session, res)
        return out

    def _resumption_psk(self, session: GroupSession, res: ResumptionPsk) -> bytes:
        """The resumption PSK of another of the identity's groups (RFC 9420 §8.6)."""
        other = session.other_group(res.group_id)
        psk = other.state.resumption_psks.get(res.epoch)
        if psk is None:
            raise Problem(
                "validation_failed",
                "no resumption PSK for that group and epoch",
                rule="8.6/resumption-psk-available",
            )
        return psk

    def merge_pending(self, principal: Principal, address: GroupAddress, scope: RequestScope) -> Response:
        """``POST .../pending-commit/merge``: the staged commit goes through the group's log now."""
        return self._appending(
            "merge", principal, address.group_id, lambda: self._merge_pending(principal, address, scope)
        )

    def _merge_pending(self, principal: Principal, address: GroupAddress, scope: RequestScope) -> Response:
        session = self._open(principal, address.identity_id, address.group_id)
        staged = session.group.pending_commit
        if staged is None:
            raise conflict("there is no pending commit")
        if self.submission.carried(session, staged):
            # The caller carried it to the log (commit-bundles): taking the log merges it.
            self.submission.prepare(session)
            return session.commit(Response(200, {"epoch": session.group.epoch}), scope)
        head = self.submission.prepare(session, session.group.epoch)
        self.submission.submit_commit(session, head, staged)
        session.merge(staged)
        return session.commit(Response(200, {"epoch": session.group.epoch}), scope)

    def discard_pending(self, principal: Principal, address: GroupAddress, scope: RequestScope) -> Response:
        """``DELETE .../pending-commit``: the epoch stays; the leaf key the commit made is destroyed."""
        session = self._open(principal, address.identity_id, address.group_id)
        if session.group.pending_commit is None:
            raise conflict("there is no pending commit")
        session.discard_pending()
        return session.commit(Response(204, None), scope)

    def propose(self, principal: Principal, request: ProposalRequest, scope: RequestScope) -> Response:
        """``POST .../proposals`` (RFC 9420 §12.1), through the group's log."""
        return self._appending(
            "propose", principal, request.group_id, lambda: self._propose(principal, request, scope)
        )

    def _propose(self, principal: Principal, request: ProposalRequest, scope: RequestScope) -> Response:
        session, head = self._open_at_head(principal, request.identity_id, request.group_id, request.epoch)
        group = session.group
        with session.audit_context():
            if request.kind == "update":
                message, ref = group.propose_update(handshake(request.handshake))
                session.pending.new_keys += list(group.state.update_keys.values())[-1:]
            else:
                message, ref = group.propose(self._proposal(session, request), handshake(request.handshake))
        if request.psk is not None and request.psk.secret is not None:
            session.remember_psks([(request.psk.psk_id, request.psk.secret)])
        self.submission.submit_messages(session, head, [message])
        return session.commit(Response(201, {"proposal": b64(message), "ref": b64(ref)}), scope)

    def _proposal(self, session: GroupSession, request: ProposalRequest) -> Proposal:
        """The proposal a request describes (every kind but ``update``, which the group makes itself)."""
        if request.kind == "add":
            assert request.key_package is not None
            return Proposal.of(Add(decode_key_package(request.key_package, "key_package")))
        if request.kind == "remove":
            assert request.leaf_index is not None
            return Proposal.of(Remove(request.leaf_index))
        if request.kind == "psk":
            assert request.psk is not None
            return Proposal.of(PreSharedKey(self._psk_ids(session, [request.psk], [])[0]))
        return Proposal.of(GroupContextExtensions(tuple(request.extensions)))

    def send(self, principal: Principal, request: SendRequest, scope: RequestScope) -> Response:
        """``POST .../messages``: application messages as PrivateMessages (RFC 9420 §6.3), through the
        group's log."""
        return self._appending(
            "send", principal, request.group_id, lambda: self._send(principal, request, scope)
        )

    def _send(self, principal: Principal, request: SendRequest, scope: RequestScope) -> Response:
        session, head = self._open_at_head(principal, request.identity_id, request.group_id)
        group = session.group
        with session.audit_context():
            messages = group.protect_many(request.messages)
        self.submission.submit_messages(session, head, messages)
        body = {"messages": [b64(m) for m in messages]} if request.batch else {"message": b64(messages[0])}
        return session.commit(Response(200, body), scope)

    def process(self, principal: Principal, request: ProcessRequest, scope: RequestScope) -> Response:
        """``POST .../process`` (:mod:`gateway.incoming`)."""
        return self._retrying(
            "process",
            lambda: self.incoming.process(
                lambda: self.identities.get(principal, request.identity_id),
                request.group_id,
                request.messages,
                request.batch,
                scope,
            ),
        )

    def group_info(
        self, principal: Principal, address: GroupAddress, scope: RequestScope, in_extension: bool = False
    ) -> Json:
        """``GET .../group-info``: a signed GroupInfo with ``external_pub`` (RFC 9420 §12.4.3), with the
        tree in its ``ratchet_tree`` extension on request (§12.4.3.3); the tree is also given separately."""
        session = self._open(principal, address.identity_id, address.group_id, read_only=True)
        with session.audit_context():
            info = session.group.group_info(with_ratchet_tree=in_extension)
        self.persistence.write_audit(scope.records)
        return {"group_info": b64(info), "ratchet_tree": b64(session.group.state.tree.encode())}

    def export(self, principal: Principal, request: ExportRequest) -> Json:
        """``POST .../export``: ``MLS-Exporter(label, context, length)`` (RFC 9420 §8.5)."""
        group = self._open(principal, request.identity_id, request.group_id, read_only=True).group
        return {"secret": b64(group.export(request.label, request.context, request.length))}


def _taken_credential(session: GroupSession) -> Credential | None:
    """The identity's credential when its leaf in the group still carries another one (it took a new one
    with ``PUT …/credential``): a path commit then puts it into the UpdatePath leaf (RFC 9420 §5.3.1,
    §7.5), checked first against the tenant's credential policy."""
    current = Credential.from_bytes(session.identity.credential)
    state = session.group.state
    leaf = state.tree.leaf(state.own_leaf)
    return None if leaf is None or leaf.credential == current else current
