"""AEAD seal/open (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305): native == Python, one-shot and batched."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_testlib import AEADS, payloads

from mls.errors import CryptoError, UnsupportedError

aeads = st.sampled_from(sorted(AEADS))


@st.composite
def aead_case(draw: st.DrawFn, max_size: int = 65536) -> tuple[int, bytes, bytes, bytes, bytes]:
    aead = draw(aeads)
    nk, nn = AEADS[aead]
    key = draw(st.binary(min_size=nk, max_size=nk))
    nonce = draw(st.binary(min_size=nn, max_size=nn))
    aad = draw(st.one_of(st.binary(max_size=80), payloads(2048)))
    return aead, key, nonce, aad, draw(payloads(max_size))


@settings(max_examples=300, deadline=None)
@given(case=aead_case())
def test_seal_open_identical(nb: Any, pb: Any, case: tuple[int, bytes, bytes, bytes, bytes]) -> None:
    aead, key, nonce, aad, pt = case
    ct = nb.aead_seal(aead, key, nonce, aad, pt)
    assert ct == pb.aead_seal(aead, key, nonce, aad, pt)
    assert len(ct) == len(pt) + 16
    assert nb.aead_open(aead, key, nonce, aad, ct) == pt
    assert pb.aead_open(aead, key, nonce, aad, ct) == pt


@settings(max_examples=200, deadline=None)
@given(case=aead_case(4096), data=st.data())
def test_corruption_rejected_by_both(
    nb: Any, pb: Any, case: tuple[int, bytes, bytes, bytes, bytes], data: st.DataObject
) -> None:
    aead, key, nonce, aad, pt = case
    ct = bytearray(pb.aead_seal(aead, key, nonce, aad, pt))
    # Flip one bit anywhere: in the tag (last 16 bytes) or the body.
    pos = data.draw(st.integers(0, len(ct) - 1), label="position")
    ct[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    for backend in (nb, pb):
        with pytest.raises(CryptoError) as err:
            backend.aead_open(aead, key, nonce, aad, bytes(ct))
        assert err.value.rule == "5.1/aead-tag"
    # A different AAD fails the same way.
    good = pb.aead_seal(aead, key, nonce, aad, pt)
    for backend in (nb, pb):
        with pytest.raises(CryptoError):
            backend.aead_open(aead, key, nonce, aad + b"x", good)


def test_truncated_ciphertexts_rejected(nb: Any, pb: Any) -> None:
    for aead, (nk, nn) in AEADS.items():
        ct = pb.aead_seal(aead, bytes(nk), bytes(nn), b"", b"hello")
        for cut in (0, 1, 15, 16, len(ct) - 1):
            for backend in (nb, pb):
                with pytest.raises(CryptoError):
                    backend.aead_open(aead, bytes(nk), bytes(nn), b"", ct[:cut])


@st.composite
def batch(draw: st.DrawFn) -> tuple[int, list[tuple[bytes, bytes, bytes, bytes]]]:
    aead = draw(aeads)
    nk, nn = AEADS[aead]
    items = draw(
        st.lists(
            st.tuples(
                st.binary(min_size=nk, max_size=nk),
                st.binary(min_size=nn, max_size=nn),
                st.binary(max_size=40),
                st.one_of(st.binary(max_size=200), payloads(8192)),
            ),
            max_size=40,
        )
    )
    return aead, items


@settings(max_examples=150, deadline=None)
@given(case=batch(), data=st.data())
def test_batched_equals_one_shot(nb: Any, pb: Any, case: tuple[int, list[Any]], data: st.DataObject) -> None:
    aead, items = case
    sealed = nb.aead_seal_many(aead, items)
    assert sealed == [pb.aead_seal(aead, *item) for item in items]
    assert sealed == pb.aead_seal_many(aead, items)
    to_open = [(k, n, a, c) for (k, n, a, _), c in zip(items, sealed)]
    # Corrupt some items: flip a bit, truncate below a tag, or swap in another item's AAD.
    bad = set()
    for i in (
        data.draw(st.sets(st.integers(0, max(len(items) - 1, 0)), max_size=5), label="bad") if items else ()
    ):
        k, n, a, c = to_open[i]
        how = data.draw(st.sampled_from(["flip", "short", "aad"]), label="how")
        if how == "flip":
            c = bytes([c[0] ^ 0x80]) + c[1:]
        elif how == "short":
            c = c[: data.draw(st.integers(0, 15), label="cut")]
        else:
            a = a + b"\x00"
        to_open[i] = (k, n, a, c)
        bad.add(i)
    opened = nb.aead_open_many(aead, to_open)
    assert opened == pb.aead_open_many(aead, to_open)
    assert opened == [None if i in bad else item[3] for i, item in enumerate(items)]


def test_empty_batches(nb: Any, pb: Any) -> None:
    assert nb.aead_seal_many(1, []) == []
    assert nb.aead_open_many(1, []) == []
    for backend in (nb, pb):
        assert backend.aead_seal_batch(1, b"", b"", b"aad", []) == []
        assert backend.aead_open_batch(1, b"", b"", [], []) == []


@st.composite
def key_batch(draw: st.DrawFn) -> tuple[int, bytes, bytes, bytes | list[bytes], list[bytes]]:
    """A batch in the secret tree's layout: keys and nonces back to back; one shared AAD or one each."""
    aead = draw(aeads)
    nk, nn = AEADS[aead]
    pts = draw(st.lists(st.one_of(st.binary(max_size=200), payloads(4096)), max_size=40))
    n = len(pts)
    keys = draw(st.binary(min_size=n * nk, max_size=n * nk))
    nonces = draw(st.binary(min_size=n * nn, max_size=n * nn))
    aad: bytes | list[bytes] = draw(
        st.one_of(st.binary(max_size=60), st.lists(st.binary(max_size=60), min_size=n, max_size=n))
    )
    return aead, keys, nonces, aad, pts


@settings(max_examples=150, deadline=None)
@given(case=key_batch(), data=st.data())
def test_key_batches_identical(nb: Any, pb: Any, case: tuple[Any, ...], data: st.DataObject) -> None:
    """aead_seal_batch/aead_open_batch: both backends give the same bytes as one-shot calls, and a
    corrupted item (bit flip, truncation below a tag) opens to None in both while the rest open."""
    aead, keys, nonces, aad, pts = case
    nk, nn = AEADS[aead]
    aads = [aad] * len(pts) if isinstance(aad, bytes) else aad
    one_shot = [
        pb.aead_seal(aead, keys[i * nk : (i + 1) * nk], nonces[i * nn : (i + 1) * nn], aads[i], pt)
        for i, pt in enumerate(pts)
    ]
    assert nb.aead_seal_batch(aead, keys, nonces, aad, pts) == one_shot
    assert pb.aead_seal_batch(aead, keys, nonces, aad, pts) == one_shot
    cts = list(one_shot)
    bad = data.draw(st.sets(st.integers(0, len(pts) - 1), max_size=4), label="bad") if pts else set()
    for i in bad:
        if data.draw(st.booleans(), label="flip"):
            cts[i] = bytes([cts[i][0] ^ 1]) + cts[i][1:]
        else:
            cts[i] = cts[i][: data.draw(st.integers(0, 15), label="cut")]
    opened = nb.aead_open_batch(aead, keys, nonces, aad, cts)
    assert opened == pb.aead_open_batch(aead, keys, nonces, aad, cts)
    assert opened == [None if i in bad else pt for i, pt in enumerate(pts)]


def test_key_batch_shape_errors(nb: Any, pb: Any) -> None:
    """Key or nonce buffers that do not match the batch, or a wrong number of AADs: CryptoError, both."""
    pts = [b"a", b"bc"]
    for backend in (nb, pb):
        for keys, nonces, aad in (
            (bytes(31), bytes(24), b""),
            (bytes(33), bytes(24), b""),
            (bytes(32), bytes(23), b""),
            (bytes(32), bytes(24), [b"only one"]),
            (bytes(32), bytes(24), [b"", b"", b""]),
        ):
            with pytest.raises(CryptoError):
                backend.aead_seal_batch(1, keys, nonces, aad, pts)
            with pytest.raises(CryptoError):
                backend.aead_open_batch(1, keys, nonces, aad, [bytes(17), bytes(18)])
        with pytest.raises(UnsupportedError):
            backend.aead_seal_batch(9, bytes(32), bytes(24), b"", pts)


def test_wrong_key_or_nonce_lengths(nb: Any, pb: Any) -> None:
    for aead, (nk, nn) in AEADS.items():
        for key, nonce in ((bytes(nk - 1), bytes(nn)), (bytes(nk + 1), bytes(nn)), (bytes(nk), bytes(nn - 1)),
                           (bytes(nk), bytes(nn + 4)), (b"", b""), (bytes(1 << 20), bytes(nn))):  # fmt: skip
            for backend in (nb, pb):
                with pytest.raises(CryptoError):
                    backend.aead_seal(aead, key, nonce, b"", b"pt")
                with pytest.raises(CryptoError):
                    backend.aead_open(aead, key, nonce, b"", bytes(32))
                with pytest.raises(CryptoError):
                    backend.aead_seal_many(
                        aead, [(bytes(nk), bytes(nn), b"", b"ok"), (key, nonce, b"", b"pt")]
                    )
            # open_many: like the Python backend, the bad item opens to None, the others still open.
            good = (bytes(nk), bytes(nn), b"", pb.aead_seal(aead, bytes(nk), bytes(nn), b"", b"ok"))
            items = [good, (key, nonce, b"", bytes(32)), good]
            assert nb.aead_open_many(aead, items) == pb.aead_open_many(aead, items) == [b"ok", None, b"ok"]


def test_unknown_aead_is_unsupported(nb: Any, pb: Any) -> None:
    for aead in (0, 4, 0xFFFF, -1):
        for backend in (nb, pb):
            with pytest.raises(UnsupportedError):
                backend.aead_seal(aead, bytes(16), bytes(12), b"", b"")
            with pytest.raises(UnsupportedError):
                backend.aead_open_many(aead, [(bytes(16), bytes(12), b"", bytes(16))])
        with pytest.raises(UnsupportedError):
            nb.aead_seal_many(aead, [(bytes(16), bytes(12), b"", b"")])


def test_malformed_items(nb: Any) -> None:
    with pytest.raises(TypeError):
        nb.aead_seal_many(1, [(bytes(16), bytes(12), b"")])
    with pytest.raises(TypeError):
        nb.aead_seal_many(1, [(bytes(16), bytes(12), b"", b"", b"")])
    with pytest.raises(TypeError):
        nb.aead_seal_many(1, [(bytes(16), bytes(12), b"", None)])


def test_large_message(nb: Any, pb: Any) -> None:
    pt = bytes(range(256)) * (1 << 14)  # 4 MiB
    for aead, (nk, nn) in AEADS.items():
        ct = nb.aead_seal(aead, b"k" * nk, b"n" * nn, b"aad", pt)
        assert ct == pb.aead_seal(aead, b"k" * nk, b"n" * nn, b"aad", pt)
        assert nb.aead_open_many(aead, [(b"k" * nk, b"n" * nn, b"aad", ct)]) == [pt]


def test_concurrent_batches_from_threads(nb: Any, pb: Any) -> None:
    # The C calls run without the GIL: several threads sealing at once must not disturb each other.
    items = [(bytes([i]) * 16, bytes([i]) * 12, b"a", bytes([i]) * (i * 7)) for i in range(200)]
    expected = pb.aead_seal_many(1, items)
    results: list[list[bytes]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                results.append(nb.aead_seal_many(1, items))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 80 and all(r == expected for r in results)


def test_short_lived_threads_use_their_own_contexts(nb: Any, pb: Any) -> None:
    """Each thread caches its own cipher/HMAC/digest contexts, freed when it exits (ASan watches that)."""
    key, nonce = bytes(range(32)), bytes(12)
    expected = {
        aead: (pb.aead_seal(aead, key[:nk], nonce, b"a", b"message"), pb.hkdf_expand("sha384", key, b"i", 70))
        for aead, (nk, _) in AEADS.items()
    }
    failures: list[str] = []

    def worker(aead: int) -> None:
        nk = AEADS[aead][0]
        for _ in range(50):
            ct = nb.aead_seal(aead, key[:nk], nonce, b"a", b"message")
            if (ct, nb.hkdf_expand("sha384", key, b"i", 70)) != expected[aead]:
                failures.append(f"aead {aead}: wrong bytes")
            if nb.aead_open(aead, key[:nk], nonce, b"a", ct) != b"message":
                failures.append(f"aead {aead}: open failed")
            if nb.aead_open_many(aead, [(key[:nk], nonce, b"b", ct)]) != [None]:
                failures.append(f"aead {aead}: bad AAD accepted")

    for _ in range(3):
        threads = [threading.Thread(target=worker, args=(aead,)) for aead in AEADS for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
