"""Key schedule (RFC 9420 §8), exporter (§8.5), PSK secret (§8.4), transcript hashes (§8.2): behaviour
beyond the vectors — consistency of the join paths, consumption, persistence, repr hygiene."""

from __future__ import annotations

import json

import pytest

from mls.crypto import cipher_suite
from mls.errors import CryptoError, StateError, ValidationError
from mls.schedule.key_schedule import (
    EPOCH_SECRET_LABELS,
    EpochSecrets,
    KeySchedule,
    derive_welcome_secret,
    external_init_receive,
    external_init_send,
    welcome_key_nonce,
)
from mls.schedule.psk import psk_secret
from mls.schedule.secret_tree import RatchetType, SecretTree
from mls.schedule.transcript import TranscriptHashes, interim_transcript_hash
from mls.wire.commit import Commit
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    Sender,
    WireFormat,
)
from mls.wire.proposals import PreSharedKeyID

CS = cipher_suite(1)
INIT = bytes([1]) * 32
COMMIT = bytes([2]) * 32
PSK = bytes([3]) * 32
CONTEXT = b"encoded group context"


def schedule(psk: bytes | None = PSK, commit: bytes | None = COMMIT, context: bytes = CONTEXT) -> KeySchedule:
    return KeySchedule.from_init_secret(CS, INIT, commit, psk, context)


def all_secrets(ks: KeySchedule) -> list[bytes]:
    values = [getattr(ks.secrets, n) for n in EPOCH_SECRET_LABELS]
    return [ks.joiner_secret, ks.welcome_secret, ks.epoch_secret, *values]


def test_schedule_follows_the_section_8_diagram() -> None:
    ks = schedule()
    joiner = CS.expand_with_label(CS.extract(INIT, COMMIT), "joiner", CONTEXT, CS.n_h)
    member = CS.extract(joiner, PSK)
    epoch = CS.expand_with_label(member, "epoch", CONTEXT, CS.n_h)
    assert ks.joiner_secret == joiner
    assert ks.welcome_secret == CS.derive_secret(member, "welcome")
    assert ks.epoch_secret == epoch
    assert ks.secrets.membership_key == CS.derive_secret(epoch, "membership")
    assert ks.secrets.init_secret == CS.derive_secret(epoch, "init")
    assert len(set(all_secrets(ks))) == len(all_secrets(ks))


def test_absent_commit_and_psk_secrets_are_zero_vectors() -> None:
    zero = bytes(CS.n_h)
    assert schedule(psk=None).secrets == schedule(psk=zero).secrets
    assert schedule(commit=None).secrets == schedule(commit=zero).secrets
    assert schedule(psk=None).secrets != schedule().secrets
    assert schedule(context=b"other").secrets != schedule().secrets


def test_joiner_path_matches_the_member_path() -> None:
    member = schedule()
    joiner = KeySchedule.from_joiner_secret(CS, member.joiner_secret, PSK, CONTEXT)
    assert joiner.secrets == member.secrets
    assert joiner.welcome_secret == derive_welcome_secret(CS, member.joiner_secret, PSK)
    kn = member.welcome_key_nonce()
    assert kn == welcome_key_nonce(CS, joiner.welcome_secret)
    assert kn.key == CS.expand_with_label(member.welcome_secret, "key", b"", CS.n_k)
    assert kn.nonce == CS.expand_with_label(member.welcome_secret, "nonce", b"", CS.n_n)


def test_exporter() -> None:
    s = schedule().secrets
    out = s.export("example label", b"context", 42)
    inner = CS.derive_secret(s.exporter_secret, "example label")
    assert out == CS.expand_with_label(inner, "exported", CS.hash(b"context"), 42)
    assert len(out) == 42
    assert s.export(b"example label", b"context", 42) == out
    assert s.export("other label", b"context", 42) != out
    assert s.export("example label", b"other", 42) != out
    assert s.export("example label", b"context", 16) != out[:16]  # the length is part of KDFLabel
    assert schedule(psk=None).secrets.export("example label", b"context", 42) != out


def test_confirmation_tag() -> None:
    s = schedule().secrets
    tag = s.confirmation_tag(b"confirmed hash")
    assert tag == CS.mac(s.confirmation_key, b"confirmed hash")
    s.verify_confirmation_tag(b"confirmed hash", tag)
    with pytest.raises(CryptoError):
        s.verify_confirmation_tag(b"confirmed hash", bytes([tag[0] ^ 1]) + tag[1:])
    with pytest.raises(CryptoError):
        s.verify_confirmation_tag(b"other hash", tag)


def test_external_init_round_trip() -> None:
    s = schedule().secrets
    assert s.external_pub == CS.derive_key_pair(s.external_secret).public_key
    kem_output, init_secret = external_init_send(CS, s.external_pub)
    assert len(init_secret) == CS.n_h
    assert external_init_receive(CS, s.external_key_pair(), kem_output) == init_secret
    other = schedule(psk=None).secrets.external_key_pair()
    assert external_init_receive(CS, other, kem_output) != init_secret


def test_secret_tree_consumes_the_encryption_secret() -> None:
    s = schedule().secrets
    assert s.encryption_secret is not None
    reference = SecretTree(CS, s.encryption_secret, 4)
    tree, rest = s.start_secret_tree(4)
    assert rest.encryption_secret is None
    assert rest.sender_data_secret == s.sender_data_secret
    assert tree.key_nonce(1, RatchetType.application, 2) == reference.key_nonce(1, RatchetType.application, 2)
    assert s.encryption_secret.hex() not in json.dumps(rest.to_state())
    with pytest.raises(StateError):
        rest.start_secret_tree(4)


@pytest.mark.parametrize("consumed", [False, True])
def test_epoch_secrets_state_round_trip(consumed: bool) -> None:
    s = schedule().secrets
    if consumed:
        s = s.start_secret_tree(2)[1]
    restored = EpochSecrets.from_state(json.loads(json.dumps(s.to_state())))
    assert restored == s
    assert restored.export("x", b"", 8) == s.export("x", b"", 8)


def test_malformed_epoch_state_is_a_state_error() -> None:
    state = schedule().secrets.to_state()
    broken = [
        {**state, "membership_key": None},
        {**state, "exporter_secret": "00"},
        {k: v for k, v in state.items() if k != "init_secret"},
        {**state, "confirmation_key": "not hex"},
    ]
    for b in broken:
        with pytest.raises(StateError):
            EpochSecrets.from_state(b)


def test_reprs_hold_no_secrets() -> None:
    ks = schedule()
    texts = [repr(ks), repr(ks.secrets), repr(ks.welcome_key_nonce()), str(ks.secrets)]
    secrets = [*all_secrets(ks), ks.welcome_key_nonce().key, ks.welcome_key_nonce().nonce]
    for text in texts:
        for s in secrets:
            assert s.hex() not in text and repr(s) not in text


# ---- PSK secret (§8.4) --------------------------------------------------------------------------


def test_psk_secret_chain() -> None:
    a = (PreSharedKeyID.external(b"a", bytes(32)), b"first psk")
    b = (PreSharedKeyID.external(b"b", bytes(32)), b"second psk")
    assert psk_secret(CS, []) == bytes(CS.n_h)
    one = psk_secret(CS, [a])
    assert one != bytes(CS.n_h)
    assert psk_secret(CS, [(a[0].to_bytes(), a[1])]) == one  # an encoded id gives the same result
    assert psk_secret(CS, [a, b]) != psk_secret(CS, [b, a])  # order and index matter
    assert psk_secret(CS, [a, b]) != one
    resumption = PreSharedKeyID.resumption(1, b"group", 3, bytes(32))
    assert psk_secret(CS, [(resumption, b"first psk")]) != one


# ---- transcript hashes (§8.2) -------------------------------------------------------------------


def _content(content_type: int) -> FramedContent:
    if content_type == ContentType.application:
        return FramedContent(
            group_id=b"g",
            epoch=1,
            sender=Sender.member(0),
            authenticated_data=b"",
            content_type=content_type,
            application_data=b"hi",
        )
    return FramedContent(
        group_id=b"g",
        epoch=1,
        sender=Sender.member(0),
        authenticated_data=b"",
        content_type=content_type,
        commit=Commit((), None),
    )


def test_transcript_hashes_chain() -> None:
    tag = bytes(32)
    ac = AuthenticatedContent(
        WireFormat.mls_public_message, _content(ContentType.commit), FramedContentAuthData(b"sig", tag)
    )
    before = TranscriptHashes(b"c0", b"i0")
    after = before.after_commit(CS, ac)
    encoded = ac.to_bytes()
    tail = bytes([len(tag)]) + tag
    assert encoded.endswith(tail)
    assert after.confirmed == CS.hash(b"i0" + encoded[: -len(tail)])
    assert after.interim == CS.hash(after.confirmed + tail)
    assert after.interim == interim_transcript_hash(CS, after.confirmed, tag)
    assert before.next_confirmed(CS, ac) == after.confirmed


def test_transcript_rejects_non_commits_and_missing_tags() -> None:
    app = AuthenticatedContent(
        WireFormat.mls_private_message, _content(ContentType.application), FramedContentAuthData(b"sig")
    )
    with pytest.raises(ValidationError):
        TranscriptHashes().after_commit(CS, app)
    untagged = AuthenticatedContent(
        WireFormat.mls_public_message, _content(ContentType.commit), FramedContentAuthData(b"sig")
    )
    with pytest.raises(ValidationError):
        TranscriptHashes().after_commit(CS, untagged)
