"""Key-encryption keys in the token: the AES token-key template, its lookup, creation and destruction, and
the ring of KEK versions one user of the token knows (KEK rotation, :mod:`gateway.kek_rotation`).

Both the envelope's wrap key (:mod:`hsm.envelope`) and the wrapped-custody KEK (:mod:`hsm.wrapping`) are
AES-256 token keys labelled (and identified) by a name such as ``mlsgw/wrap/v2``; blobs name theirs by
:func:`kek_id`, the first 8 bytes of SHA-256 of the label (a name, not a secret). A :class:`KekRing` holds
the *current* label (new wraps use it) and every other label it was told of (blobs naming them still
open), asks its ``resolver`` once when a blob names a KEK it does not know (another process rotated), and
caches each KEK's handle per token connection. A KEK another process made (``mls-gateway keys rotate-kek``
beside a running gateway) may be unseen by SoftHSM in this process (:func:`hsm.token.reread`): a
KEK not found makes the token be read again, at most every :data:`REREAD_INTERVAL_S` per label.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.types import Session

from .cryptoki import STALE_ERRORS
from .errors import HsmError, HsmUnavailable
from .mechanisms import handle_of, search
from .token import StaleHandle, Token, reread

T = TypeVar("T")

KEK_ID_BYTES = 8
#: Seconds between two re-reads of the token for one KEK label that is not found (:meth:`KekRing.handle`).
REREAD_INTERVAL_S = 10.0


def kek_id(label: str) -> bytes:
    """The KEK id blobs carry: the first 8 bytes of SHA-256 of the KEK's label."""
    return hashlib.sha256(label.encode()).digest()[:KEK_ID_BYTES]


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


#: A handle another process destroyed: the token's StaleHandle, or the raw error of C_DestroyObject.
_STALE: tuple[type[Exception], ...] = (StaleHandle, *STALE_ERRORS)
#: Searches for a KEK to destroy when another process destroyed what a search found first.
DESTROY_SEARCHES = 3


def destroy_aes_token_key(token: Token, label: str, *, op: str) -> int:
    """Destroy every secret key labelled ``label`` in the token (a retired KEK nothing refers to any
    more); returns how many this call destroyed. Another process may destroy it between the search and
    the destroy (the server's retire pass beside ``keys rotate-kek``): a stale handle means search again,
    and a key no longer found is gone."""

    def destroy(session: Session) -> int:
        destroyed = 0
        for attempt in range(1, DESTROY_SEARCHES + 1):
            with token.objects("search"):
                handles = find_secret_keys(session, label)
            try:
                for handle in handles:
                    token.destroy_handle(session, handle)  # holds the object-store guard's "change" turn
                    destroyed += 1
                return destroyed
            except _STALE:  # StaleHandle, or C_DestroyObject's own ObjectHandleInvalid
                if attempt == DESTROY_SEARCHES:
                    raise
        return destroyed

    return token.run(destroy, op=op, retry=False)


class KekRing:
    """The KEK versions one user of the token knows, by id; the current one; their handles (thread-safe).

    ``missing`` makes the error raised when the token has no key (or several) under a label."""

    def __init__(self, token: Token, label: str, missing: Callable[[str], HsmError]) -> None:
        self._token = token
        self.first = label
        self.label = label
        self.id = kek_id(label)
        self._labels: dict[bytes, str] = {self.id: label}
        self._handles: dict[str, tuple[int, int]] = {}  # label -> (token generation, handle)
        self._missing = missing
        self._reread_at: dict[str, float] = {}
        self._lock = threading.Lock()
        #: Called with no argument when a blob names a KEK the ring does not know: the labels in use now.
        self.resolver: Callable[[], Iterable[str]] | None = None

    @property
    def current(self) -> tuple[str, bytes]:
        """(label, id) of the current KEK, read together (a rotation may switch it at any time)."""
        with self._lock:
            return self.label, self.id

    def use(self, label: str) -> bool:
        """New wraps use ``label`` from now on; whether that changed the current KEK."""
        with self._lock:
            self._labels[kek_id(label)] = label
            changed = label != self.label
            self.label, self.id = label, kek_id(label)
            return changed

    def know(self, labels: Iterable[str]) -> None:
        """Also open blobs under these KEKs."""
        with self._lock:
            for label in labels:
                self._labels[kek_id(label)] = label

    def known(self, kid: bytes) -> str | None:
        """The label of the KEK ``kid`` when the ring knows it."""
        return self._labels.get(kid)

    def resolve(self, kid: bytes) -> str | None:
        """The label of the KEK ``kid``, asking the resolver once when the ring does not know it."""
        label = self._labels.get(kid)
        if label is None and self.resolver is not None:
            self.know(self.resolver())
            label = self._labels.get(kid)
        return label

    def handle(self, label: str) -> tuple[int, int]:
        """(connection, handle) of the KEK ``label``, cached per connection; found by label once."""
        cached = self._handles.get(label)
        if cached is not None and cached[0] == self._token.generation:
            return cached

        def find(session: Session) -> list[int]:
            with self._token.objects("search"):
                return find_secret_keys(session, label)

        handles, generation = self._token.run_pinned(find, op="find kek")
        if not handles and self._may_reread(label):
            reread(self._token)  # made by another process since this one last read the token's files
            handles, generation = self._token.run_pinned(find, op="find kek")
        if len(handles) != 1:
            raise self._missing(f"token has {'no key' if not handles else 'several keys'} labelled {label!r}")
        self._handles[label] = (generation, handles[0])
        return generation, handles[0]

    def _may_reread(self, label: str) -> bool:
        """Whether a KEK not found may make the token be read again (once per label every
        :data:`REREAD_INTERVAL_S`: a label that is truly missing must not reconnect the token per call)."""
        now = time.monotonic()
        with self._lock:
            if now - self._reread_at.get(label, -REREAD_INTERVAL_S) < REREAD_INTERVAL_S:
                return False
            self._reread_at[label] = now
            return True

    def forget_handles(self) -> None:
        """Find the handles again (after a stale handle: reconnected, or a key replaced)."""
        self._handles.clear()

    def run(self, label: str, fn: Callable[[int, Session], T], op: str) -> tuple[T, int]:
        """``fn(KEK handle, session)`` on the token, and the connection it ran on; a stale KEK handle
        (reconnected, or the token went away and came back) is found again, up to three times."""
        for _ in range(3):
            generation, handle = self.handle(label)
            try:
                return self._token.run(
                    functools.partial(_kek_call, self._token, fn, handle), op=op, generation=generation
                ), generation
            except StaleHandle:
                self.forget_handles()
        raise HsmUnavailable(f"{op}: the token connection keeps changing")


def _kek_call(token: Token, fn: Callable[[int, Session], T], handle: int, session: Session) -> T:
    """``fn(handle, session)`` as a use of the KEK's object (:mod:`hsm.object_uses`): a retired KEK is
    not destroyed under it."""
    with token.using(handle):
        return fn(handle, session)


__all__ = [
    "KEK_ID_BYTES",
    "KekRing",
    "aes_token_key_template",
    "create_aes_token_key",
    "destroy_aes_token_key",
    "find_secret_keys",
    "kek_id",
]
