"""Signature schemes of the MLS cipher suites (RFC 9420 §5.1, §17.1), over ``cryptography``.

Wire forms (§5.1.1): EdDSA public keys are the raw RFC 8032 encoding; ECDSA public keys are uncompressed
SEC1 points and signatures are DER-encoded ``Ecdsa-Sig-Value``. Private keys imported from test vectors
are the raw RFC 8032 seed or the big-endian ECDSA scalar.
"""

from __future__ import annotations

import secrets as _secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from mls.errors import UnsupportedError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint

PrivateKey = ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class SignatureScheme:
    """One TLS SignatureScheme as MLS uses it."""

    name: str
    code: int
    curve: ec.EllipticCurve | None = None
    hash_name: str | None = None
    #: Private scalar length in bytes for ECDSA.
    scalar_len: int = 0

    @property
    def is_ecdsa(self) -> bool:
        return self.curve is not None

    def generate(self) -> SoftwareSigner:
        return SoftwareSigner(self, self._generate_key())

    def _generate_key(self) -> PrivateKey:
        if self.name == "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        if self.name == "ed448":
            return ed448.Ed448PrivateKey.generate()
        assert self.curve is not None
        return ec.generate_private_key(self.curve)

    def signer_from_private_bytes(self, data: bytes) -> SoftwareSigner:
        """Import a private key in its raw form (RFC 8032 seed, or the ECDSA scalar)."""
        key: PrivateKey
        try:
            if self.name == "ed25519":
                key = ed25519.Ed25519PrivateKey.from_private_bytes(data)
            elif self.name == "ed448":
                key = ed448.Ed448PrivateKey.from_private_bytes(data)
            else:
                assert self.curve is not None
                key = ec.derive_private_key(int.from_bytes(data, "big"), self.curve)
        except ValueError:
            raise UnsupportedError(f"not a valid {self.name} private key") from None
        return SoftwareSigner(self, key)

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is valid over ``data``; malformed keys or signatures give ``False``."""
        key = self.load_public_key(public_key)
        return key is not None and self.verify_with_key(key, data, signature)

    def load_public_key(self, public_key: bytes) -> PublicKey | None:
        """The public key object of ``public_key``'s wire form (§5.1.1), ``None`` when it is malformed;
        loaded once, it verifies many signatures (:meth:`verify_with_key`)."""
        try:
            if self.name == "ed25519":
                return ed25519.Ed25519PublicKey.from_public_bytes(public_key)
            if self.name == "ed448":
                return ed448.Ed448PublicKey.from_public_bytes(public_key)
            assert self.curve is not None
            return ec.EllipticCurvePublicKey.from_encoded_point(self.curve, public_key)
        except (ValueError, TypeError):
            return None

    def verify_with_key(self, key: PublicKey, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is valid over ``data`` under a key :meth:`load_public_key` loaded."""
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                assert self.hash_name is not None
                key.verify(signature, data, ec.ECDSA(_hash_algorithm(self.hash_name)))
            else:
                key.verify(signature, data)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def public_key_valid(self, public_key: bytes) -> bool:
        return self.load_public_key(public_key) is not None


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def _hash_algorithm(name: str) -> hashes.HashAlgorithm:
    return _HASHES[name]()


def public_key_bytes(scheme: SignatureScheme, key: PrivateKey) -> bytes:
    pub = key.public_key()
    if scheme.is_ecdsa:
        return pub.public_bytes(_X962, _UNCOMPRESSED)
    return pub.public_bytes(_RAW, _RAW_PUB)


@dataclass(eq=False)
class SoftwareSigner:
    """A signature key held in process memory (tests, and identities without an HSM)."""

    scheme: SignatureScheme
    _key: PrivateKey = field(repr=False)
    _ref: bytes = field(default_factory=lambda: _secrets.token_bytes(16))

    @property
    def public_key(self) -> bytes:
        return public_key_bytes(self.scheme, self._key)

    @property
    def key_ref(self) -> bytes:
        return self._ref

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            assert self.scheme.hash_name is not None
            return key.sign(data, ec.ECDSA(_hash_algorithm(self.scheme.hash_name)))
        return key.sign(data)

    def private_bytes(self) -> bytes:
        """The raw private key, for software-custody persistence only."""
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.private_numbers().private_value.to_bytes(self.scheme.scalar_len, "big")
        return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())

    def __repr__(self) -> str:
        return f"SoftwareSigner({self.scheme.name}, ref={self._ref.hex()[:8]}…)"


ED25519 = SignatureScheme("ed25519", 0x0807)
ED448 = SignatureScheme("ed448", 0x0808)
ECDSA_P256_SHA256 = SignatureScheme("ecdsa_secp256r1_sha256", 0x0403, ec.SECP256R1(), "sha256", 32)
ECDSA_P384_SHA384 = SignatureScheme("ecdsa_secp384r1_sha384", 0x0503, ec.SECP384R1(), "sha384", 48)
ECDSA_P521_SHA512 = SignatureScheme("ecdsa_secp521r1_sha512", 0x0603, ec.SECP521R1(), "sha512", 66)
