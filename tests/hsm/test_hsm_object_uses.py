"""A key object is never destroyed while a call of this process uses it (:mod:`hsm.object_uses`).

SoftHSM 2.6.1 frees an object destroyed under a running ``C_DeriveKey``/``C_Sign`` of another thread and the
process dies (SIGSEGV): seen in a gateway whose request joined from a Welcome while a concurrent join from
the same Welcome consumed the KeyPackage and destroyed its init key; reproduced with one thread destroying a
key (wrapped or token object) while others derive with it. These tests hold a use open on purpose and show
the destruction waiting for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pkcs11 import Session

from hsm import Pkcs11KeyStore, Token
from hsm.errors import HsmError
from hsm.object_uses import ObjectUses
from hsm.wrapped_keys import WrappedKeys
from mls.errors import KeyStoreError

WAIT = 10.0  # seconds any step of these tests may take on a busy machine before it counts as hung


def _thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_destruction_waits_for_the_uses_and_keeps_new_ones_out() -> None:
    uses = ObjectUses()
    release, destroyed = threading.Event(), threading.Event()
    in_use = threading.Event()

    def user() -> None:
        with uses.use(7):
            in_use.set()
            assert release.wait(WAIT)

    first, first_errors = _thread(user)
    assert in_use.wait(WAIT)

    def destroyer() -> None:
        with uses.destroying(7, WAIT):
            destroyed.set()
            time.sleep(0.2)  # a use that arrives now waits for the destruction to finish

    second, second_errors = _thread(destroyer)
    time.sleep(0.2)
    assert not destroyed.is_set() and uses.in_use(7) == 1  # waits for the running use
    late_entered = threading.Event()

    def late_user() -> None:
        with uses.use(7):
            late_entered.set()

    third, third_errors = _thread(late_user)
    release.set()
    assert destroyed.wait(WAIT)
    assert not late_entered.is_set()  # kept out while the destruction runs ...
    for thread in (first, second, third):
        thread.join(WAIT)
    assert late_entered.is_set()  # ... and let in after it (it then meets a destroyed handle)
    assert first_errors == second_errors == third_errors == []
    assert uses.in_use(7) == 0


def test_a_use_that_does_not_end_makes_the_destruction_fail_and_leaves_the_handle_usable() -> None:
    uses = ObjectUses()
    with uses.use(3), pytest.raises(HsmError, match="still in use"), uses.destroying(3, 0.1):
        pytest.fail("destroyed under a use")
    with uses.use(3):  # not left doomed
        assert uses.in_use(3) == 1
    with uses.destroying(3, 0.1):
        pass
    with uses.use(4), uses.destroying(5, 0.1):  # other handles are not held up
        pass


@pytest.fixture(params=["wrapped", "token"])
def store(request: pytest.FixtureRequest, token: Token) -> Iterator[Pkcs11KeyStore]:
    blobs: dict[bytes, bytes] = {}

    class Blobs:
        def save(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None:
            blobs[key_ref] = blob

        def load(self, key_ref: bytes) -> bytes | None:
            return blobs.get(key_ref)

        def delete(self, key_ref: bytes) -> None:
            blobs.pop(key_ref, None)

    keys = WrappedKeys(token, Blobs())
    yield Pkcs11KeyStore(token, wrapped=keys, mode=request.param)
    keys.close()


def test_destroying_a_key_waits_for_the_call_that_uses_it(store: Pkcs11KeyStore, token: Token) -> None:
    """A key's use (the key store's own path for sign and DH) holds its object; a destroy from another
    thread waits until that call returned, then destroys the key."""
    key = store.new_hpke_key(2)  # P-256: a wrapped session object, or a token object
    ref = key.key_ref
    uses = token._library.uses  # type: ignore[union-attr]
    inside, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def hold(session: Session, entry: Any) -> None:
        seen.append(uses.in_use(entry.pair.private))
        inside.set()
        assert release.wait(WAIT)

    user, user_errors = _thread(lambda: store._use(ref, "dh", hold))
    assert inside.wait(WAIT)
    destroyer, destroy_errors = _thread(lambda: store.destroy(ref))
    time.sleep(0.3)
    assert destroyer.is_alive()  # waits for the use ...
    release.set()
    user.join(WAIT)
    destroyer.join(WAIT)
    assert not destroyer.is_alive() and user_errors == destroy_errors == []  # ... then destroys the key
    assert seen == [1]
    with pytest.raises(KeyStoreError):  # gone
        store.dh_with(ref, key.public_key)
