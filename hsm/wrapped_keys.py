"""Wrapped custody: private keys held at rest only wrapped under the token's KEK, in use as session objects.

See :mod:`hsm.wrapping` for the PKCS#11 side (templates, ``CKM_AES_KEY_WRAP_PAD``/``CKM_AES_KEY_WRAP``) and
hsm-facts.md "Wrapping private keys" for what SoftHSM 2.6.1 does (P-256/384/521 keys wrap; Ed25519 and the
X25519-quirk keys are refused with ``KeyNotWrappable``).

* **Probe** (:meth:`WrappedKeys.probe`, at start-up): for every kind the token holds, a session key pair is
  generated (``CKA_WRAP_WITH_TRUSTED`` first, then without), wrapped (each mechanism in turn), unwrapped,
  used (a signature ``cryptography`` verifies, or a DH equal to ``cryptography``'s) and destroyed. A kind
  is wrappable only if that round trip works; the others are reported with the token's refusal and stay
  token objects (:class:`hsm.keystore.Pkcs11KeyStore` falls back). No KEK (``create_kek`` not run) means
  no kind is wrappable.
* **Generate**: a wrappable session key pair, wrapped at once; the blob goes to the
  :class:`WrappedKeyPersistence` hook (the gateway's ``wrapped_keys`` table) *before* the key is used, and
  the session private key stays in a bounded LRU cache. No token object is made: the token's object count
  does not grow with the number of keys.
* **Use**: a cache miss (evicted, another connection, a session object gone with its session) unwraps the
  blob again into a non-extractable session object (``C_UnwrapKey``).
  Each such unwrap is reported to the audit hook (operation ``unwrap``, custody ``wrapped:<KEK label>``);
  hits and misses are counted (:attr:`WrappedKeys.hits`, :attr:`WrappedKeys.misses`). An evicted entry's
  session object is destroyed.
* **Destroy** (forward-secret deletion): the blob is deleted, then the cached session object destroyed.
* **KEK rotation** (:mod:`gateway.kek_rotation`): :meth:`WrappedKeys.use_kek` makes another KEK wrap new
  keys; :meth:`WrappedKeys.rewrap_blob` moves a blob under it (``C_UnwrapKey`` under the KEK the blob
  names into a transient session object extractable only for the next ``C_WrapKey``, wrap under the
  current KEK, destroy), audited as ``rewrap``. The blobs of every KEK the store knows keep opening.

Blob (version 2 names its KEK by id, :func:`hsm.envelope.kek_id` of the KEK's label; the row also stores it)::

    version 0x02 (1) ‖ wrap mechanism (1: 0x01 AES_KEY_WRAP_PAD, 0x02 AES_KEY_WRAP) ‖ KEK id (8)
        ‖ public key (the kind's wire form, non-secret) ‖ wrapped private key (as C_WrapKey returned it)

Version 0x01 blobs (no KEK id: wrapped under the store's first KEK, ``kek_label``) still open.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pkcs11 import Mechanism, PKCS11Error
from pkcs11.types import Session

from mls.errors import KeyStoreError

from . import kinds as K
from . import wrapping as W
from .audit import Auditor
from .cryptoki import LOST_ERRORS
from .errors import HsmError, HsmUnavailable
from .kek_ring import KEK_ID_BYTES, KekRing
from .kinds import KeyKind, new_ref, parse_ref
from .mechanisms import KeyEntry, KeyPair, Pkcs11Form, ecdh, sign
from .object_uses import key_call
from .token import StaleHandle, Token

T = TypeVar("T")
_log = logging.getLogger(__name__)

BLOB_VERSION = 0x02
BLOB_VERSION_1 = 0x01
DEFAULT_CACHE_SIZE = 1024
_MECH_CODES = {Mechanism.AES_KEY_WRAP_PAD: 0x01, Mechanism.AES_KEY_WRAP: 0x02}
_MECH_BY_CODE = {v: k for k, v in _MECH_CODES.items()}
_PROBE_MESSAGE = b"mls-gateway wrap probe"


class WrappedKeyPersistence(Protocol):
    """Where wrapped private keys are kept at rest (the blobs are already wrapped by the token)."""

    def save(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None: ...

    def load(self, key_ref: bytes) -> bytes | None: ...

    def delete(self, key_ref: bytes) -> None: ...


@dataclass(frozen=True)
class WrapSupport:
    """How the token wraps one kind: the mechanism, and whether keys carry CKA_WRAP_WITH_TRUSTED."""

    mechanism: Mechanism
    trusted: bool


class WrappedKeys:
    """Wrapped-custody keys over one token and one persistence hook (thread-safe)."""

    def __init__(
        self,
        token: Token,
        persistence: WrappedKeyPersistence,
        *,
        kek_label: str = W.DEFAULT_KEK_LABEL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        label_prefix: str = "mlsgw",
    ) -> None:
        if cache_size < 1:
            raise ValueError("wrapped keys: cache_size must be >= 1")
        self._token = token
        self._persistence = persistence
        #: The KEKs: the current one, the others blobs may name; its ``resolver`` is asked about a KEK a
        #: blob names that the store does not know.
        self.keks = KekRing(token, kek_label, HsmError)
        #: Emits ``unwrap`` (cache miss) and ``rewrap`` events; the key store shares its own.
        self.auditor = Auditor()
        self.hits = 0
        self.misses = 0
        self._prefix = label_prefix
        self._size = cache_size
        self._cache: OrderedDict[bytes, KeyEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.support: dict[KeyKind, WrapSupport] = {}
        self.refused: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"WrappedKeys({len(self._cache)}/{self._size} cached, kinds={[k.name for k in self.support]})"

    @property
    def cached(self) -> int:
        return len(self._cache)

    @property
    def kek_id(self) -> bytes:
        """The id of the KEK new keys are wrapped under."""
        return self.keks.id

    def use_kek(self, label: str) -> None:
        """Wrap new keys under the KEK ``label`` from now on (blobs under KEKs known before still open)."""
        self.keks.use(label)

    def know_keks(self, labels: Iterable[str]) -> None:
        """Also open blobs wrapped under these KEKs."""
        self.keks.know(labels)

    def kek_label_of(self, blob: bytes) -> str | None:
        """The label of the KEK ``blob`` is wrapped under (None when the store does not know it)."""
        if blob[:1] == bytes((BLOB_VERSION_1,)):
            return self.keks.first
        return self.keks.known(blob[2 : 2 + KEK_ID_BYTES])

    def supports(self, kind: KeyKind) -> bool:
        return kind in self.support

    def describe(self) -> dict[str, object]:
        """JSON-ready: kind → mechanism (and trusted flag), refused kind → reason."""
        return {
            "kinds": {
                k.name: f"{s.mechanism.name}{'/trusted' if s.trusted else ''}"
                for k, s in self.support.items()
            },
            "refused": dict(self.refused),
        }

    # ---- probe -----------------------------------------------------------------------------------
    def probe(self) -> dict[str, object]:
        """Decide which kinds the token can wrap (see the module docstring); returns :meth:`describe`."""
        forms = self._token.capabilities.forms
        support: dict[KeyKind, WrapSupport] = {}
        refused: dict[str, str] = {}
        try:
            self.keks.handle(self.keks.label)
        except HsmError as exc:
            self.support, self.refused = {}, {k.name: f"no KEK ({exc})" for k in forms}
            return self.describe()
        for kind, form in forms.items():
            try:
                generation, kek = self.keks.handle(self.keks.label)
                probe = functools.partial(_probe_kind, self._token, kek, kind, form)
                found = self._token.run(probe, op="wrap probe", generation=generation)
            except HsmUnavailable:
                raise
            except HsmError as exc:
                found, reason = None, str(exc)
            else:
                reason = "" if found else "not wrappable"
            if found is None:
                refused[kind.name] = reason
            else:
                support[kind] = found
        self.support, self.refused = support, refused
        _log.debug("wrapped custody: %s", self.describe())
        return self.describe()

    # ---- generate, use, destroy ------------------------------------------------------------------
    def generate(self, kind: KeyKind, form: Pkcs11Form) -> tuple[bytes, bytes]:
        """A new wrapped key of ``kind``: (key reference, wire public key); the blob is saved first."""
        support = self.support.get(kind)
        if support is None:
            raise KeyStoreError(f"the token cannot wrap {kind.name} keys")
        ref = new_ref(kind, "wrapped")
        label = self._label(kind, ref)
        kek_label, kid = self.keks.current
        make = functools.partial(_make_wrapped, self._token, kind, form, ref, label, support)
        (private, public_key, wrapped), generation = self.keks.run(kek_label, make, "generate wrapped key")
        blob = bytes((BLOB_VERSION, _MECH_CODES[support.mechanism])) + kid + public_key + wrapped
        try:
            self._persistence.save(ref, blob, kid)
        except BaseException:
            self._drop(KeyEntry(kind, form, KeyPair(private, 0, public_key), generation))
            raise
        self._put(ref, KeyEntry(kind, form, KeyPair(private, 0, public_key), generation))
        return ref, public_key

    def public_key(self, key_ref: bytes) -> bytes:
        entry = self._cache.get(key_ref)
        if entry is not None:
            return entry.pair.public_key
        kind = _kind(key_ref)
        return _split(kind, self._blob(key_ref))[2]

    def kek_label(self, key_ref: bytes) -> str | None:
        """The label of the KEK the key's blob is wrapped under now (None when no label is known)."""
        return self.kek_label_of(self._blob(key_ref))

    def rewrap_blob(self, key_ref: bytes, blob: bytes) -> bytes:
        """``blob`` wrapped under the current KEK (unchanged when it already is): unwrapped in the token
        under the KEK it names into a transient session object, wrapped again, destroyed (audited
        ``rewrap``); the private key is never out of the token in clear."""
        kind = _kind(key_ref)
        mechanism, kid, public_key, wrapped = _split(kind, blob)
        if kid == self.kek_id:
            return blob
        form = self._token.capabilities.form(kind)
        (new_label, new_id), old_label = self.keks.current, self._label_of(kid)
        trusted = self.support[kind].trusted if kind in self.support else False

        def move(session: Session, old: int, new: int) -> bytes:
            with self._token.objects("change"):
                private = W.unwrap(
                    session,
                    old,
                    kind,
                    form,
                    wrapped,
                    key_ref,
                    "rewrap",
                    mechanism,
                    for_wrap=True,
                    trusted=trusted,
                )
            try:
                return W.wrap(session, new, private, form, mechanism)
            finally:
                self._token.destroy_handle(session, private)  # takes the "change" turn itself (not nested)

        custody = f"wrapped:{new_label}"
        try:
            moved = self._with_keks(old_label, new_label, move, "rewrap key")
        except HsmError:
            self.auditor.emit(key_ref, "rewrap", custody, False)
            raise
        self.auditor.emit(key_ref, "rewrap", custody, True)
        return bytes((BLOB_VERSION, _MECH_CODES[mechanism])) + new_id + public_key + moved

    def run(self, key_ref: bytes, op: str, fn: Callable[[Session, KeyEntry], T]) -> T:
        """``fn`` with the key's session object (unwrapped again on a miss or a stale handle)."""
        for _ in range(3):
            try:
                entry = self._entry(key_ref)  # an unwrap under a stale KEK handle: found again, tried again
            except StaleHandle:
                continue
            try:
                return self._token.run(key_call(self._token, fn, entry), op=op, generation=entry.generation)
            except StaleHandle:
                with self._lock:
                    if self._cache.get(key_ref) is entry:
                        del self._cache[key_ref]
        raise HsmUnavailable(f"{op}: the token connection keeps changing")

    def destroy(self, key_ref: bytes) -> None:
        """Forward-secret deletion: delete the blob, then destroy the cached session object."""
        self._persistence.delete(key_ref)
        with self._lock:
            entry = self._cache.pop(key_ref, None)
        if entry is not None:
            self._drop(entry)

    def close(self) -> None:
        """Destroy every cached session object (the blobs stay)."""
        with self._lock:
            entries = list(self._cache.values())
            self._cache.clear()
        for entry in entries:
            self._drop(entry)

    # ---- internals -------------------------------------------------------------------------------
    def _label(self, kind: KeyKind, ref: bytes) -> str:
        return f"{self._prefix}/{kind.name}/{ref.hex()}"

    def _blob(self, key_ref: bytes) -> bytes:
        blob = self._persistence.load(key_ref)
        if blob is None:
            raise KeyStoreError("no key for this reference")
        return blob

    def _entry(self, key_ref: bytes) -> KeyEntry:
        with self._lock:
            entry = self._cache.get(key_ref)
            if entry is not None and entry.generation == self._token.generation:
                self._cache.move_to_end(key_ref)
                self.hits += 1
                return entry
            self.misses += 1
        kind = _kind(key_ref)
        form = self._token.capabilities.form(kind)
        mechanism, kid, public_key, wrapped = _split(kind, self._blob(key_ref))
        label = self._label(kind, key_ref)
        kek_label = self._label_of(kid)
        custody = f"wrapped:{kek_label}"
        try:
            generation, kek = self.keks.handle(kek_label)

            def load(session: Session) -> int:
                with self._token.using(kek), self._token.objects("change"):
                    return W.unwrap(session, kek, kind, form, wrapped, key_ref, label, mechanism)

            private = self._token.run(load, op="unwrap key", generation=generation)
        except StaleHandle:
            self.keks.forget_handles()  # the KEK's handle may be the stale one: find it again
            raise
        except HsmError:
            self.auditor.emit(key_ref, "unwrap", custody, False)
            raise
        self.auditor.emit(key_ref, "unwrap", custody, True)
        entry = KeyEntry(kind, form, KeyPair(private, 0, public_key), generation)
        self._put(key_ref, entry)
        return entry

    def _put(self, key_ref: bytes, entry: KeyEntry) -> None:
        with self._lock:
            old = self._cache.pop(key_ref, None)
            self._cache[key_ref] = entry
            evicted = [old] if old is not None else []
            while len(self._cache) > self._size:
                evicted.append(self._cache.popitem(last=False)[1])
        for item in evicted:
            self._drop(item)

    def _drop(self, entry: KeyEntry) -> None:
        """Destroy a session object of this store (one that is already gone is destroyed)."""
        try:
            self._token.run(
                lambda s: self._token.destroy_handle(s, entry.pair.private),
                op="destroy session key",
                generation=entry.generation,
                retry=False,
            )
        except (StaleHandle, HsmUnavailable):
            pass  # another connection: the session object went with the old one
        except HsmError as exc:
            _log.debug("wrapped keys: session object not destroyed (%s)", exc)

    def _label_of(self, kid: bytes | None) -> str:
        """The label of the KEK ``kid`` (None: a version 1 blob's, the first KEK); asks the resolver once."""
        label = self.keks.first if kid is None else self.keks.resolve(kid)
        if label is None:
            raise HsmError("wrapped key blob: wrapped under a KEK this store does not know")
        return label

    def _with_keks(self, old: str, new: str, fn: Callable[[Session, int, int], T], op: str) -> T:
        """``fn(session, old KEK handle, new KEK handle)`` with both handles of one token connection."""
        for _ in range(3):
            generation, old_handle = self.keks.handle(old)
            new_generation, new_handle = self.keks.handle(new)
            if new_generation != generation:
                continue
            try:
                call = functools.partial(_call_keks, self._token, fn, old_handle, new_handle)
                return self._token.run(call, op=op, generation=generation)
            except StaleHandle:
                self.keks.forget_handles()
        raise HsmUnavailable(f"{op}: the token connection keeps changing")


def _make_wrapped(
    token: Token,
    kind: KeyKind,
    form: Pkcs11Form,
    ref: bytes,
    label: str,
    support: WrapSupport,
    kek: int,
    session: Session,
) -> tuple[int, bytes, bytes]:
    """A new key pair of ``kind`` in the token, its private key wrapped under ``kek``: (handle, public
    key, wrapped private key); the key is destroyed if the wrap fails."""
    with token.objects("change"):
        private, public_key = W.generate_wrappable(session, kind, form, ref, label, trusted=support.trusted)
    try:
        return private, public_key, W.wrap(session, kek, private, form, support.mechanism)
    except BaseException:
        token.destroy_handle(session, private)
        raise


def _probe_kind(
    token: Token, kek: int, kind: KeyKind, form: Pkcs11Form, session: Session
) -> WrapSupport | None:
    """The first (trusted?, mechanism) with which a wrapped key of ``kind`` works, or None."""
    for trusted in (True, False):
        for mechanism in W.WRAP_MECHANISMS:
            if _round_trip(token, session, kek, kind, form, mechanism, trusted=trusted):
                return WrapSupport(mechanism, trusted)
    return None


def _round_trip(
    token: Token,
    session: Session,
    kek: int,
    kind: KeyKind,
    form: Pkcs11Form,
    mechanism: Mechanism,
    *,
    trusted: bool,
) -> bool:
    """Generate, wrap, unwrap, use, destroy: whether a wrapped key of ``kind`` works in this token."""
    handles: list[int] = []
    try:
        with token.objects("change"):
            private, public_key = W.generate_wrappable(
                session, kind, form, b"\x00probe", "probe", trusted=trusted
            )
        handles.append(private)
        wrapped = W.wrap(session, kek, private, form, mechanism)
        with token.objects("change"):
            handles.append(W.unwrap(session, kek, kind, form, wrapped, b"\x00probe", "probe", mechanism))
        if kind.role == "signature":
            signature = sign(session, handles[-1], kind, form, _PROBE_MESSAGE)
            return K.scheme_of(kind).verify(public_key, _PROBE_MESSAGE, signature)
        peer = K.kem_of(kind).generate()
        return ecdh(session, handles[-1], kind, form, peer.public_key) == peer.dh(public_key)
    except LOST_ERRORS:
        raise
    except (PKCS11Error, ValueError, HsmError):
        return False
    finally:
        for handle in handles:
            with contextlib.suppress(PKCS11Error):
                token.destroy_handle(session, handle)


def _call_keks(token: Token, fn: Callable[[Session, int, int], T], old: int, new: int, session: Session) -> T:
    """``fn(session, old, new)`` as a use of both KEKs' objects (:mod:`hsm.object_uses`)."""
    with token.using(old, new):
        return fn(session, old, new)


def _kind(key_ref: bytes) -> KeyKind:
    parsed = parse_ref(key_ref)
    if parsed is None or parsed[1] != "wrapped":
        raise KeyStoreError("not a wrapped key reference")
    return parsed[0]


def _split(kind: KeyKind, blob: bytes) -> tuple[Mechanism, bytes | None, bytes, bytes]:
    """(wrap mechanism, KEK id or None for version 1, public key, wrapped private key) of a blob."""
    kid_len = {BLOB_VERSION: KEK_ID_BYTES, BLOB_VERSION_1: 0}.get(blob[0]) if blob else None
    if kid_len is None or len(blob) <= 2 + kid_len + kind.pub_len or blob[1] not in _MECH_BY_CODE:
        raise KeyStoreError("wrapped key blob: unknown version or malformed")
    start = 2 + kid_len
    kid = blob[2:start] if kid_len else None
    return _MECH_BY_CODE[blob[1]], kid, blob[start : start + kind.pub_len], blob[start + kind.pub_len :]


__all__ = ["DEFAULT_CACHE_SIZE", "WrapSupport", "WrappedKeyPersistence", "WrappedKeys"]
