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

Version 3 (what ``seal`` writes) has the same layout as version 2; only the data AEAD's AAD differs: it
binds the version and the data-key id, not the KEK id nor the wrapped key, so a KEK rotation re-wraps a
blob's key record alone (:meth:`Envelope.rewrap`: unwrap under the old KEK, wrap under the new one, once
per data key) and leaves its ciphertext as it was. The record stays authenticated: its wrap AAD binds the
KEK id and the data-key id, so a changed record fails to unwrap, and another data key fails the data tag.
Version 2 blobs still open (data AAD: every byte before the ciphertext, then the caller's ``aad``);
re-wrapping one seals it again as version 3.

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
operation (wrap, unwrap) is reported to the audit hook (:mod:`hsm.audit`), once per data key, with the
wrap key's label as the key reference (so the audit says which KEK sealed or opened what).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import KeyType, Mechanism
from pkcs11.mechanisms import GCMParams
from pkcs11.types import Session

from ._compat import bound_secret
from .audit import AuditHook, Auditor
from .errors import EnvelopeError, HsmError, HsmUnavailable
from .kek_ring import (
    KekRing,
    aes_token_key_template,
    create_aes_token_key,
    destroy_aes_token_key,
    find_secret_keys,
    kek_id,
)
from .token import Token

VERSION = 3
VERSION_2 = 2
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
_DATA_AAD = b"mlsgw envelope data v3|"


def create_wrap_key(token: Token, label: str = DEFAULT_WRAP_LABEL) -> bool:
    """Make the wrap key unless one with ``label`` exists; returns whether it made one."""
    return create_aes_token_key(token, label, wraps=False, op="create wrap key")


def _wrap_aad(record: bytes) -> bytes:
    """AAD of the data key's wrap: version, and for version 2 the KEK id and the data-key id."""
    if record[0] == VERSION_1:
        return _WRAP_AAD + record[:1]
    return _WRAP_AAD + record[: 1 + _KEK_ID + _DK_ID]


def _dk_id(record: bytes) -> bytes:
    return record[1 + _KEK_ID : 1 + _KEK_ID + _DK_ID]


def _data_aad(record: bytes, aad: bytes) -> bytes:
    """AAD of a version 3 blob's data AEAD: the version and the data-key id (not the KEK id nor the
    wrapped bytes, so a KEK rotation re-wraps the key record alone), then the caller's ``aad``."""
    return _DATA_AAD + record[:1] + _dk_id(record) + aad


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
    """A bounded LRU of unwrapped data keys by their whole key record (thread-safe). One data key may be
    cached under two records (before and after a KEK rotation re-wrapped it): a record is only ever
    matched byte for byte, so a store edited to pair a known id with other wrapped bytes misses."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[bytes, _DataKey] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, record: bytes) -> _DataKey | None:
        """The cached key for exactly ``record``."""
        with self._lock:
            key = self._keys.get(record)
            if key is None:
                return None
            self._keys.move_to_end(record)
            return key

    def put(self, key: _DataKey) -> None:
        with self._lock:
            self._keys[key.record] = key
            self._keys.move_to_end(key.record)
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
    """Seal and open blobs under data keys wrapped by the token's wrap keys (thread-safe).

    ``label`` is the wrap key new data keys are wrapped under until :meth:`use_kek` names another (KEK
    rotation, :mod:`gateway.kek_rotation`); it is also the wrap key of version 1 blobs, which name none.
    Blobs name their wrap key by id: any wrap key the envelope knows (:meth:`use_kek`, :meth:`know_keks`,
    or the ``resolver`` asked when a blob names one it does not know) opens them. ``max_seals`` and
    ``max_age_s`` bound the current data key's use (count and age, by ``clock``); ``cache_size`` bounds
    the data keys kept unwrapped for ``open`` (and the re-wrapped key records remembered).
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
        #: The wrap keys: the current one, the others blobs may name; its ``resolver`` is asked about a
        #: wrap key a blob names that the envelope does not know (the gateway reads its ``keks`` table).
        self.keks = KekRing(token, label, _wrap_key_missing)
        self._auditor = Auditor(audit_hook)
        self._max_seals = max_seals
        self._max_age_s = max_age_s
        self._clock = clock
        self._current: _DataKey | None = None
        self._seal_lock = threading.Lock()
        self._cache = _KeyCache(cache_size)
        self._rewrapped: OrderedDict[bytes, bytes] = OrderedDict()  # old key record -> new (bounded)
        self._rewrapped_size = cache_size

    def __repr__(self) -> str:
        return f"Envelope(label={self.keks.label!r}, {self._cache!r})"

    @property
    def label(self) -> str:
        """The label of the wrap key new data keys are wrapped under."""
        return self.keks.label

    def set_audit_hook(self, hook: AuditHook | None) -> None:
        self._auditor.hook = hook

    # ---- wrap keys (KEK rotation) ------------------------------------------------------------------
    def use_kek(self, label: str) -> None:
        """Wrap new data keys under ``label`` from now on (the current data key is retired when the label
        changes); blobs under the wrap keys known before still open."""
        with self._seal_lock:
            if self.keks.use(label):
                self._current = None

    def know_keks(self, labels: Iterable[str]) -> None:
        """Also open blobs under these wrap keys (the current one is always known)."""
        self.keks.know(labels)

    def kek_label_of(self, blob: bytes) -> str | None:
        """The label of the wrap key ``blob``'s data key is wrapped under (None when it is not known)."""
        if blob[:1] == bytes((VERSION_1,)):
            return self.keks.first
        return self.keks.known(blob[1 : 1 + _KEK_ID])

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether :meth:`rewrap` would change ``blob`` (an older version, or another wrap key)."""
        return blob[:1] != bytes((VERSION,)) or blob[1 : 1 + _KEK_ID] != self.keks.id

    # ---- seal, open, re-wrap -----------------------------------------------------------------------
    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt ``plaintext`` (bound to ``aad``) into a self-contained version 3 blob."""
        key = self._reserve_seal()
        nonce = os.urandom(_NONCE)
        return key.record + nonce + key.aead.encrypt(nonce, plaintext, _data_aad(key.record, aad))

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        """The plaintext of ``blob``; EnvelopeError if it is malformed, tampered with or the AAD differs."""
        if len(blob) >= _HEADER + _TAG and blob[0] in (VERSION, VERSION_2):
            record, header = blob[:_RECORD], _HEADER
            key = self._cache.get(record) or self._unwrap(self._label_of(record), record, cache=True)
            data_aad = _data_aad(record, aad) if blob[0] == VERSION else blob[:header] + aad
        elif len(blob) >= _V1_HEADER + _TAG and blob[0] == VERSION_1:
            record, header = blob[: _V1_HEADER - _NONCE], _V1_HEADER
            key = self._unwrap(self.keks.first, record, cache=False)
            data_aad = blob[:header] + aad
        else:
            raise EnvelopeError("sealed blob: unknown version or too short")
        try:
            return key.aead.decrypt(blob[header - _NONCE : header], blob[header:], data_aad)
        except InvalidTag:
            raise EnvelopeError("sealed blob: ciphertext failed authentication") from None

    def rewrap(self, blob: bytes, aad: bytes | None = None) -> bytes:
        """``blob`` with its data key wrapped under the current wrap key (KEK rotation).

        A version 3 blob keeps its data nonce, ciphertext and tag: only its key record changes (the data
        key is unwrapped under the wrap key the blob names and wrapped under the current one, two token
        operations per data key, not per blob — the records already re-wrapped are remembered). Version 1
        and 2 blobs bind their whole key record into the data AEAD, so they are opened (with ``aad``) and
        sealed again as version 3. A blob already under the current wrap key comes back unchanged."""
        if not self.needs_rewrap(blob):
            return blob
        if blob[0] == VERSION and len(blob) >= _HEADER + _TAG:
            return self._rewrap_record(blob[:_RECORD]) + blob[_RECORD:]
        if aad is None:
            raise EnvelopeError("sealed blob: a version 1 or 2 blob is sealed again, which needs its AAD")
        return self.seal(self.open(blob, aad), aad)

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
            self._rewrapped.clear()

    forget = close

    # ---- internals ---------------------------------------------------------------------------------
    def _label_of(self, record: bytes) -> str:
        """The label of the wrap key ``record`` names (asking the resolver once when it is not known)."""
        label = self.keks.resolve(record[1 : 1 + _KEK_ID])
        if label is None:
            raise EnvelopeError("sealed blob: sealed under another wrap key, one this gateway does not know")
        return label

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
        record = self._wrap_record(*self.keks.current, os.urandom(_DK_ID), secret)
        key = _DataKey(record, AESGCM(secret))
        key.created = now
        self._cache.put(key)
        return key

    def _wrap_record(self, label: str, kid: bytes, dk_id: bytes, secret: bytes) -> bytes:
        """The version 3 key record of ``secret`` wrapped under the wrap key ``label`` (id ``kid``)."""
        head = bytes((VERSION,)) + kid + dk_id
        wrap_nonce = os.urandom(_NONCE)
        return (
            head
            + wrap_nonce
            + self._wrap_op(label, "wrap", wrap_nonce, secret, _wrap_aad(head), encrypt=True)
        )

    def _rewrap_record(self, record: bytes) -> bytes:
        with self._seal_lock:
            label, kid = self.keks.current
            done = self._rewrapped.get(record)
        if done is not None and done[1 : 1 + _KEK_ID] == kid:
            return done
        secret = self._unwrap_secret(self._label_of(record), record)
        new = self._wrap_record(label, kid, _dk_id(record), secret)
        self._cache.put(_DataKey(new, AESGCM(secret), created=self._clock()))
        with self._seal_lock:
            self._rewrapped[record] = new
            while len(self._rewrapped) > self._rewrapped_size:
                self._rewrapped.popitem(last=False)
        return new

    def _unwrap(self, label: str, record: bytes, *, cache: bool) -> _DataKey:
        """Unwrap ``record``'s data key in the token (one audited token operation)."""
        key = _DataKey(record, AESGCM(self._unwrap_secret(label, record)), created=self._clock())
        if cache:
            self._cache.put(key)
        return key

    def _unwrap_secret(self, label: str, record: bytes) -> bytes:
        wrap_nonce = record[-_WRAPPED - _NONCE : -_WRAPPED]
        try:
            secret = self._wrap_op(
                label, "unwrap", wrap_nonce, record[-_WRAPPED:], _wrap_aad(record), encrypt=False
            )
        except (HsmUnavailable, WrapKeyMissing):
            raise
        except HsmError:
            raise EnvelopeError("sealed blob: data key failed authentication") from None
        if len(secret) != _DATA_KEY:
            raise EnvelopeError("sealed blob: data key failed authentication")
        return secret

    def _wrap_op(self, label: str, op: str, nonce: bytes, data: bytes, aad: bytes, *, encrypt: bool) -> bytes:
        params = GCMParams(nonce, aad, _TAG * 8)
        mechanism = Mechanism.AES_GCM

        def crypt(session: Session, handle: int) -> bytes:
            key = bound_secret(session, handle, KeyType.AES)
            if encrypt:
                return bytes(key.encrypt(data, mechanism=mechanism, mechanism_param=params))
            return bytes(key.decrypt(data, mechanism=mechanism, mechanism_param=params))

        try:
            out = self._crypt(label, crypt, op)
        except HsmError:
            self._auditor.emit(label.encode(), op, "pkcs11", False)
            raise
        self._auditor.emit(label.encode(), op, "pkcs11", True)
        return out

    def _crypt(self, label: str, crypt: Callable[[Session, int], bytes], op: str) -> bytes:
        """``crypt(session, KEK handle)``; a stale handle is found again (:meth:`KekRing.run`)."""
        return self.keks.run(label, lambda handle, session: crypt(session, handle), op)[0]


class WrapKeyMissing(HsmError):
    """The token has no wrap key (or more than one) under the configured label."""


def _wrap_key_missing(what: str) -> HsmError:
    return WrapKeyMissing(f"{what} (the wrap key); run the gateway's init")


__all__ = [
    "DEFAULT_WRAP_LABEL",
    "VERSION",
    "Envelope",
    "WrapKeyMissing",
    "aes_token_key_template",
    "create_aes_token_key",
    "create_wrap_key",
    "destroy_aes_token_key",
    "find_secret_keys",
    "kek_id",
]
