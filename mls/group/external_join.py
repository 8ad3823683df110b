"""Joining a group by external commit (RFC 9420 §12.4.3.2, §8.3).

From a GroupInfo that carries ``external_pub`` (and the ratchet tree, in the ``ratchet_tree`` extension or
out of band), a new member validates the tree, derives the epoch's ``init_secret`` by HPKE export to the
group's external key (ExternalInit), places itself at the leftmost blank leaf, and commits with a path,
signed as a ``new_member_commit`` sender. With ``remove_prior`` the commit also removes the joiner's
previous appearance ("resync").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore, Signer
from mls.errors import MLSError, ValidationError
from mls.group.join import tree_from_group_info, verify_group_info_signer
from mls.group.proposal_list import (
    AppliedProposals,
    CommittedProposal,
    ValidationContext,
    apply_proposals,
    check_resync_leaf,
    validate_proposal_list,
)
from mls.group.state import GroupConfig, GroupState
from mls.schedule.key_schedule import KeySchedule, external_init_send
from mls.schedule.psk import PskStore, psk_secret
from mls.schedule.transcript import TranscriptHashes, interim_transcript_hash
from mls.tree.leaf_node import LeafNode, LeafNodeSource, default_capabilities, sign_leaf_node
from mls.tree.leaf_validation import check_required_capabilities, validate_external_senders
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.tree_validation import validate_tree
from mls.tree.treekem import CreatedPath, create_update_path
from mls.wire.commit import Commit
from mls.wire.extensions import ExternalPub, RequiredCapabilities, find_payload
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.wire.group_context import GroupContext
from mls.wire.group_info import GroupInfo
from mls.wire.message_protection import protect_public, sign_framed_content
from mls.wire.proposals import ExternalInit, PreSharedKey, PreSharedKeyID, Proposal, ProposalOrRef, Remove


def _checked_group_info(
    cs: CipherSuite, gi: GroupInfo, ratchet_tree: bytes | None, config: GroupConfig
) -> RatchetTree:
    tree = tree_from_group_info(cs, gi, ratchet_tree)
    verify_group_info_signer(cs, gi, tree)
    ctx = gi.group_context
    validate_tree(
        tree,
        group_id=ctx.group_id,
        tree_hash=ctx.tree_hash,
        policy=config.leaf_policy,
        required=find_payload(ctx.extensions, RequiredCapabilities),
    )
    validate_external_senders(ctx.extensions, config.leaf_policy)
    return tree


def join_by_external_commit(
    key_store: KeyStore,
    group_info: bytes,
    *,
    signer: Signer,
    credential: Credential,
    psks: PskStore,
    ratchet_tree: bytes | None = None,
    psk_ids: Sequence[PreSharedKeyID] = (),
    config: GroupConfig | None = None,
    remove_prior: int | None = None,
    authenticated_data: bytes = b"",
) -> tuple[GroupState, bytes]:
    """Join by external commit: returns the new member's state (in the new epoch) and the commit to send."""
    config = config or GroupConfig()
    gi = MLSMessage.from_bytes(group_info).body
    if not isinstance(gi, GroupInfo):
        raise ValidationError("12.4.3.2/group-info-message-type", "the message is not a GroupInfo")
    ctx = gi.group_context
    cs = cipher_suite(ctx.cipher_suite)
    tree = _checked_group_info(cs, gi, ratchet_tree, config)
    external = find_payload(gi.extensions, ExternalPub)
    if external is None:
        raise ValidationError("12.4.3.2/external-pub-present", "the GroupInfo has no external_pub extension")
    kem_output, init_secret = external_init_send(cs, external.external_pub)
    sender = Sender(sender_type=SenderType.new_member_commit)
    proposals = _joiner_proposals(tree, sender, kem_output, credential, remove_prior, psk_ids)
    vc = ValidationContext(cs, ctx.group_id, ctx.version, tree, ctx.extensions, config.leaf_policy)
    validate_proposal_list(vc, proposals, sender)
    applied = apply_proposals(vc, proposals)
    check_required_capabilities(
        _template_leaf(signer, credential, b""), find_payload(applied.extensions, RequiredCapabilities)
    )
    leaf_key = key_store.new_hpke_key(cs.suite_id)
    try:
        return _commit(
            cs,
            gi,
            applied,
            proposals,
            signer,
            credential,
            leaf_key,
            init_secret,
            psks,
            config,
            authenticated_data,
        )
    except MLSError:
        key_store.destroy(leaf_key.key_ref)
        raise


def _joiner_proposals(
    tree: RatchetTree,
    sender: Sender,
    kem_output: bytes,
    credential: Credential,
    remove_prior: int | None,
    psk_ids: Sequence[PreSharedKeyID],
) -> list[CommittedProposal]:
    """ExternalInit, the Remove of a resync, and PreSharedKeys, all by value (§12.4.3.2)."""
    bodies: list[ExternalInit | Remove | PreSharedKey] = [ExternalInit(kem_output)]
    if remove_prior is not None:
        check_resync_leaf(tree, remove_prior, credential)
        bodies.append(Remove(remove_prior))
    bodies += [PreSharedKey(p) for p in psk_ids]
    return [CommittedProposal(Proposal.of(b), sender) for b in bodies]


def _template_leaf(signer: Signer, credential: Credential, encryption_key: bytes) -> LeafNode:
    return LeafNode(
        encryption_key=encryption_key,
        signature_key=signer.public_key,
        credential=credential,
        capabilities=default_capabilities(),
        leaf_node_source=LeafNodeSource.commit,
        parent_hash=b"",
        extensions=(),
        signature=b"",
    )


def _joiner_path(
    cs: CipherSuite,
    gi: GroupInfo,
    applied: AppliedProposals,
    signer: Signer,
    credential: Credential,
    leaf_key: HpkePrivateKey,
) -> CreatedPath:
    """The joiner's leaf at the leftmost blank leaf, and its UpdatePath (§12.4.3.2)."""
    ctx = gi.group_context
    tree = applied.tree.copy()
    joiner = next((i for i in range(tree.n_leaves) if tree.leaf(i) is None), tree.n_leaves)
    tree.extend_to(joiner + 1)
    template = _template_leaf(signer, credential, leaf_key.public_key)

    def provisional(t: RatchetTree) -> bytes:
        return GroupContext(
            ctx.version,
            ctx.cipher_suite,
            ctx.group_id,
            ctx.epoch + 1,
            t.tree_hash(),
            ctx.confirmed_transcript_hash,
            applied.extensions,
        ).to_bytes()

    return create_update_path(
        tree,
        joiner,
        new_leaf_key=leaf_key,
        sign_leaf=lambda leaf: sign_leaf_node(cs, signer, leaf, ctx.group_id, joiner),
        leaf_template=template,
        group_context_for=provisional,
        first_path_secret=os.urandom(cs.n_h),
    )


def _commit(
    cs: CipherSuite,
    gi: GroupInfo,
    applied: AppliedProposals,
    proposals: list[CommittedProposal],
    signer: Signer,
    credential: Credential,
    leaf_key: HpkePrivateKey,
    init_secret: bytes,
    psk_store: PskStore,
    config: GroupConfig,
    authenticated_data: bytes,
) -> tuple[GroupState, bytes]:
    ctx = gi.group_context
    created = _joiner_path(cs, gi, applied, signer, credential, leaf_key)
    commit = Commit(tuple(ProposalOrRef.of(p.proposal) for p in proposals), created.update_path)
    content = FramedContent(
        group_id=ctx.group_id,
        epoch=ctx.epoch,
        sender=Sender(sender_type=SenderType.new_member_commit),
        authenticated_data=authenticated_data,
        content_type=ContentType.commit,
        commit=commit,
    )
    signature = sign_framed_content(cs, signer, WireFormat.mls_public_message, content, ctx)
    auth = AuthenticatedContent(
        WireFormat.mls_public_message, content, FramedContentAuthData(signature, None)
    )
    interim = interim_transcript_hash(cs, ctx.confirmed_transcript_hash, gi.confirmation_tag)
    confirmed = TranscriptHashes(ctx.confirmed_transcript_hash, interim).next_confirmed(cs, auth)
    new_ctx = GroupContext(
        ctx.version,
        ctx.cipher_suite,
        ctx.group_id,
        ctx.epoch + 1,
        created.tree.tree_hash(),
        confirmed,
        applied.extensions,
    )
    psk = psk_secret(cs, [(p, _psk(psk_store, p)) for p in applied.psks])
    ks = KeySchedule.from_init_secret(cs, init_secret, created.commit_secret, psk, new_ctx.to_bytes())
    tag = ks.secrets.confirmation_tag(confirmed)
    auth = AuthenticatedContent(WireFormat.mls_public_message, content, FramedContentAuthData(signature, tag))
    message = MLSMessage.of(protect_public(cs, auth, None, ctx)).to_bytes()
    secret_tree, secrets = ks.secrets.start_secret_tree(created.tree.n_leaves, config.ratchet)
    state = GroupState(
        context=new_ctx,
        tree=created.tree,
        keys=created.path_keys,
        signer_ref=signer.key_ref,
        secrets=secrets,
        secret_tree=secret_tree,
        interim_transcript_hash=interim_transcript_hash(cs, confirmed, tag),
        confirmation_tag=tag,
        config=config,
        resumption_psks={new_ctx.epoch: secrets.resumption_psk},
    )
    return state, message


def _psk(store: PskStore, psk_id: PreSharedKeyID) -> bytes:
    value = store.get(psk_id)
    if value is None:
        raise ValidationError(
            "12.4.3.2/external-commit-psk-available", "a PSK of the external commit is not available"
        )
    return value
