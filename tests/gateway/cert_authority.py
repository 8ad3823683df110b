"""A small test PKI made with ``cryptography``: an Ed25519 root CA, an intermediate CA under it, end-entity
certificates for MLS signature keys (RFC 9420 §5.1.1 encodings) and CRLs, for the credential-policy tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string
_serials = count(1000)
PublicKey = ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def mls_public_key(signature_key: bytes) -> PublicKey:
    """A cryptography public key from an MLS signature key (raw Ed25519/Ed448, SEC1 P-curve point)."""
    if len(signature_key) == 32:
        return ed25519.Ed25519PublicKey.from_public_bytes(signature_key)
    if len(signature_key) == 57:
        return ed448.Ed448PublicKey.from_public_bytes(signature_key)
    curve = {65: ec.SECP256R1(), 97: ec.SECP384R1(), 133: ec.SECP521R1()}[len(signature_key)]
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, signature_key)


def _ca_extensions(builder: x509.CertificateBuilder, path_length: int | None) -> x509.CertificateBuilder:
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return builder.add_extension(
        x509.BasicConstraints(ca=True, path_length=path_length), critical=True
    ).add_extension(usage, critical=True)


@dataclass
class Authority:
    """One CA: its key and certificate, and the serials it revoked."""

    key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate
    revoked: list[int] = field(default_factory=list)

    @classmethod
    def root(cls, cn: str = "Test Root CA") -> Authority:
        key = ed25519.Ed25519PrivateKey.generate()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(next(_serials))
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
        )
        return cls(key, _ca_extensions(builder, None).sign(key, None))

    def intermediate(self, cn: str = "Test Intermediate CA") -> Authority:
        key = ed25519.Ed25519PrivateKey.generate()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(next(_serials))
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
        )
        return Authority(key, _ca_extensions(builder, 0).sign(self.key, None))

    def issue(
        self,
        public_key: PublicKey,
        cn: str,
        *,
        san: tuple[str, ...] = (),
        eku: tuple[str, ...] = (CLIENT_AUTH,),
        valid_days: tuple[int, int] = (-1, 30),
    ) -> x509.Certificate:
        """An end-entity certificate for ``public_key``; ``san`` are URIs; ``valid_days`` the validity
        period relative to now."""
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(next(_serials))
            .not_valid_before(now + timedelta(days=valid_days[0]))
            .not_valid_after(now + timedelta(days=valid_days[1]))
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in san]), critical=False
            )
        if eku:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in eku]), critical=False
            )
        return builder.sign(self.key, None)

    def crl(self, revoked: list[x509.Certificate]) -> x509.CertificateRevocationList:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(hours=1))
            .next_update(now + timedelta(days=7))
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now)
                .build()
            )
        return builder.sign(self.key, None)


def self_signed(public_key: PublicKey, signing_key: ed25519.Ed25519PrivateKey, cn: str) -> x509.Certificate:
    """A certificate for ``public_key`` signed by a key no policy trusts, naming itself as issuer."""
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(cn))
        .public_key(public_key)
        .serial_number(next(_serials))
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(signing_key, None)
    )


def crl_pem(crl: x509.CertificateRevocationList) -> str:
    return crl.public_bytes(serialization.Encoding.PEM).decode()
