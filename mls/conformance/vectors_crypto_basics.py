"""``crypto-basics`` vectors: RefHash, ExpandWithLabel, DeriveSecret, DeriveTreeSecret, SignWithLabel and
EncryptWithLabel for one cipher suite (RFC 9420 §5.1–§5.2, §9)."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite


@vector_kind(
    "crypto-basics",
    keys=[
        "cipher_suite",
        "derive_secret",
        "derive_tree_secret",
        "encrypt_with_label",
        "expand_with_label",
        "ref_hash",
        "sign_with_label",
    ],
)
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])

    v = case["ref_hash"]
    expect_equal("ref_hash", cs.ref_hash(v["label"], h(v["value"])), h(v["out"]))

    v = case["expand_with_label"]
    out = cs.expand_with_label(h(v["secret"]), v["label"], h(v["context"]), v["length"])
    expect_equal("expand_with_label", out, h(v["out"]))

    v = case["derive_secret"]
    expect_equal("derive_secret", cs.derive_secret(h(v["secret"]), v["label"]), h(v["out"]))

    v = case["derive_tree_secret"]
    out = cs.derive_tree_secret(h(v["secret"]), v["label"], v["generation"], v["length"])
    expect_equal("derive_tree_secret", out, h(v["out"]))

    v = case["sign_with_label"]
    signer = cs.signer_from_private_bytes(h(v["priv"]))
    expect_equal("sign_with_label public key", signer.public_key, h(v["pub"]))
    if not cs.verify_with_label(h(v["pub"]), v["label"], h(v["content"]), h(v["signature"])):
        raise AssertionError("sign_with_label: the vector's signature does not verify")
    ours = cs.sign_with_label(signer, v["label"], h(v["content"]))
    if not cs.verify_with_label(h(v["pub"]), v["label"], h(v["content"]), ours):
        raise AssertionError("sign_with_label: our signature does not verify")

    v = case["encrypt_with_label"]
    key = cs.hpke_key_from_private_bytes(h(v["priv"]))
    expect_equal("encrypt_with_label public key", key.public_key, h(v["pub"]))
    pt = cs.decrypt_with_label(key, v["label"], h(v["context"]), h(v["kem_output"]), h(v["ciphertext"]))
    expect_equal("decrypt_with_label", pt, h(v["plaintext"]))
    kem_output, ct = cs.encrypt_with_label(h(v["pub"]), v["label"], h(v["context"]), h(v["plaintext"]))
    pt = cs.decrypt_with_label(key, v["label"], h(v["context"]), kem_output, ct)
    expect_equal("encrypt_with_label round trip", pt, h(v["plaintext"]))
