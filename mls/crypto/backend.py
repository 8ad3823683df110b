"""The crypto backend: hash, HMAC, HKDF and AEAD primitives behind one interface.

RFC 9420 needs a handful of symmetric primitives (§5.1: Hash, KDF, MAC, AEAD of the cipher suite). They
are reached through a :class:`CryptoBackend` so that an accelerated implementation (``native/``, C over
OpenSSL's libcrypto) can replace the pure-Python one (``cryptography`` and ``hashlib``, both OpenSSL)
without touching protocol code. Both must give identical bytes.

The library never chooses a backend by itself: :class:`PythonBackend` is in use until the application
installs another with :func:`set_backend` (exported as ``mls.use_crypto_backend``), typically at its
entry point (the gateway installs the native one, see ``native.choose_backend``). :func:`get_backend`
returns the backend in use; its ``name`` is reported in metrics.
"""

from __future__ import annotations

import functools
import hashlib
import hmac as _hmac
import struct
from array import array
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from mls.errors import (
    CryptoError,
    UnsupportedError,
    aead_batch_aad_error,
    aead_batch_size_error,
    aead_key_nonce_length_error,
    aead_tag_error,
)

#: HPKE AEAD identifiers (RFC 9180 §7.3), which MLS cipher suites use.
AEAD_AES128GCM = 0x0001
AEAD_AES256GCM = 0x0002
AEAD_CHACHA20POLY1305 = 0x0003

#: (key length Nk, nonce length Nn) per AEAD id.
AEAD_SIZES = {AEAD_AES128GCM: (16, 12), AEAD_AES256GCM: (32, 12), AEAD_CHACHA20POLY1305: (32, 12)}
AEAD_TAG_LEN = 16

HASH_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}

AeadItem = tuple[bytes, bytes, bytes, bytes]
"""One AEAD operation: (key, nonce, aad, plaintext-or-ciphertext)."""


class CryptoBackend(Protocol):
    """Symmetric primitives used by MLS. Hash names are ``"sha256"``, ``"sha384"``, ``"sha512"``."""

    name: str

    def hash(self, alg: str, data: bytes) -> bytes: ...

    def hmac(self, alg: str, key: bytes, data: bytes) -> bytes: ...

    def hkdf_extract(self, alg: str, salt: bytes, ikm: bytes) -> bytes: ...

    def hkdf_expand(self, alg: str, prk: bytes, info: bytes, length: int) -> bytes: ...

    def aead_seal(self, aead: int, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes: ...

    def aead_open(self, aead: int, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and authenticate; raises :class:`~mls.errors.CryptoError` on a bad tag."""
        ...

    def aead_seal_many(self, aead: int, items: Sequence[AeadItem]) -> list[bytes]: ...

    def aead_open_many(self, aead: int, items: Sequence[AeadItem]) -> list[bytes | None]:
        """Open many; an item that fails authentication gives ``None`` in its place."""
        ...

    def aead_seal_batch(
        self, aead: int, keys: bytes, nonces: bytes, aad: bytes | Sequence[bytes], plaintexts: Sequence[bytes]
    ) -> list[bytes]:
        """Seal ``plaintexts[i]`` under the i-th Nk-byte key in ``keys`` and the i-th Nn-byte nonce in
        ``nonces`` (the layout :meth:`BatchOps.ratchet_steps` hands them out in). ``aad`` is one AAD for
        every item (a sender's PrivateContentAAD within an epoch, §6.3.1) or one per item."""
        ...

    def aead_open_batch(
        self,
        aead: int,
        keys: bytes,
        nonces: bytes,
        aad: bytes | Sequence[bytes],
        ciphertexts: Sequence[bytes],
    ) -> list[bytes | None]:
        """Open as :meth:`aead_seal_batch` seals; ``None`` for an item that fails authentication."""
        ...


@runtime_checkable
class BatchOps(Protocol):
    """Whole-step operations an accelerated backend offers on top of :class:`CryptoBackend`.

    The protocol code has its own (pure-Python) definitions of these; when the backend in use has them,
    it calls them instead, and both must give identical bytes (``tests/native`` checks it).
    """

    def ratchet_steps(
        self, alg: str, secret: bytes, start_generation: int, count: int, nk: int, nn: int
    ) -> tuple[bytes, bytes, bytes]:
        """Keys and nonces of generations start..start+count-1 of a sender ratchet (§9.1), each run back to
        back (Nk and Nn bytes per generation, as :meth:`CryptoBackend.aead_seal_batch` takes them), and the
        ratchet secret of the next generation."""
        ...

    def sender_data_key_nonce(
        self, alg: str, sender_data_secret: bytes, ciphertext: bytes, nk: int, nn: int
    ) -> tuple[bytes, bytes]: ...

    def tree_hashes_packed(self, alg: str, nodes: Sequence[bytes]) -> HashBuffer:
        """The tree hash (§7.8) of every node of a full tree given as per-node encodings (``b""`` = blank),
        back to back in node order (Nh bytes each)."""
        ...

    def tree_hashes_spans(self, alg: str, source: bytes, starts: array[int], lens: array[int]) -> HashBuffer:
        """:meth:`tree_hashes_packed` with node x's encoding at ``source[starts[x] : starts[x] + lens[x]]``
        (``lens[x] == 0``: blank), e.g. in the message the tree was decoded from."""
        ...


class HashBuffer(Protocol):
    """Fixed-size hashes back to back: ``bytes``, or a buffer that the caller must not modify and whose
    slices are ``bytes`` (the native backend hands out the C output buffer itself)."""

    def __getitem__(self, index: slice, /) -> bytes: ...

    def __len__(self) -> int: ...


def batch_ops() -> BatchOps | None:
    """The backend in use, if it offers :class:`BatchOps` (decided when the backend is set: an
    ``isinstance`` check against a runtime protocol costs microseconds, and this runs per message)."""
    return _batch_ops


def _as_batch_ops(backend: CryptoBackend) -> BatchOps | None:
    return backend if isinstance(backend, BatchOps) else None


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def _check_aead_args(aead: int, key: bytes, nonce: bytes) -> None:
    sizes = AEAD_SIZES.get(aead)
    if sizes is None:
        raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
    if len(key) != sizes[0] or len(nonce) != sizes[1]:
        raise aead_key_nonce_length_error()


class PythonBackend:
    """The pure-Python path: ``hashlib``/``hmac`` and ``cryptography`` (all OpenSSL underneath)."""

    name = "python"

    def hash(self, alg: str, data: bytes) -> bytes:
        return hashlib.new(alg, data).digest()

    def hmac(self, alg: str, key: bytes, data: bytes) -> bytes:
        return _hmac.digest(key, data, alg)

    def hkdf_extract(self, alg: str, salt: bytes, ikm: bytes) -> bytes:
        # RFC 5869 §2.2: PRK = HMAC-Hash(salt, IKM), an all-zero salt of HashLen when none is given.
        return _hmac.digest(salt or bytes(HASH_SIZES[alg]), ikm, alg)

    def hkdf_expand(self, alg: str, prk: bytes, info: bytes, length: int) -> bytes:
        return HKDFExpand(_HASHES[alg](), length, info).derive(prk)

    def _cipher(self, aead: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
        return ChaCha20Poly1305(key) if aead == AEAD_CHACHA20POLY1305 else AESGCM(key)

    def aead_seal(self, aead: int, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        _check_aead_args(aead, key, nonce)
        return self._cipher(aead, key).encrypt(nonce, plaintext, aad)

    def aead_open(self, aead: int, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        _check_aead_args(aead, key, nonce)
        try:
            return self._cipher(aead, key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise aead_tag_error() from None

    def aead_seal_many(self, aead: int, items: Sequence[AeadItem]) -> list[bytes]:
        return [self.aead_seal(aead, *item) for item in items]

    def aead_open_many(self, aead: int, items: Sequence[AeadItem]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for item in items:
            try:
                out.append(self.aead_open(aead, *item))
            except CryptoError:
                out.append(None)
        return out

    def _batch_keys(
        self, aead: int, keys: bytes, nonces: bytes, aad: bytes | Sequence[bytes], n: int
    ) -> tuple[list[AESGCM | ChaCha20Poly1305], list[bytes], Iterable[bytes]]:
        """Per-item ciphers, nonces and AADs of a batch (every length checked first)."""
        sizes = AEAD_SIZES.get(aead)
        if sizes is None:
            raise UnsupportedError(f"AEAD 0x{aead:04x} is not supported")
        nk, nn = sizes
        if len(keys) != n * nk or len(nonces) != n * nn:
            raise aead_batch_size_error()
        if isinstance(aad, (bytes, bytearray, memoryview)):
            aads: Iterable[bytes] = repeat(bytes(aad), n)
        elif len(aad) != n:
            raise aead_batch_aad_error()
        else:
            aads = aad
        cipher = ChaCha20Poly1305 if aead == AEAD_CHACHA20POLY1305 else AESGCM
        return list(map(cipher, _cut(keys, nk, n))), _cut(nonces, nn, n), aads

    def aead_seal_batch(
        self, aead: int, keys: bytes, nonces: bytes, aad: bytes | Sequence[bytes], plaintexts: Sequence[bytes]
    ) -> list[bytes]:
        ciphers, nonce_list, aads = self._batch_keys(aead, keys, nonces, aad, len(plaintexts))
        return [c.encrypt(n, p, a) for c, n, a, p in zip(ciphers, nonce_list, aads, plaintexts)]

    def aead_open_batch(
        self,
        aead: int,
        keys: bytes,
        nonces: bytes,
        aad: bytes | Sequence[bytes],
        ciphertexts: Sequence[bytes],
    ) -> list[bytes | None]:
        ciphers, nonce_list, aads = self._batch_keys(aead, keys, nonces, aad, len(ciphertexts))
        out: list[bytes | None] = []
        for c, n, a, ct in zip(ciphers, nonce_list, aads, ciphertexts):
            try:
                out.append(c.decrypt(n, ct, a))
            except InvalidTag:
                out.append(None)
        return out


@functools.lru_cache(maxsize=8)
def _pieces(size: int, count: int) -> struct.Struct:
    return struct.Struct(f"{size}s" * count)


def _cut(data: bytes, size: int, count: int) -> list[bytes]:
    """``data`` (``count * size`` bytes) as ``count`` pieces of ``size`` bytes, in one struct call."""
    return list(_pieces(size, count).unpack(data)) if count else []


_backend: CryptoBackend = PythonBackend()
_batch_ops: BatchOps | None = _as_batch_ops(_backend)


def get_backend() -> CryptoBackend:
    """The backend in use by every cipher suite."""
    return _backend


def set_backend(backend: CryptoBackend) -> None:
    """Install the backend every cipher suite uses from now on (an application's entry point does, once;
    tests and benchmarks compare backends this way)."""
    global _backend, _batch_ops
    _backend = backend
    _batch_ops = _as_batch_ops(backend)
