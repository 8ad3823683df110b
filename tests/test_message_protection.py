"""Message protection (RFC 9420 §6.1-§6.3, §9.2) on the working group's ``message-protection`` vectors:
tampering is only ever a CryptoError or DecodeError, wrong keys name their rule, peeking at a ratchet key
does not consume it, padding round-trips, and the out-of-order window is exactly the configured one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mls.crypto import CipherSuite, cipher_suite
from mls.crypto import backend as crypto_backend
from mls.errors import CryptoError, DecodeError, ValidationError
from mls.schedule.secret_tree import RatchetConfig, RatchetKey, RatchetType, SecretTree, sender_data_key_nonce
from mls.wire.commit import Commit
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    PublicMessage,
    Sender,
    SenderData,
    SenderDataAAD,
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

from .vectors import load

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CASES = load("message-protection")
KINDS = ["application", "proposal", "commit"]
SENDER = 1  # the vectors' sender is leaf 1 of a two-member group
N_LEAVES = 2


@dataclass
class Case:
    raw: dict[str, Any]
    cs: CipherSuite
    ctx: GroupContext

    def h(self, key: str) -> bytes:
        return bytes.fromhex(self.raw[key])

    @property
    def sender_data_secret(self) -> bytes:
        return self.h("sender_data_secret")

    def secret_tree(self, config: RatchetConfig | None = None) -> SecretTree:
        return SecretTree(self.cs, self.h("encryption_secret"), N_LEAVES, config)

    def private(self, kind: str) -> PrivateMessage:
        msg = MLSMessage.from_bytes(self.h(f"{kind}_priv")).body
        assert isinstance(msg, PrivateMessage)
        return msg

    def public(self, kind: str) -> PublicMessage:
        msg = MLSMessage.from_bytes(self.h(f"{kind}_pub")).body
        assert isinstance(msg, PublicMessage)
        return msg

    def content(self, kind: str, application_data: bytes | None = None) -> FramedContent:
        raw = self.h(kind)
        body: dict[str, Any]
        if kind == "proposal":
            body = {"content_type": ContentType.proposal, "proposal": Proposal.from_bytes(raw)}
        elif kind == "commit":
            body = {"content_type": ContentType.commit, "commit": Commit.from_bytes(raw)}
        else:
            body = {"content_type": ContentType.application, "application_data": application_data or raw}
        return FramedContent(
            group_id=self.h("group_id"),
            epoch=self.raw["epoch"],
            sender=Sender.member(SENDER),
            authenticated_data=b"",
            **body,
        )

    def signed(
        self, content: FramedContent, wire_format: int = WireFormat.mls_private_message
    ) -> AuthenticatedContent:
        signer = self.cs.signer_from_private_bytes(self.h("signature_priv"))
        sig = sign_framed_content(self.cs, signer, wire_format, content, self.ctx)
        tag = bytes(self.cs.n_h) if content.content_type == ContentType.commit else None
        return AuthenticatedContent(wire_format, content, FramedContentAuthData(sig, tag))


def case(index: int) -> Case:
    raw = CASES[index]
    cs = cipher_suite(raw["cipher_suite"])
    ctx = GroupContext(
        1,
        cs.suite_id,
        bytes.fromhex(raw["group_id"]),
        raw["epoch"],
        bytes.fromhex(raw["tree_hash"]),
        bytes.fromhex(raw["confirmed_transcript_hash"]),
        (),
    )
    return Case(raw, cs, ctx)


def flip(data: bytes, at: int, bit: int = 0) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]


@contextlib.contextmanager
def using_backend(name: str) -> Iterator[None]:
    """Run under the pure-Python backend or the one the test session installed (native when it is built)."""
    previous = crypto_backend.get_backend()
    if name == "python":
        crypto_backend.set_backend(crypto_backend.PythonBackend())
    try:
        yield
    finally:
        crypto_backend.set_backend(previous)


def test_the_vector_messages_open() -> None:
    """The untampered baseline of every test below."""
    for index in range(len(CASES)):
        c = case(index)
        for kind in KINDS:
            auth, sd = decrypt_private(c.cs, c.private(kind), c.sender_data_secret, c.secret_tree().key_nonce)
            assert auth.content == c.content(kind) and sd.leaf_index == SENDER
            verify_framed_content(c.cs, c.h("signature_pub"), auth, c.ctx)
            if kind != "application":
                msg = c.public(kind)
                verify_membership_tag(c.cs, msg, c.h("membership_key"), c.ctx)
                verify_framed_content(c.cs, c.h("signature_pub"), public_to_authenticated(msg), c.ctx)


# ---- tampering a PrivateMessage (§6.3) ---------------------------------------------------------------


def _open(c: Case, data: bytes) -> None:
    msg = MLSMessage.from_bytes(data).body
    if not isinstance(msg, PrivateMessage):
        raise DecodeError("test", 0, "the flip changed the wire format")
    decrypt_private(c.cs, msg, c.sender_data_secret, c.secret_tree().key_nonce)


@settings(SETTINGS, max_examples=250)
@given(
    index=st.sampled_from(range(len(CASES))),
    kind=st.sampled_from(KINDS),
    where=st.sampled_from(["ciphertext", "encrypted_sender_data", "anywhere"]),
    at=st.integers(0, 10**5),
    bit=st.integers(0, 7),
    backend=st.sampled_from(["default", "python"]),
)
def test_a_bit_flip_in_a_private_message_is_a_crypto_or_decode_error(
    index: int, kind: str, where: str, at: int, bit: int, backend: str
) -> None:
    c = case(index)
    msg = c.private(kind)
    if where == "anywhere":
        data = flip(MLSMessage.of(msg).to_bytes(), at, bit)
    else:
        fields = {"ciphertext": msg.ciphertext, "encrypted_sender_data": msg.encrypted_sender_data}
        fields[where] = flip(fields[where], at, bit)
        data = MLSMessage.of(
            PrivateMessage(msg.group_id, msg.epoch, msg.content_type, msg.authenticated_data, **fields)
        ).to_bytes()
    with using_backend(backend):
        try:
            _open(c, data)
        except (CryptoError, DecodeError):
            pass
        except Exception as e:  # anything else (ValidationError included) is a bug
            raise AssertionError(f"{type(e).__name__}: {e}") from e
        else:
            raise AssertionError("a tampered PrivateMessage was accepted")


@settings(SETTINGS, max_examples=60)
@given(
    index=st.sampled_from(range(len(CASES))),
    kind=st.sampled_from(KINDS),
    cut=st.integers(0, 10**4),
    backend=st.sampled_from(["default", "python"]),
)
def test_a_truncated_ciphertext_or_sender_data_is_a_crypto_or_decode_error(
    index: int, kind: str, cut: int, backend: str
) -> None:
    c = case(index)
    msg = c.private(kind)
    for field in ("ciphertext", "encrypted_sender_data"):
        fields = {"ciphertext": msg.ciphertext, "encrypted_sender_data": msg.encrypted_sender_data}
        fields[field] = fields[field][: cut % len(fields[field])]
        bad = PrivateMessage(msg.group_id, msg.epoch, msg.content_type, msg.authenticated_data, **fields)
        with using_backend(backend), pytest.raises((CryptoError, DecodeError)):
            decrypt_private(c.cs, bad, c.sender_data_secret, c.secret_tree().key_nonce)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_wrong_sender_data_secret_or_epoch_secret_is_a_crypto_error(index: int) -> None:
    c = case(index)
    msg = c.private("application")
    with pytest.raises(CryptoError):
        decrypt_private(c.cs, msg, flip(c.sender_data_secret, 0), c.secret_tree().key_nonce)
    other = SecretTree(c.cs, flip(c.h("encryption_secret"), 3), N_LEAVES)
    with pytest.raises(CryptoError):
        decrypt_private(c.cs, msg, c.sender_data_secret, other.key_nonce)


def test_non_zero_padding_is_a_decode_error() -> None:
    """§6.3.1: padding must be all zero bytes; the check runs on the decrypted plaintext."""
    for index in range(len(CASES)):
        c = case(index)
        auth = c.signed(c.content("application"))
        key = c.secret_tree().next_key_nonce(SENDER, RatchetType.application)
        for padding in (b"\x01", b"\x00\x00\x80", b"\x00" * 40 + b"\x01"):
            msg = _encrypt_raw(c, auth, key, padding)
            decrypt_private(
                c.cs,
                _encrypt_raw(c, auth, key, bytes(len(padding))),
                c.sender_data_secret,
                c.secret_tree().key_nonce,
            )
            with pytest.raises(DecodeError):
                decrypt_private(c.cs, msg, c.sender_data_secret, c.secret_tree().key_nonce)


def _encrypt_raw(c: Case, auth: AuthenticatedContent, key: RatchetKey, padding: bytes) -> PrivateMessage:
    """encrypt_private by hand, with arbitrary padding bytes (§6.3.1, §6.3.2)."""
    content = auth.content
    plain = (
        PrivateMessageContent(
            content_type=content.content_type, auth=auth.auth, application_data=content.application_data
        ).to_bytes()
        + padding
    )
    aad = PrivateContentAAD(content.group_id, content.epoch, content.content_type, content.authenticated_data)
    ct = c.cs.aead_seal(key.key, key.nonce, aad.to_bytes(), plain)  # reuse guard 0000: nonce unchanged
    sd = sender_data_key_nonce(c.cs, c.sender_data_secret, ct)
    sd_aad = SenderDataAAD(content.group_id, content.epoch, content.content_type).to_bytes()
    esd = c.cs.aead_seal(sd.key, sd.nonce, sd_aad, SenderData(SENDER, key.generation, bytes(4)).to_bytes())
    return PrivateMessage(
        content.group_id, content.epoch, content.content_type, content.authenticated_data, esd, ct
    )


# ---- membership tag (§6.2) and signature (§6.1) -----------------------------------------------------------


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("kind", ["proposal", "commit"])
def test_a_wrong_membership_key_or_tag_is_rule_6_2(index: int, kind: str) -> None:
    c = case(index)
    msg = c.public(kind)
    key = c.h("membership_key")
    verify_membership_tag(c.cs, msg, key, c.ctx)
    assert msg.membership_tag is not None
    attempts = [
        (msg, flip(key, index)),
        (msg, bytes(len(key))),
        (PublicMessage(msg.content, msg.auth, flip(msg.membership_tag, 5)), key),
        (PublicMessage(msg.content, msg.auth, msg.membership_tag[:-1]), key),
        (PublicMessage(msg.content, msg.auth, b""), key),
        (PublicMessage(_with(msg.content, authenticated_data=b"x"), msg.auth, msg.membership_tag), key),
        (PublicMessage(_with(msg.content, epoch=msg.content.epoch + 1), msg.auth, msg.membership_tag), key),
        (
            PublicMessage(
                msg.content,
                FramedContentAuthData(flip(msg.auth.signature, 2), msg.auth.confirmation_tag),
                msg.membership_tag,
            ),
            key,
        ),
    ]
    for bad, k in attempts:
        with pytest.raises(CryptoError) as e:
            verify_membership_tag(c.cs, bad, k, c.ctx)
        assert e.value.rule == "6.2/membership-tag"
    other_ctx = dataclasses.replace(c.ctx, tree_hash=flip(c.ctx.tree_hash, 0))
    with pytest.raises(CryptoError) as e:
        verify_membership_tag(c.cs, msg, key, other_ctx)
    assert e.value.rule == "6.2/membership-tag"


def _with(content: FramedContent, **changes: Any) -> FramedContent:
    fields = {
        f: getattr(content, f)
        for f in (
            "group_id",
            "epoch",
            "sender",
            "authenticated_data",
            "content_type",
            "application_data",
            "proposal",
            "commit",
        )
    }
    return FramedContent(**{**fields, **changes})


@pytest.mark.parametrize("index", range(len(CASES)))
def test_a_wrong_signature_key_signature_or_context_is_rule_6_1(index: int) -> None:
    c = case(index)
    right = c.h("signature_pub")
    stranger = c.cs.generate_signer().public_key
    contents: list[AuthenticatedContent] = [
        public_to_authenticated(c.public(k)) for k in ("proposal", "commit")
    ]
    for kind in KINDS:
        auth, _ = decrypt_private(c.cs, c.private(kind), c.sender_data_secret, c.secret_tree().key_nonce)
        contents.append(auth)
    other_ctx = dataclasses.replace(c.ctx, epoch=c.ctx.epoch + 1)
    for auth in contents:
        verify_framed_content(c.cs, right, auth, c.ctx)
        bad_sig = AuthenticatedContent(
            auth.wire_format,
            auth.content,
            FramedContentAuthData(flip(auth.auth.signature, 7, 3), auth.auth.confirmation_tag),
        )
        other_format = AuthenticatedContent(
            WireFormat.mls_public_message + WireFormat.mls_private_message - auth.wire_format,
            auth.content,
            auth.auth,
        )
        for key, a, ctx in (
            (stranger, auth, c.ctx),
            (flip(right, 9), auth, c.ctx),
            (b"", auth, c.ctx),
            (right, bad_sig, c.ctx),
            (right, other_format, c.ctx),  # the wire format is signed
            (right, auth, other_ctx),  # and so is the GroupContext
        ):
            with pytest.raises(CryptoError) as e:
                verify_framed_content(c.cs, key, a, ctx)
            assert e.value.rule == "6.1/content-signature"


@pytest.mark.parametrize("index", range(len(CASES)))
def test_public_messages_we_protect_verify_and_tamper_is_caught(index: int) -> None:
    c = case(index)
    key = c.h("membership_key")
    for kind in ("proposal", "commit"):
        auth = c.signed(c.content(kind), WireFormat.mls_public_message)
        msg = protect_public(c.cs, auth, key, c.ctx)
        verify_membership_tag(c.cs, msg, key, c.ctx)
        verify_framed_content(c.cs, c.h("signature_pub"), public_to_authenticated(msg), c.ctx)
        assert msg == c.public(kind).__class__.from_bytes(msg.to_bytes())
        with pytest.raises(CryptoError):
            verify_membership_tag(c.cs, msg, flip(key, 1), c.ctx)


# ---- peeking does not consume, taking does (§9.2) --------------------------------------------------------


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("kind", KINDS)
def test_peek_does_not_consume_the_key_but_key_nonce_does(index: int, kind: str) -> None:
    c = case(index)
    msg = c.private(kind)
    tree = c.secret_tree()
    first, _ = decrypt_private(c.cs, msg, c.sender_data_secret, tree.peek_key_nonce)
    again, _ = decrypt_private(c.cs, msg, c.sender_data_secret, tree.peek_key_nonce)
    assert first == again == decrypt_private(c.cs, msg, c.sender_data_secret, tree.key_nonce)[0]
    for lookup in (tree.key_nonce, tree.peek_key_nonce):  # a replay, taken or peeked
        with pytest.raises(ValidationError) as e:
            decrypt_private(c.cs, msg, c.sender_data_secret, lookup)
        assert e.value.rule == "9.2/generation-consumed" and not isinstance(e.value, CryptoError)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_a_message_that_fails_to_decrypt_after_a_peek_leaves_the_key_usable(index: int) -> None:
    c = case(index)
    msg = c.private("application")
    # Flip a byte past the sender-data sample: the sender data still opens, the content does not.
    bad = PrivateMessage(
        msg.group_id,
        msg.epoch,
        msg.content_type,
        msg.authenticated_data,
        msg.encrypted_sender_data,
        flip(msg.ciphertext, c.cs.n_h + 1),
    )
    tree = c.secret_tree()
    with pytest.raises(CryptoError) as failed:
        decrypt_private(c.cs, bad, c.sender_data_secret, tree.peek_key_nonce)
    assert failed.value.rule == "6.3.1/content-aead"
    decrypt_private(c.cs, msg, c.sender_data_secret, tree.key_nonce)  # still there
    # key_nonce consumes on lookup, before the AEAD check: the caller must peek first (module docstring).
    tree = c.secret_tree()
    with pytest.raises(CryptoError):
        decrypt_private(c.cs, bad, c.sender_data_secret, tree.key_nonce)
    with pytest.raises(ValidationError) as e:
        decrypt_private(c.cs, msg, c.sender_data_secret, tree.key_nonce)
    assert e.value.rule == "9.2/generation-consumed"


# ---- padding (§6.3.1) -------------------------------------------------------------------------------------


@SETTINGS
@given(index=st.sampled_from(range(len(CASES))), kind=st.sampled_from(KINDS), padding=st.integers(0, 300))
def test_any_padding_round_trips(index: int, kind: str, padding: int) -> None:
    c = case(index)
    auth = c.signed(c.content(kind))
    rt = ratchet_type_for(auth.content.content_type)
    sender = c.secret_tree()
    key = sender.next_key_nonce(SENDER, rt)
    plain = encrypt_private(c.cs, auth, key, c.sender_data_secret, padding=0, reuse_guard=b"\x01\x02\x03\x04")
    padded = encrypt_private(c.cs, auth, key, c.sender_data_secret, padding=padding)
    assert len(padded.ciphertext) == len(plain.ciphertext) + padding
    wire = MLSMessage.from_bytes(MLSMessage.of(padded).to_bytes()).body
    assert isinstance(wire, PrivateMessage)
    got, sd = decrypt_private(c.cs, wire, c.sender_data_secret, c.secret_tree().key_nonce)
    assert got == auth
    assert (sd.leaf_index, sd.generation) == (SENDER, 0)
    verify_framed_content(c.cs, c.h("signature_pub"), got, c.ctx)
    got_plain, sd_plain = decrypt_private(c.cs, plain, c.sender_data_secret, c.secret_tree().key_nonce)
    assert got_plain == auth and sd_plain.reuse_guard == b"\x01\x02\x03\x04"


@pytest.mark.parametrize("padding", [0, 1, 255, 256, 300])
def test_padding_edges_for_every_suite(padding: int) -> None:
    for index in range(len(CASES)):
        c = case(index)
        auth = c.signed(c.content("application", b"x" * padding))
        key = c.secret_tree().next_key_nonce(SENDER, RatchetType.application)
        msg = encrypt_private(c.cs, auth, key, c.sender_data_secret, padding=padding)
        assert decrypt_private(c.cs, msg, c.sender_data_secret, c.secret_tree().key_nonce)[0] == auth


# ---- out-of-order delivery within the configured window (§9.2) -------------------------------------------


class WindowModel:
    """Which generations a receiver with ``RatchetConfig(tolerance, max_forward)`` must accept."""

    def __init__(self, tolerance: int, max_forward: int) -> None:
        self.tolerance, self.max_forward = tolerance, max_forward
        self.used: set[int] = set()
        self.top: int | None = None  # the highest generation received so far

    def receive(self, g: int) -> str | None:
        """``None`` when ``g`` must decrypt, else the rule it must be rejected with."""
        nxt = 0 if self.top is None else self.top + 1
        if g in self.used:
            return "9.2/generation-consumed"
        if g >= nxt:
            if g - nxt > self.max_forward:
                return "15.3/forward-distance"
            self.top = g
        elif self.top is not None and g < self.top - self.tolerance:
            return "9.2/generation-consumed"
        self.used.add(g)
        return None


@settings(SETTINGS, max_examples=60)
@given(
    index=st.sampled_from(range(len(CASES))),
    kind=st.sampled_from(["application", "proposal"]),
    tolerance=st.integers(0, 5),
    max_forward=st.integers(0, 8),
    order=st.lists(st.integers(0, 11), min_size=1, max_size=16),
)
def test_out_of_order_generations_inside_the_window_decrypt_and_outside_are_rejected(
    index: int, kind: str, tolerance: int, max_forward: int, order: list[int]
) -> None:
    c = case(index)
    sender = c.secret_tree()
    messages: list[PrivateMessage] = []
    for g in range(12):
        content = c.content(kind, f"generation {g}".encode())
        if kind == "proposal":
            content = _with(content, authenticated_data=f"generation {g}".encode())
        key = sender.next_key_nonce(SENDER, ratchet_type_for(content.content_type))
        assert key.generation == g
        messages.append(encrypt_private(c.cs, c.signed(content), key, c.sender_data_secret, padding=g))
    receiver = c.secret_tree(
        RatchetConfig(out_of_order_tolerance=tolerance, max_forward_distance=max_forward)
    )
    model = WindowModel(tolerance, max_forward)
    for g in order:
        want = model.receive(g)
        if want is None:
            auth, sd = decrypt_private(c.cs, messages[g], c.sender_data_secret, receiver.key_nonce)
            assert sd.generation == g
            assert f"generation {g}".encode() in (
                auth.content.application_data or auth.content.authenticated_data
            )
        else:
            with pytest.raises(ValidationError) as e:
                decrypt_private(c.cs, messages[g], c.sender_data_secret, receiver.key_nonce)
            assert e.value.rule == want, f"generation {g} after {sorted(model.used)}"
            assert not isinstance(e.value, CryptoError)


def test_the_window_by_hand() -> None:
    c = case(0)
    sender = c.secret_tree()
    msgs = [
        encrypt_private(
            c.cs,
            c.signed(c.content("application", bytes([g]))),
            sender.next_key_nonce(SENDER, RatchetType.application),
            c.sender_data_secret,
        )
        for g in range(10)
    ]
    receiver = c.secret_tree(RatchetConfig(out_of_order_tolerance=3, max_forward_distance=5))

    def take(g: int) -> None:
        decrypt_private(c.cs, msgs[g], c.sender_data_secret, receiver.key_nonce)

    def rejected(g: int) -> str:
        with pytest.raises(ValidationError) as e:
            take(g)
        return e.value.rule

    assert rejected(6) == "15.3/forward-distance"  # six ahead of generation 0
    take(5)
    take(2)  # 5 - 3: the oldest generation still kept
    assert rejected(1) == "9.2/generation-consumed"
    take(9)  # generation 5 → 9: now 6, 7, 8 are kept, 3 and 4 are not
    assert rejected(3) == "9.2/generation-consumed" and rejected(4) == "9.2/generation-consumed"
    take(7)
    take(6)
    take(8)
    assert rejected(8) == "9.2/generation-consumed"


def test_ratchet_key_reprs_hold_no_key_or_nonce() -> None:
    for index in range(len(CASES)):
        c = case(index)
        key = c.secret_tree().next_key_nonce(SENDER, RatchetType.application)
        text = repr(key) + str(key)
        for secret in (key.key, key.nonce):
            assert secret.hex() not in text and repr(secret) not in text and secret.hex()[:12] not in text
