"""Key objects in use by a call of this process, so that ``C_DestroyObject`` never runs under one.

SoftHSM 2.6.1 with OS locking on, reproduced here: when one thread destroys a key object (a session object
of wrapped custody, or a token object) while another thread's ``C_DeriveKey`` or ``C_Sign`` is using it,
the object is freed under that call and the process dies with SIGSEGV. The gateway destroys keys while
others may use them: forward-secret deletion (a KeyPackage's init key once a join consumed it, while a
concurrent join from the same Welcome is still decapsulating with it; an identity deleted during one of
its requests) and the bounded cache of unwrapped keys evicting its least recently used entry.

Every use of a key's private object holds :meth:`ObjectUses.use` around the call; a destruction takes
:meth:`ObjectUses.destroying`, which keeps new uses of that handle out and waits (a bounded time) for the
running ones to return. A use that was kept out then meets a destroyed handle — an error the callers
already handle (found again, or the key is gone) — never a freed object. Handles are per process, like
the objects SoftHSM frees, so the registry is per :class:`hsm.cryptoki.Library`.

``C_CloseSession`` destroys every session object made in that session, whichever session uses it (a key
unwrapped in one worker session is used in all of them). A session is closed only inside
:meth:`ObjectUses.quiet`: no use of any key runs, and none begins, until the block ends
(:meth:`hsm.connection.Connection.retire`, :meth:`hsm.connection.Connection.close`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, TypeVar

from .errors import HsmError

if TYPE_CHECKING:
    from pkcs11.types import Session

    from .config import TokenConfig
    from .cryptoki import Library, ObjectStoreUse
    from .mechanisms import KeyEntry

T = TypeVar("T")


class ObjectUses:
    """Uses and destructions of object handles (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active: Counter[int] = Counter()
        self._doomed: set[int] = set()
        self._total = 0
        self._paused = 0

    @contextmanager
    def use(self, *handles: int) -> Iterator[None]:
        """Run the block as a use of ``handles`` (after a destruction of one that has begun: it is gone).
        Several handles are taken at once (a re-wrap uses two KEKs), never one after the other."""
        with self._cond:
            self._cond.wait_for(lambda: self._doomed.isdisjoint(handles) and not self._paused)
            self._active.update(handles)
            self._total += len(handles)
        try:
            yield
        finally:
            with self._cond:
                self._active.subtract(handles)
                self._total -= len(handles)
                for handle in handles:
                    if self._active[handle] <= 0:
                        del self._active[handle]
                        self._cond.notify_all()

    @contextmanager
    def destroying(self, handle: int, timeout_s: float) -> Iterator[None]:
        """Run the block (the destruction of ``handle``) once no use of it runs; HsmError if the uses do
        not end within ``timeout_s`` (nothing is destroyed then)."""
        with self._cond:
            self._cond.wait_for(lambda: handle not in self._doomed)
            self._doomed.add(handle)
            if not self._cond.wait_for(lambda: self._active[handle] == 0, timeout_s):
                self._doomed.discard(handle)
                self._cond.notify_all()
                raise HsmError(f"a key object is still in use after {timeout_s:g} s; not destroyed")
        try:
            yield
        finally:
            with self._cond:
                self._doomed.discard(handle)
                self._cond.notify_all()

    @contextmanager
    def quiet(self, timeout_s: float) -> Iterator[bool]:
        """Yield True once no use of any handle runs (new ones wait until the block ends): the moment to
        close a session, which destroys the objects made in it. Yield False, holding nothing back, if uses
        still run after ``timeout_s`` (0: only if none runs now)."""
        with self._cond:
            self._paused += 1
            quiet = self._cond.wait_for(lambda: self._total == 0, timeout_s)
            if not quiet:
                self._paused -= 1
                self._cond.notify_all()
        if not quiet:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    def in_use(self, handle: int) -> int:
        """How many uses of ``handle`` run now."""
        with self._cond:
            return self._active[handle]


class KeyObjects:
    """What :class:`hsm.token.Token` offers the code that runs inside :meth:`hsm.token.Token.run` about the
    token's objects: the object-store guard, uses of key objects, and their destruction."""

    config: TokenConfig
    _library: Library | None

    def objects(self, use: ObjectStoreUse) -> AbstractContextManager[None]:
        """Hold around token-object searches (``"search"``) and creations or destructions (``"change"``),
        which must never overlap (:class:`hsm.cryptoki.ObjectStoreGuard`)."""
        assert self._library is not None
        return self._library.objects.hold(use)

    def using(self, *handles: int) -> AbstractContextManager[None]:
        """Hold around a call that uses the key objects ``handles`` (sign, derive; a KEK's wrap or
        unwrap), so that none is destroyed under the call (see the module docstring)."""
        assert self._library is not None
        return self._library.uses.use(*handles)

    def destroy_handle(self, session: Session, handle: int) -> None:
        """C_DestroyObject by handle, once no call of this process uses the object (HsmError if one still
        does after the token's ``session_wait_s``)."""
        assert self._library is not None
        uses, objects = self._library.uses, self._library.objects
        with uses.destroying(handle, self.config.session_wait_s), objects.hold("change"):
            self._library.destroy_object(session, handle)


def key_call(
    objects: KeyObjects, fn: Callable[[Session, KeyEntry], T], entry: KeyEntry
) -> Callable[[Session], T]:
    """``fn`` with the key's entry, for :meth:`hsm.token.Token.run`: a use of its private object (never
    destroyed under the call)."""

    def call(session: Session) -> T:
        with objects.using(entry.pair.private):
            return fn(session, entry)

    return call
