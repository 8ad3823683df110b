"""``python -m benches.scale`` runs end to end at its smallest size (a throw-away PostgreSQL cluster, the
real ``mls-gateway serve`` with 1 and 2 processes) and writes a JSON of the right shape with positive
figures, and a PNG. No figure is gated on speed or on the scaling ratio (the machine is shared)."""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from benches import scale
from tests.bench_runs import run_bench

TOP_LEVEL = ("messages_per_s_1_process", "messages_per_s_2_processes", "scaling_2_over_1")


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.timeout(300)
def test_scale_smallest_run(tmp_path: Path) -> None:
    argv = ["--quick", "--stores", "postgresql", "--groups", "1"]
    argv += ["--duration", "1", "--commits", "1", "--out", str(tmp_path)]
    out, err = run_bench("benches.scale", argv, timeout=280, what="the smallest scale run")

    data = json.loads((tmp_path / "scale.json").read_text())
    assert list(data)[: len(TOP_LEVEL)] == list(TOP_LEVEL)
    for key in TOP_LEVEL:
        assert positive(data[key]), (key, data[key])
    assert 0 <= data["generator_cpu_share"] <= 1  # CPU ticks: a tiny run may see none of the generator
    assert data["scaling_2_over_1"] == pytest.approx(  # one round (--quick): its ratio is the median
        data["messages_per_s_2_processes"] / data["messages_per_s_1_process"], rel=0.01
    )
    assert "sqlite_scaling_2_over_1" not in data  # not asked for
    runs = data["runs"]
    assert [(r["store"], r["processes"]) for r in runs] == [("postgresql", 1), ("postgresql", 2)]
    for r in runs:
        check_run(r)
    assert runs[1]["how"] == "`mls-gateway serve --workers 2`"

    png = (tmp_path / "scale.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and height >= 600
    assert "2 processes / 1 process" in out and "postgresql" in out
    assert "postgresql ×1: ready in" in err and "postgresql ×2: ready in" in err  # progress


def check_run(run: dict[str, Any]) -> None:
    """One configuration's figures: counted, positive, and consistent with one another."""
    assert run["messages"] > 0 and positive(run["messages_per_s"])
    assert run["messages_per_s"] == pytest.approx(run["messages"] / run["elapsed_s"], rel=0.01)
    assert run["p50_ms"] <= run["p99_ms"]
    message, commit = run["per_message"], run["per_commit"]
    assert message["count"] == run["messages"] and commit["count"] == 1  # one group, one commit
    for block in (message, commit):
        assert positive(block["hsm_operations_per_op"]), block
        # CPU time from /proc advances in clock ticks (10 ms): one commit, or a second of messages on a
        # loaded machine, may see no tick of a process. Never negative, never not a number.
        for key in ("gateway_cpu_s", "gateway_cpu_ms_per_op", "postgres_cpu_ms_per_op"):
            assert math.isfinite(block[key]) and block[key] >= 0, (key, block)
        split = block["gateway_user_cpu_ms_per_op"] + block["gateway_system_cpu_ms_per_op"]
        assert split == pytest.approx(block["gateway_cpu_ms_per_op"], abs=0.002), block  # one reading
        switches = block["gateway_context_switches_per_op"]  # None: a thread went away (not here)
        assert set(switches) == {"voluntary", "involuntary"} and all(v >= 0 for v in switches.values())
        db = block["database_per_op"]
        for key in ("statements", "write_transactions", "transactions", "rows_written", "wal_bytes"):
            assert positive(db[key]), (key, db)
        assert db["statements"] >= db["transactions"] >= db["write_transactions"]
        # The machine's CPUs over the phase, in cores: all of them were busy, idle or stolen (clock ticks
        # and the phase's wall clock are read a moment apart: a tolerance of one CPU).
        cores = [block[f"machine_cores_{kind}"] for kind in ("busy", "idle", "stolen")]
        assert all(math.isfinite(c) and c >= 0 for c in cores), block
        assert abs(sum(cores) - (os.cpu_count() or 1)) <= 1.0, block
    # One signature per protected application message (the gateway's own count); else only unwraps of keys
    # a process uses for the first time (the data key; a member's keys held wrapped), in whichever phase
    # that falls — a worker the warm-up did not reach may deliver first during the load — a few per
    # process, never one per message: the HSM per key, not per request.
    ops = dict(message["hsm_operations"])
    assert ops.pop("sign/pkcs11/ok") == message["count"]
    assert set(ops) <= {"unwrap/pkcs11/ok"} and ops.get("unwrap/pkcs11/ok", 0) <= 3 * run["processes"], ops
    # A path-updating commit signs (the commit, the leaf node, the GroupInfo) and makes a leaf key.
    assert commit["hsm_operations_per_op_by_kind"]["sign/pkcs11/ok"] >= 1
    assert commit["hsm_operations_per_op_by_kind"]["generate/pkcs11/ok"] >= 1


def test_arguments_are_checked() -> None:
    for bad in (
        ["--stores", "mysql"],
        ["--stores", ""],
        ["--groups", "0"],
        ["--duration", "0"],
        ["--commits", "-1"],
        ["--rounds", "0"],
        ["--rounds", "21"],
    ):
        with pytest.raises(SystemExit):
            scale.main(bad)


def test_rounds_alternate_their_order() -> None:
    """A machine that drifts faster or slower over the benchmark favours neither process count."""
    assert [scale.round_order(i) for i in range(4)] == [(1, 2), (2, 1), (1, 2), (2, 1)]


def test_the_ratio_is_the_median_of_the_rounds_ratios(tmp_path: Path) -> None:
    """Each round's ratio is its own 2-process rate over its own 1-process rate (the two run a minute
    apart); the reported ratio is their median, the rates the medians of each process count."""
    cfg = scale.settings_from(
        argparse.Namespace(
            quick=False, stores="postgresql", groups=None, duration=None, commits=None, rounds=3, out=tmp_path
        )
    )
    rates = [(1, 50.0), (2, 100.0), (2, 90.0), (1, 60.0), (1, 100.0), (2, 120.0)]  # rounds 1, 2, 3
    gen = {"generator_cpu_share": 0.05}
    runs = [
        {"store": "postgresql", "round": i // 2 + 1, "processes": p, "messages_per_s": v, "per_message": gen}
        for i, (p, v) in enumerate(rates)
    ]
    report = scale.build_report(cfg, runs)
    assert report["rounds"] == {"postgresql": [2.0, 1.5, 1.2]}
    assert report["scaling_2_over_1"] == 1.5  # not 100 / 60 = the medians' ratio
    assert report["messages_per_s_1_process"] == 60.0
    assert report["messages_per_s_2_processes"] == 100.0
    assert report["config"]["rounds"] == 3


def test_process_tree_cpu_counts_this_process() -> None:
    assert os.getpid() in scale.process_tree(os.getpid())
    assert scale.tree_cpu_s(os.getpid()) > 0


def test_context_switches_count_every_thread_of_the_tree() -> None:
    """A thread that blocks (here: sleeping, eight times) switches voluntarily each time, and the count
    is of the tree's threads together: the eight show in this process's count."""
    import threading

    slept, done = threading.Event(), threading.Event()

    def blocker() -> None:
        for _ in range(8):
            time.sleep(0.005)
        slept.set()
        done.wait(10)

    before = scale.tree_context_switches(os.getpid())
    thread = threading.Thread(target=blocker)
    thread.start()
    try:
        assert slept.wait(10)
        during = scale.tree_context_switches(os.getpid())  # the thread still alive: its switches counted
    finally:
        done.set()
        thread.join()
    after = scale.tree_context_switches(os.getpid())
    assert thread.native_id in during["tasks"] and thread.native_id not in after["tasks"]
    assert during["voluntary"] - before["voluntary"] >= 8
    assert scale.switches_per_op(before, during, 1)["voluntary"] >= 8  # type: ignore[index]
    # Gone, the thread's counts would be subtracted from the phase: no figure rather than a wrong one.
    assert scale.switches_per_op(during, after, 1) is None


def test_the_cpu_split_adds_up_to_the_total() -> None:
    first = scale.tree_cpu_s(os.getpid())
    split = scale.tree_cpu_split_s(os.getpid())
    last = scale.tree_cpu_s(os.getpid())
    assert first <= split["user"] + split["system"] <= last + 1 / scale.CLOCK_TICKS


def synthetic_run(store: str, round_no: int, processes: int, rate: float) -> dict[str, Any]:
    """A run's entry as :func:`benches.scale.run_configuration` writes it (SQLite: no database block)."""
    block = {
        "count": 100,
        "gateway_cpu_ms_per_op": 8.0,
        "gateway_user_cpu_ms_per_op": 6.0,
        "gateway_system_cpu_ms_per_op": 2.0,
        "gateway_context_switches_per_op": None if round_no == 2 else {"voluntary": 40.0, "involuntary": 9.0},
        "generator_cpu_ms_per_op": 0.5,
        "generator_cpu_share": 0.06,
        "hsm_operations_per_op": 1.0,
        "hsm_operations_per_op_by_kind": {"sign/pkcs11/ok": 1.0},
        "machine_cores_stolen": 0.01,
    }
    return {
        "store": store,
        "round": round_no,
        "processes": processes,
        "messages_per_s": rate,
        "p50_ms": 30.0,
        "p99_ms": 70.0,
        "per_message": block,
        "per_commit": None,
        "load_average": [2.0, 2.0, 2.0],
    }


def test_summary_and_chart_of_several_rounds_of_sqlite_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table, the summary line and the chart for a SQLite-only run in two rounds (one of them with no
    context-switch figure), as ``--stores sqlite --rounds 2`` writes them."""
    cfg = scale.settings_from(
        argparse.Namespace(
            quick=False, stores="sqlite", groups=None, duration=None, commits=0, rounds=2, out=tmp_path
        )
    )
    runs = [synthetic_run("sqlite", 1, 1, 100.0), synthetic_run("sqlite", 1, 2, 180.0)]
    runs += [synthetic_run("sqlite", 2, 2, 150.0), synthetic_run("sqlite", 2, 1, 100.0)]
    report = scale.build_report(cfg, runs)
    assert report["rounds"] == {"sqlite": [1.8, 1.5]} and report["sqlite_scaling_2_over_1"] == 1.65
    assert "scaling_2_over_1" not in report
    scale.print_summary(report)
    out = capsys.readouterr().out
    assert "SQLite: 2 processes / 1 process = 1.65 (median of rounds: 1.80, 1.50)" in out
    assert "PostgreSQL" not in out and "n/a" in out  # round 2: no switch count
    scale.chart(report, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").read_bytes().startswith(b"\x89PNG")


def test_the_machines_cpu_account_moves_with_the_wall_clock() -> None:
    """``/proc/stat``: busy + idle + stolen seconds grow by the CPU count per second of wall clock."""
    before, t0 = scale.machine_cpu_s(), time.perf_counter()
    time.sleep(0.5)
    after, wall = scale.machine_cpu_s(), time.perf_counter() - t0
    grown = sum(after[k] - before[k] for k in before)
    assert set(before) == {"busy", "idle", "stolen"}
    assert grown == pytest.approx((os.cpu_count() or 1) * wall, abs=0.2)
