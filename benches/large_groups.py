"""Large-group benchmark: the cost of group operations as the group grows to 10,000 members.

    python -m benches.large_groups [--quick] [--sizes 1000,10000] [--repeats R] [--shape copath|flat]
                                   [--backend auto|python|native] [--verify-threads T] [--out DIR]
                                   [--profile]

A benchmark, not a timed test. For each group size N (default 100, 1,000, 10,000; ``--quick``: 100,
1,000) it builds a group of N members in cipher suite 1 (X25519, AES-128-GCM, SHA-256, Ed25519, software
key stores) and then measures, as the median of ``repeats`` runs (default 5, 3 from 10,000 members on):

* ``add_member`` - member A (leaf 0) commits an Add of one fresh KeyPackage with an UpdatePath
  (``force_path``), which also makes the Welcome (the ratchet tree travels in its GroupInfo);
* ``process_commit`` - member B, a real member holding its private keys, processes that commit
  (parse, membership tag, signature, proposal validation, UpdatePath decryption, key schedule);
  its epoch authenticator is checked against the committer's;
* ``join_welcome`` - the new member joins from the Welcome (tree validation included); its epoch
  authenticator is checked too;
* ``self_update`` - A commits an empty commit with an UpdatePath (a self-update);
* ``load_state`` - restoring B's state with ``Group.from_bytes`` and computing its tree hash, which
  fills the ratchet tree's caches (node encodings, subtree hashes) that ``from_bytes`` leaves empty;
* ``add_n_in_one_commit`` - the creator of a new (one-member) group adds N members in one commit with
  an UpdatePath, the Welcome included: the N-1 KeyPackages of the build plus the round's fresh one
  (every added KeyPackage validated, §10.1; N GroupSecrets sealed, §12.4.3.1).

**Headline figures** (``headline`` in the JSON, printed last; issue 13 compares them with other
implementations): ``add_1000_in_one_commit_s`` = ``add_n_in_one_commit`` at N = 1,000 and
``join_1000_s`` = ``join_welcome`` at N = 1,000 (a new member joining the 1,000-member group, whose
Welcome carries the whole ratchet tree, every leaf signature verified), likewise
``add_10000_in_one_commit_s`` and ``join_10000_s`` when N = 10,000 is run; median wall time, and
``*_cpu_s`` the median CPU time of the process (which counts the threads that verify signatures in
parallel, :mod:`mls.crypto.signature_batch`). ``reference_s`` holds the figures measured before the
work of issue 13 and those of the fastest Rust implementation, for comparison (measured elsewhere).

Every run starts from the same state: A and B are restored with ``Group.from_bytes`` from bytes saved
after building, and their tree caches are filled, so that the four protocol operations are measured as
in a member that keeps its group in memory; the cold-start cost a stateless server would add is
``load_state``. A's pending commit is discarded afterwards, and each run adds a fresh KeyPackage.
Garbage collection is paused in timed regions (as ``timeit`` does). Building the group is timed once
per N and reported under ``build``, by phase.

**Tree shape** (``--shape copath``, the default). A creates the group and adds the other N-1 members in
one commit with an UpdatePath, so A's direct path is populated and no node has unmerged leaves. Then the
members at leaves 2, 4, 8, ... (< N), the leftmost leaf of each subtree on A's copath, join from that
Welcome and commit a self-update each, in that order (A and B process every one). Afterwards every node
on A's copath is a populated parent with no unmerged leaves, so A's path encrypts to one public key per
level (log2 N HPKE encryptions), as in a tree where members update regularly. Other parent nodes are
populated only on the updaters' direct paths and are blank elsewhere, which matters for joins (fewer
parent hashes to check) but not for A's commits. B is the member at the last leaf (N-1).
``--shape flat`` skips the self-updates: every parent node except those on A's direct path is blank, so
A's path encrypts to nearly every leaf (N-1 HPKE encryptions), the worst case of a never-updated group.
The report records the shape (populated parents, unmerged-leaf entries, HPKE ciphertexts per commit).

Every timing is taken twice: wall time (``median_s``, the headline) and the CPU time of this process
(``cpu_median_s``), which other load on a shared machine inflates far less.

Writes ``benches/results/large_groups.json`` (per N and operation: median, min, max seconds, repeats,
samples, in wall and CPU time; the build phases; the shape; message sizes; machine info and load
average) and ``benches/results/large_groups.png`` (log-log time against N, one line per operation; wall
time left, CPU time right) and prints a summary table. ``--profile`` also runs each
operation once more under cProfile (outside the timed runs) and writes ``profile/N_<op>.pstats`` into
the output directory, with the top functions printed; the build is then profiled as well, so its time in
the report includes the profiler's overhead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import native
from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto.backend import PythonBackend, get_backend, set_backend
from mls.crypto.key_store import SoftwareKeyStore
from mls.crypto.signature_batch import set_verify_threads, verify_threads
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.staged_commit import StagedCommit
from mls.wire.framing import MLSMessage, PublicMessage
from mls.wire.key_package import KeyPackage

RESULTS = Path(__file__).resolve().parent / "results"
SUITE = 1  # MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519: the fastest suite to make keys in
DEFAULT_SIZES = (100, 1_000, 10_000)
QUICK_SIZES = (100, 1_000)
OPERATIONS = (
    "add_member",
    "process_commit",
    "join_welcome",
    "self_update",
    "load_state",
    "add_n_in_one_commit",
)
LABELS = {
    "add_member": "add one member (commit with path + Welcome)",
    "process_commit": "process that commit (another member)",
    "join_welcome": "join from the Welcome",
    "self_update": "self-update commit",
    "load_state": "restore a member's state (from_bytes + tree hash)",
    "add_n_in_one_commit": "add N members in one commit (new group, with path + Welcome)",
    "build": "build the group (once)",
}
SHAPES = ("copath", "flat")
#: Headline field -> (group size, operation): named as issue 13 states its figures.
HEADLINE = {
    "add_1000_in_one_commit_s": (1_000, "add_n_in_one_commit"),
    "join_1000_s": (1_000, "join_welcome"),
    "add_10000_in_one_commit_s": (10_000, "add_n_in_one_commit"),
    "join_10000_s": (10_000, "join_welcome"),
}
#: Wall-time figures issue 13 gives for comparison (other machines and runs; not measured here).
REFERENCE_S = {
    "before_issue_13": {"add_1000_in_one_commit_s": 0.35, "join_1000_s": 0.10},
    "fastest_rust_implementation": {"add_1000_in_one_commit_s": 0.24, "join_1000_s": 0.06},
}


# ---- helpers -----------------------------------------------------------------------------------------


def new_client(name: bytes) -> Client:
    """A member identity in suite 1 with its own software key store and signature key."""
    return Client(SoftwareKeyStore(), SUITE, Credential.basic(name))


@contextmanager
def _no_gc() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _timed(fn: Callable[[], Any]) -> tuple[Any, tuple[float, float]]:
    """``fn()`` and its (wall, CPU) seconds; the CPU time of this process is robust to other load."""
    with _no_gc():
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return result, (elapsed, cpu)


def _commit_ciphertexts(commit: bytes) -> int:
    """How many HPKE ciphertexts the commit's UpdatePath carries (0 without a path)."""
    body = MLSMessage.from_bytes(commit).body
    assert isinstance(body, PublicMessage) and body.content.commit is not None
    path = body.content.commit.path
    return 0 if path is None else sum(len(n.encrypted_path_secret) for n in path.nodes)


def _same_epoch(committer: StagedCommit, other: Group | StagedCommit, who: str) -> None:
    mine = committer.state
    theirs = other.state
    if mine is None or theirs is None:
        raise AssertionError(f"{who}: a commit unexpectedly removed a member")
    if mine.secrets.epoch_authenticator != theirs.secrets.epoch_authenticator:
        raise AssertionError(f"{who} disagrees with the committer on the epoch authenticator")


def tree_shape(group: Group) -> dict[str, Any]:
    """Populated parents, unmerged-leaf entries, and the committer's copath resolution size."""
    tree = group.state.tree
    parents = [tree.parent_node(x) for x in range(1, tree.width, 2)]
    populated = [p for p in parents if p is not None]
    copath = tree.filtered_path_and_copath(group.own_leaf)
    return {
        "members": tree.member_count(),
        "leaf_slots": tree.n_leaves,
        "parent_nodes": len(parents),
        "populated_parents": len(populated),
        "unmerged_leaf_entries": sum(len(p.unmerged_leaves) for p in populated),
        "committer_leaf": group.own_leaf,
        "committer_copath_resolution": sum(len(tree.resolution(c)) for _, c in copath),
    }


def updater_leaves(n: int, shape: str) -> list[int]:
    """The leaves that self-update while building: the leftmost leaf of each subtree on leaf 0's copath."""
    if shape == "flat":
        return []
    out, leaf = [], 2
    while leaf < n:
        out.append(leaf)
        leaf *= 2
    return out


# ---- building a group of N -----------------------------------------------------------------------------


@dataclass
class Built:
    n: int
    alice: Group
    bob: Group
    build: dict[str, Any]
    shape: dict[str, Any]
    alice_state: bytes = field(repr=False, default=b"")
    bob_state: bytes = field(repr=False, default=b"")
    #: The creator's client, and the KeyPackages the build added (for ``add_n_in_one_commit``).
    creator: Client | None = field(repr=False, default=None)
    key_packages: list[KeyPackage] = field(repr=False, default_factory=list)

    def fresh_alice(self) -> Group:
        """A's state restored, with the tree-hash caches warm (as in a member that stays in memory)."""
        return warm(Group.from_bytes(self.alice_state, self.alice.key_store))

    def fresh_bob(self) -> Group:
        """B's state restored, with the tree-hash caches warm; the timed ``load_state``."""
        return warm(Group.from_bytes(self.bob_state, self.bob.key_store))


def warm(group: Group) -> Group:
    """Fill the ratchet tree's caches (node encodings and subtree hashes) that ``from_bytes`` leaves empty."""
    group.state.tree.tree_hash()
    return group


def build_group(n: int, shape: str = "copath", log: Callable[[str], None] = print) -> Built:
    """A group of ``n`` members (``n >= 3``) of the shape described in the module docstring."""
    if n < 3:
        raise ValueError("a benchmark group needs at least 3 members")
    phases: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), time.process_time()

    t0 = time.perf_counter()
    clients = [new_client(b"member-%d" % i) for i in range(n)]
    bundles = [c.key_package() for c in clients[1:]]
    phases["keypackages_s"] = time.perf_counter() - t0
    log(f"  N={n:,}: {n - 1:,} KeyPackages in {phases['keypackages_s']:.1f} s")

    t0 = time.perf_counter()
    alice = clients[0].create_group()
    staged = alice.commit(CommitOptions(add=[b.key_package for b in bundles], force_path=True))
    alice.merge_pending_commit()
    phases["add_all_s"] = time.perf_counter() - t0
    assert staged.welcome is not None
    log(
        f"  N={n:,}: one commit adding {n - 1:,} members in {phases['add_all_s']:.1f} s "
        f"(commit {len(staged.commit or b''):,} B, Welcome {len(staged.welcome):,} B)"
    )

    # B (the last leaf) and the updaters join from the Welcome; the KeyPackage of client i is at leaf i.
    updaters = updater_leaves(n, shape)
    joiners = sorted({*updaters, n - 1})
    t0 = time.perf_counter()
    members: dict[int, Group] = {}
    for leaf in joiners:
        g = clients[leaf].join(staged.welcome)
        if g.own_leaf != leaf:
            raise AssertionError(f"member {leaf} joined at leaf {g.own_leaf}")
        members[leaf] = g
    phases["joins_s"] = time.perf_counter() - t0
    log(f"  N={n:,}: {len(joiners)} members joined from the Welcome in {phases['joins_s']:.1f} s")

    # Self-updates, in order; everyone still needed (A, B, later updaters) processes each.
    t0 = time.perf_counter()
    for i, leaf in enumerate(updaters):
        committer = members[leaf]
        upd = committer.commit(CommitOptions(force_path=True))
        committer.merge_pending_commit()
        assert upd.commit is not None
        listeners = [alice, members[n - 1], *(members[u] for u in updaters[i + 1 :])]
        for g in {id(g): g for g in listeners if g is not committer}.values():
            processed = g.process(upd.commit)
            assert isinstance(processed, StagedCommit)
            g.merge(processed)
            if g.epoch_authenticator != committer.epoch_authenticator:
                raise AssertionError("a member disagrees with a self-update's committer")
        if leaf != n - 1:
            del members[leaf]
    phases["updates_s"] = time.perf_counter() - t0
    if updaters:
        log(
            f"  N={n:,}: {len(updaters)} self-updates (leaves {', '.join(map(str, updaters))}) "
            f"in {phases['updates_s']:.1f} s"
        )

    bob = members[n - 1]
    if bob.epoch_authenticator != alice.epoch_authenticator or bob.epoch != alice.epoch:
        raise AssertionError("A and B are not in the same epoch after building")
    phases["total_s"] = time.perf_counter() - started
    phases["total_cpu_s"] = time.process_time() - cpu_started
    build = {**phases, "joiners": len(joiners), "self_updates": len(updaters), "epoch": alice.epoch}
    built = Built(n, alice, bob, build, tree_shape(alice))
    built.creator, built.key_packages = clients[0], [b.key_package for b in bundles]
    built.alice_state = alice.to_bytes()
    built.bob_state = bob.to_bytes()
    return built


# ---- one measured round ---------------------------------------------------------------------------------


def one_round(built: Built, index: int, check_update: bool) -> dict[str, Any]:
    """Time every operation once from the built state; returns seconds per operation and sizes."""
    joiner = new_client(b"joiner-%d" % index)
    bundle = joiner.key_package()

    alice = built.fresh_alice()
    staged, t_add = _timed(lambda: alice.commit(CommitOptions(add=[bundle.key_package], force_path=True)))
    assert staged.commit is not None and staged.welcome is not None

    bob, t_load = _timed(built.fresh_bob)
    processed, t_process = _timed(lambda: bob.process(staged.commit))
    assert isinstance(processed, StagedCommit)
    _same_epoch(staged, processed, "the processing member")

    new_member, t_join = _timed(lambda: joiner.join(staged.welcome))
    _same_epoch(staged, new_member, "the new member")
    sizes = {
        "add_commit_bytes": len(staged.commit),
        "welcome_bytes": len(staged.welcome),
        "add_ciphertexts": _commit_ciphertexts(staged.commit),
    }
    alice.discard_pending_commit()

    updater = built.fresh_alice()
    update, t_update = _timed(lambda: updater.commit(CommitOptions(force_path=True)))
    assert update.commit is not None
    sizes["update_commit_bytes"] = len(update.commit)
    sizes["update_ciphertexts"] = _commit_ciphertexts(update.commit)
    if check_update:
        receiver = built.fresh_bob()
        received = receiver.process(update.commit)
        assert isinstance(received, StagedCommit)
        _same_epoch(update, received, "the processing member (self-update)")
    updater.discard_pending_commit()

    t_add_n, sizes["add_n_welcome_bytes"] = add_n_in_one_commit(built, bundle.key_package)
    times = {
        "add_member": t_add,
        "process_commit": t_process,
        "join_welcome": t_join,
        "self_update": t_update,
        "load_state": t_load,
        "add_n_in_one_commit": t_add_n,
    }
    return {"times": times, "sizes": sizes}


def add_n_in_one_commit(built: Built, fresh: KeyPackage) -> tuple[tuple[float, float], int]:
    """Time a new group's creator adding N members in one commit with a path (the build's N-1
    KeyPackages and ``fresh``); its (wall, CPU) seconds and the Welcome's size. The group is dropped."""
    assert built.creator is not None
    group = built.creator.create_group()
    add = CommitOptions(add=[*built.key_packages, fresh], force_path=True)
    staged, t = _timed(lambda: group.commit(add))
    assert staged.welcome is not None
    if group.state.tree.member_count() != 1 or staged.state is None:
        raise AssertionError("the commit adding N members did not stage a group")
    if staged.state.tree.member_count() != built.n + 1:
        raise AssertionError(f"the commit adding {built.n} members staged {staged.state.tree.member_count()}")
    group.discard_pending_commit()
    return t, len(staged.welcome)


def _profiler() -> cProfile.Profile:
    """A profiler on CPU time, so that other load on the machine does not inflate the numbers."""
    return cProfile.Profile(time.process_time)


def profile_round(built: Built, directory: Path, top: int = 15) -> dict[str, str]:
    """One more untimed round with each operation under its own cProfile; writes ``N_<op>.pstats``."""
    directory.mkdir(parents=True, exist_ok=True)
    joiner = new_client(b"joiner-profiled")
    bundle = joiner.key_package()
    profiles = {op: _profiler() for op in OPERATIONS}
    alice = built.fresh_alice()
    bob = profiles["load_state"].runcall(built.fresh_bob)
    staged = profiles["add_member"].runcall(
        alice.commit, CommitOptions(add=[bundle.key_package], force_path=True)
    )
    assert staged.commit is not None and staged.welcome is not None
    profiles["process_commit"].runcall(bob.process, staged.commit)
    profiles["join_welcome"].runcall(joiner.join, staged.welcome)
    alice.discard_pending_commit()
    alice = built.fresh_alice()
    profiles["self_update"].runcall(alice.commit, CommitOptions(force_path=True))
    alice.discard_pending_commit()
    assert built.creator is not None
    group = built.creator.create_group()
    add_all = CommitOptions(add=[*built.key_packages, bundle.key_package], force_path=True)
    profiles["add_n_in_one_commit"].runcall(group.commit, add_all)
    group.discard_pending_commit()
    out: dict[str, str] = {}
    for op, prof in profiles.items():
        path = directory / f"{built.n}_{op}.pstats"
        prof.dump_stats(path)
        out[op] = str(path)
        print(f"\n--- cProfile N={built.n:,} {op} (CPU time; top {top} by own time, then cumulative) ---")
        print(top_functions(path, top))
        print(top_functions(path, top, "cumulative"))
    return out


def top_functions(path: Path, top: int = 15, sort: str = "tottime") -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    lines = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    head = [line for line in lines[:start] if "function calls" in line]
    return "\n".join([*head, *lines[start:]]).rstrip()


# ---- the whole run --------------------------------------------------------------------------------------


def _summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    wall, cpu = [w for w, _ in samples], [c for _, c in samples]
    return {
        "median_s": statistics.median(wall),
        "min_s": min(wall),
        "max_s": max(wall),
        "repeats": len(samples),
        "samples_s": wall,
        "cpu_median_s": statistics.median(cpu),
        "cpu_min_s": min(cpu),
        "cpu_max_s": max(cpu),
        "cpu_samples_s": cpu,
    }


def default_repeats(n: int) -> int:
    return 3 if n >= 10_000 else 5


def bench_size(n: int, repeats: int, shape: str, profile_dir: Path | None) -> dict[str, Any]:
    print(f"N = {n:,}: building ({shape} shape)", flush=True)
    profiler = _profiler() if profile_dir is not None else None
    built = build_group(n, shape) if profiler is None else profiler.runcall(build_group, n, shape)
    if profiler is not None and profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        path = profile_dir / f"{n}_build.pstats"
        profiler.dump_stats(path)
        print(f"\n--- cProfile N={n:,} build (CPU time; top 15 by own time, then cumulative) ---")
        print(f"{top_functions(path)}\n{top_functions(path, 15, 'cumulative')}\n")
    print(f"N = {n:,}: built in {built.build['total_s']:.1f} s; shape {built.shape}", flush=True)
    times: dict[str, list[tuple[float, float]]] = {op: [] for op in OPERATIONS}
    sizes: dict[str, Any] = {}
    for r in range(repeats):
        result = one_round(built, r, check_update=(r == 0))
        for op, t in result["times"].items():
            times[op].append(t)
        sizes = result["sizes"]
        print(
            f"  N={n:,} run {r + 1}/{repeats}: "
            + ", ".join(
                f"{op} {w * 1e3:.1f} ms (CPU {c * 1e3:.1f})" for op, (w, c) in result["times"].items()
            ),
            flush=True,
        )
    entry: dict[str, Any] = {
        "members": n,
        "operations": {op: _summary(times[op]) for op in OPERATIONS},
        "build": built.build,
        "shape": built.shape,
        "sizes": sizes,
        "state_bytes": {"committer": len(built.alice_state), "other_member": len(built.bob_state)},
    }
    if profile_dir is not None:
        entry["profiles"] = profile_round(built, profile_dir)
    return entry


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The :data:`HEADLINE` figures of the sizes that were run: median wall time (``<name>_s``) and
    median CPU time of the process (``<name>_cpu_s``)."""
    out: dict[str, float] = {}
    for name, (n, op) in HEADLINE.items():
        entry = results.get(str(n))
        if entry is not None:
            stats = entry["operations"][op]
            out[name] = stats["median_s"]
            out[name.removesuffix("_s") + "_cpu_s"] = stats["cpu_median_s"]
    return out


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "crypto_backend": get_backend().name,
        "signature_verify_threads": verify_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run(sizes: list[int], repeats: int | None, shape: str, profile_dir: Path | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    machine_before = machine_info()
    results = {str(n): bench_size(n, repeats or default_repeats(n), shape, profile_dir) for n in sizes}
    return {
        "benchmark": "large_groups",
        "cipher_suite": SUITE,
        "shape": shape,
        "sizes": sizes,
        "operations": list(OPERATIONS),
        "definitions": {op: LABELS[op] for op in (*OPERATIONS, "build")},
        "headline": headline(results),
        "reference_s": REFERENCE_S,
        "results": results,
        "machine": {**machine_info(), "load_average_at_start": machine_before["load_average"]},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": time.perf_counter() - started,
    }


def chart(report: dict[str, Any], path: Path) -> None:
    """Log-log time against N: wall time (left) and this process's CPU time (right), one line per
    operation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    ns = [int(n) for n in results]
    fig, axes = plt.subplots(1, 2, figsize=(15, 7), sharey=True)
    markers = dict(zip(OPERATIONS, "osD^vP"))
    for ax, prefix, what in ((axes[0], "", "wall time"), (axes[1], "cpu_", "CPU time of the process")):
        for op in OPERATIONS:
            stats = [results[str(n)]["operations"][op] for n in ns]
            ys = [st[f"{prefix}median_s"] for st in stats]
            lo = [y - st[f"{prefix}min_s"] for st, y in zip(stats, ys)]
            hi = [st[f"{prefix}max_s"] - y for st, y in zip(stats, ys)]
            ax.errorbar(ns, ys, yerr=[lo, hi], marker=markers[op], capsize=3, label=LABELS[op])
        build = [results[str(n)]["build"]["total_cpu_s" if prefix else "total_s"] for n in ns]
        ax.plot(ns, build, "k--", marker="x", alpha=0.6, label=LABELS["build"])
        if len(ns) > 1:
            ref = results[str(ns[0])]["operations"]["join_welcome"][f"{prefix}median_s"]
            ax.plot(
                ns,
                [ref * n / ns[0] for n in ns],
                ":",
                color="grey",
                label="∝ N (guide through the first join)",
            )
        if prefix == "":
            _reference_points(ax, ns)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.set_xlabel("group size N (members)")
        ax.set_ylabel(f"{what} (s; median, bars min-max)")
        ax.set_title(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(
        f"MLS large groups: time against group size (suite {report['cipher_suite']}, "
        f"{report['shape']} tree shape, {m['crypto_backend']} crypto backend, "
        f"Python {m['python']}, {m['cpu_count']} CPUs)\n{_headline_text(report)}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _headline_text(report: dict[str, Any]) -> str:
    """The headline figures, two a line: median wall (CPU) seconds, and the load average at the end."""
    head = report["headline"]
    parts = [
        f"{name.removesuffix('_s')} = {seconds:.3f} s (CPU {head[name.removesuffix('_s') + '_cpu_s']:.3f} s)"
        for name, seconds in head.items()
        if not name.endswith("_cpu_s")
    ]
    load = report["machine"].get("load_average")
    if load:
        parts.append(f"load average {load[0]:.1f}")
    return "\n".join("; ".join(parts[i : i + 2]) for i in range(0, len(parts), 2))


def _reference_points(ax: Any, ns: list[int]) -> None:
    """Issue 13's comparison figures at N = 1,000 (wall time; measured elsewhere), as hollow markers."""
    if 1_000 not in ns:
        return
    styles = {"before_issue_13": ("red", "before"), "fastest_rust_implementation": ("green", "Rust")}
    for source, figures in REFERENCE_S.items():
        color, who = styles[source]
        for name, seconds in figures.items():
            what = "add 1,000 in one commit" if name.startswith("add") else "join 1,000"
            ax.plot(
                [1_000],
                [seconds],
                marker="*",
                markersize=11,
                linestyle="none",
                markerfacecolor="none",
                markeredgecolor=color,
                label=f"{what}: {who} (issue 13)",
            )


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def table(report: dict[str, Any]) -> str:
    cols = [*OPERATIONS, "build"]
    heads = [
        "N",
        "add member",
        "process",
        "join",
        "self-update",
        "load state",
        "add N",
        "build",
        "path cts",
        "Welcome",
    ]
    rows = [heads]
    for n, entry in report["results"].items():
        ops = entry["operations"]
        cells = [f"{int(n):,}"]
        for op in cols:
            if op == "build":
                wall, cpu = entry["build"]["total_s"], entry["build"]["total_cpu_s"]
            else:
                wall, cpu = ops[op]["median_s"], ops[op]["cpu_median_s"]
            cells.append(f"{_fmt(wall)} ({_fmt(cpu)})")
        cells.append(str(entry["sizes"]["add_ciphertexts"]))
        cells.append(f"{entry['sizes']['welcome_bytes'] / 1024:,.0f} KiB")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers, not {text!r}") from None
    if not sizes or any(n < 3 for n in sizes):
        raise argparse.ArgumentTypeError("each size must be at least 3 members")
    return sorted(set(sizes))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benches.large_groups", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help=f"sizes {', '.join(map(str, QUICK_SIZES))} only")
    parser.add_argument("--sizes", type=parse_sizes, help="comma-separated group sizes, e.g. 1000,10000")
    parser.add_argument("--repeats", type=int, help="runs per operation (default 5; 3 from 10,000 members)")
    parser.add_argument(
        "--shape", choices=SHAPES, default="copath", help="tree shape (see the module docstring)"
    )
    parser.add_argument(
        "--backend",
        choices=native.BACKEND_CHOICES,
        help="crypto backend (default: $MLS_CRYPTO_BACKEND, else auto)",
    )
    parser.add_argument(
        "--verify-threads",
        type=int,
        help="threads verifying large signature batches (default: the library's, min(4, CPUs))",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for large_groups.json and .png")
    parser.add_argument("--profile", action="store_true", help="also cProfile each operation (see docstring)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.verify_threads is not None:
        if args.verify_threads < 1:
            parser.error("--verify-threads must be at least 1")
        set_verify_threads(args.verify_threads)
    set_backend(native.choose_backend(args.backend, PythonBackend()))
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    print(
        f"large-group benchmark: sizes {sizes}, shape {args.shape}, backend {get_backend().name}", flush=True
    )
    report = run(sizes, args.repeats, args.shape, args.out / "profile" if args.profile else None)
    report["quick"] = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "large_groups.json", args.out / "large_groups.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    chart(report, png_path)
    print()
    print(table(report))
    print(
        f"\nmedian wall time (median CPU time of this process); 'path cts' = HPKE ciphertexts in the add "
        "commit's UpdatePath.\n"
        f"Wrote {json_path} and {png_path} in {report['elapsed_s']:.1f} s"
    )
    for name, seconds in report["headline"].items():
        if not name.endswith("_cpu_s"):
            cpu = report["headline"][name.removesuffix("_s") + "_cpu_s"]
            print(f"{name} = {seconds:.3f} (CPU {cpu:.3f})")
    return report


if __name__ == "__main__":
    main()
