"""Creating a commit (RFC 9420 §12.4.1): choosing the proposals, the UpdatePath, the next epoch's key
schedule, and for new members the Welcome with a signed GroupInfo (§12.4.3).

The result is the member's pending commit, a :class:`~mls.group.staged_commit.StagedCommit`: nothing of
the current epoch changes until it is merged.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from mls.credentials.credential import Credential
from mls.crypto.key_protocols import HpkePrivateKey
from mls.errors import MLSError
from mls.group.commit_options import CommitOptions
from mls.group.core import GroupCore
from mls.group.next_epoch import (
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
    path_required,
    validate_proposal_list,
)
from mls.group.staged_commit import StagedCommit
from mls.group.state import CachedProposal, GroupState
from mls.group.welcome import build_welcome
from mls.schedule.key_schedule import KeySchedule
from mls.schedule.secret_tree import SecretTree
from mls.schedule.transcript import TranscriptHashes, interim_transcript_hash
from mls.tree import tree_math as tm
from mls.tree.leaf_node import sign_leaf_node
from mls.tree.nodes import UpdatePath
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.tree_validation import check_credential_types_supported
from mls.tree.treekem import CreatedPath, PathKeys, create_update_path
from mls.wire.commit import Commit
from mls.wire.extensions import Extension, ExtensionType, ExternalPub
from mls.wire.framing import AuthenticatedContent, ContentType, FramedContentAuthData, MLSMessage, Sender
from mls.wire.group_context import GroupContext
from mls.wire.group_info import GroupInfo, sign_group_info
from mls.wire.proposals import (
    Add,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ProposalOrRef,
    ReInit,
    Remove,
    Update,
)
from mls.wire.welcome import GroupSecrets, PathSecret, Welcome


@dataclass
class _CommitPath:
    """The tree and own keys after the commit, with the UpdatePath and its secrets if it has one."""

    tree: RatchetTree
    keys: PathKeys
    commit_secret: bytes = field(repr=False)
    update_path: UpdatePath | None = None
    path_secrets: dict[int, bytes] = field(default_factory=dict, repr=False)


def create_commit(group: GroupCore, options: CommitOptions | None = None) -> StagedCommit:
    """Create a commit (§12.4.1); it becomes the group's pending commit."""
    group.require_active()
    opts = options or CommitOptions()
    proposals = _commit_proposals(group, opts)
    vc = group.validation_context(usages=opts.resumption_usages)
    validate_proposal_list(vc, proposals, Sender.member(group.own_leaf))
    applied = apply_proposals(vc, proposals)
    if opts.credential is not None:
        _check_new_credential(group, opts.credential)
    with_path = opts.force_path or opts.credential is not None or path_required(proposals)
    new_leaf_key = group.key_store.new_hpke_key(group.cs.suite_id) if with_path else None
    try:
        staged = _build_commit(group, opts, proposals, applied, new_leaf_key)
    except MLSError:
        if new_leaf_key is not None:
            group.key_store.destroy(new_leaf_key.key_ref)
        raise
    group.pending_commit = staged
    return staged


def _commit_proposals(group: GroupCore, opts: CommitOptions) -> list[CommittedProposal]:
    """The valid cached proposals (if included), then the options' proposals by value (§12.4)."""
    sender = Sender.member(group.own_leaf)
    out = valid_pending_proposals(group, sender, opts.resumption_usages) if opts.include_pending else []
    bodies: list[Any] = []
    if opts.group_context_extensions is not None:
        bodies.append(GroupContextExtensions(tuple(opts.group_context_extensions)))
    bodies += (
        [Remove(i) for i in opts.remove] + [Add(kp) for kp in opts.add] + [PreSharedKey(p) for p in opts.psks]
    )
    if opts.reinit is not None:
        bodies.append(opts.reinit)
    out.extend(CommittedProposal(Proposal.of(b), sender) for b in bodies)
    return out


def valid_pending_proposals(
    group: GroupCore, committer: Sender, usages: frozenset[int]
) -> list[CommittedProposal]:
    """The cached proposals that keep the list valid, in order (§12.4: the committer SHOULD include
    every valid proposal it received, as long as the list stays valid; the others are left out)."""
    vc = group.validation_context(usages)
    cached = list(group.state.proposals.values())
    chosen: list[int] = []
    for i in sorted(range(len(cached)), key=lambda i: _selection_priority(cached, i)):
        candidate = [*chosen, i]
        try:
            validate_proposal_list(vc, [_committed(cached[j]) for j in sorted(candidate)], committer)
        except MLSError:
            continue
        chosen = candidate
    return [_committed(cached[j]) for j in sorted(chosen)]


def _build_commit(
    group: GroupCore,
    opts: CommitOptions,
    proposals: list[CommittedProposal],
    applied: AppliedProposals,
    new_leaf_key: HpkePrivateKey | None,
) -> StagedCommit:
    s = group.state
    path = _commit_path(group, applied, new_leaf_key, opts.credential)
    commit = Commit(tuple(_proposal_or_ref(p) for p in proposals), path.update_path)
    auth, ks, new_state = _sign_and_schedule(group, opts, commit, path, applied)
    message = group.protect_content(auth, _sender_secret_tree_copy(s.secret_tree))
    welcome = None
    if applied.added:
        group_info = signed_group_info(group, new_state, opts.ratchet_tree_in_welcome)
        welcome = MLSMessage.of(
            _welcome(group, new_state, ks, group_info, applied, path.path_secrets)
        ).to_bytes()
    replaced_leaf = [s.keys.leaf_key.key_ref] if new_leaf_key is not None else []
    return StagedCommit(
        new_state,
        Sender.member(s.own_leaf),
        proposals,
        auth.to_bytes(),
        message,
        welcome,
        MLSMessage.of(signed_group_info(group, new_state, False)).to_bytes(),
        path.tree.encode(),
        dead_keys(s, [*replaced_leaf, *dead_update_keys(s, applied)]),
    )


def _commit_path(
    group: GroupCore,
    applied: AppliedProposals,
    new_leaf_key: HpkePrivateKey | None,
    credential: Credential | None = None,
) -> _CommitPath:
    """With a new leaf key: an UpdatePath from our leaf (§7.5); without: the tree as the proposals left it."""
    s, cs = group.state, group.cs
    if new_leaf_key is None:
        keys = s.keys.copy()
        keys.drop_nodes_not_in(applied.tree)
        return _CommitPath(applied.tree, keys, bytes(cs.n_h))
    created = _create_path(group, applied, new_leaf_key, credential)
    return _CommitPath(
        created.tree, created.path_keys, created.commit_secret, created.update_path, created.path_secrets
    )


def _check_new_credential(group: GroupCore, credential: Credential) -> None:
    """A replacement credential passes our own credential validator for our signature key and is of a
    type every member supports (§5.3.1, §7.3), before any key is made for the commit."""
    s = group.state
    own = s.tree.leaf(s.own_leaf)
    assert own is not None
    group.validation_context().policy.credential_validator.validate(credential, own.signature_key)
    replaced = [leaf for i, leaf in s.tree.leaves() if i != s.own_leaf]
    check_credential_types_supported([*replaced, dataclasses.replace(own, credential=credential)])


def _create_path(
    group: GroupCore,
    applied: AppliedProposals,
    new_leaf_key: HpkePrivateKey,
    credential: Credential | None = None,
) -> CreatedPath:
    s, cs = group.state, group.cs
    template = applied.tree.leaf(s.own_leaf)
    assert template is not None
    if credential is not None:
        template = dataclasses.replace(template, credential=credential)
    signer = group.signer()
    return create_update_path(
        applied.tree,
        s.own_leaf,
        new_leaf_key=new_leaf_key,
        sign_leaf=lambda leaf: sign_leaf_node(cs, signer, leaf, s.group_id, s.own_leaf),
        leaf_template=template,
        group_context_for=lambda t: provisional_context(s, t, applied.extensions).to_bytes(),
        exclude_leaves=[i for i, _ in applied.added],
        first_path_secret=os.urandom(cs.n_h),
    )


def _sign_and_schedule(
    group: GroupCore, opts: CommitOptions, commit: Commit, path: _CommitPath, applied: AppliedProposals
) -> tuple[AuthenticatedContent, KeySchedule, GroupState]:
    """Sign the commit, advance the transcript and key schedule, and add the confirmation tag (§8, §8.2)."""
    s, cs = group.state, group.cs
    wire = opts.handshake.wire_format
    content = group.framed_content(ContentType.commit, opts.authenticated_data, commit=commit)
    unconfirmed = group.sign_content(content, wire)
    confirmed = TranscriptHashes(
        s.context.confirmed_transcript_hash, s.interim_transcript_hash
    ).next_confirmed(cs, unconfirmed)
    new_ctx = GroupContext(
        1, cs.suite_id, s.group_id, s.epoch + 1, path.tree.tree_hash(), confirmed, applied.extensions
    )
    ks = KeySchedule.from_init_secret(
        cs,
        s.secrets.init_secret,
        path.commit_secret,
        commit_psk_secret(group, applied.psks),
        new_ctx.to_bytes(),
    )
    tag = ks.secrets.confirmation_tag(confirmed)
    auth = AuthenticatedContent(wire, content, FramedContentAuthData(unconfirmed.auth.signature, tag))
    new_state = next_state(
        s,
        tree=path.tree,
        keys=path.keys,
        context=new_ctx,
        ks=ks,
        interim=interim_transcript_hash(cs, confirmed, tag),
        tag=tag,
        reinit=applied.reinit,
    )
    return auth, ks, new_state


def _sender_secret_tree_copy(secret_tree: SecretTree) -> SecretTree:
    """Encrypting a PrivateMessage commit consumes a handshake generation of a *copy*: the current
    epoch is untouched until the commit is merged."""
    return SecretTree.from_state(secret_tree.to_state())


def signed_group_info(group: GroupCore, state: GroupState, with_tree: bool) -> GroupInfo:
    """A GroupInfo for ``state`` with ``external_pub``, signed by this member (§12.4.3)."""
    extensions: list[Extension] = [ExternalPub(state.secrets.external_pub).to_extension()]
    if with_tree:
        extensions.append(Extension(ExtensionType.ratchet_tree, state.tree.encode()))
    unsigned = GroupInfo(state.context, tuple(extensions), state.confirmation_tag, state.own_leaf, b"")
    return sign_group_info(group.cs, group.signer(), unsigned)


def _welcome(
    group: GroupCore,
    state: GroupState,
    ks: KeySchedule,
    group_info: GroupInfo,
    applied: AppliedProposals,
    path_secrets: dict[int, bytes],
) -> Welcome:
    """The Welcome of the added members: joiner secret, the path secret of our common ancestor, the PSKs
    (§12.4.3.1)."""
    members = []
    for leaf_index, kp in applied.added:
        secret = None
        if path_secrets:
            secret = path_secrets.get(tm.common_ancestor(2 * leaf_index, 2 * state.own_leaf))
        path_secret = None if secret is None else PathSecret(secret)
        members.append((kp, GroupSecrets(ks.joiner_secret, path_secret, tuple(applied.psks))))
    return build_welcome(group.cs, ks.welcome_secret, group_info, members)


def _proposal_or_ref(p: CommittedProposal) -> ProposalOrRef:
    return ProposalOrRef.of(p.ref if p.ref is not None else p.proposal)


def _committed(p: CachedProposal) -> CommittedProposal:
    return CommittedProposal(p.proposal, p.sender, p.ref)


def _selection_priority(cached: list[CachedProposal], i: int) -> tuple[int, int]:
    """Which cached proposals a committer considers first (§12.2): Removes before Updates of the same
    leaf, the most recent Update first, and a ReInit only after everything else."""
    body = cached[i].proposal.body
    if isinstance(body, ReInit):
        return (3, i)
    if isinstance(body, Remove):
        return (0, i)
    if isinstance(body, Update):
        return (1, -i)
    return (2, i)


__all__ = ["create_commit", "signed_group_info", "valid_pending_proposals"]
