"""Leases for background work (gateway.leases): two stores on one SQLite database contend, as two gateway
processes do. Exactly one holds each lease; a holder that stops renewing loses it after the TTL; a
released lease is taken at once; the clock margin; a background task runs only in the holder."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.leases import LEASED_TASKS, LeaseKeeper, run_while_held
from gateway.sqlite_store import SqliteStore

TTL = 0.4
MARGIN = 0.05


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    a, b = SqliteStore(tmp_path / "gw.sqlite3"), SqliteStore(tmp_path / "gw.sqlite3")
    yield a, b
    a.close()
    b.close()


def keeper(store: SqliteStore, **kw: object) -> LeaseKeeper:
    return LeaseKeeper(store, ttl_s=TTL, margin_s=MARGIN, **kw)  # type: ignore[arg-type]


def wait_until(cond: Callable[[], bool], bound_s: float = 20.0) -> bool:
    """Poll ``cond`` until it holds (a generous bound, never an expected latency)."""
    deadline = time.monotonic() + bound_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_exactly_one_holder_of_each_lease(stores: tuple[SqliteStore, SqliteStore]) -> None:
    a, b = keeper(stores[0]), keeper(stores[1])
    assert a.holder != b.holder
    got_a, got_b = a.renew(), b.renew()
    for name in LEASED_TASKS:
        assert got_a[name] and not got_b[name]
        assert a.held(name) and not b.held(name)
    # Renewals keep it where it is, whoever renews first.
    for _ in range(3):
        assert not any(b.renew().values())
        assert all(a.renew().values())
    with stores[1].read_transaction() as tx:
        rows = tx.list_leases()
    assert sorted(r.name for r in rows) == sorted(LEASED_TASKS)
    assert {r.holder for r in rows} == {a.holder}


def test_a_holder_that_stops_renewing_loses_the_lease_after_the_ttl(
    stores: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = keeper(stores[0]), keeper(stores[1])
    started = time.monotonic()  # before a's renewal: its expiry counts from the clock read it starts with
    a.renew()
    assert not any(b.renew().values())  # a holds it: b cannot take it before the TTL
    # a stops renewing (as after kill -9): its own view lapses, and b takes every lease.
    assert wait_until(lambda: all(b.renew().values()))
    assert time.monotonic() - started >= TTL  # never before the TTL (a lower bound, not a latency)
    assert not any(a.held(n) for n in LEASED_TASKS)
    assert not any(a.renew().values())  # the old holder cannot take it back while b renews


def test_a_released_lease_is_taken_at_once(stores: tuple[SqliteStore, SqliteStore]) -> None:
    a, b = LeaseKeeper(stores[0], ttl_s=3600, margin_s=1), LeaseKeeper(stores[1], ttl_s=3600, margin_s=1)
    a.renew()
    assert not any(b.renew().values())
    a.release()
    assert not any(a.held(n) for n in LEASED_TASKS)
    assert all(b.renew().values())


def test_the_clock_margin(stores: tuple[SqliteStore, SqliteStore]) -> None:
    """A contender whose clock is ahead by less than the margin cannot take a lease its holder still
    counts as valid; one past ``expires_at + margin`` on its own clock can."""
    now = time.time()
    a = LeaseKeeper(stores[0], ["x"], ttl_s=10, margin_s=2, wall=lambda: now)
    assert a.renew()["x"]
    ahead = LeaseKeeper(stores[1], ["x"], ttl_s=10, margin_s=2, wall=lambda: now + 10 + 1.9)
    assert not ahead.renew()["x"]  # within the margin: the holder may still be acting
    later = LeaseKeeper(stores[1], ["x"], ttl_s=10, margin_s=2, wall=lambda: now + 10 + 2.1)
    assert later.renew()["x"]
    with stores[0].read_transaction() as tx:
        (row,) = tx.list_leases()
    assert row.holder == later.holder and row.acquired_at == pytest.approx(now + 12.1)


def test_a_background_task_runs_only_in_the_holder(stores: tuple[SqliteStore, SqliteStore]) -> None:
    """Two keepers in one loop, each gating a task by the same lease: only the holder's runs; when the
    holder stops renewing (its keeper cancelled, nothing released), the other's starts after the TTL."""

    async def scenario() -> None:
        a, b = keeper(stores[0], names=["job"]), keeper(stores[1], names=["job"])
        runs = {"a": 0, "b": 0}

        def body(who: str) -> Callable[[], Awaitable[None]]:
            async def work() -> None:
                while True:
                    runs[who] += 1
                    await asyncio.sleep(0.01)

            return work

        pools = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
        a.renew()  # a first
        keep_a = asyncio.create_task(a.run(pools[0]))
        keep_b = asyncio.create_task(b.run(pools[1]))
        gated = [
            asyncio.create_task(run_while_held(a, "job", body("a"))),
            asyncio.create_task(run_while_held(b, "job", body("b"))),
        ]
        deadline = time.monotonic() + 20
        while runs["a"] < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert runs["a"] >= 20 and runs["b"] == 0
        keep_a.cancel()  # a stops renewing
        while runs["b"] == 0 and time.monotonic() < deadline + 20:
            await asyncio.sleep(0.02)
        assert runs["b"] > 0
        await asyncio.sleep(0.1)
        frozen = runs["a"]
        await asyncio.sleep(0.2)
        assert runs["a"] == frozen  # a's task was cancelled when its lease lapsed
        for t in [keep_b, *gated]:
            t.cancel()
        await asyncio.gather(keep_a, keep_b, *gated, return_exceptions=True)
        for p in pools:
            p.shutdown()

    asyncio.run(scenario())


def test_a_task_that_fails_is_started_again_while_the_lease_is_held(
    stores: tuple[SqliteStore, SqliteStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A gated task that raises is logged (its error's type, not its text) and started again after a
    back-off; the process keeps the lease and the work goes on (before: the task ended for good while the
    lease was still renewed, so no process did the work)."""

    async def scenario() -> None:
        a = LeaseKeeper(stores[0], ["job"], ttl_s=10.0, margin_s=MARGIN)  # held throughout
        starts: list[float] = []
        working = asyncio.Event()

        async def body() -> None:
            starts.append(time.monotonic())
            if len(starts) <= 3:
                raise RuntimeError("secret-in-the-message")
            working.set()
            await asyncio.sleep(3600)

        pool = ThreadPoolExecutor(1)
        keep = asyncio.create_task(a.run(pool))
        gated = asyncio.create_task(run_while_held(a, "job", body, restart_s=0.05, restart_max_s=0.4))
        await asyncio.wait_for(working.wait(), 20)
        assert not gated.done() and a.held("job")
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert len(gaps) == 3 and all(gap >= 0.05 for gap in gaps)  # a back-off between two starts
        assert sum(gaps) >= 0.05 + 0.1 + 0.2  # doubling (a failure later than 0.4 s would reset it)
        for t in (keep, gated):
            t.cancel()
        await asyncio.gather(keep, gated, return_exceptions=True)
        pool.shutdown()

    with caplog.at_level("INFO", logger="mls_gateway"):
        asyncio.run(scenario())
    failed = [r for r in caplog.records if getattr(r, "event", None) == "lease_task_failed"]
    assert len(failed) == 3 and "RuntimeError" in failed[0].getMessage()
    assert all("secret-in-the-message" not in r.getMessage() for r in caplog.records)
