"""The large-group load benchmark runs end to end at a tiny size (real server, real token) and writes a
consistent JSON report and a PNG chart. No time is asserted on: only the report's own consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from benches import large_group_load
from tests.bench_runs import run_bench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZES = (2, 5)
MESSAGES = 3
#: A deadlock guard for a loaded machine, not a performance gate (the run itself takes seconds).
GUARD_S = 240


@pytest.mark.timeout(GUARD_S + 30)
def test_large_group_load_tiny_run(tmp_path: Path) -> None:
    argv = [
        "--sizes",
        ",".join(map(str, SIZES)),
        "--messages",
        str(MESSAGES),
        "--warmup",
        "1",
        "--out",
        str(tmp_path),
    ]
    out, _ = run_bench("benches.large_group_load", argv, timeout=GUARD_S, what="the tiny run")

    report = json.loads((tmp_path / "large_group_load.json").read_text())
    assert report["benchmark"] == "large_group_load"
    results = report["results"]
    assert [r["members"] for r in results] == list(SIZES)
    for r in results:
        assert r["messages"] == MESSAGES
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["max_ms"]
        assert r["send_p50_ms"] > 0 and r["process_p50_ms"] > 0
        assert r["setup_s"] > 0
    p50 = {r["members"]: r["p50_ms"] for r in results}
    assert report["latency_ratio_largest_vs_2"] == round(p50[SIZES[-1]] / p50[2], 3)
    assert report["latency_ratio_1000_vs_2"] is None  # 1,000 members were not measured
    assert report["largest_members"] == SIZES[-1] and report["target_ratio"] == large_group_load.TARGET_RATIO
    assert report["settings"] == {"sizes": list(SIZES), "messages": MESSAGES, "warmup": 1}
    assert (tmp_path / "large_group_load.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "latency_ratio_largest_vs_2" in out


def test_ratio_needs_both_sizes() -> None:
    results = [{"members": 2, "p50_ms": 4.0}, {"members": 1000, "p50_ms": 5.0}]
    assert large_group_load.ratio(results, 1000) == 1.25
    assert large_group_load.ratio(results, 200) is None
    assert large_group_load.ratio(results[1:], 1000) is None
    with pytest.raises(Exception, match="at least 2"):
        large_group_load.parse_sizes("1,5")
    assert large_group_load.parse_sizes("1000, 2,200,2") == (2, 200, 1000)
