"""Native crypto for the MLS library: C over OpenSSL 3's libcrypto, bound with cffi (API mode).

What is here:

* ``native._mlsnative`` - the compiled extension, built by ``pip install`` from ``native/build.py`` and
  the C sources in ``native/csrc`` (one header per bound module).
* :mod:`native.backend` - :class:`~native.backend.NativeBackend`, the ``CryptoBackend`` of
  :mod:`mls.crypto.backend` plus batched secret-tree and tree-hash operations.
* :mod:`native.reference` - the same extra operations in pure Python on the Python backend's primitives;
  the native code must give identical bytes.

The package imports without the extension; :func:`available` says whether it is built and usable.

Building: ``pip install -e .`` (or ``pip install .``) compiles the extension through ``setup.py``'s
``cffi_modules``; it needs gcc, the Python headers and OpenSSL 3's headers and libcrypto (Debian:
``libssl-dev``). C flags: ``-O2 -Wall -Wextra -Werror``. ``native/sanitize_check.sh`` builds a copy with
AddressSanitizer and UBSan in a temporary directory and runs ``tests/native`` against it.
"""

from __future__ import annotations

__all__ = ["available"]


def available() -> bool:
    """True when the compiled extension imports and libcrypto provides every algorithm it needs."""
    try:
        from ._mlsnative import lib
    except ImportError:
        return False
    return bool(lib.mlsn_init() == lib.MLSN_OK)
