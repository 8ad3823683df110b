"""X.509 credential validation (RFC 9420 §5.3, §5.3.1): ``mls.credentials.x509.X509CredentialValidator``.

Certificates are made on the fly with ``cryptography.x509.CertificateBuilder``: a P-256 root, an Ed25519
intermediate (an Ed25519 CA is exactly what the Web-PKI verifier of ``cryptography`` refuses), and
end-entity certificates for every MLS signature scheme. The validator runs on a fixed clock. Each
rejection test starts from a chain that is accepted, so it can only pass because of the one defect.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from mls.client import Client
from mls.credentials.credential import Certificate, Credential
from mls.credentials.x509 import X509CredentialValidator, identity_of
from mls.crypto import cipher_suite
from mls.crypto.key_store import SoftwareKeyStore
from mls.crypto.signature import SoftwareSigner
from mls.errors import ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig
from mls.tree.leaf_validation import AcceptAnyCredential, CredentialValidator, LeafPolicy
from mls.wire.extensions import ExternalSender, ExternalSenders

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

Key = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
    | dsa.DSAPrivateKey
)

#: MLS signature kind → (a cipher suite using it, key generator).
KINDS: dict[str, tuple[int, Callable[[], Key]]] = {
    "Ed25519": (1, ed25519.Ed25519PrivateKey.generate),
    "P-256": (2, lambda: ec.generate_private_key(ec.SECP256R1())),
    "Ed448": (4, ed448.Ed448PrivateKey.generate),
    "P-521": (5, lambda: ec.generate_private_key(ec.SECP521R1())),
    "P-384": (7, lambda: ec.generate_private_key(ec.SECP384R1())),
}


def clock() -> datetime:
    return NOW


def name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MLS test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def new_key(kind: str) -> Key:
    return KINDS[kind][1]()


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _hash_for(key: Key) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


CA_USAGE = x509.KeyUsage(
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
EE_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_DEFAULT = object()


def issue(
    cn: str,
    key: Key,
    issuer: Issued | None,
    *,
    ca: bool | None,
    path_length: int | None = None,
    key_usage: x509.KeyUsage | object | None = _DEFAULT,
    not_before: datetime = NOW - 30 * DAY,
    not_after: datetime = NOW + 365 * DAY,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    issuer_name: x509.Name | None = None,
    hash_algorithm: hashes.HashAlgorithm | object | None = _DEFAULT,
    serial: int | None = None,
) -> Issued:
    """A certificate for ``key`` signed by ``issuer`` (self-signed when ``None``); ``ca=None`` omits
    basicConstraints, ``key_usage=None`` omits keyUsage; ``serial`` defaults to a random one."""
    signing_key = key if issuer is None else issuer.key
    b = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer_name or (name(cn) if issuer is None else issuer.cert.subject))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        b = b.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    usage = (CA_USAGE if ca else EE_USAGE) if key_usage is _DEFAULT else key_usage
    if usage is not None:
        assert isinstance(usage, x509.KeyUsage)
        b = b.add_extension(usage, critical=True)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    algorithm = _hash_for(signing_key) if hash_algorithm is _DEFAULT else hash_algorithm
    assert algorithm is None or isinstance(algorithm, hashes.HashAlgorithm)
    return Issued(b.sign(signing_key, algorithm), key)  # type: ignore[arg-type]


def mls_signer(kind: str, key: Key) -> SoftwareSigner:
    """``key`` imported into the MLS signature scheme of ``kind`` (its public key is the leaf key)."""
    scheme = cipher_suite(KINDS[kind][0]).signature
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.private_numbers().private_value.to_bytes(scheme.scalar_len, "big")
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    return scheme.signer_from_private_bytes(raw)


def leaf_key(kind: str, key: Key) -> bytes:
    return mls_signer(kind, key).public_key


@dataclass
class Pki:
    root: Issued
    inter: Issued

    def end_entity(self, kind: str = "P-256", **kw: object) -> tuple[Issued, bytes]:
        """An end-entity certificate issued by the intermediate, and the matching leaf signature key."""
        key = new_key(kind)
        ee = issue(f"member {kind}", key, self.inter, ca=False, **kw)  # type: ignore[arg-type]
        return ee, leaf_key(kind, key)


def make_pki(root_cn: str = "Test Root") -> Pki:
    root = issue(root_cn, new_key("P-256"), None, ca=True, path_length=1)
    inter = issue(f"{root_cn} Intermediate", new_key("Ed25519"), root, ca=True, path_length=0)
    return Pki(root, inter)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def validator(pki: Pki) -> X509CredentialValidator:
    return X509CredentialValidator([pki.root.cert], now=clock)


def cred(*certs: Issued | bytes) -> Credential:
    return Credential.x509([c if isinstance(c, bytes) else c.der for c in certs])


def rejects(v: X509CredentialValidator, credential: Credential, key: bytes, match: str) -> ValidationError:
    with pytest.raises(ValidationError, match=match) as info:
        v.validate(credential, key)
    assert info.value.section == "5.3.1"  # the check itself is pinned by ``match``
    return info.value


# ---- accepted chains ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_valid_chain_every_mls_key_kind(pki: Pki, validator: X509CredentialValidator, kind: str) -> None:
    ee, key = pki.end_entity(kind)
    validator.validate(cred(ee, pki.inter), key)
    validator.validate(cred(ee, pki.inter, pki.root), key)  # the anchor itself may end the chain
    other_key = leaf_key(kind, new_key(kind))
    rejects(validator, cred(ee, pki.inter), other_key, "is not the leaf's signature_key")


def test_intermediate_configured_as_anchor_may_be_omitted(pki: Pki) -> None:
    ee, key = pki.end_entity()
    X509CredentialValidator([pki.inter.cert], now=clock).validate(cred(ee), key)
    rejects(
        X509CredentialValidator([pki.root.cert], now=clock), cred(ee), key, "not issued by a trusted anchor"
    )


def test_pinned_end_entity_anchor(pki: Pki) -> None:
    key = new_key("Ed25519")
    ee = issue("pinned", key, None, ca=False)
    X509CredentialValidator([ee.cert], now=clock).validate(cred(ee), leaf_key("Ed25519", key))
    rejects(
        X509CredentialValidator([pki.root.cert], now=clock),
        cred(ee),
        leaf_key("Ed25519", key),
        "not issued by a trusted anchor",
    )


def test_anchor_forms_der_pem_bundle(pki: Pki) -> None:
    ee, key = pki.end_entity()
    other = make_pki("Other Root")
    pem = b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (other.root, pki.root))
    forms: list[Sequence[x509.Certificate | bytes] | bytes] = [
        [pki.root.der],
        [pem],
        [other.root.cert, pki.root.der],
        pki.root.der,
        [pki.root.cert],
    ]
    for anchors in forms:
        X509CredentialValidator(anchors, now=clock).validate(cred(ee, pki.inter), key)
    rejects(X509CredentialValidator([other.root.der], now=clock), cred(ee, pki.inter), key, "trusted anchor")


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="at least one"):
        X509CredentialValidator([])
    with pytest.raises(ValueError, match="not a valid PEM or DER"):
        X509CredentialValidator([b"not a certificate"])
    with pytest.raises(ValueError, match="max_chain_length"):
        X509CredentialValidator([make_pki().root.cert], max_chain_length=0)
    with pytest.raises(TypeError):
        X509CredentialValidator(["a string"])  # type: ignore[list-item]


ISSUER_KEYS: list[tuple[str, Callable[[], Key], str | None]] = [
    ("rsa2048", lambda: rsa.generate_private_key(65537, 2048), None),
    ("ed448", ed448.Ed448PrivateKey.generate, None),
    ("p521", lambda: ec.generate_private_key(ec.SECP521R1()), None),
    ("rsa1024", lambda: rsa.generate_private_key(65537, 1024), "RSA key shorter than 2048"),
    (
        "secp256k1",
        lambda: ec.generate_private_key(ec.SECP256K1()),
        r"key on an unsupported curve \(secp256k1\)",
    ),
    ("dsa", lambda: dsa.generate_private_key(1024), "unsupported key type for an issuer"),
]


@pytest.mark.parametrize(
    ("root_key", "match"), [(k, m) for _, k, m in ISSUER_KEYS], ids=[i for i, _, _ in ISSUER_KEYS]
)
def test_issuer_key_types(root_key: Callable[[], Key], match: str | None) -> None:
    root = issue("Root", root_key(), None, ca=True)
    key = new_key("P-256")
    ee = issue("member", key, root, ca=False)
    v = X509CredentialValidator([root.cert], now=clock)
    if match is None:
        v.validate(cred(ee), leaf_key("P-256", key))
    else:
        rejects(v, cred(ee), leaf_key("P-256", key), match)


# ---- validity periods --------------------------------------------------------------------------------------


def test_validity_bounds_inclusive(pki: Pki) -> None:
    ee, key = pki.end_entity(not_before=NOW - DAY, not_after=NOW + DAY)

    def at(t: datetime) -> X509CredentialValidator:
        return X509CredentialValidator([pki.root.cert], now=lambda: t)

    for t in (NOW - DAY, NOW + DAY):
        at(t).validate(cred(ee, pki.inter), key)
    rejects(at(NOW - DAY - timedelta(seconds=1)), cred(ee, pki.inter), key, "not yet valid")
    rejects(at(NOW + DAY + timedelta(seconds=1)), cred(ee, pki.inter), key, "expired")


def test_expired_end_entity(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity(not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    rejects(validator, cred(ee, pki.inter), key, r"end-entity certificate 0 of 2 has expired")


def test_not_yet_valid_end_entity(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity(not_before=NOW + DAY, not_after=NOW + 10 * DAY)
    rejects(validator, cred(ee, pki.inter), key, r"end-entity certificate 0 of 2 is not yet valid")


def test_expired_intermediate(pki: Pki, validator: X509CredentialValidator) -> None:
    old = issue("Old Intermediate", new_key("P-256"), pki.root, ca=True, not_after=NOW - DAY)
    key = new_key("P-256")
    ee = issue("member", key, old, ca=False)
    rejects(validator, cred(ee, old), leaf_key("P-256", key), r"certificate 1 of 2 has expired")


def test_expired_anchor(pki: Pki) -> None:
    """The anchor that issued the last certificate must be valid too, also when it is not sent."""
    root_key = new_key("P-256")
    root = issue("Old Root", root_key, None, ca=True, not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    inter = issue("Inter", new_key("Ed25519"), root, ca=True, not_before=NOW - 30 * DAY)
    key = new_key("P-256")
    ee = issue("member", key, inter, ca=False)
    v = X509CredentialValidator([root.cert], now=clock)
    rejects(v, cred(ee, inter), leaf_key("P-256", key), "the issuing trust anchor has expired")
    rejects(v, cred(ee, inter, root), leaf_key("P-256", key), "certificate 2 of 3 has expired")
    renewed = issue("Old Root", root_key, None, ca=True)  # same name and key, new validity: accepted
    X509CredentialValidator([root.cert, renewed.cert], now=clock).validate(
        cred(ee, inter), leaf_key("P-256", key)
    )


def test_naive_clock_is_utc(pki: Pki) -> None:
    ee, key = pki.end_entity(not_before=NOW - DAY, not_after=NOW + DAY)
    X509CredentialValidator([pki.root.cert], now=lambda: NOW.replace(tzinfo=None)).validate(
        cred(ee, pki.inter), key
    )
    late = (NOW + 2 * DAY).replace(tzinfo=None)
    rejects(X509CredentialValidator([pki.root.cert], now=lambda: late), cred(ee, pki.inter), key, "expired")


def test_default_clock_is_system_time(pki: Pki) -> None:
    """Certificates around the fixed 2030 clock are not valid today: the default clock is really used."""
    ee, key = pki.end_entity(not_before=NOW - DAY)
    rejects(X509CredentialValidator([pki.root.cert]), cred(ee, pki.inter), key, "not yet valid")


# ---- chain structure and trust -----------------------------------------------------------------------------


def test_untrusted_root(pki: Pki) -> None:
    ee, key = pki.end_entity()
    rogue = make_pki("Test Root")  # same names, different keys: only the signature tells them apart
    v = X509CredentialValidator([rogue.root.cert], now=clock)
    rejects(v, cred(ee, pki.inter), key, "not issued by the issuing trust anchor")
    rejects(v, cred(ee, pki.inter, pki.root), key, "not issued by the issuing trust anchor")
    elsewhere = X509CredentialValidator([make_pki("Elsewhere").root.cert], now=clock)
    rejects(elsewhere, cred(ee, pki.inter), key, "not issued by a trusted anchor")


def test_rogue_intermediate_with_genuine_names(pki: Pki, validator: X509CredentialValidator) -> None:
    fake = issue(
        "Test Root Intermediate", new_key("Ed25519"), pki.root, ca=True, issuer_name=pki.root.cert.subject
    )
    forged = Issued(issue("fake", fake.key, None, ca=True).cert, fake.key)  # self-signed, key not certified
    key = new_key("P-256")
    ee = issue("member", key, forged, ca=False, issuer_name=pki.inter.cert.subject)
    rejects(validator, cred(ee, pki.inter), leaf_key("P-256", key), r"0 of 2 is not issued by certificate 1")


def test_out_of_order_and_missing_intermediate(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity()
    validator.validate(cred(ee, pki.inter, pki.root), key)
    rejects(validator, cred(ee, pki.root, pki.inter), key, "0 of 3 is not issued by certificate 1")
    rejects(validator, cred(pki.inter, ee), key, "1 of 2 is not issued by certificate 0|not a CA")
    rejects(validator, cred(ee, pki.root), key, "0 of 2 is not issued by certificate 1")
    rejects(validator, cred(ee), key, "not issued by a trusted anchor")
    rejects(validator, cred(ee, ee, pki.inter), key, "not a CA")


def test_chain_length_limits(pki: Pki) -> None:
    ee, key = pki.end_entity()
    rejects(
        X509CredentialValidator([pki.root.cert], now=clock, max_chain_length=1),
        cred(ee, pki.inter),
        key,
        "more than 1",
    )
    rejects(X509CredentialValidator([pki.root.cert], now=clock), Credential.x509([]), key, "no certificates")


def test_intermediate_without_ca_flag(pki: Pki, validator: X509CredentialValidator) -> None:
    for ca, usage in ((False, CA_USAGE), (None, CA_USAGE)):
        inter = issue("Not A CA", new_key("P-256"), pki.root, ca=ca, key_usage=usage)
        key = new_key("P-256")
        ee = issue("member", key, inter, ca=False)
        rejects(validator, cred(ee, inter), leaf_key("P-256", key), r"certificate 1 of 2 .*not a CA")


def test_issuer_without_key_cert_sign(pki: Pki, validator: X509CredentialValidator) -> None:
    inter = issue("No keyCertSign", new_key("P-256"), pki.root, ca=True, key_usage=EE_USAGE)
    key = new_key("P-256")
    ee = issue("member", key, inter, ca=False)
    rejects(validator, cred(ee, inter), leaf_key("P-256", key), "keyCertSign")
    inter_no_ku = issue("No keyUsage", new_key("P-256"), pki.root, ca=True, key_usage=None)
    ee2 = issue("member", key, inter_no_ku, ca=False)
    validator.validate(cred(ee2, inter_no_ku), leaf_key("P-256", key))  # keyUsage is optional


def test_path_length_constraint(pki: Pki, validator: X509CredentialValidator) -> None:
    # The intermediate has pathLen 0: it cannot issue another CA that issues the end entity.
    sub = issue("Sub CA", new_key("P-256"), pki.inter, ca=True)
    key = new_key("P-256")
    ee = issue("member", key, sub, ca=False)
    rejects(validator, cred(ee, sub, pki.inter), leaf_key("P-256", key), r"certificate 2 of 3: path length")
    # The root allows one intermediate below it; with the intermediate as anchor, pathLen 0 is the limit.
    rejects(
        X509CredentialValidator([pki.inter.cert], now=clock),
        cred(ee, sub),
        leaf_key("P-256", key),
        "path length constraint 0 exceeded",
    )
    root = issue("Deep Root", new_key("P-256"), None, ca=True, path_length=2)
    i1 = issue("I1", new_key("P-256"), root, ca=True)
    i2 = issue("I2", new_key("P-256"), i1, ca=True)
    ee3 = issue("member", key, i2, ca=False)
    X509CredentialValidator([root.cert], now=clock).validate(cred(ee3, i2, i1), leaf_key("P-256", key))
    tight = issue("Deep Root", root.key, None, ca=True, path_length=1)
    rejects(
        X509CredentialValidator([tight.cert], now=clock),
        cred(ee3, i2, i1),
        leaf_key("P-256", key),
        "the issuing trust anchor: path length constraint 1 exceeded",
    )


def test_name_constraints_refused(pki: Pki, validator: X509CredentialValidator) -> None:
    """Name constraints are not implemented, so an issuer carrying them is refused, critical or not."""
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None)
    for critical, match in (
        (True, "unsupported critical extension 2.5.29.30"),
        (False, "has name constraints"),
    ):
        inter = issue("Constrained", new_key("P-256"), pki.root, ca=True, extensions=[(nc, critical)])
        key = new_key("P-256")
        ee = issue("member", key, inter, ca=False)
        rejects(validator, cred(ee, inter), leaf_key("P-256", key), match)


def test_unknown_critical_extension(pki: Pki, validator: X509CredentialValidator) -> None:
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
    for critical, ok in ((False, True), (True, False)):
        ee, key = pki.end_entity(extensions=[(x509.UnrecognizedExtension(oid, b"\x05\x00"), critical)])
        if ok:
            validator.validate(cred(ee, pki.inter), key)
        else:
            rejects(validator, cred(ee, pki.inter), key, "unsupported critical extension 1.3.6.1.4.1.55555.1")


def test_end_entity_key_usage(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity(key_usage=CA_USAGE)
    rejects(validator, cred(ee, pki.inter), key, "digitalSignature")
    ee, key = pki.end_entity(key_usage=None)
    validator.validate(cred(ee, pki.inter), key)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + body


def _tbs_body(cert: x509.Certificate) -> bytes:
    tbs = cert.tbs_certificate_bytes
    return tbs[(2 if tbs[1] < 0x80 else 2 + (tbs[1] & 0x7F)) :]


ECDSA_SHA256 = _der(0x30, _der(0x06, bytes.fromhex("2a8648ce3d040302")))
ECDSA_SHA1 = _der(0x30, _der(0x06, bytes.fromhex("2a8648ce3d0401")))


def resigned(tbs_body: bytes, issuer_key: ec.EllipticCurvePrivateKey, sha1: bool = False) -> bytes:
    """A certificate from a hand-edited TBSCertificate body (cryptography's builder refuses SHA-1 and
    non-positive serial numbers), signed with ECDSA."""
    algorithm = ECDSA_SHA1 if sha1 else ECDSA_SHA256
    if sha1:
        assert ECDSA_SHA256 in tbs_body
        tbs_body = tbs_body.replace(ECDSA_SHA256, ECDSA_SHA1, 1)
    tbs = _der(0x30, tbs_body)
    signature = issuer_key.sign(tbs, ec.ECDSA(hashes.SHA1() if sha1 else hashes.SHA256()))
    return _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))


def test_sha1_signature_refused(pki: Pki, validator: X509CredentialValidator) -> None:
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = issue("P-256 Intermediate", inter_key, pki.root, ca=True)
    key = new_key("P-256")
    ee = issue("member", key, inter, ca=False)
    validator.validate(cred(ee, inter), leaf_key("P-256", key))
    sha1_der = resigned(_tbs_body(ee.cert), inter_key, sha1=True)
    assert isinstance(x509.load_der_x509_certificate(sha1_der).signature_hash_algorithm, hashes.SHA1)
    rejects(validator, cred(sha1_der, inter), leaf_key("P-256", key), "weak hash sha1")


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_non_positive_serial_refused(pki: Pki, validator: X509CredentialValidator) -> None:
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = issue("P-256 Intermediate", inter_key, pki.root, ca=True)
    key = new_key("P-256")
    ee = issue("member", key, inter, ca=False)
    body = _tbs_body(ee.cert)
    assert body[:5] == b"\xa0\x03\x02\x01\x02" and body[5] == 0x02  # [0] v3, then the serial INTEGER
    rest = body[7 + body[6] :]
    validator.validate(cred(resigned(body, inter_key), inter), leaf_key("P-256", key))
    for serial in (b"\x00", b"\xff"):
        bad = resigned(body[:5] + _der(0x02, serial) + rest, inter_key)
        rejects(validator, cred(bad, inter), leaf_key("P-256", key), "serial number that is not positive")
        with warnings.catch_warnings():
            warnings.simplefilter(
                "error"
            )  # cryptography's warning becomes an exception: still a ValidationError
            rejects(validator, cred(bad, inter), leaf_key("P-256", key), "not a valid DER")


# ---- key binding -------------------------------------------------------------------------------------------


def test_end_entity_key_differs_from_leaf_key(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity("P-256")
    other = leaf_key("P-256", new_key("P-256"))
    err = rejects(validator, cred(ee, pki.inter), other, "is not the leaf's signature_key")
    text = f"{err} {err!r} {err.message}"
    cert_key = ee.cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    for secretish in (other, key, cert_key):
        assert (
            secretish.hex() not in text and secretish.hex()[:16] not in text and repr(secretish) not in text
        )


@pytest.mark.parametrize(
    ("cert_kind", "leaf_kind"),
    [
        ("P-384", "P-256"),
        ("P-256", "P-521"),
        ("Ed25519", "P-256"),
        ("P-256", "Ed25519"),
        ("Ed448", "Ed25519"),
    ],
)
def test_wrong_key_kind(pki: Pki, validator: X509CredentialValidator, cert_kind: str, leaf_kind: str) -> None:
    ee, _ = pki.end_entity(cert_kind)
    rejects(
        validator,
        cred(ee, pki.inter),
        leaf_key(leaf_kind, new_key(leaf_kind)),
        f"holds a {cert_kind} key but the leaf's signature_key is {leaf_kind}",
    )


def test_curve_no_mls_suite_uses(pki: Pki, validator: X509CredentialValidator) -> None:
    k1 = ec.generate_private_key(ec.SECP256K1())
    ee = issue("secp256k1 member", k1, pki.inter, ca=False)
    # Same length as a P-256 point: the curve itself must be checked, not only the encoding.
    point = k1.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    rejects(validator, cred(ee, pki.inter), point, r"curve no MLS cipher suite uses \(secp256k1\)")
    rsa_ee = issue("rsa member", rsa.generate_private_key(65537, 1024), pki.inter, ca=False)
    rejects(validator, cred(rsa_ee, pki.inter), point, "key type no MLS cipher suite uses")


def test_leaf_key_of_no_mls_length(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity()
    rejects(validator, cred(ee, pki.inter), key[:-1], "length no MLS signature scheme uses")


# ---- malformed input ---------------------------------------------------------------------------------------


def test_garbage_der(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity()
    for bad in (b"", b"garbage", ee.der[:-1], ee.der + b"\x00", b"\x30\x03\x02\x01\x01"):
        rejects(validator, cred(bad, pki.inter), key, "end-entity certificate 0 of 2 is not a valid DER")
        rejects(validator, cred(ee, bad), key, "certificate 1 of 2 is not a valid DER")
        with pytest.raises(ValidationError, match="not a valid DER"):
            identity_of(cred(bad))


@pytest.mark.filterwarnings("error")  # cryptography's warnings about odd content must not escape either
def test_mutated_certificates_only_raise_validation_error(
    pki: Pki, validator: X509CredentialValidator
) -> None:
    ee, key = pki.end_entity()
    rng = random.Random(9420)
    for _ in range(500):
        target = rng.randrange(2)
        original = (ee.der, pki.inter.der)[target]
        data = bytearray(original)
        op = rng.randrange(3)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            if op == 0:
                data[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[i] ^= rng.randrange(1, 256)  # another value: the byte's own (1 in 256) is no damage
            else:
                del data[i : i + rng.randint(1, 8)]
        # The edits are XOR masks and deletions chosen without looking at the content, so whether they
        # cancel out is the same every run (the keys, and so the bytes, are new each run).
        assert bytes(data) != original
        chain = [bytes(data), pki.inter.der] if target == 0 else [ee.der, bytes(data)]
        with pytest.raises(ValidationError) as info:
            validator.validate(Credential.x509(chain), key)
        assert info.value.section == "5.3.1"  # random damage: any of the credential checks
        try:
            identity_of(Credential.x509(chain))
        except ValidationError as e:
            assert e.section == "5.3.1"


def fixed_pki() -> tuple[Pki, Issued, bytes]:
    """A root, an intermediate and a P-256 end entity that are the same bytes every run: fixed keys, fixed
    serial numbers, Ed25519 issuers (deterministic signatures). The serial numbers are ones whose
    signatures end in the octet 0x00 (so a signatureValue with any unused-bits count still parses)."""
    root_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    inter_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    root = issue("Fixed Root", root_key, None, ca=True, path_length=1, serial=1)
    inter = issue("Fixed Root Intermediate", inter_key, root, ca=True, path_length=0, serial=23)
    ee_key = ec.derive_private_key(9420, ec.SECP256R1())
    ee = issue("member P-256", ee_key, inter, ca=False, serial=14)
    assert ee.der[-1] == inter.der[-1] == 0
    return Pki(root, inter), ee, leaf_key("P-256", ee_key)


def _with_unused_bits(der: bytes, signature: bytes, unused: int) -> bytes:
    """``der`` with the unused-bits octet of its signatureValue BIT STRING (right before the signature
    octets, at the very end: RFC 5280 §4.1.1.3) set to ``unused``; nothing else changes."""
    assert der.endswith(b"\x00" + signature)
    return der[: -len(signature) - 1] + bytes([unused]) + signature


@pytest.mark.filterwarnings("error")
def test_signature_bit_string_with_unused_bits_refused() -> None:
    """Regression, found by running the mutation test above with fresh keys and other seeds (once in
    150,000 mutations): one octet of an end-entity certificate, its signatureValue's unused-bits count,
    changed 0x00 -> 0x04. ``cryptography`` ignores that count, so the damaged certificate still verified
    whenever the last signature octet's low four bits were zero (1 key in 16). Here the certificates are
    fixed so the case reproduces every run."""
    fixed, ee, key = fixed_pki()
    validator = X509CredentialValidator([fixed.root.cert], now=clock)
    validator.validate(cred(ee, fixed.inter), key)
    found = _with_unused_bits(ee.der, ee.cert.signature, 4)  # the bytes the mutation test produced
    assert x509.load_der_x509_certificate(found).signature == ee.cert.signature  # parses: same octets
    for unused in range(1, 8):
        bad_ee = _with_unused_bits(ee.der, ee.cert.signature, unused)
        bad_inter = _with_unused_bits(fixed.inter.der, fixed.inter.cert.signature, unused)
        for chain, label in (
            ([bad_ee, fixed.inter.der], "end-entity certificate 0 of 2"),
            ([ee.der, bad_inter], "certificate 1 of 2"),
        ):
            err = rejects(
                validator,
                Credential.x509(chain),
                key,
                f"^RFC 9420 §5.3.1: {label} has a signature that is not a whole number of octets$",
            )
            assert err.rule == "5.3.1/x509-signature-bit-string"
        with pytest.raises(ValidationError, match="not a whole number of octets"):
            identity_of(cred(bad_ee))


@pytest.mark.filterwarnings("error")
def test_every_single_byte_damage_is_refused() -> None:
    """Deterministic companion of the random mutation test: every octet of both certificates of a fixed
    chain, flipped in its lowest, third and highest bit, inverted, or deleted, is refused with a
    credential-check ValidationError. (Complete for single-octet damage; the random test covers the rest.)"""
    fixed, ee, key = fixed_pki()
    validator = X509CredentialValidator([fixed.root.cert], now=clock)
    validator.validate(cred(ee, fixed.inter), key)
    for target, original in enumerate((ee.der, fixed.inter.der)):
        for i in range(len(original)):
            before, octet, after = original[:i], original[i], original[i + 1 :]
            damaged = [before + bytes([octet ^ mask]) + after for mask in (0x01, 0x04, 0x80, 0xFF)]
            damaged.append(before + after)
            for data in damaged:
                chain = [data, fixed.inter.der] if target == 0 else [ee.der, data]
                with pytest.raises(ValidationError) as info:
                    validator.validate(Credential.x509(chain), key)
                assert info.value.section == "5.3.1", (target, i, data.hex())


def test_unknown_version_and_duplicate_extension(pki: Pki, validator: X509CredentialValidator) -> None:
    ee, key = pki.end_entity()
    v3, basic_constraints, key_usage = (
        b"\xa0\x03\x02\x01\x02",
        b"\x06\x03\x55\x1d\x13",
        b"\x06\x03\x55\x1d\x0f",
    )
    assert ee.der.count(v3) == 1 and ee.der.count(key_usage) == 1
    bad_version = ee.der.replace(v3, b"\xa0\x03\x02\x01\x05")  # "v6": cryptography raises InvalidVersion
    duplicate = ee.der.replace(key_usage, basic_constraints)  # two basicConstraints: DuplicateExtension
    for bad in (bad_version, duplicate):
        rejects(validator, cred(bad, pki.inter), key, "end-entity certificate 0 of 2 is not a valid DER")
        with pytest.raises(ValidationError):
            identity_of(cred(bad))


def test_malformed_extension_value(pki: Pki, validator: X509CredentialValidator) -> None:
    """A keyUsage whose extnValue is not a BIT STRING: the certificate parses, its extensions do not."""
    bogus = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.15"), b"\x02\x01\x05")
    ee, key = pki.end_entity(key_usage=None, extensions=[(bogus, False)])
    x509.load_der_x509_certificate(ee.der)  # the outer structure is fine
    rejects(validator, cred(ee, pki.inter), key, "end-entity certificate 0 of 2 is not a valid DER")
    with pytest.raises(ValidationError):
        identity_of(cred(ee))


# ---- credential types --------------------------------------------------------------------------------------


def test_basic_credentials(pki: Pki) -> None:
    strict = X509CredentialValidator([pki.root.cert], now=clock)
    lenient = X509CredentialValidator([pki.root.cert], now=clock, allow_basic=True)
    key = leaf_key("Ed25519", new_key("Ed25519"))
    rejects(strict, Credential.basic(b"alice"), key, "basic credentials are not accepted")
    lenient.validate(Credential.basic(b"alice"), key)
    rejects(lenient, Credential.basic(b""), key, "non-empty identity")
    ee, ee_key = pki.end_entity()
    lenient.validate(cred(ee, pki.inter), ee_key)
    rejects(lenient, cred(ee), ee_key, "trusted anchor")  # allow_basic does not relax X.509 checks


def test_identity_of(pki: Pki) -> None:
    assert identity_of(Credential.basic(b"alice")) == b"alice"
    key = new_key("P-256")
    plain = issue("alice", key, pki.inter, ca=False)
    assert identity_of(cred(plain, pki.inter)) == name("alice").public_bytes()
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("alice.example"),
            x509.RFC822Name("alice@example.com"),
            x509.UniformResourceIdentifier("im:alice@example.com"),
        ]
    )
    full = issue("alice", key, pki.inter, ca=False, extensions=[(san, False)])
    assert identity_of(cred(full)) == b"im:alice@example.com"
    mail = x509.SubjectAlternativeName([x509.DNSName("alice.example"), x509.RFC822Name("alice@example.com")])
    assert (
        identity_of(cred(issue("a", key, pki.inter, ca=False, extensions=[(mail, True)])))
        == b"alice@example.com"
    )
    dns = x509.SubjectAlternativeName([x509.DNSName("alice.example")])
    assert (
        identity_of(cred(issue("a", key, pki.inter, ca=False, extensions=[(dns, False)]))) == b"alice.example"
    )
    with pytest.raises(ValidationError, match="no certificates"):
        identity_of(Credential.x509([]))
    with pytest.raises(ValidationError, match="non-empty"):
        identity_of(Credential.basic(b""))


# ---- end to end: the group engine with X.509 credentials ---------------------------------------------------


def member(pki: Pki, suite: int, cn: str, issuer: Issued | None = None) -> Client:
    kind = next(k for k, (s, _) in KINDS.items() if s == suite)
    key = new_key(kind)
    ca = issuer or pki.inter
    ee = issue(cn, key, ca, ca=False)
    store = SoftwareKeyStore()
    signer = store.add_signer(mls_signer(kind, key))
    chain = [ee.der, ca.der] if issuer is None else [ee.der]
    return Client(store, suite, Credential.x509(chain), signer=signer)


def config(v: CredentialValidator) -> GroupConfig:
    return GroupConfig(leaf_policy=LeafPolicy(credential_validator=v))


@pytest.mark.parametrize("suite", [1, 2])
def test_group_with_x509_credentials(pki: Pki, suite: int) -> None:
    cfg = config(X509CredentialValidator([pki.root.cert], now=clock))
    alice, bob, carol = (member(pki, suite, cn) for cn in ("alice", "bob", "carol"))
    ga = alice.create_group(config=cfg)
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome, config=cfg)

    staged = ga.commit(CommitOptions(add=[carol.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.commit is not None and staged.welcome is not None
    processed = gb.process(staged.commit)
    assert isinstance(processed, StagedCommit)
    gb.merge(processed)
    gc = carol.join(staged.welcome, config=cfg)
    assert ga.epoch_authenticator == gb.epoch_authenticator == gc.epoch_authenticator
    assert {identity_of(leaf.credential) for _, leaf in gc.members()} == {
        name(cn).public_bytes() for cn in ("alice", "bob", "carol")
    }

    msg = gc.protect(b"hello from carol")
    for g in (ga, gb):
        out = g.process(msg)
        assert getattr(out, "data", None) == b"hello from carol"

    # A joiner whose validator does not trust our root refuses the group it is welcomed into.
    dave = member(pki, suite, "dave")
    staged = ga.commit(CommitOptions(add=[dave.key_package().key_package]))
    assert staged.welcome is not None
    distrustful = config(X509CredentialValidator([make_pki("Other Root").root.cert], now=clock))
    with pytest.raises(ValidationError) as info:
        dave.join(staged.welcome, config=distrustful)
    assert info.value.rule == "5.3.1/x509-trust-anchor"
    ga.discard_pending_commit()

    # A KeyPackage whose chain ends at an untrusted root is refused by the committer.
    rogue = make_pki("Test Root")
    eve = member(rogue, suite, "eve")
    epoch = ga.epoch
    with pytest.raises(ValidationError) as info:
        ga.commit(CommitOptions(add=[eve.key_package().key_package]))
    assert info.value.rule == "5.3.1/x509-issued-by"
    assert ga.pending_commit is None and ga.epoch == epoch


def test_receiver_rejects_commit_adding_untrusted_member(pki: Pki) -> None:
    """A lenient committer adds an untrusted member; a member enforcing X.509 refuses the commit."""
    suite = 2
    strict = config(X509CredentialValidator([pki.root.cert], now=clock))
    alice, bob = member(pki, suite, "alice"), member(pki, suite, "bob")
    ga = alice.create_group(config=config(AcceptAnyCredential()))
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome, config=strict)
    eve = member(make_pki("Rogue Root"), suite, "eve")
    staged = ga.commit(CommitOptions(add=[eve.key_package().key_package]))
    assert staged.commit is not None
    with pytest.raises(ValidationError) as info:
        gb.process(staged.commit)
    assert info.value.rule == "5.3.1/x509-trust-anchor"


def test_basic_member_refused_by_x509_group(pki: Pki) -> None:
    suite = 1
    cfg = config(X509CredentialValidator([pki.root.cert], now=clock))
    alice = member(pki, suite, "alice")
    ga = alice.create_group(config=cfg)
    mallory = Client(SoftwareKeyStore(), suite, Credential.basic(b"mallory"))
    with pytest.raises(ValidationError) as info:
        ga.commit(CommitOptions(add=[mallory.key_package().key_package]))
    assert info.value.rule == "5.3.1/basic-credential-allowed"


def test_certificate_struct_roundtrip(pki: Pki) -> None:
    """The credential survives the wire encoding unchanged (validation runs on decoded leaves)."""
    c = cred(pki.inter, pki.root)
    assert Credential.from_bytes(c.to_bytes()) == c
    assert c.certificates == (Certificate(pki.inter.der), Certificate(pki.root.der))


def test_commit_path_changes_own_credential(pki: Pki) -> None:
    """``CommitOptions.credential``: the UpdatePath leaf carries the member's new credential (RFC 9420
    §5.3.1, §7.5); one its own validator refuses leaves no pending commit and no new key."""
    suite, kind = 2, "P-256"
    strict = config(X509CredentialValidator([pki.root.cert], now=clock))
    key = new_key(kind)
    store = SoftwareKeyStore()
    signer = store.add_signer(mls_signer(kind, key))
    first = issue("alice", key, pki.inter, ca=False)
    alice = Client(store, suite, cred(first, pki.inter), signer=signer)
    bob = member(pki, suite, "bob")
    ga = alice.create_group(config=strict)
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome, config=strict)

    untrusted = make_pki("Elsewhere")
    keys_before = store.refs()
    for refused, rule in (
        (cred(issue("alice", key, untrusted.inter, ca=False), untrusted.inter), "5.3.1/x509-trust-anchor"),
        (cred(issue("alice", new_key(kind), pki.inter, ca=False), pki.inter), "5.3.1/x509-key-match"),
    ):
        with pytest.raises(ValidationError) as info:
            ga.commit(CommitOptions(credential=refused))
        assert info.value.rule == rule
        assert ga.pending_commit is None and store.refs() == keys_before

    renewed = cred(issue("alice renewed", key, pki.inter, ca=False), pki.inter)
    staged = ga.commit(CommitOptions(credential=renewed))
    assert staged.commit is not None
    processed = gb.process(staged.commit)
    assert isinstance(processed, StagedCommit)
    gb.merge(processed)
    ga.merge_pending_commit()
    assert ga.epoch_authenticator == gb.epoch_authenticator
    for g in (ga, gb):
        leaf = g.state.tree.leaf(0)
        assert leaf is not None and leaf.credential == renewed


def test_external_senders_validated_on_join(pki: Pki) -> None:
    """A joiner runs its credential validator on the group context's external senders (§12.1.8.1)."""
    suite = 2
    strict = config(X509CredentialValidator([pki.root.cert], now=clock))
    rogue = member(make_pki("Rogue Root"), suite, "rogue sender")
    trusted = member(pki, suite, "trusted sender")
    for sender, refused in ((rogue, True), (trusted, False)):
        ext = ExternalSenders((ExternalSender(sender.signer.public_key, sender.credential),)).to_extension()
        ga = member(pki, suite, "alice").create_group(extensions=[ext])
        bob = member(pki, suite, "bob")
        staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
        assert staged.welcome is not None
        if refused:
            with pytest.raises(ValidationError) as info:
                bob.join(staged.welcome, config=strict)
            assert info.value.rule == "5.3.1/x509-trust-anchor"
        else:
            assert bob.join(staged.welcome, config=strict).epoch == 1
