"""Every private-key reference the gateway's database holds (what orphan reconciliation keeps).

* each identity's signature key (``identities.signature_key_ref``);
* the init and leaf keys of KeyPackages not consumed yet, or last-resort (kept after use);
* every membership's keys: :func:`gateway.group_session.membership_keys` (leaf key, own Update keys, a
  pending commit's new leaf key), its retained keys and its signer, read through
  :meth:`gateway.group_session.GroupSessions.open` (``read_only``: the state cache serves it when current).

A stored state can name a key the token no longer holds (a removed member's state keeps its destroyed
leaf key, and then does not open as a group): such a membership is read again with a key store that
stands in for missing keys (:class:`_ReferenceReader`), only to learn its references. A state that still
does not open (an active one whose own leaf key is missing, a corrupt one) raises
:class:`ReferencesUnreadable`: an unread reference could be a live key.

KeyPackages are read before groups: a join moves a KeyPackage's leaf key into a group, never back.
"""

from __future__ import annotations

from collections.abc import Iterable

from hsm.errors import HsmUnavailable
from mls import Group, HpkePrivateKey, KeyStore, KeyStoreError, MemoryPskStore, MLSError, Signer

from .errors import Problem
from .group_session import GroupSessions, membership_keys
from .sealed_state import StateSealer
from .store import Identity, KeyPackageRecord, Store


class ReferencesUnreadable(Exception):
    """Some reference of the database could not be read: nothing may be destroyed on this basis."""


def live_key_package_keys(records: Iterable[KeyPackageRecord]) -> set[bytes]:
    """Init and leaf keys of KeyPackages not consumed yet, or last-resort (kept after use)."""
    return {
        ref
        for kp in records
        if not kp.consumed or kp.last_resort
        for ref in (kp.init_key_ref, kp.leaf_key_ref)
    }


def referenced_keys(store: Store, sessions: GroupSessions) -> set[bytes]:
    """Every key reference the database holds (see the module docstring)."""
    with store.read_transaction() as tx:
        identities = [i for t in tx.list_tenants() for i in tx.list_identities(t.tenant_id)]
        refs = {i.signature_key_ref for i in identities}
        for identity in identities:
            refs |= live_key_package_keys(tx.list_key_packages(identity.identity_id))
        groups = [(i, g.group_id) for i in identities for g in tx.list_groups(i.identity_id)]
    for identity, group_id in groups:
        refs |= membership_refs(sessions, identity, group_id)
    return refs


def membership_refs(sessions: GroupSessions, identity: Identity, group_id: bytes) -> set[bytes]:
    """The keys one membership references (none when it was deleted since it was listed)."""
    try:
        group: Group | None = sessions.open(identity, group_id, read_only=True).group
    except Problem as e:
        if e.code == "not_found":
            return set()
        group = _read_leniently(sessions, identity, group_id)
    except HsmUnavailable:
        raise
    except KeyStoreError:
        group = _read_leniently(sessions, identity, group_id)
    except MLSError as e:
        raise ReferencesUnreadable(f"membership of {identity.identity_id}: {type(e).__name__}") from None
    if group is None:
        return set()
    state = group.state
    return {*membership_keys(group), *state.retained_keys, state.signer_ref}


def _read_leniently(sessions: GroupSessions, identity: Identity, group_id: bytes) -> Group | None:
    """The membership's group read with stand-ins for keys the token no longer holds (None: deleted)."""
    with sessions.store.read_transaction() as tx:
        record = tx.get_group(identity.identity_id, group_id)
    if record is None:
        return None
    sealer = StateSealer(sessions.sealer.envelope, _ReferenceReader(sessions.sealer.keys))
    try:
        return sealer.open_group(record, MemoryPskStore())
    except HsmUnavailable:
        raise
    except MLSError as e:
        raise ReferencesUnreadable(f"membership of {identity.identity_id}: {type(e).__name__}") from None


class _MissingKey:
    """Stands in for an HPKE key the token no longer holds: its reference only (it cannot be used)."""

    def __init__(self, key_ref: bytes) -> None:
        self._ref = key_ref

    @property
    def public_key(self) -> bytes:
        return b""

    @property
    def key_ref(self) -> bytes:
        return self._ref

    def dh(self, peer_public_key: bytes) -> bytes:
        raise KeyStoreError("no key for this reference")


class _ReferenceReader:
    """A read-only key store over the real one, for reading references: a missing HPKE key is a stand-in."""

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    def hpke_key(self, key_ref: bytes) -> HpkePrivateKey:
        try:
            return self._keys.hpke_key(key_ref)
        except HsmUnavailable:
            raise
        except KeyStoreError:
            return _MissingKey(key_ref)

    def signer(self, key_ref: bytes) -> Signer:
        return self._keys.signer(key_ref)

    def new_signature_key(self, cipher_suite: int) -> Signer:
        raise KeyStoreError("reading references makes no keys")

    def new_hpke_key(self, cipher_suite: int) -> HpkePrivateKey:
        raise KeyStoreError("reading references makes no keys")

    def destroy(self, key_ref: bytes) -> None:
        raise KeyStoreError("reading references destroys no keys")


__all__ = ["ReferencesUnreadable", "live_key_package_keys", "membership_refs", "referenced_keys"]
