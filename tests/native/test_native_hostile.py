"""Hostile arguments straight at the C layer: inconsistent or huge lengths, NULLs, bad flags.

Every call must come back with a status code - never read or write out of bounds (run these under
native/sanitize_check.sh to have AddressSanitizer and UBSan check that).
"""

from __future__ import annotations

from typing import Any

import pytest

from mls.errors import CryptoError

SIZE_MAX = 2**64 - 1


@pytest.fixture(scope="module")
def c(nb: Any) -> tuple[Any, Any]:
    from native._mlsnative import ffi, lib

    return ffi, lib


def _sizes(ffi: Any, values: list[int]) -> Any:
    return ffi.new("size_t[]", values)


def test_one_shot_aead_lengths(c: tuple[Any, Any]) -> None:
    ffi, lib = c
    out = ffi.new("uint8_t[]", 64)
    k, n = bytes(16), bytes(12)
    L = lib.MLSN_ERR_LENGTH
    assert lib.mlsn_aead_seal(1, k, 15, n, 12, b"", 0, b"", 0, out, 16) == L
    assert lib.mlsn_aead_seal(1, k, 16, n, 11, b"", 0, b"", 0, out, 16) == L
    assert lib.mlsn_aead_seal(1, k, 16, n, 12, b"", 0, b"abc", 3, out, 18) == L  # out one short
    assert (
        lib.mlsn_aead_seal(1, k, 16, n, 12, b"", 0, b"abc", SIZE_MAX, out, 19) == L
    )  # pt_len + 16 overflows
    assert lib.mlsn_aead_seal(1, k, 16, n, 12, ffi.NULL, 5, b"", 0, out, 16) == L
    assert lib.mlsn_aead_seal(1, ffi.NULL, 16, n, 12, b"", 0, b"", 0, out, 16) == L
    assert lib.mlsn_aead_seal(1, k, 16, n, 12, b"", 0, b"", 0, ffi.NULL, 16) == L
    assert lib.mlsn_aead_seal(9, k, 16, n, 12, b"", 0, b"", 0, out, 16) == lib.MLSN_ERR_UNSUPPORTED
    assert lib.mlsn_aead_open(1, k, 16, n, 12, b"", 0, bytes(10), 10, out, 0) == lib.MLSN_ERR_AUTH
    assert lib.mlsn_aead_open(1, k, 16, n, 12, b"", 0, bytes(20), 20, out, 5) == L
    assert lib.mlsn_aead_open(1, k, 16, n, 12, b"", 0, ffi.NULL, 20, out, 4) == L
    assert lib.mlsn_aead_open(1, k, 16, n, 12, b"", 0, bytes(20), 20, out, 4) == lib.MLSN_ERR_AUTH


def test_batch_aead_lengths(c: tuple[Any, Any]) -> None:
    ffi, lib = c
    L = lib.MLSN_ERR_LENGTH
    keys, nonces = bytes(32), bytes(24)
    out = ffi.new("uint8_t[]", 100)
    status = ffi.new("int8_t[]", 2)

    def seal(
        n: int, kl: int, nl: int, aads: bytes, al: Any, alen: int, pts: bytes, pl: Any, plen: int, ol: int
    ) -> int:
        return int(
            lib.mlsn_aead_seal_many(1, n, keys, kl, nonces, nl, aads, alen, al, pts, plen, pl, out, ol)
        )

    ok = seal(2, 32, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [1, 2]), 3, 35)
    assert ok == lib.MLSN_OK
    assert (
        seal(2, 31, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [1, 2]), 3, 35) == L
    )  # keys short
    assert (
        seal(2, 32, 25, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [1, 2]), 3, 35) == L
    )  # nonces long
    assert (
        seal(2, 32, 24, b"ab", _sizes(ffi, [1, 2]), 2, b"xyz", _sizes(ffi, [1, 2]), 3, 35) == L
    )  # aad lens > buffer
    assert (
        seal(2, 32, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [2, 2]), 3, 35) == L
    )  # pt lens > buffer
    assert (
        seal(2, 32, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [1, 1]), 3, 34) == L
    )  # pt lens < buffer
    assert (
        seal(2, 32, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [1, 2]), 3, 36) == L
    )  # out too long
    # Lengths whose sum wraps around size_t.
    assert seal(2, 32, 24, b"ab", _sizes(ffi, [SIZE_MAX, 3]), 2, b"xyz", _sizes(ffi, [1, 2]), 3, 35) == L
    assert seal(2, 32, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [SIZE_MAX - 15, 4]), 3, 35) == L
    assert seal(2, 32, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", _sizes(ffi, [SIZE_MAX, 4]), 3, 35) == L
    # n * Nk overflowing size_t.
    assert seal(2**63, 0, 0, b"", ffi.NULL, 0, b"", ffi.NULL, 0, 0) == L
    # NULL pt lens with items; NULL aad lens is the shared-AAD form: each item takes all of aads.
    assert seal(2, 32, 24, b"ab", _sizes(ffi, [1, 1]), 2, b"xyz", ffi.NULL, 3, 35) == L
    assert seal(2, 32, 24, b"ab", ffi.NULL, 2, b"xyz", _sizes(ffi, [1, 2]), 3, 35) == lib.MLSN_OK
    shared = ffi.buffer(out, 35)[:]
    assert seal(2, 32, 24, b"abab", _sizes(ffi, [2, 2]), 4, b"xyz", _sizes(ffi, [1, 2]), 3, 35) == lib.MLSN_OK
    assert ffi.buffer(out, 35)[:] == shared
    assert seal(2, 32, 24, ffi.NULL, ffi.NULL, 2, b"xyz", _sizes(ffi, [1, 2]), 3, 35) == L
    assert seal(0, 0, 0, b"", ffi.NULL, 0, b"", ffi.NULL, 0, 0) == lib.MLSN_OK

    def open_(cl: Any, clen: int, ol: int, st: Any = status) -> int:
        return int(
            lib.mlsn_aead_open_many(
                1, 2, keys, 32, nonces, 24, b"", 0, _sizes(ffi, [0, 0]), bytes(40), clen, cl, out, ol, st
            )
        )

    assert open_(_sizes(ffi, [20, 20]), 40, 8) == lib.MLSN_OK
    assert list(status) == [lib.MLSN_ERR_AUTH, lib.MLSN_ERR_AUTH]
    assert open_(_sizes(ffi, [20, 20]), 40, 8, ffi.NULL) == L
    assert open_(_sizes(ffi, [20, 20]), 40, 9) == L
    assert open_(_sizes(ffi, [10, 30]), 40, 14) == lib.MLSN_OK  # a short item gives no bytes, fails alone
    assert list(status) == [lib.MLSN_ERR_LENGTH, lib.MLSN_ERR_AUTH]
    assert open_(_sizes(ffi, [SIZE_MAX, 41]), 40, 8) == L


def test_kdf_lengths(c: tuple[Any, Any]) -> None:
    ffi, lib = c
    out = ffi.new("uint8_t[]", 64)
    L = lib.MLSN_ERR_LENGTH
    assert lib.mlsn_hash(1, b"x", 1, out, 31) == L
    assert lib.mlsn_hash(1, ffi.NULL, 1, out, 32) == L
    assert lib.mlsn_hash(0, b"x", 1, out, 32) == lib.MLSN_ERR_UNSUPPORTED
    assert lib.mlsn_hmac(2, b"k", 1, b"x", 1, out, 32) == L
    assert lib.mlsn_hkdf_expand(1, b"k", 1, b"", 0, out, 0) == L
    assert lib.mlsn_hkdf_expand(1, b"k", 1, b"", 0, out, 255 * 32 + 1) == L
    assert lib.mlsn_hkdf_expand(1, ffi.NULL, 0, b"", 0, out, 32) == lib.MLSN_OK
    assert lib.mlsn_hkdf_extract(3, ffi.NULL, 3, b"", 0, out, 64) == L


def test_ratchet_lengths(c: tuple[Any, Any]) -> None:
    ffi, lib = c
    keys, nonces, nxt = ffi.new("uint8_t[]", 64), ffi.new("uint8_t[]", 48), ffi.new("uint8_t[]", 64)
    s = bytes(32)
    L, R = lib.MLSN_ERR_LENGTH, lib.MLSN_ERR_RANGE
    assert lib.mlsn_ratchet_steps(1, s, 32, 0, 4, 16, 12, keys, 64, nonces, 48, nxt, 32) == lib.MLSN_OK
    assert lib.mlsn_ratchet_steps(1, s, 31, 0, 4, 16, 12, keys, 64, nonces, 48, nxt, 32) == L
    assert lib.mlsn_ratchet_steps(1, s, 32, 0, 4, 16, 12, keys, 63, nonces, 48, nxt, 32) == L
    assert lib.mlsn_ratchet_steps(1, s, 32, 0, 4, 16, 12, keys, 64, nonces, 48, nxt, 31) == L
    assert lib.mlsn_ratchet_steps(1, s, 32, 0, 4, 0, 12, keys, 0, nonces, 48, nxt, 32) == L
    assert lib.mlsn_ratchet_steps(1, s, 32, 0, 4, SIZE_MAX, 12, keys, 64, nonces, 48, nxt, 32) == L
    assert lib.mlsn_ratchet_steps(1, s, 32, 2**32 - 2, 4, 16, 12, keys, 64, nonces, 48, nxt, 32) == R
    assert lib.mlsn_ratchet_steps(1, s, 32, 0, 2**32 - 1, 16, 12, keys, 64, nonces, 48, nxt, 32) == R
    assert lib.mlsn_ratchet_steps(1, ffi.NULL, 32, 0, 4, 16, 12, keys, 64, nonces, 48, nxt, 32) == L
    assert lib.mlsn_sender_data_key_nonce(1, s, 32, ffi.NULL, 5, keys, 16, nonces, 12) == L
    assert lib.mlsn_sender_data_key_nonce(1, s, 32, b"ct", 2, keys, 0, nonces, 12) == L
    assert lib.mlsn_sender_data_key_nonce(1, s, 32, b"ct", 2, keys, 16, nonces, 12) == lib.MLSN_OK


def test_tree_hash_lengths(c: tuple[Any, Any]) -> None:
    ffi, lib = c
    out = ffi.new("uint8_t[]", 7 * 64)
    L = lib.MLSN_ERR_LENGTH

    def th(n: int, present: bytes, data: bytes, dlen: int, lens: list[int], npres: int, olen: int) -> int:
        return int(
            lib.mlsn_tree_hashes(1, n, present, data, dlen, _sizes(ffi, lens or [0]), npres, out, olen)
        )

    assert th(3, b"\x01\x00\x01", b"abc", 3, [1, 2], 2, 3 * 32) == lib.MLSN_OK
    assert (
        th(5, b"\x01\x00\x01\x00\x01", b"abc", 3, [1, 1, 1], 3, 7 * 32) == lib.MLSN_OK
    )  # extended to 4 leaves
    assert (
        th(5, b"\x01\x00\x01\x00\x01", b"abc", 3, [1, 1, 1], 3, 5 * 32) == L
    )  # out must cover the full tree
    assert th(3, b"\x01\x00\x01", b"abc", 3, [1, 2], 2, 3 * 32 - 1) == L
    assert th(2, b"\x01\x00", b"a", 1, [1], 1, 3 * 32) == L  # even width
    assert th(0, b"", b"", 0, [], 0, 0) == L
    assert th(3, b"\x01\x00\x02", b"abc", 3, [1, 2], 2, 3 * 32) == L  # presence flag 2
    assert th(3, b"\x01\x00\x01", b"abc", 3, [1, 3], 2, 3 * 32) == L  # lens beyond data
    assert th(3, b"\x01\x00\x01", b"abc", 3, [1, 1], 2, 3 * 32) == L  # lens short of data
    assert th(3, b"\x01\x00\x01", b"abc", 3, [1], 1, 3 * 32) == L  # fewer lens than present nodes
    assert th(3, b"\x01\x00\x00", b"abc", 3, [1, 2], 2, 3 * 32) == L  # more lens than present nodes
    assert th(3, b"\x01\x00\x01", b"abc", 3, [SIZE_MAX, 4], 2, 3 * 32) == L
    assert th(2**63 + 1, b"\x01", b"", 0, [], 0, 32) == L  # absurd width
    assert lib.mlsn_tree_full_width(2**33 - 1) == 2**33 - 1
    assert lib.mlsn_tree_full_width(2**33 + 1) == 0  # more than 2^32 leaves

    copath = bytes(2 * 32)

    def path(leaf: int, depth: int, present: bytes, lens: list[int], npres: int, cl: int, ol: int) -> int:
        return int(
            lib.mlsn_tree_hash_path(
                1, leaf, depth, present, b"ab", 2, _sizes(ffi, lens or [0]), npres, copath, cl, out, ol
            )
        )

    assert path(3, 2, b"\x01\x00\x01", [1, 1], 2, 64, 96) == lib.MLSN_OK
    assert path(4, 2, b"\x01\x00\x01", [1, 1], 2, 64, 96) == lib.MLSN_ERR_RANGE  # leaf outside 4 leaves
    assert path(0, 33, b"\x01\x00\x01", [1, 1], 2, 64, 96) == lib.MLSN_ERR_RANGE
    assert path(3, 2, b"\x01\x00\x01", [1, 1], 2, 63, 96) == L
    assert path(3, 2, b"\x01\x00\x01", [1, 1], 2, 64, 95) == L
    assert path(3, 2, b"\x01\x00\x01", [1, 1], 4, 64, 96) == L  # more values than path nodes


def test_packed_tree_hash_lengths(c: tuple[Any, Any]) -> None:
    ffi, lib = c
    out = ffi.new("uint8_t[]", 7 * 32)
    L = lib.MLSN_ERR_LENGTH

    def th(n: int, data: bytes, dlen: int, lens: list[int], olen: int) -> int:
        return int(
            lib.mlsn_tree_hashes_spans(1, n, data, dlen, ffi.NULL, _sizes(ffi, lens or [0]), out, olen)
        )

    assert th(3, b"abc", 3, [1, 0, 2], 3 * 32) == lib.MLSN_OK
    assert th(5, b"abc", 3, [1, 0, 1, 0, 1], 7 * 32) == lib.MLSN_OK  # extended to 4 leaves
    assert th(5, b"abc", 3, [1, 0, 1, 0, 1], 5 * 32) == L  # out must cover the full tree
    assert th(3, b"abc", 3, [1, 0, 2], 3 * 32 - 1) == L
    assert th(2, b"a", 1, [1, 0], 3 * 32) == L  # even width
    assert th(0, b"", 0, [], 0) == L
    assert th(3, b"abc", 3, [1, 0, 3], 3 * 32) == L  # lens beyond data
    assert th(3, b"abc", 3, [1, 0, 1], 3 * 32) == L  # lens short of data
    assert th(3, b"abc", 3, [1, SIZE_MAX, 3], 3 * 32) == L  # a sum that would wrap around
    assert th(3, b"abc", 2**62, [1, 0, 2], 3 * 32) == L  # more data than a SHA-2 length field counts
    assert th(2**63 + 1, b"abc", 3, [3], 32) == L  # absurd width
    lens = _sizes(ffi, [1, 0, 2])
    assert lib.mlsn_tree_hashes_spans(1, 3, b"abc", 3, ffi.NULL, ffi.NULL, out, 3 * 32) == L
    assert lib.mlsn_tree_hashes_spans(1, 3, ffi.NULL, 3, ffi.NULL, lens, out, 3 * 32) == L
    assert lib.mlsn_tree_hashes_spans(1, 3, b"abc", 3, ffi.NULL, lens, ffi.NULL, 3 * 32) == L
    assert (
        lib.mlsn_tree_hashes_spans(9, 3, b"abc", 3, ffi.NULL, lens, out, 3 * 32) == lib.MLSN_ERR_UNSUPPORTED
    )


def test_spans_tree_hash_lengths(c: tuple[Any, Any]) -> None:
    """Explicit spans: each inside data (overlaps and gaps allowed), a blank's start ignored but checked."""
    ffi, lib = c
    out = ffi.new("uint8_t[]", 3 * 32)
    L = lib.MLSN_ERR_LENGTH

    def th(data: bytes, dlen: int, starts: list[int], lens: list[int]) -> int:
        return int(
            lib.mlsn_tree_hashes_spans(1, 3, data, dlen, _sizes(ffi, starts), _sizes(ffi, lens), out, 96)
        )

    assert th(b"xaybc", 5, [1, 0, 3], [1, 0, 2]) == lib.MLSN_OK
    packed = ffi.buffer(out)[:]
    assert (
        lib.mlsn_tree_hashes_spans(1, 3, b"abc", 3, ffi.NULL, _sizes(ffi, [1, 0, 2]), out, 96) == lib.MLSN_OK
    )
    assert ffi.buffer(out)[:] == packed  # the same values, found by span or back to back
    assert th(b"abc", 3, [0, 0, 0], [3, 0, 3]) == lib.MLSN_OK  # overlapping spans read the same bytes
    assert th(b"abc", 3, [0, 0, 2], [1, 0, 2]) == L  # past the end
    assert th(b"abc", 3, [4, 0, 0], [0, 0, 1]) == L  # a start beyond data, even for a blank
    assert th(b"abc", 3, [SIZE_MAX, 0, 0], [2, 0, 1]) == L  # start + len wrapping around
    assert th(b"abc", 3, [1, 0, 0], [SIZE_MAX, 0, 1]) == L


def test_python_layer_huge_lengths(nb: Any) -> None:
    with pytest.raises(CryptoError):
        nb.aead_seal(1, bytes(2**20), bytes(12), b"", b"")
    with pytest.raises(CryptoError):
        nb.hkdf_expand("sha256", b"k", b"", 2**40)
    with pytest.raises(CryptoError):
        nb.ratchet_steps("sha256", bytes(32), 0, 1, 2**40, 12)


def test_failed_open_leaves_no_plaintext_in_the_output(c: tuple[Any, Any]) -> None:
    """A bad tag: whatever the output buffer held, and whatever was decrypted into it, ends as zeros
    (one-shot and batched), so unauthenticated plaintext never reaches a caller."""
    ffi, lib = c
    key, nonce, pt = bytes(range(16)), bytes(12), b"SECRETSECRET-plaintext"
    ct = bytearray(len(pt) + 16)
    assert lib.mlsn_aead_seal(1, key, 16, nonce, 12, b"", 0, pt, len(pt), ffi.from_buffer(ct), len(ct)) == 0
    ct[-1] ^= 1
    out = ffi.new("uint8_t[]", b"X" * len(pt))
    assert (
        lib.mlsn_aead_open(1, key, 16, nonce, 12, b"", 0, bytes(ct), len(ct), out, len(pt))
        == lib.MLSN_ERR_AUTH
    )
    assert ffi.buffer(out, len(pt))[:] == bytes(len(pt))
    many_out, status = ffi.new("uint8_t[]", b"X" * 2 * len(pt)), ffi.new("int8_t[]", 2)
    good = bytearray(ct)
    good[-1] ^= 1
    cts = bytes(good) + bytes(ct)
    lens = _sizes(ffi, [len(ct), len(ct)])
    assert (
        lib.mlsn_aead_open_many(
            1,
            2,
            key * 2,
            32,
            nonce * 2,
            24,
            b"",
            0,
            ffi.NULL,
            cts,
            len(cts),
            lens,
            many_out,
            2 * len(pt),
            status,
        )
        == lib.MLSN_OK
    )
    assert list(status) == [lib.MLSN_OK, lib.MLSN_ERR_AUTH]
    assert ffi.buffer(many_out, 2 * len(pt))[:] == pt + bytes(len(pt))


def test_span_inputs_of_the_wrong_kind_are_project_errors(nb: Any) -> None:
    """Lists are accepted like arrays; negative or non-integer starts/lengths give CryptoError."""
    assert bytes(nb.tree_hashes_spans("sha256", b"xab", [1, 0, 2], [1, 0, 1])) == bytes(
        nb.tree_hashes_packed("sha256", [b"a", b"", b"b"])
    )
    for starts, lens in (([1, 0, -2], [1, 0, 1]), ([1, 0, 2], [1, 0, 2**64]), ([1, 0, 2], [1, 0, "1"])):
        with pytest.raises(CryptoError):
            nb.tree_hashes_spans("sha256", b"xab", starts, lens)
