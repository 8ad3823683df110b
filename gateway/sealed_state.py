"""Group states, pending commits and external PSKs at rest: sealed under the HSM wrap key.

Every sealed value's AAD binds it to its owner (identity, group or PSK id), so a row copied onto another
identity or group does not open. The store only ever sees the sealed bytes.

A pending commit is stored as :meth:`mls.StagedCommit.to_bytes` (versioned; it holds the next epoch's
secrets, hence sealed). One that does not open as such — corrupt, or of another version — raises
:class:`mls.StateError`, as a corrupt group state does, and the request answers a problem document.
"""

from __future__ import annotations

from collections.abc import Mapping

from hsm.envelope import Envelope
from mls import Group, GroupState, KeyStore, MemoryPskStore, StagedCommit

from .store import GroupRecord


def _state_aad(identity_id: str, group_id: bytes) -> bytes:
    return b"mls-gateway group state|" + identity_id.encode() + b"|" + group_id


def _pending_aad(identity_id: str, group_id: bytes) -> bytes:
    return b"mls-gateway pending commit|" + identity_id.encode() + b"|" + group_id


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

    def open_group(self, record: GroupRecord, psks: MemoryPskStore, keys: KeyStore | None = None) -> Group:
        """The group of a sealed record, with its pending commit, using ``psks`` for its PSKs and ``keys``
        (default: the sealer's) for its keys."""
        identity_id, group_id = record.identity_id, record.group_id
        keys = self.keys if keys is None else keys
        raw = self.envelope.open(record.state, _state_aad(identity_id, group_id))
        group = Group(GroupState.from_bytes(raw, keys), keys, psks)
        if record.pending is not None:
            staged = self.envelope.open(record.pending, _pending_aad(identity_id, group_id))
            group.pending_commit = StagedCommit.from_bytes(staged, keys)
        return group

    def seal_psk(self, identity_id: str, psk_id: bytes, secret: bytes) -> bytes:
        return self.envelope.seal(secret, _psk_aad(identity_id, psk_id))

    def open_psks(
        self, identity_id: str, sealed: list[tuple[bytes, bytes]], extra: Mapping[bytes, bytes] | None = None
    ) -> MemoryPskStore:
        """An identity's PSK store: its remembered external PSKs (opened) and ``extra`` ones."""
        known = {pid: self.envelope.open(blob, _psk_aad(identity_id, pid)) for pid, blob in sealed}
        return MemoryPskStore(external={**known, **(extra or {})})


__all__ = ["StateSealer"]
