"""Fixtures for the end-to-end tests: real ``mls-gateway serve`` processes driven only over HTTP.

``gateway_factory`` makes servers on fresh data folders (``init --json`` first, for the admin token;
then ``serve`` on a free local port, ready once ``/healthz`` answers); every server it made is killed at
teardown. ``ts_mls_peer`` is one ts-mls peer process (tests/interop) for a non-hosted group member.

Stores (issue 15): a module or test marked ``both_stores`` runs once on SQLite and once on PostgreSQL (the
``store_kind`` fixture, module-scoped); everything else runs on SQLite. On PostgreSQL every server
``gateway_factory`` makes gets a new database of the session's throw-away cluster, and ``shared_gateway``
is one server for the whole session on one database (a second session-wide gateway, so the PostgreSQL
runs cost one start, not one per module); ``store_env`` gives tests that build a server themselves the
environment of a new store. :mod:`tests.gateway.stores` reaches into either database.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop.ts_mls_peer import INTEROP_DIR, TsMlsPeer
from tests.postgres_cluster import PostgresCluster, fresh_database

from ..gateway_fuzz.harness import Gateway, running_gateway
from .gwclient import GatewayServer
from .stores import STORES

ServerFactory = Callable[[], GatewayServer]
#: The environment of a new, empty store for one server (``{}`` on SQLite: the data folder's file).
StoreEnv = Callable[[], dict[str, str]]

_databases = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_stores: run on SQLite and on PostgreSQL (fixture store_kind)")
    config.addinivalue_line(
        "markers", "sqlite_only(reason): in a both_stores module, a test that runs on SQLite only (why)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``both_stores`` tests get the ``store_kind`` fixture parametrised over both stores, per module; a
    ``sqlite_only`` one among them over SQLite alone (sharing the module's SQLite servers)."""
    if "store_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        only = metafunc.definition.get_closest_marker("sqlite_only")
        if only is not None and not only.args:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: sqlite_only needs a reason")
        stores = STORES[:1] if only is not None else STORES
        metafunc.parametrize("store_kind", stores, indirect=True, scope="module")


@pytest.fixture(scope="module")
def store_kind(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgresql"``: the store the module's servers run on (SQLite unless marked)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="module")
def store_env(store_kind: str, request: pytest.FixtureRequest) -> StoreEnv:
    """Makes the environment of a new, empty store of the module's kind for one server."""
    if store_kind == "sqlite":
        return dict
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return lambda: {"MLSGW_DATABASE": fresh_database(cluster, f"e2e{next(_databases)}")}


@contextmanager
def _servers(folder: Path, env: StoreEnv = dict) -> Iterator[ServerFactory]:
    servers: list[GatewayServer] = []

    def make() -> GatewayServer:
        server = GatewayServer(folder / f"gw{len(servers)}", env=env())
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def gateway_factory(tmp_path: Path, store_env: StoreEnv) -> Iterator[ServerFactory]:
    """Makes servers on fresh data folders (and fresh stores) under the test's tmp_path; all are killed
    at teardown."""
    with _servers(tmp_path, store_env) as make:
        yield make


@pytest.fixture
def gateway(gateway_factory: ServerFactory) -> GatewayServer:
    """A running server of its own for one test (tests that restart or kill it)."""
    return gateway_factory()


@pytest.fixture(scope="session")
def postgres_shared_gateway(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """One running server on PostgreSQL for the whole session (one database of the session's cluster)."""
    env = {"MLSGW_DATABASE": fresh_database(postgres_cluster, "shared_gateway")}
    with _servers(tmp_path_factory.mktemp("gateway-postgresql"), lambda: env) as make:
        yield make()


@pytest.fixture(scope="module")
def shared_gateway(
    store_kind: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayServer]:
    """One running server for a whole module (tests that only add state of their own to it); on
    PostgreSQL the session's one."""
    if store_kind == "postgresql":
        yield request.getfixturevalue("postgres_shared_gateway")
        return
    with _servers(tmp_path_factory.mktemp("gateway")) as make:
        yield make()


@pytest.fixture(scope="session")
def ts_mls_peer() -> Iterator[TsMlsPeer]:
    """One ts-mls peer process (installing its Node packages first, a no-op when current)."""
    proc = subprocess.run(
        ["bash", str(INTEROP_DIR / "install.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"tests/interop/install.sh failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}",
            pytrace=False,
        )
    peer = TsMlsPeer()
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def in_process() -> Iterator[Gateway]:
    """The gateway's app in this process, one per module (its store, caches and metrics are observable)."""
    with running_gateway() as gateway:
        yield gateway
