"""Operations inside one group (api-v1.md "Groups"): commit, pending commit merge and discard, propose,
send, process, GroupInfo, exporter.

Each runs on one :class:`~gateway.group_session.GroupSession` (loaded once, sealed and written once) and
translates its request dataclass (:mod:`gateway.operation_requests`) into the ``mls`` calls: the commit's
:class:`mls.CommitOptions`, the proposal, the PSK ids.
"""

from __future__ import annotations

from mls import (
    Add,
    CommitOptions,
    GroupContextExtensions,
    MemoryPskStore,
    MLSError,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    Remove,
    StagedCommit,
)

from .auth import Principal
from .errors import Problem, conflict, problem_from_exception
from .group_session import GroupSession, new_leaf_key
from .identities import Identities
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
from .persistence import Json, Persistence, RequestScope, Response
from .views import b64, commit_json, result_json


class GroupOperations:
    """The operations of a member inside one group."""

    def __init__(self, identities: Identities, persistence: Persistence) -> None:
        self.identities = identities
        self.persistence = persistence

    def _open(
        self, principal: Principal, identity_id: str, group_id: bytes, *, read_only: bool = False
    ) -> GroupSession:
        """The caller's membership; ``read_only`` for an operation that does not change the state."""
        identity = self.identities.get(principal, identity_id)
        return self.identities.sessions.open(identity, group_id, read_only=read_only)

    def commit(self, principal: Principal, request: CommitRequest, scope: RequestScope) -> Response:
        """``POST .../commits`` (RFC 9420 §12.4): merged at once, or staged with ``pending``."""
        session = self._open(principal, request.identity_id, request.group_id)
        group = session.group
        options = CommitOptions(
            add=[decode_key_package(kp, f"add[{n}]") for n, kp in enumerate(request.add)],
            remove=request.remove,
            psks=self._psk_ids(session, request.external_psks, request.resumption_psks),
            group_context_extensions=request.group_context_extensions,
            include_pending=request.include_pending,
            force_path=request.force_path,
            handshake=handshake(request.handshake),
        )
        with session.audit_context():
            staged = group.commit(options)
        session.pending.new_keys += new_leaf_key(group, staged)
        session.remember_psks([(p.psk_id, p.secret) for p in request.external_psks if p.secret is not None])
        body = commit_json(staged, group.epoch if request.pending else staged.epoch)
        if not request.pending:
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
        """``POST .../pending-commit/merge``."""
        session = self._open(principal, address.identity_id, address.group_id)
        staged = session.group.pending_commit
        if staged is None:
            raise conflict("there is no pending commit")
        session.merge(staged)
        return session.commit(Response(200, {"epoch": session.group.epoch}), scope)

    def discard_pending(self, principal: Principal, address: GroupAddress, scope: RequestScope) -> Response:
        """``DELETE .../pending-commit``: the epoch stays; the leaf key the commit made is destroyed."""
        session = self._open(principal, address.identity_id, address.group_id)
        group = session.group
        staged = group.pending_commit
        if staged is None:
            raise conflict("there is no pending commit")
        session.pending.dead_keys += new_leaf_key(group, staged)
        group.pending_commit = None
        return session.commit(Response(204, None), scope)

    def propose(self, principal: Principal, request: ProposalRequest, scope: RequestScope) -> Response:
        """``POST .../proposals`` (RFC 9420 §12.1)."""
        session = self._open(principal, request.identity_id, request.group_id)
        group = session.group
        with session.audit_context():
            if request.kind == "update":
                message, ref = group.propose_update(handshake(request.handshake))
                session.pending.new_keys += list(group.state.update_keys.values())[-1:]
            else:
                message, ref = group.propose(self._proposal(session, request), handshake(request.handshake))
        if request.psk is not None and request.psk.secret is not None:
            session.remember_psks([(request.psk.psk_id, request.psk.secret)])
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
        """``POST .../messages``: application messages as PrivateMessages (RFC 9420 §6.3)."""
        session = self._open(principal, request.identity_id, request.group_id)
        group = session.group
        with session.audit_context():
            messages = group.protect_many(request.messages)
        body = {"messages": [b64(m) for m in messages]} if request.batch else {"message": b64(messages[0])}
        return session.commit(Response(200, body), scope)

    def process(self, principal: Principal, request: ProcessRequest, scope: RequestScope) -> Response:
        """``POST .../process``: each message in order; a commit is merged at once. In the batch form a
        failed message answers a problem document in its place and the others still count."""
        session = self._open(principal, request.identity_id, request.group_id)
        with session.audit_context():
            results = [self._process_one(session, message, request.batch) for message in request.messages]
        body = {"results": results} if request.batch else results[0]
        return session.commit(Response(200, body), scope)

    @staticmethod
    def _process_one(session: GroupSession, message: bytes, batch: bool) -> Json:
        group = session.group
        if group.pending_commit is not None:
            problem = conflict("a pending commit must be merged or discarded first")
            if not batch:
                raise problem
            return problem.document()
        try:
            result = group.process(message)
            if isinstance(result, StagedCommit):
                session.merge(result)
        except MLSError as e:
            if not batch:
                raise
            return problem_from_exception(e).document()
        return result_json(result, group)

    def group_info(self, principal: Principal, address: GroupAddress, scope: RequestScope) -> Json:
        """``GET .../group-info``: a signed GroupInfo with ``external_pub`` (RFC 9420 §12.4.3)."""
        session = self._open(principal, address.identity_id, address.group_id, read_only=True)
        with session.audit_context():
            info = session.group.group_info(with_ratchet_tree=False)
        self.persistence.write_audit(scope.records)
        return {"group_info": b64(info), "ratchet_tree": b64(session.group.state.tree.encode())}

    def export(self, principal: Principal, request: ExportRequest) -> Json:
        """``POST .../export``: ``MLS-Exporter(label, context, length)`` (RFC 9420 §8.5)."""
        group = self._open(principal, request.identity_id, request.group_id, read_only=True).group
        return {"secret": b64(group.export(request.label, request.context, request.length))}
