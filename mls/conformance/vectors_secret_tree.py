"""``secret-tree`` vectors: the sender-data key and nonce (RFC 9420 §6.3.2) and, for each leaf, the
handshake and application keys and nonces of the listed generations (§9, §9.1).

Each leaf's generations are checked by a receiver that jumps straight to each listed generation
(fast-forwarding its ratchets; peeked first, then consumed) and by a sender that steps through every
generation in order."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite
from mls.schedule.secret_tree import RatchetKey, RatchetType, SecretTree, sender_data_key_nonce


def _check(what: str, got: RatchetKey, want: dict[str, Any], rt: RatchetType) -> None:
    expect_equal(f"{what} {rt.value}_key", got.key, h(want[f"{rt.value}_key"]))
    expect_equal(f"{what} {rt.value}_nonce", got.nonce, h(want[f"{rt.value}_nonce"]))


@vector_kind("secret-tree", keys=["cipher_suite", "encryption_secret", "sender_data", "leaves"])
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])

    sd = case["sender_data"]
    kn = sender_data_key_nonce(cs, h(sd["sender_data_secret"]), h(sd["ciphertext"]))
    expect_equal("sender_data key", kn.key, h(sd["key"]))
    expect_equal("sender_data nonce", kn.nonce, h(sd["nonce"]))

    leaves = case["leaves"]
    receiver = SecretTree(cs, h(case["encryption_secret"]), len(leaves))
    sender = SecretTree(cs, h(case["encryption_secret"]), len(leaves))
    for leaf, generations in enumerate(leaves):
        for rt in RatchetType:
            for want in sorted(generations, key=lambda g: int(g["generation"])):
                gen = want["generation"]
                _check(
                    f"leaf {leaf} generation {gen} (peek)", receiver.peek_key_nonce(leaf, rt, gen), want, rt
                )
                _check(
                    f"leaf {leaf} generation {gen} (receiver)", receiver.key_nonce(leaf, rt, gen), want, rt
                )
                ratchet = sender.ratchet(leaf, rt)
                while ratchet.generation < gen:
                    ratchet.next()
                _check(f"leaf {leaf} generation {gen} (sender)", ratchet.next(), want, rt)
