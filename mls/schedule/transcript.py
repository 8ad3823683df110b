"""Transcript hashes (RFC 9420 §8.2).

Each Commit updates two running hashes from the AuthenticatedContent that carries it::

    confirmed_transcript_hash_[n] = Hash(interim_transcript_hash_[n-1] || ConfirmedTranscriptHashInput_[n])
    interim_transcript_hash_[n]   = Hash(confirmed_transcript_hash_[n] || InterimTranscriptHashInput_[n])

with ``ConfirmedTranscriptHashInput = wire_format || FramedContent || signature<V>`` (the
AuthenticatedContent without its confirmation tag) and ``InterimTranscriptHashInput = confirmation_tag<V>``.
Both hashes are empty before the first Commit. A committer computes the confirmed hash first (the
confirmation tag of the new epoch covers it), then the interim hash once the tag is known.
"""

from __future__ import annotations

from dataclasses import dataclass

from mls.crypto.cipher_suite import CipherSuite
from mls.errors import ValidationError
from mls.wire.codec import Writer, opaque_bytes
from mls.wire.framing import AuthenticatedContent, ContentType, FramedContent


def confirmed_transcript_hash_input(wire_format: int, content: FramedContent, signature: bytes) -> bytes:
    """The encoded ``ConfirmedTranscriptHashInput`` of a Commit's framed content and signature."""
    if content.content_type != ContentType.commit:
        raise ValidationError(
            "8.2/commit-content-type", "transcript hashes are computed over Commit messages only"
        )
    w = Writer()
    w.u16(wire_format)
    content.encode(w)
    w.opaque(signature)
    return w.getvalue()


def interim_transcript_hash_input(confirmation_tag: bytes) -> bytes:
    """The encoded ``InterimTranscriptHashInput``: the confirmation tag as ``opaque<V>``."""
    return opaque_bytes(confirmation_tag)


def confirmed_transcript_hash(
    cs: CipherSuite,
    interim_transcript_hash: bytes,
    wire_format: int,
    content: FramedContent,
    signature: bytes,
) -> bytes:
    """The new confirmed transcript hash from the previous interim hash and a Commit."""
    return cs.hash(interim_transcript_hash + confirmed_transcript_hash_input(wire_format, content, signature))


def interim_transcript_hash(
    cs: CipherSuite, confirmed_transcript_hash: bytes, confirmation_tag: bytes
) -> bytes:
    """The interim transcript hash from a confirmed hash and the Commit's (or GroupInfo's) tag."""
    return cs.hash(confirmed_transcript_hash + interim_transcript_hash_input(confirmation_tag))


@dataclass(frozen=True)
class TranscriptHashes:
    """The pair of transcript hashes of one epoch (both empty in epoch 0)."""

    confirmed: bytes = b""
    interim: bytes = b""

    def next_confirmed(self, cs: CipherSuite, commit: AuthenticatedContent) -> bytes:
        """The confirmed transcript hash after ``commit`` (its confirmation tag is not needed)."""
        return confirmed_transcript_hash(
            cs, self.interim, commit.wire_format, commit.content, commit.auth.signature
        )

    def after_commit(self, cs: CipherSuite, commit: AuthenticatedContent) -> TranscriptHashes:
        """Both hashes after ``commit``, which must carry its confirmation tag."""
        tag = commit.auth.confirmation_tag
        if tag is None:
            raise ValidationError(
                "6.1/commit-confirmation-tag", "a Commit's AuthenticatedContent carries a confirmation_tag"
            )
        confirmed = self.next_confirmed(cs, commit)
        return TranscriptHashes(confirmed, interim_transcript_hash(cs, confirmed, tag))


__all__ = [
    "TranscriptHashes",
    "confirmed_transcript_hash",
    "confirmed_transcript_hash_input",
    "interim_transcript_hash",
    "interim_transcript_hash_input",
]
