"""Welcome messages (RFC 9420 §12.4.3, §12.4.3.1) on the working group's ``welcome`` vectors: the joiner
rejects a wrong init key, a missing KeyPackage entry, a tampered encrypted GroupInfo and a GroupInfo whose
signature or confirmation tag does not verify; Welcomes we build open for every member.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto import CipherSuite, cipher_suite
from mls.crypto.backend import get_backend
from mls.crypto.hpke import Kem, SoftwareHpkeKey
from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import CryptoError, DecodeError, ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.welcome import (
    build_welcome,
    decrypt_group_info,
    encrypt_group_secrets,
    open_group_secrets,
    welcome_from_message,
)
from mls.schedule.key_schedule import KeySchedule
from mls.tree.nodes import HPKECiphertext
from mls.wire.framing import MLSMessage
from mls.wire.group_info import GroupInfo, sign_group_info, verify_group_info_signature
from mls.wire.key_package import KeyPackage, key_package_ref
from mls.wire.welcome import EncryptedGroupSecrets, GroupSecrets, PathSecret, Welcome

from .vectors import load

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CASES = load("welcome")


@dataclass
class Case:
    cs: CipherSuite
    key_package: KeyPackage
    welcome: Welcome
    init_key: SoftwareHpkeKey
    signer_pub: bytes

    @property
    def ref(self) -> bytes:
        return key_package_ref(self.cs, self.key_package)

    def secrets(self, welcome: Welcome | None = None) -> GroupSecrets:
        return open_group_secrets(self.cs, welcome or self.welcome, self.ref, self.init_key)

    def welcome_secret(self) -> bytes:
        return KeySchedule.from_joiner_secret(self.cs, self.secrets().joiner_secret, None, b"").welcome_secret

    def group_info(self) -> GroupInfo:
        return decrypt_group_info(self.cs, self.welcome_secret(), self.welcome.encrypted_group_info)


def case(index: int) -> Case:
    raw = CASES[index]
    cs = cipher_suite(raw["cipher_suite"])
    kp = MLSMessage.from_bytes(bytes.fromhex(raw["key_package"])).body
    welcome = MLSMessage.from_bytes(bytes.fromhex(raw["welcome"])).body
    assert isinstance(kp, KeyPackage) and isinstance(welcome, Welcome)
    init_key = cs.hpke_key_from_private_bytes(bytes.fromhex(raw["init_priv"]))
    return Case(cs, kp, welcome, init_key, bytes.fromhex(raw["signer_pub"]))


def flip(data: bytes, at: int = 0, bit: int = 0) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]


def with_egi(welcome: Welcome, encrypted_group_info: bytes) -> Welcome:
    return Welcome(welcome.cipher_suite, welcome.secrets, encrypted_group_info)


def with_entry(welcome: Welcome, entry: EncryptedGroupSecrets) -> Welcome:
    return Welcome(welcome.cipher_suite, (entry,), welcome.encrypted_group_info)


def replace_gi(gi: GroupInfo, **changes: Any) -> GroupInfo:
    return dataclasses.replace(gi, **changes)


INDICES = range(len(CASES))


@pytest.mark.parametrize("index", INDICES)
def test_the_vector_welcome_opens(index: int) -> None:
    c = case(index)
    assert c.init_key.public_key == c.key_package.init_key
    gi = c.group_info()
    verify_group_info_signature(c.cs, gi, c.signer_pub)
    ks = KeySchedule.from_joiner_secret(c.cs, c.secrets().joiner_secret, None, gi.group_context.to_bytes())
    ks.secrets.verify_confirmation_tag(gi.group_context.confirmed_transcript_hash, gi.confirmation_tag)


# ---- GroupSecrets (§12.4.3.1) ------------------------------------------------------------------------


@pytest.mark.parametrize("index", INDICES)
def test_a_wrong_init_key_is_a_crypto_error(index: int) -> None:
    c = case(index)
    for wrong in (c.cs.kem.generate(), c.cs.derive_key_pair(b"not the init key")):
        with pytest.raises(CryptoError):
            open_group_secrets(c.cs, c.welcome, c.ref, wrong)
    other = case((index + 1) % len(CASES))
    if other.cs.kem == c.cs.kem:
        with pytest.raises(CryptoError):
            open_group_secrets(c.cs, c.welcome, c.ref, other.init_key)


@pytest.mark.parametrize("index", INDICES)
def test_a_wrong_key_package_ref_is_a_validation_error(index: int) -> None:
    c = case(index)
    kp = c.key_package
    refs = [
        flip(c.ref, index),
        c.ref[:-1],
        b"",
        key_package_ref(c.cs, dataclasses.replace(kp, signature=flip(kp.signature, 1))),  # another KeyPackage
        c.cs.ref_hash(b"MLS 1.0 KeyPackage Reference", MLSMessage.of(kp).to_bytes()),  # over the wrong bytes
    ]
    for ref in refs:
        with pytest.raises(ValidationError) as e:
            open_group_secrets(c.cs, c.welcome, ref, c.init_key)
        assert e.value.rule == "12.4.3.1/welcome-secrets-entry" and not isinstance(e.value, CryptoError)
    empty = Welcome(c.welcome.cipher_suite, (), c.welcome.encrypted_group_info)
    with pytest.raises(ValidationError) as e:
        open_group_secrets(c.cs, empty, c.ref, c.init_key)
    assert e.value.rule == "12.4.3.1/welcome-secrets-entry"


@pytest.mark.parametrize("index", INDICES)
def test_a_welcome_for_another_cipher_suite_is_rejected(index: int) -> None:
    c = case(index)
    other = Welcome(c.cs.suite_id % 7 + 1, c.welcome.secrets, c.welcome.encrypted_group_info)
    with pytest.raises(ValidationError) as e:
        open_group_secrets(c.cs, other, c.ref, c.init_key)
    assert e.value.rule == "12.4.3.1/welcome-cipher-suite"


@SETTINGS
@given(
    index=st.sampled_from(INDICES),
    field=st.sampled_from(["kem_output", "ciphertext"]),
    at=st.integers(0, 10**4),
    bit=st.integers(0, 7),
)
def test_tampered_encrypted_group_secrets_are_a_crypto_error(
    index: int, field: str, at: int, bit: int
) -> None:
    c = case(index)
    entry = next(s for s in c.welcome.secrets if s.new_member == c.ref)
    ct = entry.encrypted_group_secrets
    parts = {"kem_output": ct.kem_output, "ciphertext": ct.ciphertext}
    parts[field] = flip(parts[field], at, bit)
    bad = with_entry(c.welcome, EncryptedGroupSecrets(entry.new_member, HPKECiphertext(**parts)))
    with pytest.raises(CryptoError):
        c.secrets(bad)


# ---- the encrypted GroupInfo (§12.4.3.1) ------------------------------------------------------------------


@SETTINGS
@given(
    index=st.sampled_from(INDICES), at=st.integers(0, 10**5), bit=st.integers(0, 7), truncate=st.booleans()
)
def test_a_tampered_encrypted_group_info_is_a_crypto_error(
    index: int, at: int, bit: int, truncate: bool
) -> None:
    c = case(index)
    egi = c.welcome.encrypted_group_info
    bad = egi[: at % len(egi)] if truncate else flip(egi, at, bit)
    # It is the HPKE context of the GroupSecrets: they no longer open either.
    with pytest.raises(CryptoError):
        c.secrets(with_egi(c.welcome, bad))
    with pytest.raises(CryptoError) as e:
        decrypt_group_info(c.cs, c.welcome_secret(), bad)
    assert e.value.rule == "12.4.3.1/group-info-decrypt"


@pytest.mark.parametrize("index", INDICES)
def test_a_wrong_welcome_secret_is_a_crypto_error(index: int) -> None:
    c = case(index)
    with pytest.raises(CryptoError) as e:
        decrypt_group_info(c.cs, flip(c.welcome_secret(), 4), c.welcome.encrypted_group_info)
    assert e.value.rule == "12.4.3.1/group-info-decrypt"
    joiner = c.secrets().joiner_secret
    psk = KeySchedule.from_joiner_secret(c.cs, joiner, bytes([1]) * c.cs.n_h, b"").welcome_secret
    with pytest.raises(CryptoError):  # the psk_secret feeds the welcome secret
        decrypt_group_info(c.cs, psk, c.welcome.encrypted_group_info)


# ---- the GroupInfo signature (§12.4.3) and confirmation tag (§12.4.3.1) ------------------------------------


@SETTINGS
@given(index=st.sampled_from(INDICES), at=st.integers(0, 200), bit=st.integers(0, 7))
def test_a_tampered_group_info_signature_is_rule_12_4_3(index: int, at: int, bit: int) -> None:
    c = case(index)
    gi = c.group_info()
    for bad in (
        replace_gi(gi, signature=flip(gi.signature, at, bit)),
        replace_gi(gi, signature=gi.signature[:-1]),
        replace_gi(gi, signature=b""),
    ):
        with pytest.raises(CryptoError) as e:
            verify_group_info_signature(c.cs, bad, c.signer_pub)
        assert e.value.rule == "12.4.3/group-info-signature"


@pytest.mark.parametrize("index", INDICES)
def test_group_info_fields_are_covered_by_the_signature(index: int) -> None:
    c = case(index)
    gi = c.group_info()
    gc = gi.group_context
    changed = [
        replace_gi(gi, signer=gi.signer + 1),
        replace_gi(gi, confirmation_tag=flip(gi.confirmation_tag, 0)),
        replace_gi(gi, extensions=()) if gi.extensions else replace_gi(gi, signer=gi.signer ^ 0x80),
        replace_gi(gi, group_context=dataclasses.replace(gc, epoch=gc.epoch + 1)),
        replace_gi(gi, group_context=dataclasses.replace(gc, tree_hash=flip(gc.tree_hash, 3))),
        replace_gi(gi, group_context=dataclasses.replace(gc, group_id=gc.group_id + b"\x00")),
    ]
    for bad in changed:
        with pytest.raises(CryptoError) as e:
            verify_group_info_signature(c.cs, bad, c.signer_pub)
        assert e.value.rule == "12.4.3/group-info-signature"
    for key in (c.cs.generate_signer().public_key, flip(c.signer_pub, 2), b""):
        with pytest.raises(CryptoError) as e:
            verify_group_info_signature(c.cs, gi, key)
        assert e.value.rule == "12.4.3/group-info-signature"


@pytest.mark.parametrize("index", INDICES)
def test_a_wrong_confirmation_tag_is_a_crypto_error(index: int) -> None:
    c = case(index)
    gi = c.group_info()
    ks = KeySchedule.from_joiner_secret(c.cs, c.secrets().joiner_secret, None, gi.group_context.to_bytes())
    cth = gi.group_context.confirmed_transcript_hash
    for tag, hash_ in (
        (flip(gi.confirmation_tag, 1), cth),
        (gi.confirmation_tag[:-1], cth),
        (gi.confirmation_tag, flip(cth, 0)),
    ):
        with pytest.raises(CryptoError) as e:
            ks.secrets.verify_confirmation_tag(hash_, tag)
        assert e.value.rule == "6.1/confirmation-tag"
    # A GroupContext other than the signed one gives other epoch secrets: the tag does not match either.
    other = KeySchedule.from_joiner_secret(
        c.cs,
        c.secrets().joiner_secret,
        None,
        dataclasses.replace(gi.group_context, epoch=gi.group_context.epoch + 1).to_bytes(),
    )
    with pytest.raises(CryptoError):
        other.secrets.verify_confirmation_tag(cth, gi.confirmation_tag)


# ---- Welcomes we build (§12.4.3.1) -------------------------------------------------------------------------


@pytest.mark.parametrize("index", INDICES)
def test_a_welcome_we_build_opens_for_each_member_and_only_for_them(index: int) -> None:
    c = case(index)
    gi = c.group_info()
    signer = c.cs.generate_signer()
    signed = sign_group_info(c.cs, signer, replace_gi(gi, signature=b""))
    verify_group_info_signature(c.cs, signed, signer.public_key)
    with pytest.raises(CryptoError):
        verify_group_info_signature(c.cs, signed, c.signer_pub)

    other_key = c.cs.kem.generate()
    other_kp = dataclasses.replace(c.key_package, init_key=other_key.public_key)
    joiner = bytes(range(c.cs.n_h))
    secrets = [
        (c.key_package, GroupSecrets(joiner, None, ())),
        (other_kp, GroupSecrets(joiner, PathSecret(bytes([7]) * c.cs.n_h), ())),
    ]
    welcome_secret = KeySchedule.from_joiner_secret(c.cs, joiner, None, b"").welcome_secret
    built = build_welcome(c.cs, welcome_secret, signed, secrets)
    welcome = MLSMessage.from_bytes(MLSMessage.of(built).to_bytes()).body
    assert isinstance(welcome, Welcome) and welcome == built
    ref, other_ref = key_package_ref(c.cs, c.key_package), key_package_ref(c.cs, other_kp)
    assert ref != other_ref and [s.new_member for s in welcome.secrets] == [ref, other_ref]
    assert open_group_secrets(c.cs, welcome, ref, c.init_key) == secrets[0][1]
    assert open_group_secrets(c.cs, welcome, other_ref, other_key) == secrets[1][1]
    assert decrypt_group_info(c.cs, welcome_secret, welcome.encrypted_group_info) == signed
    # Each entry is for its own init key only.
    with pytest.raises(CryptoError):
        open_group_secrets(c.cs, welcome, other_ref, c.init_key)
    with pytest.raises(CryptoError):
        open_group_secrets(c.cs, welcome, ref, other_key)


@pytest.mark.parametrize("index", INDICES)
def test_group_secrets_that_decrypt_but_do_not_decode_are_a_decode_error(index: int) -> None:
    """A member's entry that opens to bytes that are not GroupSecrets is rejected as a DecodeError."""
    c = case(index)
    kem_output, ct = c.cs.encrypt_with_label(
        c.key_package.init_key, "Welcome", c.welcome.encrypted_group_info, b"\x05not group secrets"
    )
    bad = with_entry(c.welcome, EncryptedGroupSecrets(c.ref, HPKECiphertext(kem_output, ct)))
    with pytest.raises(DecodeError):
        c.secrets(bad)


@pytest.mark.parametrize("index", INDICES)
def test_group_secrets_reprs_hold_no_secrets(index: int) -> None:
    c = case(index)
    secrets = dataclasses.replace(c.secrets(), path_secret=PathSecret(bytes([0xA5]) * c.cs.n_h))
    assert secrets.path_secret is not None
    text = repr(secrets) + str(secrets) + repr(secrets.path_secret)
    for secret in (secrets.joiner_secret, secrets.path_secret.path_secret):
        assert secret.hex() not in text and repr(secret) not in text and secret.hex()[:16] not in text


# ---- many recipients, one EncryptContext (RFC 9420 §12.4.3.1, RFC 9180 §5.1) -----------------------------


def fixed_ephemerals(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the KEMs' ephemeral keys are DeriveKeyPair("ephemeral 0"), ("ephemeral 1"), … in order;
    calling this again starts the sequence over."""
    counter = itertools.count()

    def generate(kem: Kem) -> SoftwareHpkeKey:
        return kem.derive_key_pair(b"ephemeral %d" % next(counter))

    monkeypatch.setattr(Kem, "generate", generate)


def three_members(c: Case) -> tuple[list[tuple[KeyPackage, GroupSecrets]], list[SoftwareHpkeKey]]:
    """The vector's KeyPackage and two with fresh init keys, with distinct GroupSecrets, and their keys."""
    keys = [c.init_key, c.cs.kem.generate(), c.cs.kem.generate()]
    members = [
        (
            dataclasses.replace(c.key_package, init_key=key.public_key),
            GroupSecrets(bytes([i]) * c.cs.n_h, PathSecret(bytes([7 + i]) * c.cs.n_h), ()),
        )
        for i, key in enumerate(keys)
    ]
    return members, keys


@pytest.mark.parametrize("index", INDICES)
def test_encrypt_with_label_many_is_encrypt_with_label_for_each(
    index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = case(index)
    members, keys = three_members(c)
    pks, pts = [kp.init_key for kp, _ in members], [gs.to_bytes() for _, gs in members]
    context = c.welcome.encrypted_group_info
    fixed_ephemerals(monkeypatch)
    many = c.cs.encrypt_with_label_many(pks, "Welcome", context, pts)
    fixed_ephemerals(monkeypatch)
    assert many == [c.cs.encrypt_with_label(pk, "Welcome", context, pt) for pk, pt in zip(pks, pts)]
    assert len({kem_output for kem_output, _ in many}) == 3
    for key, pt, (kem_output, ct) in zip(keys, pts, many):
        assert c.cs.decrypt_with_label(key, "Welcome", context, kem_output, ct) == pt
    with pytest.raises(ValueError):
        c.cs.encrypt_with_label_many(pks, "Welcome", context, pts[:2])


@pytest.mark.parametrize("index", INDICES)
def test_a_welcome_we_build_is_byte_identical_to_one_encryption_per_member(
    index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = case(index)
    members, keys = three_members(c)
    welcome_secret = c.welcome_secret()
    fixed_ephemerals(monkeypatch)
    built = build_welcome(c.cs, welcome_secret, c.group_info(), members)
    fixed_ephemerals(monkeypatch)
    one_by_one = tuple(
        EncryptedGroupSecrets(
            key_package_ref(c.cs, kp),
            HPKECiphertext(
                *c.cs.encrypt_with_label(kp.init_key, "Welcome", built.encrypted_group_info, gs.to_bytes())
            ),
        )
        for kp, gs in members
    )
    assert (
        MLSMessage.of(built).to_bytes()
        == MLSMessage.of(dataclasses.replace(built, secrets=one_by_one)).to_bytes()
    )
    for (kp, gs), key in zip(members, keys):
        assert open_group_secrets(c.cs, built, key_package_ref(c.cs, kp), key) == gs


def count_extracts(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on the installed backend's ``hkdf_extract`` records each input keying material here."""
    backend = get_backend()
    extract = backend.hkdf_extract
    inputs: list[bytes] = []

    def counting_extract(alg: str, salt: bytes, ikm: bytes) -> bytes:
        inputs.append(ikm)
        return extract(alg, salt, ikm)

    monkeypatch.setattr(backend, "hkdf_extract", counting_extract)
    return inputs


@pytest.mark.parametrize("index", INDICES)
def test_a_welcome_hashes_its_encrypt_context_once(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One HPKE info_hash over the encrypted GroupInfo per Welcome, however many members it adds: the
    LabeledExtract of the shared info (RFC 9180 §5.1) is not repeated per recipient."""
    c = case(index)
    members, _ = three_members(c)
    welcome_secret, group_info = c.welcome_secret(), c.group_info()  # (these open the vector's Welcome)
    inputs = count_extracts(monkeypatch)
    built = build_welcome(c.cs, welcome_secret, group_info, members)
    over_info = [ikm for ikm in inputs if built.encrypted_group_info in ikm]
    assert len(over_info) == 1 and b"info_hash" in over_info[0]
    inputs.clear()
    for kp, gs in members:
        encrypt_group_secrets(c.cs, kp, built.encrypted_group_info, gs)
    assert sum(built.encrypted_group_info in ikm for ikm in inputs) == len(members)


def test_a_commit_adding_members_hashes_its_welcome_context_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through the group API: one commit adding 5 members, one info_hash over its GroupInfo."""
    clients = [Client(SoftwareKeyStore(), 1, Credential.basic(b"member %d" % i)) for i in range(6)]
    group = clients[0].create_group()
    adds = [c.key_package().key_package for c in clients[1:]]
    inputs = count_extracts(monkeypatch)
    staged = group.commit(CommitOptions(add=adds))
    assert staged.welcome is not None
    welcome = welcome_from_message(staged.welcome)
    assert len(welcome.secrets) == 5
    assert sum(welcome.encrypted_group_info in ikm for ikm in inputs) == 1
