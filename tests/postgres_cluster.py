"""A throw-away PostgreSQL cluster for the tests and benchmarks: Debian's PostgreSQL 15 server binaries,
``initdb`` into a temporary folder and ``pg_ctl`` on a free port, removed afterwards.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` system user (which
Debian's ``postgresql-15`` package creates) and every server command runs as that user; as any other user
it runs as that user. The server listens on 127.0.0.1 and a Unix socket in its own folder, with ``trust``
authentication for local connections only: nothing outside the machine can reach it, and it lives as
long as the test session. :meth:`PostgresCluster.restart` and :meth:`PostgresCluster.kill` let a test cut
the database from under a running gateway (the chaos and connection-loss tests).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .ports import free_port

#: Where Debian's ``postgresql-15`` package puts the server binaries.
PG_BIN = Path(os.environ.get("MLSGW_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: The role and database the gateway uses in a test cluster.
DB_USER = "mlsgw"
DB_NAME = "mlsgw"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the cluster would not start."""


def _run_as() -> list[str]:
    """The command prefix that runs a server command as an unprivileged user (``[]`` when not root)."""
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")  # KeyError: the postgresql package is not installed
    return ["runuser", "-u", "postgres", "--"]


class PostgresCluster:
    """One PostgreSQL cluster in a temporary folder (see the module docstring)."""

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        if not (PG_BIN / "initdb").exists():
            raise PostgresUnavailable(f"PostgreSQL server binaries not found in {PG_BIN}")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mlsgw-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "server.log"
        self._prefix = _run_as()
        #: Extra server settings (``-c name=value``), e.g. ``max_connections``.
        self.settings = {"max_connections": "200", **(settings or {})}
        self.socket_dir.mkdir()
        if self._prefix:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")

    @property
    def dsn(self) -> str:
        """The URL a gateway connects with (``MLSGW_DATABASE``)."""
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def _server(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._prefix, *args], capture_output=True, text=True, check=check, timeout=120
        )

    def create(self) -> PostgresCluster:
        """``initdb``, start, and create the gateway's role and database."""
        try:
            self._server(
                str(PG_BIN / "initdb"), "-D", str(self.data), "-U", DB_USER, "--auth=trust",
                "--encoding=UTF8", "--no-instructions",
            )  # fmt: skip
        except subprocess.CalledProcessError as e:
            raise PostgresUnavailable(f"initdb failed: {e.stderr.strip()}") from None
        self.start()
        self._server(
            str(PG_BIN / "createdb"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", DB_USER, DB_NAME
        )
        return self

    def start(self) -> None:
        options = " ".join(
            [f"-p {self.port}", f"-k {self.socket_dir}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {k}={v}" for k, v in self.settings.items()]
        )
        result = self._server(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", "60", "start", check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed: {result.stderr.strip()} {self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: ``smart``, ``fast`` or ``immediate`` — the last is a crash)."""
        self._server(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """Crash the server (``immediate``: no checkpoint, its backends gone at once); :meth:`start` then
        runs crash recovery."""
        self.stop("immediate")

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster(**kwargs: dict[str, str]) -> Iterator[PostgresCluster]:
    """A created cluster for the length of the block, destroyed afterwards."""
    cluster = PostgresCluster(**kwargs)
    try:
        yield cluster.create()
    finally:
        cluster.destroy()


def fresh_database(cluster: PostgresCluster, name: str) -> str:
    """A new empty database in ``cluster`` (one per test that needs a clean store); its URL."""
    subprocess.run(
        [*cluster._prefix, str(PG_BIN / "createdb"), "-h", str(cluster.socket_dir), "-p", str(cluster.port),
         "-U", DB_USER, name],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return f"postgresql://{DB_USER}@127.0.0.1:{cluster.port}/{name}"
