"""Proposals from outside the group (RFC 9420 §12.1.8): external senders and new members.

* An **external sender** — e.g. a server provisioned in the group's ``external_senders`` extension —
  signs proposals (Add, Remove, PreSharedKey, ReInit, GroupContextExtensions) as sender type
  ``external`` with the index of its entry in that extension.
* A **new member** proposes its own Add as sender type ``new_member_proposal``.

Both are sent as PublicMessage without a membership tag, signed without the GroupContext (§6.1).
"""

from __future__ import annotations

from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.key_protocols import Signer
from mls.errors import ValidationError
from mls.group.proposal_list import check_external_proposal_type
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.wire.key_package import KeyPackage
from mls.wire.message_protection import sign_framed_content
from mls.wire.proposals import Add, Proposal


def _external_message(
    suite: int,
    signer: Signer,
    sender: Sender,
    group_id: bytes,
    epoch: int,
    proposal: Proposal,
    authenticated_data: bytes,
) -> bytes:
    cs = cipher_suite(suite)
    content = FramedContent(
        group_id=group_id,
        epoch=epoch,
        sender=sender,
        authenticated_data=authenticated_data,
        content_type=ContentType.proposal,
        proposal=proposal,
    )
    signature = sign_framed_content(cs, signer, WireFormat.mls_public_message, content, None)
    auth = AuthenticatedContent(WireFormat.mls_public_message, content, FramedContentAuthData(signature))
    return MLSMessage.of(PublicMessage(auth.content, auth.auth, None)).to_bytes()


def external_proposal(
    suite: int,
    signer: Signer,
    sender_index: int,
    group_id: bytes,
    epoch: int,
    proposal: Proposal,
    authenticated_data: bytes = b"",
) -> bytes:
    """A proposal from external sender ``sender_index`` of the group's ``external_senders`` (§12.1.8)."""
    check_external_proposal_type(proposal)
    return _external_message(
        suite, signer, Sender.external(sender_index), group_id, epoch, proposal, authenticated_data
    )


def new_member_add_proposal(
    signer: Signer, key_package: KeyPackage, group_id: bytes, epoch: int, authenticated_data: bytes = b""
) -> bytes:
    """A prospective member's own Add proposal (sender type ``new_member_proposal``, §12.1.8)."""
    if signer.public_key != key_package.leaf_node.signature_key:
        raise ValidationError(
            "6.1/new-member-proposal-signer", "a new member signs its Add with its KeyPackage's signature key"
        )
    return _external_message(
        key_package.cipher_suite,
        signer,
        Sender(sender_type=SenderType.new_member_proposal),
        group_id,
        epoch,
        Proposal.of(Add(key_package)),
        authenticated_data,
    )
