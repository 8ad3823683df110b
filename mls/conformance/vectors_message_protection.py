"""``message-protection`` vectors: PublicMessage and PrivateMessage protection of a proposal, a commit and
application data (§6.1–§6.3), in both directions."""

from __future__ import annotations

import os
from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import CipherSuite, cipher_suite
from mls.schedule.secret_tree import SecretTree
from mls.wire.commit import Commit
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    WireFormat,
)
from mls.wire.group_context import GroupContext
from mls.wire.message_protection import (
    decrypt_private,
    encrypt_private,
    protect_public,
    public_to_authenticated,
    ratchet_type_for,
    sign_framed_content,
    verify_framed_content,
    verify_membership_tag,
)
from mls.wire.proposals import Proposal

_N_LEAVES = 2  # the vectors' sender is leaf 1 of a two-member group


def _body(kind: str, raw: bytes) -> dict[str, Any]:
    if kind == "proposal":
        return {"content_type": ContentType.proposal, "proposal": Proposal.from_bytes(raw)}
    if kind == "commit":
        return {"content_type": ContentType.commit, "commit": Commit.from_bytes(raw)}
    return {"content_type": ContentType.application, "application_data": raw}


def _open_public(case: dict[str, Any], cs: CipherSuite, ctx: GroupContext, data: bytes) -> FramedContent:
    msg = MLSMessage.from_bytes(data).body
    assert isinstance(msg, PublicMessage)
    verify_membership_tag(cs, msg, h(case["membership_key"]), ctx)
    verify_framed_content(cs, h(case["signature_pub"]), public_to_authenticated(msg), ctx)
    return msg.content


def _open_private(case: dict[str, Any], cs: CipherSuite, ctx: GroupContext, data: bytes) -> FramedContent:
    msg = MLSMessage.from_bytes(data).body
    assert isinstance(msg, PrivateMessage)
    tree = SecretTree(cs, h(case["encryption_secret"]), _N_LEAVES)
    auth, _ = decrypt_private(cs, msg, h(case["sender_data_secret"]), tree.key_nonce)
    verify_framed_content(cs, h(case["signature_pub"]), auth, ctx)
    return auth.content


def _protect(
    case: dict[str, Any], cs: CipherSuite, ctx: GroupContext, content: FramedContent, wire_format: int
) -> bytes:
    signer = cs.signer_from_private_bytes(h(case["signature_priv"]))
    signature = sign_framed_content(cs, signer, wire_format, content, ctx)
    tag = os.urandom(cs.n_h) if content.content_type == ContentType.commit else None
    auth = AuthenticatedContent(wire_format, content, FramedContentAuthData(signature, tag))
    if wire_format == WireFormat.mls_public_message:
        return MLSMessage.of(protect_public(cs, auth, h(case["membership_key"]), ctx)).to_bytes()
    tree = SecretTree(cs, h(case["encryption_secret"]), _N_LEAVES)
    key = tree.next_key_nonce(1, ratchet_type_for(content.content_type))
    return MLSMessage.of(encrypt_private(cs, auth, key, h(case["sender_data_secret"]), padding=7)).to_bytes()


@vector_kind(
    "message-protection",
    keys=[
        "cipher_suite",
        "group_id",
        "epoch",
        "tree_hash",
        "confirmed_transcript_hash",
        "signature_priv",
        "signature_pub",
        "encryption_secret",
        "sender_data_secret",
        "membership_key",
        "proposal",
        "proposal_priv",
        "proposal_pub",
        "commit",
        "commit_priv",
        "commit_pub",
        "application",
        "application_priv",
    ],
)
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    ctx = GroupContext(
        1,
        cs.suite_id,
        h(case["group_id"]),
        case["epoch"],
        h(case["tree_hash"]),
        h(case["confirmed_transcript_hash"]),
        (),
    )
    for kind in ("proposal", "commit", "application"):
        want = FramedContent(
            group_id=h(case["group_id"]),
            epoch=case["epoch"],
            sender=Sender.member(1),
            authenticated_data=b"",
            **_body(kind, h(case[kind])),
        )
        formats = [(WireFormat.mls_private_message, _open_private)]
        if kind != "application":
            formats.append((WireFormat.mls_public_message, _open_public))
        for wire_format, opener in formats:
            suffix = "pub" if wire_format == WireFormat.mls_public_message else "priv"
            got = opener(case, cs, ctx, h(case[f"{kind}_{suffix}"]))
            expect_equal(f"{kind}_{suffix} content", got, want)
            ours = _protect(case, cs, ctx, want, wire_format)
            expect_equal(f"{kind}_{suffix} round trip", opener(case, cs, ctx, ours), want)
