"""One token: login, a bounded pool of worker sessions, error mapping, and reconnection with backoff.

* **Login** — one long-lived session per token holds the login (shared through :mod:`hsm.cryptoki`, so
  closing a :class:`Token` never logs another one out). Worker sessions are opened without a PIN.
* **Pool** — ``pool_size`` R/W worker sessions; :meth:`Token.run` lends one to a callable for the duration
  of one operation, so a session is never used by two threads at once. Callers are the gateway's thread
  pool; waiting longer than ``session_wait_s`` for a session fails with HsmUnavailable.
* **Errors** — python-pkcs11 exceptions never leave :meth:`Token.run`: lost sessions and device errors
  become a reconnect (and HsmUnavailable if that fails); ambiguous errors (``CKR_GENERAL_ERROR``...) are
  settled by a health probe (and tried once more on a healthy token); a stale object handle becomes
  :class:`StaleHandle` (the key store re-finds the key); everything else is a refusal,
  :class:`hsm.errors.HsmError`. Messages carry the operation and the PKCS#11 error class only. A session
  that saw an error is replaced by a fresh one; the old one is closed once no key made in it can be in
  use (:meth:`hsm.connection.Connection.retire`).
* **Handles** — object handles belong to one connection (a re-initialised library renumbers them, and an
  old number may then name *another* key). Callers that cache handles pass the connection number they
  got with them (:meth:`Token.run_pinned`, ``run(generation=...)``); an operation that would run on
  another connection raises StaleHandle instead of running. A library re-initialised by anyone is noticed
  before a session of the old one is touched.
* **Reconnect** — the first operation that loses the token re-initialises the library (``C_Finalize`` +
  ``C_Initialize``: SoftHSM needs it to see a token again) and reopens login and pool at once; if that
  fails, the token is *down*: every operation fails fast with HsmUnavailable, without touching the
  library, until the backoff delay (doubling from ``backoff_initial_s`` to ``backoff_max_s``) has passed
  and one caller tries again. A refused PIN is never retried (it could lock the token).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pkcs11 import PKCS11Error
from pkcs11.types import Session
from pkcs11.types import Token as P11Token

from . import cryptoki
from .capabilities import Capabilities, detect
from .config import TokenConfig
from .connection import Connection, Lost
from .cryptoki import AMBIGUOUS_ERRORS, LOST_ERRORS, STALE_ERRORS, Library
from .errors import HsmError, HsmUnavailable
from .object_uses import KeyObjects

T = TypeVar("T")
_log = logging.getLogger(__name__)
State = Literal["new", "up", "down", "failed", "closed"]


class StaleHandle(HsmError):
    """A cached object handle no longer names an object (the key store looks the key up again)."""


class _Reinitialised(Lost):
    """The library was re-initialised since the connection opened; the operation did not run. Someone's
    re-initialisation is no outage of the token: reconnect at once, without backoff, and run it there."""


#: Reconnections an operation follows at once when the library was re-initialised before it could run.
_REINIT_FOLLOWS = 3


class _Transient(HsmError):
    """An ambiguous error on a healthy token: worth one more try, then reported as a refusal."""


class Token(KeyObjects):
    """A connection to one token, safe to share between threads. See the module docstring."""

    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        self._conn: Connection | None = None
        self._state: State = "new"
        self._capabilities: Capabilities | None = None
        self._connections = 0
        self._attempts = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._reconnect_lock = threading.Lock()
        self._library: Library | None = None
        #: Library generation last seen; a reconnect re-initialises the library unless it moved on since.
        self._seen_generation: int | None = None
        self._discovery_reinit_done = False
        #: Key-handle cache shared by every key store on this token (so a key destroyed through one store
        #: is forgotten by all: some tokens reuse object handles). Keys and values belong to the key store.
        self.handle_cache: dict[bytes, Any] = {}

    @classmethod
    def open(cls, config: TokenConfig) -> Token:
        """Construct and :meth:`connect`."""
        token = cls(config)
        token.connect()
        return token

    def __repr__(self) -> str:
        return f"Token({self.config.token_label!r}, {self._state})"

    # ---- public state --------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def generation(self) -> int:
        """Number of the current connection; object handles from another one are not to be trusted."""
        conn = self._conn
        return conn.number if conn is not None else 0

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            raise HsmUnavailable(f"token {self.config.token_label!r} has not been reached yet")
        return self._capabilities

    def status(self) -> dict[str, Any]:
        """A JSON-ready health summary (no secrets)."""
        retry_in = max(0.0, self._retry_at - time.monotonic()) if self._state == "down" else 0.0
        conn = self._conn
        return {
            "token": self.config.token_label,
            "sessions_in_use": conn.pool.in_use if conn is not None else 0,
            "pool_size": conn.pool.size if conn is not None else 0,
            "state": self._state,
            "connections": self._connections,
            "retry_in_s": round(retry_in, 3),
            "last_error": self._last_error,
            "capabilities": self._capabilities.describe() if self._capabilities else None,
        }

    # ---- connecting ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect, retrying with backoff up to ``startup_attempts`` times; HsmError/HsmUnavailable if not."""
        for attempt in range(self.config.startup_attempts):
            with self._reconnect_lock:
                if self._state == "up" or self._reconnect_locked():
                    return
            self._raise_if_unusable()
            if attempt + 1 < self.config.startup_attempts:
                time.sleep(max(0.0, self._retry_at - time.monotonic()))
        raise HsmUnavailable(f"token {self.config.token_label!r} unavailable: {self._last_error}")

    def close(self) -> None:
        """Close the worker sessions and release the login; further operations fail."""
        with self._reconnect_lock:
            conn, self._conn = self._conn, None
            self._state = "closed"
            if conn is not None:
                conn.close(self.config.session_wait_s)

    def _raise_if_unusable(self) -> None:
        if self._state == "failed":
            raise HsmError(self._last_error)
        if self._state == "closed":
            raise HsmUnavailable(f"token {self.config.token_label!r} is closed")

    def _ready(self) -> Connection:
        conn = self._conn
        if conn is not None and self._state == "up":
            return conn
        return self._slow_ready()

    def _slow_ready(self) -> Connection:
        self._raise_if_unusable()
        self._raise_if_backing_off()
        if not self._reconnect_lock.acquire(timeout=self.config.session_wait_s):
            raise HsmUnavailable(f"token {self.config.token_label!r} is reconnecting")
        try:
            if self._state == "up" and self._conn is not None:
                return self._conn
            self._raise_if_unusable()
            self._raise_if_backing_off()
            if self._reconnect_locked() and self._conn is not None:
                return self._conn
            self._raise_if_unusable()
            raise HsmUnavailable(self._down_message())
        finally:
            self._reconnect_lock.release()

    def _raise_if_backing_off(self) -> None:
        if self._state == "down" and time.monotonic() < self._retry_at:
            raise HsmUnavailable(self._down_message())

    def _down_message(self) -> str:
        wait = max(0.0, self._retry_at - time.monotonic())
        label = self.config.token_label
        return f"token {label!r} unavailable ({self._last_error}); next attempt in {wait:.2f} s"

    def _reconnect_locked(self) -> bool:
        """Tear down, (re-initialise,) reopen. Caller holds the reconnect lock. Never raises."""
        old, self._conn = self._conn, None
        if old is not None:
            old.close(self.config.session_wait_s)
        try:
            self._conn = self._open()
        except HsmUnavailable as exc:
            self._went_down(str(exc))
            return False
        except HsmError as exc:
            self._state, self._last_error = "failed", str(exc)
            return False
        _log_transition(self.config.token_label, self._state, "up", "")
        self._state, self._attempts, self._last_error = "up", 0, ""
        return True

    def _went_down(self, reason: str) -> None:
        self._attempts += 1
        delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (self._attempts - 1))
        self._retry_at = time.monotonic() + delay * random.uniform(0.75, 1.0)
        _log_transition(self.config.token_label, self._state, "down", reason)
        self._state, self._last_error = "down", reason

    def _open(self) -> Connection:
        library = self._library = cryptoki.load(self.config.module_path)
        if self._seen_generation is not None:
            library.reinitialize(self._seen_generation)
        self._seen_generation = library.generation
        p11 = self._find_token(library)
        conn = Connection.open(self._connections + 1, library, p11, self.config, self._detect_capabilities)
        self._connections += 1
        return conn

    def _find_token(self, library: Library) -> P11Token:
        try:
            return library.find_token(self.config.token_label)
        except HsmUnavailable:
            if self._discovery_reinit_done:
                raise
        # A token made after the library was initialised (or under another SOFTHSM2_CONF) needs a re-init.
        self._discovery_reinit_done = True
        self._seen_generation = library.reinitialize(library.generation)
        return library.find_token(self.config.token_label)

    def _detect_capabilities(self, library: Library, p11: P11Token, session: Session) -> None:
        """The token's capabilities, found once (on the first connection's first worker session)."""
        if self._capabilities is None:
            mechanisms = p11.slot.get_mechanisms()
            self._capabilities = detect(
                session, mechanisms, self.config.montgomery_keygen, p11.model, library.destroy_object
            )

    # ---- running operations --------------------------------------------------------------------
    def run(
        self, fn: Callable[[Session], T], *, op: str, retry: bool = True, generation: int | None = None
    ) -> T:
        """Run ``fn`` with a worker session; map every PKCS#11 error (see the module docstring).

        With ``retry``, ``fn`` runs once more after a lost connection (reconnected at once) or an ambiguous
        error on a healthy token (SoftHSM answers ``CKR_GENERAL_ERROR`` now and then right after it
        re-reads its token files); ``fn`` must then be safe to repeat.

        ``generation``: ``fn`` uses object handles from that connection; if the operation would run on
        another one (handles are renumbered by a reconnect, and an old number may name another object),
        :class:`StaleHandle` is raised instead of running ``fn``.
        """
        conn = self._conn
        if conn is None or self._state != "up":
            conn = self._slow_ready()
        try:
            return self._call_following_reinit(conn, fn, op, generation)
        except Lost as lost:
            self._lost(lost.conn or conn, immediate=retry)
        except _Transient:
            if not retry:
                raise
        if not retry:
            raise HsmUnavailable(f"{op}: {self._down_message()}")
        conn = self._ready()
        try:
            return self._call_following_reinit(conn, fn, op, generation)
        except Lost as lost:
            self._lost(lost.conn or conn, immediate=False)
        raise HsmUnavailable(f"{op}: {self._down_message()}")

    def _call_following_reinit(
        self, conn: Connection, fn: Callable[[Session], T], op: str, generation: int | None
    ) -> T:
        """:meth:`_call`, on a new connection at once (up to ``_REINIT_FOLLOWS`` times) when the library was
        re-initialised before ``fn`` ran: safe whatever ``fn`` is, and not an outage. Under load a retried
        call can meet the next re-initialisation too; treating that as an outage put the token into
        backoff, and every operation of every thread failed until it passed."""
        for _ in range(_REINIT_FOLLOWS):
            try:
                return self._call(conn, fn, op, generation)
            except _Reinitialised:
                self._lost(conn, immediate=True)
                conn = self._ready()
            except Lost as lost:
                lost.conn = conn
                raise
        raise HsmUnavailable(f"{op}: the PKCS#11 library keeps being re-initialised")

    def _call(self, conn: Connection, fn: Callable[[Session], T], op: str, generation: int | None) -> T:
        gate = conn.library.gate
        gate.enter(self.config.session_wait_s)
        try:
            if conn.library.generation != conn.library_generation:
                # Re-initialised since this connection opened: its session handles are dead, and a dead
                # handle's number may already name a new session of someone else. Never use them.
                raise _Reinitialised("library re-initialised")
            if generation is not None and generation != conn.number:
                raise StaleHandle(f"{op}: key handle is from an earlier connection")
            session = conn.pool.take(self.config.session_wait_s)
            try:
                result = fn(session)
            except PKCS11Error as exc:
                error = self._classify(session, exc, op)
                if not isinstance(error, Lost | StaleHandle):
                    session = _replace_session(conn, session, self.config.session_wait_s)
                raise error from None
            finally:
                conn.pool.give(session)
            return result
        finally:
            gate.leave()

    def _classify(self, session: Session, exc: PKCS11Error, op: str) -> Exception:
        name = type(exc).__name__
        if isinstance(exc, LOST_ERRORS):
            return Lost(name)
        if isinstance(exc, STALE_ERRORS):
            return StaleHandle(f"{op}: key handle is stale ({name})")
        if isinstance(exc, AMBIGUOUS_ERRORS) or type(exc) is PKCS11Error:
            if not _healthy(session, self.config.token_label):
                return Lost(name)
            return _Transient(f"{op}: token refused the operation ({name})")
        return HsmError(f"{op}: token refused the operation ({name})")

    def _lost(self, conn: Connection, *, immediate: bool) -> None:
        with self._reconnect_lock:
            if self._conn is not conn or self._state != "up":
                return
            self._went_down("connection lost")
            if immediate:
                self._retry_at = 0.0

    def run_pinned(self, fn: Callable[[Session], T], *, op: str) -> tuple[T, int]:
        """Run ``fn`` (which makes or finds object handles); returns its result and the connection number
        the handles belong to (pass it as ``generation`` to later :meth:`run` calls that use them)."""
        for _ in range(3):
            generation = self.generation
            try:
                return self.run(fn, op=op, generation=generation), generation
            except StaleHandle:
                continue  # (re)connected before it ran: go again on the new connection
        raise HsmUnavailable(f"{op}: the token connection keeps changing")

    def check(self) -> None:
        """Raise HsmUnavailable unless the token answers a health probe now."""

        def probe(session: Session) -> None:
            if not _healthy(session, self.config.token_label):
                raise cryptoki.rv_error(0x30)  # CKR_DEVICE_ERROR → lost

        self.run(probe, op="health check")


def reread(token: Token) -> None:
    """Reconnect ``token`` now (``C_Finalize`` + ``C_Initialize``: handles of the old connection go stale),
    so that objects another process made in the token since are seen (a KEK made by ``mls-gateway keys
    rotate-kek`` beside a running gateway was, now and then, not seen by the gateway's SoftHSM until
    then). Waits a bounded time for the reconnect lock: someone else reconnecting re-reads it too."""
    if not token._reconnect_lock.acquire(timeout=token.config.session_wait_s):
        return
    try:
        if token._conn is not None and token._state == "up":
            token._reconnect_locked()
    finally:
        token._reconnect_lock.release()


def _log_transition(label: str, old: State, new: Literal["up", "down"], reason: str) -> None:
    """One line when the token goes down and one when it is back: per transition, never per failed retry
    or request (a first "up" is no news: the gateway's start-up line says it; a token that cannot be opened
    at start-up is the caller's error to report, not an outage). Both are WARNINGs, so whoever sees the
    outage also sees the recovery."""
    if new == "down" and old not in ("down", "new"):
        _log.warning("HSM token %r is down: %s", label, reason)
    elif new == "up" and old == "down":
        _log.warning("HSM token %r is up again", label)


def _healthy(session: Session, label: str) -> bool:
    """The token is present under its label and the session works."""
    try:
        if session.token.slot.get_token().label != label:
            return False
        session.generate_random(64)
    except PKCS11Error:
        return False
    return True


def _replace_session(conn: Connection, session: Session, wait_s: float) -> Session:
    """A fresh worker session for one that saw an error; the old one is retired
    (:meth:`hsm.connection.Connection.retire`: closed once no key made in it can be in use).

    python-pkcs11 leaves a session's operation lock held when ``C_FindObjectsInit`` fails, which would
    block every other thread that later borrows that session: sessions that saw an error are not reused.
    Except after a stale handle (:data:`hsm.cryptoki.STALE_ERRORS`, from a sign, derive, wrap, unwrap or
    destroy — never a search, which names no handle): those leave the session usable (tested), and a
    stale handle is routine (a key evicted or deleted under a use) — retiring a session for it destroyed
    the other keys unwrapped there, whose next uses met stale handles in turn.
    """
    try:
        fresh = conn.token.open(rw=True)
    except PKCS11Error:
        return session  # keep the old one rather than shrink the pool; a reconnect renews it
    conn.retire(session, wait_s)
    return fresh


__all__ = ["StaleHandle", "Token", "reread"]
