"""The fan-out benchmark runs end to end at tiny sizes (real server, real token, Python devices) and writes a
sane JSON report and a PNG."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from benches import fanout
from tests.bench_runs import run_bench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZES = (2, 5)
MESSAGES = 6
PER_SIZE = ("members", "deliveries_per_s", "p50_delivery_ms", "p99_delivery_ms", "fraction_of_library")


@pytest.mark.timeout(120)  # a hard bound even on a loaded machine; the run itself takes a few seconds
def test_fanout_tiny_run(tmp_path: Path) -> None:
    argv = [
        "--sizes",
        ",".join(map(str, SIZES)),
        "--messages",
        str(MESSAGES),
        "--window",
        "2",
        "--timeout",
        "30",
        "--out",
        str(tmp_path),
    ]
    out, err = run_bench("benches.fanout", argv, timeout=90, what="the tiny fan-out run")

    data = json.loads((tmp_path / "fanout.json").read_text())
    assert data["benchmark"] == "fanout" and data["sizes"] == list(SIZES)
    assert data["machine"]["cpus"] and data["machine"]["python"] and data["when"]
    assert data["library"]["crypto_backend"] and "keys" in data["library"]
    assert [e["members"] for e in data["results"]] == list(SIZES)
    for e in data["results"]:
        for key in PER_SIZE:
            assert isinstance(e[key], int | float) and math.isfinite(e[key]) and e[key] > 0, (key, e)
        n = e["members"]
        assert e["hosted_receivers"] + e["device_receivers"] == n - 1
        if n >= 3:
            assert e["hosted_receivers"] >= 1 and e["device_receivers"] >= 1, e
        # Every receiver got every message exactly once, and nothing failed or timed out.
        assert e["messages"] == MESSAGES
        assert e["deliveries"] == e["expected_deliveries"] == MESSAGES * (n - 1), e
        assert e["missing_deliveries"] == 0 and e["wrong_or_repeated"] == 0
        assert e["send_error_count"] == 0 and not e["timed_out"]
        assert e["deliveries_per_s"] == pytest.approx(e["deliveries"] / e["elapsed_s"], rel=0.01)
        assert e["p50_delivery_ms"] <= e["p99_delivery_ms"] <= e["latency_ms"]["all"]["max"]
        lib = e["library"]
        assert lib["deliveries"] == MESSAGES * (n - 1) and lib["deliveries_per_s"] > 0
        assert e["library_deliveries_per_s"] == lib["deliveries_per_s"]
        assert e["fraction_of_library"] == pytest.approx(
            e["deliveries_per_s"] / e["library_deliveries_per_s"], rel=0.01, abs=1e-4
        )
        assert e["cpu_s"]["server"] >= 0 and e["cpu_s"]["bench_process"] >= 0
        counters = e["gateway_metrics"]["counters"]
        assert counters.get("mlsgw_log_appends_total{kind=application}") == MESSAGES, counters
        assert e["setup_s"]["total_s"] > 0

    png = (tmp_path / "fanout.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", png[16:24])
    assert width > 400 and height > 200
    assert "fan-out benchmark" in out and "fraction" in out
    assert "deliveries" in err  # the progress bar


def test_sizes_and_members_split() -> None:
    assert fanout.parse_sizes("500, 2,50") == (2, 50, 500)
    with pytest.raises(ValueError, match="at least 2"):
        fanout.parse_sizes("1,5")
    with pytest.raises(ValueError, match="integers"):
        fanout.parse_sizes("many")
    assert fanout.split_members(2, 0.5) == (1, 0)
    assert fanout.split_members(3, 0.5) == (1, 1)
    assert fanout.split_members(500, 0.5) in ((250, 249), (249, 250))
    assert fanout.split_members(10, 0.0) == (8, 1)  # at least one of each beyond the sender
    assert fanout.split_members(10, 1.0) == (1, 8)


def test_plaintexts_carry_their_index() -> None:
    import random

    rng = random.Random(1)
    for i in (0, 7, 123_456):
        data = fanout.plaintext(i, rng)
        assert 16 <= len(data) <= 256 and fanout.index_of(data) == i
    assert fanout.index_of(b"something else") is None


def test_library_run_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library half with software keys only: every receiver, joined or restored, decrypts every
    message (the current crypto backend; the benchmark installs the gateway's)."""
    from mls.crypto.key_store import SoftwareKeyStore

    monkeypatch.setattr(fanout, "LIBRARY_JOINS", 2)
    got = fanout.library_run(SoftwareKeyStore(), 6, 2, 3, 4)
    assert got["deliveries"] == 4 * 5 and got["deliveries_per_s"] > 0
    assert (got["receivers_joined"], got["receivers_restored"]) == (2, 3)


def test_metrics_are_grouped() -> None:
    delta = {
        "mlsgw_mls_operation_duration_seconds_sum{operation=protect}": 0.5,
        "mlsgw_mls_operation_duration_seconds_count{operation=protect}": 10.0,
        "mlsgw_deliveries_total{channel=inbox,outcome=ok}": 20.0,
        "mlsgw_state_cache_misses_total{}": 0.0,
    }
    got = fanout.where_time_goes(delta)
    assert got["histograms"] == {
        "mlsgw_mls_operation_duration_seconds{operation=protect}": {
            "count": 10,
            "total_s": 0.5,
            "mean_ms": 50.0,
        }
    }
    assert got["counters"] == {"mlsgw_deliveries_total{channel=inbox,outcome=ok}": 20.0}
