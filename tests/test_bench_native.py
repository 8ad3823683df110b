"""The native benchmark runs end to end at a tiny size and writes the JSON and PNG the issue asks for."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

import native
from benches import native as bench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not native.available(), reason="needs the native extension (pip install -e . builds it)")
def test_native_bench_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_interleaved = bench._interleaved

    def two_rounds(fns: Any, rounds: int, min_time: float) -> Any:
        return real_interleaved(fns, 2, 0.0)

    monkeypatch.setattr(bench, "BATCH", 40)
    monkeypatch.setattr(bench, "TREE_LEAVES", 300)
    monkeypatch.setattr(bench, "_interleaved", two_rounds)
    monkeypatch.setattr(
        bench, "openssl_speed", lambda seconds=1: {"available": False, "note": "not run here"}
    )
    bench.main(["--quick", "--out", str(tmp_path)])

    report = json.loads((tmp_path / "native.json").read_text())
    for key in ("aead_speedup", "tree_hash_speedup", "ratchet_speedup"):
        assert math.isfinite(report[key]) and report[key] > 0, key
    assert report["aead_fraction_of_openssl"] is None  # openssl speed was not run
    assert set(report["messages_per_s"]) == {"native", "python"}
    assert all(v > 0 for v in report["messages_per_s"].values())
    assert report["tree_hash"]["leaves"] == 300 and report["aead"]["messages"] == 40
    assert (tmp_path / "native.png").read_bytes().startswith(PNG_SIGNATURE)
