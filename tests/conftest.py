"""Shared pytest configuration: where the shared test data lives, and the crypto backend the suite runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import native
from mls.crypto.backend import CryptoBackend, PythonBackend, get_backend, set_backend

#: ../shared next to the repository (tests read vectors from there, never from copies).
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def installed_crypto_backend() -> Iterator[CryptoBackend]:
    """The crypto backend the whole suite runs on, installed as an application installs it: the one
    ``$MLS_CRYPTO_BACKEND`` names (``python`` or ``native``), else the native one when it is built."""
    previous = get_backend()
    backend = native.choose_backend(None, PythonBackend())
    set_backend(backend)
    yield backend
    set_backend(previous)
