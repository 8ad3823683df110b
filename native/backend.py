"""``NativeBackend``: the crypto backend of :mod:`mls.crypto.backend` in C over OpenSSL 3's libcrypto.

It implements the ``CryptoBackend`` protocol (:class:`~native.symmetric.NativeSymmetric`: hash, HMAC,
HKDF, AEAD single and batched) and its ``BatchOps`` (:class:`~native.batch.NativeBatchOps`: secret-tree
and tree-hash operations), giving the bytes of the pure-Python path and raising the same project errors.

Nothing here imports :mod:`mls.crypto`: an application installs this backend (``native.choose_backend``
picks it). Importing this module raises :class:`ImportError` when the extension is not built or libcrypto
lacks an algorithm.
"""

from __future__ import annotations

from ._ffi import OPENSSL_VERSION
from .batch import NativeBatchOps
from .symmetric import NativeSymmetric


class NativeBackend(NativeSymmetric, NativeBatchOps):
    """Symmetric MLS crypto and its batched steps in C over libcrypto (``name = "native"``)."""

    name = "native"


__all__ = ["OPENSSL_VERSION", "NativeBackend"]
