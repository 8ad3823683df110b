"""Helpers of the mailbox and inbox tests (tests/gateway/test_mailboxes.py).

:class:`Writer` plays the group service's writing side on a gateway's database (its SQLite file or its
PostgreSQL database), from the test process, with the store's own writer methods
(``append_log_entries``, ``add_mailbox_items``, ``add_inbox_event``): clients and their tokens, log
entries and the mailbox items that point at them (WAL mode lets a second process write to SQLite).
:class:`Local` is a gateway app served in this process (``aiohttp.test_utils``), for what needs the
server's own objects: its envelope (inbox events are sealed) and its wake-ups (a writer in the same
process notifies the waiters).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app, open_runtime
from gateway.auth import new_id, new_token, token_hash
from gateway.cli import initialise
from gateway.config import GatewayConfig, HsmSettings
from gateway.context import Runtime
from gateway.delivery_store import LogEntry
from gateway.inbox_events import seal_event
from gateway.postgres_store import PostgresStore
from gateway.sqlite_store import SqliteStore
from hsm.bootstrap import find_softhsm_module

from .stores import Database, connect, open_store


@dataclass
class Writer:
    """Writes clients, tokens, log entries and mailbox items into a gateway's database."""

    #: The database: a SQLite file or a ``postgresql://`` URL (:func:`stores.server_database`).
    path: Path | str
    store: SqliteStore | PostgresStore = field(init=False)
    seqs: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = open_store(self.path)

    def close(self) -> None:
        self.store.close()

    def add_client(self, tenant_id: str) -> tuple[str, str]:
        """A client of the tenant and its bearer token (what ``POST /v1/clients`` makes)."""
        client_id, token = new_id("cli"), new_token()
        with self._sql() as conn:
            conn.execute(
                "INSERT INTO clients (client_id, tenant_id, name, created_at) VALUES (?, ?, ?, ?)",
                (client_id, tenant_id, "device", time.time()),
            )
        with self.store.transaction() as tx:
            tx.add_token(new_id("tok"), tenant_id, token_hash(token), client_id)
        return client_id, token

    def deliver(
        self, tenant_id: str, client_ids: list[str], group_id: bytes, kind: str, message: bytes
    ) -> int:
        """Append a log entry to the group and put it in the clients' mailboxes; returns its seq. A
        ``welcome`` is a commit entry whose Welcome is ``message``."""
        seq = self.seqs.get(group_id, 0) + 1
        self.seqs[group_id] = seq
        if kind == "welcome":
            entry = LogEntry(seq, 0, "commit", None, b"commit-" + message, message)
        else:
            entry = LogEntry(seq, 0, kind, None, message)
        with self.store.transaction() as tx:
            tx.append_log_entries(tenant_id, group_id, [entry])
            tx.add_mailbox_items(tenant_id, client_ids, group_id, seq, kind)
        return seq

    def backdate(self, table: str, owner_column: str, owner: str, seconds: float) -> None:
        """Make the owner's rows of ``mailbox`` or ``inbox`` look ``seconds`` older."""
        assert table in ("mailbox", "inbox") and owner_column in ("client_id", "identity_id")
        with self._sql() as conn:
            conn.execute(
                f"UPDATE {table} SET created_at = created_at - ? WHERE {owner_column} = ?", (seconds, owner)
            )

    def _sql(self) -> AbstractContextManager[Database]:
        return connect(self.path)


@dataclass
class Local:
    """A gateway app served in this process, on a loop of its own (tests drive it synchronously)."""

    loop: asyncio.AbstractEventLoop
    client: TestClient[Any, Any]
    runtime: Runtime
    admin_token: str
    writer: Writer

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
        return self.run(self.acall(method, path, token, body))  # type: ignore[no-any-return]

    async def acall(self, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"  # else 415 (docs/api.md "Conventions")
        async with self.client.request(method, path, data=data, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None)

    def tenant(self) -> tuple[str, str]:
        status, made = self.call("POST", "/v1/tenants", self.admin_token, {"name": "t"})
        assert status == 201, made
        return made["tenant_id"], made["token"]

    def identity(self, token: str) -> str:
        status, made = self.call("POST", "/v1/identities", token, {"name": "bot"})
        assert status == 201, made
        return str(made["identity_id"])

    def add_event(self, identity_id: str, group_id: bytes, seq: int, event: dict[str, Any]) -> int:
        """What the group service does for a hosted member: seal, store, then wake the waiters."""
        sealed = seal_event(self.runtime.envelope, identity_id, group_id, seq, event)
        with self.runtime.store.transaction() as tx:
            cursor = tx.add_inbox_event(identity_id, group_id, seq, sealed)
        self.runtime.service.wakeups.notify([identity_id])
        return cursor


@contextmanager
def local_gateway(directory: Path) -> Iterator[Local]:
    """``mls-gateway init`` + the app of ``serve``, in this process (as tests/gateway_fuzz/harness.py)."""
    saved = os.environ.get("SOFTHSM2_CONF")
    hsm = HsmSettings(token_label=f"mlsgw-mbx-{secrets.token_hex(4)}")
    config = GatewayConfig(data_dir=directory / "data", worker_threads=4, hsm=hsm)
    report = initialise(config)
    runtime = open_runtime(config, find_softhsm_module())
    loop = asyncio.new_event_loop()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(runtime)), loop=loop)
    loop.run_until_complete(client.start_server())
    writer = Writer(config.database_path)
    try:
        yield Local(loop, client, runtime, report["admin_token"], writer)
    finally:
        writer.close()
        loop.run_until_complete(client.close())
        loop.close()
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved
