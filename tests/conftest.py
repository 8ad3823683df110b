"""Shared pytest configuration: where the shared test data lives, the crypto backend the suite runs on, and
how ``./test.sh`` splits the suite between its test processes (pytest-xdist)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import native
from mls.crypto.backend import CryptoBackend, PythonBackend, get_backend, set_backend

from .postgres_cluster import PostgresCluster, fresh_database, throwaway_cluster

#: ../shared next to the repository (tests read vectors from there, never from copies).
SHARED = Path(__file__).resolve().parents[2] / "shared"


#: Folders whose tests run in one test process, one after the other, in their order: ``tests/hsm`` shares one
#: SoftHSM2 token per process (SOFTHSM2_CONF is process-wide, and a test elsewhere that opens a token of its
#: own in between re-initialises the library on its configuration); ``tests/gateway_fuzz`` shares one
#: in-process gateway and ends with the test that checks it still works after all the fuzzing.
ONE_PROCESS_FOLDERS = ("hsm", "gateway_fuzz")


def work_unit(nodeid: str) -> str:
    """What ``./test.sh`` hands whole to one test process: the test's file, or its folder for
    :data:`ONE_PROCESS_FOLDERS` — module (package) fixtures are made once, and nothing of another unit runs
    in between."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 and parts[1] in ONE_PROCESS_FOLDERS else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's ``--dist loadfile`` with :func:`work_unit` as the unit."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)


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
