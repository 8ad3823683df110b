"""A connection to one token (PKCS#11): its login session and a pool of worker sessions.

:class:`hsm.token.Token` opens one :class:`Connection` at a time and replaces it when the token is lost or
the library re-initialised; each operation borrows a worker session from the :class:`SessionPool`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pkcs11 import PKCS11Error
from pkcs11.types import Session
from pkcs11.types import Token as P11Token

from .config import TokenConfig
from .cryptoki import PIN_ERRORS, Library
from .errors import HsmError, HsmUnavailable


class Lost(Exception):
    """The connection an operation ran on (``conn``, once known) is gone."""

    conn: Connection | None = None


class SessionPool:
    """Worker sessions lent to one operation at a time."""

    def __init__(self, sessions: list[Session]) -> None:
        self.size = len(sessions)
        self._free = list(sessions)
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._waiting = 0

    def take(self, timeout: float) -> Session:
        with self._cond:
            if self._free and not self._closed:
                return self._free.pop()
            self._waiting += 1
            try:
                if not self._cond.wait_for(lambda: self._free or self._closed, timeout):
                    raise HsmUnavailable(f"no free token session within {timeout:g} s")
            finally:
                self._waiting -= 1
            if self._closed:
                raise Lost
            return self._free.pop()

    @property
    def in_use(self) -> int:
        """Sessions lent out right now."""
        with self._cond:
            return 0 if self._closed else self.size - len(self._free)

    def give(self, session: Session) -> None:
        with self._cond:
            if not self._closed:
                self._free.append(session)
                if self._waiting:
                    self._cond.notify()

    def close(self) -> list[Session]:
        """Refuse further loans; returns the idle sessions (busy ones are dropped when given back)."""
        with self._cond:
            self._closed = True
            idle, self._free = self._free, []
            self._cond.notify_all()
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

    def close(self, session_wait_s: float) -> None:
        """Close the pool and release the login; idle sessions are closed only if the library was not
        re-initialised since (their numbers may name a newer connection's sessions by then)."""
        idle = self.pool.close()
        gate = self.library.gate
        try:
            gate.enter(session_wait_s)
        except HsmError:
            idle = []  # cannot tell whether they are still this generation's: leave them
        else:
            # Checked and closed inside the gate: a session number of an older generation may name a new
            # connection's session (its login, even) by now, which must not be closed from here.
            try:
                if self.library.generation == self.library_generation:
                    close_quietly(idle)
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
