"""The two-pass grace of orphan reconciliation (``gateway.reconciliation.OrphanTracker``), on a fake clock."""

from __future__ import annotations

from gateway.reconciliation import OrphanTracker


def test_an_orphan_is_due_only_after_the_grace_in_consecutive_runs() -> None:
    now = [100.0]
    tracker = OrphanTracker(10.0, clock=lambda: now[0])
    assert tracker.due({b"a", b"b"}) == []  # first sighting: never at once
    now[0] = 105.0
    assert tracker.due({b"a", b"b"}) == []
    now[0] = 110.0
    assert tracker.due({b"a"}) == [b"a"]  # b became referenced: forgotten
    now[0] = 111.0
    assert tracker.due({b"a", b"b"}) == [b"a"]  # b starts over
    now[0] = 121.0
    assert tracker.due({b"a", b"b"}) == [b"a", b"b"]


def test_zero_grace_is_one_pass_and_a_dry_run_remembers_nothing() -> None:
    assert OrphanTracker(0.0).due({b"x"}) == [b"x"]
    now = [0.0]
    tracker = OrphanTracker(5.0, clock=lambda: now[0])
    assert tracker.due({b"x"}, remember=False) == [] and len(tracker) == 0
    assert tracker.due({b"x"}) == []
    now[0] = 5.0
    assert tracker.due({b"x"}, remember=False) == [b"x"]
    tracker.forget(b"x")
    assert len(tracker) == 0
