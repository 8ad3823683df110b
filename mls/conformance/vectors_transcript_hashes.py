"""``transcript-hashes`` vectors: the confirmed and interim transcript hashes after one Commit, and its
confirmation tag (RFC 9420 §8.2, §6.1)."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite
from mls.schedule.key_schedule import verify_confirmation_tag
from mls.schedule.transcript import TranscriptHashes
from mls.wire.framing import AuthenticatedContent


@vector_kind(
    "transcript-hashes",
    keys=[
        "cipher_suite",
        "confirmation_key",
        "authenticated_content",
        "interim_transcript_hash_before",
        "confirmed_transcript_hash_after",
        "interim_transcript_hash_after",
    ],
)
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    encoded = h(case["authenticated_content"])
    commit = AuthenticatedContent.from_bytes(encoded)
    expect_equal("authenticated_content re-encoding", commit.to_bytes(), encoded)

    before = TranscriptHashes(interim=h(case["interim_transcript_hash_before"]))
    after = before.after_commit(cs, commit)
    expect_equal(
        "confirmed_transcript_hash_after", after.confirmed, h(case["confirmed_transcript_hash_after"])
    )
    expect_equal("interim_transcript_hash_after", after.interim, h(case["interim_transcript_hash_after"]))

    tag = commit.auth.confirmation_tag
    if tag is None:
        raise AssertionError("the vector's AuthenticatedContent has no confirmation_tag")
    verify_confirmation_tag(cs, h(case["confirmation_key"]), h(case["confirmed_transcript_hash_after"]), tag)
