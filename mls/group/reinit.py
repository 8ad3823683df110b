"""Reinitialization and subgroup branching (RFC 9420 §11.2, §11.3).

Both start a new group whose first commit injects a resumption PSK of the old group, so that joining the
new group proves membership of the old one:

* **ReInit** — after a commit with a ReInit proposal is merged, the old group is closed for sending; the
  committer creates the group the proposal describes (new group id, cipher suite, extensions) with the
  same members and a PSK of usage ``reinit`` from the old group's last epoch.
* **Branch** — any member starts a new group with the same version and suite and a subset of members,
  with a PSK of usage ``branch`` from the current epoch.

Joiners pass :func:`resumption_psks` of their copy of the old group to ``Client.join``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.key_protocols import KeyStore, Signer
from mls.errors import StateError
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig
from mls.schedule.psk import MemoryPskStore
from mls.wire.extensions import Extension
from mls.wire.key_package import KeyPackage
from mls.wire.proposals import PreSharedKeyID, ResumptionPSKUsage


def resumption_psks(old: Group) -> MemoryPskStore:
    """A PSK store holding the old group's retained resumption PSKs, for joining its successor."""
    gid = old.group_id
    return MemoryPskStore(resumption={(gid, epoch): psk for epoch, psk in old.state.resumption_psks.items()})


def _successor(
    old: Group,
    usage: ResumptionPSKUsage,
    *,
    suite: int,
    group_id: bytes,
    extensions: Sequence[Extension],
    key_store: KeyStore,
    signer: Signer,
    credential: Credential,
    key_packages: Sequence[KeyPackage],
    config: GroupConfig | None,
) -> tuple[Group, StagedCommit]:
    cs = cipher_suite(suite)
    psk_id = PreSharedKeyID.resumption(usage, old.group_id, old.epoch, os.urandom(cs.n_h))
    new = Group.create(
        key_store,
        suite,
        signer=signer,
        credential=credential,
        group_id=group_id,
        extensions=extensions,
        config=config,
        psks=resumption_psks(old),
    )
    staged = new.commit(CommitOptions(add=key_packages, psks=[psk_id], resumption_usages=frozenset({usage})))
    new.merge_pending_commit()
    return new, staged


def reinit_successor(
    old: Group,
    *,
    key_store: KeyStore,
    signer: Signer,
    credential: Credential,
    key_packages: Sequence[KeyPackage],
    config: GroupConfig | None = None,
) -> tuple[Group, StagedCommit]:
    """The new group of a merged ReInit (§11.2), with the given members' KeyPackages in its suite."""
    r = old.state.reinit
    if r is None:
        raise StateError("RFC 9420 §11.2: no ReInit proposal was committed in this group")
    return _successor(
        old,
        ResumptionPSKUsage.reinit,
        suite=r.cipher_suite,
        group_id=r.group_id,
        extensions=r.extensions,
        key_store=key_store,
        signer=signer,
        credential=credential,
        key_packages=key_packages,
        config=config,
    )


def branch(
    old: Group,
    *,
    key_packages: Sequence[KeyPackage],
    group_id: bytes | None = None,
    extensions: Sequence[Extension] = (),
    config: GroupConfig | None = None,
) -> tuple[Group, StagedCommit]:
    """A subgroup of ``old`` with the members of ``key_packages`` (§11.3), same suite and identity."""
    s = old.state
    leaf = s.tree.leaf(s.own_leaf)
    assert leaf is not None
    return _successor(
        old,
        ResumptionPSKUsage.branch,
        suite=old.cs.suite_id,
        group_id=group_id or os.urandom(old.cs.n_h),
        extensions=extensions,
        key_store=old.key_store,
        signer=old.signer(),
        credential=leaf.credential,
        key_packages=key_packages,
        config=config,
    )
