"""The routes of a group's log (api-delivery.md "A group's log"): commit bundles and messages submitted by
clients (devices) or with the tenant token, the group's state and its latest GroupInfo.

A client submits as itself (its leaves; it is left out of the fan-out of what it submitted); with the
tenant token the sender is the owner of the message's sender leaf when the framing shows it. Reading a
group needs a leaf in it (a client token) or the tenant token; the latest GroupInfo is open to every
endpoint of the tenant, for external joins.
"""

from __future__ import annotations

from collections.abc import Callable

from mls import MessageInfo, MLSError, inspect_message

from .auth import Principal
from .delivery_store import LogConflict, retrying_races
from .errors import Problem, kept_moving, not_found
from .group_log import Appended, GroupLog, prepare_bundle, prepare_messages
from .persistence import Json, PendingWrites, Persistence, RequestScope, Response
from .store import Store, Transaction
from .views import b64


class LogOperations:
    """Submissions to and reads of group logs by endpoints of a tenant."""

    def __init__(
        self, store: Store, log: GroupLog, persistence: Persistence, after_append: Callable[[Appended], None]
    ) -> None:
        self.store = store
        self.log = log
        self.persistence = persistence
        self.after_append = after_append
        #: Told the reason of each rejected commit (metrics; set by the service).
        self.on_commit_rejected: Callable[[str], None] = lambda reason: None

    def submit_bundle(
        self,
        principal: Principal,
        group_id: bytes,
        parts: tuple[bytes, bytes, bytes | None, bytes | None],
        scope: RequestScope,
    ) -> Response:
        """``POST /v1/groups/{gid}/commit-bundles`` → 201 ``{seq, epoch}`` or 409 ``current_epoch``; a
        rejection is counted by its reason."""
        try:
            return self._submit_bundle(principal, group_id, parts, scope)
        except (Problem, MLSError) as e:
            self.on_commit_rejected(rejection_reason(e))
            raise

    def _submit_bundle(
        self,
        principal: Principal,
        group_id: bytes,
        parts: tuple[bytes, bytes, bytes | None, bytes | None],
        scope: RequestScope,
    ) -> Response:
        commit, group_info, ratchet_tree, welcome = parts
        tenant_id, caller = _tenant(principal), principal.client_id
        if inspect_message(commit).epoch != 0:
            with self.store.read_transaction() as tx:
                self.log.position(tx, tenant_id, group_id)  # 404 before any verification work
        bundle = prepare_bundle(group_id, commit, group_info, ratchet_tree, welcome)
        done: list[Appended] = []

        def write(tx: Transaction) -> None:
            done.append(
                self.log.append_bundle(
                    tx, tenant_id, bundle, self._sender(tx, tenant_id, bundle.info, caller), caller=caller
                )
            )

        response = self._commit(write, done, lambda a: {"seq": a.seq, "epoch": a.epoch}, scope)
        return response

    @staticmethod
    def _sender(tx: Transaction, tenant_id: str, info: MessageInfo, caller: str | None) -> str | None:
        """Who submitted: the calling client, else the owner of the message's sender leaf (if shown)."""
        if caller is not None or info.leaf_index is None:
            return caller
        members = tx.get_members(tenant_id, info.group_id)
        return next((m.endpoint_id for m in members if m.leaf_index == info.leaf_index), None)

    def submit_message(
        self, principal: Principal, group_id: bytes, message: bytes, scope: RequestScope
    ) -> Response:
        """``POST /v1/groups/{gid}/messages`` → 201 ``{seq}``."""
        tenant_id, caller = _tenant(principal), principal.client_id
        with self.store.read_transaction() as tx:
            self.log.position(tx, tenant_id, group_id)  # 404 before any decoding
        prepared = prepare_messages(group_id, [message])
        done: list[Appended] = []

        def write(tx: Transaction) -> None:
            sender = self._sender(tx, tenant_id, prepared[0].info, caller)
            done.append(self.log.append_messages(tx, tenant_id, group_id, prepared, sender, caller=caller))

        return self._commit(write, done, lambda a: {"seq": a.seq}, scope)

    def _commit(
        self,
        write: Callable[[Transaction], None],
        done: list[Appended],
        body: Callable[[Appended], Json],
        scope: RequestScope,
    ) -> Response:
        """One transaction (with the idempotency record); the body is known only inside it."""
        response_body: Json = {}

        def run(tx: Transaction) -> None:
            write(tx)
            response_body.update(body(done[-1]))

        result = self._commit_retrying(run, response_body, scope)
        if done and result.body is response_body:
            self.after_append(done[-1])
        return result

    def _commit_retrying(
        self, run: Callable[[Transaction], None], body: Json, scope: RequestScope
    ) -> Response:
        """Commit, again when another writer of the log won the race (another process, or a member's request
        outside this log's lock): the write re-reads the head each time."""
        return retrying_races(
            lambda: self.persistence.commit(PendingWrites([run]), Response(201, body), scope),
            (LogConflict,),
            kept_moving,
        )

    def show(self, principal: Principal, group_id: bytes) -> Json:
        """``GET /v1/groups/{gid}`` → ``{group_id, epoch, seq, members: [{leaf_index, endpoint}]}``."""
        tenant_id = _tenant(principal)
        with self.store.read_transaction() as tx:
            head = self.log.position(tx, tenant_id, group_id)
            members = tx.get_members(tenant_id, group_id)
        if principal.client_id is not None and all(m.endpoint_id != principal.client_id for m in members):
            raise Problem("not_a_member", "the caller owns no leaf of this group")
        return {
            "group_id": b64(group_id),
            "epoch": head.epoch,
            "seq": head.seq,
            "cipher_suite": head.cipher_suite,
            "members": [{"leaf_index": m.leaf_index, "endpoint": m.endpoint_id} for m in members],
        }

    def group_info(self, principal: Principal, group_id: bytes) -> Json:
        """``GET /v1/groups/{gid}/group-info`` → the latest accepted bundle's GroupInfo, bytes exactly."""
        with self.store.read_transaction() as tx:
            head = self.log.head(tx, _tenant(principal), group_id)
        return {
            "group_info": b64(head.group_info),
            "ratchet_tree": b64(head.ratchet_tree),
            "epoch": head.epoch,
        }


def rejection_reason(error: Exception) -> str:
    """A commit rejection's reason, for the metrics: ``stale_epoch``, ``not_a_member``, ``unknown_group`` or
    ``invalid`` (a label value, never a detail)."""
    code = error.code if isinstance(error, Problem) else "invalid"
    return {"conflict": "stale_epoch", "not_a_member": "not_a_member", "not_found": "unknown_group"}.get(
        code, "invalid"
    )


def _tenant(principal: Principal) -> str:
    if principal.tenant_id is None:
        raise not_found("group")
    return principal.tenant_id


__all__ = ["LogOperations"]
