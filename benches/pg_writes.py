"""PostgreSQL store write throughput: the WAL flush under the write lock (before) against after it (issue 15).

    python -m benches.pg_writes [--quick]

Writes ``benches/results/pg_writes.json``. On a throw-away PostgreSQL 15 cluster (``tests.postgres_cluster``)
it runs, in one run and alternating so that load on a shared machine hits both alike, write transactions
of :class:`gateway.postgres_store.PostgresStore` — each stores one idempotency record (the row every write
request adds) — from 1 and from 2 *processes* (each its own store and pool, as gateway processes), with
``--threads`` threads per process, in both durability modes (:mod:`gateway.postgres_durability`):

* ``before``: ``flush_under_lock=True`` — ``COMMIT`` waits for the WAL flush while holding the write lock;
* ``after``: the default — ``COMMIT`` releases the lock at once, the flush runs after it, shared.

Every write counted returned from its transaction block, i.e. is durable. The JSON has, per mode,
``writes_per_s`` for 1 and 2 processes (median of the rounds) and ``scaling_2_over_1``, plus
``after_over_before`` per process count, and the reads per second measured alongside (one reader thread
per process doing a read transaction, which waits for the flush of what it saw).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("before", "after")


def worker(dsn: str, mode: str, threads: int, seconds: float) -> None:
    """One process: open a store, say ``ready``, wait for ``go`` on stdin, write for ``seconds``, print
    ``{"writes": n, "reads": m}``."""
    from gateway.postgres_store import PostgresStore
    from gateway.store import IdempotentResponse

    store = PostgresStore(dsn, busy_timeout_s=120.0, migrate=False, flush_under_lock=mode == "before")
    tag = secrets.token_hex(4)
    response = IdempotentResponse(request_hash=b"\x00" * 32, status=200, body=b"x" * 200)
    with store.transaction() as tx:  # warm the pool and the statements
        tx.put_idempotent("bench", f"{tag}-warm", response, None)
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + seconds
    writes = [0] * threads
    reads = [0]

    def write(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            with store.transaction() as tx:
                tx.put_idempotent("bench", f"{tag}-{i}-{n}", response, None)
            n += 1
        writes[i] = n

    def read() -> None:
        n = 0
        while time.monotonic() < deadline:
            with store.read_transaction() as tx:
                tx.get_idempotent("bench", f"{tag}-0-{n}", 0.0)
            n += 1
        reads[0] = n

    pool = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    pool.append(threading.Thread(target=read))
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    store.close()
    print(json.dumps({"writes": sum(writes), "reads": reads[0]}), flush=True)


def run_round(dsn: str, mode: str, processes: int, threads: int, seconds: float) -> dict[str, float]:
    """``processes`` worker processes started together; their writes and reads per second, summed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-m", "benches.pg_writes", "--worker", dsn, mode, str(threads), str(seconds)]
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    totals = {"writes": 0, "reads": 0}
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        counts = json.loads(out.strip().splitlines()[-1])
        for k in totals:
            totals[k] += counts[k]
        if p.returncode != 0:
            raise RuntimeError(f"worker exited with {p.returncode}")
    return {"writes_per_s": totals["writes"] / seconds, "reads_per_s": totals["reads"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=4, help="writer threads per process")
    parser.add_argument("--seconds", type=float, default=None, help="length of one round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "pg_writes.json")
    parser.add_argument(
        "--worker", nargs=4, metavar=("DSN", "MODE", "THREADS", "SECONDS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        dsn, mode, threads, seconds = args.worker
        worker(dsn, mode, int(threads), float(seconds))
        return
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    rounds = args.rounds or (1 if args.quick else 3)

    from gateway.postgres_store import PostgresStore
    from tests.postgres_cluster import fresh_database, throwaway_cluster

    samples: dict[str, dict[int, list[dict[str, float]]]] = {m: {1: [], 2: []} for m in MODES}
    with throwaway_cluster() as cluster:
        dsn = fresh_database(cluster, "bench")
        PostgresStore(dsn).close()  # the schema, once
        for r in range(rounds):
            for processes in (1, 2):
                for mode in MODES:
                    result = run_round(dsn, mode, processes, args.threads, seconds)
                    samples[mode][processes].append(result)
                    print(
                        f"round {r + 1}/{rounds} {mode:6} {processes} process(es): "
                        f"{result['writes_per_s']:7.0f} writes/s {result['reads_per_s']:7.0f} reads/s",
                        flush=True,
                    )
    report = build_report(samples, args.threads, seconds, rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def build_report(
    samples: dict[str, dict[int, list[dict[str, float]]]], threads: int, seconds: float, rounds: int
) -> dict[str, Any]:
    def median(mode: str, processes: int, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[mode][processes]), 1)

    modes: dict[str, Any] = {}
    for mode in MODES:
        one, two = median(mode, 1, "writes_per_s"), median(mode, 2, "writes_per_s")
        modes[mode] = {
            "writes_per_s": {"1_process": one, "2_processes": two},
            "reads_per_s": {
                "1_process": median(mode, 1, "reads_per_s"),
                "2_processes": median(mode, 2, "reads_per_s"),
            },
            "scaling_2_over_1": round(two / one, 2) if one else None,
        }
    return {
        "benchmark": "pg_writes",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "settings": {
            "threads_per_process": threads,
            "reader_threads_per_process": 1,
            "seconds": seconds,
            "rounds": rounds,
        },
        "write": "one idempotency record per write transaction (put_idempotent), durable when counted",
        "modes": modes,
        "after_over_before": {
            k: round(modes["after"]["writes_per_s"][k] / modes["before"]["writes_per_s"][k], 2)
            for k in ("1_process", "2_processes")
            if modes["before"]["writes_per_s"][k]
        },
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'mode':8}{'1 process':>12}{'2 processes':>14}{'2/1':>7}   (writes/s)")
    for mode, m in report["modes"].items():
        w = m["writes_per_s"]
        print(f"{mode:8}{w['1_process']:>12.0f}{w['2_processes']:>14.0f}{m['scaling_2_over_1']:>7}")
    print("after/before:", report["after_over_before"])


if __name__ == "__main__":
    main()
