"""The compiled extension and the helpers every native operation shares: status codes to project errors,
hash identifiers, C buffers in and out.

Importing this module raises :class:`ImportError` when the extension is not built or libcrypto lacks an
algorithm (so does importing :mod:`native.backend`, which builds on it).
"""

from __future__ import annotations

import functools
import struct
from array import array
from collections.abc import Sequence
from typing import Any

from mls.errors import CryptoError, UnsupportedError, ValidationError, aead_tag_error

try:
    from ._mlsnative import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only without a build
    raise ImportError(f"native crypto extension is not built: {exc}") from exc

if lib.mlsn_init() != lib.MLSN_OK:  # pragma: no cover - a libcrypto without AES-GCM/ChaCha20/SHA-2
    raise ImportError("libcrypto does not provide the algorithms the native backend needs")

#: (C identifier, Nh) per hash name.
HASHES: dict[str, tuple[int, int]] = {
    name: (hid, int(lib.mlsn_hash_len(hid)))
    for name, hid in (
        ("sha256", lib.MLSN_HASH_SHA256),
        ("sha384", lib.MLSN_HASH_SHA384),
        ("sha512", lib.MLSN_HASH_SHA512),
    )
}
#: array typecode matching size_t, so length arrays go to C without conversion.
SIZE_T = next(code for code in ("Q", "L", "I") if array(code).itemsize == ffi.sizeof("size_t"))

#: Output buffers are fully written by C before they are read: skip cffi's zero-fill.
alloc = ffi.new_allocator(should_clear_after_alloc=False)

OPENSSL_VERSION: str = ffi.string(lib.mlsn_openssl_version()).decode()


def _status(rc: int, what: str) -> str:
    """What a C status code (``rc`` is known not to be MLSN_OK) says went wrong, for an error message."""
    if rc == lib.MLSN_ERR_AUTH:
        return f"{what}: authentication failed"
    if rc == lib.MLSN_ERR_LENGTH:
        return f"{what}: an input has the wrong length"
    if rc == lib.MLSN_ERR_RANGE:
        return f"{what}: a count or generation is out of range"
    return f"{what}: libcrypto failed (status {rc})"


def _raise_if_unsupported_or_nomem(rc: int, what: str) -> None:
    """The statuses that are no validation error, whatever the operation."""
    if rc == lib.MLSN_ERR_UNSUPPORTED:
        raise UnsupportedError(f"{what}: algorithm not supported")
    if rc == lib.MLSN_ERR_NOMEM:
        raise MemoryError(what)


# One mapper per kind of C operation, from its status codes to the project's exceptions, each code that
# operation returns a check of its own. A status an operation never returns is its "failed" error.


def raise_for_aead(rc: int, what: str) -> None:
    """An AEAD seal or open (single or batched) failed: a bad tag (the Python backend's check), or a
    length the C layer refused (Python checks them first, so only a bug), or libcrypto failed."""
    _raise_if_unsupported_or_nomem(rc, what)
    if rc == lib.MLSN_ERR_AUTH:
        raise aead_tag_error(_status(rc, what))
    if rc == lib.MLSN_ERR_LENGTH:
        raise CryptoError("5.1/native-aead-length", _status(rc, what))
    raise CryptoError("5.1/native-aead-failed", _status(rc, what))


def raise_for_kdf(rc: int, what: str) -> None:
    """A hash, HMAC, HKDF-Extract or HKDF-Expand failed: a length the C layer refused, or libcrypto."""
    _raise_if_unsupported_or_nomem(rc, what)
    if rc == lib.MLSN_ERR_LENGTH:
        raise CryptoError("5.1/native-kdf-length", _status(rc, what))
    raise CryptoError("5.1/native-kdf-failed", _status(rc, what))


def raise_for_ratchet(rc: int) -> None:
    """``mlsn_ratchet_steps`` failed (its arguments were checked by :func:`_args.check_ratchet` first)."""
    what = "ratchet step"
    _raise_if_unsupported_or_nomem(rc, what)
    if rc == lib.MLSN_ERR_RANGE:
        raise ValidationError("15.3/ratchet-step-range", _status(rc, what))
    if rc == lib.MLSN_ERR_LENGTH:
        raise CryptoError("9.1/native-ratchet-length", _status(rc, what))
    raise CryptoError("9.1/native-ratchet-failed", _status(rc, what))


def raise_for_sender_data(rc: int) -> None:
    """``mlsn_sender_data_key_nonce`` failed (arguments checked by :func:`_args.check_sender_data`)."""
    what = "sender data key derivation"
    _raise_if_unsupported_or_nomem(rc, what)
    if rc == lib.MLSN_ERR_LENGTH:
        raise CryptoError("6.3.2/native-sender-data-length", _status(rc, what))
    raise CryptoError("6.3.2/native-sender-data-failed", _status(rc, what))


def raise_for_tree_hash(rc: int) -> None:
    """A tree hash failed: a leaf index or depth out of range, an input length that does not add up (a
    span outside its source: the reference's check of the same id), or libcrypto."""
    what = "tree hash"
    _raise_if_unsupported_or_nomem(rc, what)
    if rc == lib.MLSN_ERR_RANGE:
        raise ValidationError("7.8/native-tree-range", _status(rc, what))
    if rc == lib.MLSN_ERR_LENGTH:
        raise CryptoError("7.8/tree-hash-input-length", _status(rc, what))
    raise CryptoError("7.8/native-tree-hash-failed", _status(rc, what))


def hash_id(alg: str) -> tuple[int, int]:
    """(C identifier, Nh) of a hash name; :class:`UnsupportedError` for anything else."""
    found = HASHES.get(alg) if isinstance(alg, str) else None
    if found is None:
        raise UnsupportedError(f"hash {alg!r} is not supported")
    return found


def as_bytes(data: Any) -> bytes:
    """``data`` as bytes: any buffer-protocol object, never an int (``bytes(5)`` is five zeros)."""
    return data if type(data) is bytes else memoryview(data).tobytes()


def take_secret(buf: Any, size: int) -> bytes:
    """Copy a secret result out of a C buffer and wipe the buffer."""
    result: bytes = ffi.buffer(buf, size)[:]
    lib.mlsn_cleanse(buf, size)
    return result


def size_t_view(lengths: Any) -> Any:
    """A ``size_t[]`` view of an array of lengths (no copy)."""
    return ffi.from_buffer("size_t[]", lengths)


def size_t_array(values: Sequence[int]) -> array[int]:
    """``values`` as a size_t array (itself when it is one already); CryptoError for a negative or huge
    value or a non-integer."""
    if isinstance(values, array) and values.typecode == SIZE_T:
        return values
    try:
        return array(SIZE_T, values)
    except (OverflowError, TypeError) as exc:
        raise CryptoError("7.8/span-types", "tree hash: starts and lengths must be sizes") from exc


@functools.lru_cache(maxsize=8)
def _unpacker(size: int, count: int) -> struct.Struct:
    """Splits ``count`` values of ``size`` bytes in one call (faster than iter_unpack for big trees)."""
    return struct.Struct(f"{size}s" * count)


def fixed(buf: Any, size: int, count: int) -> list[bytes]:
    """``buf`` as ``count`` bytes objects of ``size`` bytes each."""
    if count == 0:
        return []
    return list(_unpacker(size, count).unpack(buf))


__all__ = [
    "HASHES",
    "OPENSSL_VERSION",
    "SIZE_T",
    "alloc",
    "as_bytes",
    "ffi",
    "fixed",
    "hash_id",
    "lib",
    "raise_for_aead",
    "raise_for_kdf",
    "raise_for_ratchet",
    "raise_for_sender_data",
    "raise_for_tree_hash",
    "size_t_array",
    "size_t_view",
    "take_secret",
]
