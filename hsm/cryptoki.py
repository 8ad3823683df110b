"""The PKCS#11 library of one module path, initialised so that several threads may call it at once.

python-pkcs11 calls ``C_Initialize(NULL)``, which makes SoftHSM switch its internal locking off while
python-pkcs11 releases the GIL around every call: two threads then crash the process
(``shared/docs/hsm-facts.md``, gotcha 1). :class:`Library` therefore lets python-pkcs11 load the module,
then — through ctypes on the same ``dlopen`` handle and the module's own ``CK_FUNCTION_LIST`` — calls
``C_Finalize`` and ``C_Initialize`` again with ``CK_C_INITIALIZE_ARGS.flags = CKF_OS_LOCKING_OK``. A module
that answers ``CKR_CANT_LOCK`` is initialised without arguments and every call is serialised instead.

A :class:`Library` also owns what is per *process* in PKCS#11:

* the **gate** — operations hold it shared; :meth:`Library.reinitialize` (``C_Finalize`` +
  ``C_Initialize``, the only cure for some lost devices) takes it exclusively, after the calls in flight
  have returned. New calls wait for a re-initialisation (milliseconds) to finish;
* the **login** — one long-lived session per token holds it, shared by every :class:`hsm.token.Token` on that
  token (``Session.close()`` logs everyone out: gotcha 2), closed when the last user releases it;
* the **generation** — incremented by every re-initialisation: handles from an older generation are dead;
* the **object-store guard** — token-object searches and token-object changes (create, generate, destroy)
  never run at the same time in this process (see :class:`ObjectStoreGuard`);
* the **object uses** — a key object is never destroyed while a call uses it (:mod:`hsm.object_uses`).

After ``fork()`` the child's copies refuse every call with HsmError (hsm-facts gotcha 4): a child process
opens its own :class:`hsm.token.Token` (the ``spawn`` start method does this naturally).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pkcs11
from pkcs11 import PKCS11Error
from pkcs11 import exceptions as exc
from pkcs11.types import Session
from pkcs11.types import Token as P11Token

from .errors import HsmError, HsmUnavailable
from .object_uses import ObjectUses

CKR_OK = 0x0
CKR_CANT_LOCK = 0x0A
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2

_CK_RV = ctypes.c_ulong
_INIT_FN = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_void_p)


_HEAD_FUNCTIONS = (
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
)
_DESTROY_FN = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_ulong, ctypes.c_ulong)


class _FunctionListHead(ctypes.Structure):
    """The first members of ``CK_FUNCTION_LIST`` (PKCS#11 2.40 order), up to C_DestroyObject."""

    _fields_ = [("version", ctypes.c_ubyte * 2), *((name, ctypes.c_void_p) for name in _HEAD_FUNCTIONS)]


class _InitializeArgs(ctypes.Structure):
    """``CK_C_INITIALIZE_ARGS`` (no mutex callbacks: the OS's locking is asked for)."""

    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


class _RawModule:
    """ctypes view of the module's C_Initialize / C_Finalize (same dlopen handle as python-pkcs11's)."""

    def __init__(self, path: str) -> None:
        self._dll = ctypes.CDLL(path)
        head = ctypes.POINTER(_FunctionListHead)()
        rv = self._dll.C_GetFunctionList(ctypes.byref(head))
        if rv != CKR_OK or not head:
            raise HsmUnavailable(f"PKCS#11 module: C_GetFunctionList failed (CKR 0x{rv:x})")
        fns = head.contents
        assert fns.C_Initialize and fns.C_Finalize and fns.C_DestroyObject
        self._initialize = _INIT_FN(fns.C_Initialize)
        self._finalize = _INIT_FN(fns.C_Finalize)
        self.destroy_object = _DESTROY_FN(fns.C_DestroyObject)
        self._args = _InitializeArgs(flags=CKF_OS_LOCKING_OK)

    def finalize(self) -> int:
        return int(self._finalize(None))

    def initialize_os_locking(self) -> int:
        return int(self._initialize(ctypes.cast(ctypes.byref(self._args), ctypes.c_void_p)))

    def initialize_plain(self) -> int:
        return int(self._initialize(None))


@dataclass
class _Login:
    session: Session
    users: int


class _Gate:
    """Shared for operations, exclusive for re-initialisation.

    Shared entry fails fast while an exclusive one waits.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._exclusive = False
        self._serial: threading.Lock | None = None
        self._poisoned: str | None = None

    def poison(self, reason: str) -> None:
        """Refuse every further entry (the library is not usable in this process any more)."""
        self._poisoned = reason

    def serialise(self) -> None:
        """Make every shared entry mutually exclusive (for modules without OS locking)."""
        self._serial = threading.Lock()

    def enter(self, timeout: float) -> None:
        """Enter shared; waits (up to ``timeout``) while a re-initialisation is under way."""
        if self._poisoned is not None:
            raise HsmError(self._poisoned)
        with self._cond:
            if self._exclusive and not self._cond.wait_for(lambda: not self._exclusive, timeout):
                raise HsmUnavailable("PKCS#11 library is being re-initialised")
            self._active += 1
        if self._serial is not None:
            self._serial.acquire()

    def leave(self) -> None:
        if self._serial is not None:
            self._serial.release()
        with self._cond:
            self._active -= 1
            if self._exclusive and self._active == 0:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        """Wait for the calls in flight to return, then hold new ones back until the block ends."""
        with self._cond:
            if self._exclusive:
                raise HsmUnavailable("PKCS#11 library is already being re-initialised")
            self._exclusive = True
            if not self._cond.wait_for(lambda: self._active == 0, timeout):
                self._exclusive = False
                self._cond.notify_all()
                raise HsmUnavailable("PKCS#11 library: calls in flight did not return in time")
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


ObjectStoreUse = Literal["search", "change"]


class ObjectStoreGuard:
    """Token-object searches and token-object changes never overlap in this process; each may overlap with
    itself (several searches, or several key generations, at once).

    SoftHSM 2.6.1, measured here with OS locking on: ``C_FindObjectsInit`` re-reads the token directory,
    and when it does so while another thread of the process creates a token object, the new object is
    corrupted. The creation is refused (``CKR_TEMPLATE_INCONSISTENT``, ``CKR_GENERAL_ERROR``), or succeeds
    with a public key of the wrong form, and an object with default attributes (no ID, no label, no curve)
    can stay in the token directory, where every later listing of the token fails
    (``CKR_ATTRIBUTE_VALUE_INVALID``). In a steady state nothing searches (handles are cached); right after
    a re-initialisation every thread finds its keys again, which is when key generations were refused.
    The guard is per process, like the object index SoftHSM corrupts (other processes see only its debris).

    Turns are fair: while one kind waits, the other kind's newcomers wait for the running ones to finish.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active: dict[str, int] = {"search": 0, "change": 0}
        self._waiting: dict[str, int] = {"search": 0, "change": 0}

    @contextmanager
    def hold(self, use: ObjectStoreUse) -> Iterator[None]:
        """Run the block as a ``use`` of the token's objects (never beside one of the other kind)."""
        other = "change" if use == "search" else "search"

        def may_enter() -> bool:
            return self._active[other] == 0 and (self._waiting[other] == 0 or self._active[use] == 0)

        with self._cond:
            self._waiting[use] += 1
            try:
                self._cond.wait_for(may_enter)
            finally:
                self._waiting[use] -= 1
            self._active[use] += 1
        try:
            yield
        finally:
            with self._cond:
                self._active[use] -= 1
                self._cond.notify_all()


class Library:
    """One loaded PKCS#11 module (use :func:`load`; one instance per path per process)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.lib: Any = pkcs11.lib(path)
        except PKCS11Error as exc:
            raise HsmUnavailable(f"PKCS#11 module {path} cannot be loaded ({type(exc).__name__})") from None
        self._raw = _RawModule(path)
        self.gate = _Gate()
        self.objects = ObjectStoreGuard()
        self.uses = ObjectUses()
        self.generation = 0
        self.os_locking = True
        self._lock = threading.Lock()
        self._reinit_lock = threading.Lock()
        self._logins: dict[int, _Login] = {}
        self._initialized = True
        self._reinit_os_locking()

    # ---- initialisation ------------------------------------------------------------------------
    def _reinit_os_locking(self) -> None:
        rv = self._raw.finalize()
        if rv not in (CKR_OK, CKR_CRYPTOKI_NOT_INITIALIZED):
            raise HsmUnavailable(f"PKCS#11 C_Finalize failed (CKR 0x{rv:x})")
        self._initialized = False
        rv = self._raw.initialize_os_locking()
        if rv == CKR_CANT_LOCK:
            self.os_locking = False
            self.gate.serialise()
            rv = self._raw.initialize_plain()
        if rv != CKR_OK:
            raise HsmUnavailable(f"PKCS#11 C_Initialize failed (CKR 0x{rv:x})")
        self._initialized = True

    def reinitialize(self, expected_generation: int, timeout: float = 5.0) -> int:
        """``C_Finalize`` + ``C_Initialize`` unless someone already did since ``expected_generation``.

        Returns the new generation. Every session and handle of the previous generation is dead.
        """
        with self._reinit_lock:
            if self.generation != expected_generation:
                return self.generation
            # The gate before the login lock: a connection being opened holds the gate and then takes the
            # login lock (hsm.token.Token._open), so the other order could make both wait.
            with self.gate.exclusive(timeout), self._lock:
                self._logins.clear()
                self.generation += 1
                self._reinit_os_locking()
            return self.generation

    def destroy_object(self, session: Session, handle: int) -> None:
        """``C_DestroyObject`` by handle in ``session`` (python-pkcs11 can only destroy searched objects)."""
        rv = int(self._raw.destroy_object(session.handle, handle))  # type: ignore[attr-defined]
        if rv != CKR_OK:
            raise rv_error(rv)

    # ---- tokens and the login ------------------------------------------------------------------
    def find_token(self, label: str) -> P11Token:
        """The token with this label; HsmUnavailable when it is not present."""
        try:
            return self.lib.get_token(token_label=label)  # type: ignore[no-any-return]
        except PKCS11Error as exc:
            raise HsmUnavailable(f"token {label!r} not found ({type(exc).__name__})") from None

    def acquire_login(self, token: P11Token, pin: str) -> Session:
        """The login session of ``token`` (opened and logged in on first use); pair with release_login."""
        slot_id = token.slot.slot_id
        with self._lock:
            login = self._logins.get(slot_id)
            if login is None:
                login = _Login(token.open(rw=True, user_pin=pin), 0)
                self._logins[slot_id] = login
            login.users += 1
            return login.session

    def release_login(self, session: Session, generation: int) -> None:
        """Drop one user of the login; the last one logs out and closes the session."""
        with self._lock:
            if generation != self.generation:
                return
            for slot_id, login in list(self._logins.items()):
                if login.session is session:
                    login.users -= 1
                    if login.users == 0:
                        del self._logins[slot_id]
                        _quiet_close(session)
                    return


_RV_ERRORS: dict[int, type[PKCS11Error]] = {
    0x05: exc.GeneralError,
    0x06: exc.FunctionFailed,
    0x30: exc.DeviceError,
    0x31: exc.DeviceMemory,
    0x32: exc.DeviceRemoved,
    0x82: exc.ObjectHandleInvalid,
    0xB0: exc.SessionClosed,
    0xB3: exc.SessionHandleInvalid,
    0xE0: exc.TokenNotPresent,
    0xE1: exc.TokenNotRecognised,
    0x101: exc.UserNotLoggedIn,
}


#: The session, login or device is gone: reconnect.
LOST_ERRORS: tuple[type[PKCS11Error], ...] = (
    exc.DeviceError,
    exc.DeviceMemory,
    exc.DeviceRemoved,
    exc.TokenNotPresent,
    exc.TokenNotRecognised,
    exc.SessionClosed,
    exc.SessionHandleInvalid,
    exc.UserNotLoggedIn,
)
#: Could be the device or the input: check the token's health before deciding.
AMBIGUOUS_ERRORS: tuple[type[PKCS11Error], ...] = (exc.GeneralError, exc.FunctionFailed, exc.HostMemory)
#: A cached object handle no longer names an object (also as the key of a wrap or an unwrap: SoftHSM
#: answers ``CKR_WRAPPING_KEY_HANDLE_INVALID`` for a KEK handle whose token went away and came back).
STALE_ERRORS: tuple[type[PKCS11Error], ...] = (
    exc.ObjectHandleInvalid,
    exc.KeyHandleInvalid,
    exc.WrappingKeyHandleInvalid,
    exc.UnwrappingKeyHandleInvalid,
)
#: Login refused for a reason retrying cannot fix (and retrying a wrong PIN may lock the token).
#: (``CKR_USER_PIN_NOT_INITIALIZED`` is not here: SoftHSM answers it spuriously while another process
#: rewrites the token file, so it is retried like any other start-up failure.)
PIN_ERRORS: tuple[type[PKCS11Error], ...] = (
    exc.PinIncorrect,
    exc.PinInvalid,
    exc.PinLenRange,
    exc.PinExpired,
    exc.PinLocked,
)


def rv_error(rv: int) -> PKCS11Error:
    """The python-pkcs11 exception for a raw CK_RV (PKCS11Error for values without a class here)."""
    return _RV_ERRORS.get(rv, PKCS11Error)(f"CKR 0x{rv:x}")


def _quiet_close(session: Session) -> None:
    with contextlib.suppress(PKCS11Error):
        session.close()


_LIBRARIES: dict[str, Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child must not use its parent's Cryptoki state (hsm-facts gotcha 4)."""
    for library in _LIBRARIES.values():
        library.gate.poison(
            "PKCS#11 library was initialised before fork(); open the Token in the child "
            "(use the multiprocessing 'spawn' start method)"
        )
    _LIBRARIES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def load(path: str) -> Library:
    """The process-wide :class:`Library` for ``path`` (loaded and OS-locking-initialised on first use)."""
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(path)
        if lib is None:
            lib = Library(path)
            _LIBRARIES[path] = lib
        return lib


__all__ = ["Library", "ObjectStoreGuard", "ObjectStoreUse", "load"]
