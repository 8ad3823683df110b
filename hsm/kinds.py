"""Key kinds the token may hold, their PKCS#11 parameters, and the key-reference format.

A :class:`KeyKind` is one (role, curve) pair: a signature key of one MLS signature scheme (RFC 9420 §5.1.1)
or a KEM key of one HPKE DHKEM (RFC 9180 §7.1). It knows its ``CKA_EC_PARAMS`` (the curve OID, DER) and
the sizes needed to move between PKCS#11's forms and MLS's wire forms.

A key reference (``CKA_ID`` of both token objects of a pair) is self-describing and non-secret::

    0x01 (format) ‖ kind code (1) ‖ custody (1: 0x01 pkcs11, 0x02 software, 0x03 wrapped) ‖ 16 random bytes
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from mls.crypto import signature as _sig
from mls.crypto.hpke import KEMS, Kem
from mls.crypto.signature import SignatureScheme

from .errors import HsmError

Role = Literal["signature", "kem"]
Family = Literal["ec", "edwards", "montgomery"]
Custody = Literal["pkcs11", "wrapped", "software", "unsupported"]


@dataclass(frozen=True)
class KeyKind:
    """One kind of key pair the key store can make."""

    code: int
    name: str
    role: Role
    family: Family
    #: CKA_EC_PARAMS: the DER-encoded curve OID.
    ec_params: bytes
    #: Private key length (ECDSA/ECDH scalar, EdDSA seed, X25519/X448 scalar) and DH output length.
    key_len: int
    #: Public key length in MLS wire form (uncompressed SEC1 for P-curves, raw otherwise).
    pub_len: int
    #: The hash ECDSA signs the digest of (None for EdDSA and KEM keys).
    hash_name: str | None = None


_P256 = bytes.fromhex("06082a8648ce3d030107")
_P384 = bytes.fromhex("06052b81040022")
_P521 = bytes.fromhex("06052b81040023")

ED25519 = KeyKind(0x01, "ed25519", "signature", "edwards", bytes.fromhex("06032b6570"), 32, 32)
ED448 = KeyKind(0x02, "ed448", "signature", "edwards", bytes.fromhex("06032b6571"), 57, 57)
ECDSA_P256 = KeyKind(0x03, "ecdsa-p256", "signature", "ec", _P256, 32, 65, "sha256")
ECDSA_P384 = KeyKind(0x04, "ecdsa-p384", "signature", "ec", _P384, 48, 97, "sha384")
ECDSA_P521 = KeyKind(0x05, "ecdsa-p521", "signature", "ec", _P521, 66, 133, "sha512")
X25519 = KeyKind(0x11, "x25519", "kem", "montgomery", bytes.fromhex("06032b656e"), 32, 32)
X448 = KeyKind(0x12, "x448", "kem", "montgomery", bytes.fromhex("06032b656f"), 56, 56)
ECDH_P256 = KeyKind(0x13, "ecdh-p256", "kem", "ec", _P256, 32, 65)
ECDH_P384 = KeyKind(0x14, "ecdh-p384", "kem", "ec", _P384, 48, 97)
ECDH_P521 = KeyKind(0x15, "ecdh-p521", "kem", "ec", _P521, 66, 133)

ALL_KINDS: tuple[KeyKind, ...] = (
    ED25519,
    ED448,
    ECDSA_P256,
    ECDSA_P384,
    ECDSA_P521,
    X25519,
    X448,
    ECDH_P256,
    ECDH_P384,
    ECDH_P521,
)
_BY_CODE = {k.code: k for k in ALL_KINDS}
_BY_SCHEME = {
    "ed25519": ED25519,
    "ed448": ED448,
    "ecdsa_secp256r1_sha256": ECDSA_P256,
    "ecdsa_secp384r1_sha384": ECDSA_P384,
    "ecdsa_secp521r1_sha512": ECDSA_P521,
}
_SCHEMES = {
    s.name: s
    for s in (
        _sig.ED25519,
        _sig.ED448,
        _sig.ECDSA_P256_SHA256,
        _sig.ECDSA_P384_SHA384,
        _sig.ECDSA_P521_SHA512,
    )
}
_BY_KEM = {"X25519": X25519, "X448": X448, "P-256": ECDH_P256, "P-384": ECDH_P384, "P-521": ECDH_P521}


def signature_kind(scheme: SignatureScheme) -> KeyKind:
    return _BY_SCHEME[scheme.name]


def kem_kind(kem: Kem) -> KeyKind:
    return _BY_KEM[kem.name]


def scheme_of(kind: KeyKind) -> SignatureScheme:
    """The MLS signature scheme of a signature kind."""
    return next(s for n, s in _SCHEMES.items() if _BY_SCHEME[n] is kind)


def kem_of(kind: KeyKind) -> Kem:
    """The HPKE KEM of a KEM kind."""
    return next(k for k in KEMS.values() if _BY_KEM[k.name] is kind)


# ---- key references --------------------------------------------------------------------------------

REF_FORMAT = 0x01
CUSTODY_CODES: dict[Custody, int] = {"pkcs11": 0x01, "software": 0x02, "wrapped": 0x03}
_CUSTODY_BY_CODE: dict[int, Custody] = {v: k for k, v in CUSTODY_CODES.items()}
REF_LEN = 19


def new_ref(kind: KeyKind, custody: Custody) -> bytes:
    """A fresh key reference for a key of ``kind`` held in ``custody``."""
    return bytes((REF_FORMAT, kind.code, CUSTODY_CODES[custody])) + secrets.token_bytes(16)


def parse_ref(ref: bytes) -> tuple[KeyKind, Custody] | None:
    """(kind, custody) of a reference made by :func:`new_ref`, or None for anything else."""
    if len(ref) != REF_LEN or ref[0] != REF_FORMAT:
        return None
    kind = _BY_CODE.get(ref[1])
    custody = _CUSTODY_BY_CODE.get(ref[2])
    if kind is None or custody is None:
        return None
    return kind, custody


# ---- CKA_EC_POINT ------------------------------------------------------------------------------------


def der_octet_string(value: bytes) -> bytes:
    """DER ``OCTET STRING`` around ``value`` (the form of CKA_EC_POINT)."""
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    elif n < 0x100:
        length = bytes((0x81, n))
    else:
        length = bytes((0x82, n >> 8, n & 0xFF))
    return b"\x04" + length + value


def _der_octet_string_content(data: bytes) -> bytes | None:
    if len(data) < 2 or data[0] != 0x04:
        return None
    first = data[1]
    if first < 0x80:
        start, n = 2, first
    elif first in (0x81, 0x82) and len(data) >= 2 + (first - 0x80):
        size = first - 0x80
        start, n = 2 + size, int.from_bytes(data[2 : 2 + size], "big")
    else:
        return None
    return data[start:] if len(data) - start == n else None


def public_key_from_ec_point(kind: KeyKind, ec_point: bytes) -> bytes:
    """MLS wire-form public key from CKA_EC_POINT (DER-wrapped per PKCS#11; raw accepted too)."""
    content = _der_octet_string_content(ec_point)
    if content is not None and len(content) == kind.pub_len:
        return content
    if len(ec_point) == kind.pub_len:
        return ec_point
    raise HsmError(f"token returned a {kind.name} public key of unexpected form")


__all__ = [
    "ALL_KINDS",
    "Custody",
    "KeyKind",
    "der_octet_string",
    "kem_kind",
    "kem_of",
    "new_ref",
    "parse_ref",
    "public_key_from_ec_point",
    "scheme_of",
    "signature_kind",
]
