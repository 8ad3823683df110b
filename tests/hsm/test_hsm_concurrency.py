"""Mixed sign / derive / generate / destroy from several threads at once: zero errors, no leaked objects.

Runs for ``MLSGW_HSM_STRESS_SECONDS`` seconds (default 3; set e.g. 120 for a soak run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm import Pkcs11KeyStore, Token
from hsm.bootstrap import SoftHsmToken
from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, Signer

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


# Run in a process of its own: a C_GenerateKeyPair that a re-initialisation cuts short can leave SoftHSM
# with an empty session object (a private key with default attributes: no ID, not sensitive), which would
# otherwise stay in this process's library and show up in other tests' object listings.
_REINIT_UNDER_LOAD = textwrap.dedent(
    """
    import dataclasses, json, os, sys, threading, time
    sys.path.insert(0, os.environ["HSM_TESTS_DIR"])
    from test_hsm_concurrency import SUITES, THREADS, _Tally, _worker
    from hsm import Pkcs11KeyStore, Token
    from hsm.config import TokenConfig

    token = Token.open(TokenConfig(**json.loads(os.environ["TOKEN_CONFIG"])))
    store = Pkcs11KeyStore(token)
    keys = {s: (store.new_signature_key(s), store.new_hpke_key(s)) for s in SUITES}
    library = token._library
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
    reconnected = token.status()["connections"] > connections
    for signer, key in keys.values():
        store.destroy(signer.key_ref)
        store.destroy(key.key_ref)
    token.close()
    print(json.dumps({"errors": tally.errors, "ops": sum(tally.ops.values()), "reconnected": reconnected}))
    """
)


def test_library_reinitialised_under_load_loses_no_operation(make_config: Any, softhsm: SoftHsmToken) -> None:
    """Sessions die under four busy threads (library re-initialised): every call still succeeds."""
    env = {
        **os.environ,
        **softhsm.env(),
        "HSM_TESTS_DIR": str(Path(__file__).resolve().parent),
        "TOKEN_CONFIG": json.dumps(dataclasses.asdict(make_config())),
    }
    done = subprocess.run([sys.executable, "-c", _REINIT_UNDER_LOAD], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # SoftHSM 2.6 defect, seen in about 1 run in 20: after a re-initialisation, with the new generation in
    # use and none in flight, a C_GenerateKeyPair on one thread is answered CKR_TEMPLATE_INCONSISTENT (the
    # same race leaves the empty session object described above). The token refused one operation; it was
    # not lost to the re-initialisation, which is what this test is about. Anything else fails the test.
    softhsm_race = [e for e in result["errors"] if e.startswith("generate+destroy ") and "(TemplateInconsistent)" in e]
    assert len(softhsm_race) <= 1 and result["errors"] == softhsm_race, result["errors"]
    assert result["ops"] > 0
    assert result["reconnected"]  # one reconnect may cover two re-initialisations


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
