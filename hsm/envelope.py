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

import functools
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
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


def destroy_aes_token_key(token: Token, label: str, *, op: str) -> int:
    """Destroy every secret key labelled ``label`` in the token (a retired KEK nothing refers to any
    more); returns how many were destroyed."""

    def destroy(session: Session) -> int:
        with token.objects("search"):
            handles = find_secret_keys(session, label)
        with token.objects("change"):
            for handle in handles:
                token.destroy_handle(session, handle)
        return len(handles)

    return token.run(destroy, op=op, retry=False)


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
        self._v1_label = label
        self._label = label
        self._kek_id = kek_id(label)
        self._labels: dict[bytes, str] = {self._kek_id: label}
        #: Called with no argument when a blob names a wrap key the envelope does not know: the labels of
        #: the wrap keys in use now (the gateway reads its ``keks`` table).
        self.resolver: Callable[[], Iterable[str]] | None = None
        self._auditor = Auditor(audit_hook)
        self._handles: dict[str, tuple[int, int]] = {}  # label -> (token generation, handle)
        self._max_seals = max_seals
        self._max_age_s = max_age_s
        self._clock = clock
        self._current: _DataKey | None = None
        self._seal_lock = threading.Lock()
        self._cache = _KeyCache(cache_size)
        self._rewrapped: OrderedDict[bytes, bytes] = OrderedDict()  # old key record -> new (bounded)
        self._rewrapped_size = cache_size

    def __repr__(self) -> str:
        return f"Envelope(label={self._label!r}, {self._cache!r})"

    @property
    def label(self) -> str:
        """The label of the wrap key new data keys are wrapped under."""
        return self._label

    def set_audit_hook(self, hook: AuditHook | None) -> None:
        self._auditor.hook = hook

    # ---- wrap keys (KEK rotation) ------------------------------------------------------------------
    def use_kek(self, label: str) -> None:
        """Wrap new data keys under ``label`` from now on (the current data key is retired when the label
        changes); blobs under the wrap keys known before still open."""
        with self._seal_lock:
            self._labels[kek_id(label)] = label
            if label != self._label:
                self._label, self._kek_id, self._current = label, kek_id(label), None

    def know_keks(self, labels: Iterable[str]) -> None:
        """Also open blobs under these wrap keys (the current one is always known)."""
        with self._seal_lock:
            for label in labels:
                self._labels[kek_id(label)] = label

    def kek_label_of(self, blob: bytes) -> str | None:
        """The label of the wrap key ``blob``'s data key is wrapped under (None when it is not known)."""
        if blob[:1] == bytes((VERSION_1,)):
            return self._v1_label
        return self._labels.get(blob[1 : 1 + _KEK_ID]) if len(blob) > _KEK_ID else None

    def needs_rewrap(self, blob: bytes) -> bool:
        """Whether :meth:`rewrap` would change ``blob`` (an older version, or another wrap key)."""
        return blob[:1] != bytes((VERSION,)) or blob[1 : 1 + _KEK_ID] != self._kek_id

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
            key = self._unwrap(self._v1_label, record, cache=False)
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
        label = self._labels.get(record[1 : 1 + _KEK_ID])
        if label is None and self.resolver is not None:
            self.know_keks(self.resolver())
            label = self._labels.get(record[1 : 1 + _KEK_ID])
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
        key = _DataKey(
            self._wrap_record(self._label, self._kek_id, os.urandom(_DK_ID), secret), AESGCM(secret)
        )
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
            label, kid = self._label, self._kek_id
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
        for _ in range(3):
            generation, handle = self._wrap_handle(label)
            try:
                return self._token.run(
                    functools.partial(_call_with, crypt, handle), op=op, generation=generation
                )
            except StaleHandle:
                self._handles.pop(label, None)  # reconnected (or the key was replaced): find it again
        raise HsmUnavailable(f"{op}: the token connection keeps changing")

    def _wrap_handle(self, label: str) -> tuple[int, int]:
        """(connection, handle) of the wrap key ``label``, cached per connection; found by label once."""
        cached = self._handles.get(label)
        if cached is not None and cached[0] == self._token.generation:
            return cached

        def find(session: Session) -> list[int]:
            with self._token.objects("search"):
                return find_secret_keys(session, label)

        handles, generation = self._token.run_pinned(find, op="find wrap key")
        if len(handles) != 1:
            what = "no wrap key" if not handles else "several wrap keys"
            raise WrapKeyMissing(f"token has {what} labelled {label!r}; run the gateway's init")
        self._handles[label] = (generation, handles[0])
        return generation, handles[0]


def _call_with(crypt: Callable[[Session, int], bytes], handle: int, session: Session) -> bytes:
    return crypt(session, handle)


class WrapKeyMissing(HsmError):
    """The token has no wrap key (or more than one) under the configured label."""


__all__ = [
    "DEFAULT_WRAP_LABEL",
    "VERSION",
    "Envelope",
    "WrapKeyMissing",
    "create_wrap_key",
    "destroy_aes_token_key",
    "kek_id",
]
