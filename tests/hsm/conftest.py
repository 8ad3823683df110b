"""One throwaway SoftHSM2 token per test session, in a temporary directory with its own SOFTHSM2_CONF.

Nothing is skipped: without SoftHSM2 the tests *fail*, because the project's install step
(``deploy/bootstrap.sh``) installs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hsm import Pkcs11KeyStore, Token, TokenConfig
from hsm.bootstrap import SOFTHSM_MODULE_CANDIDATES, SoftHsmToken, init_softhsm_token

PIN_ENV = "MLSGW_TEST_HSM_PIN"
LABEL = "mlsgw-test"


def _require_softhsm() -> None:
    if shutil.which("softhsm2-util") is None or not any(Path(p).is_file() for p in SOFTHSM_MODULE_CANDIDATES):
        pytest.fail(
            "SoftHSM2 is not installed (softhsm2-util / libsofthsm2.so missing): run deploy/bootstrap.sh, "
            "or `apt-get install softhsm2`",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """The session's token. SOFTHSM2_CONF is process-wide: it points at this token until the session ends."""
    _require_softhsm()
    pin, so_pin = secrets.token_hex(6), secrets.token_hex(6)
    made = init_softhsm_token(tmp_path_factory.mktemp("softhsm"), label=LABEL, pin=pin, so_pin=so_pin)
    saved = {name: os.environ.get(name) for name in ("SOFTHSM2_CONF", PIN_ENV)}
    made.activate()
    os.environ[PIN_ENV] = pin
    yield made
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _token_config(softhsm: SoftHsmToken, **overrides: object) -> TokenConfig:
    """The test token's config: short backoff so outage tests see a reconnect quickly."""
    settings: dict[str, object] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.4, "session_wait_s": 5.0}
    settings.update(overrides)
    return softhsm.token_config(pin_env=PIN_ENV, **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pin_env(softhsm: SoftHsmToken) -> str:
    """Name of the environment variable holding the session token's PIN."""
    return PIN_ENV


@pytest.fixture(scope="session")
def make_config(softhsm: SoftHsmToken) -> Callable[..., TokenConfig]:
    """``make_config(**overrides)`` → a TokenConfig for the session's token."""
    return lambda **overrides: _token_config(softhsm, **overrides)


@pytest.fixture(scope="session")
def token(softhsm: SoftHsmToken) -> Iterator[Token]:
    opened = Token.open(_token_config(softhsm))
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def keystore(token: Token) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(token)
