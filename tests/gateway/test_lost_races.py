"""An append that lost the race to a group's log is built again on the new head, after a short random
pause (full jitter, doubling up to 32 ms), at most ``LOG_RETRIES`` times; then 409 (api-delivery.md). The
end-to-end races (many members, several processes) are in test_group_service.py, test_several_processes.py
and the chaos test."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from gateway import delivery_store
from gateway.delivery_store import LOG_RETRIES, RETRY_PAUSE_S, LogConflict, retry_pause, retrying_races
from gateway.errors import Problem, kept_moving
from gateway.persistence import StaleState

RACES = (LogConflict, StaleState)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses taken between attempts (recorded instead of slept)."""
    taken: list[float] = []
    monkeypatch.setattr(delivery_store, "time", SimpleNamespace(sleep=taken.append))
    return taken


def losing(times: int, race: type[Exception] = LogConflict) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def operation() -> str:
        calls.append(len(calls))
        if len(calls) <= times:
            raise race("another append won")
        return "appended"

    return calls, operation


@pytest.mark.parametrize("lost", [0, 1, 3, LOG_RETRIES - 1])
def test_a_lost_race_is_retried_after_a_bounded_random_pause(pauses: list[float], lost: int) -> None:
    calls, operation = losing(lost, StaleState if lost % 2 else LogConflict)
    told: list[None] = []
    assert retrying_races(operation, RACES, kept_moving, lambda: told.append(None)) == "appended"
    assert len(calls) == lost + 1 and len(pauses) == lost  # no pause before the first attempt
    assert len(told) == lost  # each lost race told once (mlsgw_log_lost_races_total)
    for attempt, pause in enumerate(pauses, start=1):
        assert 0.0 <= pause <= RETRY_PAUSE_S * 2 ** min(attempt - 1, 5)


def test_after_every_retry_lost_the_answer_is_409(pauses: list[float]) -> None:
    calls, operation = losing(LOG_RETRIES + 5)
    told: list[None] = []
    with pytest.raises(Problem) as gave_up:
        retrying_races(operation, RACES, kept_moving, lambda: told.append(None))
    assert len(told) == LOG_RETRIES  # the last lost race, ending in 409, is counted too
    assert gave_up.value.code == "conflict" and "kept moving" in gave_up.value.detail
    assert len(calls) == LOG_RETRIES and len(pauses) == LOG_RETRIES - 1
    assert sum(pauses) <= RETRY_PAUSE_S * sum(2 ** min(i, 5) for i in range(LOG_RETRIES - 1))


def test_anything_but_a_lost_race_is_not_retried(pauses: list[float]) -> None:
    calls, operation = losing(1, ValueError)
    with pytest.raises(ValueError):
        retrying_races(operation, RACES, kept_moving)
    assert calls == [0] and pauses == []


def test_pauses_are_spread_not_fixed() -> None:
    drawn = [retry_pause(6) for _ in range(200)]
    assert all(0.0 <= p <= RETRY_PAUSE_S * 32 for p in drawn)
    assert max(drawn) - min(drawn) > RETRY_PAUSE_S * 8  # jitter: concurrent losers do not retry in step
