"""Token outages: fail fast with HsmUnavailable while the token is away, reconnect with backoff when it
is back."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hsm import HsmError, HsmUnavailable, Pkcs11KeyStore, Token, TokenConfig
from hsm.bootstrap import SoftHsmToken
from mls.crypto.cipher_suite import cipher_suite


def _token_directory(softhsm: SoftHsmToken) -> Path:
    [directory] = [p for p in softhsm.token_dir.iterdir() if p.is_dir()]
    return directory


def _until_ok(call: Callable[[], bytes], timeout: float) -> tuple[bytes, float]:
    start = time.monotonic()
    while True:
        try:
            return call(), time.monotonic() - start
        except HsmUnavailable:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.02)


def test_token_away_fails_fast_then_recovers(
    token: Token, keystore: Pkcs11KeyStore, softhsm: SoftHsmToken
) -> None:
    signer = keystore.new_signature_key(1)
    key = keystore.new_hpke_key(2)
    peer = cipher_suite(2).kem.generate()
    connections = token.status()["connections"]
    directory = _token_directory(softhsm)
    away = softhsm.directory / "away"  # out of the token directory: SoftHSM takes any subdirectory as a token
    directory.rename(away)
    try:
        start = time.monotonic()
        with pytest.raises(HsmUnavailable):
            signer.sign(b"during the outage")
        assert time.monotonic() - start < 2.0  # detected and reported promptly
        assert token.state == "down"
        start = time.monotonic()
        for _ in range(50):  # while backing off, calls do not touch the library
            with pytest.raises(HsmUnavailable):
                key.dh(peer.public_key)
        assert (time.monotonic() - start) / 50 < 0.02
        with pytest.raises(HsmUnavailable):
            keystore.new_signature_key(2)
    finally:
        away.rename(directory)
    signature, waited = _until_ok(lambda: signer.sign(b"after the outage"), timeout=10.0)
    assert cipher_suite(1).signature.verify(signer.public_key, b"after the outage", signature)
    assert waited < 2.0  # bounded by backoff_max_s (0.4 s) plus one reconnect
    assert key.dh(peer.public_key) == peer.dh(key.public_key)
    assert token.status()["state"] == "up" and token.status()["connections"] > connections


def test_lost_sessions_are_reopened_transparently(token: Token, keystore: Pkcs11KeyStore) -> None:
    """Another user of the library re-initialising it kills our sessions: the next call just works."""
    signer = keystore.new_signature_key(2)
    connections = token.status()["connections"]
    library = token._library
    assert library is not None
    library.reinitialize(library.generation)
    assert cipher_suite(2).signature.verify(signer.public_key, b"m", signer.sign(b"m"))
    assert token.status()["connections"] == connections + 1


def test_missing_module_is_unavailable_quickly() -> None:
    config = TokenConfig(
        "/nonexistent/libpkcs11.so",
        "x",
        pin_env="UNUSED",
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        startup_attempts=2,
    )
    start = time.monotonic()
    with pytest.raises(HsmUnavailable, match="cannot be loaded"):
        Token.open(config)
    assert time.monotonic() - start < 1.0
    lazy = Token(config)
    with pytest.raises(HsmUnavailable):
        lazy.run(lambda s: None, op="anything")
    assert lazy.state == "down"


def test_missing_token_label_is_unavailable(make_config: Callable[..., TokenConfig]) -> None:
    start = time.monotonic()
    with pytest.raises(HsmUnavailable, match="not found"):
        Token.open(dataclasses.replace(make_config(startup_attempts=2), token_label="no-such-token"))
    assert time.monotonic() - start < 2.0


_WRONG_PIN = textwrap.dedent(
    """
    import os, time
    from hsm import HsmError, HsmUnavailable, Token
    from hsm.bootstrap import find_softhsm_module
    from hsm.config import TokenConfig
    os.environ["WRONG_PIN"] = "not-the-pin"
    token = Token(TokenConfig(find_softhsm_module(), os.environ["LABEL"], pin_env="WRONG_PIN"))
    try:
        token.connect()
    except HsmUnavailable:
        print("unavailable")
    except HsmError as exc:
        assert "not-the-pin" not in str(exc)
        start = time.monotonic()
        try:
            token.run(lambda s: None, op="x")
        except HsmError as again:
            print(type(again).__name__, token.state, round(time.monotonic() - start, 3) < 0.05)
    """
)


def test_wrong_pin_is_refused_and_never_retried(softhsm: SoftHsmToken) -> None:
    # A separate process: in this one the session's token is already logged in (login is per process).
    env = {**os.environ, **softhsm.env(), "LABEL": softhsm.label}
    done = subprocess.run(
        [sys.executable, "-c", _WRONG_PIN], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["HsmError", "failed", "True"]


def test_refused_operations_are_hsm_errors_not_unavailable(token: Token) -> None:
    from pkcs11 import Attribute, ObjectClass

    with pytest.raises(HsmError) as caught:
        token.run(lambda s: s.create_object({Attribute.CLASS: ObjectClass.PRIVATE_KEY}), op="bad template")
    assert not isinstance(caught.value, HsmUnavailable)
    assert "bad template" in str(caught.value)
    assert token.state == "up"


_STARTER = textwrap.dedent(
    """
    import os
    from hsm import Pkcs11KeyStore, Token
    from hsm.bootstrap import find_softhsm_module
    from hsm.config import TokenConfig
    config = TokenConfig(find_softhsm_module(), os.environ["LABEL"], pin_env=os.environ["PIN_ENV"],
                         backoff_initial_s=0.05, backoff_max_s=0.5, startup_attempts=10)
    store = Pkcs11KeyStore(Token.open(config))
    signer = store.new_signature_key(1)
    signer.sign(b"started")
    store.destroy(signer.key_ref)
    print("ok")
    """
)


def test_several_processes_start_at_once_on_one_token(softhsm: SoftHsmToken, pin_env: str) -> None:
    """Concurrent start-up logins fail now and then on SoftHSM (hsm-facts gotcha 3): start-up retries."""
    env = {**os.environ, **softhsm.env(), "LABEL": softhsm.label, "PIN_ENV": pin_env}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _STARTER],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [out.strip() for out, _ in results] == ["ok"] * 6, [err[-500:] for _, err in results]


def test_forked_child_refuses_the_parents_token(token: Token, keystore: Pkcs11KeyStore) -> None:
    signer = keystore.new_signature_key(1)
    pid = os.fork()
    if pid == 0:  # child: the inherited token must refuse, not crash or corrupt
        try:
            signer.sign(b"from the child")
            code = 1
        except HsmError as exc:
            code = 0 if "fork" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cipher_suite(1).signature.verify(signer.public_key, b"parent", signer.sign(b"parent"))


def test_keys_stay_themselves_across_reinitialisation(
    token: Token, keystore: Pkcs11KeyStore, pin_env: str
) -> None:
    """Object handles are renumbered when the library is re-initialised; a cached handle must never end
    up naming another key (each signer must still sign with its own key, each DH use its own key)."""
    cs = cipher_suite(2)
    decoys = [keystore.new_signature_key(2) for _ in range(6)]  # other keys that stale numbers could name
    signers = [keystore.new_signature_key(2) for _ in range(4)]
    keys = [keystore.new_hpke_key(2) for _ in range(4)]
    library = token._library
    assert library is not None
    for _ in range(3):
        library.reinitialize(library.generation)
        # Someone else numbers every object anew (in the token's own order) before we notice.
        other = library.lib.get_token(token_label=token.config.token_label).open(user_pin=os.environ[pin_env])
        assert len(list(other.get_objects())) >= 28
        other.close()
        for signer in reversed(signers):
            assert cs.signature.verify(signer.public_key, b"mine", signer.sign(b"mine"))
        for key in keys:
            peer = cs.kem.generate()
            assert key.dh(peer.public_key) == peer.dh(key.public_key)
    for decoy in decoys:
        keystore.destroy(decoy.key_ref)


def test_handles_from_an_earlier_connection_are_never_used(token: Token) -> None:
    """The guard behind the test above: an operation pinned to an old connection does not run at all."""
    from hsm.token import StaleHandle

    generation = token.generation
    library = token._library
    assert library is not None
    library.reinitialize(library.generation)
    called: list[int] = []
    with pytest.raises(StaleHandle):
        token.run(lambda s: called.append(1), op="pinned", generation=generation)
    assert called == [] and token.generation != generation
    token.run(lambda s: called.append(2), op="pinned", generation=token.generation)
    assert called == [2]
