"""Errors raised by the ``hsm`` package.

python-pkcs11's exceptions never leave this package: :mod:`hsm.token` maps each of them to one of these.

* :class:`HsmError` — the token refused an operation (unsupported mechanism, a template it rejects, a
  wrong PIN, a key that does not exist). Retrying the same call will fail the same way.
* :class:`HsmUnavailable` — the token cannot be reached right now (device or session lost, library not
  initialised, token absent, no free session in time). Calls fail fast while the token is down and the
  token is reconnected with backoff in the background of later calls.
* :class:`EnvelopeError` — a sealed blob is malformed or fails authentication (tampering, wrong AAD).

Error text names the operation and the PKCS#11 error class only: never a PIN, key bytes or a plaintext.
"""

from __future__ import annotations

from mls.errors import KeyStoreError


class HsmError(KeyStoreError):
    """The token (or this package on its behalf) refused an operation."""


class HsmUnavailable(HsmError):
    """The token is unreachable; the operation was not performed (or its outcome is unknown)."""


class EnvelopeError(HsmError):
    """A sealed blob could not be opened: malformed, wrong version, wrong AAD, or tampered with."""


__all__ = ["EnvelopeError", "HsmError", "HsmUnavailable"]
