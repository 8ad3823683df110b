"""Mixed sign / derive / generate / destroy from several threads at once: zero errors, no leaked objects.

Runs for ``MLSGW_HSM_STRESS_SECONDS`` seconds (default 3; set e.g. 120 for a soak run).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from hsm import Pkcs11KeyStore, Token
from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.keys import HpkePrivateKey, Signer

THREADS = 4
SECONDS = float(os.environ.get("MLSGW_HSM_STRESS_SECONDS", "3"))
SUITES = (1, 2, 3, 5, 7)


@dataclass
class _Tally:
    ops: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str) -> None:
        with self.lock:
            self.ops[op] += 1

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def _sign(signer: Signer, suite: int, rng: random.Random) -> bool:
    message = rng.randbytes(rng.randrange(1, 200))
    return cipher_suite(suite).signature.verify(signer.public_key, message, signer.sign(message))


def _derive(key: HpkePrivateKey, suite: int) -> bool:
    peer = cipher_suite(suite).kem.generate()
    return key.dh(peer.public_key) == peer.dh(key.public_key)


def _lifecycle(store: Pkcs11KeyStore, suite: int, rng: random.Random) -> bool:
    signer = store.new_signature_key(suite)
    key = store.new_hpke_key(suite)
    ok = _sign(signer, suite, rng) and _derive(key, suite)
    store.destroy(signer.key_ref)
    store.destroy(key.key_ref)
    return ok


def _worker(store: Pkcs11KeyStore, keys: dict[int, tuple[Signer, HpkePrivateKey]], seed: int, deadline: float, tally: _Tally) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        suite = rng.choice(SUITES)
        signer, key = keys[suite]
        roll = rng.random()
        op = "sign" if roll < 0.55 else "derive" if roll < 0.9 else "generate+destroy"
        try:
            ok = (
                _sign(signer, suite, rng) if op == "sign"
                else _derive(key, suite) if op == "derive"
                else _lifecycle(store, suite, rng)
            )
        except Exception as exc:  # every failure counts, whatever its type
            tally.fail(f"{op} suite {suite}: {type(exc).__name__}: {exc}")
            continue
        if ok:
            tally.add(op)
        else:
            tally.fail(f"{op} suite {suite}: wrong result")


def test_mixed_operations_on_four_threads(token: Token) -> None:
    assert token._library is not None and token._library.os_locking  # CKF_OS_LOCKING_OK accepted
    store = Pkcs11KeyStore(token)
    keys = {s: (store.new_signature_key(s), store.new_hpke_key(s)) for s in SUITES}
    refs_before = set(store.key_refs())
    tally = _Tally()
    deadline = time.monotonic() + SECONDS
    threads = [threading.Thread(target=_worker, args=(store, keys, i, deadline, tally)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SECONDS + 60)
    print("stress:", dict(tally.ops))
    assert tally.errors == []
    assert all(tally.ops[op] > 0 for op in ("sign", "derive", "generate+destroy")), tally.ops
    assert sum(tally.ops.values()) > 50 * SECONDS, tally.ops
    assert set(store.key_refs()) == refs_before  # every generated key was destroyed, nothing else was
    assert token.state == "up"


def test_library_reinitialised_under_load_loses_no_operation(token: Token) -> None:
    """Sessions die under four busy threads (library re-initialised): every call still succeeds."""
    store = Pkcs11KeyStore(token)
    keys = {s: (store.new_signature_key(s), store.new_hpke_key(s)) for s in SUITES}
    library = token._library
    assert library is not None
    connections = token.status()["connections"]
    tally = _Tally()
    deadline = time.monotonic() + 1.5
    threads = [threading.Thread(target=_worker, args=(store, keys, 100 + i, deadline, tally)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for _ in range(5):
        time.sleep(0.2)
        library.reinitialize(library.generation)
    for thread in threads:
        thread.join(timeout=60)
    assert tally.errors == []
    assert token.status()["connections"] > connections  # one reconnect may cover two re-initialisations


def test_status_reports_sessions_in_use(token) -> None:  # type: ignore[no-untyped-def]
    """The gateway's hsm_sessions_in_use gauge reads this: a lent session counts until it is given back."""
    import threading

    status = token.status()
    assert status["sessions_in_use"] == 0 and status["pool_size"] >= 1
    inside, release = threading.Event(), threading.Event()

    def hold(session: object) -> None:
        inside.set()
        release.wait(10)

    worker = threading.Thread(target=lambda: token.run(hold, op="test hold"))
    worker.start()
    assert inside.wait(10)
    try:
        assert token.status()["sessions_in_use"] == 1
    finally:
        release.set()
        worker.join(10)
    assert token.status()["sessions_in_use"] == 0
