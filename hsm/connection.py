"""A connection to one token (PKCS#11): its login session and a pool of worker sessions.

:class:`hsm.token.Token` opens one :class:`Connection` at a time and replaces it when the token is lost or
the library re-initialised; each operation borrows a worker session from the :class:`SessionPool`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pkcs11 import PKCS11Error
from pkcs11.types import Session
from pkcs11.types import Token as P11Token

from .config import TokenConfig
from .cryptoki import PIN_ERRORS, Library
from .errors import HsmError, HsmUnavailable


class Lost(Exception):
    """The connection an operation ran on (``conn``, once known) is gone."""

    conn: Connection | None = None


class _Waiter:
    """One thread waiting for a session: served in arrival order (:class:`SessionPool`)."""

    __slots__ = ("ready", "session")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.session: Session | None = None


class SessionPool:
    """Worker sessions lent to one operation at a time, in the order they were asked for: a session given
    back goes straight to the longest waiter, so a thread that gives one back and asks again at once
    cannot overtake it (with a plain condition variable, a few threads in a tight loop kept the pool
    and another thread waited out ``session_wait_s``)."""

    def __init__(self, sessions: list[Session]) -> None:
        self.size = len(sessions)
        self._free = list(sessions)
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._closed = False

    def take(self, timeout: float) -> Session:
        with self._lock:
            if self._closed:
                raise Lost
            if self._free and not self._waiters:
                return self._free.pop()
            waiter = _Waiter()
            self._waiters.append(waiter)
        if not waiter.ready.wait(timeout):
            with self._lock:
                if not waiter.ready.is_set():
                    self._waiters.remove(waiter)
                    raise HsmUnavailable(f"no free token session within {timeout:g} s")
        if waiter.session is None:
            raise Lost  # closed while waiting
        return waiter.session

    @property
    def in_use(self) -> int:
        """Sessions lent out right now."""
        with self._lock:
            return 0 if self._closed else self.size - len(self._free)

    @property
    def waiting(self) -> int:
        """Threads waiting for a session right now."""
        with self._lock:
            return len(self._waiters)

    def give(self, session: Session) -> None:
        with self._lock:
            if self._closed:
                return
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.session = session
                waiter.ready.set()
            else:
                self._free.append(session)

    def close(self) -> list[Session]:
        """Refuse further loans; returns the idle sessions (busy ones are dropped when given back)."""
        with self._lock:
            self._closed = True
            idle, self._free = self._free, []
            for waiter in self._waiters:
                waiter.ready.set()
            self._waiters.clear()
            return idle


@dataclass(eq=False)
class Connection:
    """One login and its pool of worker sessions, on one generation of the library."""

    number: int
    library: Library
    library_generation: int
    token: P11Token
    login: Session
    pool: SessionPool
    #: Worker sessions taken out of the pool after an error, not closed yet (:meth:`retire`).
    retired: list[Session] = field(default_factory=list)
    _retired_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls,
        number: int,
        library: Library,
        p11: P11Token,
        config: TokenConfig,
        on_first_session: Callable[[Library, P11Token, Session], None],
    ) -> Connection:
        """Log in and open ``config.pool_size`` worker sessions; ``on_first_session`` sees the first one
        (capability detection). Inside the gate, like every operation: another connection's
        re-initialisation (C_Finalize) must not run while this one logs in and opens sessions, and the
        sessions must belong to the generation the connection records."""
        library.gate.enter(config.session_wait_s)
        try:
            generation = library.generation
            login: Session | None = None
            sessions: list[Session] = []
            try:
                login = library.acquire_login(p11, config.read_pin())
                sessions = [p11.open(rw=True) for _ in range(config.pool_size)]
                on_first_session(library, p11, sessions[0])
            except PKCS11Error as exc:
                close_quietly(sessions)
                if login is not None:
                    library.release_login(login, generation)
                raise connect_error(config.token_label, exc) from None
        finally:
            library.gate.leave()
        return cls(number, library, generation, p11, login, SessionPool(sessions))

    def retire(self, session: Session, wait_s: float) -> None:
        """Take ``session`` (one that saw an error) out of use for good and close it once no key object
        is in use: closing a session destroys the session objects made in it (keys unwrapped there),
        which other sessions' calls may be using (:mod:`hsm.object_uses`). Closed at once when no use
        runs; else kept, and closed by a later :meth:`retire` or :meth:`close` — one that finds more
        retired sessions than the pool's size waits up to ``wait_s`` for the uses to end. The caller is
        inside the library's gate."""
        with self._retired_lock:
            self.retired.append(session)
            crowded = len(self.retired) > self.pool.size
        self._close_retired(wait_s if crowded else 0.0)

    def _close_retired(self, wait_s: float) -> None:
        with self._retired_lock:
            if not self.retired:
                return
        with self.library.uses.quiet(wait_s) as quiet:
            if quiet:
                with self._retired_lock:
                    sessions, self.retired = self.retired, []
                close_quietly(sessions)

    def close(self, session_wait_s: float) -> None:
        """Close the pool and release the login; idle and retired sessions are closed only if the
        library was not re-initialised since (their numbers may name a newer connection's sessions by
        then), and only once no key object is in use (:meth:`retire`)."""
        idle = self.pool.close()
        gate = self.library.gate
        try:
            gate.enter(session_wait_s)
        except HsmError:
            pass  # cannot tell whether they are still this generation's: leave them
        else:
            # Checked and closed inside the gate: a session number of an older generation may name a new
            # connection's session (its login, even) by now, which must not be closed from here.
            try:
                if self.library.generation == self.library_generation:
                    with self._retired_lock:
                        self.retired.extend(idle)
                    self._close_retired(session_wait_s)
            finally:
                gate.leave()
        self.library.release_login(self.login, self.library_generation)


def connect_error(label: str, exc: PKCS11Error) -> HsmError:
    name = type(exc).__name__
    if isinstance(exc, PIN_ERRORS):
        return HsmError(f"token {label!r}: login refused ({name}); check the configured PIN source")
    return HsmUnavailable(f"token {label!r}: connect failed ({name})")


def close_quietly(sessions: list[Session]) -> None:
    for session in sessions:
        with contextlib.suppress(PKCS11Error):
            session.close()
