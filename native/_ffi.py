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

from mls.errors import CryptoError, UnsupportedError, ValidationError

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


def raise_for(rc: int, rule: str, what: str) -> None:
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
        raise CryptoError("7.8", "tree hash: starts and lengths must be sizes") from exc


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
    "raise_for",
    "size_t_array",
    "size_t_view",
    "take_secret",
]
