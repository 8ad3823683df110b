"""Proposal list validation and application (RFC 9420 §12.1, §12.2, §12.3).

A commit's proposals are resolved (references looked up in the epoch's proposal cache) into
:class:`CommittedProposal` values, checked as a list by :func:`validate_proposal_list`, and applied to a
copy of the tree and GroupContext extensions by :func:`apply_proposals`, in the order §12.3 prescribes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import CipherSuite
from mls.errors import ValidationError
from mls.tree.leaf_node import LeafNode, LeafNodeSource
from mls.tree.leaf_validation import (
    LeafPolicy,
    batch_signature_checks,
    check_required_capabilities,
    validate_external_senders,
    validate_leaf_node,
)
from mls.tree.ratchet_tree import RatchetTree
from mls.wire.extensions import (
    Extension,
    ExternalSenders,
    RequiredCapabilities,
    check_group_context_extensions,
    find_payload,
)
from mls.wire.framing import Sender, SenderType
from mls.wire.key_package import KeyPackage, key_package_signature_checks, validate_key_package
from mls.wire.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalType,
    PSKType,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Update,
)

#: Proposal types whose presence requires the Commit to carry a path (§12.4).
PATH_REQUIRED_TYPES = frozenset(
    {
        ProposalType.update,
        ProposalType.remove,
        ProposalType.external_init,
        ProposalType.group_context_extensions,
    }
)
#: Proposal types an ``external`` sender may send (§12.1.8).
EXTERNAL_SENDER_TYPES = frozenset(
    {
        ProposalType.add,
        ProposalType.remove,
        ProposalType.psk,
        ProposalType.reinit,
        ProposalType.group_context_extensions,
    }
)


@dataclass(frozen=True)
class CommittedProposal:
    """One proposal of a commit, with who proposed it and its ProposalRef (``None`` if by value)."""

    proposal: Proposal
    sender: Sender
    ref: bytes | None = None


@dataclass
class AppliedProposals:
    """The tree and extensions after applying a proposal list, and what it did (§12.3)."""

    tree: RatchetTree
    extensions: tuple[Extension, ...]
    added: list[tuple[int, KeyPackage]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    psks: list[PreSharedKeyID] = field(default_factory=list)
    external_init: ExternalInit | None = None
    reinit: ReInit | None = None


@dataclass(frozen=True)
class ValidationContext:
    """What proposal validation needs to know about the group."""

    cs: CipherSuite
    group_id: bytes
    version: int
    tree: RatchetTree
    extensions: tuple[Extension, ...]
    policy: LeafPolicy
    #: PSKs of these usages are allowed (set during ReInit or branching, §11).
    allowed_resumption_usages: frozenset[int] = frozenset({ResumptionPSKUsage.application})


def path_required(proposals: Sequence[CommittedProposal]) -> bool:
    """An empty list or any path-required type makes the path mandatory (§12.4)."""
    return not proposals or any(p.proposal.proposal_type in PATH_REQUIRED_TYPES for p in proposals)


# ---- individual proposals (§12.1) ----------------------------------------------------------------


def validate_proposal(
    vc: ValidationContext, cp: CommittedProposal, required: RequiredCapabilities | None
) -> None:
    """The rules of §12.1.x for one proposal, given the sender."""
    body = cp.proposal.body
    sender = cp.sender
    if sender.sender_type == SenderType.external:
        check_external_proposal_type(cp.proposal)
    if sender.sender_type == SenderType.new_member_proposal and not isinstance(body, Add):
        raise ValidationError(
            "6.1/new-member-proposal-add", "a new_member_proposal sender may only propose Add"
        )
    if isinstance(body, Add):
        validate_key_package(vc.cs, body.key_package, vc.policy, required)
    elif isinstance(body, Update):
        _validate_update(vc, sender, body.leaf_node, required)
    elif isinstance(body, Remove):
        if vc.tree.leaf(body.removed) is None:
            raise ValidationError(
                "12.1.3/remove-leaf-non-blank",
                f"Remove of leaf {body.removed}, which is blank or outside the tree",
            )
    elif isinstance(body, PreSharedKey):
        validate_psk_id(vc, body.psk)
    elif isinstance(body, ReInit):
        if body.version < vc.version:
            raise ValidationError("12.1.5/reinit-version", "ReInit to an older protocol version")
    elif isinstance(body, GroupContextExtensions):
        check_group_context_extensions(body.extensions)
        validate_external_senders(body.extensions, vc.policy)


def check_external_proposal_type(proposal: Proposal) -> None:
    """An external sender proposes only Add, Remove, PreSharedKey, ReInit and GroupContextExtensions
    (§12.1.8)."""
    if proposal.proposal_type not in EXTERNAL_SENDER_TYPES:
        raise ValidationError(
            "12.1.8/external-sender-proposal-type",
            f"an external sender cannot propose {type(proposal.body).__name__}",
        )


def _validate_update(
    vc: ValidationContext, sender: Sender, leaf: LeafNode, required: RequiredCapabilities | None
) -> None:
    if sender.sender_type != SenderType.member or sender.leaf_index is None:
        raise ValidationError("12.1.2/update-sender-member", "only members send Update proposals")
    current = vc.tree.leaf(sender.leaf_index)
    if current is None:
        raise ValidationError("12.1.2/update-sender-leaf", "Update from a blank leaf")
    validate_leaf_node(
        vc.cs,
        leaf,
        source=LeafNodeSource.update,
        group_id=vc.group_id,
        leaf_index=sender.leaf_index,
        policy=vc.policy,
        required=required,
    )
    if leaf.encryption_key == current.encryption_key:
        raise ValidationError(
            "7.3/update-encryption-key-changed", "an Update must change the leaf's encryption_key"
        )


def validate_psk_id(vc: ValidationContext, psk: PreSharedKeyID) -> None:
    if len(psk.psk_nonce) != vc.cs.n_h:
        raise ValidationError("12.1.4/psk-nonce-length", "psk_nonce must be KDF.Nh bytes long")
    if psk.psktype == PSKType.resumption and psk.usage not in vc.allowed_resumption_usages:
        raise ValidationError(
            "12.1.4/resumption-psk-usage", f"resumption PSK usage {psk.usage} is not allowed here"
        )


def external_sender_key(extensions: Sequence[Extension], sender_index: int) -> bytes:
    """The signature key of external sender ``sender_index`` (§12.1.8.1)."""
    senders = find_payload(extensions, ExternalSenders)
    if senders is None or sender_index >= len(senders.external_senders):
        raise ValidationError(
            "12.1.8.1/external-sender-index", f"no external sender with index {sender_index}"
        )
    return senders.external_senders[sender_index].signature_key


# ---- the list as a whole (§12.2) ----------------------------------------------------------------


def _new_extensions(vc: ValidationContext, proposals: Sequence[CommittedProposal]) -> tuple[Extension, ...]:
    gces = [p.proposal.body for p in proposals if isinstance(p.proposal.body, GroupContextExtensions)]
    if len(gces) > 1:
        raise ValidationError(
            "12.2/group-context-extensions-once", "more than one GroupContextExtensions proposal"
        )
    return gces[0].extensions if gces else vc.extensions


def validate_proposal_list(
    vc: ValidationContext, proposals: Sequence[CommittedProposal], committer: Sender
) -> None:
    """Every rule of §12.2 for a regular (member) or an external (new_member_commit) commit. The
    signatures of the added KeyPackages (§10.1) are verified in one batch first; each proposal's checks
    then run in order, its signature checks taking the batch's results."""
    extensions = _new_extensions(vc, proposals)
    required = find_payload(extensions, RequiredCapabilities)
    added = [cp.proposal.body.key_package for cp in proposals if isinstance(cp.proposal.body, Add)]
    checks = batch_signature_checks(added, key_package_signature_checks)
    with vc.cs.prefetch_verifications(checks):
        for cp in proposals:
            validate_proposal(vc, cp, required)
    if committer.sender_type == SenderType.new_member_commit:
        _validate_external_commit_list(proposals)
    else:
        _validate_member_commit_list(vc, proposals, committer)
    _check_psks_unique(proposals)
    _check_required_capabilities_supported(vc, proposals, required)


def _validate_member_commit_list(
    vc: ValidationContext, proposals: Sequence[CommittedProposal], committer: Sender
) -> None:
    touched: set[int] = set()
    for cp in proposals:
        body = cp.proposal.body
        if isinstance(body, Update):
            if cp.sender == committer:
                raise ValidationError(
                    "12.2/committer-own-update", "the committer cannot commit its own Update proposal"
                )
            leaf = cp.sender.leaf_index
        elif isinstance(body, Remove):
            if committer.sender_type == SenderType.member and body.removed == committer.leaf_index:
                raise ValidationError("12.2/committer-self-remove", "the committer cannot remove itself")
            leaf = body.removed
        elif isinstance(body, ExternalInit):
            raise ValidationError(
                "12.2/member-commit-external-init", "ExternalInit is only allowed in an external commit"
            )
        elif isinstance(body, ReInit) and len(proposals) > 1:
            raise ValidationError("12.2/reinit-alone", "ReInit must be the only proposal of its commit")
        else:
            continue
        assert leaf is not None
        if leaf in touched:
            raise ValidationError("12.2/leaf-changed-once", f"more than one Update or Remove for leaf {leaf}")
        touched.add(leaf)
    check_adds(vc, proposals, removed=touched)


def check_adds(vc: ValidationContext, proposals: Sequence[CommittedProposal], removed: set[int]) -> None:
    """Adds name distinct clients, none already in the group unless removed, with fresh keys (§12.2)."""
    in_group = {leaf.signature_key: i for i, leaf in vc.tree.leaves()}
    enc_keys = {leaf.encryption_key for _, leaf in vc.tree.leaves()}
    seen: set[bytes] = set()
    for cp in proposals:
        body = cp.proposal.body
        if not isinstance(body, Add):
            continue
        leaf = body.key_package.leaf_node
        if leaf.signature_key in seen:
            raise ValidationError("12.2/add-client-unique", "two Add proposals for the same client")
        seen.add(leaf.signature_key)
        member = in_group.get(leaf.signature_key)
        if member is not None and member not in removed:
            raise ValidationError("12.2/add-client-not-member", "Add of a client already in the group")
        if leaf.encryption_key in enc_keys:
            raise ValidationError(
                "7.3/add-encryption-key-unique", "an added leaf repeats an encryption key in use"
            )


def _validate_external_commit_list(proposals: Sequence[CommittedProposal]) -> None:
    kinds = [type(p.proposal.body) for p in proposals]
    if kinds.count(ExternalInit) != 1:
        raise ValidationError(
            "12.2/external-commit-one-external-init", "an external commit carries exactly one ExternalInit"
        )
    if kinds.count(Remove) > 1:
        raise ValidationError(
            "12.2/external-commit-one-remove", "an external commit carries at most one Remove"
        )
    if any(k not in (ExternalInit, Remove, PreSharedKey) for k in kinds):
        raise ValidationError(
            "12.2/external-commit-proposal-types",
            "an external commit carries only ExternalInit, Remove and PreSharedKey",
        )
    if any(p.ref is not None for p in proposals):
        raise ValidationError(
            "12.4.3.2/external-commit-by-value", "an external commit carries its proposals by value"
        )


def check_resync_leaf(tree: RatchetTree, removed: int, credential: Credential) -> None:
    """The Remove of an external commit (a resync) names the joiner's own prior leaf: the new leaf must be
    acceptable as an Update of it (§12.2), here, carry the same credential."""
    prior = tree.leaf(removed)
    if prior is None:
        raise ValidationError("12.2/resync-leaf-non-blank", f"resync removes leaf {removed}, which is blank")
    if prior.credential != credential:
        raise ValidationError(
            "12.2/resync-credential", "resync must remove a leaf with the joiner's own credential"
        )


def _check_psks_unique(proposals: Sequence[CommittedProposal]) -> None:
    ids = [p.proposal.body.psk.to_bytes() for p in proposals if isinstance(p.proposal.body, PreSharedKey)]
    if len(ids) != len(set(ids)):
        raise ValidationError("12.2/psk-id-unique", "two PreSharedKey proposals for the same PSK")


def _check_required_capabilities_supported(
    vc: ValidationContext, proposals: Sequence[CommittedProposal], required: RequiredCapabilities | None
) -> None:
    """A GroupContextExtensions' required capabilities are supported by the members that stay (§12.1.7)."""
    if required is None or not any(isinstance(p.proposal.body, GroupContextExtensions) for p in proposals):
        return
    removed = {p.proposal.body.removed for p in proposals if isinstance(p.proposal.body, Remove)}
    for index, leaf in vc.tree.leaves():
        if index not in removed:
            try:
                check_required_capabilities(leaf, required)
            except ValidationError:
                raise ValidationError(
                    "12.1.7/members-support-required-capabilities",
                    f"member {index} lacks the required capabilities",
                ) from None


# ---- application (§12.3) ----------------------------------------------------------------------------


def apply_proposals(vc: ValidationContext, proposals: Sequence[CommittedProposal]) -> AppliedProposals:
    """Apply a validated list to a copy of the tree, in the order of §12.3."""
    out = AppliedProposals(vc.tree.copy(), _new_extensions(vc, proposals))
    bodies = [(p.sender, p.proposal.body) for p in proposals]
    for sender, body in bodies:
        if isinstance(body, Update):
            assert sender.leaf_index is not None
            out.tree.update_leaf(sender.leaf_index, body.leaf_node)
            out.updated.append(sender.leaf_index)
    for _, body in bodies:
        if isinstance(body, Remove):
            out.tree.remove_leaf(body.removed)
            out.removed.append(body.removed)
    next_free = 0
    for _, body in bodies:
        if isinstance(body, Add):
            index = out.tree.add_leaf(body.key_package.leaf_node, next_free)
            out.added.append((index, body.key_package))
            next_free = index + 1
    for _, body in bodies:
        if isinstance(body, PreSharedKey):
            out.psks.append(body.psk)
        elif isinstance(body, ExternalInit):
            out.external_init = body
        elif isinstance(body, ReInit):
            out.reinit = body
    return out
