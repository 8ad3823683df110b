"""Shared pytest configuration: where the shared test data lives, and the crypto backend the suite runs on."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

import native
from mls.crypto.backend import CryptoBackend, PythonBackend, get_backend, set_backend

from .postgres_cluster import PostgresCluster, fresh_database, throwaway_cluster

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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL 15 cluster for the session (``tests.postgres_cluster``)."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database of the session's cluster, for one test."""
    return fresh_database(postgres_cluster, f"t{next(_database_numbers)}")


_database_numbers = itertools.count(1)
