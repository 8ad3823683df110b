"""The MLS working group's test vectors, run through ``python -m mls.conformance``'s machinery.

Every file listed in ``REQUIRED`` must pass every case with nothing skipped; no file anywhere may fail.
In-process runs use the backend the session installed (tests/conftest.py); ``python -m mls.conformance``
runs on the pure-Python backend (the library never picks one itself), and ``mls-gateway conformance
--backend`` (``python -m gateway.cli``) forces either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mls.conformance import run_file

from .conftest import SHARED

VECTORS = SHARED / "mls-test-vectors"

#: Every vector file of the working group's set, interop-passive included, must pass completely.
ALL_FILES = sorted(str(p.relative_to(VECTORS)) for p in VECTORS.rglob("*.json"))


def test_every_known_file_is_present() -> None:
    names = set(ALL_FILES)
    for required in (
        "tree-math.json",
        "treekem.json",
        "passive-client-welcome.json",
        "interop-passive/reinit.json",
    ):
        assert required in names


@pytest.mark.parametrize("name", ALL_FILES)
def test_vector_file_passes_completely(name: str) -> None:
    result = run_file(VECTORS / name, VECTORS)
    assert result.kind is not None, f"{name} not recognised"
    assert result.failed == 0, "\n".join(result.failures[:10])
    assert result.skipped == 0, "\n".join(result.skips[:10])
    assert result.passed == len(json.loads((VECTORS / name).read_text()))


def test_command_line_summary_and_exit_status() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mls.conformance", str(VECTORS / "crypto-basics.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "crypto backend: python"
    assert lines[1] == "crypto-basics.json: 7 passed, 0 failed, 0 skipped"
    assert lines[-1] == "7 passed, 0 failed"


def test_command_line_json_and_unknown_file_is_skipped(tmp_path: Path) -> None:
    unknown = tmp_path / "something-else.json"
    unknown.write_text(json.dumps([{"foo": 1}]))
    proc = subprocess.run(
        [sys.executable, "-m", "mls.conformance", str(unknown), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["files"][0]["skipped"] == 1 and report["files"][0]["kind"] is None


def test_a_disagreement_fails_with_nonzero_exit(tmp_path: Path) -> None:
    case = json.loads((VECTORS / "crypto-basics.json").read_text())[0]
    case["derive_secret"]["out"] = "00" * 32
    bad = tmp_path / "crypto-basics.json"
    bad.write_text(json.dumps([case]))
    proc = subprocess.run([sys.executable, "-m", "mls.conformance", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"


#: What each forced backend runs through the command line: the pure-Python path every vector (nothing else
#: in the suite runs it over the whole set); the native one a file, because the in-process runs above
#: already take it over every vector (tests/conftest.py installs it) — here only its forcing is tested.
FORCED = {"python": VECTORS, "native": VECTORS / "crypto-basics.json"}


@pytest.mark.parametrize("backend", ["python", "native"])
def test_vectors_pass_with_each_backend_forced(backend: str) -> None:
    """Both crypto backends agree with the vectors (the native one must be built: forcing it fails loudly).

    ``mls-gateway conformance PATH --json --backend NAME``, with ``$MLS_CRYPTO_BACKEND`` naming the
    other backend: the option wins."""
    other = {"python": "native", "native": "python"}[backend]
    env = {**os.environ, "MLS_CRYPTO_BACKEND": other}
    path = FORCED[backend]
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "conformance", str(path), "--json", "--backend", backend],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["backend"] == backend
    assert report["failed"] == 0 and report["skipped"] == 0
    files = list(path.rglob("*.json")) if path.is_dir() else [path]
    assert report["passed"] == sum(len(json.loads(p.read_text())) for p in files) > 0
