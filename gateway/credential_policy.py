"""A tenant's credential policy (issue 16): which credential types its hosted identities accept, and for
X.509 the trust anchors, intermediates, CRLs, subjectAltName pattern and extended key usages.

The policy is parsed strictly from its JSON document (:func:`parse_policy`; every PEM must parse, the
pattern compile, the OIDs be well formed, each CRL be signed by a configured CA) and enforced by
:class:`PolicyCredentialValidator`, an implementation of the library's
:class:`mls.CredentialValidator` protocol (RFC 9420 §5.3.1). The gateway puts it into the
``LeafPolicy`` of every hosted membership of the tenant (:class:`CredentialPolicies`), so the group
engine runs it wherever a credential enters the member's view of a group: the KeyPackages of Add
proposals (§12.1.1), the tree of a Welcome (§12.4.3.1) or an external join (§12.4.3.2), Update proposals
and UpdatePath leaves of processed commits (§12.4.2), and external senders (§12.1.8.1).

The certificate path itself is checked by the library's :class:`mls.credentials.x509.X509CredentialValidator`
(chain order, signatures, validity, CA constraints, the end-entity key equal to the leaf's
``signature_key``): ``cryptography.x509.verification`` (checked with cryptography 51) still refuses CAs
with Ed25519/Ed448 keys, the natural ones for the Ed25519/Ed448 MLS suites (see that module's
docstring). This module adds the tenant's parts: completing a chain with the configured intermediates,
revocation from the configured CRLs (``cryptography``'s CRL parsing and signature check), the
subjectAltName pattern and the required extended key usages. A refusal is a :class:`CredentialRejected`
with a stable ``reason`` (answered as a 422 ``credential_rejected`` problem).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from mls import (
    BasicCredentialValidator,
    Credential,
    CredentialType,
    LeafPolicy,
    ValidationError,
    X509CredentialValidator,
)

from .san_patterns import UnsafePattern, compile_san_pattern

if TYPE_CHECKING:  # errors.py imports this module; the store's modules import errors.py
    from .store import Identity, Store

#: The credential types a policy can allow, by their names in the document.
CREDENTIAL_TYPES = {"basic": CredentialType.basic, "x509": CredentialType.x509}
MAX_PEM_CHARS = 65536
MAX_ANCHORS = 16
MAX_INTERMEDIATES = 32
MAX_CRLS = 32
MAX_PATTERN_CHARS = 256
#: subjectAltName entries longer than this never match the pattern (bounds the regex's work per name).
MAX_MATCHED_NAME = 255
MAX_EKUS = 16
#: The longest chain accepted, configured intermediates included.
MAX_CHAIN = 8
#: A dotted OID: first arc 0-2, then arcs without leading zeros (the second arc < 40 under 0 and 1).
_OID = re.compile(r"(?:[01]\.(?:[0-9]|[1-3][0-9])|2\.(?:0|[1-9][0-9]{0,17}))(?:\.(?:0|[1-9][0-9]{0,17}))*")
_DER = serialization.Encoding.DER
_X509_KEYS = frozenset({"trust_anchors", "intermediates", "crls", "san_pattern", "required_eku"})


class PolicyError(ValueError):
    """A credential policy document that is not acceptable (answered 400)."""


class CredentialRejected(ValidationError):
    """A credential the tenant's policy refuses (RFC 9420 §5.3.1); ``reason`` is one of
    ``type_not_allowed``, ``untrusted_chain``, ``expired``, ``not_yet_valid``, ``revoked``,
    ``san_mismatch``, ``eku_missing``, ``key_mismatch``."""

    def __init__(self, rule: str, message: str, reason: str) -> None:
        super().__init__(rule, message)
        self.reason = reason


@dataclass(frozen=True)
class TrustedCrl:
    """A configured CRL with its issuer's name and key (DER SubjectPublicKeyInfo), under which its signature
    verified when the policy was set: it covers the certificates that issuer (name and key) issued."""

    crl: x509.CertificateRevocationList
    issuer_name: x509.Name
    issuer_key: bytes

    def revokes(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        return (
            issuer.subject == self.issuer_name
            and _spki(issuer) == self.issuer_key
            and self.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        )


@dataclass(frozen=True)
class X509Policy:
    trust_anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    crls: tuple[TrustedCrl, ...] = ()
    san_pattern: re.Pattern[str] | None = None
    required_eku: tuple[x509.ObjectIdentifier, ...] = ()


@dataclass(frozen=True)
class CredentialPolicy:
    """A parsed policy; :attr:`document` is its canonical JSON form (what is stored and answered)."""

    allowed_types: frozenset[int]
    x509: X509Policy | None
    document: dict[str, Any] = field(compare=False)


# ---- parsing ----------------------------------------------------------------------------------------
def parse_policy(body: Any) -> CredentialPolicy:
    """The policy of a ``PUT …/credential-policy`` body (or a stored document); :class:`PolicyError`
    names the first thing wrong."""
    if not isinstance(body, dict):
        raise PolicyError("the credential policy must be a JSON object")
    unknown = set(body) - {"allowed_types", "x509"}
    if unknown:
        raise PolicyError("the credential policy may have only allowed_types and x509")
    names = _allowed_types(body.get("allowed_types"))
    x509_doc = body.get("x509")
    if ("x509" in names) != (x509_doc is not None):
        raise PolicyError("x509 settings are required exactly when allowed_types contains x509")
    settings = None if x509_doc is None else _x509_policy(x509_doc)
    document: dict[str, Any] = {"allowed_types": names}
    if x509_doc is not None:
        document["x509"] = _x509_document(x509_doc)
    return CredentialPolicy(frozenset(CREDENTIAL_TYPES[n] for n in names), settings, document)


def _allowed_types(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise PolicyError("allowed_types must be a non-empty list")
    if any(not isinstance(v, str) or v not in CREDENTIAL_TYPES for v in value):
        raise PolicyError(f"allowed_types may contain only {sorted(CREDENTIAL_TYPES)}")
    if len(set(value)) != len(value):
        raise PolicyError("allowed_types has a duplicate")
    return sorted(value)


def _pem_list(doc: dict[str, Any], key: str, limit: int, required: bool = False) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or (required and not value) or len(value) > limit:
        need = "a non-empty list" if required else "a list"
        raise PolicyError(f"x509.{key} must be {need} of at most {limit} PEM strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_PEM_CHARS or not item.isascii():
            raise PolicyError(f"x509.{key}[{i}] must be a PEM string of at most {MAX_PEM_CHARS} characters")
    return value


def _x509_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The canonical stored form of the x509 settings (already validated by :func:`_x509_policy`)."""
    out: dict[str, Any] = {
        "trust_anchors": doc["trust_anchors"],
        "intermediates": doc.get("intermediates", []),
        "crls": doc.get("crls", []),
        "required_eku": doc.get("required_eku", []),
    }
    if doc.get("san_pattern") is not None:
        out["san_pattern"] = doc["san_pattern"]
    return out


def _x509_policy(doc: Any) -> X509Policy:
    if not isinstance(doc, dict):
        raise PolicyError("x509 must be an object")
    unknown = set(doc) - _X509_KEYS
    if unknown:
        raise PolicyError(f"x509 may have only {', '.join(sorted(_X509_KEYS))}")
    anchors = [
        _ca_certificate(p, f"x509.trust_anchors[{i}]")
        for i, p in enumerate(_pem_list(doc, "trust_anchors", MAX_ANCHORS, required=True))
    ]
    intermediates = [
        _ca_certificate(p, f"x509.intermediates[{i}]")
        for i, p in enumerate(_pem_list(doc, "intermediates", MAX_INTERMEDIATES))
    ]
    issuers = anchors + intermediates
    crls = [_crl(p, f"x509.crls[{i}]", issuers) for i, p in enumerate(_pem_list(doc, "crls", MAX_CRLS))]
    return X509Policy(
        tuple(anchors),
        tuple(intermediates),
        tuple(crls),
        _san_pattern(doc.get("san_pattern")),
        _ekus(doc.get("required_eku", [])),
    )


def _ca_certificate(pem: str, label: str) -> x509.Certificate:
    """One PEM certificate of a CA (basicConstraints cA): a trust anchor or an intermediate."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
        if len(certs) != 1:
            raise ValueError("not exactly one certificate")
        cert = certs[0]
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise PolicyError(f"{label} is not a CA certificate (no basicConstraints)") from None
    except (ValueError, TypeError):
        raise PolicyError(f"{label} is not one PEM certificate") from None
    if not constraints.ca:
        raise PolicyError(f"{label} is not a CA certificate (basicConstraints cA is false)")
    return cert


def _crl(pem: str, label: str, issuers: list[x509.Certificate]) -> TrustedCrl:
    """One PEM CRL, signed by one of the policy's CAs."""
    try:
        crl = x509.load_pem_x509_crl(pem.encode())
        list(crl)  # the revoked entries parse
    except (ValueError, TypeError):
        raise PolicyError(f"{label} is not a PEM CRL") from None
    issuer = next((i for i in issuers if _crl_issued_by(crl, i)), None)
    if issuer is None:
        raise PolicyError(f"{label} is not signed by a trust anchor or intermediate of the policy")
    return TrustedCrl(crl, issuer.subject, _spki(issuer))


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _crl_issued_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, InvalidSignature):
        return False


def _san_pattern(value: Any) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PATTERN_CHARS:
        raise PolicyError(
            f"x509.san_pattern must be a regular expression of 1 to {MAX_PATTERN_CHARS} characters"
        )
    try:
        return compile_san_pattern(value)
    except UnsafePattern as e:
        raise PolicyError(f"x509.san_pattern {e}") from None


def _ekus(value: Any) -> tuple[x509.ObjectIdentifier, ...]:
    if not isinstance(value, list) or len(value) > MAX_EKUS:
        raise PolicyError(f"x509.required_eku must be a list of at most {MAX_EKUS} OIDs")
    out = []
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str) or not _OID.fullmatch(item):
                raise ValueError
            out.append(x509.ObjectIdentifier(item))
        except ValueError:
            raise PolicyError(f"x509.required_eku[{i}] is not a dotted OID") from None
    return tuple(out)


# ---- enforcement ------------------------------------------------------------------------------------
#: Library chain-check rules (``mls.credentials.x509``) that are about validity or the key binding; every
#: other failure of the chain check is an ``untrusted_chain``.
_REASON_OF_RULE = {
    "5.3.1/x509-expired": "expired",
    "5.3.1/x509-not-yet-valid": "not_yet_valid",
    "5.3.1/x509-key-match": "key_mismatch",
    "5.3.1/x509-key-kind-match": "key_mismatch",
    "5.3.1/signature-key-length": "key_mismatch",
    "5.3.1/x509-leaf-key-type": "key_mismatch",
    "5.3.1/x509-leaf-curve": "key_mismatch",
}


class PolicyCredentialValidator:
    """The tenant's policy as a :class:`mls.CredentialValidator` (see the module docstring)."""

    def __init__(self, policy: CredentialPolicy, now: Callable[[], datetime] | None = None) -> None:
        self.policy = policy
        x = policy.x509
        self._chain = (
            None
            if x is None
            else X509CredentialValidator(list(x.trust_anchors), now=now, max_chain_length=MAX_CHAIN)
        )

    def __repr__(self) -> str:
        return f"PolicyCredentialValidator(types={sorted(self.policy.allowed_types)})"

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        if credential.credential_type not in self.policy.allowed_types:
            raise CredentialRejected(
                "5.3.1/policy-type-not-allowed",
                f"the tenant's policy does not allow credential type {credential.credential_type}",
                "type_not_allowed",
            )
        if credential.credential_type == CredentialType.basic:
            BasicCredentialValidator().validate(credential, signature_key)
            return
        x = self.policy.x509
        assert x is not None and self._chain is not None
        ders = _completed_chain(credential, x.intermediates)
        try:
            self._chain.validate(Credential.x509(ders), signature_key)
        except ValidationError as e:
            raise CredentialRejected(
                e.rule, e.message, _REASON_OF_RULE.get(e.rule, "untrusted_chain")
            ) from None
        chain = [x509.load_der_x509_certificate(d) for d in ders]  # they parsed in the chain check
        _check_revocation(chain, x)
        _check_san(chain[0], x.san_pattern)
        _check_eku(chain[0], x.required_eku)


def _completed_chain(credential: Credential, intermediates: tuple[x509.Certificate, ...]) -> list[bytes]:
    """The presented chain (end entity first), followed by configured intermediates while its last
    certificate is issued by one (:func:`_issuer_among`), up to :data:`MAX_CHAIN` certificates: a
    credential may omit the intermediates its peers (here, the tenant's policy) already hold (§5.3)."""
    ders = [c.cert_data for c in credential.certificates or ()]
    if not ders:
        return ders  # the library refuses an empty chain with its own rule
    try:
        last = x509.load_der_x509_certificate(ders[-1])
        while len(ders) < MAX_CHAIN and last.subject != last.issuer:
            issuer = _issuer_among(last, intermediates)
            if issuer is None or issuer.public_bytes(_DER) in ders:
                break
            ders.append(issuer.public_bytes(_DER))
            last = issuer
    except ValueError:
        pass  # a malformed certificate: the library's chain check names it
    return ders


def _issuer_among(
    child: x509.Certificate, candidates: tuple[x509.Certificate, ...]
) -> x509.Certificate | None:
    """The candidate named as ``child``'s issuer; when several share that name, the first whose key verifies
    ``child``'s signature (with one, the library's chain check verifies it: no signature is checked twice)."""
    named = [c for c in candidates if c.subject == child.issuer]
    if len(named) <= 1:
        return named[0] if named else None
    return next((c for c in named if _directly_issued(child, c)), None)


def _directly_issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_revocation(chain: list[x509.Certificate], x: X509Policy) -> None:
    """No certificate of the path is on a configured CRL of its issuer (RFC 5280 §6.3, with the CRLs the
    tenant configured, each verified under its issuer's key when the policy was set)."""
    issuers: list[x509.Certificate | None] = [*chain[1:], _issuing_anchor(chain[-1], x.trust_anchors)]
    for cert, issuer in zip(chain, issuers, strict=True):
        if issuer is None:
            continue  # the certificate is itself a trust anchor
        if any(crl.revokes(cert, issuer) for crl in x.crls):
            raise CredentialRejected(
                "5.3.1/policy-revoked", "a certificate of the chain is revoked", "revoked"
            )


def _issuing_anchor(last: x509.Certificate, anchors: tuple[x509.Certificate, ...]) -> x509.Certificate | None:
    if any(last.public_bytes(_DER) == a.public_bytes(_DER) for a in anchors):
        return None
    return _issuer_among(last, anchors)


def _check_san(cert: x509.Certificate, pattern: re.Pattern[str] | None) -> None:
    """Some DNS name, URI or e-mail address of the end entity's subjectAltName matches the pattern whole."""
    if pattern is None:
        return
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [
            str(v)
            for kind in (x509.DNSName, x509.UniformResourceIdentifier, x509.RFC822Name)
            for v in san.get_values_for_type(kind)
        ]
    except x509.ExtensionNotFound:
        names = []
    if not any(len(n) <= MAX_MATCHED_NAME and pattern.fullmatch(n) for n in names):
        raise CredentialRejected(
            "5.3.1/policy-san-mismatch",
            "the end-entity certificate has no subjectAltName matching the tenant's pattern",
            "san_mismatch",
        )


def _check_eku(cert: x509.Certificate, required: tuple[x509.ObjectIdentifier, ...]) -> None:
    if not required:
        return
    try:
        present = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        present = set()
    if not set(required) <= present:
        raise CredentialRejected(
            "5.3.1/policy-eku-missing",
            "the end-entity certificate lacks an extended key usage the tenant requires",
            "eku_missing",
        )


class CredentialPolicies:
    """The tenants' policies, as the ``LeafPolicy`` of their hosted memberships.

    Parsed policies are cached in this process, each with the stored policy text it was parsed from.
    :meth:`put` and :meth:`delete` write the store and then drop the tenant's entry, so this process's next
    operation sees the change. Another gateway process (``serve --workers N``, another machine) may change
    the policy too: an entry older than :data:`POLICY_RECHECK_S` is checked against the stored text (one
    small read) and parsed again only when it differs, so a change made elsewhere holds here within that
    bound. A tenant without a policy gets the library's default ``LeafPolicy()``.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        #: tenant -> (stored policy text or None, its LeafPolicy, monotonic time it was last checked)
        self._cache: dict[str, tuple[str | None, LeafPolicy, float]] = {}
        #: Bumped by every change of the tenant's policy: a policy read before a change is not cached.
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()

    def _stored(self, tenant_id: str) -> str | None:
        with self.store.read_transaction() as tx:
            return tx.get_credential_policy(tenant_id)

    def get(self, tenant_id: str) -> CredentialPolicy | None:
        stored = self._stored(tenant_id)
        return None if stored is None else parse_policy(json.loads(stored))

    def leaf_policy(self, tenant_id: str) -> LeafPolicy:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tenant_id)
            generation = self._generation.get(tenant_id, 0)
        if cached is not None and now - cached[2] < POLICY_RECHECK_S:
            return cached[1]
        stored = self._stored(tenant_id)
        if cached is not None and cached[0] == stored:
            made = cached[1]  # unchanged in the store: no parse
        elif stored is None:
            made = LeafPolicy()
        else:
            made = LeafPolicy(PolicyCredentialValidator(parse_policy(json.loads(stored))))
        with self._lock:
            if self._generation.get(tenant_id, 0) == generation:  # no change here since it was read
                self._cache[tenant_id] = (stored, made, now)
        return made

    def put(self, tenant_id: str, policy: CredentialPolicy) -> None:
        with self.store.transaction() as tx:
            tx.put_credential_policy(tenant_id, json.dumps(policy.document, sort_keys=True))
        self._forget(tenant_id)

    def delete(self, tenant_id: str) -> bool:
        with self.store.transaction() as tx:
            removed = tx.delete_credential_policy(tenant_id)
        self._forget(tenant_id)
        return removed

    def _forget(self, tenant_id: str) -> None:
        with self._lock:
            self._cache.pop(tenant_id, None)
            self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1

    def forget_tenant(self, tenant_id: str) -> None:
        """A deleted tenant: drop what is cached of its policy."""
        self._forget(tenant_id)


#: Seconds a cached policy is used before it is checked against the store again (a change made by another
#: gateway process holds in this one within this bound).
POLICY_RECHECK_S = 1.0


def check_own_credential(policy: LeafPolicy, identity: Identity) -> None:
    """Refuse (:class:`CredentialRejected`) an identity whose own credential its tenant's policy refuses:
    it may then make no KeyPackage and create or join no group, since every member would refuse its leaf
    (RFC 9420 §5.3.1: the application decides which credentials it accepts)."""
    credential = Credential.from_bytes(identity.credential)
    policy.credential_validator.validate(credential, identity.signature_public_key)
