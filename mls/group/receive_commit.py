"""Staging a received commit (RFC 9420 §12.4.2, external commits §12.4.3.2): resolve and validate the
proposals, apply them, merge and decrypt the UpdatePath, advance the transcript and key schedule, and
verify the confirmation tag. The result is a :class:`~mls.group.staged_commit.StagedCommit`; the current
epoch is unchanged until it is merged.
"""

from __future__ import annotations

from mls.errors import StateError, ValidationError
from mls.group.core import GroupCore
from mls.group.next_epoch import (
    all_own_keys,
    commit_psk_secret,
    dead_keys,
    dead_update_keys,
    next_state,
    provisional_context,
)
from mls.group.proposal_list import (
    AppliedProposals,
    CommittedProposal,
    apply_proposals,
    check_resync_leaf,
    path_required,
    validate_proposal_list,
)
from mls.group.staged_commit import StagedCommit
from mls.schedule.key_schedule import KeySchedule, external_init_receive
from mls.schedule.transcript import TranscriptHashes
from mls.tree.leaf_node import LeafNode, LeafNodeSource
from mls.tree.leaf_validation import validate_leaf_node
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.treekem import PathKeys, apply_update_path, decrypt_update_path
from mls.wire.commit import Commit
from mls.wire.extensions import RequiredCapabilities, find_payload
from mls.wire.framing import AuthenticatedContent, Sender, SenderType
from mls.wire.group_context import GroupContext
from mls.wire.proposals import ProposalOrRef, ProposalOrRefType, Remove


def stage_received_commit(group: GroupCore, auth: AuthenticatedContent) -> StagedCommit:
    """Stage a member's or a new member's commit (§12.4.2)."""
    commit = auth.content.commit
    assert commit is not None
    committer = auth.content.sender
    proposals = [_resolve(group, p, committer) for p in commit.proposals]
    vc = group.validation_context()
    validate_proposal_list(vc, proposals, committer)
    if path_required(proposals) and commit.path is None:
        raise ValidationError("12.4/commit-path-required", "this commit must carry a path")
    applied = apply_proposals(vc, proposals)
    if committer.sender_type == SenderType.new_member_commit:
        return _stage_external_commit(group, auth, proposals, applied)
    assert committer.leaf_index is not None
    if group.own_leaf in applied.removed:
        return _removed_us(group, auth, proposals)
    tree, keys, commit_secret = _apply_path(group, applied, committer.leaf_index, commit)
    init_secret = group.state.secrets.init_secret
    return _complete_staging(group, auth, proposals, applied, tree, keys, commit_secret, init_secret)


def _resolve(group: GroupCore, por: ProposalOrRef, committer: Sender) -> CommittedProposal:
    """A committed proposal by value, or by reference from this epoch's cache (§12.4.2)."""
    if por.type == ProposalOrRefType.proposal:
        assert por.proposal is not None
        return CommittedProposal(por.proposal, committer)
    assert por.reference is not None
    cached = group.state.proposals.get(por.reference)
    if cached is None:
        raise ValidationError(
            "12.4.2/proposal-ref-known", "the commit references a proposal this member has not received"
        )
    return CommittedProposal(cached.proposal, cached.sender, cached.ref)


def _removed_us(
    group: GroupCore, auth: AuthenticatedContent, proposals: list[CommittedProposal]
) -> StagedCommit:
    """A commit that removes this member: no next state; every key of the membership is dead (§12.4.2)."""
    return StagedCommit(
        None, auth.content.sender, proposals, auth.to_bytes(), dead_key_refs=all_own_keys(group.state)
    )


def _apply_path(
    group: GroupCore, applied: AppliedProposals, committer: int, commit: Commit
) -> tuple[RatchetTree, PathKeys, bytes]:
    """Merge the committer's UpdatePath and decrypt our path secret (§7.5, §12.4.2); the commit secret
    is zero without a path."""
    keys = _keys_after_updates(group, applied)
    if commit.path is None:
        keys.drop_nodes_not_in(applied.tree)
        return applied.tree, keys, bytes(group.cs.n_h)
    _check_path_leaf(group, applied, committer, commit.path.leaf_node)
    _check_path_keys_fresh(applied.tree, committer, commit)
    merged = apply_update_path(applied.tree, committer, commit.path, group.group_id)
    provisional = provisional_context(group.state, merged, applied.extensions)
    new_keys, commit_secret, _ = decrypt_update_path(
        merged, committer, commit.path, keys, provisional.to_bytes(), [i for i, _ in applied.added]
    )
    return merged, new_keys, commit_secret


def _keys_after_updates(group: GroupCore, applied: AppliedProposals) -> PathKeys:
    """Our PathKeys after the proposals: our own committed Update swaps in its leaf key (§12.1.2)."""
    s = group.state
    keys = s.keys.copy()
    if s.own_leaf in applied.updated:
        leaf = applied.tree.leaf(s.own_leaf)
        assert leaf is not None
        ref = s.update_keys.get(leaf.encryption_key)
        if ref is None:
            raise StateError("an Update of our leaf was committed but its private key is unknown")
        keys = PathKeys(s.own_leaf, group.key_store.hpke_key(ref), dict(keys.node_keys))
    return keys


def _check_path_leaf(group: GroupCore, applied: AppliedProposals, committer: int, leaf: LeafNode) -> None:
    """The UpdatePath's leaf is valid for a commit (§7.3) and has a new encryption key (§12.4.2)."""
    s = group.state
    validate_leaf_node(
        group.cs,
        leaf,
        source=LeafNodeSource.commit,
        group_id=s.group_id,
        leaf_index=committer,
        policy=s.config.leaf_policy,
        required=find_payload(applied.extensions, RequiredCapabilities),
    )
    current = applied.tree.leaf(committer)
    if current is not None and current.encryption_key == leaf.encryption_key:
        raise ValidationError(
            "12.4.2/committer-encryption-key-changed",
            "the committer's new leaf must have a new encryption_key",
        )


def _check_path_keys_fresh(tree: RatchetTree, committer: int, commit: Commit) -> None:
    """No key of the UpdatePath is in the tree already; the leaf's signature key is no other member's
    (§7.3 uniqueness, §12.4.2)."""
    assert commit.path is not None
    in_tree = {n.encryption_key for x in range(tree.width) if (n := tree.node(x)) is not None}
    new = [commit.path.leaf_node.encryption_key, *(n.encryption_key for n in commit.path.nodes)]
    if any(k in in_tree for k in new) or len(set(new)) != len(new):
        raise ValidationError(
            "12.4.2/path-keys-fresh", "a public key of the UpdatePath already appears in the tree"
        )
    signature_key = commit.path.leaf_node.signature_key
    if any(leaf.signature_key == signature_key for i, leaf in tree.leaves() if i != committer):
        raise ValidationError(
            "7.3/committer-signature-key-unique", "the committer's signature key is used by another member"
        )


def _complete_staging(
    group: GroupCore,
    auth: AuthenticatedContent,
    proposals: list[CommittedProposal],
    applied: AppliedProposals,
    tree: RatchetTree,
    keys: PathKeys,
    commit_secret: bytes,
    init_secret: bytes,
) -> StagedCommit:
    """Advance the transcript and key schedule, verify the confirmation tag (§8, §8.2, §12.4.2)."""
    s, cs = group.state, group.cs
    before = TranscriptHashes(s.context.confirmed_transcript_hash, s.interim_transcript_hash)
    hashes = before.after_commit(cs, auth)
    confirmed, tag = hashes.confirmed, auth.auth.confirmation_tag
    assert tag is not None  # after_commit requires it (§6.1)
    new_ctx = GroupContext(
        1, cs.suite_id, s.group_id, s.epoch + 1, tree.tree_hash(), confirmed, applied.extensions
    )
    ks = KeySchedule.from_init_secret(
        cs, init_secret, commit_secret, commit_psk_secret(group, applied.psks), new_ctx.to_bytes()
    )
    ks.secrets.verify_confirmation_tag(confirmed, tag)
    state = next_state(
        s,
        tree=tree,
        keys=keys,
        context=new_ctx,
        ks=ks,
        interim=hashes.interim,
        tag=tag,
        reinit=applied.reinit,
    )
    replaced_leaf = [s.keys.leaf_key.key_ref] if keys.leaf_key.key_ref != s.keys.leaf_key.key_ref else []
    dead = dead_keys(s, [*dead_update_keys(s, applied), *replaced_leaf])
    return StagedCommit(state, auth.content.sender, proposals, auth.to_bytes(), dead_key_refs=dead)


def _stage_external_commit(
    group: GroupCore,
    auth: AuthenticatedContent,
    proposals: list[CommittedProposal],
    applied: AppliedProposals,
) -> StagedCommit:
    """A new member's commit (§12.4.3.2): its init secret comes from ExternalInit, its leaf is the
    leftmost blank one."""
    commit = auth.content.commit
    external_init = applied.external_init
    assert commit is not None and commit.path is not None and external_init is not None
    _check_resync(group, proposals, commit.path.leaf_node)
    joiner = _leftmost_blank(applied.tree)
    if group.own_leaf in applied.removed:
        return _removed_us(group, auth, proposals)
    applied.tree = applied.tree.copy()
    applied.tree.extend_to(joiner + 1)
    tree_after, keys, commit_secret = _apply_path(group, applied, joiner, commit)
    init_secret = external_init_receive(
        group.cs, group.state.secrets.external_key_pair(), external_init.kem_output
    )
    return _complete_staging(group, auth, proposals, applied, tree_after, keys, commit_secret, init_secret)


def _check_resync(group: GroupCore, proposals: list[CommittedProposal], leaf: LeafNode) -> None:
    """A resync removes the joiner's own prior leaf only: the new leaf must be acceptable as an Update of
    the removed one — here, the same credential (§12.2, §12.4.3.2)."""
    for p in proposals:
        body = p.proposal.body
        if isinstance(body, Remove):
            check_resync_leaf(group.state.tree, body.removed, leaf.credential)


def _leftmost_blank(tree: RatchetTree) -> int:
    return next((i for i in range(tree.n_leaves) if tree.leaf(i) is None), tree.n_leaves)


__all__ = ["stage_received_commit"]
