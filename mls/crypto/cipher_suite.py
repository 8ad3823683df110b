"""MLS cipher suites (RFC 9420 §5.1, §17.1) and the labeled operations built on them (§5.1.3–§5.2).

A :class:`CipherSuite` binds one suite's KEM, KDF/hash, AEAD and signature scheme, and offers:

* ``hash``, ``mac``, ``extract``, ``expand`` — the suite's primitives (through the crypto backend);
* ``expand_with_label``, ``derive_secret``, ``derive_tree_secret`` (§5.1.3, §9);
* ``sign_with_label``, ``verify_with_label`` (§5.1.2);
* ``encrypt_with_label`` (and ``encrypt_with_label_many``, one context for many recipients),
  ``decrypt_with_label`` (§5.1.3 "Public Key Encryption");
* ``ref_hash``, ``make_key_package_ref``, ``make_proposal_ref`` (§5.2);
* ``derive_key_pair`` (the KEM's DeriveKeyPair, used for TreeKEM node keys §7.4 and external_pub §8).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from mls.crypto import backend as _backend
from mls.crypto.hpke import HpkeSuite, Kem, SoftwareHpkeKey, hpke_suite, kdf_id_for_hash
from mls.crypto.key_protocols import HpkePrivateKey, Signer
from mls.crypto.signature import (
    ECDSA_P256_SHA256,
    ECDSA_P384_SHA384,
    ECDSA_P521_SHA512,
    ED448,
    ED25519,
    SignatureScheme,
    SoftwareSigner,
)
from mls.crypto.signature_batch import prefetched, prefetched_result
from mls.errors import CryptoError, UnsupportedError
from mls.wire.codec import opaque_bytes

_LABEL_PREFIX = b"MLS 1.0 "


def _label(label: bytes | str) -> bytes:
    return opaque_bytes(_LABEL_PREFIX + (label.encode() if isinstance(label, str) else label))


@dataclass(frozen=True)
class CipherSuite:
    """One MLS cipher suite (RFC 9420 §17.1)."""

    suite_id: int
    name: str
    hpke: HpkeSuite
    hash_name: str
    signature: SignatureScheme

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def kem(self) -> Kem:
        return self.hpke.kem

    @property
    def aead_id(self) -> int:
        return self.hpke.aead_id

    @property
    def n_h(self) -> int:
        """KDF.Nh: output size of the suite's hash."""
        return _backend.HASH_SIZES[self.hash_name]

    @property
    def n_k(self) -> int:
        return _backend.AEAD_SIZES[self.aead_id][0]

    @property
    def n_n(self) -> int:
        return _backend.AEAD_SIZES[self.aead_id][1]

    # ---- primitives (§5.1) ---------------------------------------------------------------------
    def hash(self, data: bytes) -> bytes:
        return _backend.get_backend().hash(self.hash_name, data)

    def mac(self, key: bytes, data: bytes) -> bytes:
        return _backend.get_backend().hmac(self.hash_name, key, data)

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return _backend.get_backend().hkdf_extract(self.hash_name, salt, ikm)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        return _backend.get_backend().hkdf_expand(self.hash_name, prk, info, length)

    def aead_seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return _backend.get_backend().aead_seal(self.aead_id, key, nonce, aad, plaintext)

    def aead_open(self, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        return _backend.get_backend().aead_open(self.aead_id, key, nonce, aad, ciphertext)

    # ---- key derivation (§5.1.3) ---------------------------------------------------------------
    def expand_with_label(self, secret: bytes, label: bytes | str, context: bytes, length: int) -> bytes:
        """``ExpandWithLabel``: KDF.Expand(secret, KDFLabel{length, "MLS 1.0 "+label, context}, length)."""
        kdf_label = length.to_bytes(2, "big") + _label(label) + opaque_bytes(context)
        return self.expand(secret, kdf_label, length)

    def derive_secret(self, secret: bytes, label: bytes | str) -> bytes:
        """``DeriveSecret(Secret, Label) = ExpandWithLabel(Secret, Label, "", KDF.Nh)``."""
        return self.expand_with_label(secret, label, b"", self.n_h)

    def derive_tree_secret(self, secret: bytes, label: bytes | str, generation: int, length: int) -> bytes:
        """``DeriveTreeSecret`` (§9): ExpandWithLabel with the uint32 generation as context."""
        return self.expand_with_label(secret, label, generation.to_bytes(4, "big"), length)

    # ---- signatures (§5.1.2) -------------------------------------------------------------------
    @staticmethod
    def sign_content(label: bytes | str, content: bytes) -> bytes:
        """The ``SignContent`` struct: label "MLS 1.0 "+Label and content, both ``opaque<V>``."""
        return _label(label) + opaque_bytes(content)

    def sign_with_label(self, signer: Signer, label: bytes | str, content: bytes) -> bytes:
        return signer.sign(self.sign_content(label, content))

    def verify_with_label(
        self, public_key: bytes, label: bytes | str, content: bytes, signature: bytes
    ) -> bool:
        """``VerifyWithLabel``; inside :meth:`prefetch_verifications` for it, the batch's result."""
        data = self.sign_content(label, content)
        done = prefetched_result(self.signature, public_key, data, signature)
        return self.signature.verify(public_key, data, signature) if done is None else done

    def prefetch_verifications(
        self, checks: Iterable[tuple[bytes, bytes | str, bytes, bytes]]
    ) -> AbstractContextManager[None]:
        """Run many ``VerifyWithLabel(public_key, label, content, signature)`` checks now, in one batch
        (:mod:`mls.crypto.signature_batch`); :meth:`verify_with_label` answers them from it inside the
        ``with`` block, so that code checking them one by one, in its own order, keeps doing so."""
        items = [(pk, self.sign_content(label, content), sig) for pk, label, content, sig in checks]
        return prefetched(self.signature, items)

    def generate_signer(self) -> SoftwareSigner:
        return self.signature.generate()

    def signer_from_private_bytes(self, data: bytes) -> SoftwareSigner:
        return self.signature.signer_from_private_bytes(data)

    # ---- public-key encryption (§5.1.3) --------------------------------------------------------
    @staticmethod
    def encrypt_context(label: bytes | str, context: bytes) -> bytes:
        return _label(label) + opaque_bytes(context)

    def encrypt_with_label(
        self, public_key: bytes, label: bytes | str, context: bytes, plaintext: bytes
    ) -> tuple[bytes, bytes]:
        """``EncryptWithLabel`` → (kem_output, ciphertext): SealBase with EncryptContext as info."""
        return self.hpke.seal_base(public_key, self.encrypt_context(label, context), b"", plaintext)

    def encrypt_with_label_many(
        self, public_keys: Sequence[bytes], label: bytes | str, context: bytes, plaintexts: Sequence[bytes]
    ) -> list[tuple[bytes, bytes]]:
        """``EncryptWithLabel`` of ``plaintexts[i]`` to ``public_keys[i]``, all with one label and context:
        the EncryptContext and its HPKE ``info_hash`` (RFC 9180 §5.1) are computed once, not once per
        recipient — a Welcome's context is the whole encrypted GroupInfo (§12.4.3.1). Each result is
        what :meth:`encrypt_with_label` gives (with a fresh ephemeral key each)."""
        info = self.hpke.prepare_info(self.encrypt_context(label, context))
        return [
            self.hpke.seal_base(pk, info, b"", pt) for pk, pt in zip(public_keys, plaintexts, strict=True)
        ]

    def decrypt_with_label(
        self,
        private_key: HpkePrivateKey,
        label: bytes | str,
        context: bytes,
        kem_output: bytes,
        ciphertext: bytes,
    ) -> bytes:
        """``DecryptWithLabel``; raises :class:`CryptoError` when the ciphertext does not open."""
        info = self.encrypt_context(label, context)
        try:
            return self.hpke.open_base(kem_output, private_key, info, b"", ciphertext)
        except CryptoError:
            raise CryptoError("5.1.3/hpke-decrypt", "DecryptWithLabel: HPKE decryption failed") from None

    def derive_key_pair(self, ikm: bytes) -> SoftwareHpkeKey:
        """The KEM's ``DeriveKeyPair`` (RFC 9180 §7.1.3)."""
        return self.kem.derive_key_pair(ikm)

    def hpke_key_from_private_bytes(self, data: bytes) -> SoftwareHpkeKey:
        return self.kem.key_from_private_bytes(data)

    # ---- hash-based identifiers (§5.2) ---------------------------------------------------------
    def ref_hash(self, label: bytes | str, value: bytes) -> bytes:
        """``RefHash(label, value) = Hash(RefHashInput{label<V>, value<V>})`` — no "MLS 1.0" prefix added."""
        lab = label.encode() if isinstance(label, str) else label
        return self.hash(opaque_bytes(lab) + opaque_bytes(value))

    def make_key_package_ref(self, key_package_message: bytes) -> bytes:
        """``KeyPackageRef`` (§5.2): RefHash over the encoded KeyPackage (not its MLSMessage wrapper)."""
        return self.ref_hash(b"MLS 1.0 KeyPackage Reference", key_package_message)

    def make_proposal_ref(self, authenticated_content: bytes) -> bytes:
        """``ProposalRef`` over the encoded AuthenticatedContent that carries the proposal (§5.2)."""
        return self.ref_hash(b"MLS 1.0 Proposal Reference", authenticated_content)


def _suite(
    suite_id: int, name: str, kem_id: int, aead_id: int, hash_name: str, sig: SignatureScheme
) -> CipherSuite:
    return CipherSuite(
        suite_id, name, hpke_suite(kem_id, kdf_id_for_hash(hash_name), aead_id), hash_name, sig
    )


_AES128, _AES256, _CHACHA = _backend.AEAD_AES128GCM, _backend.AEAD_AES256GCM, _backend.AEAD_CHACHA20POLY1305

CIPHER_SUITES: dict[int, CipherSuite] = {
    s.suite_id: s
    for s in (
        _suite(1, "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", 0x0020, _AES128, "sha256", ED25519),
        _suite(2, "MLS_128_DHKEMP256_AES128GCM_SHA256_P256", 0x0010, _AES128, "sha256", ECDSA_P256_SHA256),
        _suite(3, "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519", 0x0020, _CHACHA, "sha256", ED25519),
        _suite(4, "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448", 0x0021, _AES256, "sha512", ED448),
        _suite(5, "MLS_256_DHKEMP521_AES256GCM_SHA512_P521", 0x0012, _AES256, "sha512", ECDSA_P521_SHA512),
        _suite(6, "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448", 0x0021, _CHACHA, "sha512", ED448),
        _suite(7, "MLS_256_DHKEMP384_AES256GCM_SHA384_P384", 0x0011, _AES256, "sha384", ECDSA_P384_SHA384),
    )
}


def cipher_suite(suite_id: int) -> CipherSuite:
    """The cipher suite with this id; :class:`UnsupportedError` for any other value."""
    try:
        return CIPHER_SUITES[suite_id]
    except KeyError:
        raise UnsupportedError(f"cipher suite 0x{suite_id:04x} is not supported") from None


__all__ = ["CIPHER_SUITES", "CipherSuite", "cipher_suite"]
