"""Envelope encryption of state at rest under a wrap key (KEK) that never leaves the token.

The token works per *data key*, not per request. ``seal`` encrypts with AES-256-GCM under the current data
key, held in memory; that key was drawn in software and wrapped (encrypted) once in the token under the *wrap
key* — an AES-256 token object, ``SENSITIVE``, never ``EXTRACTABLE``, not ``MODIFIABLE`` — with
``CKM_AES_GCM``. The data key is rotated after ``max_seals`` seals or ``max_age_s`` seconds, whichever comes
first (and on :meth:`Envelope.rotate`). ``open`` unwraps a blob's data key in the token once and keeps it in a
bounded in-memory LRU cache by data-key id; later blobs under that key need no token operation. Blob layout
(version 2; every sealed row names its KEK and data key, so both can rotate online)::

    version (1) ‖ KEK id (8) ‖ data-key id (16) ‖ wrap nonce (12) ‖ wrapped data key (32 + 16 tag)
        ‖ data nonce (12) ‖ ciphertext ‖ tag (16)

The KEK id is the first 8 bytes of SHA-256 of the wrap key's label (a name, not a secret); the data-key
id is 16 random bytes. The wrap's AAD binds the version, the KEK id and the data-key id, so a wrapped key
cannot be moved under another id; the data AEAD's AAD is every byte before the ciphertext followed by the
caller's ``aad``, so no part of a blob can be changed or swapped without ``open`` failing with
:class:`hsm.errors.EnvelopeError` (the token's refusal to unwrap is reported the same way). A cached key
is used only for a blob whose key record (version to wrapped key) equals, byte for byte, the one the token
unwrapped or wrapped: a store edited to pair a known id with other wrapped bytes goes back to the token.

Version 1 blobs (one data key per blob, wrap AAD binding the version only) still open, one unwrap each::

    version (1) ‖ wrap nonce (12) ‖ wrapped data key (32 + 16 tag) ‖ data nonce (12) ‖ ciphertext ‖ tag (16)

Nonce limits (NIST SP 800-38D §8.3): with random 96-bit nonces one key may encrypt at most 2^32 messages.
Data nonces are random per seal, so ``max_seals`` (default 2^20, at most 2^32 accepted) keeps each data
key far below that bound; wrap nonces are random per data key, so the wrap key now counts data keys, not
seals. Data keys are secrets in process memory: they are held only inside ``AESGCM`` objects, never in a
repr, a log line or an error; :meth:`Envelope.close` drops the current key and the cache (Python cannot
guarantee the memory is overwritten, only that the process holds no reference).

``create_wrap_key`` makes the wrap key if the token has none under the label; the gateway calls it each
time it opens its runtime (``init`` and ``serve``, :func:`gateway.app.open_runtime`). An :class:`Envelope`
never makes one: a wrap key that is missing or duplicated when it looks the key up raises
:class:`WrapKeyMissing` (and blobs sealed under a wrap key that is gone cannot be opened). Every token
operation (wrap, unwrap) is reported to the audit hook (:mod:`hsm.audit`), now once per data key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

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

VERSION = 2
VERSION_1 = 1
DEFAULT_WRAP_LABEL = "mlsgw/wrap/v1"
DEFAULT_MAX_SEALS = 1 << 20
DEFAULT_MAX_AGE_S = 3600.0
DEFAULT_CACHE_SIZE = 64
_MAX_SEALS_LIMIT = 1 << 32  # NIST SP 800-38D §8.3, random 96-bit nonces
_NONCE = 12
_DATA_KEY = 32
_TAG = 16
_WRAPPED = _DATA_KEY + _TAG
_KEK_ID = 8
_DK_ID = 16
_V1_HEADER = 1 + _NONCE + _WRAPPED + _NONCE
_RECORD = 1 + _KEK_ID + _DK_ID + _NONCE + _WRAPPED  # version to wrapped key: names and carries the data key
_HEADER = _RECORD + _NONCE
_WRAP_AAD = b"mlsgw envelope data key v"


def aes_token_key_template(label: str, *, wraps: bool) -> dict[Attribute, object]:
    """An AES-256 token key labelled (and identified) ``label``: sensitive, never extractable, not
    modifiable; it either encrypts and decrypts (``wraps=False``: the envelope's wrap key, which seals data
    keys with AES-GCM) or wraps and unwraps keys (``wraps=True``: the wrapped-custody KEK), nothing else."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.ENCRYPT: not wraps,
        Attribute.DECRYPT: not wraps,
        Attribute.WRAP: wraps,
        Attribute.UNWRAP: wraps,
        Attribute.LABEL: label,
        Attribute.ID: label.encode(),
    }


def find_secret_keys(session: Session, label: str) -> list[int]:
    """Handles of the secret keys labelled ``label`` (exactly one is usable)."""
    found = search(session, {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})
    return [handle_of(obj) for obj in found]


def create_aes_token_key(token: Token, label: str, *, wraps: bool, op: str) -> bool:
    """Make the AES token key ``label`` (:func:`aes_token_key_template`) unless a key with that label
    exists; returns whether it made one."""

    def create(session: Session) -> bool:
        with token.objects("search"):
            if find_secret_keys(session, label):
                return False
        with token.objects("change"):
            session.generate_key(
                KeyType.AES,
                256,
                store=True,
                capabilities=MechanismFlag(0),
                template=aes_token_key_template(label, wraps=wraps),
            )
        return True

    return token.run(create, op=op, retry=False)


def create_wrap_key(token: Token, label: str = DEFAULT_WRAP_LABEL) -> bool:
    """Make the wrap key unless one with ``label`` exists; returns whether it made one."""
    return create_aes_token_key(token, label, wraps=False, op="create wrap key")


def kek_id(label: str) -> bytes:
    """The KEK id a version 2 blob carries: the first 8 bytes of SHA-256 of the wrap key's label."""
    return hashlib.sha256(label.encode()).digest()[:_KEK_ID]


def _wrap_aad(record: bytes) -> bytes:
    """AAD of the data key's wrap: version, and for version 2 the KEK id and the data-key id."""
    if record[0] == VERSION_1:
        return _WRAP_AAD + record[:1]
    return _WRAP_AAD + record[: 1 + _KEK_ID + _DK_ID]


def _dk_id(record: bytes) -> bytes:
    return record[1 + _KEK_ID : 1 + _KEK_ID + _DK_ID]


@dataclass(eq=False)
class _DataKey:
    """One data key: its AEAD (the only holder of the key bytes) and its key record (non-secret)."""

    record: bytes
    aead: AESGCM = field(repr=False)
    created: float = 0.0
    seals: int = 0

    def __repr__(self) -> str:
        return f"_DataKey(id={_dk_id(self.record).hex()}, seals={self.seals})"


class _KeyCache:
    """A bounded LRU of unwrapped data keys by data-key id (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[bytes, _DataKey] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, record: bytes) -> _DataKey | None:
        """The cached key for ``record``'s id, only when its whole record matches byte for byte."""
        dk_id = _dk_id(record)
        with self._lock:
            key = self._keys.get(dk_id)
            if key is None or not hmac.compare_digest(key.record, record):
                return None
            self._keys.move_to_end(dk_id)
            return key

    def put(self, key: _DataKey) -> None:
        dk_id = _dk_id(key.record)
        with self._lock:
            if dk_id in self._keys and self._keys[dk_id].record != key.record:
                return  # the first record seen under an id stays; a clash is never cached
            self._keys[dk_id] = key
            self._keys.move_to_end(dk_id)
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"_KeyCache({len(self._keys)}/{self._size} data keys)"


class Envelope:
    """Seal and open blobs under data keys wrapped by the token's wrap key (thread-safe).

    ``max_seals`` and ``max_age_s`` bound the current data key's use (count and age, by ``clock``);
    ``cache_size`` bounds the data keys kept unwrapped for ``open``.
    """

    def __init__(
        self,
        token: Token,
        label: str = DEFAULT_WRAP_LABEL,
        *,
        audit_hook: AuditHook | None = None,
        max_seals: int = DEFAULT_MAX_SEALS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_seals <= _MAX_SEALS_LIMIT or not max_age_s > 0 or cache_size < 1:
            raise ValueError("envelope: need 1 <= max_seals <= 2^32, max_age_s > 0 and cache_size >= 1")
        self._token = token
        self._label = label
        self._ref = label.encode()
        self._kek_id = kek_id(label)
        self._auditor = Auditor(audit_hook)
        self._handle: tuple[int, int] | None = None  # (token generation, handle)
        self._max_seals = max_seals
        self._max_age_s = max_age_s
        self._clock = clock
        self._current: _DataKey | None = None
        self._seal_lock = threading.Lock()
        self._cache = _KeyCache(cache_size)

    def __repr__(self) -> str:
        return f"Envelope(label={self._label!r}, {self._cache!r})"

    def set_audit_hook(self, hook: AuditHook | None) -> None:
        self._auditor.hook = hook

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` (bound to ``aad``) into a self-contained version 2 blob."""
        key = self._reserve_seal()
        head = key.record + os.urandom(_NONCE)
        return head + key.aead.encrypt(head[_RECORD:], plaintext, head + aad)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        """The plaintext of ``blob``; EnvelopeError if it is malformed, tampered with or the AAD differs."""
        if len(blob) >= _HEADER + _TAG and blob[0] == VERSION:
            if blob[1 : 1 + _KEK_ID] != self._kek_id:
                raise EnvelopeError("sealed blob: sealed under another wrap key")
            record, header = blob[:_RECORD], _HEADER
            key = self._cache.get(record) or self._unwrap(record, cache=True)
        elif len(blob) >= _V1_HEADER + _TAG and blob[0] == VERSION_1:
            record, header = blob[: _V1_HEADER - _NONCE], _V1_HEADER
            key = self._unwrap(record, cache=False)
        else:
            raise EnvelopeError("sealed blob: unknown version or too short")
        try:
            return key.aead.decrypt(blob[header - _NONCE : header], blob[header:], blob[:header] + aad)
        except InvalidTag:
            raise EnvelopeError("sealed blob: ciphertext failed authentication") from None

    def rotate(self) -> None:
        """Retire the current data key: the next seal draws and wraps a new one (it stays cached for
        opening the blobs sealed under it)."""
        with self._seal_lock:
            self._current = None

    def close(self) -> None:
        """Drop every data key held in memory (the current one and the cache); the envelope stays usable,
        at the cost of one token operation per data key again."""
        with self._seal_lock:
            self._current = None
            self._cache.clear()

    forget = close

    def _reserve_seal(self) -> _DataKey:
        """The current data key with one more seal counted; a new one when it is used up or too old."""
        with self._seal_lock:
            key, now = self._current, self._clock()
            if key is None or key.seals >= self._max_seals or now - key.created >= self._max_age_s:
                key = self._current = self._new_data_key(now)
            key.seals += 1
            return key

    def _new_data_key(self, now: float) -> _DataKey:
        """Draw a data key in software and wrap it in the token (one audited token operation)."""
        secret = AESGCM.generate_key(256)
        head = bytes((VERSION,)) + self._kek_id + os.urandom(_DK_ID)
        wrap_nonce = os.urandom(_NONCE)
        wrapped = self._wrap_op("wrap", wrap_nonce, secret, _wrap_aad(head), encrypt=True)
        key = _DataKey(head + wrap_nonce + wrapped, AESGCM(secret), created=now)
        self._cache.put(key)
        return key

    def _unwrap(self, record: bytes, *, cache: bool) -> _DataKey:
        """Unwrap ``record``'s data key in the token (one audited token operation)."""
        wrap_nonce = record[-_WRAPPED - _NONCE : -_WRAPPED]
        try:
            secret = self._wrap_op("unwrap", wrap_nonce, record[-_WRAPPED:], _wrap_aad(record), encrypt=False)
        except (HsmUnavailable, WrapKeyMissing):
            raise
        except HsmError:
            raise EnvelopeError("sealed blob: data key failed authentication") from None
        if len(secret) != _DATA_KEY:
            raise EnvelopeError("sealed blob: data key failed authentication")
        key = _DataKey(record, AESGCM(secret), created=self._clock())
        if cache:
            self._cache.put(key)
        return key

    def _wrap_op(self, op: str, nonce: bytes, data: bytes, aad: bytes, *, encrypt: bool) -> bytes:
        params = GCMParams(nonce, aad, _TAG * 8)
        mechanism = Mechanism.AES_GCM

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
                return find_secret_keys(session, self._label)

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


__all__ = ["DEFAULT_WRAP_LABEL", "VERSION", "Envelope", "WrapKeyMissing", "create_wrap_key", "kek_id"]
