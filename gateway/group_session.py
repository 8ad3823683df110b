"""One unit of work per group operation: load a membership once, run the operation, seal once, write once.

A :class:`GroupSession` is one identity's membership of one group for the length of one request:

1. **load** (:meth:`GroupSessions.open`) — the group record's version and the identity's sealed PSKs, in
   one read-only transaction (no write lock); the decoded :class:`mls.GroupState` and pending commit come
   from the state cache (:mod:`gateway.state_cache`) when its entry is of that version, else the sealed
   record is read in the same transaction and unsealed. A writing session takes the entry out of the
   cache (the operation changes the state in place) and puts the new state back, with the new version,
   only after :meth:`GroupSession.commit` committed: a failure anywhere leaves no entry. A read-only
   session (``read_only=True``) leaves the entry, or adds the one it decoded.
2. **operate** — the operation calls the :class:`mls.Group` (``session.group``) and records what it
   produced: merges through :meth:`GroupSession.merge` (the one place that collects the keys a merge made
   dead), extra writes in ``session.pending`` (the messages it produced are in its response only).
3. **commit** (:meth:`GroupSession.commit`) — seal the state once, then one transaction: the operation's
   other writes (KeyPackage consumption, PSKs), the group record with compare-and-swap
   on the record version loaded in step 1 (:meth:`gateway.store.Transaction.put_group`), the audit records
   and the idempotency record (:class:`gateway.persistence.Persistence`). *The group log append goes
   here*: the group service's ``append_log(group_id, epoch, message)`` (one accepted commit per epoch)
   joins the same transaction as one more write, so the state and the log cannot disagree. Keys the
   operation made dead are destroyed only after the transaction committed; keys it created are destroyed
   if it failed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from mls import Group, LeafPolicy, MemoryPskStore, StagedCommit

from .custody import keys_for
from .errors import not_found
from .persistence import PendingWrites, Persistence, RequestScope, Response, group_audit_context
from .sealed_state import StateSealer
from .state_cache import CachedState, StateCache
from .store import Identity, Store, Transaction


def new_leaf_key(group: Group, staged: StagedCommit) -> list[bytes]:
    """The leaf key a staged commit made for us, if it replaces the current one (RFC 9420 §12.4.1)."""
    if staged.state is None:
        return []
    ref = staged.state.keys.leaf_key.key_ref
    return [] if ref == group.state.keys.leaf_key.key_ref else [ref]


def membership_keys(group: Group) -> list[bytes]:
    """Every private key only this membership holds, each once: leaf key, own Update keys, a pending
    commit's new leaf key — never a retained (last-resort) key, and none once a commit removed the member
    (its keys died with the removal, RFC 9420 §12.4.2, and were destroyed then)."""
    s = group.state
    if not s.active:
        return []
    refs = [s.keys.leaf_key.key_ref, *s.update_keys.values()]
    if group.pending_commit is not None:
        refs += new_leaf_key(group, group.pending_commit)
    return [r for r in dict.fromkeys(refs) if r not in s.retained_keys]


class GroupSession:
    """One identity's membership of one group during one request (see the module docstring)."""

    def __init__(
        self,
        sessions: GroupSessions,
        identity: Identity,
        group: Group,
        loaded_version: int | None,
        pending: PendingWrites | None = None,
        applied_seq: int = 0,
        structure: tuple[object, ...] | None = None,
    ) -> None:
        """``structure``: ``group.state.structure_snapshot()`` when the caller knows it (a cache entry)."""
        self._sessions = sessions
        self.identity = identity
        self.group = group
        #: The stored record's version when loaded (compare-and-swap); ``None`` for a new membership.
        self.loaded_version = loaded_version
        self.pending = pending or PendingWrites()
        #: The last entry of the group's log applied to this membership; written with the state.
        self.applied_seq = applied_seq
        #: Run once :meth:`commit` committed (wake-ups and fan-out of what the request appended).
        self.after_commit: list[Callable[[], object]] = []
        self._leaving = False
        #: The cache cost of the full state (its sealed length) as loaded; ``0`` for a new membership.
        self.state_size = 0
        #: The state and pending commit as loaded, and what else than the secret trees they hold
        #: (:meth:`mls.GroupState.structure_snapshot`): compared by :attr:`ratchet_only`.
        if structure is None:
            structure = group.state.structure_snapshot()
        self._loaded = (group.state, group.pending_commit, structure)
        self._loaded_applied_seq = applied_seq
        #: The ratchet state as loaded (set for writing sessions): an operation that left it, the rest of
        #: the state and ``applied_seq`` as they were writes no state at all.
        self.loaded_ratchet: bytes | None = None
        #: The version of the stored full state (``None``: unknown, or a new membership); after
        #: :meth:`commit`, the one this session's write left.
        self.full_version: int | None = None
        self._writes_ratchet = False  # set by _state_write
        #: The ratchet bytes and structure snapshot of the state this session's commit leaves, when its
        #: :meth:`_state_write` computed them (kept with the cache entry, so the next session need not).
        self.final: tuple[bytes, tuple[object, ...]] | None = None

    @property
    def ratchet_only(self) -> bool:
        """Whether the operation changed at most the secret trees of a stored membership (an application
        message sent or received): :meth:`commit` then writes the ratchet state alone."""
        return self._unchanged_structure() is not None

    def _unchanged_structure(self) -> tuple[object, ...] | None:
        """The state's structure snapshot now when :attr:`ratchet_only` holds, else ``None``."""
        state, pending, structure = self._loaded
        group = self.group
        if (
            self.loaded_version is None
            or self._leaving
            or group.state is not state
            or group.pending_commit is not pending
        ):
            return None
        now = state.structure_snapshot()
        return now if now == structure else None

    @property
    def identity_id(self) -> str:
        return self.identity.identity_id

    def audit_context(self) -> AbstractContextManager[None]:
        """Key uses inside the block are audited in this group at its current epoch."""
        return group_audit_context(self.identity_id, self.group.group_id, self.group.epoch)

    def other_group(self, group_id: bytes) -> Group:
        """Another membership of the same identity, read only (a resumption PSK's source, RFC 9420 §8.6)."""
        return self._sessions.open(self.identity, group_id, read_only=True).group

    def merge(self, staged: StagedCommit) -> None:
        """Adopt a staged commit; the keys the merge made dead (as ``Group.merge`` returns them, retained
        last-resort keys never among them) are destroyed after :meth:`commit`."""
        self.pending.dead_keys += self.group.merge(staged, destroy_dead_keys=False)

    def discard_pending(self) -> None:
        """Drop a staged (pending) commit; the leaf key it made is destroyed after :meth:`commit`."""
        staged = self.group.pending_commit
        if staged is not None:
            self.pending.dead_keys += new_leaf_key(self.group, staged)
            self.group.pending_commit = None

    def remember_psks(self, psks: Sequence[tuple[bytes, bytes]]) -> None:
        """Keep external PSKs given with this request (sealed) for the identity's later operations."""
        identity_id = self.identity_id
        for psk_id, secret in psks:
            sealed = self._sessions.sealer.seal_psk(identity_id, psk_id, secret)
            self.pending.writes.append(
                functools.partial(_put_psk, identity_id=identity_id, psk_id=psk_id, sealed=sealed)
            )

    def leave(self) -> None:
        """Delete this membership's state when committing, and destroy its keys afterwards."""
        self._leaving = True
        self.pending.dead_keys += membership_keys(self.group)

    def commit(self, response: Response, scope: RequestScope) -> Response:
        """Seal once and write everything in one transaction (state with CAS on the loaded version); the
        new state joins the state cache once that transaction committed."""
        persistence = self._sessions.persistence
        if self._leaving:
            identity_id, group_id = self.identity_id, self.group.group_id
            self.pending.writes.append(lambda tx: _delete_group(tx, identity_id, group_id))
            return persistence.commit(self.pending, response, scope)
        try:
            write, size = self._state_write()
        except BaseException:
            persistence.destroy_keys(self.pending.new_keys)
            raise
        written: list[int] = []
        full = write is not None and not self._writes_ratchet
        # A message sent or received (the ratchet state alone, or nothing of the state) touches this group
        # only: a group-scoped write, in parallel with other groups' (gateway.postgres_durability); its
        # ratchet write goes first, before the writes to tables ordered across groups (inbox, audit).
        group = None if full else self.group.group_id
        if write is not None:
            state_write = lambda tx: written.append(write(tx))  # noqa: E731
            self.pending.writes.insert(0 if group is not None else len(self.pending.writes), state_write)
        elif self.loaded_version is not None:
            written.append(self.loaded_version)  # unchanged: the stored state stays, at its version
        result = persistence.commit(self.pending, response, scope, group=group)
        # ``Persistence.commit`` answers ``response`` itself only when our transaction committed; a replayed
        # response (a concurrent request with the same Idempotency-Key won) means ours rolled back.
        if result is response and written:
            if full:
                self.full_version = written[-1]
            self._sessions.remember(self, written[-1], size)
            for hook in self.after_commit:
                hook()
        return result

    @property
    def _full_state_due(self) -> bool:
        """Whether a ratchet write now would leave the stored full state more than
        ``GroupSessions.full_state_every`` ratchet writes behind (or by an unknown number): the full state
        is written instead, so it no longer holds the secrets of the messages since (docs/architecture.md
        "Forward secrecy at rest")."""
        if self.loaded_version is None or self.full_version is None:
            return True
        return self.loaded_version + 1 - self.full_version > self._sessions.full_state_every

    def _state_write(self) -> tuple[Callable[[Transaction], int] | None, int]:
        """The write of this membership's state, sealed now (before the transaction), and the cache cost
        of the state it leaves: none when nothing changed (a message answered from the group's log), the
        ratchet state alone when :attr:`ratchet_only` (its size does not grow with the group) unless the
        stored full state is due to be rewritten (:attr:`_full_state_due`), else the full state (which
        also removes a ratchet state)."""
        sealer, identity_id, group_id = self._sessions.sealer, self.identity_id, self.group.group_id
        expected, applied_seq = self.loaded_version, self.applied_seq
        structure = None if expected is None else self._unchanged_structure()
        if expected is not None and structure is not None:
            ratchet = self.group.state.ratchet_state_to_bytes()
            if ratchet == self.loaded_ratchet and applied_seq == self._loaded_applied_seq:
                self.final = (ratchet, structure)
                return None, self.state_size
            if not self._full_state_due:
                self.final = (ratchet, structure)
                self._writes_ratchet = True
                sealed = sealer.seal_ratchet(identity_id, group_id, ratchet, expected + 1)
                return (
                    lambda tx: tx.put_group_ratchet(identity_id, group_id, applied_seq, sealed, expected),
                    self.state_size,
                )
        record = dataclasses.replace(sealer.seal_group(identity_id, self.group), applied_seq=applied_seq)
        return lambda tx: tx.put_group(record, expected), len(record.state) + len(record.pending or b"")


def _put_psk(tx: Transaction, identity_id: str, psk_id: bytes, sealed: bytes) -> None:
    tx.put_psk(identity_id, psk_id, sealed)


def _delete_group(tx: Transaction, identity_id: str, group_id: bytes) -> None:
    if not tx.delete_group(identity_id, group_id):
        raise not_found("group")


class GroupSessions:
    """Opens :class:`GroupSession` s: the load step of every group operation, through the state cache."""

    def __init__(
        self, store: Store, sealer: StateSealer, persistence: Persistence, cache: StateCache | None = None
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.persistence = persistence
        self.cache = cache or StateCache(0)
        #: The leaf policy of a tenant's memberships (its credential policy; set by the service).
        self.leaf_policy: Callable[[str], LeafPolicy] = lambda tenant_id: LeafPolicy()
        #: Ratchet writes (application messages) a stored full state may fall behind before the next one
        #: writes it again (``[gateway] full_state_every``; docs/architecture.md "Forward secrecy at rest").
        self.full_state_every = 64
        #: The groups quota of a new membership, in its inserting transaction (set by the service).
        self.membership_quota: Callable[[Transaction, str, bytes], None] = lambda tx, iid, gid: None

    def open(self, identity: Identity, group_id: bytes, *, read_only: bool = False) -> GroupSession:
        """The stored membership (404 when there is none): its decoded state from the cache when that is
        of the stored version, else unsealed once. A ``read_only`` session must not change the state."""
        identity_id = identity.identity_id
        key = (identity_id, group_id)
        with self.store.read_transaction() as tx:
            version = tx.get_group_version(identity_id, group_id)
            cached = None
            if version is not None:
                cached = self.cache.peek(key, version) if read_only else self.cache.take(key, version)
            record = None if cached is not None or version is None else tx.get_group(identity_id, group_id)
        if version is None:
            self.cache.drop(key)
            raise not_found("group")
        psks = self.sealer.open_psks(identity_id, lambda: self._sealed_psks(identity_id))
        if cached is not None:
            group = Group(cached.state, keys_for(self.sealer.keys, identity), psks)
            group.pending_commit = cached.pending
            applied_seq, size, full_version = cached.applied_seq, cached.size, cached.full_version
            structure, loaded_ratchet = cached.structure, cached.ratchet
        else:
            assert record is not None
            with group_audit_context(identity_id, group_id, record.epoch):
                group = self.sealer.open_group(record, psks, keys_for(self.sealer.keys, identity))
            applied_seq, size = record.applied_seq, len(record.state) + len(record.pending or b"")
            full_version = record.full_version
            structure, loaded_ratchet = None, None
        group.state.config.leaf_policy = self.leaf_policy(identity.tenant_id)
        session = GroupSession(self, identity, group, version, applied_seq=applied_seq, structure=structure)
        session.state_size = size
        session.full_version = full_version
        if not read_only:
            session.loaded_ratchet = loaded_ratchet or group.state.ratchet_state_to_bytes()
        if cached is None and read_only:
            self.remember(session, version, size)
        return session

    def remember(self, session: GroupSession, version: int, size: int) -> None:
        """Cache ``session``'s decoded state as the one of its record at ``version`` (``size``: the
        sealed full state's length)."""
        group = session.group
        ratchet, structure = session.final or (None, None)
        entry = CachedState(
            version,
            group.state,
            group.pending_commit,
            size,
            session.applied_seq,
            session.full_version,
            ratchet,
            structure,
        )
        self.cache.put((session.identity_id, group.group_id), entry)

    def start(self, identity: Identity, group: Group, pending: PendingWrites) -> GroupSession:
        """A membership the operation just made (create, join, external join): inserted on commit, where
        the identity's groups quota is checked once more (concurrent creates cannot overshoot it)."""
        identity_id, group_id = identity.identity_id, group.group_id
        pending.writes.insert(0, lambda tx: self.membership_quota(tx, identity_id, group_id))
        return GroupSession(self, identity, group, None, pending)

    def psk_store(self, identity: Identity, extra: Sequence[tuple[bytes, bytes]] = ()) -> MemoryPskStore:
        """The identity's remembered external PSKs and ``extra`` ones, for a join before any state exists."""
        return self.sealer.open_psks(
            identity.identity_id, self._sealed_psks(identity.identity_id), dict(extra)
        )

    def _sealed_psks(self, identity_id: str) -> list[tuple[bytes, bytes]]:
        """The identity's remembered PSKs, sealed (within the caller's read transaction if it has one)."""
        with self.store.read_transaction() as tx:
            return tx.list_psks(identity_id)


__all__ = ["GroupSession", "GroupSessions", "membership_keys", "new_leaf_key"]
