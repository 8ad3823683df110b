"""How one request's changes become durable: idempotent replay, one transaction, keys destroyed after it.

Every state-changing operation gathers its writes in :class:`PendingWrites` and hands them to
:meth:`Persistence.commit`, which runs them in **one store transaction** together with the audit records
of the request's key uses and — when the request carried an ``Idempotency-Key`` — the response itself,
so a repeat returns it without doing the work twice (api-v1.md, Conventions). Private keys the operation
made dead (a consumed KeyPackage's, a replaced leaf key) are destroyed in the token only after the
transaction committed; keys the operation created are destroyed at once when it fails.

Stored responses may hold secrets (a new bearer token, a decrypted application message), so their bodies
are sealed under the wrap-key envelope with an AAD binding the scope and the key (a row moved to another
key does not open). They live for ``retention_s`` (``[gateway] idempotency_retention_s``, at least the 24 h
api-v1 promises): an older one is no longer replayed — the request runs as a new one — and
the retention task deletes them, per tenant (:mod:`gateway.retention`, at start-up and periodically). Deleting
an identity deletes the records of its requests (:meth:`gateway.store.Transaction.delete_identity`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hsm.audit import caller
from hsm.envelope import Envelope
from hsm.keystore import Pkcs11KeyStore
from mls import MLSError

from . import audit
from .auth import Principal
from .delivery_store import LogConflict
from .errors import Problem, conflict
from .store import AuditRecord, EpochConflict, IdempotentResponse, Store, Transaction

log = logging.getLogger("mls_gateway")

Json = dict[str, Any]
Write = Callable[[Transaction], None]


@dataclass(frozen=True)
class Idempotency:
    """The ``Idempotency-Key`` of a request: the key, its scope (tenant and route), the body's hash and
    the identity the request concerns (its records are deleted with it)."""

    scope: str
    key: str
    request_hash: bytes
    identity_id: str | None = None


@dataclass(frozen=True)
class Response:
    """What an operation answers: an HTTP status and a JSON body (``None`` for an empty one)."""

    status: int
    body: Json | None


@dataclass
class RequestScope:
    """What every operation of one request shares: its audit record buffer and its idempotency key."""

    records: list[AuditRecord] = field(default_factory=list)
    idempotency: Idempotency | None = None


@dataclass
class PendingWrites:
    """What one state-changing request writes, gathered before its transaction, and the keys it affects."""

    writes: list[Write] = field(default_factory=list)
    #: Keys the request makes dead: destroyed once its transaction committed.
    dead_keys: list[bytes] = field(default_factory=list)
    #: Keys the request created: destroyed if its transaction fails.
    new_keys: list[bytes] = field(default_factory=list)


class _Replayed(Exception):
    """A concurrent request with the same Idempotency-Key committed first."""


#: api-v1.md: a stored response is kept at least 24 h (the default and the least configurable retention).
DEFAULT_RETENTION_S = 24 * 3600.0


def _json_bytes(body: Json | None) -> bytes:
    return b"" if body is None else json.dumps(body, separators=(",", ":")).encode()


def _response_aad(idem: Idempotency) -> bytes:
    """Binds a sealed response to its scope and key (length-prefixed: the key is the client's text)."""
    scope, key = idem.scope.encode(), idem.key.encode()
    return b"mls-gateway idempotent response|%d|" % len(scope) + scope + b"|" + key


class StaleState(Problem):
    """The compare-and-swap on the membership's version found another version: another request or another
    gateway process (``serve --workers N``, or a second machine) wrote the state since it was loaded. The
    transaction rolled back and nothing of it stays; an operation that may run again on fresh state
    (:meth:`gateway.group_operations.GroupOperations._retrying`) does, else it is the API's 409."""

    def __init__(self, detail: str) -> None:
        super().__init__("conflict", detail)


class Persistence:
    """Commits requests' writes to a store and keeps the token's keys in step with what committed."""

    def __init__(
        self, store: Store, keys: Pkcs11KeyStore, envelope: Envelope, retention_s: float = DEFAULT_RETENTION_S
    ) -> None:
        self.store = store
        self.keys = keys
        self.envelope = envelope
        #: Seconds a stored response is replayed; older ones are ignored and purged.
        self.retention_s = retention_s

    def _not_before(self) -> float:
        return time.time() - self.retention_s

    def replay(self, idem: Idempotency | None) -> Response | None:
        """The stored response of an earlier request with this key (409 when its body differed); an
        expired one is no response (the request runs as a new one)."""
        if idem is None:
            return None
        with self.store.read_transaction() as tx:
            prior = tx.get_idempotent(idem.scope, idem.key, self._not_before())
        if prior is None:
            return None
        if prior.request_hash != idem.request_hash:
            raise conflict("this Idempotency-Key was used with a different request body")
        self.store.sync()  # the first request may still wait for its fsync: never acknowledge before it
        body = self.envelope.open(prior.body, _response_aad(idem))
        return Response(prior.status, json.loads(body) if body else None)

    def purge_expired(self, now: float | None = None) -> int:
        """Delete the stored responses older than the retention; returns how many."""
        older_than = (time.time() if now is None else now) - self.retention_s
        with self.store.transaction() as tx:
            return tx.purge_idempotent(older_than)

    def commit(
        self, pending: PendingWrites, response: Response, scope: RequestScope, *, group: bytes | None = None
    ) -> Response:
        """Write everything of one request atomically, then destroy the keys it made dead. ``group``: the
        writes touch that group's ratchet state and log only (:meth:`gateway.store.Store.transaction`)."""
        idem = scope.idempotency
        if not (pending.writes or pending.new_keys or pending.dead_keys or scope.records or idem):
            return response  # nothing to write (a message answered from the log): no write transaction
        records: list[AuditRecord] = []
        try:
            sealed = None if idem is None else self._seal(idem, response)  # before taking the write lock
            records = audit.take(scope.records)
            with self.store.transaction(group) as tx:
                for write in pending.writes:
                    write(tx)
                tx.add_audit(records)
                if idem is not None and sealed is not None:
                    self._remember_response(tx, idem, response.status, sealed)
        except LogConflict:
            self._not_committed(pending, scope, records)
            raise
        except _Replayed:
            self._not_committed(pending, scope, records)
            replayed = self.replay(idem)
            assert replayed is not None
            return replayed
        except EpochConflict as e:
            self._not_committed(pending, scope, records)
            raise StaleState(str(e)) from None
        except BaseException:
            self.destroy_keys(pending.new_keys)
            raise
        self.destroy_keys(pending.dead_keys)
        return response

    def _not_committed(self, pending: PendingWrites, scope: RequestScope, records: list[AuditRecord]) -> None:
        """A lost race (or a replay): the transaction wrote nothing — on PostgreSQL a lost compare-and-swap
        may surface only at its ``COMMIT`` (:class:`gateway.postgres_sql.QueuedWrite`), after the audit
        records went to it. They go back to the buffer, for the retry's transaction or the failed request's
        own write (never a key use unaudited); its new keys are destroyed."""
        scope.records[:0] = records
        self.destroy_keys(pending.new_keys)

    def _seal(self, idem: Idempotency, response: Response) -> bytes:
        return self.envelope.seal(_json_bytes(response.body), _response_aad(idem))

    def _remember_response(self, tx: Transaction, idem: Idempotency, status: int, sealed: bytes) -> None:
        if tx.get_idempotent(idem.scope, idem.key, self._not_before()) is not None:
            raise _Replayed()
        stored = IdempotentResponse(idem.request_hash, status, sealed)
        tx.put_idempotent(idem.scope, idem.key, stored, idem.identity_id)

    def write_audit(self, records: list[AuditRecord]) -> None:
        """Audit records not written with a state change (a read, a failed request), in a transaction."""
        collected = audit.take(records)
        if collected:
            with self.store.transaction() as tx:
                tx.add_audit(collected)

    def destroy_keys(self, refs: Sequence[bytes]) -> None:
        """Destroy keys in the token; a key that cannot be destroyed now is logged and left there."""
        for ref in refs:
            try:
                self.keys.destroy(ref)
            except MLSError:
                log.warning(
                    "could not destroy key %s; it is left in the token (reconciliation of orphaned "
                    "keys is a later issue)",
                    ref.hex()[:16],
                )

    @contextmanager
    def request(self, principal: Principal | None, request_id: str) -> Iterator[RequestScope]:
        """The audit context of one request: caller context for the HSM hook and a record buffer, whose
        records not committed with the request's writes are written when the block ends."""
        ctx = {"request_id": request_id}
        if principal is not None:
            ctx["token_id"] = principal.token_id  # who, for the audit records (gateway.audit)
        if principal is not None and principal.tenant_id is not None:
            ctx["tenant_id"] = principal.tenant_id
        with caller(**ctx), audit.collecting() as records:
            try:
                yield RequestScope(records)
            finally:
                if records:
                    self.write_audit(records)


@contextmanager
def group_audit_context(identity_id: str, group_id: bytes, epoch: int | None = None) -> Iterator[None]:
    """Key uses inside the block are audited as this identity's, in this group (and epoch)."""
    ctx = {"identity_id": identity_id, "group_id": group_id.hex()}
    if epoch is not None:
        ctx["epoch"] = str(epoch)
    with caller(**ctx):
        yield


__all__ = ["Idempotency", "PendingWrites", "Persistence", "RequestScope", "Response", "group_audit_context"]
