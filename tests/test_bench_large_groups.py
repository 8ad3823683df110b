"""The large-group benchmark runs end to end at tiny sizes and writes a complete report and a PNG."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from benches import large_groups

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)  # a hard bound even on a loaded machine; the run itself takes a few seconds
def test_large_groups_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.process_time()
    report = large_groups.main(["--sizes", "8,16", "--repeats", "1", "--out", str(tmp_path)])
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
    machine = data["machine"]
    assert machine["crypto_backend"] in ("python", "native")
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


def test_sizes_are_parsed_and_checked() -> None:
    assert large_groups.parse_sizes("1000, 100,1_000") == [100, 1000]
    with pytest.raises(Exception, match="at least 3"):
        large_groups.parse_sizes("2")
    with pytest.raises(Exception, match="integers"):
        large_groups.parse_sizes("ten")


def test_flat_shape_has_no_self_updates() -> None:
    assert large_groups.updater_leaves(10_000, "flat") == []
    assert large_groups.updater_leaves(10_000, "copath") == [2**k for k in range(1, 14)]
