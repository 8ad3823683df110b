"""``NativeBackend``: the crypto backend of :mod:`mls.crypto.backend` in C over OpenSSL 3's libcrypto.

It implements the ``CryptoBackend`` protocol (hash, HMAC, HKDF, AEAD single and batched) and the
secret-tree and tree-hash operations of :mod:`native.reference`, giving the same bytes and raising the
same project errors. Batched calls pack their items into a few flat buffers so that one C call (the GIL
released, cipher and digest contexts re-used) does the whole batch.

It imports nothing from :mod:`mls.crypto` (which imports it while selecting a backend).
Importing this module raises :class:`ImportError` when the extension is not built or libcrypto lacks an
algorithm, so :func:`mls.crypto.backend.select_backend` falls back to the Python backend.
"""

from __future__ import annotations

import functools
import struct
from array import array
from collections.abc import Sequence
from itertools import accumulate, compress, repeat
from operator import add, is_not, sub
from typing import Any, cast

from mls.errors import CryptoError, UnsupportedError, ValidationError

from . import _args
from ._args import AEAD_SIZES, AEAD_TAG_LEN, AeadItem

try:
    from ._mlsnative import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only without a build
    raise ImportError(f"native crypto extension is not built: {exc}") from exc

if lib.mlsn_init() != lib.MLSN_OK:  # pragma: no cover - a libcrypto without AES-GCM/ChaCha20/SHA-2
    raise ImportError("libcrypto does not provide the algorithms the native backend needs")

_HASHES: dict[str, tuple[int, int]] = {
    name: (hid, int(lib.mlsn_hash_len(hid)))
    for name, hid in (
        ("sha256", lib.MLSN_HASH_SHA256),
        ("sha384", lib.MLSN_HASH_SHA384),
        ("sha512", lib.MLSN_HASH_SHA512),
    )
}
_TAG = AEAD_TAG_LEN
# array typecode matching size_t, so length arrays go to C without conversion.
_SIZE_T = next(code for code in ("Q", "L", "I") if array(code).itemsize == ffi.sizeof("size_t"))

# Output buffers are fully written by C before they are read: skip cffi's zero-fill.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)

OPENSSL_VERSION: str = ffi.string(lib.mlsn_openssl_version()).decode()

# Bound once: attribute look-ups on ``lib`` cost more than the one-shot calls can spare.
_c_hash, _c_hmac, _c_extract, _c_expand = (
    lib.mlsn_hash,
    lib.mlsn_hmac,
    lib.mlsn_hkdf_extract,
    lib.mlsn_hkdf_expand,
)
_c_seal, _c_open, _c_cleanse = lib.mlsn_aead_seal, lib.mlsn_aead_open, lib.mlsn_cleanse


def _raise_for(rc: int, rule: str, what: str) -> None:
    """Map a C status code to the project's exceptions (``rc`` is known not to be MLSN_OK)."""
    if rc == lib.MLSN_ERR_AUTH:
        raise CryptoError(rule, f"{what}: authentication failed")
    if rc == lib.MLSN_ERR_UNSUPPORTED:
        raise UnsupportedError(f"{what}: algorithm not supported")
    if rc == lib.MLSN_ERR_LENGTH:
        raise CryptoError(rule, f"{what}: an input has the wrong length")
    if rc == lib.MLSN_ERR_RANGE:
        raise ValidationError(rule, f"{what}: a count or generation is out of range")
    if rc == lib.MLSN_ERR_NOMEM:
        raise MemoryError(what)
    raise CryptoError(rule, f"{what}: libcrypto failed (status {rc})")


def _hash_id(alg: str) -> tuple[int, int]:
    """(C identifier, Nh) of a hash name; :class:`UnsupportedError` for anything else."""
    found = _HASHES.get(alg) if isinstance(alg, str) else None
    if found is None:
        raise UnsupportedError(f"hash {alg!r} is not supported")
    return found


def _aead_sizes(aead: int) -> tuple[int, int]:
    sizes = AEAD_SIZES.get(aead)
    if sizes is None:
        raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
    return sizes


def _bytes(data: Any) -> bytes:
    """``data`` as bytes: any buffer-protocol object, never an int (``bytes(5)`` is five zeros)."""
    return data if type(data) is bytes else memoryview(data).tobytes()


def _take_secret(buf: Any, size: int) -> bytes:
    """Copy a secret result out of a C buffer and wipe the buffer."""
    result: bytes = ffi.buffer(buf, size)[:]
    _c_cleanse(buf, size)
    return result


def _sizes(lengths: Any) -> Any:
    """A ``size_t[]`` view of an array of lengths (no copy)."""
    return ffi.from_buffer("size_t[]", lengths)


def _size_t_array(values: Sequence[int]) -> array[int]:
    """``values`` as a size_t array (itself when it is one already); CryptoError for a negative or huge
    value or a non-integer."""
    if isinstance(values, array) and values.typecode == _SIZE_T:
        return values
    try:
        return array(_SIZE_T, values)
    except (OverflowError, TypeError) as exc:
        raise CryptoError("7.8", "tree hash: starts and lengths must be sizes") from exc


@functools.lru_cache(maxsize=8)
def _unpacker(size: int, count: int) -> struct.Struct:
    """Splits ``count`` values of ``size`` bytes in one call (faster than iter_unpack for big trees)."""
    return struct.Struct(f"{size}s" * count)


def _fixed(buf: Any, size: int, count: int) -> list[bytes]:
    """``buf`` as ``count`` bytes objects of ``size`` bytes each."""
    if count == 0:
        return []
    return list(_unpacker(size, count).unpack(buf))


def _split_by_lengths(buf: Any, lengths: array[int], extra: int, secret: bool = False) -> list[bytes]:
    """Cut ``buf`` into pieces of ``lengths[i] + extra`` bytes (one struct call when all are equal).

    Unequal pieces are sliced from one copy of the buffer, unless they are ``secret`` (plaintexts): then
    from the C buffer itself, so that no extra copy of all of them outlives the call.
    """
    size = lengths[0] + extra
    if lengths.count(lengths[0]) == len(lengths):
        return _fixed(buf, size, len(lengths))
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
        raise CryptoError("5.1", "AEAD keys or nonces do not match the batch size")
    return _aad_column(aad, n)


def _aad_column(aad: bytes | Sequence[bytes], n: int) -> tuple[bytes, Any]:
    """AAD for a batch of n: (the AAD, NULL lengths) when shared, else (their concatenation, lengths)."""
    if isinstance(aad, (bytes, bytearray, memoryview)):
        return _bytes(aad), ffi.NULL
    aads = list(aad)
    if len(aads) != n:
        raise CryptoError("5.1", "a batch needs one AAD, or one per item")
    return b"".join(aads), _sizes(array(_SIZE_T, map(len, aads)))


class NativeBackend:
    """Symmetric MLS crypto in C over libcrypto (``name = "native"``)."""

    name = "native"

    # ---- hash, MAC, KDF -------------------------------------------------------------------------
    # The one-shot methods pass their arguments straight to C (cffi takes ``bytes`` without a copy);
    # other bytes-like arguments make cffi raise TypeError, and the call is made again on copies (a
    # second TypeError, for an argument that is not bytes-like at all, propagates).
    def hash(self, alg: str, data: bytes) -> bytes:
        found = _HASHES.get(alg) if type(alg) is str else None
        if found is None:
            raise UnsupportedError(f"hash {alg!r} is not supported")
        hid, nh = found
        out = _alloc("uint8_t[]", nh)
        try:
            rc = _c_hash(hid, data, len(data), out, nh)
        except TypeError:
            data = _bytes(data)
            rc = _c_hash(hid, data, len(data), out, nh)
        if rc:
            _raise_for(rc, "5.1", "hash")
        return ffi.buffer(out)[:]  # type: ignore[no-any-return]

    def hmac(self, alg: str, key: bytes, data: bytes) -> bytes:
        return self._two_input(_c_hmac, alg, key, data, "HMAC")

    def hkdf_extract(self, alg: str, salt: bytes, ikm: bytes) -> bytes:
        return self._two_input(_c_extract, alg, salt, ikm, "HKDF-Extract")

    @staticmethod
    def _two_input(fn: Any, alg: str, a: bytes, b: bytes, what: str) -> bytes:
        """HMAC(key, data) and HKDF-Extract(salt, ikm): two inputs, one Nh-byte secret out."""
        hid, nh = _hash_id(alg)
        out = _alloc("uint8_t[]", nh)
        try:
            rc = fn(hid, a, len(a), b, len(b), out, nh)
        except TypeError:
            a, b = _bytes(a), _bytes(b)
            rc = fn(hid, a, len(a), b, len(b), out, nh)
        if rc:
            _raise_for(rc, "5.1", what)
        return _take_secret(out, nh)

    def hkdf_expand(self, alg: str, prk: bytes, info: bytes, length: int) -> bytes:
        hid, nh = _hash_id(alg)
        if type(length) is not int or not 1 <= length <= 255 * nh:
            _args.check_expand_length("5.1", "HKDF-Expand output", length, nh)
        out = _alloc("uint8_t[]", length)
        try:
            rc = _c_expand(hid, prk, len(prk), info, len(info), out, length)
        except TypeError:
            prk, info = _bytes(prk), _bytes(info)
            rc = _c_expand(hid, prk, len(prk), info, len(info), out, length)
        if rc:
            _raise_for(rc, "5.1", "HKDF-Expand")
        return _take_secret(out, length)

    # ---- AEAD -----------------------------------------------------------------------------------
    def aead_seal(self, aead: int, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        sizes = AEAD_SIZES.get(aead)
        if sizes is None:
            raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
        nk, nn = sizes
        if len(key) != nk or len(nonce) != nn:
            raise CryptoError("5.1", "AEAD key or nonce has the wrong length")
        n = len(plaintext)
        out = _alloc("uint8_t[]", n + _TAG)
        try:
            rc = _c_seal(aead, key, nk, nonce, nn, aad, len(aad), plaintext, n, out, n + _TAG)
        except TypeError:
            key, nonce, aad, plaintext = _bytes(key), _bytes(nonce), _bytes(aad), _bytes(plaintext)
            rc = _c_seal(aead, key, nk, nonce, nn, aad, len(aad), plaintext, n, out, n + _TAG)
        if rc:
            _raise_for(rc, "5.1", "AEAD seal")
        return ffi.buffer(out)[:]  # type: ignore[no-any-return]

    def aead_open(self, aead: int, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        sizes = AEAD_SIZES.get(aead)
        if sizes is None:
            raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
        nk, nn = sizes
        if len(key) != nk or len(nonce) != nn:
            raise CryptoError("5.1", "AEAD key or nonce has the wrong length")
        n = len(ciphertext) - _TAG
        if n < 0:
            raise CryptoError("5.1", "AEAD decryption failed")
        out = _alloc("uint8_t[]", n)
        try:
            rc = _c_open(aead, key, nk, nonce, nn, aad, len(aad), ciphertext, n + _TAG, out, n)
        except TypeError:
            key, nonce, aad, ciphertext = _bytes(key), _bytes(nonce), _bytes(aad), _bytes(ciphertext)
            rc = _c_open(aead, key, nk, nonce, nn, aad, len(aad), ciphertext, n + _TAG, out, n)
        if rc == lib.MLSN_ERR_AUTH:
            raise CryptoError("5.1", "AEAD decryption failed")
        if rc:
            _raise_for(rc, "5.1", "AEAD open")
        return _take_secret(out, n)

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
            raise CryptoError("5.1", "AEAD key or nonce has the wrong length")
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
        pt_lens, pt_buf = array(_SIZE_T, map(len, plaintexts)), b"".join(plaintexts)
        total = len(pt_buf) + _TAG * n
        out = _alloc("uint8_t[]", total)
        rc = lib.mlsn_aead_seal_many(
            aead, n, _bytes(keys), len(keys), _bytes(nonces), len(nonces), aad_buf, len(aad_buf), aad_lens,
            pt_buf, len(pt_buf), _sizes(pt_lens), out, total,
        )  # fmt: skip
        if rc:
            _raise_for(rc, "5.1", "AEAD seal")
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
        ct_lens, ct_buf = array(_SIZE_T, map(len, ciphertexts)), b"".join(ciphertexts)
        if min(ct_lens) >= _TAG:
            pt_lens, extra, total = ct_lens, -_TAG, len(ct_buf) - _TAG * n
        else:  # a ciphertext shorter than a tag gives no plaintext bytes (and fails)
            pt_lens, extra = array(_SIZE_T, map(max, map(sub, ct_lens, repeat(_TAG)), repeat(0))), 0
            total = sum(pt_lens)
        out = _alloc("uint8_t[]", total)
        status = _alloc("int8_t[]", n)
        rc = lib.mlsn_aead_open_many(
            aead, n, _bytes(keys), len(keys), _bytes(nonces), len(nonces), aad_buf, len(aad_buf), aad_lens,
            ct_buf, len(ct_buf), _sizes(ct_lens), out, total, status,
        )  # fmt: skip
        if rc:
            _c_cleanse(out, total)
            _raise_for(rc, "5.1", "AEAD open")
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

    # ---- secret tree (RFC 9420 §9.1, §6.3.2) ------------------------------------------------------
    def ratchet_steps(
        self, alg: str, secret: bytes, start_generation: int, count: int, nk: int, nn: int
    ) -> tuple[bytes, bytes, bytes]:
        """Keys and nonces of generations start..start+count-1, back to back, and the next ratchet secret
        (§9.1)."""
        hid, _ = _hash_id(alg)
        nh = _args.check_ratchet(alg, secret, start_generation, count, nk, nn)
        secret = _bytes(secret)
        keys, nonces, following = (
            _alloc("uint8_t[]", count * nk),
            _alloc("uint8_t[]", count * nn),
            _alloc("uint8_t[]", nh),
        )
        rc = lib.mlsn_ratchet_steps(
            hid,
            secret,
            nh,
            start_generation,
            count,
            nk,
            nn,
            keys,
            count * nk,
            nonces,
            count * nn,
            following,
            nh,
        )
        if rc:
            _raise_for(rc, "9.1", "ratchet step")
        return _take_secret(keys, count * nk), _take_secret(nonces, count * nn), _take_secret(following, nh)

    def sender_data_key_nonce(
        self, alg: str, sender_data_secret: bytes, ciphertext: bytes, nk: int, nn: int
    ) -> tuple[bytes, bytes]:
        """Sender-data key and nonce from the first KDF.Nh bytes of the content ciphertext (§6.3.2)."""
        hid, _ = _hash_id(alg)
        nh = _args.check_sender_data(alg, sender_data_secret, nk, nn)
        secret, sample = _bytes(sender_data_secret), _bytes(ciphertext[:nh])
        key, nonce = _alloc("uint8_t[]", nk), _alloc("uint8_t[]", nn)
        rc = lib.mlsn_sender_data_key_nonce(hid, secret, nh, sample, len(sample), key, nk, nonce, nn)
        if rc:
            _raise_for(rc, "6.3.2", "sender data key derivation")
        result = bytes(ffi.buffer(key)), bytes(ffi.buffer(nonce))
        lib.mlsn_cleanse(key, nk)
        lib.mlsn_cleanse(nonce, nn)
        return result

    # ---- tree hashes (RFC 9420 §7.8) ----------------------------------------------------------------
    def tree_hashes(self, alg: str, nodes: Sequence[bytes | None]) -> list[bytes]:
        """Every node's tree hash, over the tree extended to a power-of-two leaf count (see reference)."""
        hid, nh = _hash_id(alg)
        depth = _args.tree_depth(len(nodes))
        width = (2 << depth) - 1
        present = bytes(map(is_not, nodes, repeat(None)))
        values = cast("list[bytes]", list(compress(nodes, present)))
        lens = array(_SIZE_T, map(len, values))
        data = b"".join(values)
        out = _alloc("uint8_t[]", width * nh)
        rc = lib.mlsn_tree_hashes(
            hid, len(nodes), present, data, len(data), _sizes(lens), len(values), out, width * nh
        )
        if rc:
            _raise_for(rc, "7.8", "tree hash")
        return _fixed(ffi.buffer(out), nh, width)

    def tree_hashes_packed(self, alg: str, nodes: Sequence[bytes]) -> Any:
        """Every node's tree hash (§7.8) back to back, Nh bytes each, over the tree extended to a
        power-of-two leaf count; ``nodes`` are the per-node encodings with ``b""`` for a blank node.

        Returns the C output buffer itself (its slices are bytes; equal to the bytes of the reference):
        one megabyte less to allocate and copy for a tree of 10,000 members.
        """
        hid, nh = _hash_id(alg)
        size = ((2 << _args.tree_depth(len(nodes))) - 1) * nh
        data = b"".join(nodes)
        lens = array(_SIZE_T, map(len, nodes))
        out = _alloc("uint8_t[]", size)
        rc = lib.mlsn_tree_hashes_spans(hid, len(nodes), data, len(data), ffi.NULL, _sizes(lens), out, size)
        if rc:
            _raise_for(rc, "7.8", "tree hash")
        return ffi.buffer(out)

    def tree_hashes_spans(self, alg: str, source: bytes, starts: Sequence[int], lens: Sequence[int]) -> Any:
        """:meth:`tree_hashes_packed` with node x's encoding at ``source[starts[x] : starts[x] + lens[x]]``
        (``lens[x] == 0`` for a blank node): a tree hashed straight from the message it was decoded from."""
        hid, nh = _hash_id(alg)
        n = len(lens)
        if len(starts) != n:
            raise ValidationError("7.8", "tree hash: one start and one length per node")
        starts, lens = _size_t_array(starts), _size_t_array(lens)
        size = ((2 << _args.tree_depth(n)) - 1) * nh
        out = _alloc("uint8_t[]", size)
        rc = lib.mlsn_tree_hashes_spans(
            hid, n, _bytes(source), len(source), _sizes(starts), _sizes(lens), out, size
        )
        if rc:
            _raise_for(rc, "7.8", "tree hash")
        return ffi.buffer(out)

    def tree_hash_path(
        self, alg: str, nodes: Sequence[bytes | None], hashes: Sequence[bytes], leaf_index: int
    ) -> list[bytes]:
        """Tree hashes after a change on ``leaf_index``'s direct path; the full updated list."""
        hid, nh = _hash_id(alg)
        depth = _args.check_path_args(nodes, hashes, leaf_index, nh)
        path = _args.direct_path(leaf_index, depth)
        siblings = [hashes[x] for x in _args.copath(leaf_index, depth)]
        _args.check_hash_lengths(siblings, nh)
        path_nodes = [nodes[x] if x < len(nodes) else None for x in path]
        present = bytes(map(is_not, path_nodes, repeat(None)))
        values = cast("list[bytes]", list(compress(path_nodes, present)))
        lens = array(_SIZE_T, map(len, values))
        data, copath = b"".join(values), b"".join(siblings)
        out = _alloc("uint8_t[]", (depth + 1) * nh)
        rc = lib.mlsn_tree_hash_path(
            hid, leaf_index, depth, present, data, len(data), _sizes(lens), len(values), copath, len(copath),
            out, (depth + 1) * nh,
        )  # fmt: skip
        if rc:
            _raise_for(rc, "7.8", "tree hash")
        result = list(hashes)
        for x, h in zip(path, _fixed(ffi.buffer(out), nh, depth + 1)):
            result[x] = h
        return result


__all__ = ["OPENSSL_VERSION", "NativeBackend"]
