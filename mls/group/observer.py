"""What a party outside a group — a delivery service (RFC 9750 §5) — can read and check of its messages.

A delivery service holds no group secrets. It can read the framing of a handshake or application message
(group id, epoch, content type; for a PublicMessage also the sender), the KeyPackageRefs a Welcome is for
(§12.4.3.1), and — for a commit bundle — verify the GroupInfo of the new epoch as a joiner would: the ratchet
tree (from the ``ratchet_tree`` extension or given beside it, §12.4.3.3) has the GroupInfo's tree hash and
passes the tree checks of §12.4.3.1, and the GroupInfo is signed by the member at its ``signer`` leaf
(§12.4.3). The result, :class:`GroupView`, is what the service routes by: each member leaf's signature key.
"""

from __future__ import annotations

from dataclasses import dataclass

from mls.crypto.cipher_suite import CIPHER_SUITES, cipher_suite
from mls.errors import ValidationError
from mls.group.join import tree_from_group_info, verify_group_info_signer
from mls.group.state import GroupState
from mls.tree.leaf_validation import LeafPolicy
from mls.tree.nodes import RatchetTreeExtension
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.tree_validation import validate_tree
from mls.wire.extensions import find_payload
from mls.wire.framing import ContentType, MLSMessage, SenderType, WireFormat
from mls.wire.group_info import GroupInfo

CONTENT_KINDS = {
    ContentType.application: "application",
    ContentType.proposal: "proposal",
    ContentType.commit: "commit",
}


@dataclass(frozen=True)
class MessageInfo:
    """The readable framing of a PublicMessage or PrivateMessage (§6.2, §6.3)."""

    wire_format: int
    group_id: bytes
    epoch: int
    #: ``"application"``, ``"proposal"`` or ``"commit"``.
    kind: str
    #: A PublicMessage's sender type; ``None`` for a PrivateMessage (its sender is encrypted, §6.3.2).
    sender_type: int | None
    #: A member sender's leaf index (PublicMessage only).
    leaf_index: int | None


@dataclass(frozen=True)
class GroupView:
    """A group at one epoch as an outsider verified it: its members' leaves and signature keys."""

    group_id: bytes
    epoch: int
    cipher_suite: int
    #: The TLS-encoded ratchet tree (``optional<Node> ratchet_tree<V>``).
    ratchet_tree: bytes
    #: (leaf index, signature public key) of every non-blank leaf.
    leaves: tuple[tuple[int, bytes], ...]
    #: The leaf index that signed the GroupInfo (the committer).
    signer: int


def inspect_message(data: bytes) -> MessageInfo:
    """The framing of an ``MLSMessage`` holding a PublicMessage or PrivateMessage; other kinds are refused."""
    msg = MLSMessage.from_bytes(data)
    if msg.public_message is not None:
        content = msg.public_message.content
        sender = content.sender
        return MessageInfo(
            msg.wire_format,
            content.group_id,
            content.epoch,
            CONTENT_KINDS[ContentType(content.content_type)],
            sender.sender_type,
            sender.leaf_index if sender.sender_type == SenderType.member else None,
        )
    if msg.private_message is not None:
        pm = msg.private_message
        if pm.content_type not in CONTENT_KINDS:
            raise ValidationError("6.3/content-type", "a PrivateMessage with an unknown content type")
        kind = CONTENT_KINDS[ContentType(pm.content_type)]
        return MessageInfo(msg.wire_format, pm.group_id, pm.epoch, kind, None, None)
    raise ValidationError("6/wire-format", "expected a PublicMessage or a PrivateMessage")


def welcome_key_package_refs(data: bytes) -> tuple[int, tuple[bytes, ...]]:
    """The cipher suite of an ``MLSMessage`` Welcome and the KeyPackageRefs it is encrypted to (§12.4.3.1)."""
    msg = MLSMessage.from_bytes(data)
    if msg.welcome is None:
        raise ValidationError("12.4.3.1/welcome-message", "expected a Welcome")
    return msg.welcome.cipher_suite, tuple(s.new_member for s in msg.welcome.secrets)


def verify_group_info(data: bytes, ratchet_tree: bytes | None) -> GroupView:
    """Check an ``MLSMessage`` GroupInfo and its tree as a joiner would (§12.4.3, §12.4.3.1), without
    group secrets; the tree comes from the ``ratchet_tree`` extension or else ``ratchet_tree``."""
    msg = MLSMessage.from_bytes(data)
    if msg.group_info is None or msg.wire_format != WireFormat.mls_group_info:
        raise ValidationError("12.4.3/group-info-message", "expected a GroupInfo")
    gi = msg.group_info
    ctx = gi.group_context
    if ctx.cipher_suite not in CIPHER_SUITES:
        raise ValidationError(
            "12.4.3/group-info-cipher-suite", "the GroupInfo's cipher suite is not supported"
        )
    cs = cipher_suite(ctx.cipher_suite)
    tree = tree_from_group_info(cs, gi, ratchet_tree)
    validate_tree(tree, group_id=ctx.group_id, tree_hash=ctx.tree_hash, policy=LeafPolicy())
    verify_group_info_signer(cs, gi, tree)
    return _view(gi, tree)


def _view(gi: GroupInfo, tree: RatchetTree) -> GroupView:
    ctx = gi.group_context
    leaves = tuple((i, leaf.signature_key) for i, leaf in tree.leaves())
    return GroupView(ctx.group_id, ctx.epoch, ctx.cipher_suite, tree.encode(), leaves, gi.signer)


def state_view(state: GroupState) -> GroupView:
    """The :class:`GroupView` of a member's own state (nothing to verify: it made or checked it)."""
    leaves = tuple((i, leaf.signature_key) for i, leaf in state.tree.leaves())
    ctx = state.context
    return GroupView(ctx.group_id, ctx.epoch, ctx.cipher_suite, state.tree.encode(), leaves, state.own_leaf)


def has_ratchet_tree_extension(group_info: bytes) -> bool:
    """Whether an ``MLSMessage`` GroupInfo carries the ``ratchet_tree`` extension (§12.4.3.3)."""
    msg = MLSMessage.from_bytes(group_info)
    return (
        msg.group_info is not None
        and find_payload(msg.group_info.extensions, RatchetTreeExtension) is not None
    )


__all__ = [
    "GroupView",
    "MessageInfo",
    "has_ratchet_tree_extension",
    "inspect_message",
    "state_view",
    "verify_group_info",
    "welcome_key_package_refs",
]
