"""Content authentication and message protection (RFC 9420 §6.1–§6.3).

* :func:`sign_framed_content` / :func:`verify_framed_content` — the FramedContentTBS signature (§6.1).
* :func:`protect_public` / :func:`verify_membership_tag` — PublicMessage and its membership tag (§6.2).
* :func:`encrypt_private` / :func:`decrypt_private` — PrivateMessage content and sender-data
  encryption with reuse guard and padding (§6.3, §6.3.1, §6.3.2).

Keys come from a secret tree (§9) that the caller owns: decryption asks for the key of one generation
through a callable, so the caller decides whether the key is consumed (the group engine consumes it only
once the whole message has been accepted).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

from mls.crypto.cipher_suite import CipherSuite
from mls.crypto.key_protocols import Signer
from mls.errors import CryptoError, DecodeError, ValidationError
from mls.schedule.secret_tree import RatchetKey, RatchetType, sender_data_key_nonce
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    PublicMessage,
    Sender,
    SenderData,
    SenderDataAAD,
    SenderType,
    WireFormat,
)
from mls.wire.group_context import GroupContext

KeyLookup = Callable[[int, RatchetType, int], RatchetKey]
"""``(leaf_index, ratchet type, generation) -> RatchetKey`` from the epoch's secret tree."""


def _context_for(content: FramedContent, context: GroupContext | None) -> GroupContext | None:
    """The GroupContext is signed only for member and new_member_commit senders (§6.1)."""
    if content.sender.sender_type in (SenderType.member, SenderType.new_member_commit):
        if context is None:
            raise ValueError("member and new_member_commit content is signed with the GroupContext")
        return context
    return None


def sign_framed_content(
    cs: CipherSuite, signer: Signer, wire_format: int, content: FramedContent, context: GroupContext | None
) -> bytes:
    """``SignWithLabel(., "FramedContentTBS", FramedContentTBS)`` (§6.1)."""
    tbs = AuthenticatedContent(wire_format, content, FramedContentAuthData(b"")).tbs(
        _context_for(content, context)
    )
    return cs.sign_with_label(signer, "FramedContentTBS", tbs)


def verify_framed_content(
    cs: CipherSuite, public_key: bytes, auth_content: AuthenticatedContent, context: GroupContext
) -> None:
    """Verify the FramedContentTBS signature with the sender's key; :class:`CryptoError` otherwise."""
    tbs = auth_content.tbs(_context_for(auth_content.content, context))
    if not cs.verify_with_label(public_key, "FramedContentTBS", tbs, auth_content.auth.signature):
        raise CryptoError(
            "6.1/content-signature", "the message signature does not verify with the sender's key"
        )


def membership_tag(
    cs: CipherSuite, membership_key: bytes, auth_content: AuthenticatedContent, context: GroupContext
) -> bytes:
    """``MAC(membership_key, AuthenticatedContentTBM)`` (§6.2)."""
    return cs.mac(membership_key, auth_content.tbm(context))


def protect_public(
    cs: CipherSuite, auth_content: AuthenticatedContent, membership_key: bytes | None, context: GroupContext
) -> PublicMessage:
    """Frame signed content as a PublicMessage, with a membership tag for member senders (§6.2)."""
    if auth_content.wire_format != WireFormat.mls_public_message:
        raise ValueError("content was signed for another wire format")
    tag = None
    if auth_content.content.sender.sender_type == SenderType.member:
        assert membership_key is not None
        tag = membership_tag(cs, membership_key, auth_content, context)
    return PublicMessage(auth_content.content, auth_content.auth, tag)


def public_to_authenticated(msg: PublicMessage) -> AuthenticatedContent:
    return AuthenticatedContent(WireFormat.mls_public_message, msg.content, msg.auth)


def verify_membership_tag(
    cs: CipherSuite, msg: PublicMessage, membership_key: bytes, context: GroupContext
) -> None:
    """A member's PublicMessage carries a valid membership tag (§6.2)."""
    if msg.content.sender.sender_type != SenderType.member:
        return
    want = membership_tag(cs, membership_key, public_to_authenticated(msg), context)
    if msg.membership_tag is None or not _equal(msg.membership_tag, want):
        raise CryptoError("6.2/membership-tag", "the membership tag is not valid")


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def ratchet_type_for(content_type: int) -> RatchetType:
    """Application messages use the application ratchet; proposals and commits the handshake one (§9)."""
    return RatchetType.application if content_type == ContentType.application else RatchetType.handshake


def _apply_reuse_guard(nonce: bytes, reuse_guard: bytes) -> bytes:
    """XOR the 4-byte reuse guard into the first bytes of the nonce (§6.3.1)."""
    return bytes(a ^ b for a, b in zip(nonce[:4], reuse_guard)) + nonce[4:]


def _content_body(content: FramedContent) -> dict[str, Any]:
    if content.content_type == ContentType.application:
        return {"application_data": content.application_data}
    if content.content_type == ContentType.proposal:
        return {"proposal": content.proposal}
    return {"commit": content.commit}


def encrypt_private(
    cs: CipherSuite,
    auth_content: AuthenticatedContent,
    key: RatchetKey,
    sender_data_secret: bytes,
    *,
    padding: int = 0,
    reuse_guard: bytes | None = None,
) -> PrivateMessage:
    """Encrypt signed content (wire format mls_private_message) under one ratchet key (§6.3)."""
    content = auth_content.content
    if auth_content.wire_format != WireFormat.mls_private_message:
        raise ValueError("content was signed for another wire format")
    if content.sender.sender_type != SenderType.member or content.sender.leaf_index is None:
        raise ValueError("only members send PrivateMessages (§6.3)")
    guard = reuse_guard if reuse_guard is not None else os.urandom(4)
    plaintext = PrivateMessageContent(
        content_type=content.content_type,
        auth=auth_content.auth,
        length_of_padding=padding,
        **_content_body(content),
    ).to_bytes()
    aad = PrivateContentAAD(content.group_id, content.epoch, content.content_type, content.authenticated_data)
    ciphertext = cs.aead_seal(key.key, _apply_reuse_guard(key.nonce, guard), aad.to_bytes(), plaintext)
    sender_data = SenderData(content.sender.leaf_index, key.generation, guard)
    sd_aad = SenderDataAAD(content.group_id, content.epoch, content.content_type)
    sd = sender_data_key_nonce(cs, sender_data_secret, ciphertext)
    encrypted_sender_data = cs.aead_seal(sd.key, sd.nonce, sd_aad.to_bytes(), sender_data.to_bytes())
    return PrivateMessage(
        content.group_id,
        content.epoch,
        content.content_type,
        content.authenticated_data,
        encrypted_sender_data,
        ciphertext,
    )


def decrypt_sender_data(cs: CipherSuite, msg: PrivateMessage, sender_data_secret: bytes) -> SenderData:
    """Decrypt and decode the SenderData of a PrivateMessage (§6.3.2)."""
    sd = sender_data_key_nonce(cs, sender_data_secret, msg.ciphertext)
    aad = SenderDataAAD(msg.group_id, msg.epoch, msg.content_type).to_bytes()
    try:
        plain = cs.aead_open(sd.key, sd.nonce, aad, msg.encrypted_sender_data)
    except CryptoError:
        raise CryptoError("6.3.2/sender-data-aead", "sender data does not decrypt") from None
    return SenderData.from_bytes(plain)


def decrypt_private(
    cs: CipherSuite, msg: PrivateMessage, sender_data_secret: bytes, key_for: KeyLookup
) -> tuple[AuthenticatedContent, SenderData]:
    """Decrypt a PrivateMessage to its AuthenticatedContent (signature not yet verified, §6.3)."""
    sender_data = decrypt_sender_data(cs, msg, sender_data_secret)
    key = key_for(sender_data.leaf_index, ratchet_type_for(msg.content_type), sender_data.generation)
    aad = PrivateContentAAD(msg.group_id, msg.epoch, msg.content_type, msg.authenticated_data).to_bytes()
    try:
        plaintext = cs.aead_open(
            key.key, _apply_reuse_guard(key.nonce, sender_data.reuse_guard), aad, msg.ciphertext
        )
    except CryptoError:
        raise CryptoError("6.3.1/content-aead", "message content does not decrypt") from None
    try:
        pmc = PrivateMessageContent.from_bytes(plaintext, msg.content_type)
    except DecodeError:
        raise
    except ValueError as e:
        raise ValidationError(
            "6.3.1/private-message-content", f"invalid PrivateMessageContent: {e}"
        ) from None
    content = FramedContent(
        group_id=msg.group_id,
        epoch=msg.epoch,
        sender=Sender.member(sender_data.leaf_index),
        authenticated_data=msg.authenticated_data,
        content_type=msg.content_type,
        application_data=pmc.application_data,
        proposal=pmc.proposal,
        commit=pmc.commit,
    )
    return AuthenticatedContent(WireFormat.mls_private_message, content, pmc.auth), sender_data
