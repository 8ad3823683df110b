"""Scale-out benchmark: one gateway process against two, on PostgreSQL and on SQLite, with the cost of a
message and of a commit in CPU, database statements, rows and HSM operations (issue 15).

    python -m benches.scale [--quick] [--stores postgresql,sqlite] [--groups N] [--duration S]
                            [--commits K] [--rounds R] [--out DIR]

Runs everything on loopback and stops by itself:

1. **PostgreSQL**: a throw-away cluster (:func:`tests.postgres_cluster.throwaway_cluster`: Debian's
   PostgreSQL 15, ``initdb`` in a temporary folder, a free port) with ``pg_stat_statements`` loaded, so
   that every statement the gateways send is counted the moment it ends. ``mls-gateway init`` makes a data
   folder (the SoftHSM2 token, its PIN) whose database is that cluster (``MLSGW_DATABASE``).
   **SQLite**: ``mls-gateway init`` makes an embedded data folder (token and ``gateway.sqlite3``).
2. For each store, the real ``mls-gateway serve`` (:class:`benches.load.Server`) with **1 process**, then
   with **2 processes** as ``serve --workers 2`` (a supervisor handing connections in turn to two worker
   processes, each with its own HSM sessions, database connections and state cache — what the
   README deploys on one machine; separate ``serve`` processes on separate machines share the database
   and token the same way). This is done in **rounds** (``--rounds``, 3 by default, 1 with ``--quick``),
   the order alternating (1 then 2, 2 then 1, …): a shared machine's speed drifts by more than the
   effect measured, and each round's ratio compares two runs a minute apart (the rounds share one data
   folder: a later run finds the earlier runs' tenants and groups in the store). Each configuration gets a
   tenant and G groups of two hosted members over HTTP,
   a warm-up, then the load of :mod:`benches.load` (:func:`benches.load.run_clients`: one client per
   group, ``POST /messages`` on A then ``POST /process`` on B, plaintext checked), then a commit phase:
   per group K path-updating commits by A (``update``), each processed by B.
3. Around the load and around the commit phase: CPU seconds (``/proc/<pid>/stat`` utime + stime) of the
   gateway processes (the supervisor and its workers; also split into user and kernel time, with their
   threads' context switches — a thread blocking on a socket or a lock, or the interpreter lock, is a
   voluntary one: the hand-offs of a message), of PostgreSQL's processes (the postmaster and its
   backends) and of this process — the load generator, kept light (asyncio, one lean keep-alive
   connection per client, :mod:`benches.lean_http`); the
   gateway's HSM operations (``mlsgw_hsm_operations_total`` from ``/metrics``, summed over the workers);
   on PostgreSQL the statements (= round trips; the pool's empty liveness checks are not counted), write
   transactions (each sets ``lock_timeout`` once, then takes the store's write lock — shared, with its
   group's lock, for a group-scoped write: :mod:`gateway.postgres_durability`), transactions
   (``COMMIT`` + ``ROLLBACK``), rows written (rows of ``INSERT``/``UPDATE``/``DELETE``), WAL bytes and the
   time waiting for advisory locks (the write lock, groups' locks, the order lock) per write transaction,
   all from ``pg_stat_statements`` (it does not time a ``COMMIT``'s WAL flush). ``pg_stat_database``
   would do for the rows too, but PostgreSQL 15 flushes a busy backend's counters to it only every few
   seconds.

Writes ``scale.json`` (top level: ``messages_per_s_1_process``, ``messages_per_s_2_processes`` — the
medians over the rounds —, ``scaling_2_over_1`` — the median of the rounds' ratios — for PostgreSQL, the
same three prefixed ``sqlite_``, ``generator_cpu_share``; then ``rounds``, each store's ratio per round;
then ``runs``, one entry per store, round and process count with its per-message and per-commit costs) and
``scale.png`` to ``benches/results`` (or ``--out``), prints a table, and shows a progress bar while the
load runs. ``--quick`` finishes in well under a minute on a quiet machine. docs/scaling.md models 10 and 100
processes from these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benches.load import (
    RESULTS,
    Pair,
    Server,
    hsm_operations,
    init_gateway,
    latency_summary,
    lean_connections,
    make_pairs,
    run_clients,
    tenant_client,
)
from gateway.client import GatewayClient

STORES = ("postgresql", "sqlite")
PROCESSES = (1, 2)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Statement kinds counted as rows written (pg_stat_statements ``rows`` of these).
WRITE_VERBS = ("insert", "update", "delete")


@dataclass(frozen=True)
class Settings:
    quick: bool
    stores: tuple[str, ...]
    groups: int
    duration_s: float
    warmup_s: float
    commits: int
    rounds: int
    out: Path


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
    return Settings(
        quick=quick,
        stores=stores,
        groups=args.groups or (4 if quick else 8),
        duration_s=args.duration or (4.0 if quick else 20.0),
        warmup_s=1.0 if quick else 3.0,
        commits=args.commits if args.commits is not None else (2 if quick else 5),
        rounds=args.rounds or (1 if quick else 3),
        out=args.out,
    )


# ---- CPU from /proc ----------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and every process descending from it (by ``/proc/*/stat`` parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system, and those of its reaped children) of ``root``'s process tree."""
    return sum(tree_cpu_split_s(root).values())


def tree_cpu_split_s(root: int) -> dict[str, float]:
    """:func:`tree_cpu_s` split into user and system (kernel) seconds."""
    user = system = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError):
            f = _stat_fields(pid)
            user, system = user + int(f[11]) + int(f[13]), system + int(f[12]) + int(f[14])
    return {"user": user / CLOCK_TICKS, "system": system / CLOCK_TICKS}


def tree_context_switches(root: int) -> dict[str, Any]:
    """Context switches of every live thread of ``root``'s process tree (``/proc/<pid>/task/*/status``):
    *voluntary* (a thread blocked: on a socket, a lock, the interpreter lock) and *involuntary* (the
    scheduler took its core away), and the threads counted (``tasks``). A thread's counts go with it when
    it exits (there is no sum for reaped threads as there is for CPU time): :func:`switches_per_op`
    gives no figure for a phase in which a counted thread went away."""
    out: dict[str, Any] = {"voluntary": 0, "involuntary": 0, "tasks": set()}
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    for line in Path(task.path, "status").read_text().splitlines():
                        key, _, value = line.partition(":")
                        if key == "voluntary_ctxt_switches":
                            out["voluntary"] += int(value)
                        elif key == "nonvoluntary_ctxt_switches":
                            out["involuntary"] += int(value)
                    out["tasks"].add(int(task.name))
    return out


def switches_per_op(before: dict[str, Any], after: dict[str, Any], per: int) -> dict[str, float] | None:
    """The context switches of a phase per operation, or ``None`` when a thread counted at its start had
    gone by its end (its switches would be subtracted, not counted: a worker restarted, a pool shrank)."""
    if not before["tasks"] <= after["tasks"]:
        return None
    return {kind: round((after[kind] - before[kind]) / per, 1) for kind in ("voluntary", "involuntary")}


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def machine_cpu_s() -> dict[str, float]:
    """The whole machine's CPU seconds so far (``/proc/stat``, every CPU): ``busy`` (user, nice, system,
    irq, softirq), ``idle`` (idle, iowait) and ``stolen`` — time a virtual machine's CPUs were ready to
    run but the hypervisor ran someone else (``steal``). On a shared host the stolen share grows when
    both CPUs are wanted, which is when two processes run: it is what a 2-core machine did not have."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return {
        "busy": (user + nice + system + irq + softirq) / CLOCK_TICKS,
        "idle": (idle + iowait) / CLOCK_TICKS,
        "stolen": steal / CLOCK_TICKS,
    }


# ---- PostgreSQL counters -----------------------------------------------------------------------------------


class PgCounters:
    """``pg_stat_statements`` of the gateway's database, read on a connection of this process."""

    def __init__(self, dsn: str, postmaster_pid: int) -> None:
        import psycopg

        self.postmaster_pid = postmaster_pid
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def snapshot(self) -> dict[str, float]:
        rows = self._conn.execute(
            "SELECT query, calls, rows, wal_bytes, total_exec_time FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND userid = (SELECT usesysid FROM pg_user WHERE usename = current_user)"
        ).fetchall()
        out = dict.fromkeys(
            ("statements", "write_transactions", "transactions", "rows_written", "wal_bytes"), 0.0
        )
        out["write_lock_wait_ms"] = 0.0
        for query, calls, nrows, wal, exec_ms in rows:
            text = str(query).lstrip().lower()
            if "pg_stat_statements" in text:  # this reader's own queries
                continue
            out["statements"] += calls
            out["wal_bytes"] += float(wal)
            # once per write transaction (gateway.postgres_durability.write_begin: its settings and locks
            # in one statement; BEGIN itself is not counted when a pipeline sends it)
            if "set_config(" in text:  # its constants normalised to $1, $2, …
                out["write_transactions"] += calls
            if "pg_advisory_xact_lock" in text:  # the write lock, a group's lock, the order lock
                out["write_lock_wait_ms"] += exec_ms
            if text.startswith(("commit", "rollback")):
                out["transactions"] += calls
            if text.startswith(WRITE_VERBS) or (
                text.startswith("with") and any(v in text for v in WRITE_VERBS)
            ):
                out["rows_written"] += nrows
        out["cpu_s"] = tree_cpu_s(self.postmaster_pid)
        return out

    def close(self) -> None:
        self._conn.close()


# ---- one configuration -------------------------------------------------------------------------------------


@dataclass
class Probe:
    """What is read before and after a phase."""

    server: Server
    api: GatewayClient
    pg: PgCounters | None

    async def snapshot(self) -> dict[str, Any]:
        return {
            "wall": time.perf_counter(),
            "gateway_cpu_split_s": tree_cpu_split_s(self.server.proc.pid),
            "gateway_switches": tree_context_switches(self.server.proc.pid),
            "generator_cpu_s": own_cpu_s(),
            "machine_cpu_s": machine_cpu_s(),
            "hsm": await hsm_operations(self.api),
            "db": self.pg.snapshot() if self.pg else None,
        }


def costs(before: dict[str, Any], after: dict[str, Any], count: int) -> dict[str, Any]:
    """The phase's totals and their share per ``count`` (messages or commits)."""
    wall = after["wall"] - before["wall"]
    split = {
        k: after["gateway_cpu_split_s"][k] - before["gateway_cpu_split_s"][k] for k in ("user", "system")
    }
    gw = split["user"] + split["system"]
    gen = after["generator_cpu_s"] - before["generator_cpu_s"]
    hsm = {
        k: int(after["hsm"].get(k, 0) - before["hsm"].get(k, 0))
        for k in sorted(set(after["hsm"]) | set(before["hsm"]))
    }
    hsm = {k: v for k, v in hsm.items() if v}
    per = max(count, 1)
    out: dict[str, Any] = {
        "count": count,
        "wall_s": round(wall, 3),
        "gateway_cpu_s": round(gw, 3),
        "generator_cpu_s": round(gen, 3),
        "gateway_cpu_ms_per_op": round(1000 * gw / per, 3),
        "generator_cpu_ms_per_op": round(1000 * gen / per, 3),
        "gateway_cores_busy": round(gw / wall, 3) if wall > 0 else None,
        **{f"gateway_{kind}_cpu_ms_per_op": round(1000 * split[kind] / per, 3) for kind in split},
        "gateway_context_switches_per_op": switches_per_op(
            before["gateway_switches"], after["gateway_switches"], per
        ),
        "hsm_operations": hsm,
        "hsm_operations_per_op": round(sum(hsm.values()) / per, 3),
        "hsm_operations_per_op_by_kind": {k: round(v / per, 3) for k, v in hsm.items()},
    }
    if before["db"] is not None:
        db = {k: after["db"][k] - before["db"][k] for k in before["db"]}
        out["postgres_cpu_s"] = round(db.pop("cpu_s"), 3)
        out["postgres_cpu_ms_per_op"] = round(1000 * out["postgres_cpu_s"] / per, 3)
        out["database"] = {k: round(v, 1) for k, v in db.items()}
        out["database_per_op"] = {k: round(v / per, 3) for k, v in db.items()}
        writes = max(db["write_transactions"], 1)
        out["write_transactions_per_s"] = round(db["write_transactions"] / wall, 1) if wall > 0 else None
        # One lock serialises every write transaction, so each held it for at most wall / writes (equal
        # when the lock was never free: then its waits are long, as write_lock_wait_ms shows).
        out["write_lock_held_ms_at_most"] = round(1000 * wall / writes, 3)
        out["write_lock_wait_ms_per_write_transaction"] = round(db["write_lock_wait_ms"] / writes, 3)
    spent = gw + gen + out.get("postgres_cpu_s", 0.0)
    out["generator_cpu_share"] = round(gen / spent, 4) if spent > 0 else None
    if wall > 0:  # the machine's cores over the phase: busy + idle + stolen = its CPU count
        for kind, seconds in after["machine_cpu_s"].items():
            out[f"machine_cores_{kind}"] = round((seconds - before["machine_cpu_s"][kind]) / wall, 3)
    return out


async def commit_phase(api: GatewayClient, pairs: list[Pair], commits: int) -> int:
    """Per group ``commits`` path-updating commits by A, each processed by B (groups concurrently)."""

    async def one(pair: Pair) -> int:
        for _ in range(commits):
            out = await api.commit(pair.sender, pair.group_id, update=True)
            got = await api.process(pair.receiver, pair.group_id, out["commit"])
            if got.get("kind") != "commit":
                raise RuntimeError(f"B did not get a commit back: {got.get('kind')}")
        return commits

    return sum(await asyncio.gather(*(one(p) for p in pairs)))


async def measure(
    cfg: Settings, server: Server, admin: str, pg: PgCounters | None, label: str
) -> dict[str, Any]:
    async with GatewayClient(server.base, admin, timeout=120.0) as root:
        ready_s = await server.wait_ready(root)
        api, _ = await tenant_client(root)
        t0 = time.perf_counter()
        pairs = await make_pairs(api, 0, cfg.groups)
        setup_s = time.perf_counter() - t0
        print(f"{label}: ready in {ready_s:.1f} s, {cfg.groups} groups in {setup_s:.1f} s", file=sys.stderr)
        connections = lean_connections(api, cfg.groups)  # the warm-up's, kept for the load
        try:
            await run_clients(api, pairs, cfg.groups, cfg.warmup_s, 10**9, f"{label} warm-up", connections)
            probe = Probe(server, api, pg)
            before = await probe.snapshot()
            stats, elapsed = await run_clients(
                api, pairs, cfg.groups, cfg.duration_s, 10**9, f"{label} load", connections
            )
            after = await probe.snapshot()
        finally:
            await asyncio.gather(*(c.close() for c in connections))
        commits = await commit_phase(api, pairs, cfg.commits) if cfg.commits else 0
        after_commits = await probe.snapshot()
    messages = len(stats.pair_ms)
    if stats.errors:
        raise RuntimeError(f"{label}: errors during the load: {stats.errors} {stats.error_samples}")
    lat = latency_summary(stats.pair_ms)
    return {
        "messages": messages,
        "elapsed_s": round(elapsed, 3),
        "messages_per_s": round(messages / elapsed, 2),
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "per_message": costs(before, after, messages),
        "per_commit": costs(after, after_commits, commits) if commits else None,
        "setup_s": round(setup_s, 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run_configuration(
    cfg: Settings,
    store: str,
    processes: int,
    data_dir: Path,
    admin: str,
    env: dict[str, str],
    pg: PgCounters | None,
    round_no: int = 0,
) -> dict[str, Any]:
    label = f"{store} ×{processes}" + (f" round {round_no + 1}" if cfg.rounds > 1 else "")
    server = Server(data_dir, data_dir.parent / f"{store}-{processes}.log", env, workers=processes)
    try:
        result = asyncio.run(measure(cfg, server, admin, pg, label))
    finally:
        code = server.stop()
    if code not in (0, -signal.SIGTERM):
        print(f"warning: {label}: the server exited with {code}:\n{server.log_tail()}", file=sys.stderr)
    how = (
        "one `mls-gateway serve` process" if processes == 1 else f"`mls-gateway serve --workers {processes}`"
    )
    print(
        f"{label}: {result['messages_per_s']:.1f} msg/s, gateway CPU "
        f"{result['per_message']['gateway_cpu_ms_per_op']:.2f} ms/msg",
        file=sys.stderr,
        flush=True,
    )
    return {"store": store, "round": round_no + 1, "processes": processes, "how": how, **result}


def round_order(round_no: int) -> tuple[int, ...]:
    """The process counts of round ``round_no`` (from 0) in the order they run: 1 then 2, then 2 then 1, …
    so that a machine speeding up or slowing down over the benchmark favours neither."""
    return PROCESSES if round_no % 2 == 0 else PROCESSES[::-1]


@contextlib.contextmanager
def store_setup(store: str, tmp: Path) -> Iterator[tuple[Path, str, dict[str, str], PgCounters | None]]:
    """A data folder (and, for PostgreSQL, a throw-away cluster) for ``store``: its admin token, the
    server environment and the counters."""
    data_dir = tmp / store
    if store == "sqlite":
        yield data_dir, init_gateway(data_dir), {}, None
        return
    from tests.postgres_cluster import throwaway_cluster

    with throwaway_cluster(settings={"shared_preload_libraries": "pg_stat_statements"}) as cluster:
        env = {"MLSGW_DATABASE": cluster.dsn}
        admin = init_gateway(data_dir, env)
        pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        counters = PgCounters(cluster.dsn, pid)
        try:
            yield data_dir, admin, env, counters
        finally:
            counters.close()


def run(cfg: Settings) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mlsgw-bench-scale-"))
    runs = []
    try:
        for store in cfg.stores:
            t0 = time.perf_counter()
            with store_setup(store, tmp) as (data_dir, admin, env, pg):
                print(f"{store}: data folder ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                for round_no in range(cfg.rounds):
                    for processes in round_order(round_no):
                        runs.append(
                            run_configuration(cfg, store, processes, data_dir, admin, env, pg, round_no)
                        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = build_report(cfg, runs)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(report, cfg.out / "scale.png")
    return report


def build_report(cfg: Settings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    top: dict[str, Any] = {}
    rounds: dict[str, list[float | None]] = {}
    for store in cfg.stores:
        prefix = "" if store == "postgresql" else f"{store}_"
        rate = {(r["round"], r["processes"]): r["messages_per_s"] for r in runs if r["store"] == store}
        numbers = sorted({n for n, _ in rate})
        ones, twos = [rate[n, 1] for n in numbers], [rate[n, 2] for n in numbers]
        top[f"{prefix}messages_per_s_1_process"] = round(statistics.median(ones), 2)
        top[f"{prefix}messages_per_s_2_processes"] = round(statistics.median(twos), 2)
        rounds[store] = [
            round(two / one, 3) if one > 0 else None for one, two in zip(ones, twos, strict=True)
        ]
        known = [r for r in rounds[store] if r is not None]
        top[f"{prefix}scaling_2_over_1"] = round(statistics.median(known), 3) if known else None
    shares = [
        r["per_message"]["generator_cpu_share"] for r in runs if r["per_message"]["generator_cpu_share"]
    ]
    return {
        **top,
        "generator_cpu_share": max(shares) if shares else None,
        "rounds": rounds,
        "benchmark": "scale",
        "quick": cfg.quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": (
            "one message = POST /messages on member A + POST /process of it on member B; one commit = a "
            "path-updating commit by A + POST /process of it on B; 2 processes = `serve --workers 2` "
            "(connections handed out in turn); messages_per_s_*: the median over the rounds, "
            "scaling_2_over_1: the median of the rounds' ratios (rounds: each round's 2-process rate over "
            "its 1-process rate, the two run one after the other, the order alternating); "
            "generator_cpu_share = the load generator's CPU / (generator + "
            "gateways + PostgreSQL), the largest of the runs; machine_cores_busy / _idle / _stolen = the "
            "whole machine's CPUs over a phase, in cores (/proc/stat; stolen = the hypervisor ran another "
            "guest on them); gateway_context_switches_per_op: of the gateway's threads alive over the whole "
            "phase (null when one went away during it: its counts leave with it)"
        ),
        "config": {
            "stores": list(cfg.stores),
            "groups": cfg.groups,
            "members_per_group": 2,
            "clients": cfg.groups,
            "duration_s": cfg.duration_s,
            "warmup_s": cfg.warmup_s,
            "commits_per_group": cfg.commits,
            "rounds": cfg.rounds,
            "cipher_suite": 1,
        },
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
    }


# ---- output ------------------------------------------------------------------------------------------------


def print_summary(report: dict[str, Any]) -> None:
    head = (
        f"{'store':<11}{'round':>6}{'procs':>6}{'msg/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'gw CPU ms/msg':>14}"
        f"{'gw sys ms/msg':>14}{'gw ctx sw/msg':>14}"
        f"{'pg CPU ms/msg':>14}{'gen share':>10}{'stmts/msg':>10}{'wtx/msg':>8}{'rows/msg':>9}"
        f"{'HSM/msg':>8}{'stmts/commit':>13}{'rows/commit':>12}{'HSM/commit':>11}{'lock held ms≤':>14}"
        f"{'lock wait ms/wtx':>17}{'cores stolen':>13}{'load avg':>9}"
    )
    print(f"\nscale benchmark{' (quick)' if report['quick'] else ''}")
    print("-" * len(head))
    print(head)
    for r in report["runs"]:
        m, c = r["per_message"], r["per_commit"] or {}
        db, dbc = m.get("database_per_op", {}), c.get("database_per_op", {})
        each = m["gateway_context_switches_per_op"]
        switches = None if each is None else float(sum(each.values()))
        print(
            f"{r['store']:<11}{r.get('round', 1):>6}{r['processes']:>6}{r['messages_per_s']:>9.1f}"
            f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{m['gateway_cpu_ms_per_op']:>14.2f}"
            f"{m['gateway_system_cpu_ms_per_op']:>14.2f}{_num(switches):>14}"
            f"{_num(m.get('postgres_cpu_ms_per_op')):>14}{_num(m['generator_cpu_share']):>10}"
            f"{_num(db.get('statements')):>10}{_num(db.get('write_transactions')):>8}"
            f"{_num(db.get('rows_written')):>9}{m['hsm_operations_per_op']:>8.2f}"
            f"{_num(dbc.get('statements')):>13}{_num(dbc.get('rows_written')):>12}"
            f"{_num(c.get('hsm_operations_per_op')):>11}{_num(m.get('write_lock_held_ms_at_most')):>14}"
            f"{_num(m.get('write_lock_wait_ms_per_write_transaction')):>17}"
            f"{_num(m.get('machine_cores_stolen')):>13}{r['load_average'][0]:>9.2f}"
        )
    print("-" * len(head))
    for store, prefix, name in (("postgresql", "", "PostgreSQL"), ("sqlite", "sqlite_", "SQLite")):
        if f"{prefix}scaling_2_over_1" in report:
            each = report["rounds"][store]
            rounds = f" (median of rounds: {', '.join(_num(r) for r in each)})" if len(each) > 1 else ""
            print(f"{name}: 2 processes / 1 process = {report[f'{prefix}scaling_2_over_1']}{rounds}")
    print(f"load generator's CPU share (largest): {report['generator_cpu_share']}")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    several = report["config"]["rounds"] > 1
    names = [
        f"{r['store']}\n{r['processes']} process{'es' if r['processes'] > 1 else ''}"
        + (f"\nround {r['round']}" if several else "")
        for r in runs
    ]
    xs = list(range(len(runs)))
    colours = ["#1f77b4" if r["store"] == "postgresql" else "#ff7f0e" for r in runs]
    fig, ((ax_r, ax_c), (ax_d, ax_h)) = plt.subplots(2, 2, figsize=(max(14.0, 1.7 * len(runs)), 9))

    rates = [r["messages_per_s"] for r in runs]
    bars = ax_r.bar(xs, rates, color=colours)
    for bar, r in zip(bars, runs, strict=True):
        stolen = r["per_message"].get("machine_cores_stolen")
        ax_r.annotate(
            f"{r['messages_per_s']:.0f}/s\np99 {r['p99_ms']:.0f} ms"
            + ("" if stolen is None else f"\n{stolen:.2f} cores stolen"),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax_r.set_xticks(xs, names, fontsize=8)
    ax_r.set_ylim(0, max([*rates, 1.0]) * 1.3)
    ax_r.set_ylabel("messages sent + processed / s")
    ratios = "; ".join(
        f"{store} 2/1 by round: {', '.join(_num(x) for x in each)}"
        for store, each in report["rounds"].items()
    )
    ax_r.set_title("Throughput, 1 vs 2 gateway processes" + (f"\n{ratios}" if several else ""), fontsize=9)

    parts = (
        ("gateway_user_cpu_ms_per_op", "gateway processes (user)", "#1f77b4"),
        ("gateway_system_cpu_ms_per_op", "gateway processes (kernel)", "#aec7e8"),
        ("postgres_cpu_ms_per_op", "PostgreSQL", "#2ca02c"),
        ("generator_cpu_ms_per_op", "load generator", "#9e9e9e"),
    )
    bottom = [0.0] * len(runs)
    for key, label, colour in parts:
        values = [r["per_message"].get(key, 0.0) for r in runs]
        ax_c.bar(xs, values, bottom=bottom, label=label, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax_c.set_xticks(xs, names, fontsize=8)
    ax_c.set_ylabel("CPU ms per message")
    ax_c.set_title("CPU per message (all processes on this machine)")
    ax_c.legend(fontsize=8)

    pg = [r for r in runs if "database_per_op" in r["per_message"]]
    keys = ("statements", "write_transactions", "transactions", "rows_written")
    width = 0.8 / max(len(pg), 1)
    for i, r in enumerate(pg):
        tag = f" r{r['round']}" if several else ""
        for j, (per, hatch) in enumerate((("per_message", ""), ("per_commit", "//"))):
            block = r[per] or {}
            values = [block.get("database_per_op", {}).get(k, 0.0) for k in keys]
            offs = [k + j * (len(keys) + 1) + (i - (len(pg) - 1) / 2) * width for k in range(len(keys))]
            ax_d.bar(
                offs,
                values,
                width,
                hatch=hatch,
                label=f"{r['processes']} proc{tag}, {per.replace('_', ' ')}",
            )
    ticks = [k + j * (len(keys) + 1) for j in range(2) for k in range(len(keys))]
    short = {
        "statements": "statements",
        "write_transactions": "write tx",
        "transactions": "tx",
        "rows_written": "rows",
    }
    ax_d.set_xticks(ticks, [f"{short[k]}\n{p}" for p in ("per msg", "per commit") for k in keys], fontsize=8)
    ax_d.set_ylabel("count per operation")
    ax_d.set_title("PostgreSQL work per message and per commit (pg_stat_statements)")
    if pg:
        ax_d.legend(fontsize=7)
    else:
        ax_d.text(0.5, 0.5, "no PostgreSQL run", ha="center", va="center", transform=ax_d.transAxes)

    kinds = sorted(
        {
            k.split("/")[0]
            for r in runs
            for per in ("per_message", "per_commit")
            for k in (r[per] or {}).get("hsm_operations_per_op_by_kind", {})
        }
    )
    for j, per in enumerate(("per_message", "per_commit")):
        values = []
        for r in runs:
            block = r[per] or {"hsm_operations_per_op_by_kind": {}}
            values.append(block["hsm_operations_per_op"] if block.get("count") else 0.0)
        bars = ax_h.bar([x + (j - 0.5) * 0.4 for x in xs], values, 0.4, label=per.replace("_", " "))
        for bar, v in zip(bars, values, strict=True):
            ax_h.annotate(
                f"{v:g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
            )
    ax_h.set_xticks(xs, names, fontsize=8)
    ax_h.set_ylabel("HSM operations")
    ax_h.set_title(f"HSM operations per message and per commit ({', '.join(kinds) or 'none'})")
    ax_h.legend(fontsize=8)

    c = report["config"]
    fig.suptitle(
        f"mls-gateway scale-out: {c['groups']} groups × 2 hosted members, {c['clients']} clients, "
        f"{c['duration_s']:g} s per run, {report['machine']['cpus']} CPUs, load average "
        f"{report['machine']['load_average_at_end'][0]:.1f}"
        f"{' — quick' if report['quick'] else ''}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benches.scale", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="4 groups, 4 s per run (well under a minute)")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: postgresql, sqlite")
    parser.add_argument("--groups", type=int, help="groups of 2 hosted members = clients (default 4 / 8)")
    parser.add_argument("--duration", type=float, help="seconds of load per run (default 4 / 20)")
    parser.add_argument("--commits", type=int, help="commits per group after the load (default 2 / 5)")
    parser.add_argument("--rounds", type=int, help="rounds of 1 and 2 processes per store (default 1 / 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for scale.json and scale.png")
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not stores or any(s not in STORES for s in stores):
        parser.error(f"--stores: a comma-separated list of {', '.join(STORES)}")
    if args.groups is not None and args.groups < 1:
        parser.error("--groups must be at least 1")
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        parser.error("--rounds must be in [1, 20]")
    if args.commits is not None and args.commits < 0:
        parser.error("--commits must be at least 0")
    if args.duration is not None and not 0 < args.duration <= 3600:
        parser.error("--duration must be in (0, 3600] seconds")
    cfg = settings_from(args)
    started = time.perf_counter()
    report = run(cfg)
    print_summary(report)
    print(
        f"wrote {cfg.out / 'scale.json'} and {cfg.out / 'scale.png'} in {time.perf_counter() - started:.1f} s"
    )
    return report


if __name__ == "__main__":
    main()
