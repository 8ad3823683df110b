"""Token-held keys interoperate with the software implementations of mls.crypto, suite by suite."""

from __future__ import annotations

import pytest

from hsm import Pkcs11HpkeKey, Pkcs11KeyStore, Pkcs11Signer, SoftwareCustodyHpkeKey, Token
from hsm.capabilities import Capabilities, detect
from hsm.kinds import X448, X25519
from mls.crypto.cipher_suite import CIPHER_SUITES, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore, Signer
from mls.errors import CryptoError, KeyStoreError

ALL_SUITES = sorted(CIPHER_SUITES)
#: Suites whose keys must be in the token on any token this project supports (P-curves, Ed25519, X25519).
REQUIRED_IN_TOKEN = [1, 2, 3, 5, 7]


def test_keystore_implements_the_protocols(keystore: Pkcs11KeyStore) -> None:
    store: KeyStore = keystore
    assert isinstance(store.new_signature_key(1), Signer)
    assert isinstance(store.new_hpke_key(1), HpkePrivateKey)


@pytest.mark.parametrize("suite", REQUIRED_IN_TOKEN)
def test_required_suites_are_in_token_custody(keystore: Pkcs11KeyStore, suite: int) -> None:
    assert keystore.custody(suite) == ("pkcs11", "pkcs11")


def test_softhsm_capabilities_are_detected_truthfully(token: Token) -> None:
    caps = token.capabilities
    # SoftHSM 2.6.1 (OpenSSL 3) does all of them, X25519/X448 through the Edwards-OID quirk.
    assert caps.montgomery_mode == "edwards-oid"
    assert {k.name for k in caps.forms} == {
        "ed25519",
        "ed448",
        "ecdsa-p256",
        "ecdsa-p384",
        "ecdsa-p521",
        "x25519",
        "x448",
        "ecdh-p256",
        "ecdh-p384",
        "ecdh-p521",
    }
    assert caps.describe()["refused"] == {}


def test_montgomery_off_refuses_x25519_and_x448(token: Token) -> None:
    def run(session: object) -> Capabilities:
        p11 = session.token  # type: ignore[attr-defined]
        return detect(session, p11.slot.get_mechanisms(), "off", p11.model, token.destroy_handle)  # type: ignore[arg-type]

    caps = token.run(run, op="detect")
    assert not caps.supports(X25519) and not caps.supports(X448)
    assert caps.custody(1) == ("pkcs11", "software")
    assert caps.custody(1, software_hpke_fallback=False) == ("pkcs11", "unsupported")
    assert caps.custody(2) == ("pkcs11", "pkcs11")


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_signature_verifies_in_software(keystore: Pkcs11KeyStore, suite: int) -> None:
    cs = cipher_suite(suite)
    signer = keystore.new_signature_key(suite)
    assert isinstance(signer, Pkcs11Signer)
    assert cs.signature.public_key_valid(signer.public_key)
    for message in (b"", b"hello", bytes(range(256)) * 20):
        signature = signer.sign(message)
        assert cs.signature.verify(signer.public_key, message, signature)
        assert not cs.signature.verify(signer.public_key, message + b"!", signature)
    assert cs.verify_with_label(
        signer.public_key, "LeafNodeTBS", b"c", cs.sign_with_label(signer, "LeafNodeTBS", b"c")
    )


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_dh_equals_software_dh(keystore: Pkcs11KeyStore, suite: int) -> None:
    cs = cipher_suite(suite)
    key = keystore.new_hpke_key(suite)
    assert isinstance(key, Pkcs11HpkeKey)
    assert len(key.public_key) == cs.kem.n_pk
    peer = cs.kem.generate()
    assert key.dh(peer.public_key) == peer.dh(key.public_key)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_decrypt_with_label_with_token_key(keystore: Pkcs11KeyStore, suite: int) -> None:
    cs = cipher_suite(suite)
    key = keystore.new_hpke_key(suite)
    kem_output, ciphertext = cs.encrypt_with_label(
        key.public_key, "UpdatePathNode", b"context", b"path secret"
    )
    assert cs.decrypt_with_label(key, "UpdatePathNode", b"context", kem_output, ciphertext) == b"path secret"
    with pytest.raises(CryptoError):
        cs.decrypt_with_label(key, "UpdatePathNode", b"other context", kem_output, ciphertext)
    enc, ct = cs.hpke.seal_base(key.public_key, b"info", b"aad", b"pt")
    assert cs.hpke.open_base(enc, key, b"info", b"aad", ct) == b"pt"


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_imported_keys_match_their_software_originals(keystore: Pkcs11KeyStore, suite: int) -> None:
    cs = cipher_suite(suite)
    soft_signer = cs.generate_signer()
    signer = keystore.import_signature_key(suite, soft_signer.private_bytes())
    assert signer.public_key == soft_signer.public_key
    assert cs.signature.verify(soft_signer.public_key, b"m", signer.sign(b"m"))
    soft_kem = cs.kem.generate()
    key = keystore.import_hpke_key(suite, soft_kem.private_bytes())
    assert key.public_key == soft_kem.public_key
    peer = cs.kem.generate()
    assert key.dh(peer.public_key) == soft_kem.dh(peer.public_key)


def test_keys_are_found_again_by_reference(token: Token, keystore: Pkcs11KeyStore) -> None:
    signer = keystore.new_signature_key(2)
    hpke = keystore.new_hpke_key(1)
    fresh = Pkcs11KeyStore(token)  # empty handle cache: one token search per key, then cached
    again = fresh.signer(signer.key_ref)
    assert again.public_key == signer.public_key
    assert cipher_suite(2).signature.verify(signer.public_key, b"x", again.sign(b"x"))
    key = fresh.hpke_key(hpke.key_ref)
    peer = cipher_suite(1).kem.generate()
    assert key.dh(peer.public_key) == peer.dh(hpke.public_key)
    assert Pkcs11KeyStore.custody_of(hpke.key_ref) == "pkcs11"


def test_unknown_and_wrong_references(keystore: Pkcs11KeyStore) -> None:
    signer = keystore.new_signature_key(1)
    hpke = keystore.new_hpke_key(1)
    with pytest.raises(KeyStoreError):
        keystore.hpke_key(signer.key_ref)
    with pytest.raises(KeyStoreError):
        keystore.signer(hpke.key_ref)
    with pytest.raises(KeyStoreError):
        keystore.signer(b"not a reference")
    missing = signer.key_ref[:3] + bytes(16)
    with pytest.raises(KeyStoreError):
        keystore.signer(missing)
    keystore.destroy(missing)  # unknown reference: no-op
    keystore.destroy(b"junk")


@pytest.mark.parametrize("suite", [1, 2, 4])
def test_bad_peer_public_keys_are_crypto_errors(keystore: Pkcs11KeyStore, suite: int) -> None:
    cs = cipher_suite(suite)
    key = keystore.new_hpke_key(suite)
    n = cs.kem.n_pk
    if cs.kem.curve is None:
        bad = [b"", bytes(n - 1), bytes(n), b"\x01" + bytes(n - 1)]  # u = 0 and u = 1: all-zero DH output
    else:
        bad = [b"", b"\x04" + bytes(n - 1), b"\x02" + bytes(n - 1)]  # off the curve, compressed form
    for peer in bad:
        with pytest.raises(CryptoError):
            key.dh(peer)


class _DictPersistence:
    """Software-key persistence that keeps keys sealed with the token's envelope (what the gateway does)."""

    def __init__(self, envelope: object) -> None:
        self.envelope = envelope
        self.blobs: dict[bytes, bytes] = {}

    def save(self, key_ref: bytes, private_key: bytes) -> None:
        self.blobs[key_ref] = self.envelope.seal(private_key, key_ref)  # type: ignore[attr-defined]

    def load(self, key_ref: bytes) -> bytes | None:
        blob = self.blobs.get(key_ref)
        return None if blob is None else self.envelope.open(blob, key_ref)  # type: ignore[attr-defined]

    def delete(self, key_ref: bytes) -> None:
        self.blobs.pop(key_ref, None)


def test_software_fallback_for_kems_the_token_cannot_do(token: Token) -> None:
    from hsm import Envelope, create_wrap_key

    create_wrap_key(token)
    caps = token.capabilities
    restricted = Capabilities({k: f for k, f in caps.forms.items() if k not in (X25519, X448)}, "off")
    persistence = _DictPersistence(Envelope(token))
    store = Pkcs11KeyStore(token, capabilities=restricted, persistence=persistence)
    assert store.custody(1) == ("pkcs11", "software")
    assert store.custody(4) == ("pkcs11", "software")
    key = store.new_hpke_key(1)
    assert isinstance(key, SoftwareCustodyHpkeKey)
    assert Pkcs11KeyStore.custody_of(key.key_ref) == "software"
    assert b"".join(persistence.blobs.values()).find(key.private_bytes()) == -1  # stored sealed
    cs = cipher_suite(1)
    kem_output, ct = cs.encrypt_with_label(key.public_key, "Welcome", b"", b"joiner secret")
    reloaded = Pkcs11KeyStore(token, capabilities=restricted, persistence=persistence).hpke_key(key.key_ref)
    assert cs.decrypt_with_label(reloaded, "Welcome", b"", kem_output, ct) == b"joiner secret"
    assert key.key_ref in store.key_refs()
    store.destroy(key.key_ref)
    assert key.key_ref not in persistence.blobs and key.key_ref not in store.key_refs()
    with pytest.raises(KeyStoreError):
        store.hpke_key(key.key_ref)
    off = Pkcs11KeyStore(token, capabilities=restricted, software_hpke_fallback=False)
    assert off.custody(1) == ("pkcs11", "unsupported")
    with pytest.raises(Exception, match="software fallback is off"):
        off.new_hpke_key(1)
