"""What every group operation works on (RFC 9420 §6, §12): one member's state, its key and PSK stores,
the pending commit, and the framing of the member's own messages.

:class:`GroupCore` is the base of :class:`~mls.group.group.Group`; the operation modules
(:mod:`~mls.group.proposing`, :mod:`~mls.group.create_commit`, :mod:`~mls.group.process`,
:mod:`~mls.group.merge`, ...) are functions over it.
"""

from __future__ import annotations

from typing import Any

from mls.crypto.cipher_suite import CipherSuite
from mls.crypto.key_protocols import KeyStore, Signer
from mls.errors import StateError, ValidationError
from mls.group.proposal_list import ValidationContext
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupState
from mls.schedule.psk import MemoryPskStore, PskStore
from mls.schedule.secret_tree import SecretTree
from mls.tree.leaf_node import LeafNode
from mls.wire.framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    WireFormat,
)
from mls.wire.message_protection import encrypt_private, protect_public, ratchet_type_for, sign_framed_content
from mls.wire.proposals import ResumptionPSKUsage


class GroupCore:
    """One member's membership of one group, with its keys in ``key_store``."""

    def __init__(self, state: GroupState, key_store: KeyStore, psks: PskStore | None = None) -> None:
        self.state = state
        self.key_store = key_store
        self.psks: PskStore = psks or MemoryPskStore()
        self.pending_commit: StagedCommit | None = None

    def __repr__(self) -> str:
        s = self.state
        return (
            f"Group(id={s.group_id.hex()[:16]}…, epoch={s.epoch}, leaf={s.own_leaf}, "
            f"members={s.tree.member_count()})"
        )

    # ---- views -----------------------------------------------------------------------------------
    @property
    def cs(self) -> CipherSuite:
        return self.state.cs

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def group_id(self) -> bytes:
        return self.state.group_id

    @property
    def own_leaf(self) -> int:
        return self.state.own_leaf

    @property
    def epoch_authenticator(self) -> bytes:
        return self.state.secrets.epoch_authenticator

    def export(self, label: bytes | str, context: bytes, length: int) -> bytes:
        """``MLS-Exporter(label, context, length)`` (§8.5)."""
        if not 0 < length <= 0xFFFF:
            raise ValidationError("8.5/exporter-length", "exporter length must be a uint16 greater than zero")
        return self.state.secrets.export(label, context, length)

    def members(self) -> list[tuple[int, LeafNode]]:
        return list(self.state.tree.leaves())

    def signer(self) -> Signer:
        return self.key_store.signer(self.state.signer_ref)

    def to_bytes(self) -> bytes:
        return self.state.to_bytes()

    def require_active(self) -> None:
        """The member may send: not removed (§12.4.2), not reinitialized (§11.2), no pending commit."""
        if not self.state.active:
            raise StateError("RFC 9420 §12.4.2: this member was removed from the group")
        if self.state.reinit is not None:
            raise StateError("RFC 9420 §11.2: the group was reinitialized and must not be used any more")
        if self.pending_commit is not None:
            raise StateError("a pending commit must be merged or discarded first")

    def validation_context(
        self, usages: frozenset[int] = frozenset({ResumptionPSKUsage.application})
    ) -> ValidationContext:
        """What proposals of this epoch are validated against (§12.2)."""
        s = self.state
        return ValidationContext(
            self.cs,
            s.group_id,
            s.context.version,
            s.tree,
            tuple(s.context.extensions),
            s.config.leaf_policy,
            usages,
        )

    # ---- framing of own messages (§6) ----------------------------------------------------------------
    def framed_content(
        self, content_type: int, authenticated_data: bytes = b"", **body: Any
    ) -> FramedContent:
        """A FramedContent from this member in the current epoch (§6)."""
        s = self.state
        return FramedContent(
            group_id=s.group_id,
            epoch=s.epoch,
            sender=Sender.member(s.own_leaf),
            authenticated_data=authenticated_data,
            content_type=content_type,
            **body,
        )

    def sign_content(
        self, content: FramedContent, wire_format: int, confirmation_tag: bytes | None = None
    ) -> AuthenticatedContent:
        """Sign ``content`` with this member's signature key (§6.1)."""
        signature = sign_framed_content(self.cs, self.signer(), wire_format, content, self.state.context)
        return AuthenticatedContent(wire_format, content, FramedContentAuthData(signature, confirmation_tag))

    def protect_content(self, auth: AuthenticatedContent, secret_tree: SecretTree | None = None) -> bytes:
        """Frame signed content as a PublicMessage or encrypt it with the next ratchet key (§6.2, §6.3)."""
        s = self.state
        if auth.wire_format == WireFormat.mls_public_message:
            body: PublicMessage | PrivateMessage = protect_public(
                self.cs, auth, s.secrets.membership_key, s.context
            )
        else:
            tree = secret_tree or s.secret_tree
            key = tree.next_key_nonce(s.own_leaf, ratchet_type_for(auth.content.content_type))
            body = encrypt_private(
                self.cs, auth, key, s.secrets.sender_data_secret, padding=self._padding(auth)
            )
        return MLSMessage.of(body).to_bytes()

    def _padding(self, auth: AuthenticatedContent) -> int:
        """Padding of a PrivateMessage to the configured block size (§6.3.1)."""
        block = self.state.config.padding_block
        if block <= 0:
            return 0
        size = len(auth.content.to_bytes()) + len(auth.auth.signature) + 64
        return -size % block


__all__ = ["GroupCore"]
