"""Every private-key reference the gateway's database holds (what orphan reconciliation keeps).

* each identity's signature key (``identities.signature_key_ref``);
* the init and leaf keys of KeyPackages not consumed yet, or last-resort (kept after use);
* every membership's keys: :func:`gateway.group_session.membership_keys` (leaf key, own Update keys, a
  pending commit's new leaf key), its retained keys and its signer, read through
  :meth:`gateway.group_session.GroupSessions.open` (``read_only``: the state cache serves it when current).

A removed member's state names its destroyed leaf key by reference only and opens like any other. A state
that does not open (an active one whose own leaf key is missing, a corrupt one) raises
:class:`ReferencesUnreadable`: an unread reference could be a live key.

KeyPackages are read before groups: a join moves a KeyPackage's leaf key into a group, never back.
"""

from __future__ import annotations

from collections.abc import Iterable

from hsm.errors import HsmUnavailable
from mls import MLSError

from .errors import Problem
from .group_session import GroupSessions, membership_keys
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
    """The keys one membership references (none when it was deleted since it was listed). A membership
    whose state does not open (a key it needs is gone) makes the whole run stop: nothing is destroyed on a
    guess. A removed member's state opens (it names its destroyed leaf key by reference only)."""
    try:
        group = sessions.open(identity, group_id, read_only=True).group
    except Problem as e:
        if e.code == "not_found":
            return set()
        raise ReferencesUnreadable(f"membership of {identity.identity_id}: {e.code}") from None
    except HsmUnavailable:
        raise
    except MLSError as e:
        raise ReferencesUnreadable(f"membership of {identity.identity_id}: {type(e).__name__}") from None
    state = group.state
    return {*membership_keys(group), *state.retained_keys, state.signer_ref}


__all__ = ["ReferencesUnreadable", "live_key_package_keys", "membership_refs", "referenced_keys"]
