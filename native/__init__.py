"""Native crypto for the MLS library: C over OpenSSL 3's libcrypto, bound with cffi (API mode).

What is here:

* ``native._mlsnative`` - the compiled extension, built by ``pip install`` from ``native/build.py`` and
  the C sources in ``native/csrc`` (one header per bound module).
* :mod:`native.backend` - :class:`~native.backend.NativeBackend`, a ``CryptoBackend`` for
  :mod:`mls.crypto.backend`: the symmetric primitives (:mod:`native.symmetric`) plus batched secret-tree
  and tree-hash operations (:mod:`native.batch`), over the shared C-call helpers of :mod:`native._ffi`
  and argument checks of :mod:`native._args`.
* :func:`choose_backend` - the policy an application uses to pick its backend (``auto|python|native``,
  ``$MLS_CRYPTO_BACKEND``); the application installs the result with ``mls.use_crypto_backend``.

The pure-Python definition of the batched operations that the C must match byte for byte lives with the
tests (``tests/native/reference.py``). Nothing here imports from :mod:`mls` but :mod:`mls.errors`, and
:mod:`mls` never imports this package.

The package imports without the extension; :func:`available` says whether it is built and usable.

Building: ``pip install -e .`` (or ``pip install .``) compiles the extension through ``setup.py``'s
``cffi_modules``; it needs gcc, the Python headers and OpenSSL 3's headers and libcrypto (Debian:
``libssl-dev``). C flags: ``-O2 -Wall -Wextra -Werror``. ``native/sanitize_check.sh`` builds a copy with
AddressSanitizer and UBSan in a temporary directory and runs ``tests/native`` against it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar

from mls.errors import UnsupportedError

if TYPE_CHECKING:
    from .backend import NativeBackend

__all__ = ["BACKEND_CHOICES", "available", "choose_backend"]

#: The names :func:`choose_backend` accepts (and ``$MLS_CRYPTO_BACKEND`` may hold).
BACKEND_CHOICES = ("auto", "python", "native")

Fallback = TypeVar("Fallback")


def available() -> bool:
    """True when the compiled extension imports and libcrypto provides every algorithm it needs."""
    try:
        from ._mlsnative import lib
    except ImportError:
        return False
    return bool(lib.mlsn_init() == lib.MLSN_OK)


def choose_backend(choice: str | None, python_backend: Fallback) -> NativeBackend | Fallback:
    """The crypto backend an application should install for ``choice``.

    ``choice`` is ``auto``, ``python`` or ``native``; ``None`` (or empty) reads ``$MLS_CRYPTO_BACKEND``,
    and ``auto`` when that is unset too. ``python`` gives ``python_backend`` (the caller's pure-Python
    backend, so that this package need not import :mod:`mls.crypto`); ``native`` a new
    :class:`~native.backend.NativeBackend`, or :class:`UnsupportedError` when the extension is not built
    or not usable; ``auto`` the native backend when it is usable, else ``python_backend``. Any other name
    raises :class:`UnsupportedError`.
    """
    name = (choice or os.environ.get("MLS_CRYPTO_BACKEND") or "auto").lower()
    if name not in BACKEND_CHOICES:
        raise UnsupportedError(f"unknown crypto backend {name!r} (auto, python or native)")
    if name == "python":
        return python_backend
    try:
        from .backend import NativeBackend
    except ImportError:
        if name == "native":
            raise UnsupportedError("the native crypto backend is not built or not importable") from None
        return python_backend
    return NativeBackend()
