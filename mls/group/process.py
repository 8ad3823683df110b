"""Processing a message from the group (RFC 9420 §6, §12.4.2): check group and epoch, verify the
membership tag of a PublicMessage or decrypt a PrivateMessage, verify the sender's signature, then hand
the content on — application data is returned, a proposal is cached, a commit is staged
(:mod:`mls.group.receive_commit`). Late application messages of a retained past epoch are read with
that epoch's secrets (RFC 9750 §14).
"""

from __future__ import annotations

from mls.errors import ValidationError
from mls.group.core import GroupCore
from mls.group.proposal_list import CommittedProposal, external_sender_key, validate_proposal
from mls.group.receive_commit import stage_received_commit
from mls.group.results import ApplicationMessage, ProcessedMessage, ProposalMessage
from mls.group.state import CachedProposal
from mls.schedule.secret_tree import RatchetType
from mls.wire.extensions import RequiredCapabilities, find_payload
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    SenderType,
)
from mls.wire.message_protection import (
    decrypt_private,
    public_to_authenticated,
    ratchet_type_for,
    verify_framed_content,
    verify_membership_tag,
)
from mls.wire.proposals import Add


def process_message(group: GroupCore, message: bytes) -> ProcessedMessage:
    """Process one MLSMessage from the group (§6): application data and proposals take effect at once;
    a commit is returned staged."""
    body = MLSMessage.from_bytes(message).body
    if isinstance(body, PublicMessage):
        return _process_public(group, body)
    if isinstance(body, PrivateMessage):
        return _process_private(group, body)
    raise ValidationError(
        "6/message-wire-format", "only PublicMessage and PrivateMessage can be processed by a member"
    )


def _check_group(group: GroupCore, group_id: bytes) -> None:
    if group_id != group.group_id:
        raise ValidationError("6/message-group-id", "message for another group")


def _check_epoch(group: GroupCore, epoch: int) -> None:
    if epoch != group.epoch:
        raise ValidationError(
            "6/message-epoch", f"message for epoch {epoch}, the group is at epoch {group.epoch}"
        )


def _check_epoch_and_group(group: GroupCore, group_id: bytes, epoch: int) -> None:
    _check_group(group, group_id)
    _check_epoch(group, epoch)


def _process_public(group: GroupCore, msg: PublicMessage) -> ProcessedMessage:
    """A PublicMessage (§6.2): membership tag, then signature."""
    s = group.state
    content = msg.content
    _check_epoch_and_group(group, content.group_id, content.epoch)
    if content.content_type == ContentType.application:
        raise ValidationError(
            "6/application-data-private", "application data must not be sent as a PublicMessage"
        )
    verify_membership_tag(group.cs, msg, s.secrets.membership_key, s.context)
    auth = public_to_authenticated(msg)
    verify_framed_content(group.cs, _sender_signature_key(group, auth), auth, s.context)
    return _handle_authenticated(group, auth)


def _process_private(group: GroupCore, msg: PrivateMessage) -> ProcessedMessage:
    """A PrivateMessage (§6.3): the ratchet advances only once the content was accepted."""
    _check_group(group, msg.group_id)
    if msg.epoch != group.epoch and msg.content_type == ContentType.application:
        return _process_past_epoch(group, msg)
    _check_epoch(group, msg.epoch)  # a handshake message of another epoch: never
    s = group.state
    auth, sender_data = decrypt_private(
        group.cs, msg, s.secrets.sender_data_secret, s.secret_tree.peek_key_nonce
    )
    verify_framed_content(group.cs, _sender_signature_key(group, auth), auth, s.context)
    result = _handle_authenticated(group, auth)
    s.secret_tree.key_nonce(
        sender_data.leaf_index, ratchet_type_for(msg.content_type), sender_data.generation
    )
    return result


def _process_past_epoch(group: GroupCore, msg: PrivateMessage) -> ApplicationMessage:
    """Late application messages of a retained past epoch (§14: RFC 9750 delayed messages)."""
    past = next((p for p in group.state.past_epochs if p.epoch == msg.epoch), None)
    if past is None:
        raise ValidationError(
            "6/past-epoch-retained", f"message for epoch {msg.epoch}, which is not retained"
        )
    auth, sd = decrypt_private(group.cs, msg, past.sender_data_secret, past.secret_tree.peek_key_nonce)
    key = past.signature_keys.get(sd.leaf_index)
    if key is None:
        raise ValidationError("6.3.2/past-epoch-sender-leaf", "sender was not a member in that epoch")
    verify_framed_content(group.cs, key, auth, past.context)
    past.secret_tree.key_nonce(sd.leaf_index, RatchetType.application, sd.generation)
    return ApplicationMessage.from_content(auth)


def _sender_signature_key(group: GroupCore, auth: AuthenticatedContent) -> bytes:
    """The key the sender signed with (§6.1): a member's leaf, an external sender's entry (§12.1.8), or a
    new member's KeyPackage or UpdatePath leaf (§12.4.3.2)."""
    sender = auth.content.sender
    s = group.state
    if sender.sender_type == SenderType.member:
        assert sender.leaf_index is not None
        leaf = s.tree.leaf(sender.leaf_index)
        if leaf is None:
            raise ValidationError(
                "6.1/member-sender-leaf", f"sender leaf {sender.leaf_index} is blank or outside the tree"
            )
        return leaf.signature_key
    if sender.sender_type == SenderType.external:
        assert sender.sender_index is not None
        return external_sender_key(s.context.extensions, sender.sender_index)
    content = auth.content
    if sender.sender_type == SenderType.new_member_proposal:
        if content.proposal is None or not isinstance(content.proposal.body, Add):
            raise ValidationError(
                "6.1/new-member-proposal-content",
                "a new_member_proposal sender may only send an Add proposal",
            )
        return content.proposal.body.key_package.leaf_node.signature_key
    if content.commit is None or content.commit.path is None:
        raise ValidationError(
            "12.4.3.2/external-commit-path", "a new_member_commit sender must send a commit with a path"
        )
    return content.commit.path.leaf_node.signature_key


def _handle_authenticated(group: GroupCore, auth: AuthenticatedContent) -> ProcessedMessage:
    ct = auth.content.content_type
    if ct == ContentType.application:
        if auth.content.sender.sender_type != SenderType.member:
            raise ValidationError("6.1/application-sender-member", "only members send application data")
        return ApplicationMessage.from_content(auth)
    if ct == ContentType.proposal:
        return _cache_proposal(group, auth)
    if auth.content.sender.sender_type not in (SenderType.member, SenderType.new_member_commit):
        raise ValidationError(
            "6.1/commit-sender-type", "commits come from members or new members (external commits)"
        )
    own = group.pending_commit
    if own is not None and auth.to_bytes() == own.content:
        return own
    return stage_received_commit(group, auth)


def _cache_proposal(group: GroupCore, auth: AuthenticatedContent) -> ProposalMessage:
    """Validate a received proposal and cache it for commits by reference (§12.1)."""
    proposal = auth.content.proposal
    assert proposal is not None
    validate_proposal(
        group.validation_context(),
        CommittedProposal(proposal, auth.content.sender),
        find_payload(group.state.context.extensions, RequiredCapabilities),
    )
    ref = group.cs.make_proposal_ref(auth.to_bytes())
    group.state.proposals[ref] = CachedProposal.from_content(ref, auth)
    return ProposalMessage(auth.content.sender, ref, proposal, auth.content.epoch)


__all__ = ["process_message"]
