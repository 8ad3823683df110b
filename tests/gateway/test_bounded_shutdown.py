"""The graceful shutdown is bounded (gateway/http_server.py): a clean-up that awaits something that never
comes is given up after ``CLEANUP_BOUND_S`` with an error naming every pending task and where it waits,
and the exception that ended the serving (a port in use, SIGTERM's GracefulExit) still propagates."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway import http_server
from gateway.wakeups import wait_event


class StuckRunner:
    """A runner whose clean-up awaits a future nobody resolves (as the rare hang after start did)."""

    def __init__(self) -> None:
        self.cleaned = False

    async def cleanup(self) -> None:
        await asyncio.get_running_loop().create_future()
        self.cleaned = True


def test_a_stuck_cleanup_is_given_up_and_its_tasks_are_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(http_server, "CLEANUP_BOUND_S", 0.2)

    async def waiting_forever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        stuck = asyncio.create_task(waiting_forever(), name="stuck-background-task")
        try:
            await http_server._bounded_cleanup(StuckRunner())  # type: ignore[arg-type]
        finally:
            stuck.cancel()

    with caplog.at_level(logging.ERROR, logger="mls_gateway"):
        asyncio.run(asyncio.wait_for(main(), 10))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "did not finish within 0.2 s" in text and "waiting_forever" in text, text


def test_the_error_that_ended_serving_still_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "CLEANUP_BOUND_S", 0.2)

    async def serving() -> Any:
        try:
            raise OSError("address already in use")
        finally:
            await http_server._bounded_cleanup(StuckRunner())  # type: ignore[arg-type]

    with pytest.raises(OSError, match="address already in use"):
        asyncio.run(asyncio.wait_for(serving(), 10))


def test_a_cancellation_as_the_event_is_set_is_not_swallowed() -> None:
    """The cause of the hang: on Python 3.11 ``asyncio.wait_for(event.wait(), t)`` returns normally when
    the task is cancelled in the loop iteration that sets the event (CPython gh-86296), so a lease-gated
    task cancelled by the app's clean-up just as the first lease renewal published its change went on
    running, and the clean-up waited for it forever. ``wait_event`` (used by the lease keeper and the
    long-poll watches) raises the cancellation."""

    async def race() -> str:
        event = asyncio.Event()
        task = asyncio.create_task(wait_event(event, 10))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the task waits on the event
        event.set()
        task.cancel()  # in the same loop iteration
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "swallowed"

    assert asyncio.run(race()) == "cancelled"

    async def timeouts_and_sets() -> tuple[bool, bool]:
        quiet, rung = asyncio.Event(), asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, rung.set)
        return await wait_event(quiet, 0.05), await wait_event(rung, 10)

    assert asyncio.run(timeouts_and_sets()) == (False, True)


def test_a_lease_gated_task_cancelled_as_the_lease_is_taken_stops() -> None:
    """The lease keeper's ``wait_change`` at the moment of the first renewal: cancelling the waiting task
    ends it (before the fix it was the task the clean-up waited for)."""
    from gateway.leases import LeaseKeeper

    async def scenario() -> bool:
        keeper = LeaseKeeper.__new__(LeaseKeeper)  # only the change event is used here
        keeper._changed = None
        event = keeper._event()
        task = asyncio.create_task(keeper.wait_change(30))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(scenario())
