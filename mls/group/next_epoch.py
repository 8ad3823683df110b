"""What creating and receiving a commit share (RFC 9420 §8, §12.4): the PSK secret of the committed PSKs,
the provisional GroupContext an UpdatePath is encrypted under, the next epoch's state, and which private
keys the commit makes dead."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mls.errors import ValidationError
from mls.group.core import GroupCore
from mls.group.proposal_list import AppliedProposals
from mls.group.state import GroupState, PastEpoch
from mls.schedule.key_schedule import KeySchedule
from mls.schedule.psk import psk_secret
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.treekem import PathKeys
from mls.wire.extensions import Extension
from mls.wire.group_context import GroupContext
from mls.wire.proposals import PreSharedKeyID, PSKType, ReInit


def psk_value(group: GroupCore, psk_id: PreSharedKeyID) -> bytes:
    """A committed PSK: a resumption PSK of this group's retained epochs, or else from the PSK store
    (§8.4)."""
    s = group.state
    value: bytes | None = None
    if psk_id.psktype == PSKType.resumption and psk_id.psk_group_id == s.group_id:
        assert psk_id.psk_epoch is not None
        value = s.resumption_psks.get(psk_id.psk_epoch)
    if value is None:
        value = group.psks.get(psk_id)
    if value is None:
        raise ValidationError("12.4.2/commit-psk-available", "a PreSharedKey of the commit is not available")
    return value


def commit_psk_secret(group: GroupCore, psk_ids: Sequence[PreSharedKeyID]) -> bytes:
    """``psk_secret`` of the commit's PreSharedKey proposals (§8.4)."""
    return psk_secret(group.cs, [(p, psk_value(group, p)) for p in psk_ids])


def provisional_context(
    state: GroupState, tree: RatchetTree, extensions: Sequence[Extension]
) -> GroupContext:
    """The GroupContext an UpdatePath is encrypted to: next epoch and tree, old transcript (§12.4.1)."""
    c = state.context
    return GroupContext(
        c.version,
        c.cipher_suite,
        c.group_id,
        c.epoch + 1,
        tree.tree_hash(),
        c.confirmed_transcript_hash,
        tuple(extensions),
    )


def next_state(
    state: GroupState,
    *,
    tree: RatchetTree,
    keys: PathKeys,
    context: GroupContext,
    ks: KeySchedule,
    interim: bytes,
    tag: bytes,
    reinit: ReInit | None = None,
) -> GroupState:
    """The state of the next epoch (§8); the current one becomes a past epoch (within the retention)."""
    s = state
    secret_tree, secrets = ks.secrets.start_secret_tree(tree.n_leaves, s.config.ratchet)
    past = [*s.past_epochs, past_epoch(s)][-s.config.past_epochs :] if s.config.past_epochs else []
    psks = {**s.resumption_psks, context.epoch: secrets.resumption_psk}
    keep = sorted(psks)[-s.config.resumption_psks :] if s.config.resumption_psks else []
    return GroupState(
        context=context,
        tree=tree,
        keys=keys,
        signer_ref=s.signer_ref,
        secrets=secrets,
        secret_tree=secret_tree,
        interim_transcript_hash=interim,
        confirmation_tag=tag,
        config=s.config,
        past_epochs=past,
        resumption_psks={e: psks[e] for e in keep},
        reinit=reinit,
        retained_keys=s.retained_keys,
    )


def past_epoch(state: GroupState) -> PastEpoch:
    """What is kept of the current epoch to read its late application messages (§9.2)."""
    s = state
    return PastEpoch(
        s.epoch,
        s.context,
        s.secret_tree,
        s.secrets.sender_data_secret,
        {i: leaf.signature_key for i, leaf in s.tree.leaves()},
    )


def dead_update_keys(state: GroupState, applied: AppliedProposals) -> list[bytes]:
    """Keys of our own Update proposals that the commit did not make our leaf key: dead after it."""
    used = applied.tree.leaf(state.own_leaf)
    return [ref for pub, ref in state.update_keys.items() if used is None or pub != used.encryption_key]


def dead_keys(state: GroupState, refs: Iterable[bytes]) -> list[bytes]:
    """The keys of ``refs`` this member may destroy (§16.6): each once, none of ``state.retained_keys``."""
    out: list[bytes] = []
    for ref in refs:
        if ref not in state.retained_keys and ref not in out:
            out.append(ref)
    return out


def all_own_keys(state: GroupState) -> list[bytes]:
    """Every private key of this membership (dead when a commit removes us, §12.4.2)."""
    return dead_keys(state, [state.keys.leaf_key.key_ref, *state.update_keys.values()])


__all__ = [
    "all_own_keys",
    "commit_psk_secret",
    "dead_keys",
    "dead_update_keys",
    "next_state",
    "past_epoch",
    "provisional_context",
    "psk_value",
]
