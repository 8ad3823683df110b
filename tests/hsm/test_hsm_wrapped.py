"""Wrapped custody on SoftHSM: P-256/384/521 keys live as session objects and at rest only wrapped under the
KEK (CKM_AES_KEY_WRAP_PAD; hsm-facts.md "Wrapping private keys"); Ed25519/X25519 stay token objects.

The persistence hook here is a plain dict: the store's contract is only save/load/delete of opaque blobs.
Every test closes its :class:`WrappedKeys` (destroying its session objects), so later tests that list every
private key of the token see only token objects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11.types import Session

from hsm import AuditEvent, HsmError, Pkcs11KeyStore, Token
from hsm.wrapped_keys import WrappedKeys
from hsm.wrapping import create_kek
from mls.crypto.cipher_suite import cipher_suite
from mls.errors import KeyStoreError

P256_SUITE = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256
X25519_SUITE = 1  # MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519


class DictBlobs:
    """``hsm.wrapped_keys.WrappedKeyPersistence`` over a dict."""

    def __init__(self) -> None:
        self.rows: dict[bytes, tuple[bytes, bytes]] = {}

    def save(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None:
        self.rows[key_ref] = (blob, kek_id)

    def load(self, key_ref: bytes) -> bytes | None:
        row = self.rows.get(key_ref)
        return None if row is None else row[0]

    def delete(self, key_ref: bytes) -> None:
        self.rows.pop(key_ref, None)


@pytest.fixture()
def blobs() -> DictBlobs:
    return DictBlobs()


@pytest.fixture()
def wrapped(token: Token, blobs: DictBlobs) -> Iterator[WrappedKeys]:
    create_kek(token)
    keys = WrappedKeys(token, blobs)
    keys.probe()
    yield keys
    keys.close()


def _store(token: Token, keys: WrappedKeys, events: list[AuditEvent] | None = None) -> Pkcs11KeyStore:
    hook = events.append if events is not None else None
    return Pkcs11KeyStore(token, wrapped=keys, mode="wrapped", audit_hook=hook)


def _token_objects(token: Token) -> int:
    def count(session: Session) -> int:
        with token.objects("search"):
            return len(list(session.get_objects({Attribute.TOKEN: True})))

    return token.run(count, op="count")


def test_probe_finds_the_p_curves_wrappable_and_reports_the_others(wrapped: WrappedKeys) -> None:
    described = wrapped.describe()
    kinds = described["kinds"]
    assert isinstance(kinds, dict)
    for name in ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ecdh-p256", "ecdh-p384", "ecdh-p521"):
        assert kinds[name].startswith("AES_KEY_WRAP"), described
    refused = described["refused"]
    assert isinstance(refused, dict)
    assert "ed25519" in refused and "x25519" in refused, described


def test_wrapped_p256_keys_sign_and_decapsulate(token: Token, wrapped: WrappedKeys, blobs: DictBlobs) -> None:
    store = _store(token, wrapped)
    assert store.custody(P256_SUITE) == ("wrapped", "wrapped")
    cs = cipher_suite(P256_SUITE)
    signer = store.new_signature_key(P256_SUITE)
    hpke = store.new_hpke_key(P256_SUITE)
    assert signer.custody == "wrapped" and hpke.custody == "wrapped"  # type: ignore[attr-defined]
    assert set(blobs.rows) == {signer.key_ref, hpke.key_ref}  # type: ignore[attr-defined]
    signature = signer.sign(b"hello")
    assert cs.signature.verify(signer.public_key, b"hello", signature)
    peer = cs.kem.generate()
    assert hpke.dh(peer.public_key) == peer.dh(hpke.public_key)
    # found again by reference, from the blob alone (the session objects dropped)
    wrapped.close()
    again = store.signer(signer.key_ref)
    assert again.public_key == signer.public_key
    assert cs.signature.verify(signer.public_key, b"again", again.sign(b"again"))
    assert store.hpke_key(hpke.key_ref).dh(peer.public_key) == peer.dh(hpke.public_key)  # type: ignore[attr-defined]


def test_token_mode_and_unwrappable_kinds_stay_token_objects(token: Token, wrapped: WrappedKeys) -> None:
    store = _store(token, wrapped)
    assert store.custody(X25519_SUITE) == ("pkcs11", "pkcs11")
    signer = store.new_signature_key(X25519_SUITE)
    assert store.custody_of(signer.key_ref) == "pkcs11"
    assert store.for_mode("token").custody(P256_SUITE) == ("pkcs11", "pkcs11")
    token_key = store.for_mode("token").new_signature_key(P256_SUITE)
    assert store.custody_of(token_key.key_ref) == "pkcs11"
    store.destroy(signer.key_ref)
    store.destroy(token_key.key_ref)


def test_token_objects_do_not_grow_with_wrapped_keys(token: Token, wrapped: WrappedKeys) -> None:
    store = _store(token, wrapped)
    before = _token_objects(token)
    refs = [store.new_hpke_key(P256_SUITE).key_ref for _ in range(200)]  # type: ignore[attr-defined]
    assert _token_objects(token) == before
    for ref in refs:
        store.destroy(ref)
    assert _token_objects(token) == before


def test_the_cache_is_bounded_and_misses_unwrap_again(token: Token, blobs: DictBlobs) -> None:
    create_kek(token)
    keys = WrappedKeys(token, blobs, cache_size=2)
    keys.probe()
    try:
        store = _store(token, keys)
        cs = cipher_suite(P256_SUITE)
        signers = [store.new_signature_key(P256_SUITE) for _ in range(5)]
        assert keys.cached == 2
        for signer in signers * 2:
            assert cs.signature.verify(signer.public_key, b"m", store.signer(signer.key_ref).sign(b"m"))
        assert keys.cached == 2
    finally:
        keys.close()


def test_blobs_are_wrapped_under_the_kek(token: Token, wrapped: WrappedKeys, blobs: DictBlobs) -> None:
    """A blob is no private key in clear: only the KEK it was wrapped under opens it."""
    store = _store(token, wrapped)
    signer = store.new_signature_key(P256_SUITE)
    blob, kek = blobs.rows[signer.key_ref]
    assert kek == wrapped.kek_id
    create_kek(token, "mlsgw/kek/other")
    other = WrappedKeys(token, blobs, kek_label="mlsgw/kek/other")
    other.probe()
    try:
        with pytest.raises(HsmError):
            _store(token, other).signer(signer.key_ref).sign(b"m")
    finally:
        other.close()
    tampered = blob[:-1] + bytes((blob[-1] ^ 1,))
    blobs.rows[signer.key_ref] = (tampered, kek)
    wrapped.close()
    with pytest.raises(HsmError):
        store.signer(signer.key_ref).sign(b"m")


def test_destroy_deletes_the_blob_and_the_session_object(
    token: Token, wrapped: WrappedKeys, blobs: DictBlobs
) -> None:
    events: list[AuditEvent] = []
    store = _store(token, wrapped, events)
    hpke = store.new_hpke_key(P256_SUITE)
    ref = hpke.key_ref  # type: ignore[attr-defined]
    store.destroy(ref)
    assert ref not in blobs.rows and wrapped.cached == 0
    with pytest.raises(KeyStoreError):
        store.hpke_key(ref)
    assert [(e.operation, e.custody, e.ok) for e in events] == [
        ("generate", "wrapped", True),
        ("destroy", "wrapped", True),
    ]


def test_unwrapped_session_keys_are_sensitive_and_not_extractable(token: Token, wrapped: WrappedKeys) -> None:
    store = _store(token, wrapped)
    signer = store.new_signature_key(P256_SUITE)
    wrapped.close()
    store.signer(signer.key_ref).sign(b"m")  # unwraps

    def attrs(session: Session) -> list[tuple[bool, bool, bool]]:
        found = list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: signer.key_ref})
        )
        return [(o[Attribute.SENSITIVE], o[Attribute.EXTRACTABLE], o[Attribute.TOKEN]) for o in found]

    assert token.run(attrs, op="attrs") == [(True, False, False)]


def test_a_stale_kek_handle_is_found_again_not_a_refusal(token: Token, wrapped: WrappedKeys) -> None:
    """A KEK handle that no longer names the KEK (the token went away and came back without a reconnect:
    SoftHSM answers CKR_WRAPPING_KEY_HANDLE_INVALID, or the unwrapping twin) makes generation and unwrapping
    find the KEK again, never refuse (which the API answered 422 during an HSM outage)."""
    store = _store(token, wrapped)
    cs = cipher_suite(P256_SUITE)
    label = wrapped.keks.label

    def stale() -> None:
        generation, _ = wrapped.keks.handle(label)
        wrapped.keks._handles[label] = (generation, 0x7FFFFF)  # names no object

    stale()
    signer = store.new_signature_key(P256_SUITE)  # wrapped under the KEK found again
    assert cs.signature.verify(signer.public_key, b"made", signer.sign(b"made"))
    wrapped.close()  # the session objects go: the next use unwraps the blob
    stale()
    again = store.signer(signer.key_ref)
    assert cs.signature.verify(signer.public_key, b"unwrapped", again.sign(b"unwrapped"))
