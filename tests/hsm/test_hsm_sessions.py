"""Worker sessions (:mod:`hsm.connection`): lent in the order they were asked for, and a session retired
after an error is closed only once no key object made in it can be in use.

Closing a session destroys the session objects made in it — a key unwrapped in one worker session is used
from all of them — so :meth:`hsm.connection.Connection.retire` keeps a session that saw an error until no
use of any key runs (:meth:`hsm.object_uses.ObjectUses.quiet`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Session
from pkcs11.exceptions import MechanismInvalid

from hsm import Pkcs11KeyStore, Token
from hsm.connection import SessionPool
from hsm.errors import HsmError, HsmUnavailable
from hsm.mechanisms import KeyEntry, sign
from hsm.token import StaleHandle
from hsm.wrapped_keys import WrappedKeys
from hsm.wrapping import create_kek
from tests.hsm.threads_and_blobs import MemoryBlobs, in_thread

WAIT = 10.0  # seconds any step may take on a busy machine before it counts as hung
NO_SUCH_HANDLE = 0x7FFFFFF0


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- the pool's order ------------------------------------------------------------------------------


def test_a_session_given_back_goes_to_the_waiting_thread_not_to_the_giver_asking_again() -> None:
    pool = SessionPool(["only"])  # type: ignore[list-item]
    session = pool.take(1.0)
    order: list[str] = []
    waiter_has_it, release = threading.Event(), threading.Event()

    def waiter() -> None:
        got = pool.take(WAIT)
        order.append("waiter")
        waiter_has_it.set()
        assert release.wait(WAIT)
        pool.give(got)

    thread, errors = in_thread(waiter)
    _wait_until(lambda: pool.waiting == 1)
    pool.give(session)
    with pytest.raises(HsmUnavailable):  # asking again at once: the waiter was first
        pool.take(0.2)
    assert waiter_has_it.wait(WAIT)
    release.set()
    again = pool.take(WAIT)
    order.append("giver")
    thread.join(WAIT)
    assert errors == [] and order == ["waiter", "giver"] and again == "only"


def test_a_closed_pool_wakes_its_waiters_and_lends_nothing() -> None:
    pool = SessionPool(["only"])  # type: ignore[list-item]
    pool.take(1.0)
    thread, errors = in_thread(lambda: pool.take(WAIT))
    _wait_until(lambda: pool.waiting == 1)
    assert pool.close() == []
    thread.join(WAIT)
    assert not thread.is_alive() and len(errors) == 1 and type(errors[0]).__name__ == "Lost"


def test_threads_in_a_tight_loop_do_not_starve_another(make_config: Any) -> None:
    """Two threads sign in a loop over a pool of two sessions; a third thread's operations each get a
    session well within ``session_wait_s`` (before, it waited the full time and failed)."""
    token = Token.open(make_config(pool_size=2, session_wait_s=3.0))
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            token.run(lambda s: s.generate_random(32), op="busy")

    loops = [in_thread(busy) for _ in range(2)]
    try:
        time.sleep(0.05)
        for _ in range(20):
            token.run(lambda s: s.generate_random(16), op="third", retry=False)
    finally:
        stop.set()
        for thread, errors in loops:
            thread.join(WAIT)
            assert errors == []
        token.close()


# ---- retired sessions ------------------------------------------------------------------------------


@pytest.fixture
def one_session(make_config: Any) -> Iterator[tuple[Token, Pkcs11KeyStore, WrappedKeys]]:
    """A token connection with a single worker session (every key is made in it) and a store whose P-256
    keys are wrapped session objects."""
    token = Token.open(make_config(pool_size=1, session_wait_s=2.0))
    create_kek(token)
    keys = WrappedKeys(token, MemoryBlobs())
    keys.probe()
    yield token, Pkcs11KeyStore(token, wrapped=keys, mode="wrapped"), keys
    keys.close()
    token.close()


def _peer() -> bytes:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _refused(session: Session) -> None:
    raise MechanismInvalid()  # a token's refusal of an operation


def _fail_in_a_session(token: Token) -> None:
    """An operation the token refuses: its session is replaced (retired)."""
    with pytest.raises(HsmError):
        token.run(_refused, op="fail", retry=False)


def _held_use(token: Token, entry: KeyEntry) -> tuple[threading.Event, threading.Thread]:
    """A use of the key's object held open by another thread (a call in flight), until the event is set."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with token.using(entry.pair.private):
            inside.set()
            assert release.wait(WAIT)

    thread, _ = in_thread(hold)
    assert inside.wait(WAIT)
    return release, thread


def test_a_session_that_saw_an_error_is_closed_only_once_no_key_is_in_use(
    one_session: tuple[Token, Pkcs11KeyStore, WrappedKeys],
) -> None:
    token, store, keys = one_session
    peer = _peer()
    key = store.new_hpke_key(2)  # made in the connection's only session
    assert key.custody == "wrapped"  # type: ignore[attr-defined]
    first = store.dh_with(key.key_ref, peer)
    connection = token._conn
    assert connection is not None
    release, holder = _held_use(token, keys._cache[key.key_ref])

    _fail_in_a_session(token)  # the session the key was made in is retired, but a use is in flight ...
    assert len(connection.retired) == 1
    misses = keys.misses
    assert store.dh_with(key.key_ref, peer) == first
    assert keys.misses == misses  # ... so the key's object is still there: not unwrapped again

    release.set()
    holder.join(WAIT)
    _fail_in_a_session(token)  # no use now: both retired sessions are closed, and the key's object with them
    assert connection.retired == []
    assert store.dh_with(key.key_ref, peer) == first
    assert keys.misses == misses + 1  # unwrapped again from its blob


def test_retired_sessions_are_bounded_by_a_bounded_wait_for_the_uses(
    one_session: tuple[Token, Pkcs11KeyStore, WrappedKeys],
) -> None:
    """More retired sessions than the pool holds: the next retirement waits (``session_wait_s``) for the
    uses to end; a use that outlasts it leaves the sessions for later, and nothing fails but the operation
    that saw the error."""
    token, store, keys = one_session
    key = store.new_hpke_key(2)
    connection = token._conn
    assert connection is not None
    release, holder = _held_use(token, keys._cache[key.key_ref])
    for _ in range(3):
        _fail_in_a_session(token)
    assert len(connection.retired) == 3  # the use outlasted the wait
    uses = token._library.uses  # type: ignore[union-attr]

    def end_the_use_once_paused() -> None:
        _wait_until(lambda: uses._paused > 0)  # the retirement below waits for the uses ...
        release.set()  # ... and this one ends

    ender, ender_errors = in_thread(end_the_use_once_paused)
    _fail_in_a_session(token)  # waits, and closes all four once the use has ended
    holder.join(WAIT)
    ender.join(WAIT)
    assert ender_errors == [] and connection.retired == []
    assert store.dh_with(key.key_ref, _peer())


def test_a_stale_handle_keeps_the_session_and_the_keys_made_in_it(
    one_session: tuple[Token, Pkcs11KeyStore, WrappedKeys],
) -> None:
    """A stale handle is routine (a key evicted or deleted under a use): the session it was met in stays in
    the pool — usable from another thread (python-pkcs11's per-session operation lock is not left held by a
    failed sign) — and the keys made in it stay."""
    token, store, keys = one_session
    peer = _peer()
    key = store.new_hpke_key(2)
    first = store.dh_with(key.key_ref, peer)
    connection = token._conn
    assert connection is not None
    kind, form = keys._cache[key.key_ref].kind, keys._cache[key.key_ref].form
    with pytest.raises(StaleHandle):
        token.run(lambda s: sign(s, NO_SUCH_HANDLE, kind, form, b"m"), op="stale", retry=False)
    assert connection.retired == []
    misses = keys.misses
    answers: list[bytes] = []
    thread, errors = in_thread(lambda: answers.append(store.dh_with(key.key_ref, peer)))
    thread.join(WAIT)
    assert not thread.is_alive() and errors == [] and answers == [first]
    assert keys.misses == misses  # the key's object is still there
