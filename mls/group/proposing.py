"""Sending proposals (RFC 9420 §12.1): a member's proposal is validated, framed, cached for commits by
reference, and returned as an MLSMessage with its ProposalRef (§5.2)."""

from __future__ import annotations

import os

from mls.errors import MLSError
from mls.group.core import GroupCore
from mls.group.handshake_framing import HandshakeFraming
from mls.group.proposal_list import CommittedProposal, check_adds, validate_proposal
from mls.group.state import CachedProposal
from mls.tree.leaf_node import LeafNode, LeafNodeSource, sign_leaf_node
from mls.wire.extensions import RequiredCapabilities, find_payload
from mls.wire.framing import ContentType, Sender
from mls.wire.proposals import PreSharedKeyID, Proposal, ResumptionPSKUsage, Update


def propose(
    group: GroupCore, proposal: Proposal, handshake: HandshakeFraming, authenticated_data: bytes = b""
) -> tuple[bytes, bytes]:
    """Send a proposal (§12.1); returns (MLSMessage bytes, ProposalRef). It is cached for commits by
    reference."""
    group.require_active()
    s = group.state
    cp = CommittedProposal(proposal, Sender.member(s.own_leaf))
    vc = group.validation_context()
    validate_proposal(vc, cp, find_payload(s.context.extensions, RequiredCapabilities))
    check_adds(vc, [cp], removed=set())
    content = group.framed_content(ContentType.proposal, authenticated_data, proposal=proposal)
    auth = group.sign_content(content, handshake.wire_format)
    ref = group.cs.make_proposal_ref(auth.to_bytes())
    message = group.protect_content(auth)
    s.proposals[ref] = CachedProposal.from_content(ref, auth)
    return message, ref


def propose_update(group: GroupCore, handshake: HandshakeFraming) -> tuple[bytes, bytes]:
    """An Update proposal with a fresh leaf key from the key store (§12.1.2)."""
    s = group.state
    current = s.tree.leaf(s.own_leaf)
    assert current is not None
    new_key = group.key_store.new_hpke_key(group.cs.suite_id)
    leaf = LeafNode(
        encryption_key=new_key.public_key,
        signature_key=current.signature_key,
        credential=current.credential,
        capabilities=current.capabilities,
        leaf_node_source=LeafNodeSource.update,
        extensions=current.extensions,
        signature=b"",
    )
    leaf = sign_leaf_node(group.cs, group.signer(), leaf, s.group_id, s.own_leaf)
    try:
        out = propose(group, Proposal.of(Update(leaf)), handshake)
    except MLSError:
        group.key_store.destroy(new_key.key_ref)
        raise
    s.update_keys[new_key.public_key] = new_key.key_ref
    return out


def new_psk_id(
    group: GroupCore,
    psk_id: bytes | None = None,
    *,
    resumption_epoch: int | None = None,
    group_id: bytes | None = None,
    usage: int = ResumptionPSKUsage.application,
) -> PreSharedKeyID:
    """A PreSharedKeyID with a fresh ``psk_nonce`` of KDF.Nh bytes (§8.4)."""
    nonce = os.urandom(group.cs.n_h)
    if psk_id is not None:
        return PreSharedKeyID.external(psk_id, nonce)
    assert resumption_epoch is not None
    return PreSharedKeyID.resumption(usage, group_id or group.group_id, resumption_epoch, nonce)


__all__ = ["new_psk_id", "propose", "propose_update"]
