"""Unit tests of :mod:`gateway.credential_policy` (parsing and the validator) and :mod:`hsm.csr` (the DER
assembly), without a server; the end-to-end behaviour is in ``test_credential_policy.py``."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.credential_policy import (
    CredentialPolicies,
    CredentialRejected,
    PolicyCredentialValidator,
    PolicyError,
    parse_policy,
)
from gateway.errors import problem_from_exception
from gateway.sqlite_store import SqliteStore
from gateway.store import Tenant
from hsm.csr import certification_request, der_length
from hsm.kinds import ECDSA_P256, ECDSA_P384, ECDSA_P521, ED448, ED25519, KeyKind
from mls import Credential, ValidationError

from .cert_authority import CLIENT_AUTH, Authority, der, mls_public_key, pem

ROOT = Authority.root()
INTER = ROOT.intermediate()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def policy_doc(**x509_extra: Any) -> dict[str, Any]:
    return {
        "allowed_types": ["x509"],
        "x509": {"trust_anchors": [pem(ROOT.cert)], "intermediates": [pem(INTER.cert)], **x509_extra},
    }


def ed25519_key() -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, raw


# ---- parsing ------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_is_a_policy_or_a_policy_error(body: Any) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(body)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["allowed_types", "x509", "other"]), json_values, max_size=3))
def test_shaped_bodies_are_a_policy_or_a_policy_error(body: dict[str, Any]) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(body)


@given(st.permutations(["basic", "x509"]), st.sampled_from([1, 2]))
def test_document_is_canonical_and_round_trips(types: list[str], n: int) -> None:
    chosen = types[:n]
    body: dict[str, Any] = {"allowed_types": chosen}
    if "x509" in chosen:
        body["x509"] = policy_doc(san_pattern="mls:.*", required_eku=[CLIENT_AUTH])["x509"]
    policy = parse_policy(body)
    assert policy.document["allowed_types"] == sorted(chosen)
    again = parse_policy(json.loads(json.dumps(policy.document)))
    assert again.document == policy.document and again.allowed_types == policy.allowed_types


oids = st.builds(
    lambda first, second, rest: ".".join(map(str, [first, second, *rest])),
    st.integers(0, 2),
    st.integers(0, 39),
    st.lists(st.integers(0, 2**40), max_size=6),
)


@given(oids)
def test_well_formed_oids_are_accepted(oid: str) -> None:
    policy = parse_policy(policy_doc(required_eku=[oid]))
    assert policy.x509 is not None and policy.x509.required_eku == (x509.ObjectIdentifier(oid),)


@given(st.text(max_size=24))
def test_an_accepted_oid_is_one_cryptography_accepts(text: str) -> None:
    try:
        parse_policy(policy_doc(required_eku=[text]))
    except PolicyError:
        return
    assert x509.ObjectIdentifier(text).dotted_string == text


@pytest.mark.parametrize("oid", ["", "1", "3.1", "1.40", "01.2", "1.02", "1..2", "1.2.", " 1.2", "1.2\n"])
def test_malformed_oids_are_refused(oid: str) -> None:
    with pytest.raises(PolicyError, match="required_eku"):
        parse_policy(policy_doc(required_eku=[oid]))


@given(st.text(max_size=40))
def test_a_pattern_is_accepted_only_when_it_compiles(pattern: str) -> None:
    try:
        re.compile(pattern)
        compiles = bool(pattern)
    except re.error:
        compiles = False
    try:
        parse_policy(policy_doc(san_pattern=pattern))
        accepted = True
    except PolicyError:
        accepted = False
    assert compiles or not accepted


@pytest.mark.parametrize(
    "pattern",
    [r"mls:[a-z0-9]+@example\.com", r"spiffe://example\.org/.+/bot-[0-9]+", r"mls:(alice|bob)@x\.org"],
)
def test_usual_san_patterns_are_accepted(pattern: str) -> None:
    parse_policy(policy_doc(san_pattern=pattern))


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+$", r"(a*)*b", r"(x|xx)+y", r"(\w+)\1", r".*.*.*.*x", r"(a{2,})+"],
)
def test_patterns_that_could_backtrack_for_long_are_refused(pattern: str) -> None:
    """re has no time limit and a tenant sets its own pattern (and issues its own certificates): nested
    repeats, repeated alternations, backreferences and more than three repeats are refused up front."""
    with pytest.raises(PolicyError, match="san_pattern"):
        parse_policy(policy_doc(san_pattern=pattern))


def test_limits_and_certificate_checks() -> None:
    with pytest.raises(PolicyError, match="san_pattern"):
        parse_policy(policy_doc(san_pattern="a" * 257))
    end_entity = INTER.issue(ed25519.Ed25519PrivateKey.generate().public_key(), "ee")
    with pytest.raises(PolicyError, match="not a CA"):
        parse_policy({"allowed_types": ["x509"], "x509": {"trust_anchors": [pem(end_entity)]}})
    with pytest.raises(PolicyError, match="one PEM certificate"):
        parse_policy(
            {"allowed_types": ["x509"], "x509": {"trust_anchors": [pem(ROOT.cert) + pem(INTER.cert)]}}
        )
    with pytest.raises(PolicyError, match="not signed by"):
        crl = Authority.root("elsewhere").crl([]).public_bytes(serialization.Encoding.PEM).decode()
        parse_policy(policy_doc(crls=[crl]))
    with pytest.raises(PolicyError, match="trust_anchors"):
        parse_policy({"allowed_types": ["x509"], "x509": {"trust_anchors": [pem(ROOT.cert)] * 17}})


# ---- the validator ------------------------------------------------------------------------------------
def rejected(validator: PolicyCredentialValidator, credential: Credential, key: bytes) -> str:
    with pytest.raises(CredentialRejected) as info:
        validator.validate(credential, key)
    return info.value.reason


def test_chain_completed_with_configured_intermediates() -> None:
    _, key = ed25519_key()
    cert = INTER.issue(mls_public_key(key), "ee")
    with_inter = PolicyCredentialValidator(parse_policy(policy_doc()))
    with_inter.validate(Credential.x509([der(cert)]), key)
    with_inter.validate(Credential.x509([der(cert), der(INTER.cert)]), key)
    root_only = PolicyCredentialValidator(
        parse_policy({"allowed_types": ["x509"], "x509": {"trust_anchors": [pem(ROOT.cert)]}})
    )
    assert rejected(root_only, Credential.x509([der(cert)]), key) == "untrusted_chain"
    root_only.validate(Credential.x509([der(cert), der(INTER.cert)]), key)


def test_reasons() -> None:
    _, key = ed25519_key()
    _, other = ed25519_key()
    v = PolicyCredentialValidator(parse_policy(policy_doc(san_pattern=r"mls:ok", required_eku=[CLIENT_AUTH])))
    good = INTER.issue(mls_public_key(key), "ee", san=("mls:ok",))
    v.validate(Credential.x509([der(good)]), key)
    assert rejected(v, Credential.x509([der(good)]), other) == "key_mismatch"
    future = INTER.issue(mls_public_key(key), "ee", san=("mls:ok",), valid_days=(2, 9))
    assert rejected(v, Credential.x509([der(future)]), key) == "not_yet_valid"
    no_eku = INTER.issue(mls_public_key(key), "ee", san=("mls:ok",), eku=())
    assert rejected(v, Credential.x509([der(no_eku)]), key) == "eku_missing"
    prefix = INTER.issue(mls_public_key(key), "ee", san=("mls:ok-not",))  # the pattern matches whole names
    assert rejected(v, Credential.x509([der(prefix)]), key) == "san_mismatch"
    assert rejected(v, Credential.basic(b"alice"), key) == "type_not_allowed"
    assert rejected(v, Credential.x509([b"\x30\x00"]), key) == "untrusted_chain"


def test_revoked_intermediate() -> None:
    _, key = ed25519_key()
    cert = INTER.issue(mls_public_key(key), "ee")
    crl = ROOT.crl([INTER.cert]).public_bytes(serialization.Encoding.PEM).decode()
    v = PolicyCredentialValidator(parse_policy(policy_doc(crls=[crl])))
    assert rejected(v, Credential.x509([der(cert)]), key) == "revoked"


def test_basic_allowed_and_problem_document() -> None:
    v = PolicyCredentialValidator(parse_policy({"allowed_types": ["basic"]}))
    v.validate(Credential.basic(b"alice"), b"k" * 32)
    with pytest.raises(ValidationError) as info:
        v.validate(Credential.basic(b""), b"k" * 32)
    assert not isinstance(info.value, CredentialRejected)
    with pytest.raises(CredentialRejected) as refused:
        v.validate(Credential.x509([der(ROOT.cert)]), b"k" * 32)
    doc = problem_from_exception(refused.value).document()
    assert (doc["status"], doc["code"], doc["reason"]) == (422, "credential_rejected", "type_not_allowed")
    assert doc["rule"] == "5.3.1/policy-type-not-allowed"


# ---- CSR assembly -------------------------------------------------------------------------------------
@given(st.integers(0, 2**40))
def test_der_length_is_minimal(n: int) -> None:
    octets = der_length(n)
    if n < 0x80:
        assert octets == bytes([n])
    else:
        count = octets[0] & 0x7F
        assert octets[0] & 0x80 and count == len(octets) - 1 and octets[1] != 0
        assert int.from_bytes(octets[1:], "big") == n


class SoftwareSigner:
    """Signs like the token's signer (raw EdDSA, DER ECDSA with the curve's hash), for the CSR tests."""

    def __init__(self, key: Any, hash_algorithm: hashes.HashAlgorithm | None) -> None:
        self.key, self.hash = key, hash_algorithm

    def sign(self, data: bytes) -> bytes:
        signed: bytes = self.key.sign(data) if self.hash is None else self.key.sign(data, ec.ECDSA(self.hash))
        return signed


def _kinds() -> list[tuple[KeyKind, Any, hashes.HashAlgorithm | None]]:
    return [
        (ED25519, ed25519.Ed25519PrivateKey.generate(), None),
        (ED448, ed448.Ed448PrivateKey.generate(), None),
        (ECDSA_P256, ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
        (ECDSA_P384, ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
        (ECDSA_P521, ec.generate_private_key(ec.SECP521R1()), hashes.SHA512()),
    ]


@pytest.mark.parametrize("kind, key, hash_algorithm", _kinds(), ids=lambda v: getattr(v, "name", ""))
def test_csr_for_every_signature_kind(
    kind: KeyKind, key: Any, hash_algorithm: hashes.HashAlgorithm | None
) -> None:
    public = key.public_key()
    if hash_algorithm is None:
        mls_key = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        mls_key = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    subject = x509.Name.from_rfc4514_string("CN=alice,O=Example")
    csr = certification_request(SoftwareSigner(key, hash_algorithm), kind, mls_key, subject)
    again = x509.load_der_x509_csr(csr.public_bytes(serialization.Encoding.DER))
    assert again.is_signature_valid and again.subject == subject and again.public_key() == public
    if hash_algorithm is not None:
        assert isinstance(again.signature_hash_algorithm, type(hash_algorithm))


def test_csr_signed_by_another_key_is_refused() -> None:
    key, raw = ed25519_key()
    wrong = SoftwareSigner(ed25519.Ed25519PrivateKey.generate(), None)
    with pytest.raises(Exception, match="does not verify"):
        certification_request(wrong, ED25519, raw, x509.Name.from_rfc4514_string("CN=x"))
    assert certification_request(
        SoftwareSigner(key, None), ED25519, raw, x509.Name.from_rfc4514_string("CN=x")
    )


def test_intermediates_sharing_a_name_are_told_apart_by_signature() -> None:
    _, key = ed25519_key()
    twin_a, twin_b = ROOT.intermediate("Twin CA"), ROOT.intermediate("Twin CA")
    doc = {"allowed_types": ["x509"], "x509": {"trust_anchors": [pem(ROOT.cert)], "intermediates": []}}
    doc["x509"]["intermediates"] = [pem(twin_a.cert), pem(twin_b.cert)]
    v = PolicyCredentialValidator(parse_policy(doc))
    for twin in (twin_a, twin_b):
        v.validate(Credential.x509([der(twin.issue(mls_public_key(key), "ee"))]), key)
    crl = twin_b.crl([twin_b.cert]).public_bytes(serialization.Encoding.PEM).decode()  # unrelated serial
    revoked_ee = twin_b.issue(mls_public_key(key), "ee")
    doc["x509"]["crls"] = [twin_b.crl([revoked_ee]).public_bytes(serialization.Encoding.PEM).decode(), crl]
    v = PolicyCredentialValidator(parse_policy(doc))
    assert rejected(v, Credential.x509([der(revoked_ee)]), key) == "revoked"
    v.validate(Credential.x509([der(twin_a.issue(mls_public_key(key), "ee"))]), key)


def test_a_policy_read_before_a_change_is_not_cached(tmp_path: Path) -> None:
    """Found in review: a policy read, then changed by another request before it was cached, stayed cached
    (a looser policy served until the next change). A change in between now keeps it out of the cache."""
    store = SqliteStore(tmp_path / "db.sqlite3")
    with store.transaction() as tx:
        tx.add_tenant(Tenant("t1", "tenant"))

    class Racing(CredentialPolicies):
        raced = False

        def _stored(self, tenant_id: str) -> str | None:
            found = super()._stored(tenant_id)
            if not self.raced:  # another request sets a policy between this read and the caching
                self.raced = True
                self.put(tenant_id, parse_policy(policy_doc()))
            return found

    policies = Racing(store)
    first = policies.leaf_policy("t1")  # read before the change: no policy, served once, not kept
    assert not isinstance(first.credential_validator, PolicyCredentialValidator)
    assert isinstance(policies.leaf_policy("t1").credential_validator, PolicyCredentialValidator)
    policies.forget_tenant("t1")  # a deleted tenant's policy is not kept either
    assert "t1" not in policies._cache
