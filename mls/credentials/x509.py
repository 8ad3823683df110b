"""X.509 credential validation (RFC 9420 §5.3, §5.3.1).

:class:`X509CredentialValidator` implements the
:class:`~mls.tree.leaf_validation.CredentialValidator` protocol for ``x509`` credentials: it plugs into
``LeafPolicy(credential_validator=...)`` and so runs on every leaf the group engine validates (the
ratchet tree on join, KeyPackages of Add proposals, Update and commit-path leaves).

Design choice: a manual path check, not ``cryptography.x509.verification``
-------------------------------------------------------------------------------
``cryptography``'s ``PolicyBuilder`` verifier applies the CA/Browser-Forum Web-PKI profile. With the
cryptography version this project uses it refuses CAs whose key is Ed25519/Ed448 ("Forbidden public key
algorithm") — the natural choice for the Ed25519/Ed448 MLS suites — requires an authorityKeyIdentifier
on end-entity certificates, and cannot be told to drop those rules. MLS also fixes the chain order
(end-entity first, §5.3), which that path builder ignores. So the chain is checked here with the
``cryptography.x509`` primitives only (parsing, ``verify_directly_issued_by``, extension accessors); no
signature or ASN.1 code is written by hand.

What a certificate chain must satisfy
-------------------------------------
* every ``cert_data`` parses as one DER certificate (trailing bytes, malformed or duplicate
  extensions, non-positive serial numbers and a signature BIT STRING with unused bits are rejected),
  and there are 1..``max_chain_length`` of them;
* ``certificates[i]`` is directly issued by ``certificates[i + 1]`` (issuer name and signature), and the
  last one either *is* a configured trust anchor (byte-identical DER) or is directly issued by one. A
  chain may omit intermediates only by configuring them as anchors (§5.3 lets a chain omit certificates
  peers already possess); a chain that continues past an anchor must still be well formed to its end;
* the validity period of every certificate — and of the anchor that issued the last one — contains
  ``now()`` (bounds inclusive);
* every issuer (including the issuing anchor) has basicConstraints ``cA = TRUE``, its
  pathLenConstraint is not exceeded by the non-self-issued intermediates below it, it has
  ``keyCertSign`` if it carries keyUsage, and it carries no nameConstraints (not implemented here, so
  refused: failing closed is safer than ignoring a constraint the CA operator relied on);
* issuer keys are RSA >= 2048 bits, ECDSA P-256/P-384/P-521, Ed25519 or Ed448; signatures made with
  MD5 or SHA-1 are refused;
* no certificate carries a critical extension other than basicConstraints, keyUsage,
  extendedKeyUsage, subjectAltName, subjectKeyIdentifier and authorityKeyIdentifier (RFC 5280 §4.2);
* the end-entity certificate has ``digitalSignature`` if it carries keyUsage, and its public key, in
  the MLS encoding (§5.1.1: raw RFC 8032 bytes for Ed25519/Ed448, the uncompressed SEC1 point for ECDSA
  P-256/P-384/P-521), is identical to the leaf's ``signature_key``; a key of another type or on another
  curve than the leaf key is refused with a message naming both kinds.

Not covered (the application's part of the Authentication Service): revocation (CRL/OCSP), certificate
policies, the purposes in extendedKeyUsage (MLS has none registered; the extension is accepted but not
interpreted), matching presented identifiers against the application's reference identifiers (see
:func:`identity_of`), and checking that a replacement credential is a valid successor of the old one
(§5.3.1, Update and commit paths).

Errors are :class:`~mls.errors.ValidationError` with section ``"5.3.1"`` and one rule id per check
(``"5.3.1/x509-expired"``, …); they name certificates by position only and never contain key bytes or
peer-supplied strings.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from mls.credentials.credential import Certificate, Credential, CredentialType
from mls.errors import ValidationError
from mls.tree.leaf_validation import BasicCredentialValidator, require_basic_identity

__all__ = ["X509CredentialValidator", "identity_of"]

_DER = serialization.Encoding.DER

#: The MLS signature-key kinds by encoded length (§5.1.1); the lengths are all distinct.
_KIND_BY_KEY_LENGTH = {32: "Ed25519", 57: "Ed448", 65: "P-256", 97: "P-384", 133: "P-521"}
#: ``cryptography`` curve names of the ECDSA curves MLS cipher suites use.
_MLS_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
#: Extensions whose meaning this module processes (or which carry no constraint), so they may be critical.
_UNDERSTOOD_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)
_MIN_RSA_BITS = 2048

#: The exceptions ``cryptography`` raises for malformed or unsupported certificate content. Its warnings
#: about non-conforming content (a non-positive serial number, a bad attribute length) are exceptions
#: when warnings are turned into errors, so they are caught too.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    Warning,
)

_E = TypeVar("_E", bound=x509.ExtensionType)


def _fail(rule: str, message: str) -> ValidationError:
    """A credential validation failure (§5.3.1); ``rule`` is the check's id, ``"5.3.1/<check>"``."""
    return ValidationError(rule, message)


def _certificates(credential: Credential) -> tuple[Certificate, ...]:
    """The certificate chain of an ``x509`` credential, which must not be empty (§5.3.1)."""
    if not credential.certificates:
        raise _fail("5.3.1/x509-chain-non-empty", "the X.509 credential has no certificates")
    return credential.certificates


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _label(index: int, length: int) -> str:
    """How a certificate is named in errors: by position, never by (peer-controlled) content."""
    role = "end-entity certificate" if index == 0 else "certificate"
    return f"{role} {index} of {length}"


def _load_anchor(anchor: x509.Certificate | bytes) -> list[x509.Certificate]:
    """A configured trust anchor: a certificate object, DER bytes, or PEM bytes (possibly a bundle)."""
    if isinstance(anchor, x509.Certificate):
        return [anchor]
    if not isinstance(anchor, bytes | bytearray | memoryview):
        raise TypeError(f"a trust anchor must be an x509.Certificate or bytes, not {type(anchor).__name__}")
    data = bytes(anchor)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return list(x509.load_pem_x509_certificates(data))
        return [x509.load_der_x509_certificate(data)]
    except _PARSE_ERRORS as e:
        raise ValueError(f"a trust anchor is not a valid PEM or DER certificate: {e}") from None


def _parse(data: bytes, label: str) -> x509.Certificate:
    """One ``cert_data``. ``cryptography`` parses some fields lazily; they are all read here so that a
    malformed one fails now, as a :class:`ValidationError`, rather than later as another exception."""
    try:
        cert = x509.load_der_x509_certificate(data)
        for field in (
            "version",
            "serial_number",
            "subject",
            "issuer",
            "not_valid_before_utc",
            "not_valid_after_utc",
            "extensions",
            "signature_algorithm_oid",
        ):
            getattr(cert, field)
    except _PARSE_ERRORS:
        raise _fail("5.3.1/x509-der", f"{label} is not a valid DER certificate") from None
    if not _signature_is_octet_aligned(data, cert):
        raise _fail(
            "5.3.1/x509-signature-bit-string", f"{label} has a signature that is not a whole number of octets"
        )
    if cert.serial_number <= 0:  # RFC 5280 §4.1.2.2; cryptography only warns (for now)
        raise _fail("5.3.1/x509-serial-number", f"{label} has a serial number that is not positive")
    return cert


def _signature_is_octet_aligned(data: bytes, cert: x509.Certificate) -> bool:
    """The signatureValue BIT STRING (RFC 5280 §4.1.1.3) has no unused bits.

    Every signature this module accepts is a whole number of octets (RSA: RFC 3279 §2.2.1; ECDSA: the DER
    Ecdsa-Sig-Value, RFC 3279 §2.2.3; Ed25519/Ed448: RFC 8410 §6). ``cryptography`` returns the BIT
    STRING's octets as :attr:`~cryptography.x509.Certificate.signature` and ignores its unused-bits count,
    so a certificate whose count was altered (a damaged or re-encoded certificate: other bytes, another
    fingerprint) would still verify. The BIT STRING is the certificate's last element (trailing data is
    refused by the parser), so its unused-bits octet is the one right before the signature octets.
    """
    return data.endswith(b"\x00" + cert.signature)


def _check_validity(cert: x509.Certificate, now: datetime, label: str) -> None:
    if now < cert.not_valid_before_utc:
        raise _fail("5.3.1/x509-not-yet-valid", f"{label} is not yet valid")
    if now > cert.not_valid_after_utc:
        raise _fail("5.3.1/x509-expired", f"{label} has expired")


def _check_critical_extensions(cert: x509.Certificate, label: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _UNDERSTOOD_EXTENSIONS:
            raise _fail(
                "5.3.1/x509-critical-extension",
                f"{label} has an unsupported critical extension {ext.oid.dotted_string}",
            )


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _is_self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _check_issuer_key(issuer: x509.Certificate, label: str) -> None:
    try:
        key = issuer.public_key()
    except _PARSE_ERRORS:
        raise _fail("5.3.1/x509-issuer-key-parse", f"{label} has an unsupported public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise _fail(
                "5.3.1/x509-issuer-rsa-size", f"{label} has an RSA key shorter than {_MIN_RSA_BITS} bits"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _MLS_CURVES:
            raise _fail(
                "5.3.1/x509-issuer-curve", f"{label} has a key on an unsupported curve ({key.curve.name})"
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):  # DSA, X25519, …
        raise _fail("5.3.1/x509-issuer-key-type", f"{label} has an unsupported key type for an issuer")


def _check_issued_by(
    child: x509.Certificate, child_label: str, issuer: x509.Certificate, issuer_label: str, below: int
) -> None:
    """``child`` is directly and validly issued by the CA ``issuer``, with ``below`` intermediates
    (non-self-issued, excluding the end entity) under the issuer in the path."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise _fail(
            "5.3.1/x509-issuer-is-ca",
            f"{issuer_label} issues certificates but is not a CA (basicConstraints cA)",
        )
    if constraints.path_length is not None and below > constraints.path_length:
        raise _fail(
            "5.3.1/x509-path-length",
            f"{issuer_label}: path length constraint {constraints.path_length} exceeded",
        )
    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise _fail(
            "5.3.1/x509-key-cert-sign",
            f"{issuer_label} is not allowed to sign certificates (keyUsage keyCertSign)",
        )
    if _extension(issuer, x509.NameConstraints) is not None:
        raise _fail(
            "5.3.1/x509-name-constraints",
            f"{issuer_label} has name constraints, which this validator does not support",
        )
    _check_issuer_key(issuer, issuer_label)
    try:
        algorithm = child.signature_hash_algorithm
    except _PARSE_ERRORS:
        raise _fail(
            "5.3.1/x509-signature-algorithm", f"{child_label} has an unsupported signature algorithm"
        ) from None
    if isinstance(algorithm, _WEAK_HASHES):
        raise _fail("5.3.1/x509-weak-hash", f"{child_label} is signed with the weak hash {algorithm.name}")
    try:
        child.verify_directly_issued_by(issuer)
    except (*_PARSE_ERRORS, InvalidSignature):
        raise _fail("5.3.1/x509-issued-by", f"{child_label} is not issued by {issuer_label}") from None


def _mls_public_key(cert: x509.Certificate, label: str) -> tuple[str, bytes]:
    """The certificate's key in the MLS encoding (§5.1.1) and its kind (``"Ed25519"``, ``"P-256"``, …)."""
    try:
        key = cert.public_key()
    except _PARSE_ERRORS:
        raise _fail("5.3.1/x509-leaf-key-parse", f"{label} has an unsupported public key") from None
    raw, raw_pub = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", key.public_bytes(raw, raw_pub)
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", key.public_bytes(raw, raw_pub)
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = _MLS_CURVES.get(key.curve.name)
        if kind is None:
            raise _fail(
                "5.3.1/x509-leaf-curve",
                f"{label} has a key on a curve no MLS cipher suite uses ({key.curve.name})",
            )
        point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return kind, point
    raise _fail("5.3.1/x509-leaf-key-type", f"{label} has a key type no MLS cipher suite uses")


def _check_end_entity(cert: x509.Certificate, label: str, signature_key: bytes) -> None:
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise _fail(
            "5.3.1/x509-digital-signature", f"{label} is not allowed to sign (keyUsage digitalSignature)"
        )
    leaf_kind = _KIND_BY_KEY_LENGTH.get(len(signature_key))
    if leaf_kind is None:
        raise _fail(
            "5.3.1/signature-key-length", "the leaf's signature_key has a length no MLS signature scheme uses"
        )
    cert_kind, cert_key = _mls_public_key(cert, label)
    if cert_kind != leaf_kind:
        raise _fail(
            "5.3.1/x509-key-kind-match",
            f"{label} holds a {cert_kind} key but the leaf's signature_key is {leaf_kind}",
        )
    if not hmac.compare_digest(cert_key, signature_key):
        raise _fail("5.3.1/x509-key-match", f"{label}'s public key is not the leaf's signature_key")


class X509CredentialValidator:
    """Accepts ``x509`` credentials whose chain leads to one of ``trust_anchors`` (see the module doc).

    ``trust_anchors`` are certificate objects or DER/PEM bytes (a PEM item may hold several
    certificates), or a single one of those. ``now`` returns the current time (default: the system
    clock, UTC; a naive datetime is taken as UTC). Basic credentials are refused unless ``allow_basic``,
    in which case they get the :class:`~mls.tree.leaf_validation.BasicCredentialValidator` check (a
    non-empty identity).
    Misconfiguration raises ``ValueError``/``TypeError`` at construction; bad credentials raise
    :class:`~mls.errors.ValidationError` (section ``"5.3.1"``) and nothing else.
    """

    def __init__(
        self,
        trust_anchors: Sequence[x509.Certificate | bytes] | x509.Certificate | bytes,
        *,
        now: Callable[[], datetime] | None = None,
        allow_basic: bool = False,
        max_chain_length: int = 8,
    ) -> None:
        if max_chain_length < 1:
            raise ValueError("max_chain_length must be at least 1")
        items: Sequence[x509.Certificate | bytes] = (
            [trust_anchors] if isinstance(trust_anchors, bytes | x509.Certificate) else trust_anchors
        )  # one anchor passed bare rather than in a sequence
        anchors = [cert for item in items for cert in _load_anchor(item)]
        if not anchors:
            raise ValueError("at least one trust anchor is required")
        self._anchors = tuple(anchors)
        self._anchor_der = frozenset(a.public_bytes(_DER) for a in anchors)
        self._anchors_by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for a in anchors:
            self._anchors_by_subject.setdefault(a.subject, []).append(a)
        self._now = now or _utc_now
        self.allow_basic = allow_basic
        self.max_chain_length = max_chain_length

    def __repr__(self) -> str:
        return (
            f"X509CredentialValidator(anchors={len(self._anchors)}, allow_basic={self.allow_basic}, "
            f"max_chain_length={self.max_chain_length})"
        )

    @property
    def trust_anchors(self) -> tuple[x509.Certificate, ...]:
        return self._anchors

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        """Raise :class:`ValidationError` (section ``"5.3.1"``) unless the credential is acceptable and
        bound to ``signature_key``."""
        if credential.credential_type == CredentialType.basic:
            if not self.allow_basic:
                raise _fail(
                    "5.3.1/basic-credential-allowed",
                    "basic credentials are not accepted (an X.509 credential is required)",
                )
            BasicCredentialValidator().validate(credential, signature_key)
            return
        if credential.credential_type != CredentialType.x509:
            raise _fail(
                "5.3.1/x509-credential-type", f"credential type {credential.credential_type} is not accepted"
            )
        chain = self.verify_chain(credential)
        _check_end_entity(chain[0], _label(0, len(chain)), signature_key)

    def verify_chain(self, credential: Credential) -> list[x509.Certificate]:
        """The parsed chain of an ``x509`` credential after the path checks (not the key binding)."""
        entries = _certificates(credential)
        n = len(entries)
        if n > self.max_chain_length:
            raise _fail(
                "5.3.1/x509-chain-length",
                f"the certificate chain has {n} certificates, more than {self.max_chain_length}",
            )
        chain = [_parse(entry.cert_data, _label(i, n)) for i, entry in enumerate(entries)]
        now = self._current_time()
        for i, cert in enumerate(chain):
            _check_validity(cert, now, _label(i, n))
            _check_critical_extensions(cert, _label(i, n))
        below = 0  # non-self-issued intermediates between the end entity and the next issuer
        for i in range(1, n):
            _check_issued_by(chain[i - 1], _label(i - 1, n), chain[i], _label(i, n), below)
            if not _is_self_issued(chain[i]):
                below += 1
        if chain[-1].public_bytes(_DER) not in self._anchor_der:
            self._check_issued_by_anchor(chain[-1], _label(n - 1, n), below, now)
        return chain

    def _current_time(self) -> datetime:
        t = self._now()
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t

    def _check_issued_by_anchor(self, last: x509.Certificate, label: str, below: int, now: datetime) -> None:
        candidates = self._anchors_by_subject.get(last.issuer, [])
        first_error: ValidationError | None = None
        for anchor in candidates:
            try:
                _check_validity(anchor, now, "the issuing trust anchor")
                _check_issued_by(last, label, anchor, "the issuing trust anchor", below)
            except ValidationError as e:
                first_error = first_error or e
                continue
            return
        if first_error is not None:
            raise first_error
        raise _fail("5.3.1/x509-trust-anchor", f"{label} is not issued by a trusted anchor")


def identity_of(credential: Credential) -> bytes:
    """The presented identity of a credential, for matching against the application's reference identity.

    * ``basic``: the ``identity`` bytes;
    * ``x509``: from the end-entity certificate's subjectAltName, the first URI, else the first
      rfc822Name (e-mail), else the first dNSName, as UTF-8; without any of those, the DER encoding of
      the subject name.

    The chain is *not* validated here: validate the credential first (``X509CredentialValidator``). A
    certificate can present several identifiers (§5.3); applications that need them all should read the
    subjectAltName themselves. Raises :class:`ValidationError` (section ``"5.3.1"``) for an unparsable
    credential.
    """
    if credential.credential_type == CredentialType.basic:
        return require_basic_identity(credential)
    if credential.credential_type != CredentialType.x509:
        raise _fail(
            "5.3.1/identity-credential-type",
            f"credential type {credential.credential_type} has no known identity",
        )
    certificates = _certificates(credential)
    cert = _parse(certificates[0].cert_data, _label(0, len(certificates)))
    san = _extension(cert, x509.SubjectAlternativeName)
    if san is not None:
        for kind in (x509.UniformResourceIdentifier, x509.RFC822Name, x509.DNSName):
            values = san.get_values_for_type(kind)
            if values:
                return values[0].encode("utf-8")
    return cert.subject.public_bytes()
