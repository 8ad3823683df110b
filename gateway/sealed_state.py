"""Group states, pending commits and external PSKs at rest: sealed under the HSM wrap key.

Every sealed value's AAD binds it to its owner (identity, group or PSK id), so a row copied onto another
identity or group does not open. The store only ever sees the sealed bytes.

An application message changes only the secret trees (RFC 9420 §9), so such a write stores them alone:
the **ratchet state** (:meth:`mls.GroupState.ratchet_state_to_bytes`), sealed with an AAD that also binds
the record version it was written at (an older row put back does not open), applied on load onto the
full state of the same record (:meth:`StateSealer.open_group`). A write of the full state removes it.

External PSKs are opened only when an operation asks for one (:class:`SealedPskStore`), not per request.

A pending commit is stored as :meth:`mls.StagedCommit.to_bytes` (versioned; it holds the next epoch's
secrets, hence sealed). One that does not open as such — corrupt, or of another version — raises
:class:`mls.StateError`, as a corrupt group state does, and the request answers a problem document.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hsm.envelope import Envelope
from mls import Group, GroupState, KeyStore, MemoryPskStore, PreSharedKeyID, PSKType, StagedCommit

from .store import GroupRecord


def _state_aad(identity_id: str, group_id: bytes) -> bytes:
    return b"mls-gateway group state|" + identity_id.encode() + b"|" + group_id


def _pending_aad(identity_id: str, group_id: bytes) -> bytes:
    return b"mls-gateway pending commit|" + identity_id.encode() + b"|" + group_id


def _ratchet_aad(identity_id: str, group_id: bytes, version: int) -> bytes:
    return b"mls-gateway ratchet state|%d|" % version + identity_id.encode() + b"|" + group_id


def _psk_aad(identity_id: str, psk_id: bytes) -> bytes:
    return b"mls-gateway psk|" + identity_id.encode() + b"|" + psk_id


class StateSealer:
    """Seals and opens an identity's group records and external PSKs with the wrap-key envelope."""

    def __init__(self, envelope: Envelope, keys: KeyStore) -> None:
        self.envelope = envelope
        self.keys = keys

    def seal_group(self, identity_id: str, group: Group) -> GroupRecord:
        """The record of a group's current state (and its pending commit), sealed."""
        group_id = group.group_id
        pending = None
        if group.pending_commit is not None:
            pending = self.envelope.seal(group.pending_commit.to_bytes(), _pending_aad(identity_id, group_id))
        state = self.envelope.seal(group.to_bytes(), _state_aad(identity_id, group_id))
        # A removed member's state stays at the epoch before its removal; its record (listings) names the
        # removal's epoch, as its view does.
        removed_in = group.state.removed_in_epoch
        epoch = group.epoch if removed_in is None else removed_in
        return GroupRecord(identity_id, group_id, epoch, state, pending)

    def seal_ratchet(self, identity_id: str, group_id: bytes, ratchet: bytes, version: int) -> bytes:
        """A group's ratchet state (:meth:`mls.GroupState.ratchet_state_to_bytes`) sealed, to be stored as
        of record version ``version``."""
        return self.envelope.seal(ratchet, _ratchet_aad(identity_id, group_id, version))

    def open_group(self, record: GroupRecord, psks: MemoryPskStore, keys: KeyStore | None = None) -> Group:
        """The group of a sealed record (its full state, then its ratchet state if it has one), with its
        pending commit, using ``psks`` for its PSKs and ``keys`` (default: the sealer's) for its keys."""
        identity_id, group_id = record.identity_id, record.group_id
        keys = self.keys if keys is None else keys
        raw = self.envelope.open(record.state, _state_aad(identity_id, group_id))
        state = GroupState.from_bytes(raw, keys)
        if record.ratchet is not None:
            state.apply_ratchet_state(
                self.envelope.open(record.ratchet, _ratchet_aad(identity_id, group_id, record.version))
            )
        group = Group(state, keys, psks)
        if record.pending is not None:
            staged = self.envelope.open(record.pending, _pending_aad(identity_id, group_id))
            group.pending_commit = StagedCommit.from_bytes(staged, keys)
        return group

    def seal_psk(self, identity_id: str, psk_id: bytes, secret: bytes) -> bytes:
        return self.envelope.seal(secret, _psk_aad(identity_id, psk_id))

    def open_psks(
        self,
        identity_id: str,
        sealed: Sequence[tuple[bytes, bytes]] | Callable[[], Sequence[tuple[bytes, bytes]]],
        extra: Mapping[bytes, bytes] | None = None,
    ) -> SealedPskStore:
        """An identity's PSK store: its remembered external PSKs (opened when first asked for) and
        ``extra`` ones. ``sealed``: the sealed PSKs, or how to read them when one is first asked for
        (most operations never need one)."""
        store = SealedPskStore(external=dict(extra or {}), sealer=self, identity_id=identity_id)
        if callable(sealed):
            store.load = sealed
        else:
            store.sealed = dict(sealed)
        return store

    def open_psk(self, identity_id: str, psk_id: bytes, sealed: bytes) -> bytes:
        return self.envelope.open(sealed, _psk_aad(identity_id, psk_id))


@dataclass
class SealedPskStore(MemoryPskStore):
    """A :class:`mls.MemoryPskStore` whose remembered external PSKs stay sealed until one is looked up
    (RFC 9420 §8.4: only a commit or Welcome naming a PSK needs its value), and unread until then when
    given ``load``; values put into ``external`` (given with the request) take precedence."""

    sealer: StateSealer | None = field(default=None, repr=False)
    identity_id: str = ""
    #: The sealed PSKs by id (``None`` until ``load`` read them).
    sealed: dict[bytes, bytes] | None = field(default=None, repr=False)
    #: Reads the sealed PSKs from the store, when an external PSK is first looked up.
    load: Callable[[], Sequence[tuple[bytes, bytes]]] | None = field(default=None, repr=False)

    def get(self, psk_id: PreSharedKeyID) -> bytes | None:
        key = psk_id.psk_id
        if psk_id.psktype == PSKType.external and key is not None and key not in self.external:
            if self.sealed is None:
                self.sealed = dict(self.load()) if self.load is not None else {}
            blob = self.sealed.get(key)
            if blob is not None and self.sealer is not None:
                self.external[key] = self.sealer.open_psk(self.identity_id, key, blob)
        return super().get(psk_id)


__all__ = ["SealedPskStore", "StateSealer"]
