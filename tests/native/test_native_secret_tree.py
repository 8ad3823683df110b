"""Sender ratchet (RFC 9420 §9.1) and sender-data keys (§6.3.2): native == reference == RFC vectors."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_testlib import AEADS, HASHES, NH

from mls.crypto import backend as crypto_backend
from mls.crypto.cipher_suite import CIPHER_SUITES, cipher_suite
from mls.errors import CryptoError, UnsupportedError, ValidationError
from tests.native import reference

hashes = st.sampled_from(HASHES)


@st.composite
def ratchet_case(draw: st.DrawFn) -> tuple[str, bytes, int, int, int, int]:
    alg = draw(hashes)
    secret = draw(st.binary(min_size=NH[alg], max_size=NH[alg]))
    count = draw(st.integers(0, 40))
    start = draw(st.one_of(st.integers(0, 1000), st.integers(2**32 - 1 - count, 2**32 - max(count, 1))))
    nk, nn = draw(st.sampled_from([(16, 12), (32, 12), (1, 1), (NH[alg], NH[alg] + 1), (200, 7)]))
    return alg, secret, start, count, nk, nn


@settings(max_examples=200, deadline=None)
@given(case=ratchet_case())
def test_ratchet_steps_match_reference(nb: Any, case: tuple[str, bytes, int, int, int, int]) -> None:
    assert nb.ratchet_steps(*case) == reference.ratchet_steps(*case)


@pytest.mark.parametrize("suite_id", sorted(CIPHER_SUITES))
def test_ratchet_steps_equal_chained_derive_tree_secret(nb: Any, suite_id: int) -> None:
    """Against the project's own DeriveTreeSecret (cipher_suite, Python backend), generation by generation."""
    suite = cipher_suite(suite_id)
    previous = crypto_backend.get_backend()
    crypto_backend.set_backend(crypto_backend.PythonBackend())
    try:
        secret = suite.hash(b"ratchet secret %d" % suite_id)
        keys, nonces = b"", b""
        s = secret
        for g in range(7, 7 + 25):
            keys += suite.derive_tree_secret(s, "key", g, suite.n_k)
            nonces += suite.derive_tree_secret(s, "nonce", g, suite.n_n)
            s = suite.derive_tree_secret(s, "secret", g, suite.n_h)
    finally:
        crypto_backend.set_backend(previous)
    assert nb.ratchet_steps(suite.hash_name, secret, 7, 25, suite.n_k, suite.n_n) == (keys, nonces, s)


@settings(max_examples=100, deadline=None)
@given(alg=hashes, data=st.data())
def test_ratchet_steps_compose(nb: Any, alg: str, data: st.DataObject) -> None:
    """n steps at once == a steps then b steps from the returned secret."""
    secret = data.draw(st.binary(min_size=NH[alg], max_size=NH[alg]))
    a, b, start = (
        data.draw(st.integers(0, 20)),
        data.draw(st.integers(0, 20)),
        data.draw(st.integers(0, 10**6)),
    )
    keys, nonces, end = nb.ratchet_steps(alg, secret, start, a + b, 16, 12)
    keys1, nonces1, mid = nb.ratchet_steps(alg, secret, start, a, 16, 12)
    keys2, nonces2, end2 = nb.ratchet_steps(alg, mid, start + a, b, 16, 12)
    assert (keys1 + keys2, nonces1 + nonces2, end2) == (keys, nonces, end)
    assert (len(keys), len(nonces)) == (16 * (a + b), 12 * (a + b))
    if a + b == 0:
        assert end == secret


def _tree_secret(suite: Any, secret: bytes, n_leaves: int, leaf: int) -> bytes:
    """The secret-tree leaf secret (§9): descend from the root with "tree"/"left"|"right"."""
    depth = (n_leaves - 1).bit_length()
    for k in range(depth - 1, -1, -1):
        side = "right" if (leaf >> k) & 1 else "left"
        secret = reference.expand_with_label(suite.hash_name, secret, b"tree", side.encode(), suite.n_h)
    return secret


def _vectors(shared_dir: Path, name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((shared_dir / "mls-test-vectors" / name).read_text())
    return cases


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_secret_tree_vectors(nb: Any, shared_dir: Path, impl: str) -> None:
    """RFC 9420 secret-tree test vectors: every leaf's handshake/application key and nonce per generation."""
    ratchet = nb.ratchet_steps if impl == "native" else reference.ratchet_steps
    sender_data = nb.sender_data_key_nonce if impl == "native" else reference.sender_data_key_nonce
    checked = 0
    for case in _vectors(shared_dir, "secret-tree.json"):
        suite = cipher_suite(int(case["cipher_suite"]))
        alg, nk, nn = suite.hash_name, suite.n_k, suite.n_n
        sd = case["sender_data"]
        key, nonce = sender_data(
            alg, bytes.fromhex(sd["sender_data_secret"]), bytes.fromhex(sd["ciphertext"]), nk, nn
        )
        assert (key.hex(), nonce.hex()) == (sd["key"], sd["nonce"])
        root = bytes.fromhex(case["encryption_secret"])
        n_leaves = len(case["leaves"])
        for leaf, generations in enumerate(case["leaves"]):
            leaf_secret = _tree_secret(suite, root, n_leaves, leaf)
            for kind in ("handshake", "application"):
                base = reference.expand_with_label(alg, leaf_secret, kind.encode(), b"", suite.n_h)
                last = max(g["generation"] for g in generations)
                keys, nonces, _ = ratchet(alg, base, 0, last + 1, nk, nn)
                for g in generations:
                    i = g["generation"]
                    k, n = keys[i * nk : (i + 1) * nk], nonces[i * nn : (i + 1) * nn]
                    assert (k.hex(), n.hex()) == (g[f"{kind}_key"], g[f"{kind}_nonce"])
                    checked += 1
    assert checked > 100


@settings(max_examples=200, deadline=None)
@given(alg=hashes, data=st.data())
def test_sender_data_matches_reference(nb: Any, alg: str, data: st.DataObject) -> None:
    secret = data.draw(st.binary(min_size=NH[alg], max_size=NH[alg]))
    ciphertext = data.draw(st.binary(max_size=3 * NH[alg]))  # shorter than, equal to and longer than Nh
    nk, nn = AEADS[data.draw(st.sampled_from(sorted(AEADS)))]
    got = nb.sender_data_key_nonce(alg, secret, ciphertext, nk, nn)
    assert got == reference.sender_data_key_nonce(alg, secret, ciphertext, nk, nn)
    # Only the first Nh bytes count.
    assert (
        got == nb.sender_data_key_nonce(alg, secret, ciphertext + b"tail", nk, nn)
        or len(ciphertext) < NH[alg]
    )


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_ratchet_argument_errors(nb: Any, impl: str) -> None:
    f = nb.ratchet_steps if impl == "native" else reference.ratchet_steps
    s = bytes(32)
    with pytest.raises(CryptoError):
        f("sha256", bytes(31), 0, 1, 16, 12)
    with pytest.raises(CryptoError):
        f("sha256", bytes(64), 0, 1, 16, 12)
    for nk, nn in ((0, 12), (16, 0), (255 * 32 + 1, 12), (16, 2**40)):
        with pytest.raises(CryptoError):
            f("sha256", s, 0, 1, nk, nn)
    for start, count in (
        (-1, 1),
        (2**32, 1),
        (2**32 - 1, 2),
        (0, -1),
        (0, (1 << 20) + 1),
        (2**64, 1),
        (2**32, 0),
    ):
        with pytest.raises(ValidationError):
            f("sha256", s, start, count, 16, 12)
    with pytest.raises(UnsupportedError):
        f("sha1", bytes(20), 0, 1, 16, 12)
    # The last representable generation is fine, and count 0 returns the secret unchanged.
    assert len(f("sha256", s, 2**32 - 1, 1, 16, 12)[0]) == 16
    assert f("sha256", s, 5, 0, 16, 12) == (b"", b"", s)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_sender_data_argument_errors(nb: Any, impl: str) -> None:
    f = nb.sender_data_key_nonce if impl == "native" else reference.sender_data_key_nonce
    with pytest.raises(CryptoError):
        f("sha256", bytes(16), b"ct", 16, 12)
    with pytest.raises(CryptoError):
        f("sha256", bytes(32), b"ct", 0, 12)
    with pytest.raises(CryptoError):
        f("sha256", bytes(32), b"ct", 16, 10**6)
    with pytest.raises(UnsupportedError):
        f("md5", bytes(16), b"ct", 16, 12)


def test_gil_released_during_native_call(nb: Any) -> None:
    """cffi's out-of-line calls release the GIL: Python code keeps running during a long ratchet call."""
    from native._mlsnative import ffi, lib

    count = 150_000
    keys, nonces, nxt = (
        ffi.new("uint8_t[]", count * 16),
        ffi.new("uint8_t[]", count * 12),
        ffi.new("uint8_t[]", 32),
    )
    started = threading.Event()
    rc: list[int] = []

    def worker() -> None:
        started.set()
        rc.append(
            lib.mlsn_ratchet_steps(
                1, bytes(32), 32, 0, count, 16, 12, keys, count * 16, nonces, count * 12, nxt, 32
            )
        )

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    spins = 0
    while t.is_alive():
        spins += 1
    t.join()
    assert rc == [0]
    # Holding the GIL for the whole call would leave the loop a handful of iterations at most.
    assert spins > 10_000
