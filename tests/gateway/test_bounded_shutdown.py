"""The graceful shutdown is bounded (gateway/http_server.py): a clean-up that awaits something that never
comes is given up after ``CLEANUP_BOUND_S`` with an error naming every pending task and where it waits,
and the exception that ended the serving (a port in use, SIGTERM's GracefulExit) still propagates."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway import http_server


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
