"""HPKE (RFC 9180) base mode, built on ``cryptography``'s primitives and the :class:`HpkePrivateKey` protocol.

Only what MLS uses: DHKEM over X25519, X448, P-256, P-384 and P-521 (§4.1, §7.1), HKDF-SHA256/384/512,
AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305; base mode (§5.1.1); single-shot seal/open (§6.1) and the
secret export (§5.3) used by MLS external init (RFC 9420 §8.3).

Private keys are never touched here except through ``HpkePrivateKey.dh``, so a key held in a PKCS#11
token decapsulates without any change to this module. Ephemeral encapsulation keys are generated in
software (they exist only for the duration of one encapsulation).
"""

from __future__ import annotations

import secrets as _secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

from mls.crypto import backend as _backend
from mls.crypto.key_protocols import HpkePrivateKey
from mls.errors import CryptoError, UnsupportedError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint

MODE_BASE = 0x00
KDF_IDS = {0x0001: "sha256", 0x0002: "sha384", 0x0003: "sha512"}
_KDF_BY_HASH = {v: k for k, v in KDF_IDS.items()}

_P_CURVE_ORDERS = {
    "P-256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "P-384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "P-521": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D0"
        "3BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}

_XPrivate = x25519.X25519PrivateKey | x448.X448PrivateKey | ec.EllipticCurvePrivateKey


def _i2osp(n: int, length: int) -> bytes:
    return n.to_bytes(length, "big")


@dataclass(frozen=True)
class Kem:
    """One DHKEM (RFC 9180 §4.1) with its KDF, sizes and curve."""

    kem_id: int
    name: str
    hash_name: str
    n_secret: int
    n_enc: int
    n_pk: int
    n_sk: int
    curve: ec.EllipticCurve | None = None
    bitmask: int = 0xFF

    @property
    def suite_id(self) -> bytes:
        return b"KEM" + _i2osp(self.kem_id, 2)

    # -- keys ------------------------------------------------------------------------------------
    def generate(self) -> SoftwareHpkeKey:
        return SoftwareHpkeKey(self, self._generate())

    def _generate(self) -> _XPrivate:
        if self.name == "X25519":
            return x25519.X25519PrivateKey.generate()
        if self.name == "X448":
            return x448.X448PrivateKey.generate()
        assert self.curve is not None
        return ec.generate_private_key(self.curve)

    def derive_key_pair(self, ikm: bytes) -> SoftwareHpkeKey:
        """``DeriveKeyPair(ikm)`` (RFC 9180 §7.1.3)."""
        dkp_prk = labeled_extract(self.hash_name, self.suite_id, b"", b"dkp_prk", ikm)
        if self.curve is None:
            sk = labeled_expand(self.hash_name, self.suite_id, dkp_prk, b"sk", b"", self.n_sk)
            return self.key_from_private_bytes(sk)
        order = _P_CURVE_ORDERS[self.name]
        for counter in range(256):
            candidate = bytearray(
                labeled_expand(
                    self.hash_name, self.suite_id, dkp_prk, b"candidate", bytes((counter,)), self.n_sk
                )
            )
            candidate[0] &= self.bitmask
            sk_int = int.from_bytes(candidate, "big")
            if 0 < sk_int < order:
                return SoftwareHpkeKey(self, ec.derive_private_key(sk_int, self.curve))
        raise CryptoError(
            "7.4/derive-key-pair", "DeriveKeyPair found no valid scalar"
        )  # pragma: no cover (2^-256)

    def key_from_private_bytes(self, data: bytes) -> SoftwareHpkeKey:
        """``DeserializePrivateKey`` (RFC 9180 §7.1.2)."""
        key: _XPrivate
        try:
            if self.name == "X25519":
                key = x25519.X25519PrivateKey.from_private_bytes(data)
            elif self.name == "X448":
                key = x448.X448PrivateKey.from_private_bytes(data)
            else:
                assert self.curve is not None
                # Some implementations drop leading zero octets of P-521 scalars: accept up to Nsk.
                if not 0 < len(data) <= self.n_sk:
                    raise ValueError("wrong length")
                key = ec.derive_private_key(int.from_bytes(data, "big"), self.curve)
        except ValueError:
            raise UnsupportedError(f"not a valid {self.name} private key") from None
        return SoftwareHpkeKey(self, key)

    def check_public_key(self, pk: bytes) -> None:
        """``DeserializePublicKey`` validity (RFC 9180 §7.1.1, §7.1.4); raises CryptoError."""
        _load_public(self, pk)

    # -- encapsulation ---------------------------------------------------------------------------
    def encap(self, pk_r: bytes, ephemeral: HpkePrivateKey | None = None) -> tuple[bytes, bytes]:
        """``Encap(pkR)`` → (shared_secret, enc) (RFC 9180 §4.1)."""
        sk_e = ephemeral or self.generate()
        dh = sk_e.dh(pk_r)
        enc = sk_e.public_key
        return self._extract_and_expand(dh, enc + pk_r), enc

    def decap(self, enc: bytes, sk_r: HpkePrivateKey) -> bytes:
        """``Decap(enc, skR)`` (RFC 9180 §4.1); the DH runs wherever ``sk_r`` lives."""
        dh = sk_r.dh(enc)
        return self._extract_and_expand(dh, enc + sk_r.public_key)

    def _extract_and_expand(self, dh: bytes, kem_context: bytes) -> bytes:
        eae_prk = labeled_extract(self.hash_name, self.suite_id, b"", b"eae_prk", dh)
        return labeled_expand(
            self.hash_name, self.suite_id, eae_prk, b"shared_secret", kem_context, self.n_secret
        )


def _load_public(
    kem: Kem, pk: bytes
) -> x25519.X25519PublicKey | x448.X448PublicKey | ec.EllipticCurvePublicKey:
    try:
        if kem.name == "X25519":
            if len(pk) != 32:
                raise ValueError
            return x25519.X25519PublicKey.from_public_bytes(pk)
        if kem.name == "X448":
            if len(pk) != 56:
                raise ValueError
            return x448.X448PublicKey.from_public_bytes(pk)
        assert kem.curve is not None
        if len(pk) != kem.n_pk or pk[:1] != b"\x04":
            raise ValueError
        return ec.EllipticCurvePublicKey.from_encoded_point(kem.curve, pk)
    except ValueError:
        raise CryptoError("5.1.1/public-key-valid", f"invalid {kem.name} public key") from None


@dataclass(eq=False)
class SoftwareHpkeKey:
    """An HPKE private key held in process memory."""

    kem: Kem
    _key: _XPrivate = field(repr=False)
    _ref: bytes = field(default_factory=lambda: _secrets.token_bytes(16))

    @property
    def key_ref(self) -> bytes:
        return self._ref

    @property
    def public_key(self) -> bytes:
        pub = self._key.public_key()
        if isinstance(pub, ec.EllipticCurvePublicKey):
            return pub.public_bytes(_X962, _UNCOMPRESSED)
        return pub.public_bytes(_RAW, _RAW_PUB)

    def dh(self, peer_public_key: bytes) -> bytes:
        peer = _load_public(self.kem, peer_public_key)
        key = self._key
        try:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                assert isinstance(peer, ec.EllipticCurvePublicKey)
                return key.exchange(ec.ECDH(), peer)
            return key.exchange(peer)  # type: ignore[arg-type]
        except ValueError:
            # X25519/X448 all-zero output (RFC 9180 §7.1.4) or a point off the curve.
            raise CryptoError("5.1.1/dh", f"{self.kem.name} DH failed") from None

    def private_bytes(self) -> bytes:
        """``SerializePrivateKey`` — for software-custody persistence only."""
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return _i2osp(key.private_numbers().private_value, self.kem.n_sk)
        return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())

    def __repr__(self) -> str:
        return f"SoftwareHpkeKey({self.kem.name}, ref={self._ref.hex()[:8]}…)"


KEMS = {
    k.kem_id: k
    for k in (
        Kem(0x0010, "P-256", "sha256", 32, 65, 65, 32, ec.SECP256R1()),
        Kem(0x0011, "P-384", "sha384", 48, 97, 97, 48, ec.SECP384R1()),
        Kem(0x0012, "P-521", "sha512", 64, 133, 133, 66, ec.SECP521R1(), bitmask=0x01),
        Kem(0x0020, "X25519", "sha256", 32, 32, 32, 32),
        Kem(0x0021, "X448", "sha512", 64, 56, 56, 56),
    )
}


# ---- labeled KDF (RFC 9180 §4) --------------------------------------------------------------------


def labeled_extract(hash_name: str, suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _backend.get_backend().hkdf_extract(hash_name, salt, b"HPKE-v1" + suite_id + label + ikm)


def labeled_expand(
    hash_name: str, suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int
) -> bytes:
    labeled_info = _i2osp(length, 2) + b"HPKE-v1" + suite_id + label + info
    return _backend.get_backend().hkdf_expand(hash_name, prk, labeled_info, length)


# ---- HPKE suite and context (RFC 9180 §5) -----------------------------------------------------------


@dataclass(frozen=True)
class HpkeSuite:
    kem: Kem
    kdf_id: int
    aead_id: int

    @property
    def suite_id(self) -> bytes:
        return b"HPKE" + _i2osp(self.kem.kem_id, 2) + _i2osp(self.kdf_id, 2) + _i2osp(self.aead_id, 2)

    @property
    def kdf_hash(self) -> str:
        return KDF_IDS[self.kdf_id]

    def prepare_info(self, info: bytes) -> PreparedInfo:
        """The part of mode_base's ``KeySchedule`` (RFC 9180 §5.1) that depends on ``info`` alone:
        ``key_schedule_context = concat(mode, psk_id_hash, info_hash)`` with ``info_hash =
        LabeledExtract("", "info_hash", info)`` and the empty psk_id. Computed once, it serves every
        recipient sealed to with this ``info`` (a Welcome's EncryptContext, RFC 9420 §12.4.3.1)."""
        h, sid = self.kdf_hash, self.suite_id
        psk_id_hash = labeled_extract(h, sid, b"", b"psk_id_hash", b"")
        info_hash = labeled_extract(h, sid, b"", b"info_hash", info)
        return PreparedInfo(self, bytes((MODE_BASE,)) + psk_id_hash + info_hash)

    def _prepared(self, info: bytes | PreparedInfo) -> PreparedInfo:
        if not isinstance(info, PreparedInfo):
            return self.prepare_info(info)
        if info.suite != self:
            raise ValueError("the info was prepared for another HPKE suite")
        return info

    def key_schedule(self, shared_secret: bytes, info: bytes | PreparedInfo) -> Context:
        """``KeySchedule`` for mode_base (RFC 9180 §5.1) with empty psk and psk_id; ``info`` may be one
        :meth:`prepare_info` made, so that its hash is not computed again."""
        h, sid = self.kdf_hash, self.suite_id
        ksc = self._prepared(info).key_schedule_context
        secret = labeled_extract(h, sid, shared_secret, b"secret", b"")
        nk, nn = _backend.AEAD_SIZES[self.aead_id]
        key = labeled_expand(h, sid, secret, b"key", ksc, nk)
        base_nonce = labeled_expand(h, sid, secret, b"base_nonce", ksc, nn)
        exporter_secret = labeled_expand(h, sid, secret, b"exp", ksc, _backend.HASH_SIZES[h])
        return Context(self, key, base_nonce, exporter_secret)

    def setup_base_s(
        self, pk_r: bytes, info: bytes | PreparedInfo, ephemeral: HpkePrivateKey | None = None
    ) -> tuple[bytes, Context]:
        """``SetupBaseS`` (RFC 9180 §5.1.1) → (enc, context); ``ephemeral`` fixes skE (test vectors)."""
        shared_secret, enc = self.kem.encap(pk_r, ephemeral)
        return enc, self.key_schedule(shared_secret, info)

    def setup_base_r(self, enc: bytes, sk_r: HpkePrivateKey, info: bytes | PreparedInfo) -> Context:
        """``SetupBaseR`` (RFC 9180 §5.1.1)."""
        return self.key_schedule(self.kem.decap(enc, sk_r), info)

    def seal_base(
        self, pk_r: bytes, info: bytes | PreparedInfo, aad: bytes, pt: bytes
    ) -> tuple[bytes, bytes]:
        """Single-shot ``SealBase`` (RFC 9180 §6.1) → (enc, ct); pass a :class:`PreparedInfo` to seal to
        many recipients with one ``info`` and hash it once."""
        enc, ctx = self.setup_base_s(pk_r, info)
        return enc, ctx.seal(aad, pt)

    def open_base(self, enc: bytes, sk_r: HpkePrivateKey, info: bytes, aad: bytes, ct: bytes) -> bytes:
        """Single-shot ``OpenBase``; raises CryptoError when decryption fails."""
        return self.setup_base_r(enc, sk_r, info).open(aad, ct)


@dataclass(frozen=True)
class PreparedInfo:
    """An HPKE ``info`` reduced by :meth:`HpkeSuite.prepare_info` to mode_base's ``KeyScheduleContext``
    (RFC 9180 §5.1): mode, ``psk_id_hash`` and ``info_hash``. Public values only; valid for its suite."""

    suite: HpkeSuite
    key_schedule_context: bytes


@dataclass(eq=False)
class Context:
    """An HPKE encryption context (RFC 9180 §5.2, §5.3)."""

    suite: HpkeSuite
    key: bytes = field(repr=False)
    base_nonce: bytes = field(repr=False)
    exporter_secret: bytes = field(repr=False)
    seq: int = 0

    def _nonce(self) -> bytes:
        n = len(self.base_nonce)
        return bytes(a ^ b for a, b in zip(self.base_nonce, _i2osp(self.seq, n)))

    def seal(self, aad: bytes, pt: bytes) -> bytes:
        ct = _backend.get_backend().aead_seal(self.suite.aead_id, self.key, self._nonce(), aad, pt)
        self.seq += 1
        return ct

    def open(self, aad: bytes, ct: bytes) -> bytes:
        pt = _backend.get_backend().aead_open(self.suite.aead_id, self.key, self._nonce(), aad, ct)
        self.seq += 1
        return pt

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return labeled_expand(
            self.suite.kdf_hash, self.suite.suite_id, self.exporter_secret, b"sec", exporter_context, length
        )


def hpke_suite(kem_id: int, kdf_id: int, aead_id: int) -> HpkeSuite:
    if kem_id not in KEMS or kdf_id not in KDF_IDS or aead_id not in _backend.AEAD_SIZES:
        raise UnsupportedError(f"HPKE suite ({kem_id:#06x}, {kdf_id:#06x}, {aead_id:#06x}) is not supported")
    return HpkeSuite(KEMS[kem_id], kdf_id, aead_id)


def kdf_id_for_hash(hash_name: str) -> int:
    return _KDF_BY_HASH[hash_name]
