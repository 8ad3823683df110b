"""RFC 9180 test vectors for the HPKE of mls.crypto.hpke (base mode; the KEMs, KDFs, AEADs MLS uses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mls.crypto.backend import AEAD_SIZES
from mls.crypto.hpke import KDF_IDS, KEMS, PreparedInfo, hpke_suite
from mls.errors import CryptoError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "hpke-test-vectors" / "rfc9180-test-vectors.json"


def _cases() -> list[dict[str, Any]]:
    data = json.loads(VECTORS.read_text())
    return [
        c
        for c in data
        if c["mode"] == 0 and c["kem_id"] in KEMS and c["kdf_id"] in KDF_IDS and c["aead_id"] in AEAD_SIZES
    ]


CASES = _cases()


def test_vector_selection_covers_every_mls_kem() -> None:
    # P-384 (0x0011) has no vectors in RFC 9180's file; every other KEM MLS uses must be exercised.
    assert {c["kem_id"] for c in CASES} == {0x10, 0x12, 0x20, 0x21}
    assert {c["aead_id"] for c in CASES} == {1, 2, 3}
    assert len(CASES) == 24  # 4 KEMs x HKDF-SHA256/SHA512 x 3 AEADs


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"kem{c['kem_id']:x}-kdf{c['kdf_id']}-aead{c['aead_id']}"
)
def test_rfc9180_base_mode(case: dict[str, Any]) -> None:
    b = bytes.fromhex
    suite = hpke_suite(case["kem_id"], case["kdf_id"], case["aead_id"])
    kem = suite.kem

    sk_r = kem.derive_key_pair(b(case["ikmR"]))
    assert sk_r.private_bytes() == b(case["skRm"])
    assert sk_r.public_key == b(case["pkRm"])
    sk_e = kem.derive_key_pair(b(case["ikmE"]))
    assert sk_e.public_key == b(case["pkEm"])

    shared, enc = kem.encap(b(case["pkRm"]), ephemeral=sk_e)
    assert enc == b(case["enc"])
    assert shared == b(case["shared_secret"])
    assert kem.decap(b(case["enc"]), sk_r) == b(case["shared_secret"])

    ctx = suite.setup_base_r(b(case["enc"]), sk_r, b(case["info"]))
    assert ctx.key == b(case["key"])
    assert ctx.base_nonce == b(case["base_nonce"])
    assert ctx.exporter_secret == b(case["exporter_secret"])
    sender = suite.key_schedule(shared, b(case["info"]))
    for enc_case in case["encryptions"]:
        assert sender.seal(b(enc_case["aad"]), b(enc_case["pt"])) == b(enc_case["ct"])
        assert ctx.open(b(enc_case["aad"]), b(enc_case["ct"])) == b(enc_case["pt"])
    for exp in case["exports"]:
        assert ctx.export(b(exp["exporter_context"]), exp["L"]) == b(exp["exported_value"])


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"kem{c['kem_id']:x}-kdf{c['kdf_id']}-aead{c['aead_id']}"
)
def test_rfc9180_base_mode_with_a_prepared_info(case: dict[str, Any]) -> None:
    """The info hashed once by prepare_info (§5.1) gives the vector's enc, context and ciphertexts."""
    b = bytes.fromhex
    suite = hpke_suite(case["kem_id"], case["kdf_id"], case["aead_id"])
    info = suite.prepare_info(b(case["info"]))
    sk_r = suite.kem.derive_key_pair(b(case["ikmR"]))
    sk_e = suite.kem.derive_key_pair(b(case["ikmE"]))

    enc, sender = suite.setup_base_s(b(case["pkRm"]), info, ephemeral=sk_e)
    assert enc == b(case["enc"])
    receiver = suite.setup_base_r(enc, sk_r, info)
    for ctx in (sender, receiver):
        assert (ctx.key, ctx.base_nonce) == (b(case["key"]), b(case["base_nonce"]))
        assert ctx.exporter_secret == b(case["exporter_secret"])
    for enc_case in case["encryptions"]:
        assert sender.seal(b(enc_case["aad"]), b(enc_case["pt"])) == b(enc_case["ct"])
    first = case["encryptions"][0]
    enc, ct = suite.seal_base(b(case["pkRm"]), info, b(first["aad"]), b(first["pt"]))
    assert suite.open_base(enc, sk_r, b(case["info"]), b(first["aad"]), ct) == b(first["pt"])


def test_a_prepared_info_is_for_its_own_suite_only() -> None:
    sha256, sha512 = hpke_suite(0x20, 1, 1), hpke_suite(0x20, 3, 1)
    info = sha256.prepare_info(b"info")
    assert isinstance(info, PreparedInfo) and len(info.key_schedule_context) == 1 + 2 * 32
    assert (
        hpke_suite(0x20, 1, 1).key_schedule(bytes(32), info).key
        == sha256.key_schedule(bytes(32), b"info").key
    )
    with pytest.raises(ValueError):
        sha512.key_schedule(bytes(64), info)


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: f"kem{c['kem_id']:x}-aead{c['aead_id']}")
def test_tampered_ciphertext_is_rejected(case: dict[str, Any]) -> None:
    b = bytes.fromhex
    suite = hpke_suite(case["kem_id"], case["kdf_id"], case["aead_id"])
    sk_r = suite.kem.derive_key_pair(b(case["ikmR"]))
    first = case["encryptions"][0]
    ct = bytearray(b(first["ct"]))
    ct[0] ^= 1
    with pytest.raises(CryptoError):
        suite.open_base(b(case["enc"]), sk_r, b(case["info"]), b(first["aad"]), bytes(ct))


def test_single_shot_round_trip_every_kem() -> None:
    for kem_id, kem in KEMS.items():
        suite = hpke_suite(kem_id, 1, 1)
        sk = kem.generate()
        enc, ct = suite.seal_base(sk.public_key, b"info", b"aad", b"hello")
        assert suite.open_base(enc, sk, b"info", b"aad", ct) == b"hello"
        assert sk.private_bytes().hex() not in repr(sk)


def test_invalid_public_key_rejected() -> None:
    kem = KEMS[0x10]
    with pytest.raises(CryptoError):
        kem.encap(b"\x04" + bytes(64))
    with pytest.raises(CryptoError):
        KEMS[0x20].encap(bytes(31))
