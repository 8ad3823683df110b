"""How many store transactions one application message takes (docs/architecture.md "Hot path").

The app is the real one (``mls-gateway serve``'s, in process: real SoftHSM2, real SQLite); the store is
instrumented, not replaced: its ``read_transaction`` and ``transaction`` are counted (a read nested in
another read shares its snapshot and is not a transaction of its own). Counted are the transactions of
the requests — token check and handler — not those of the periodic background tasks (audit checkpoints,
KEK polls), which run on the same threads. The hosted-delivery worker is stopped, so that the receiver
applies the message within its own ``/process`` (the whole work of receiving it, in one request).

Figures (send; process of one message between two hosted members, reads + write transactions): before
the reads were merged 4 + 1; 10 + 3 — then 2 + 1 (token; identity, membership, PSKs, log head in one
read) and 6 + 1; now the process is 4 + 1 when the receiver applies the message within its request
(token; identity, log positions and its place in the log; head + membership + entries to apply, then the
write of the applied state; the membership and its recorded event — the answer itself writes nothing)
and 2 + 0 in the usual case, where the hosted-delivery worker applied it first (token; everything else
in one read). Since stop 27 the token check is no transaction on SQLite: a lookup, one ``SELECT`` in
autocommit (counted apart: one per request), so the reads are 1 + 1, 3 + 1 and 1 + 0. The tests fail if
any goes back up.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import threading
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from gateway.postgres_store import PostgresStore
from gateway.sqlite_store import SqliteStore

from ..gateway_fuzz.harness import Gateway, two_member_group

#: What one message may take: (reads, writes) of the send and of the process request.
SEND = (1, 1)
PROCESS = (3, 1)
#: A ``/process`` of a message the hosted-delivery worker already applied to the receiver.
PROCESS_APPLIED = (1, 0)
#: The hosted-delivery worker's delivery of one message to the receiver.
DELIVERY = (1, 1)

#: The functions a request's transactions run under: the handler in the worker pool, the token check.
_REQUEST_FRAMES = {("dispatch.py", "work"), ("tenants.py", "authenticate")}
#: The function the hosted-delivery worker runs a delivery with.
_WORKER_FRAMES = {("hosted_delivery.py", "advance_by_id")}


def _under(frames: set[tuple[str, str]]) -> bool:
    frame = sys._getframe(3)
    while frame is not None:
        code = frame.f_code
        if (Path(code.co_filename).name, code.co_name) in frames:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _kind() -> str | None:
    """Whose transaction this is: a request's, the hosted-delivery worker's, or neither."""
    return "" if _under(_REQUEST_FRAMES) else "worker " if _under(_WORKER_FRAMES) else None


class CountingStore:
    """Counts the transactions the requests (and the hosted-delivery worker) open on a real
    :class:`SqliteStore` (installed on the instance: every user of the store goes through it)."""

    def __init__(self, store: SqliteStore) -> None:
        self.counts: Counter[str] = Counter()
        self._read, self._write, self._lookup = store.read_transaction, store.transaction, store.lookup
        self._store = store
        store.read_transaction = self.read_transaction  # type: ignore[method-assign]
        store.transaction = self.transaction  # type: ignore[method-assign]
        store.lookup = self.lookup  # type: ignore[method-assign]

    def lookup(self) -> AbstractContextManager[Any]:
        if _kind() is not None:
            self.counts["lookup"] += 1
        return self._lookup()

    def read_transaction(self) -> AbstractContextManager[Any]:
        nested = self._store._connect(reader=True).in_transaction
        kind = _kind()
        if not nested and kind is not None:
            self.counts[kind + "read"] += 1
        return self._read()

    def transaction(self, group: bytes | None = None) -> AbstractContextManager[Any]:
        kind = _kind()
        if kind is not None:
            self.counts[kind + "write"] += 1
        return self._write(group)

    def take_worker(self) -> tuple[int, int]:
        return (self.counts.pop("worker read", 0), self.counts.pop("worker write", 0))

    def take(self) -> tuple[int, int]:
        """The requests' (reads, writes) since the last take; their lookups must be one per request."""
        lookups = self.counts.pop("lookup", 0)
        assert lookups == 1, f"{lookups} token lookups for one request"
        return (self.counts.pop("read", 0), self.counts.pop("write", 0))

    def uninstall(self) -> None:
        del self._store.read_transaction, self._store.transaction, self._store.lookup  # type: ignore[attr-defined]


def _stop_hosted_worker(gw: Gateway) -> None:
    for task in asyncio.all_tasks(gw.loop):
        if task.get_name() == "hosted-delivery":
            task.cancel()
    gw.loop.run_until_complete(asyncio.sleep(0))


def _count_one_message(gw: Gateway, *, worker_first: bool) -> tuple[tuple[int, int], ...]:
    """(reads, writes) of one message's send, of the hosted-delivery worker's delivery of it to the
    receiver (run here directly, the way the worker runs it, so that no wake-up or sweep adds a run; none
    unless ``worker_first``) and of the receiver's ``/process``, after three uncounted ones (states cached,
    data keys unwrapped)."""
    _stop_hosted_worker(gw)
    pair = two_member_group(gw)
    sender, receiver = pair.first_path, pair.second_path
    hosted = gw.runtime.service.hosted

    def deliver() -> None:
        if worker_first:
            hosted.advance_by_id(gw.world.tenant_id, pair.second, pair.group_id)

    counting = CountingStore(gw.runtime.store)
    try:
        for _ in range(3):
            sent = gw.ok("POST", sender + "/messages", {"data": base64.b64encode(b"warm").decode()})
            deliver()
            gw.ok("POST", receiver + "/process", {"message": sent["message"]})
        counting.counts.clear()
        sent = gw.ok("POST", sender + "/messages", {"data": base64.b64encode(b"counted").decode()})
        send = counting.take()
        deliver()
        delivery = counting.take_worker()
        got = gw.ok("POST", receiver + "/process", {"message": sent["message"]})
        process = counting.take()
    finally:
        counting.uninstall()
    assert got["kind"] == "application" and base64.b64decode(got["data"]) == b"counted"
    return send, delivery, process


def test_one_message_takes_few_transactions(in_process: Gateway) -> None:
    send, _, process = _count_one_message(in_process, worker_first=False)
    assert send[0] <= SEND[0] and send[1] <= SEND[1], f"send took {send} (reads, writes)"
    assert process[0] <= PROCESS[0] and process[1] <= PROCESS[1], f"process took {process} (reads, writes)"
    assert send[1] == 1 and process[1] >= 1  # the writes are real: the counting sees them


def test_a_message_the_worker_applied_takes_one_read(in_process: Gateway) -> None:
    """The usual case: the hosted-delivery worker applied the message before the receiver asks."""
    send, delivery, process = _count_one_message(in_process, worker_first=True)
    assert send[0] <= SEND[0] and send[1] == SEND[1], f"send took {send} (reads, writes)"
    assert delivery == DELIVERY, f"the worker's delivery took {delivery} (reads, writes)"
    assert process == PROCESS_APPLIED, f"process took {process} (reads, writes)"


def test_the_token_check_runs_on_the_event_loop_on_sqlite(in_process: Gateway) -> None:
    """On SQLite the event loop runs the token check's one local ``SELECT`` itself — no hand-off to a
    thread and back (docs/scaling.md); PostgreSQL's lookup is a round trip, kept off the loop."""
    service, threads = in_process.runtime.service, []
    authenticate = service.authenticate

    def recording(token: str) -> Any:
        threads.append(threading.get_ident())
        return authenticate(token)

    pair = two_member_group(in_process)
    service.authenticate = recording  # type: ignore[method-assign]
    try:
        in_process.ok("POST", pair.first_path + "/messages", {"data": base64.b64encode(b"x").decode()})
    finally:
        del service.authenticate
    assert threads == [threading.get_ident()], "the token check ran on another thread than the loop's"
    assert SqliteStore.lookup_is_local and not PostgresStore.lookup_is_local
