"""Native crypto benchmark: batched AEAD with secret-tree keys, and full tree hashing, native vs Python.

    python -m benches.native [--quick]

Writes ``benches/results/native.json`` and ``benches/results/native.png``. Measured in one run:

* **AEAD** - 1,000 messages of 100 bytes sealed and opened, each under its own key and nonce as the
  secret tree hands them out (one sender ratchet, generations 0..999: ``ratchet_steps`` returns the keys
  and the nonces back to back, derived before timing), with one PrivateContentAAD for the batch (a
  sender's messages within an epoch) and, separately, one AAD object per message.
  Native (``aead_seal_batch``/``aead_open_batch``: one C call per batch) against the Python backend's
  implementation of the same calls, against the C calls alone, and against
  ``openssl speed -evp aes-128-gcm -bytes 100 -seconds 1``, libcrypto's own rate through EVP. That rate
  encrypts under one key with one ``EVP_CipherUpdate`` per message (no re-key, no tag), so it was meant as
  a ceiling; but the native layer skips EVP (it calls the provider's AES-GCM functions, see
  ``native/csrc/mlsn_common.c``), and OpenSSL 3.0's EVP costs more per call than a re-key does, so the
  native rate can exceed it. Compared in operations per second.
* **Ratchet** - deriving those 1,000 key/nonce pairs: ``ratchet_steps`` native vs the Python reference;
  and the whole per-message pipeline, derive + seal + open.
* **Tree hash** - the product path: ``RatchetTree.tree_hash()`` of a 10,000-member suite-1 tree just
  decoded from its ``ratchet_tree`` encoding (as when joining: no hash cached; LeafNodes of about 190
  bytes, a quarter of the parents blank; RFC 9420 trees are perfect, so 6,384 blank leaves follow), with
  the native backend and with the Python backend in use; also the C call alone, the pure-Python reference
  of the C function (``tree_hashes`` of ``tests/native/reference.py``), and one direct-path update.

* **Messages** - whole application messages in a 2-member suite-1 group with software keys: ``protect`` by
  one member and ``process`` by the other (framing, signature, secret tree, AEAD, sender data), with the
  native backend and with the Python backend, alternating.

The Python figures of the ratchet, the full-tree C call and the path update are those of the pure-Python
definition the C must match, which lives with the tests (``tests/native/reference.py``; run from the
repository root); every other Python figure is the library's own path on the Python backend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MESSAGE_SIZE = 100
BATCH = 1000
TREE_LEAVES = 10_000
AAD_SIZE = 45  # PrivateContentAAD: group_id<V> (32 bytes), epoch, content_type, authenticated_data<V>


#: Which statistic rates and ratios use: the best of several runs, in CPU time of the measuring thread.
#: The benchmark host may be shared; CPU time leaves out the time other processes hold the CPU (and
#: ``openssl speed`` divides by CPU time too). Each contender runs on this one thread - the GIL is
#: released in the C calls, but nothing else runs meanwhile. Wall-clock times are in the JSON as well.
STAT = "best_cpu_s"


def _interleaved(
    fns: Mapping[str, Callable[[], object] | tuple[Callable[[], Any], Callable[[Any], object]]],
    rounds: int,
    min_time: float,
) -> dict[str, dict[str, float]]:
    """Time of each function, measured in alternation (one call of each per round).

    Alternating spreads any load from elsewhere on the host over every contender alike, so their
    ratios stay fair. At least ``rounds`` rounds, more until ``min_time`` seconds have passed. A
    ``(setup, run)`` pair times ``run(setup())`` without the setup.
    """
    calls = {name: fn if isinstance(fn, tuple) else (_nothing, _ignore(fn)) for name, fn in fns.items()}
    for setup, run in calls.values():
        run(setup())  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    started = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - started < min_time:
        for name, (setup, run) in calls.items():
            arg = setup()
            w0, c0 = time.perf_counter(), time.thread_time()
            run(arg)
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - w0)
        done += 1
    return {
        name: {
            "best_cpu_s": min(cpu[name]),
            "median_cpu_s": statistics.median(cpu[name]),
            "best_s": min(wall[name]),
            "median_s": statistics.median(wall[name]),
            "runs": len(wall[name]),
        }
        for name in fns
    }


def _nothing() -> None:
    return None


def _ignore(fn: Callable[[], object]) -> Callable[[Any], object]:
    return lambda _: fn()


def openssl_speed(seconds: int = 1) -> dict[str, Any]:
    """``openssl speed -evp aes-128-gcm`` at the message size: bytes/s and ops/s ("available": False
    when there is no openssl binary or its output cannot be read)."""
    exe = shutil.which("openssl")
    if exe is None:
        return {"available": False, "note": "openssl binary not found"}
    cmd = [exe, "speed", "-evp", "aes-128-gcm", "-bytes", str(MESSAGE_SIZE), "-seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = proc.stdout + proc.stderr
    sizes: list[int] = []
    result: dict[int, float] = {}
    for line in text.splitlines():
        if line.startswith("type") and "bytes" in line:
            sizes = [int(n) for n in re.findall(r"(\d+) bytes", line)]
        m = re.match(r"(?i)aes-128-gcm\s+(.*)$", line.strip())
        if m and sizes:
            values = re.findall(r"([\d.]+)k", m.group(1))
            # "The 'numbers' are in 1000s of bytes per second processed."
            result = {size: float(v) * 1000.0 for size, v in zip(sizes, values)}
    version = subprocess.run([exe, "version"], capture_output=True, text=True, check=False).stdout.strip()
    if not result:
        return {"available": False, "note": "could not parse openssl speed output", "command": " ".join(cmd)}
    return {
        "available": True,
        "command": " ".join(cmd),
        "version": version,
        "bytes_per_s": {str(k): v for k, v in result.items()},
        "ops_per_s": {str(k): v / k for k, v in result.items()},
    }


def bench_aead(nb: Any, pb: Any, reference: Any, quick: bool) -> dict[str, Any]:
    rng = random.Random(1)
    secret = rng.randbytes(32)
    repeat = 10 if quick else 40
    # Keys and nonces of generations 0..999 of one sender ratchet (suite 1: SHA-256, AES-128-GCM), back to
    # back as ratchet_steps hands them out; one PrivateContentAAD (a sender's batch within one epoch).
    keys, nonces, following = nb.ratchet_steps("sha256", secret, 0, BATCH, 16, 12)
    assert (keys, nonces, following) == reference.ratchet_steps("sha256", secret, 0, BATCH, 16, 12)
    aad = rng.randbytes(AAD_SIZE)
    aads = [bytes(aad) for _ in range(BATCH)]  # the same AAD as separate objects: the per-message form
    pts = [rng.randbytes(MESSAGE_SIZE) for _ in range(BATCH)]
    cts = nb.aead_seal_batch(1, keys, nonces, aad, pts)
    assert (
        cts == pb.aead_seal_batch(1, keys, nonces, aad, pts) == nb.aead_seal_batch(1, keys, nonces, aads, pts)
    )
    assert (
        nb.aead_open_batch(1, keys, nonces, aad, cts) == pts == pb.aead_open_batch(1, keys, nonces, aad, cts)
    )
    items = [(keys[16 * i : 16 * i + 16], nonces[12 * i : 12 * i + 12], aad, pts[i]) for i in range(BATCH)]

    c_seal, c_open = _aead_c_only(keys, nonces, aad, pts, cts)
    fns: dict[str, Callable[[], object]] = {
        "native_seal": lambda: nb.aead_seal_batch(1, keys, nonces, aad, pts),
        "native_open": lambda: nb.aead_open_batch(1, keys, nonces, aad, cts),
        "python_seal": lambda: pb.aead_seal_batch(1, keys, nonces, aad, pts),
        "python_open": lambda: pb.aead_open_batch(1, keys, nonces, aad, cts),
        "native_seal_per_message_aad": lambda: nb.aead_seal_batch(1, keys, nonces, aads, pts),
        "native_open_per_message_aad": lambda: nb.aead_open_batch(1, keys, nonces, aads, cts),
        "python_seal_per_message_aad": lambda: pb.aead_seal_batch(1, keys, nonces, aads, pts),
        "python_open_per_message_aad": lambda: pb.aead_open_batch(1, keys, nonces, aads, cts),
        "native_one_shot_seal": lambda: [nb.aead_seal(1, *item) for item in items],
        "python_one_shot_seal": lambda: [pb.aead_seal(1, *item) for item in items],
        "native_ratchet": lambda: nb.ratchet_steps("sha256", secret, 0, BATCH, 16, 12),
        "python_ratchet": lambda: reference.ratchet_steps("sha256", secret, 0, BATCH, 16, 12),
        "c_only_seal": c_seal,
        "c_only_open": c_open,
    }
    t = _interleaved(fns, repeat, 1.5 if quick else 5.0)

    def per_s(key: str) -> float:
        return BATCH / t[key][STAT]

    def pair(side: str, suffix: str = "") -> float:
        return float(t[f"{side}_seal{suffix}"][STAT] + t[f"{side}_open{suffix}"][STAT])

    native_pipe = pair("native") + t["native_ratchet"][STAT]
    python_pipe = pair("python") + t["python_ratchet"][STAT]
    return {
        "messages": BATCH,
        "message_bytes": MESSAGE_SIZE,
        "aad_bytes": AAD_SIZE,
        "aead": "AES-128-GCM (suite 1), a fresh secret-tree key and nonce per message",
        "timings": t,
        "seal_per_s": {
            "native_batched": per_s("native_seal"),
            "native_one_shot": per_s("native_one_shot_seal"),
            "python": per_s("python_seal"),
            "python_one_shot": per_s("python_one_shot_seal"),
        },
        "open_per_s": {"native_batched": per_s("native_open"), "python": per_s("python_open")},
        "seal_open_pairs_per_s": {"native_batched": BATCH / pair("native"), "python": BATCH / pair("python")},
        "ratchet_generations_per_s": {"native": per_s("native_ratchet"), "python": per_s("python_ratchet")},
        "seal_open_speedup": pair("python") / pair("native"),
        "seal_open_speedup_per_message_aad": pair("python", "_per_message_aad")
        / pair("native", "_per_message_aad"),
        "one_shot_seal_speedup": t["python_one_shot_seal"][STAT] / t["native_one_shot_seal"][STAT],
        "ratchet_speedup": t["python_ratchet"][STAT] / t["native_ratchet"][STAT],
        "derive_seal_open_speedup": python_pipe / native_pipe,
        # The C calls alone on pre-packed buffers: libcrypto's cost. No binding can beat this bound.
        "seal_open_speedup_bound": pair("python") / (t["c_only_seal"][STAT] + t["c_only_open"][STAT]),
        "c_only_seal_per_s": per_s("c_only_seal"),
    }


def _aead_c_only(
    keys: bytes, nonces: bytes, aad: bytes, pts: list[bytes], cts: list[bytes]
) -> tuple[Callable[[], None], Callable[[], None]]:
    """``mlsn_aead_seal_many``/``open_many`` alone (one shared AAD), their inputs packed beforehand."""
    from native._mlsnative import ffi, lib

    n = len(pts)
    pt_buf, ct_buf = b"".join(pts), b"".join(cts)
    pt_lens, ct_lens = ffi.new("size_t[]", list(map(len, pts))), ffi.new("size_t[]", list(map(len, cts)))
    out, back, status = (
        ffi.new("uint8_t[]", len(ct_buf)),
        ffi.new("uint8_t[]", len(pt_buf)),
        ffi.new("int8_t[]", n),
    )

    def seal() -> None:
        assert not lib.mlsn_aead_seal_many(
            1, n, keys, len(keys), nonces, len(nonces), aad, len(aad), ffi.NULL, pt_buf, len(pt_buf), pt_lens,
            out, len(ct_buf),
        )  # fmt: skip

    def open_() -> None:
        assert not lib.mlsn_aead_open_many(
            1, n, keys, len(keys), nonces, len(nonces), aad, len(aad), ffi.NULL, ct_buf, len(ct_buf), ct_lens,
            back, len(pt_buf), status,
        )  # fmt: skip

    return seal, open_


def _ratchet_tree_wire(rng: random.Random, n_leaves: int) -> bytes:
    """The ``ratchet_tree`` encoding (§12.4.3.3) of a suite-1 tree of ``n_leaves`` members, as a joiner
    receives it: LeafNodes from a commit (basic credential, capabilities, parent hash, 64-byte signature),
    three in four parents present. Signatures are random: tree hashing does not verify them."""
    from mls.credentials.credential import Credential
    from mls.crypto.cipher_suite import cipher_suite
    from mls.tree.leaf_node import Capabilities, LeafNode, LeafNodeSource
    from mls.tree.nodes import ParentNode, encode_ratchet_tree
    from mls.tree.ratchet_tree import RatchetTree

    caps = Capabilities(versions=(1,), cipher_suites=(1, 2, 3), extensions=(), proposals=(), credentials=(1,))
    nodes: list[LeafNode | ParentNode | None] = []
    for x in range(2 * n_leaves - 1):
        if x % 2 == 0:
            leaf = LeafNode(
                encryption_key=rng.randbytes(32), signature_key=rng.randbytes(32),
                credential=Credential.basic(b"member-%d" % (x // 2)), capabilities=caps,
                leaf_node_source=LeafNodeSource.commit, parent_hash=rng.randbytes(32), extensions=(),
                signature=rng.randbytes(64),
            )  # fmt: skip
            nodes.append(leaf)
        elif rng.random() < 0.75:
            nodes.append(
                ParentNode(
                    encryption_key=rng.randbytes(32), parent_hash=rng.randbytes(32), unmerged_leaves=()
                )
            )
        else:
            nodes.append(None)
    return encode_ratchet_tree(RatchetTree(cipher_suite(1), nodes).to_wire())


def _tree_c_only(decoded: Any) -> Callable[[], None]:
    """``mlsn_tree_hashes_spans`` alone on the decoded message, its span arrays made beforehand."""
    from native._mlsnative import ffi, lib

    n = len(decoded.lens)
    starts, lens = ffi.new("size_t[]", list(decoded.starts)), ffi.new("size_t[]", list(decoded.lens))
    width = 2 * (1 << (((n + 1) // 2) - 1).bit_length()) - 1
    out = ffi.new("uint8_t[]", width * 32)
    source = decoded.source

    def call() -> None:
        assert not lib.mlsn_tree_hashes_spans(1, n, source, len(source), starts, lens, out, width * 32)

    return call


def bench_tree_hash(nb: Any, reference: Any, quick: bool) -> dict[str, Any]:
    """The product path: the root tree hash of a ratchet tree just decoded (as when joining), no hash
    cached, with each backend in use; then the same followed by reading every node's hash (the native
    backend keeps them in one buffer and cuts each out when first asked for); the decode itself with and
    without noting where the nodes lie (what tree hashing from the message costs the decoder); the C call
    alone, the pure-Python reference of the C function, and one direct-path update."""
    from mls.crypto import backend as be
    from mls.crypto.cipher_suite import cipher_suite
    from mls.tree.nodes import Node, decode_ratchet_tree_extension
    from mls.tree.ratchet_tree import RatchetTree
    from mls.wire.codec import Reader
    from mls.wire.struct import Opt, Vec

    rng = random.Random(2)
    cs = cipher_suite(1)
    wire = _ratchet_tree_wire(rng, TREE_LEAVES)
    backends = {"native": nb, "python": be.PythonBackend()}
    saved = be.get_backend()

    def fresh() -> RatchetTree:
        return RatchetTree.decode(cs, wire)

    def root_hash(name: str) -> Callable[[RatchetTree], bytes]:
        def run(tree: RatchetTree) -> bytes:
            be.set_backend(backends[name])
            try:
                return tree.tree_hash()
            finally:
                be.set_backend(saved)

        return run

    def root_then_every_hash(name: str) -> Callable[[RatchetTree], list[bytes]]:
        def run(tree: RatchetTree) -> list[bytes]:
            root_hash(name)(tree)
            return tree.all_node_hashes()

        return run

    plain_nodes: Vec[Node | None] = Vec(Opt(Node))
    decoded = decode_ratchet_tree_extension(wire).decoded
    assert decoded is not None
    nodes = [decoded.encoding(x) or None for x in range(len(decoded.lens))]
    native = nb.tree_hashes("sha256", nodes)
    root = (1 << (((len(nodes) + 1) // 2) - 1).bit_length()) - 1
    assert native == reference.tree_hashes("sha256", nodes)
    assert root_hash("native")(fresh()) == root_hash("python")(fresh()) == native[root]
    repeat = 5 if quick else 20
    t = _interleaved(
        {
            "native_full": (fresh, root_hash("native")),
            "python_full": (fresh, root_hash("python")),
            "native_full_every_hash": (fresh, root_then_every_hash("native")),
            "python_full_every_hash": (fresh, root_then_every_hash("python")),
            "c_only_full": _tree_c_only(decoded),
            "reference_full": lambda: reference.tree_hashes("sha256", nodes),
        },
        repeat,
        1.5 if quick else 5.0,
    )
    t.update(
        _interleaved(
            {
                "decode_noting_spans": lambda: decode_ratchet_tree_extension(wire),
                "decode_plain": lambda: plain_nodes.read(Reader(wire)),
            },
            2 if quick else 5,
            0.0,
        )
    )
    leaf = TREE_LEAVES * 43 // 100  # a leaf in the left half, whose path reaches the root
    changed = list(nodes)
    changed[2 * leaf] = rng.randbytes(200)
    assert nb.tree_hash_path("sha256", changed, native, leaf) == reference.tree_hash_path(
        "sha256", changed, native, leaf
    )
    t.update(
        _interleaved(
            {
                "native_path": lambda: nb.tree_hash_path("sha256", changed, native, leaf),
                "python_path": lambda: reference.tree_hash_path("sha256", changed, native, leaf),
            },
            repeat * 10,
            0.3,
        )
    )
    return {
        "leaves": TREE_LEAVES,
        "full_tree_nodes": len(native),
        "encoded_bytes": sum(decoded.lens),
        "hash": "sha256",
        "timings": t,
        "full_speedup": t["python_full"][STAT] / t["native_full"][STAT],
        "full_every_hash_speedup": t["python_full_every_hash"][STAT] / t["native_full_every_hash"][STAT],
        "decode_spans_overhead_s": t["decode_noting_spans"][STAT] - t["decode_plain"][STAT],
        # The C call alone on pre-packed input: the bound for any binding of this C code.
        "full_speedup_bound": t["python_full"][STAT] / t["c_only_full"][STAT],
        "reference_over_native": t["reference_full"][STAT] / t["native_full"][STAT],
        "path_speedup": t["python_path"][STAT] / t["native_path"][STAT],
    }


def bench_messages(quick: bool) -> dict[str, Any]:
    """Application messages protected and processed per second in a 2-member group, per backend."""
    import native
    from mls.client import Client
    from mls.credentials.credential import Credential
    from mls.crypto import backend as be
    from mls.crypto.key_store import SoftwareKeyStore
    from mls.group.commit_options import CommitOptions

    alice = Client(SoftwareKeyStore(), 1, Credential.basic(b"alice"))
    bob = Client(SoftwareKeyStore(), 1, Credential.basic(b"bob"))
    ga = alice.create_group()
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    gb = bob.join(staged.welcome or b"")
    batch = 200 if quick else 1000
    payload = os.urandom(MESSAGE_SIZE)
    backends = {"native": native.choose_backend("native", be.PythonBackend()), "python": be.PythonBackend()}
    saved = be.get_backend()

    def round_trip(name: str) -> Callable[[], None]:
        def run() -> None:
            be.set_backend(backends[name])
            try:
                for _ in range(batch):
                    gb.process(ga.protect(payload))
            finally:
                be.set_backend(saved)

        return run

    times = _interleaved({n: round_trip(n) for n in backends}, rounds=3 if quick else 5, min_time=1.0)
    return {n: batch / times[n][STAT] for n in backends} | {"batch": batch}


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aead, tree = report["aead"], report["tree_hash"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4))

    ax = axes[0]
    labels = ["Python\nbackend", "native\none-shot", "native\nbatched", "C call\nalone"]
    values = [
        aead["seal_per_s"]["python"],
        aead["seal_per_s"]["native_one_shot"],
        aead["seal_per_s"]["native_batched"],
        aead["c_only_seal_per_s"],
    ]
    colors = ["#8c8c8c", "#9ecae1", "#3182bd", "#08519c"]
    evp_rate = report["openssl"].get("reference_ops_per_s")
    if evp_rate:
        labels.append(f"openssl speed\n{report['openssl']['block_size']} B, 1 key, EVP")
        values.append(evp_rate)
        colors.append("#e6550d")
    bars = ax.bar(labels, [v / 1e6 for v in values], color=colors)
    ax.bar_label(bars, [f"{v / 1e6:.2f}M" for v in values])
    ax.set_ylabel("million seals / s")
    ax.set_title(
        f"AES-128-GCM seal, {MESSAGE_SIZE}-byte messages,\n"
        f"a fresh ratchet key per message, batches of {BATCH}"
    )

    ax = axes[1]
    groups = ["seal", "open", "derive\n(ratchet)"]
    py = [
        aead["seal_per_s"]["python"],
        aead["open_per_s"]["python"],
        aead["ratchet_generations_per_s"]["python"],
    ]
    nat = [
        aead["seal_per_s"]["native_batched"],
        aead["open_per_s"]["native_batched"],
        aead["ratchet_generations_per_s"]["native"],
    ]
    xs = range(len(groups))
    b1 = ax.bar([x - 0.2 for x in xs], [v / 1e3 for v in py], 0.4, label="Python", color="#8c8c8c")
    b2 = ax.bar([x + 0.2 for x in xs], [v / 1e3 for v in nat], 0.4, label="native", color="#3182bd")
    ax.bar_label(b1, [f"{v / 1e3:.0f}k" for v in py], fontsize=8)
    ax.bar_label(b2, [f"{v / 1e3:.0f}k ({n / p:.1f}x)" for v, n, p in zip(nat, nat, py)], fontsize=8)
    ax.set_xticks(list(xs), groups)
    ax.set_ylabel("thousand per second")
    ax.set_title(f"Per-message work, native vs Python\nseal+open {aead['seal_open_speedup']:.1f}x (goal 5x; "
                 f"C alone {aead['seal_open_speedup_bound']:.1f}x), derive+seal+open "
                 f"{aead['derive_seal_open_speedup']:.1f}x")  # fmt: skip
    ax.legend()

    ax = axes[2]
    full = [
        tree["timings"]["python_full"][STAT] * 1e3,
        tree["timings"]["native_full"][STAT] * 1e3,
        tree["timings"]["c_only_full"][STAT] * 1e3,
    ]
    names = ["Python\nbackend", "native\nbackend", "C call alone\n(no binding)"]
    bars = ax.bar(names, full, color=["#8c8c8c", "#31a354", "#006d2c"])
    ax.bar_label(bars, [f"{v:.1f} ms" for v in full])
    ax.set_ylabel("ms per full tree hash")
    ax.set_title(f"tree_hash() of a {tree['leaves']:,}-member tree just decoded\n"
                 f"{tree['full_speedup']:.1f}x faster (goal 10x); "
                 f"one path update {tree['path_speedup']:.1f}x")  # fmt: skip

    load = report["environment"]["load_average_before"][0]
    fig.suptitle(
        f"native backend ({report['environment']['libcrypto']}) on {report['environment']['cpu']}, "
        f"{report['environment']['cores']} cores, load average {load:.1f} at start; "
        f"best of repeated runs, CPU time",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(quick: bool) -> dict[str, Any]:
    import native
    from mls.crypto.backend import PythonBackend

    if not native.available():
        raise SystemExit("the native extension is not built: pip install -e .")
    from native.backend import OPENSSL_VERSION, NativeBackend
    from tests.native import reference

    nb, pb = NativeBackend(), PythonBackend()
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    aead = bench_aead(nb, pb, reference, quick)
    tree = bench_tree_hash(nb, reference, quick)
    messages = bench_messages(quick)
    speed = openssl_speed(1)
    if speed.get("available"):
        block = min((int(k) for k in speed["ops_per_s"]), key=lambda k: abs(k - MESSAGE_SIZE))
        speed["block_size"] = block
        speed["reference_ops_per_s"] = speed["ops_per_s"][str(block)]
        fraction: float | None = aead["seal_per_s"]["native_batched"] / speed["reference_ops_per_s"]
        speed["c_call_alone_fraction"] = aead["c_only_seal_per_s"] / speed["reference_ops_per_s"]
    else:
        fraction = None
    report: dict[str, Any] = {
        "aead_speedup": aead["seal_open_speedup"],
        "aead_fraction_of_openssl": fraction,
        "tree_hash_speedup": tree["full_speedup"],
        "ratchet_speedup": aead["ratchet_speedup"],
        "messages_per_s": {"native": messages["native"], "python": messages["python"]},
        "messages_speedup": messages["native"] / messages["python"],
        "definitions": {
            "aead_speedup": "Python backend / native, time to seal and then open 1,000 100-byte messages, "
            "each under its own key and nonce as the secret tree hands them out (ratchet_steps output, "
            "derived beforehand), one AAD for the batch; both backends through aead_seal_batch/"
            "aead_open_batch (aead.seal_open_speedup_per_message_aad: one AAD object per message)",
            "aead_fraction_of_openssl": "native batched seals per second (a fresh key each) / `openssl speed "
            "-evp aes-128-gcm -bytes 100` operations per second (one key, one EVP_CipherUpdate per message, "
            "no tag). Meant as a ceiling; above 1 because the native layer bypasses OpenSSL 3.0's EVP "
            "overhead, which exceeds the cost of a re-key",
            "timing": "rates and ratios use the best of repeated runs in CPU time of the measuring thread "
            "(openssl speed also divides by CPU time); contenders are measured in alternation; wall-clock "
            "best and median are under each 'timings' entry",
            "tree_hash_speedup": "Python backend / native backend, RatchetTree.tree_hash() of a "
            "10,000-member tree just decoded (every node's hash computed, none cached; the decode is not "
            "timed, it is the same for both). tree_hash.full_every_hash_speedup also reads every node's "
            "hash afterwards; tree_hash.decode_spans_overhead_s is what noting the node spans adds to the "
            "decode",
            "ratchet_speedup": "Python reference / native ratchet_steps, 1,000 generations in one call",
            "messages_per_s": "application messages protected by one member and processed by the other, per "
            "second, in a 2-member suite-1 group with software keys, with each backend in use",
        },
        "aead": aead,
        "tree_hash": tree,
        "openssl": speed,
        "environment": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "libcrypto": OPENSSL_VERSION,
            "platform": platform.platform(),
            # Other work on the host skews absolute numbers (ratios less so: both sides share it).
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "quick": quick,
        "elapsed_s": time.perf_counter() - started,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.native", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 30 s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for native.json and native.png")
    args = parser.parse_args(argv)
    report = run(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "native.json").write_text(json.dumps(report, indent=2) + "\n")
    _chart(report, args.out / "native.png")
    a, t = report["aead"], report["tree_hash"]
    frac = report["aead_fraction_of_openssl"]
    print(
        f"AEAD seal+open, 1,000 x {MESSAGE_SIZE} B, per-message keys: "
        f"native {a['seal_open_pairs_per_s']['native_batched']:,.0f}/s, "
        f"Python {a['seal_open_pairs_per_s']['python']:,.0f}/s -> {report['aead_speedup']:.2f}x (goal 5x)"
    )
    print(
        f"  native seal {a['seal_per_s']['native_batched']:,.0f}/s = "
        + (
            f"{frac:.2f} of openssl speed at {report['openssl']['block_size']} B"
            if frac
            else "openssl speed unavailable"
        )
    )
    print(
        f"  one AAD per message {a['seal_open_speedup_per_message_aad']:.2f}x; C calls alone (bound) "
        f"{a['seal_open_speedup_bound']:.2f}x"
    )
    print(
        f"ratchet_steps 1,000 generations: {report['ratchet_speedup']:.2f}x; "
        f"derive+seal+open {a['derive_seal_open_speedup']:.2f}x"
    )
    print(
        f"tree hash {t['leaves']:,} leaves: native {t['timings']['native_full'][STAT] * 1e3:.1f} ms, "
        f"Python {t['timings']['python_full'][STAT] * 1e3:.1f} ms -> {report['tree_hash_speedup']:.2f}x "
        f"(goal 10x); path update {t['path_speedup']:.1f}x"
    )
    print(
        f"  then every node's hash read: {t['full_every_hash_speedup']:.2f}x; noting node spans adds "
        f"{t['decode_spans_overhead_s'] * 1e3:.1f} ms to the decode "
        f"({t['timings']['decode_plain'][STAT] * 1e3:.0f} ms)"
    )
    m = report["messages_per_s"]
    print(
        f"application messages protect+process, 2-member group: native {m['native']:,.0f}/s, "
        f"Python {m['python']:,.0f}/s -> {report['messages_speedup']:.2f}x"
    )
    print(f"wrote {args.out / 'native.json'} and {args.out / 'native.png'} in {report['elapsed_s']:.1f} s")


if __name__ == "__main__":
    main()
