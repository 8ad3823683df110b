"""Running a benchmark's command line from a test: bounded against hanging, never a speed gate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench_env() -> dict[str, str]:
    """This environment without the gateway's settings (a benchmark configures the servers it starts)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLSGW_")}


def run_bench(
    module: str, args: list[str], *, timeout: float, what: str, env: dict[str, str] | None = None
) -> tuple[str, str]:
    """``python -m module args`` to its end in a session of its own, so that a timeout stops the benchmark
    *and* the servers it started; fails the test unless it exits 0. Returns its stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=bench_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what} did not end within {timeout:.0f} s:\n{out[-2000:]}\n{err[-2000:]}")
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    return out, err
