"""Merging a staged commit (RFC 9420 §12.4.2, last step): adopt the next epoch and destroy the private
keys the commit made dead (forward secrecy, §16.6) — or discard an own pending commit.

A staged commit is never changed by merging. The one dead key only known at merge time — the new leaf key
of our own pending commit when another member's commit wins the epoch — is part of what
:func:`merge_staged_commit` returns: every key reference the merge made dead.
"""

from __future__ import annotations

from mls.errors import StateError
from mls.group.core import GroupCore
from mls.group.next_epoch import dead_keys
from mls.group.staged_commit import StagedCommit


def merge_staged_commit(
    group: GroupCore, staged: StagedCommit, *, destroy_dead_keys: bool = True
) -> list[bytes]:
    """Adopt ``staged``; returns the key references the merge made dead (``staged.dead_key_refs`` plus a
    losing pending commit's new leaf key; never a retained key) and destroys them unless
    ``destroy_dead_keys=False`` (a caller that persists the new state first and destroys them itself)."""
    if staged.state is not None and staged.state.epoch != group.epoch + 1:
        raise StateError(f"staged commit is for epoch {staged.state.epoch}, the group is at {group.epoch}")
    dead = dead_keys(group.state, [*staged.dead_key_refs, *_losing_pending_leaf(group, staged)])
    if staged.state is None:
        group.state.mark_removed()
    else:
        group.state = staged.state
    group.pending_commit = None
    if destroy_dead_keys:
        for ref in dead:
            group.key_store.destroy(ref)
    return dead


def _losing_pending_leaf(group: GroupCore, merged: StagedCommit) -> list[bytes]:
    """Our own pending commit's new leaf key, when another commit is merged instead of it."""
    losing = group.pending_commit
    if losing is None or losing is merged or losing.content == merged.content or losing.state is None:
        return []
    ref = losing.state.keys.leaf_key.key_ref
    return [] if ref == group.state.keys.leaf_key.key_ref else [ref]


def merge_pending_commit(group: GroupCore, *, destroy_dead_keys: bool = True) -> list[bytes]:
    """Merge our own pending commit (the delivery service accepted it); returns the keys it made dead."""
    if group.pending_commit is None:
        raise StateError("there is no pending commit")
    return merge_staged_commit(group, group.pending_commit, destroy_dead_keys=destroy_dead_keys)


def discard_pending_commit(group: GroupCore) -> None:
    """Drop the pending commit; keys it created are destroyed, the epoch is unchanged."""
    staged = group.pending_commit
    if staged is None:
        raise StateError("there is no pending commit")
    group.pending_commit = None
    if staged.state is not None:
        new_leaf = staged.state.keys.leaf_key.key_ref
        if new_leaf != group.state.keys.leaf_key.key_ref:
            group.key_store.destroy(new_leaf)


__all__ = ["discard_pending_commit", "merge_pending_commit", "merge_staged_commit"]
