"""Key-pair generation in the token, with a bounded retry of transient refusals (PKCS#11 C_GenerateKeyPair).

Used by :class:`hsm.keystore.Pkcs11KeyStore`; the searches and object changes around it go through the
token's :class:`hsm.cryptoki.ObjectStoreGuard`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pkcs11 import PKCS11Error
from pkcs11 import exceptions as p11_errors
from pkcs11.types import Session

from mls.errors import KeyStoreError

from . import mechanisms as M
from .cryptoki import LOST_ERRORS
from .errors import HsmUnavailable
from .kinds import KeyKind, new_ref
from .mechanisms import KeyEntry, KeyPair, Pkcs11Form
from .token import StaleHandle, Token, reread

_log = logging.getLogger(__name__)
#: Destroying is the key store's operation: its log lines keep the key store's logger name.
_destroy_log = logging.getLogger("hsm.keystore")

#: Key generations tried in all when the token refuses one in a way that can be transient.
KEYGEN_ATTEMPTS = 3
#: Refusals of a key generation worth another try: SoftHSM 2.6.1 answers these when a token-object search
#: overlaps the generation (:class:`hsm.cryptoki.ObjectStoreGuard` prevents that in this process), and real
#: HSMs report transient trouble as the generic ones. A wrong template would be refused every time: it
#: costs ``KEYGEN_ATTEMPTS`` tries, then is reported like any refusal.
KEYGEN_TRANSIENT: tuple[type[PKCS11Error], ...] = (
    p11_errors.TemplateInconsistent,
    p11_errors.GeneralError,
    p11_errors.FunctionFailed,
)


def generate_pair(
    token: Token, session: Session, kind: KeyKind, form: Pkcs11Form, prefix: str
) -> tuple[bytes, KeyPair]:
    """Generate a key pair of ``kind`` in the token under a fresh key reference, retrying a refusal that
    can be transient (:data:`KEYGEN_TRANSIENT`) up to :data:`KEYGEN_ATTEMPTS` times in all, each refusal
    logged and the debris it may leave removed. Returns (key reference, pair)."""
    for attempt in range(1, KEYGEN_ATTEMPTS + 1):
        ref = new_ref(kind, "pkcs11")  # fresh per try: a retried call never reuses an ID
        try:
            with token.objects("change"):
                return ref, M.generate_pair(session, kind, form, ref, prefix)
        except KEYGEN_TRANSIENT as exc:
            removed = remove_debris(token, session, form)
            _log.warning(
                "generate key: token refused a %s key generation (%s), attempt %d of %d; "
                "%d empty key object(s) it left removed",
                kind.name,
                type(exc).__name__,
                attempt,
                KEYGEN_ATTEMPTS,
                removed,
            )
            if attempt == KEYGEN_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def remove_debris(token: Token, session: Session, form: Pkcs11Form) -> int:
    """Destroy what a refused key generation can leave: key objects of the form's key type with no ID,
    no label and no curve, which are no usable key of anyone's. Returns the count; a token that cannot
    list them is logged and left alone (a lost session raises).

    SoftHSM 2.6.1 writes such objects (default attributes, ``CKA_TOKEN`` false) into the token directory
    when a search overlaps the generation; measured here, they show only to a process that re-reads the
    directory, not to the one whose generation was refused, so this finds them only on tokens that keep
    them in session memory. :class:`hsm.cryptoki.ObjectStoreGuard` is what keeps SoftHSM from making
    them."""
    try:
        with token.objects("search"):
            handles = M.empty_keys(session, form.key_type)
        for handle in handles:  # each takes the "change" turn itself: a nested turn waits for itself
            token.destroy_handle(session, handle)  # while a search waits (ObjectStoreGuard's fairness)
    except LOST_ERRORS:
        raise
    except PKCS11Error as exc:
        _log.warning("generate key: could not remove empty key objects (%s)", type(exc).__name__)
        return 0
    return len(handles)


def destroy_token_key(token: Token, cache: dict[bytes, Any], key_ref: bytes) -> None:
    """C_DestroyObject of both token objects of ``key_ref``: by the cached handles when they belong to the
    current connection, else by a search on CKA_ID. A key that is already gone is destroyed (a debug log
    line)."""
    entry = cache.pop(key_ref, None)
    if entry is not None and entry.generation == token.generation:
        handles = (entry.pair.private, entry.pair.public)
        try:
            token.run(
                lambda s: _destroy_handles(token, s, handles), op="destroy key", generation=entry.generation
            )
            return
        except StaleHandle:
            pass
    token.run(lambda s: _destroy_by_id(token, s, key_ref), op="destroy key")


def _destroy_by_id(token: Token, session: Session, key_ref: bytes) -> None:
    with token.objects("search"):
        handles = tuple(M.handles_by_id(session, key_ref))
    if not handles:  # already gone (destroyed earlier, by another process, or never made): done
        _destroy_log.debug(
            "destroy key: no object has key reference %s; nothing to destroy", key_ref.hex()[:16]
        )
    _destroy_handles(token, session, handles)


def _destroy_handles(token: Token, session: Session, handles: tuple[int, ...]) -> None:
    for handle in handles:
        token.destroy_handle(session, handle)


def find_token_key(token: Token, kind: KeyKind, form: Pkcs11Form, key_ref: bytes) -> KeyEntry:
    """The token key pair whose CKA_ID is ``key_ref`` (a token search); KeyStoreError when there is none
    on a token that is there (an absent token also finds nothing: the two are told apart)."""

    def find(session: Session) -> KeyPair:
        with token.objects("search"):
            pair = M.find_pair(session, kind, key_ref)
        if pair is None:
            raise _NotFound
        return pair

    for _ in range(3):
        generation = token.generation
        try:
            pair, generation = token.run_pinned(find, op="find key")
        except _NotFound:
            token.check()
            if token.generation == generation:
                raise KeyStoreError("no key for this reference") from None
            continue  # the check reconnected: look again on the new connection
        return KeyEntry(kind, form, pair, generation)
    raise HsmUnavailable("find key: the token connection keeps changing")


#: Seconds between two re-reads of the token for one key reference that is not found.
REREAD_INTERVAL_S = 10.0


class Rereads:
    """When a key reference not found last made the token be read again: once per reference every
    :data:`REREAD_INTERVAL_S` (a reference truly missing must not reconnect the token per call)."""

    def __init__(self) -> None:
        self._at: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def may(self, key_ref: bytes) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._at.get(key_ref)
            if last is not None and now - last < REREAD_INTERVAL_S:
                return False
            if len(self._at) >= 4096:
                self._at.clear()
            self._at[key_ref] = now
            return True


#: The key references not found that made a token be read again, in this process (random references:
#: one table for every token).
REREADS = Rereads()


def find_token_key_read_again(token: Token, kind: KeyKind, form: Pkcs11Form, key_ref: bytes) -> KeyEntry:
    """:func:`find_token_key`; not found, the token is read again once (:func:`hsm.token.reread`) and
    searched again. A key another gateway process made may be missing from this process's view of a
    SoftHSM token: SoftHSM re-indexes its files only when the token's generation file moved since this
    process's last write of its own, so its own write hides the other's (docs/architecture.md, "Several
    processes")."""
    try:
        return find_token_key(token, kind, form, key_ref)
    except KeyStoreError:
        if not REREADS.may(key_ref):
            raise
    reread(token)
    return find_token_key(token, kind, form, key_ref)


class _NotFound(Exception):
    """No object has the key reference as CKA_ID."""
