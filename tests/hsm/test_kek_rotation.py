"""KEK rotation in the token: envelope key records and wrapped private keys move to a new KEK.

Real SoftHSM (the session token of tests/hsm/conftest.py). Each test makes its own KEKs under fresh
labels and destroys them, so the shared token ends as it began.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, ObjectClass
from pkcs11.types import Session

from hsm import kek_ring
from hsm.audit import AuditEvent
from hsm.envelope import (
    VERSION,
    Envelope,
    WrapKeyMissing,
    create_wrap_key,
    destroy_aes_token_key,
    kek_id,
)
from hsm.errors import EnvelopeError, HsmError
from hsm.keystore import Pkcs11KeyStore
from hsm.token import Token, reread
from hsm.wrapped_keys import WrappedKeys
from hsm.wrapping import create_kek
from mls.crypto.cipher_suite import cipher_suite

P256_SUITE = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256


class DictBlobs:
    """``hsm.wrapped_keys.WrappedKeyPersistence`` over a dict: key reference -> (blob, KEK id)."""

    def __init__(self) -> None:
        self.rows: dict[bytes, tuple[bytes, bytes]] = {}

    def save(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None:
        self.rows[key_ref] = (blob, kek_id)

    def load(self, key_ref: bytes) -> bytes | None:
        row = self.rows.get(key_ref)
        return None if row is None else row[0]

    def delete(self, key_ref: bytes) -> None:
        self.rows.pop(key_ref, None)


_RECORD = 1 + 8 + 16 + 12 + 48


def _count(token: Token, label: str) -> int:
    def count(session: Session) -> int:
        with token.objects("search"):
            return len(
                list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))
            )

    return token.run(count, op="count")


@pytest.fixture()
def labels(token: Token) -> Iterator[tuple[str, str]]:
    """Two fresh wrap-key labels (old, new), both made; destroyed after the test."""
    tag = uuid.uuid4().hex[:8]
    old, new = f"test/wrap/{tag}/v1", f"test/wrap/{tag}/v2"
    create_wrap_key(token, old)
    create_wrap_key(token, new)
    yield old, new
    for label in (old, new):
        destroy_aes_token_key(token, label, op="test cleanup")


def test_a_kek_destroyed_by_another_between_search_and_destroy_is_gone_not_an_error(
    token: Token, labels: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's retire pass beside ``keys rotate-kek``: the first search finds a handle another
    process destroys before this one can (here: a handle that names nothing, C_DestroyObject answers
    ObjectHandleInvalid); the destroy searches again and destroys what is there."""
    old, _ = labels
    real = kek_ring.find_secret_keys
    calls: list[int] = []

    def first_stale(session: Session, label: str) -> list[int]:
        calls.append(1)
        return [0x7FFFFFF0] if len(calls) == 1 else real(session, label)

    monkeypatch.setattr(kek_ring, "find_secret_keys", first_stale)
    assert destroy_aes_token_key(token, old, op="test destroy") == 1
    assert len(calls) == 2 and _count(token, old) == 0


def test_rewrap_changes_the_key_record_alone(token: Token, labels: tuple[str, str]) -> None:
    old, new = labels
    env = Envelope(token, old)
    blobs = [env.seal(b"state %d" % i, b"aad") for i in range(5)]
    env.use_kek(new)
    assert env.label == new and all(env.needs_rewrap(b) for b in blobs)
    moved = [env.rewrap(b) for b in blobs]
    for before, after in zip(blobs, moved, strict=True):
        assert after[0] == VERSION and after[1:9] == kek_id(new)
        assert after[9:25] == before[9:25]  # the same data key ...
        assert after[_RECORD:] == before[_RECORD:]  # ... and the same nonce, ciphertext and tag
        assert env.kek_label_of(after) == new and not env.needs_rewrap(after)
    assert len({m[:_RECORD] for m in moved}) == 1  # one data key: re-wrapped once, remembered
    # Under the new KEK alone (a fresh envelope, the old KEK destroyed), every blob opens.
    destroy_aes_token_key(token, old, op="test destroy")
    assert _count(token, old) == 0
    fresh = Envelope(token, new)
    assert [fresh.open(m, b"aad") for m in moved] == [b"state %d" % i for i in range(5)]
    with pytest.raises(EnvelopeError):
        fresh.open(blobs[0], b"aad")  # names the destroyed KEK
    assert fresh.seal(b"x")[1:9] == kek_id(new)


@pytest.mark.parametrize("offset", [0, 1, 9, 25, 40, _RECORD - 1])
def test_tampering_with_a_rewrapped_record_fails_to_open(
    token: Token, labels: tuple[str, str], offset: int
) -> None:
    old, new = labels
    env = Envelope(token, old)
    env.know_keks([new])
    blob = env.seal(b"secret", b"aad")
    env.use_kek(new)
    moved = bytearray(env.rewrap(blob))
    moved[offset] ^= 0x01
    fresh = Envelope(token, new)  # nothing cached: the record goes to the token
    fresh.know_keks([old])
    with pytest.raises(EnvelopeError):
        fresh.open(bytes(moved), b"aad")
    with pytest.raises(EnvelopeError):
        env.open(bytes(moved), b"aad")  # nor does the envelope that re-wrapped it (cache by whole record)


def test_a_record_of_another_data_key_cannot_be_swapped_in(token: Token, labels: tuple[str, str]) -> None:
    old, new = labels
    env = Envelope(token, old, max_seals=1)
    one, two = env.seal(b"one"), env.seal(b"two")
    env.use_kek(new)
    swapped = env.rewrap(two)[:_RECORD] + one[_RECORD:]
    with pytest.raises(EnvelopeError):
        Envelope(token, new).open(swapped)


def test_a_version_2_blob_is_sealed_again_with_its_aad(token: Token, labels: tuple[str, str]) -> None:
    old, new = labels
    env = Envelope(token, old)
    v2 = _version_2_blob(env, old, b"legacy", b"aad")
    assert env.open(v2, b"aad") == b"legacy"
    env.use_kek(new)
    with pytest.raises(EnvelopeError, match="needs its AAD"):
        env.rewrap(v2)
    with pytest.raises(EnvelopeError):
        env.rewrap(v2, b"other aad")
    moved = env.rewrap(v2, b"aad")
    assert moved[0] == VERSION and moved[1:9] == kek_id(new)
    assert Envelope(token, new).open(moved, b"aad") == b"legacy"


def test_the_resolver_names_keks_sealed_by_another_process(token: Token, labels: tuple[str, str]) -> None:
    old, new = labels
    writer = Envelope(token, new)
    blob = writer.seal(b"from elsewhere")
    reader = Envelope(token, old)
    with pytest.raises(EnvelopeError, match="another wrap key"):
        reader.open(blob)
    reader.keks.resolver = lambda: [old, new]
    assert reader.open(blob) == b"from elsewhere"


def test_wrapped_keys_move_to_the_new_kek(token: Token) -> None:
    tag = uuid.uuid4().hex[:8]
    old, new = f"test/kek/{tag}/v1", f"test/kek/{tag}/v2"
    create_kek(token, old)
    create_kek(token, new)
    blobs = DictBlobs()
    events: list[AuditEvent] = []
    keys = WrappedKeys(token, blobs, kek_label=old, cache_size=2)
    keys.probe()
    store = Pkcs11KeyStore(token, wrapped=keys, mode="wrapped", audit_hook=events.append)
    cs = cipher_suite(P256_SUITE)
    try:
        signers = [store.new_signature_key(P256_SUITE) for _ in range(3)]
        assert all(blobs.rows[s.key_ref][1] == kek_id(old) for s in signers)
        keys.use_kek(new)
        for s in signers:
            blob, _ = blobs.rows[s.key_ref]
            moved = keys.rewrap_blob(s.key_ref, blob)
            assert moved != blob and keys.kek_label_of(moved) == new
            assert keys.rewrap_blob(s.key_ref, moved) == moved  # already current
            blobs.save(s.key_ref, moved, kek_id(new))
        destroy_aes_token_key(token, old, op="test destroy")
        assert _count(token, old) == 0
        keys.close()  # every session object gone: the next uses unwrap under the new KEK
        events.clear()
        misses = keys.misses
        for s in signers:
            assert cs.signature.verify(s.public_key, b"m", store.signer(s.key_ref).sign(b"m"))
        assert keys.misses - misses == 3
        unwraps = [(e.key_ref, e.custody, e.ok) for e in events if e.operation == "unwrap"]
        assert unwraps == [(s.key_ref, f"wrapped:{new}", True) for s in signers]
        new_key = store.new_signature_key(P256_SUITE)
        assert blobs.rows[new_key.key_ref][1] == kek_id(new)
        tampered = bytearray(blobs.rows[signers[0].key_ref][0])
        tampered[-1] ^= 1
        blobs.save(signers[0].key_ref, bytes(tampered), kek_id(new))
        keys.close()
        with pytest.raises(HsmError):
            store.signer(signers[0].key_ref).sign(b"m")
    finally:
        keys.close()
        destroy_aes_token_key(token, new, op="test cleanup")
        destroy_aes_token_key(token, old, op="test cleanup")


def _version_2_blob(env: Envelope, label: str, plaintext: bytes, aad: bytes) -> bytes:
    """A blob as the version 2 envelope sealed it (data AAD: the whole header, then ``aad``)."""
    secret = AESGCM.generate_key(256)
    head = bytes((2,)) + kek_id(label) + os.urandom(16)
    wrap_nonce = os.urandom(12)
    wrapped = env._wrap_op(
        label, "wrap", wrap_nonce, secret, b"mlsgw envelope data key v" + head, encrypt=True
    )
    header = head + wrap_nonce + wrapped + os.urandom(12)
    return header + AESGCM(secret).encrypt(header[-12:], plaintext, header + aad)


def test_an_evicted_session_object_is_destroyed(token: Token, blobs_kek: str) -> None:
    """The handle cache holds ``cache_size`` unwrapped keys; an evicted one leaves no session object."""
    blobs = DictBlobs()
    keys = WrappedKeys(token, blobs, kek_label=blobs_kek, cache_size=2)
    keys.probe()
    store = Pkcs11KeyStore(token, wrapped=keys, mode="wrapped")
    try:
        refs = [store.new_signature_key(P256_SUITE).key_ref for _ in range(5)]
        assert _session_keys(token, refs) == 2 and keys.cached == 2
        hits, misses = keys.hits, keys.misses
        store.signer(refs[0]).sign(b"m")  # evicted long ago: unwrapped again, another one evicted
        store.signer(refs[0]).sign(b"m")
        assert (keys.hits - hits, keys.misses - misses) == (1, 1)
        assert _session_keys(token, refs) == 2
    finally:
        keys.close()
    assert _session_keys(token, refs) == 0


@pytest.fixture()
def blobs_kek(token: Token) -> Iterator[str]:
    label = f"test/kek/{uuid.uuid4().hex[:8]}/v1"
    create_kek(token, label)
    yield label
    destroy_aes_token_key(token, label, op="test cleanup")


def _session_keys(token: Token, refs: list[bytes]) -> int:
    def count(session: Session) -> int:
        with token.objects("search"):
            found = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.TOKEN: False})
            return sum(bytes(o[Attribute.ID]) in refs for o in found)

    return token.run(count, op="count")


def test_reread_reconnects_and_the_ring_finds_its_keks_again(token: Token, labels: tuple[str, str]) -> None:
    """``hsm.token.reread`` (what a KEK not found triggers, for a KEK another process made): a new connection,
    the old handles stale, the KEKs found again and every blob still opening."""
    old = labels[0]
    env = Envelope(token, old)
    blob = env.seal(b"kept")
    generation, _ = env.keks.handle(old)
    reread(token)
    assert token.generation != generation
    env.close()  # nothing cached: the next open unwraps with a handle found on the new connection
    assert env.open(blob) == b"kept"
    assert env.keks.handle(old)[0] == token.generation
    env.keks.resolver = lambda: ["test/wrap/missing"]
    with pytest.raises(WrapKeyMissing):  # known by name, but not in the token even after a re-read
        env.open(blob[:1] + kek_id("test/wrap/missing") + blob[9:])
