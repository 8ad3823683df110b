"""Envelope encryption of state at rest under a wrap key that never leaves the token.

``seal`` draws a fresh AES-256-GCM *data key* in software, encrypts the plaintext with it, and encrypts
(wraps) the data key in the token with the *wrap key* — an AES-256 token object, ``SENSITIVE``, never
``EXTRACTABLE`` — using ``CKM_AES_GCM``. ``open`` reverses it. Blob layout (version 1)::

    version (1) ‖ wrap nonce (12) ‖ wrapped data key (32 + 16 tag) ‖ data nonce (12) ‖ ciphertext ‖ tag (16)

The wrap's AAD binds the version; the data AEAD's AAD is every byte before the ciphertext followed by the
caller's ``aad``, so no part of a blob can be changed or swapped without ``open`` failing with
:class:`hsm.errors.EnvelopeError` (the token's refusal to unwrap is reported the same way).

``create_wrap_key`` makes the wrap key if the token has none under the label; the gateway calls it each
time it opens its runtime (``init`` and ``serve``, :func:`gateway.app.open_runtime`). An :class:`Envelope`
never makes one: a wrap key that is missing or duplicated when it looks the key up raises
:class:`WrapKeyMissing` (and blobs sealed under a wrap key that is gone cannot be opened).
Random 96-bit wrap nonces limit one wrap key to about 2^32 seals (NIST SP 800-38D §8.3): rotate before that.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.types import Session

from ._compat import bound_secret
from .audit import AuditHook, Auditor
from .errors import EnvelopeError, HsmError, HsmUnavailable
from .mechanisms import handle_of, search
from .token import StaleHandle, Token

VERSION = 1
DEFAULT_WRAP_LABEL = "mlsgw/wrap/v1"
_NONCE = 12
_DATA_KEY = 32
_TAG = 16
_WRAPPED = _DATA_KEY + _TAG
_HEADER = 1 + _NONCE + _WRAPPED + _NONCE
_WRAP_AAD = b"mlsgw envelope data key v"


def _wrap_key_template(label: str) -> dict[Attribute, object]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.LABEL: label,
        Attribute.ID: label.encode(),
    }


def _find_wrap_keys(session: Session, label: str) -> list[int]:
    found = search(session, {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})
    return [handle_of(obj) for obj in found]


def create_wrap_key(token: Token, label: str = DEFAULT_WRAP_LABEL) -> bool:
    """Make the wrap key unless one with ``label`` exists; returns whether it made one."""

    def create(session: Session) -> bool:
        with token.objects("search"):
            if _find_wrap_keys(session, label):
                return False
        with token.objects("change"):
            session.generate_key(
                KeyType.AES,
                256,
                store=True,
                capabilities=MechanismFlag(0),
                template=_wrap_key_template(label),
            )
        return True

    return token.run(create, op="create wrap key", retry=False)


class Envelope:
    """Seal and open blobs with the token's wrap key (thread-safe)."""

    def __init__(
        self, token: Token, label: str = DEFAULT_WRAP_LABEL, *, audit_hook: AuditHook | None = None
    ) -> None:
        self._token = token
        self._label = label
        self._ref = label.encode()
        self._auditor = Auditor(audit_hook)
        self._handle: tuple[int, int] | None = None  # (token generation, handle)

    def set_audit_hook(self, hook: AuditHook | None) -> None:
        self._auditor.hook = hook

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` (bound to ``aad``) into a self-contained blob."""
        data_key = AESGCM.generate_key(256)
        wrap_nonce, data_nonce = os.urandom(_NONCE), os.urandom(_NONCE)
        version = bytes((VERSION,))
        wrapped = self._wrap_op("wrap", Mechanism.AES_GCM, wrap_nonce, data_key, encrypt=True)
        head = version + wrap_nonce + wrapped + data_nonce
        return head + AESGCM(data_key).encrypt(data_nonce, plaintext, head + aad)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        """The plaintext of ``blob``; EnvelopeError if it is malformed, tampered with or the AAD differs."""
        if len(blob) < _HEADER + _TAG or blob[0] != VERSION:
            raise EnvelopeError("sealed blob: unknown version or too short")
        wrap_nonce = blob[1 : 1 + _NONCE]
        wrapped = blob[1 + _NONCE : 1 + _NONCE + _WRAPPED]
        data_nonce = blob[1 + _NONCE + _WRAPPED : _HEADER]
        try:
            data_key = self._wrap_op("unwrap", Mechanism.AES_GCM, wrap_nonce, wrapped, encrypt=False)
        except (HsmUnavailable, WrapKeyMissing):
            raise
        except HsmError:
            raise EnvelopeError("sealed blob: data key failed authentication") from None
        try:
            return AESGCM(data_key).decrypt(data_nonce, blob[_HEADER:], blob[:_HEADER] + aad)
        except InvalidTag:
            raise EnvelopeError("sealed blob: ciphertext failed authentication") from None

    def _wrap_op(self, op: str, mechanism: Mechanism, nonce: bytes, data: bytes, *, encrypt: bool) -> bytes:
        params = GCMParams(nonce, _WRAP_AAD + bytes((VERSION,)), _TAG * 8)

        def crypt(session: Session, handle: int) -> bytes:
            key = bound_secret(session, handle, KeyType.AES)
            if encrypt:
                return bytes(key.encrypt(data, mechanism=mechanism, mechanism_param=params))
            return bytes(key.decrypt(data, mechanism=mechanism, mechanism_param=params))

        try:
            out = self._crypt(crypt, op)
        except HsmError:
            self._auditor.emit(self._ref, op, "pkcs11", False)
            raise
        self._auditor.emit(self._ref, op, "pkcs11", True)
        return out

    def _crypt(self, crypt: Callable[[Session, int], bytes], op: str) -> bytes:
        for _ in range(3):
            generation, handle = self._wrap_handle()
            try:
                return self._token.run(
                    functools.partial(_call_with, crypt, handle), op=op, generation=generation
                )
            except StaleHandle:
                self._handle = None  # reconnected (or the key was replaced): find it again
        raise HsmUnavailable(f"{op}: the token connection keeps changing")

    def _wrap_handle(self) -> tuple[int, int]:
        """(connection, handle) of the wrap key, cached per connection; found by label once."""
        cached = self._handle
        if cached is not None and cached[0] == self._token.generation:
            return cached

        def find(session: Session) -> list[int]:
            with self._token.objects("search"):
                return _find_wrap_keys(session, self._label)

        handles, generation = self._token.run_pinned(find, op="find wrap key")
        if len(handles) != 1:
            what = "no wrap key" if not handles else "several wrap keys"
            raise WrapKeyMissing(f"token has {what} labelled {self._label!r}; run the gateway's init")
        self._handle = (generation, handles[0])
        return self._handle


def _call_with(crypt: Callable[[Session, int], bytes], handle: int, session: Session) -> bytes:
    return crypt(session, handle)


class WrapKeyMissing(HsmError):
    """The token has no wrap key (or more than one) under the configured label."""


__all__ = ["DEFAULT_WRAP_LABEL", "VERSION", "Envelope", "WrapKeyMissing", "create_wrap_key"]
