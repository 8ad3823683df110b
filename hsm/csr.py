"""PKCS#10 certification requests (RFC 2986) signed in the token with a hosted identity's signature key.

``cryptography``'s ``CertificateSigningRequestBuilder`` signs only with a private key object it holds (it
accepts no external signer), and the key here never leaves the token. So the request is assembled from
``cryptography``'s own encodings and signed in the token:

1. a *template* request for the subject is built and signed by ``cryptography`` with a throwaway key of
   the same kind (same curve): its ``CertificationRequestInfo`` and its ``signatureAlgorithm`` are what
   the real request needs, except for the SubjectPublicKeyInfo;
2. the throwaway key's SubjectPublicKeyInfo in that ``CertificationRequestInfo`` is replaced by the
   identity's (both DER-encoded by ``cryptography``; for one key kind they have the same length, so no
   enclosing length changes);
3. the token signs the ``CertificationRequestInfo`` (EdDSA on the message, RFC 8410 §6; ECDSA with the
   hash of the curve, DER ``Ecdsa-Sig-Value``, RFC 5758 §3.2 — the form the token's signer returns), and
   the request is ``SEQUENCE { info, signatureAlgorithm, BIT STRING signature }`` (RFC 2986 §4.2).

Only step 3's outer SEQUENCE and BIT STRING headers are written here (tag and DER length octets, X.690
§8.1.3, §8.6, §8.9); the result is parsed back with ``cryptography`` and its signature verified before it
is returned, so a mistake cannot produce a request that does not verify.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from mls.crypto.key_protocols import Signer

from .errors import HsmError
from .kinds import ECDSA_P256, ECDSA_P384, ECDSA_P521, ED448, ED25519, KeyKind

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_CURVES: dict[int, ec.EllipticCurve] = {
    ECDSA_P256.code: ec.SECP256R1(),
    ECDSA_P384.code: ec.SECP384R1(),
    ECDSA_P521.code: ec.SECP521R1(),
}
_HASHES: dict[str, hashes.SHA256 | hashes.SHA384 | hashes.SHA512] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}

PublicKey = ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey


def public_key_of(kind: KeyKind, public_key: bytes) -> PublicKey:
    """A signature key in MLS form (RFC 9420 §5.1.1: raw EdDSA, uncompressed SEC1 point) as a
    ``cryptography`` public key."""
    if kind.code == ED25519.code:
        return ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    if kind.code == ED448.code:
        return ed448.Ed448PublicKey.from_public_bytes(public_key)
    curve = _CURVES.get(kind.code)
    if curve is None:
        raise HsmError(f"{kind.name} keys cannot be certified (not a signature key kind X.509 supports)")
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, public_key)


def _throwaway(kind: KeyKind) -> PrivateKey:
    if kind.code == ED25519.code:
        return ed25519.Ed25519PrivateKey.generate()
    if kind.code == ED448.code:
        return ed448.Ed448PrivateKey.generate()
    return ec.generate_private_key(_CURVES[kind.code])


def der_length(n: int) -> bytes:
    """DER length octets (X.690 §8.1.3: short form below 128, else long form, minimal)."""
    if n < 0x80:
        return bytes([n])
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _sequence(content: bytes) -> bytes:
    return b"\x30" + der_length(len(content)) + content


def _bit_string(octets: bytes) -> bytes:
    """A BIT STRING of whole octets (no unused bits)."""
    return b"\x03" + der_length(len(octets) + 1) + b"\x00" + octets


def _sequence_content(der: bytes) -> bytes:
    """The content octets of a DER SEQUENCE that is all of ``der``."""
    if len(der) < 2 or der[0] != 0x30:
        raise HsmError("the template request is not a DER SEQUENCE")
    start = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    content = der[start:]
    if der[:start] != b"\x30" + der_length(len(content)):
        raise HsmError("the template request's length is not DER")
    return content


def certification_request(
    signer: Signer, kind: KeyKind, public_key: bytes, subject: x509.Name
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for ``subject`` and the key ``public_key`` (MLS form), signed by ``signer`` (the
    key's token handle: the signature is made, and audited, by the key store). See the module docstring."""
    identity_key = public_key_of(kind, public_key)
    throwaway = _throwaway(kind)
    algorithm = None if kind.hash_name is None else _HASHES[kind.hash_name]
    template = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(throwaway, algorithm)
    template_info = template.tbs_certrequest_bytes
    old_spki = throwaway.public_key().public_bytes(_DER, _SPKI)
    new_spki = identity_key.public_bytes(_DER, _SPKI)
    if len(old_spki) != len(new_spki) or template_info.count(old_spki) != 1:
        raise HsmError("the template request's key cannot be replaced")
    info = template_info.replace(old_spki, new_spki)
    content = _sequence_content(template.public_bytes(_DER))
    template_signature = _bit_string(template.signature)
    if not (content.startswith(template_info) and content.endswith(template_signature)):
        raise HsmError("the template request has an unexpected layout")
    signature_algorithm = content[len(template_info) : len(content) - len(template_signature)]
    request = _sequence(info + signature_algorithm + _bit_string(signer.sign(info)))
    csr = x509.load_der_x509_csr(request)
    if csr.public_key() != identity_key or not csr.is_signature_valid:
        raise HsmError("the token's signature on the certification request does not verify")
    return csr


__all__ = ["certification_request", "der_length", "public_key_of"]
