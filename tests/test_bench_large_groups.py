"""The large-group benchmark runs end to end at tiny sizes and writes a complete report and a PNG."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from benches import large_groups
from mls.crypto.signature_batch import set_verify_threads, verify_threads

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)  # a hard bound even on a loaded machine; the run itself takes a few seconds
def test_large_groups_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.process_time()
    threads = verify_threads()
    try:
        report = large_groups.main(
            ["--sizes", "8,16", "--repeats", "1", "--verify-threads", "1", "--out", str(tmp_path)]
        )
    finally:
        set_verify_threads(threads)
    cpu = time.process_time() - started
    assert cpu < 20, f"the tiny benchmark run took {cpu:.1f} s of CPU"

    data = json.loads((tmp_path / "large_groups.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert data["sizes"] == [8, 16]
    assert set(data["results"]) == {"8", "16"}
    for n, entry in data["results"].items():
        assert entry["members"] == int(n)
        assert set(entry["operations"]) == set(large_groups.OPERATIONS)
        for op, stats in entry["operations"].items():
            assert stats["repeats"] == 1, op
            assert 0 < stats["min_s"] <= stats["median_s"] <= stats["max_s"], op
            assert 0 <= stats["cpu_min_s"] <= stats["cpu_median_s"] <= stats["cpu_max_s"], op
        assert entry["build"]["total_s"] > 0
        assert entry["shape"]["members"] == int(n)
        assert entry["shape"]["unmerged_leaf_entries"] == 0
        # The copath shape: the committer's path encrypts to one node per level.
        assert entry["sizes"]["add_ciphertexts"] == int(n).bit_length() - 1
        # The Welcome of the commit adding N members carries N GroupSecrets, that of one Add carries one.
        assert entry["sizes"]["add_n_welcome_bytes"] > entry["sizes"]["welcome_bytes"]
    # The headline names sizes 1,000 and 10,000, which this run does not have.
    assert data["headline"] == {}
    assert data["reference_s"] == large_groups.REFERENCE_S
    machine = data["machine"]
    assert machine["crypto_backend"] in ("python", "native")
    assert machine["signature_verify_threads"] == 1
    assert machine["python"] and machine["cpu_count"]
    assert data["timestamp"].endswith("Z")

    png = (tmp_path / "large_groups.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100
    assert png.endswith(b"IEND\xaeB`\x82")

    out = capsys.readouterr().out
    assert "add member" in out and "16" in out


def test_headline_names_the_issue_figures() -> None:
    """add_1000_in_one_commit_s / join_1000_s (and the 10,000-member ones) are the medians of the
    operations they name, in wall and CPU time; sizes not run give no field."""

    def stats(wall: float, cpu: float) -> dict[str, float]:
        return {"median_s": wall, "cpu_median_s": cpu}

    results = {
        "100": {"operations": {"add_n_in_one_commit": stats(9, 9), "join_welcome": stats(9, 9)}},
        "1000": {"operations": {"add_n_in_one_commit": stats(0.3, 0.28), "join_welcome": stats(0.08, 0.09)}},
    }
    assert large_groups.headline(results) == {
        "add_1000_in_one_commit_s": 0.3,
        "add_1000_in_one_commit_cpu_s": 0.28,
        "join_1000_s": 0.08,
        "join_1000_cpu_s": 0.09,
    }
    results["10000"] = {
        "operations": {"add_n_in_one_commit": stats(5.0, 4.0), "join_welcome": stats(1.0, 1.5)}
    }
    assert large_groups.headline(results)["add_10000_in_one_commit_s"] == 5.0
    assert large_groups.headline(results)["join_10000_cpu_s"] == 1.5


def test_sizes_are_parsed_and_checked() -> None:
    assert large_groups.parse_sizes("1000, 100,1_000") == [100, 1000]
    with pytest.raises(Exception, match="at least 3"):
        large_groups.parse_sizes("2")
    with pytest.raises(Exception, match="integers"):
        large_groups.parse_sizes("ten")


def test_flat_shape_has_no_self_updates() -> None:
    assert large_groups.updater_leaves(10_000, "flat") == []
    assert large_groups.updater_leaves(10_000, "copath") == [2**k for k in range(1, 14)]
