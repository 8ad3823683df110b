"""``Pkcs11KeyStore``: the ``mls.crypto.key_protocols.KeyStore`` whose keys live in a PKCS#11 token.

* Fresh signature keys and HPKE key pairs are generated as token objects (``SENSITIVE``, not
  ``EXTRACTABLE``), with ``CKA_ID`` = the key reference (:mod:`hsm.kinds`) and a label naming kind and
  reference. Existing private keys (test vectors) can be imported the same way.
* Handles are cached by reference (in a cache shared by all stores on the token): an operation costs no
  token search. A handle from an older connection, or one the token calls stale, is looked up again once
  (by ``CKA_ID``).
* For a suite whose KEM the token cannot do, HPKE keys are
  :class:`hsm.key_handles.SoftwareCustodyHpkeKey`\\ s in memory, handed to an optional
  :class:`SoftwareKeyPersistence` (the gateway stores them wrapped, e.g. with :class:`hsm.envelope.Envelope`)
  and reported as custody ``software``.
* Every private-key use (generate, import, sign, dh, destroy) is reported to the audit hook.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

from pkcs11 import ObjectClass
from pkcs11.types import Session

from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey
from mls.errors import CryptoError, KeyStoreError, UnsupportedError

from . import mechanisms as M
from .audit import AuditHook, Auditor
from .capabilities import Capabilities
from .errors import HsmError, HsmUnavailable
from .key_generation import destroy_token_key, find_token_key_read_again, generate_pair
from .key_handles import Pkcs11HpkeKey, Pkcs11Signer, SoftwareCustodyHpkeKey, WrappedHpkeKey, WrappedSigner
from .kinds import Custody, KeyKind, kem_kind, kem_of, new_ref, parse_ref, signature_kind
from .mechanisms import KeyEntry, KeyPair, Pkcs11Form
from .object_uses import key_call
from .token import StaleHandle, Token
from .wrapped_keys import WrappedKeys

T = TypeVar("T")

_log = logging.getLogger(__name__)


class SoftwareKeyPersistence(Protocol):
    """Where software-custody HPKE private keys are kept at rest (wrapped by the implementation)."""

    def save(self, key_ref: bytes, private_key: bytes) -> None: ...

    def load(self, key_ref: bytes) -> bytes | None: ...

    def delete(self, key_ref: bytes) -> None: ...


CustodyMode = Literal["token", "wrapped"]


class Pkcs11KeyStore:
    """Key store over one :class:`hsm.token.Token` (thread-safe)."""

    def __init__(
        self,
        token: Token,
        *,
        label_prefix: str = "mlsgw",
        software_hpke_fallback: bool = True,
        persistence: SoftwareKeyPersistence | None = None,
        audit_hook: AuditHook | None = None,
        capabilities: Capabilities | None = None,
        wrapped: WrappedKeys | None = None,
        mode: CustodyMode = "token",
    ) -> None:
        self._token = token
        self._prefix = label_prefix
        self._fallback = software_hpke_fallback
        self._persistence = persistence
        self._auditor = wrapped.auditor if wrapped is not None else Auditor()  # one hook for both stores
        self._auditor.hook = audit_hook
        self._capabilities = capabilities
        self._cache: dict[bytes, KeyEntry] = token.handle_cache
        self._software: dict[bytes, SoftwareCustodyHpkeKey] = {}
        self._wrapped = wrapped
        self.mode: CustodyMode = mode

    def for_mode(self, mode: CustodyMode) -> Pkcs11KeyStore:
        """This store (same token, caches, persistence, audit hook) making new keys in custody ``mode``:
        ``wrapped`` where the token can wrap the kind (:class:`hsm.wrapped_keys.WrappedKeys`), else
        ``token`` objects. Existing keys are found by reference whatever the mode."""
        view = copy.copy(self)
        view.mode = mode
        return view

    def _wraps(self, kind: KeyKind) -> WrappedKeys | None:
        wrapped = self._wrapped
        return wrapped if self.mode == "wrapped" and wrapped is not None and wrapped.supports(kind) else None

    def set_audit_hook(self, hook: AuditHook | None) -> None:
        self._auditor.hook = hook

    def kek_label(self, key_ref: bytes) -> str | None:
        """The label of the KEK a wrapped-custody key is wrapped under (None for other custodies)."""
        return self._wrapped.kek_label(key_ref) if self._wrapped and _parse(key_ref)[1] == "wrapped" else None

    @property
    def capabilities(self) -> Capabilities:
        """The token's capabilities (or the override given at construction, e.g. to restrict them)."""
        return self._capabilities or self._token.capabilities

    # ---- custody ---------------------------------------------------------------------------------
    def custody(self, cipher_suite_id: int) -> tuple[Custody, Custody]:
        """(signature custody, HPKE custody) of new keys for this suite, in this store's mode."""
        sig, hpke = self.capabilities.custody(cipher_suite_id, software_hpke_fallback=self._fallback)
        cs = _suite(cipher_suite_id)
        sig = "wrapped" if sig == "pkcs11" and self._wraps(signature_kind(cs.signature)) else sig
        return sig, "wrapped" if hpke == "pkcs11" and self._wraps(kem_kind(cs.kem)) else hpke

    @staticmethod
    def custody_of(key_ref: bytes) -> Custody:
        """Custody of an existing key, from its reference."""
        return _parse(key_ref)[1]

    def _form(self, kind: KeyKind) -> Pkcs11Form | None:
        caps = self.capabilities
        return caps.form(kind) if caps.supports(kind) else None

    # ---- making keys -----------------------------------------------------------------------------
    def new_signature_key(self, cipher_suite: int) -> Pkcs11Signer:
        kind = signature_kind(_suite(cipher_suite).signature)
        if self._wraps(kind):
            ref, public_key = self._generate_wrapped(kind)
            return WrappedSigner(self, kind, ref, public_key)
        ref, pair = self._generate(kind, self._require_form(kind))
        return Pkcs11Signer(self, kind, ref, pair.public_key)

    def new_hpke_key(self, cipher_suite: int) -> HpkePrivateKey:
        kind = kem_kind(_suite(cipher_suite).kem)
        form = self._form(kind)
        if form is None:
            return self._software_key(kind, kem_of(kind).generate().private_bytes(), "generate")
        if self._wraps(kind):
            ref, public_key = self._generate_wrapped(kind)
            return WrappedHpkeKey(self, kind, ref, public_key)
        ref, pair = self._generate(kind, form)
        return Pkcs11HpkeKey(self, kind, ref, pair.public_key)

    def import_signature_key(self, cipher_suite: int, private_key: bytes) -> Pkcs11Signer:
        """Put an existing signature private key (RFC 8032 seed or ECDSA scalar) into the token."""
        cs = _suite(cipher_suite)
        kind = signature_kind(cs.signature)
        form = self._require_form(kind)
        public_key = cs.signature.signer_from_private_bytes(private_key).public_key
        ref = self._import(kind, form, private_key, public_key)
        return Pkcs11Signer(self, kind, ref, public_key)

    def import_hpke_key(self, cipher_suite: int, private_key: bytes) -> HpkePrivateKey:
        """Put an existing KEM private key (RFC 9180 SerializePrivateKey form) into the token (or into
        software custody)."""
        kind = kem_kind(_suite(cipher_suite).kem)
        form = self._form(kind)
        public_key = kem_of(kind).key_from_private_bytes(private_key).public_key
        if form is None:
            return self._software_key(kind, private_key, "import")
        ref = self._import(kind, form, private_key, public_key)
        return Pkcs11HpkeKey(self, kind, ref, public_key)

    def _require_form(self, kind: KeyKind) -> Pkcs11Form:
        form = self._form(kind)
        if form is None:
            raise UnsupportedError(f"the token cannot hold {kind.name} keys")
        return form

    def _generate(self, kind: KeyKind, form: Pkcs11Form) -> tuple[bytes, KeyPair]:
        def make(session: Session) -> tuple[bytes, KeyPair]:
            return generate_pair(self._token, session, kind, form, self._prefix)

        try:
            (ref, pair), generation = self._token.run_pinned(make, op="generate key")
        except HsmError:
            self._auditor.emit(b"", "generate", "pkcs11", False)
            raise
        self._cache[ref] = KeyEntry(kind, form, pair, generation)
        self._auditor.emit(ref, "generate", "pkcs11", True)
        return ref, pair

    def _generate_wrapped(self, kind: KeyKind) -> tuple[bytes, bytes]:
        assert self._wrapped is not None
        try:
            ref, public_key = self._wrapped.generate(kind, self._require_form(kind))
        except HsmError:
            self._auditor.emit(b"", "generate", "wrapped", False)
            raise
        self._auditor.emit(ref, "generate", "wrapped", True)
        return ref, public_key

    def _import(self, kind: KeyKind, form: Pkcs11Form, private_key: bytes, public_key: bytes) -> bytes:
        def create(session: Session) -> tuple[bytes, KeyPair]:
            ref = new_ref(kind, "pkcs11")
            with self._token.objects("change"):
                return ref, M.import_pair(session, kind, form, ref, self._prefix, private_key, public_key)

        try:
            (ref, pair), generation = self._token.run_pinned(create, op="import key")
        except HsmError:
            self._auditor.emit(b"", "import", "pkcs11", False)
            raise
        self._cache[ref] = KeyEntry(kind, form, pair, generation)
        self._auditor.emit(ref, "import", "pkcs11", True)
        return ref

    def _software_key(self, kind: KeyKind, private_key: bytes, op: str) -> SoftwareCustodyHpkeKey:
        if not self._fallback:
            raise UnsupportedError(f"the token cannot hold {kind.name} keys and software fallback is off")
        ref = new_ref(kind, "software")
        key = SoftwareCustodyHpkeKey(
            kind, ref, kem_of(kind).key_from_private_bytes(private_key), self._auditor
        )
        if self._persistence is not None:
            self._persistence.save(ref, private_key)
        self._software[ref] = key
        self._auditor.emit(ref, op, "software", True)
        return key

    # ---- finding keys ----------------------------------------------------------------------------
    def signer(self, key_ref: bytes) -> Pkcs11Signer:
        kind, custody = _parse(key_ref)
        if kind.role != "signature" or custody not in ("pkcs11", "wrapped"):
            raise KeyStoreError("key reference does not name a signature key")
        if custody == "wrapped":
            return WrappedSigner(self, kind, key_ref, self._wrapped_keys().public_key(key_ref))
        return Pkcs11Signer(self, kind, key_ref, self._entry(key_ref, kind).pair.public_key)

    def hpke_key(self, key_ref: bytes) -> HpkePrivateKey:
        kind, custody = _parse(key_ref)
        if kind.role != "kem":
            raise KeyStoreError("key reference does not name an HPKE key")
        if custody == "software":
            return self._software_lookup(key_ref, kind)
        if custody == "wrapped":
            return WrappedHpkeKey(self, kind, key_ref, self._wrapped_keys().public_key(key_ref))
        return Pkcs11HpkeKey(self, kind, key_ref, self._entry(key_ref, kind).pair.public_key)

    def _software_lookup(self, key_ref: bytes, kind: KeyKind) -> SoftwareCustodyHpkeKey:
        key = self._software.get(key_ref)
        if key is None and self._persistence is not None:
            private = self._persistence.load(key_ref)
            if private is not None:
                inner = kem_of(kind).key_from_private_bytes(private)
                key = self._software.setdefault(
                    key_ref, SoftwareCustodyHpkeKey(kind, key_ref, inner, self._auditor)
                )
        if key is None:
            raise KeyStoreError("no key for this reference")
        return key

    def _wrapped_keys(self) -> WrappedKeys:
        if self._wrapped is None:
            raise KeyStoreError("no wrapped-key store: this reference cannot be used here")
        return self._wrapped

    def _entry(self, key_ref: bytes, kind: KeyKind) -> KeyEntry:
        entry = self._cache.get(key_ref)
        if entry is not None and entry.generation == self._token.generation:
            return entry
        return self._load(key_ref, kind)

    def _load(self, key_ref: bytes, kind: KeyKind) -> KeyEntry:
        """Find the key by CKA_ID (a token search; :func:`find_token_key_read_again`), cache its handles."""
        entry = find_token_key_read_again(self._token, kind, self._require_form(kind), key_ref)
        self._cache[key_ref] = entry
        return entry

    # ---- using keys ------------------------------------------------------------------------------
    def sign_with(self, key_ref: bytes, data: bytes) -> bytes:
        """Sign with the token key ``key_ref`` (used by :class:`Pkcs11Signer`; the hot path)."""
        use = self._use
        return self._audited(
            key_ref,
            "sign",
            lambda: use(key_ref, "sign", lambda s, e: M.sign(s, e.pair.private, e.kind, e.form, data)),
        )

    def dh_with(self, key_ref: bytes, peer_public_key: bytes) -> bytes:
        """DH in the token with key ``key_ref`` (used by :class:`Pkcs11HpkeKey`); CryptoError for bad
        input."""
        return self._audited(key_ref, "dh", lambda: self._dh(key_ref, peer_public_key))

    def _dh(self, key_ref: bytes, peer_public_key: bytes) -> bytes:
        kind, _ = _parse(key_ref)
        kem = kem_of(kind)
        kem.check_public_key(peer_public_key)
        try:
            out = self._use(
                key_ref, "dh", lambda s, e: M.ecdh(s, e.pair.private, e.kind, e.form, peer_public_key)
            )
        except HsmUnavailable:
            raise
        except HsmError:
            raise CryptoError("5.1.1/hsm-dh", f"{kem.name} DH failed") from None
        if not any(out):
            raise CryptoError("5.1.1/hsm-dh-all-zero", f"{kem.name} DH output is all zero")
        return out

    def _use(self, key_ref: bytes, op: str, fn: Callable[[Session, KeyEntry], T]) -> T:
        if _parse(key_ref)[1] == "wrapped":
            return self._wrapped_keys().run(key_ref, op, fn)
        entry = self._cache.get(key_ref)
        if entry is None or entry.generation != self._token.generation:
            entry = self._load(key_ref, _parse(key_ref)[0])
        for _ in range(3):
            try:
                return self._token.run(key_call(self._token, fn, entry), op=op, generation=entry.generation)
            except StaleHandle:  # reconnected since the handles were found (or they went stale): find again
                self._cache.pop(key_ref, None)
            entry = self._load(key_ref, entry.kind)
        raise HsmUnavailable(f"{op}: the token connection keeps changing")

    def _audited(self, key_ref: bytes, op: str, call: Callable[[], T]) -> T:
        custody = _parse(key_ref)[1]
        try:
            result = call()
        except Exception:
            self._auditor.emit(key_ref, op, custody, False)
            raise
        self._auditor.emit(key_ref, op, custody, True)
        return result

    # ---- destroying and listing ------------------------------------------------------------------
    def destroy(self, key_ref: bytes) -> None:
        """Destroy the key (private and public objects). A key that is already gone (an unknown reference,
        or objects destroyed earlier) is destroyed: no error, a debug log line."""
        parsed = parse_ref(key_ref)
        if parsed is None:
            return
        if parsed[1] == "software":
            self._destroy_software(key_ref)
            return
        if parsed[1] == "wrapped":
            self._audited(key_ref, "destroy", lambda: self._wrapped_keys().destroy(key_ref))
            return
        self._audited(key_ref, "destroy", lambda: destroy_token_key(self._token, self._cache, key_ref))

    def _destroy_software(self, key_ref: bytes) -> None:
        self._software.pop(key_ref, None)
        if self._persistence is not None:
            self._persistence.delete(key_ref)
        self._auditor.emit(key_ref, "destroy", "software", True)

    def key_refs(self) -> list[bytes]:
        """References of every key of this store: token objects (a token search) and software keys."""

        def ids(session: Session) -> set[bytes]:
            with self._token.objects("search"):
                found = set(M.object_ids(session, ObjectClass.PRIVATE_KEY))
                return found | set(M.object_ids(session, ObjectClass.PUBLIC_KEY))

        refs = {r for r in self._token.run(ids, op="list keys") if parse_ref(r) is not None}
        return sorted(refs | set(self._software))


def _suite(cipher_suite_id: int) -> CipherSuite:
    return cipher_suite(cipher_suite_id)


def _parse(key_ref: bytes) -> tuple[KeyKind, Custody]:
    parsed = parse_ref(key_ref)
    if parsed is None:
        raise KeyStoreError("not a key reference of this store")
    return parsed


__all__ = ["Pkcs11KeyStore", "SoftwareKeyPersistence"]
