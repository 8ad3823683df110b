"""Hash, HMAC, HKDF and AEAD (RFC 9420 §5.1) in C over libcrypto: the ``CryptoBackend`` half of
:class:`~native.backend.NativeBackend`.

One-shot calls go straight to C; batched AEAD calls pack their items into a few flat buffers so that one C
call (the GIL released, cipher contexts re-used) does the whole batch.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import accumulate, repeat
from operator import add, sub
from typing import Any

from mls.errors import (
    CryptoError,
    UnsupportedError,
    aead_batch_aad_error,
    aead_batch_size_error,
    aead_key_nonce_length_error,
    aead_tag_error,
)

from . import _args
from ._args import AEAD_SIZES, AEAD_TAG_LEN, AeadItem
from ._ffi import (
    HASHES,
    SIZE_T,
    alloc,
    as_bytes,
    ffi,
    fixed,
    hash_id,
    lib,
    raise_for_aead,
    raise_for_kdf,
    size_t_view,
    take_secret,
)

_TAG = AEAD_TAG_LEN

# Bound once: attribute look-ups on ``lib`` cost more than the one-shot calls can spare.
_c_hash, _c_hmac, _c_extract, _c_expand = (
    lib.mlsn_hash,
    lib.mlsn_hmac,
    lib.mlsn_hkdf_extract,
    lib.mlsn_hkdf_expand,
)
_c_seal, _c_open, _c_cleanse = lib.mlsn_aead_seal, lib.mlsn_aead_open, lib.mlsn_cleanse


def _aead_sizes(aead: int) -> tuple[int, int]:
    sizes = AEAD_SIZES.get(aead)
    if sizes is None:
        raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
    return sizes


def _split_by_lengths(buf: Any, lengths: array[int], extra: int, secret: bool = False) -> list[bytes]:
    """Cut ``buf`` into pieces of ``lengths[i] + extra`` bytes (one struct call when all are equal).

    Unequal pieces are sliced from one copy of the buffer, unless they are ``secret`` (plaintexts): then
    from the C buffer itself, so that no extra copy of all of them outlives the call.
    """
    size = lengths[0] + extra
    if lengths.count(lengths[0]) == len(lengths):
        return fixed(buf, size, len(lengths))
    data = buf if secret else buf[:]
    ends = list(accumulate(map(add, lengths, repeat(extra))))
    return [data[start:end] for start, end in zip([0, *ends[:-1]], ends)]


def _batch_shape(
    aead: int, keys: bytes, nonces: bytes, aad: bytes | Sequence[bytes], n: int
) -> tuple[bytes, Any]:
    """Check a batch of n against its keys and nonces (as the Python backend does, even when empty) and
    return its AAD column (see :func:`_aad_column`)."""
    nk, nn = _aead_sizes(aead)
    if len(keys) != n * nk or len(nonces) != n * nn:
        raise aead_batch_size_error()
    return _aad_column(aad, n)


def _aad_column(aad: bytes | Sequence[bytes], n: int) -> tuple[bytes, Any]:
    """AAD for a batch of n: (the AAD, NULL lengths) when shared, else (their concatenation, lengths)."""
    if isinstance(aad, (bytes, bytearray, memoryview)):
        return as_bytes(aad), ffi.NULL
    aads = list(aad)
    if len(aads) != n:
        raise aead_batch_aad_error()
    return b"".join(aads), size_t_view(array(SIZE_T, map(len, aads)))


class NativeSymmetric:
    """Hash, HMAC, HKDF and AEAD (single, many, batched) of the ``CryptoBackend`` protocol, in C."""

    # ---- hash, MAC, KDF -------------------------------------------------------------------------
    # The one-shot methods pass their arguments straight to C (cffi takes ``bytes`` without a copy);
    # other bytes-like arguments make cffi raise TypeError, and the call is made again on copies (a
    # second TypeError, for an argument that is not bytes-like at all, propagates).
    def hash(self, alg: str, data: bytes) -> bytes:
        found = HASHES.get(alg) if type(alg) is str else None
        if found is None:
            raise UnsupportedError(f"hash {alg!r} is not supported")
        hid, nh = found
        out = alloc("uint8_t[]", nh)
        try:
            rc = _c_hash(hid, data, len(data), out, nh)
        except TypeError:
            data = as_bytes(data)
            rc = _c_hash(hid, data, len(data), out, nh)
        if rc:
            raise_for_kdf(rc, "hash")
        return ffi.buffer(out)[:]  # type: ignore[no-any-return]

    def hmac(self, alg: str, key: bytes, data: bytes) -> bytes:
        return self._two_input(_c_hmac, alg, key, data, "HMAC")

    def hkdf_extract(self, alg: str, salt: bytes, ikm: bytes) -> bytes:
        return self._two_input(_c_extract, alg, salt, ikm, "HKDF-Extract")

    @staticmethod
    def _two_input(fn: Any, alg: str, a: bytes, b: bytes, what: str) -> bytes:
        """HMAC(key, data) and HKDF-Extract(salt, ikm): two inputs, one Nh-byte secret out."""
        hid, nh = hash_id(alg)
        out = alloc("uint8_t[]", nh)
        try:
            rc = fn(hid, a, len(a), b, len(b), out, nh)
        except TypeError:
            a, b = as_bytes(a), as_bytes(b)
            rc = fn(hid, a, len(a), b, len(b), out, nh)
        if rc:
            raise_for_kdf(rc, what)
        return take_secret(out, nh)

    def hkdf_expand(self, alg: str, prk: bytes, info: bytes, length: int) -> bytes:
        hid, nh = hash_id(alg)
        if type(length) is not int or not 1 <= length <= 255 * nh:
            _args.check_expand_length("5.1/expand-length", "HKDF-Expand output", length, nh)
        out = alloc("uint8_t[]", length)
        try:
            rc = _c_expand(hid, prk, len(prk), info, len(info), out, length)
        except TypeError:
            prk, info = as_bytes(prk), as_bytes(info)
            rc = _c_expand(hid, prk, len(prk), info, len(info), out, length)
        if rc:
            raise_for_kdf(rc, "HKDF-Expand")
        return take_secret(out, length)

    # ---- AEAD -----------------------------------------------------------------------------------
    def aead_seal(self, aead: int, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        sizes = AEAD_SIZES.get(aead)
        if sizes is None:
            raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
        nk, nn = sizes
        if len(key) != nk or len(nonce) != nn:
            raise aead_key_nonce_length_error()
        n = len(plaintext)
        out = alloc("uint8_t[]", n + _TAG)
        try:
            rc = _c_seal(aead, key, nk, nonce, nn, aad, len(aad), plaintext, n, out, n + _TAG)
        except TypeError:
            key, nonce, aad, plaintext = as_bytes(key), as_bytes(nonce), as_bytes(aad), as_bytes(plaintext)
            rc = _c_seal(aead, key, nk, nonce, nn, aad, len(aad), plaintext, n, out, n + _TAG)
        if rc:
            raise_for_aead(rc, "AEAD seal")
        return ffi.buffer(out)[:]  # type: ignore[no-any-return]

    def aead_open(self, aead: int, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        sizes = AEAD_SIZES.get(aead)
        if sizes is None:
            raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
        nk, nn = sizes
        if len(key) != nk or len(nonce) != nn:
            raise aead_key_nonce_length_error()
        n = len(ciphertext) - _TAG
        if n < 0:
            raise aead_tag_error()
        out = alloc("uint8_t[]", n)
        try:
            rc = _c_open(aead, key, nk, nonce, nn, aad, len(aad), ciphertext, n + _TAG, out, n)
        except TypeError:
            key, nonce, aad, ciphertext = as_bytes(key), as_bytes(nonce), as_bytes(aad), as_bytes(ciphertext)
            rc = _c_open(aead, key, nk, nonce, nn, aad, len(aad), ciphertext, n + _TAG, out, n)
        if rc == lib.MLSN_ERR_AUTH:
            raise aead_tag_error()
        if rc:
            raise_for_aead(rc, "AEAD open")
        return take_secret(out, n)

    @staticmethod
    def _columns(items: Sequence[AeadItem], nk: int, nn: int) -> tuple[tuple[bytes, ...], ...] | None:
        """The items as four columns; None when some key or nonce has the wrong length."""
        if set(map(len, items)) != {4}:
            raise TypeError("each AEAD item is (key, nonce, aad, data)")
        keys, nonces, aads, datas = zip(*items)
        if set(map(len, keys)) != {nk} or set(map(len, nonces)) != {nn}:
            return None
        return keys, nonces, aads, datas

    def aead_seal_many(self, aead: int, items: Sequence[AeadItem]) -> list[bytes]:
        nk, nn = _aead_sizes(aead)
        if not items:
            return []
        columns = self._columns(items, nk, nn)
        if columns is None:
            raise aead_key_nonce_length_error()
        keys, nonces, aads, pts = columns
        return self.aead_seal_batch(aead, b"".join(keys), b"".join(nonces), aads, pts)

    def aead_open_many(self, aead: int, items: Sequence[AeadItem]) -> list[bytes | None]:
        nk, nn = _aead_sizes(aead)
        if not items:
            return []
        columns = self._columns(items, nk, nn)
        if columns is None:
            # Rare: like the Python backend, an item with a bad key or nonce opens to None.
            return [self._open_or_none(aead, item) for item in items]
        keys, nonces, aads, cts = columns
        return self.aead_open_batch(aead, b"".join(keys), b"".join(nonces), aads, cts)

    def aead_seal_batch(
        self, aead: int, keys: bytes, nonces: bytes, aad: bytes | Sequence[bytes], plaintexts: Sequence[bytes]
    ) -> list[bytes]:
        """Seal ``plaintexts[i]`` under the i-th Nk-byte key of ``keys`` and Nn-byte nonce of ``nonces``.

        ``aad`` is one AAD for every item, or one per item. The C layer checks every length.
        """
        n = len(plaintexts)
        aad_buf, aad_lens = _batch_shape(aead, keys, nonces, aad, n)
        if n == 0:
            return []
        pt_lens, pt_buf = array(SIZE_T, map(len, plaintexts)), b"".join(plaintexts)
        total = len(pt_buf) + _TAG * n
        out = alloc("uint8_t[]", total)
        rc = lib.mlsn_aead_seal_many(
            aead, n, as_bytes(keys), len(keys), as_bytes(nonces), len(nonces),
            aad_buf, len(aad_buf), aad_lens, pt_buf, len(pt_buf), size_t_view(pt_lens), out, total,
        )  # fmt: skip
        if rc:
            raise_for_aead(rc, "AEAD seal")
        return _split_by_lengths(ffi.buffer(out), pt_lens, _TAG)

    def aead_open_batch(
        self,
        aead: int,
        keys: bytes,
        nonces: bytes,
        aad: bytes | Sequence[bytes],
        ciphertexts: Sequence[bytes],
    ) -> list[bytes | None]:
        """Open ``ciphertexts[i]`` with the i-th key and nonce; None where authentication fails."""
        n = len(ciphertexts)
        aad_buf, aad_lens = _batch_shape(aead, keys, nonces, aad, n)
        if n == 0:
            return []
        ct_lens, ct_buf = array(SIZE_T, map(len, ciphertexts)), b"".join(ciphertexts)
        if min(ct_lens) >= _TAG:
            pt_lens, extra, total = ct_lens, -_TAG, len(ct_buf) - _TAG * n
        else:  # a ciphertext shorter than a tag gives no plaintext bytes (and fails)
            pt_lens, extra = array(SIZE_T, map(max, map(sub, ct_lens, repeat(_TAG)), repeat(0))), 0
            total = sum(pt_lens)
        out = alloc("uint8_t[]", total)
        status = alloc("int8_t[]", n)
        rc = lib.mlsn_aead_open_many(
            aead, n, as_bytes(keys), len(keys), as_bytes(nonces), len(nonces),
            aad_buf, len(aad_buf), aad_lens, ct_buf, len(ct_buf), size_t_view(ct_lens), out, total, status,
        )  # fmt: skip
        if rc:
            _c_cleanse(out, total)
            raise_for_aead(rc, "AEAD open")
        plaintexts: list[bytes | None] = list(_split_by_lengths(ffi.buffer(out), pt_lens, extra, secret=True))
        _c_cleanse(out, total)
        flags = ffi.buffer(status)[:]
        if any(flags):
            plaintexts = [None if flag else pt for flag, pt in zip(flags, plaintexts)]
        return plaintexts

    def _open_or_none(self, aead: int, item: AeadItem) -> bytes | None:
        try:
            return self.aead_open(aead, *item)
        except CryptoError:
            return None
