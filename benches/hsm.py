"""HSM benchmark: hsm/'s Signer against raw python-pkcs11 on the same SoftHSM2 token and mechanism.

    python -m benches.hsm [--quick]

Writes ``benches/results/hsm.json`` and ``benches/results/hsm.png``. Measured in one run, on a throwaway
SoftHSM2 token made in a temporary directory (its filesystem is recorded: token-object creation is
dominated by the file store's writes):

* **Sign** — per signature scheme, raw python-pkcs11 (``key.sign`` with ``CKM_EDDSA``, or ``CKM_ECDSA``
  over a SHA-2 digest computed per call; one session per thread) against ``Pkcs11Signer.sign`` (the same
  mechanism, plus the session pool, handle cache, DER re-encoding for ECDSA and the audit hook — attached,
  as in the gateway), on 1 and 2 threads. Short rounds alternate raw and Signer back to back, and the
  reported ratio is the median of the per-round ratios, so load on a shared machine hits both alike. The
  goal is Signer ≥ 0.8 × raw.
* **DH** — ``Pkcs11HpkeKey.dh`` against raw python-pkcs11 ``CKM_ECDH1_DERIVE`` (derive, read, destroy).
* **KeyPackage key generation** — a signature key pair plus an HPKE key pair as token objects, per second.
* **Application messages** — ``Group.protect`` (a 248-byte PrivateMessage: sign, then encrypt with the
  secret tree) per second by one member of a 2-member suite-1 group, with both members' keys in the token
  (``Pkcs11KeyStore``) against both in software (``SoftwareKeyStore``); alternating rounds as for Sign, on
  one thread. The receiver's ``Group.process`` rate (software verification and decryption in both cases)
  is measured over a batch, for scale.
* **KeyPackages** — complete ``Client.key_package()`` calls with the HSM key store (two HPKE key pairs
  made as token objects and the KeyPackage signed in the token), per second; the keys are destroyed after.

* **Custody modes** (:mod:`benches.hsm_custody`) — KeyPackages per second for suite 2 with keys in
  ``token`` and in ``wrapped`` custody, their ratio, and the token's object count after N wrapped keys.

The top level of the JSON carries ``raw_sign_ops_per_s``, ``signer_ops_per_s`` and ``signer_to_raw_ratio``
for suite 1's Ed25519 key on one thread, ``app_messages_per_s`` (``{"hsm": …, "software": …}``, protect
rate, suite 1; ``application_messages_per_s`` is the same figure, kept for readers of older results) and
``key_packages_per_s`` (suite 1, HSM); ``keypackages_per_s`` by custody mode (``{"token": …, "wrapped":
…}``, suite 2), ``wrapped_to_token_keypackages_ratio`` and ``token_objects_after_wrapped_keys``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .hsm_custody import custody_section

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 0.8
MESSAGE = b"FramedContentTBS-sized message " * 8  # ~250 bytes, the size of a typical signed MLS content
PIN_ENV = "MLSGW_BENCH_HSM_PIN"


# ---- measurement helpers --------------------------------------------------------------------------------


def _rate(workers: list[Callable[[], None]], seconds: float) -> tuple[float, float]:
    """(calls per wall second, calls per CPU second of the calling threads) of ``workers`` run together.

    The second figure counts only the CPU time the worker threads themselves used (SoftHSM runs in
    them), so it measures the cost of a call even when other processes steal the machine.
    """
    counts = [0] * len(workers)
    cpu = [0.0] * len(workers)
    stop = threading.Event()
    barrier = threading.Barrier(len(workers) + 1)

    def loop(i: int, call: Callable[[], None]) -> None:
        barrier.wait()
        n, t0 = 0, time.thread_time()
        while not stop.is_set():
            call()
            n += 1
        counts[i], cpu[i] = n, time.thread_time() - t0

    threads = [threading.Thread(target=loop, args=(i, w)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    total = sum(counts)
    return total / (time.perf_counter() - start), total / max(sum(cpu), 1e-9)


def _compare(
    raw: Callable[[int], list[Callable[[], None]]],
    ours: Callable[[int], list[Callable[[], None]]],
    threads: int,
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    """Alternating rounds of raw and ours on ``threads`` threads.

    Each round runs raw then ours (the order flips every round), back to back, so both see the same
    machine load; the ratio is the median of the per-round ratios, the rates are the medians of the rounds.
    """
    raw_rates: list[float] = []
    our_rates: list[float] = []
    raw_cpu: list[float] = []
    our_cpu: list[float] = []
    raw_workers, our_workers = raw(threads), ours(threads)
    for w in raw_workers + our_workers:
        w()  # warm-up (and the handle cache)
    for i in range(rounds):
        for which in ((raw_workers, raw_rates, raw_cpu), (our_workers, our_rates, our_cpu))[
            :: -1 if i % 2 else 1
        ]:
            wall, per_cpu = _rate(which[0], seconds)
            which[1].append(wall)
            which[2].append(per_cpu)
    ratios = [o / r for o, r in zip(our_rates, raw_rates)]
    cpu_ratio = statistics.median(our_cpu) / statistics.median(raw_cpu)
    return {
        "threads": threads,
        "raw_ops_per_s": round(statistics.median(raw_rates), 1),
        "hsm_ops_per_s": round(statistics.median(our_rates), 1),
        "ratio": round(statistics.median(ratios), 3),
        "raw_ops_per_cpu_s": round(statistics.median(raw_cpu), 1),
        "hsm_ops_per_cpu_s": round(statistics.median(our_cpu), 1),
        "cpu_ratio": round(cpu_ratio, 3),
        "ratio_per_round": [round(x, 3) for x in ratios],
        "raw_rounds": [round(r, 1) for r in raw_rates],
        "hsm_rounds": [round(r, 1) for r in our_rates],
    }


# ---- raw python-pkcs11 ------------------------------------------------------------------------------------


class _Raw:
    """Raw python-pkcs11 on the token the Token uses (same library handle, so OS locking is on)."""

    def __init__(self, token: Any) -> None:
        from pkcs11 import ObjectClass

        self._object_class = ObjectClass
        self._p11 = token._library.lib.get_token(token_label=token.config.token_label)
        self._sessions: list[Any] = []

    def private_key(self, key_ref: bytes) -> Any:
        """The private key object in a fresh session of its own (one per thread)."""
        session = self._p11.open(rw=True)
        self._sessions.append(session)
        return session.get_key(object_class=self._object_class.PRIVATE_KEY, id=key_ref)

    def close(self) -> None:
        for session in self._sessions:
            session.close()  # opened without a PIN: no logout


def _raw_signers(
    raw: _Raw, key_ref: bytes, hash_name: str | None
) -> Callable[[int], list[Callable[[], None]]]:
    from pkcs11 import Mechanism

    digest: Any = getattr(hashlib, hash_name or "sha256")

    def eddsa(key: Any) -> None:
        key.sign(MESSAGE, mechanism=Mechanism.EDDSA)

    def ecdsa(key: Any) -> None:
        key.sign(digest(MESSAGE).digest(), mechanism=Mechanism.ECDSA)

    def make(threads: int) -> list[Callable[[], None]]:
        keys = [raw.private_key(key_ref) for _ in range(threads)]
        return [functools.partial(eddsa if hash_name is None else ecdsa, key) for key in keys]

    return make


def _raw_dh(raw: _Raw, key_ref: bytes, peer: bytes, length: int) -> Callable[[int], list[Callable[[], None]]]:
    from pkcs11 import KDF, Attribute, KeyType, Mechanism

    template = {Attribute.TOKEN: False, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}

    def once(key: Any) -> None:
        secret = key.derive_key(
            KeyType.GENERIC_SECRET,
            length * 8,
            mechanism=Mechanism.ECDH1_DERIVE,
            mechanism_param=(KDF.NULL, None, peer),
            template=template,
        )
        secret[Attribute.VALUE]
        secret.destroy()

    def make(threads: int) -> list[Callable[[], None]]:
        return [functools.partial(once, raw.private_key(key_ref)) for _ in range(threads)]

    return make


# ---- the benchmark -----------------------------------------------------------------------------------------


def _filesystem(path: Path) -> str:
    try:
        out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True, check=True)
        return out.stdout.split()[-1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def _softhsm_version() -> str:
    try:
        return subprocess.run(
            ["softhsm2-util", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _sign_section(store: Any, raw: _Raw, suites: list[int], rounds: int, seconds: float) -> dict[str, Any]:
    from hsm.kinds import signature_kind
    from mls.crypto.cipher_suite import cipher_suite

    out: dict[str, Any] = {}
    for suite in suites:
        cs = cipher_suite(suite)
        signer = store.new_signature_key(suite)
        kind = signature_kind(cs.signature)
        raw_make = _raw_signers(raw, signer.key_ref, kind.hash_name)

        def ours(threads: int, signer: Any = signer) -> list[Callable[[], None]]:
            return [lambda: signer.sign(MESSAGE) and None for _ in range(threads)]

        out[str(suite)] = {
            "scheme": cs.signature.name,
            "mechanism": "CKM_EDDSA" if kind.hash_name is None else f"CKM_ECDSA over {kind.hash_name}",
            "1_thread": _compare(raw_make, ours, 1, rounds, seconds),
            "2_threads": _compare(raw_make, ours, 2, rounds, seconds),
        }
        one, two = out[str(suite)]["1_thread"], out[str(suite)]["2_threads"]
        print(
            f"  sign suite {suite} ({cs.signature.name}): wall ratio {one['ratio']} / {two['ratio']}, "
            f"CPU-cost ratio {one['cpu_ratio']} / {two['cpu_ratio']} (1 / 2 threads)",
            flush=True,
        )
    return out


def _dh_section(store: Any, raw: _Raw, suites: list[int], rounds: int, seconds: float) -> dict[str, Any]:
    from hsm.kinds import kem_kind
    from mls.crypto.cipher_suite import cipher_suite

    out: dict[str, Any] = {}
    for suite in suites:
        cs = cipher_suite(suite)
        key = store.new_hpke_key(suite)
        peer = cs.kem.generate().public_key
        raw_make = _raw_dh(raw, key.key_ref, peer, kem_kind(cs.kem).key_len)

        def ours(threads: int, key: Any = key, peer: bytes = peer) -> list[Callable[[], None]]:
            return [lambda: key.dh(peer) and None for _ in range(threads)]

        out[str(suite)] = {"kem": cs.kem.name, "1_thread": _compare(raw_make, ours, 1, rounds, seconds)}
        one = out[str(suite)]["1_thread"]
        print(
            f"  dh suite {suite} ({cs.kem.name}): wall ratio {one['ratio']}, "
            f"CPU-cost ratio {one['cpu_ratio']}",
            flush=True,
        )
    return out


def _keygen_section(store: Any, suites: list[int], pairs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for suite in suites:
        made: list[bytes] = []
        start = time.perf_counter()
        for _ in range(pairs):
            made.append(store.new_signature_key(suite).key_ref)
            made.append(store.new_hpke_key(suite).key_ref)
        elapsed = time.perf_counter() - start
        for ref in made:
            store.destroy(ref)
        out[str(suite)] = {
            "keypackages": pairs,
            "seconds": round(elapsed, 3),
            "keypackages_per_s": round(pairs / elapsed, 1),
        }
        print(
            f"  keygen suite {suite}: {out[str(suite)]['keypackages_per_s']} KeyPackage key sets/s",
            flush=True,
        )
    return out


def _two_member_group(key_store: Callable[[], Any], tag: bytes) -> tuple[Any, Any]:
    """A suite-1 group of alice and bob, each with a key store from ``key_store()``; checked both ways."""
    from mls.client import Client
    from mls.credentials.credential import Credential
    from mls.group.commit_options import CommitOptions
    from mls.group.results import ApplicationMessage

    alice = Client(key_store(), 1, Credential.basic(b"alice-" + tag))
    bob = Client(key_store(), 1, Credential.basic(b"bob-" + tag))
    ga = alice.create_group(b"bench-app-" + tag)
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome)
    for sender, receiver in ((ga, gb), (gb, ga)):
        out = receiver.process(sender.protect(MESSAGE))
        assert isinstance(out, ApplicationMessage) and out.data == MESSAGE
    return ga, gb


def _process_rate(sender: Any, receiver: Any, count: int) -> float:
    """Messages per second ``receiver`` processes (a batch of ``count`` made by ``sender`` first)."""
    messages = [sender.protect(MESSAGE) for _ in range(count)]
    start = time.perf_counter()
    for m in messages:
        receiver.process(m)
    return count / (time.perf_counter() - start)


def _app_messages_section(store: Any, rounds: int, seconds: float, batch: int) -> dict[str, Any]:
    """Group.protect per second, HSM-held keys against software keys (suite 1, one thread)."""
    from mls.crypto.key_store import SoftwareKeyStore

    hsm_a, hsm_b = _two_member_group(lambda: store, b"hsm")
    sw_a, sw_b = _two_member_group(SoftwareKeyStore, b"software")

    def software(threads: int) -> list[Callable[[], None]]:
        return [lambda: sw_a.protect(MESSAGE) and None]

    def hsm(threads: int) -> list[Callable[[], None]]:
        return [lambda: hsm_a.protect(MESSAGE) and None]

    compared = _compare(software, hsm, 1, rounds, seconds)
    out = {
        "suite": 1,
        "message_bytes": len(MESSAGE),
        "protect_per_s": {"hsm": compared["hsm_ops_per_s"], "software": compared["raw_ops_per_s"]},
        "hsm_to_software_ratio": compared["ratio"],
        "protect_per_cpu_s": {
            "hsm": compared["hsm_ops_per_cpu_s"],
            "software": compared["raw_ops_per_cpu_s"],
        },
        "protect_rounds": {"hsm": compared["hsm_rounds"], "software": compared["raw_rounds"]},
        "process_per_s": {
            "hsm": round(_process_rate(hsm_b, hsm_a, batch), 1),
            "software": round(_process_rate(sw_b, sw_a, batch), 1),
        },
    }
    for g in (hsm_a, hsm_b):  # the group's token keys (leaf and signature) go with the benchmark token anyway
        store.destroy(g.state.keys.leaf_key.key_ref)
    print(
        f"  application messages (suite 1): protect {out['protect_per_s']['hsm']}/s with HSM keys, "
        f"{out['protect_per_s']['software']}/s in software (x{out['hsm_to_software_ratio']}); "
        f"process {out['process_per_s']['hsm']} / {out['process_per_s']['software']}/s",
        flush=True,
    )
    return out


def _key_packages_section(store: Any, suites: list[int], count: int) -> dict[str, Any]:
    """Complete ``Client.key_package()`` calls per second with the HSM key store."""
    from mls.client import Client
    from mls.credentials.credential import Credential

    out: dict[str, Any] = {}
    for suite in suites:
        client = Client(store, suite, Credential.basic(b"kp-bench"))
        client.key_package()  # warm-up
        start = time.perf_counter()
        for _ in range(count):
            client.key_package()
        elapsed = time.perf_counter() - start
        for bundle in client.key_packages.values():
            store.destroy(bundle.init_key.key_ref)
            store.destroy(bundle.leaf_key.key_ref)
        store.destroy(client.signer.key_ref)
        out[str(suite)] = {
            "key_packages": count,
            "seconds": round(elapsed, 3),
            "key_packages_per_s": round(count / elapsed, 1),
        }
        print(f"  KeyPackages suite {suite}: {out[str(suite)]['key_packages_per_s']}/s (HSM)", flush=True)
    return out


def run(quick: bool) -> dict[str, Any]:
    from hsm.bootstrap import init_softhsm_token

    sign_suites = [1, 2] if quick else [1, 2, 4, 5, 7]
    dh_suites = [1, 2] if quick else [1, 2, 4, 5, 7]
    rounds, seconds = (9, 0.12) if quick else (21, 0.3)
    pairs = 5 if quick else 30
    kp_count, batch = (10, 100) if quick else (40, 400)
    custody_rounds, custody_count, wrapped_n = (3, 10, 1000) if quick else (5, 40, 100_000)
    with tempfile.TemporaryDirectory(prefix="mlsgw-bench-hsm-") as tmp:
        pin = secrets.token_hex(6)
        made = init_softhsm_token(tmp, label="mlsgw-bench", pin=pin, so_pin=secrets.token_hex(6))
        made.activate()
        os.environ[PIN_ENV] = pin
        from hsm import Pkcs11KeyStore, Token

        token = Token.open(made.token_config(pin_env=PIN_ENV))
        events: list[int] = []
        store = Pkcs11KeyStore(token, audit_hook=lambda e: events.append(1) if len(events) < 1 else None)
        raw = _Raw(token)
        try:
            print("hsm benchmark" + (" (quick)" if quick else ""), flush=True)
            sign = _sign_section(store, raw, sign_suites, rounds, seconds)
            dh = _dh_section(store, raw, dh_suites, rounds, seconds)
            keygen = _keygen_section(store, [1, 2], pairs)
            app = _app_messages_section(store, rounds, seconds, batch)
            key_packages = _key_packages_section(store, [1, 2], kp_count)
            custody = custody_section(
                token, store, rounds=custody_rounds, count=custody_count, wrapped_keys=wrapped_n
            )
        finally:
            raw.close()
            token.close()
        report = _report(quick, sign, dh, keygen, _filesystem(Path(tmp)), app, key_packages)
        report["keypackages_per_s"] = custody["keypackages_per_s"]
        report["wrapped_to_token_keypackages_ratio"] = custody["wrapped_to_token_keypackages_ratio"]
        report["token_objects_after_wrapped_keys"] = custody["token_objects_after_wrapped_keys"]
        report["custody_modes"] = custody
        return report


def _report(
    quick: bool,
    sign: dict[str, Any],
    dh: dict[str, Any],
    keygen: dict[str, Any],
    fs: str,
    app: dict[str, Any],
    key_packages: dict[str, Any],
) -> dict[str, Any]:
    from importlib.metadata import version

    one, two = sign["1"]["1_thread"], sign["1"]["2_threads"]
    return {
        "benchmark": "hsm",
        "quick": quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "python_pkcs11": version("python-pkcs11"),
            "softhsm": _softhsm_version(),
            "token_filesystem": fs,
        },
        "message_bytes": len(MESSAGE),
        "raw_sign_ops_per_s": one["raw_ops_per_s"],
        "signer_ops_per_s": one["hsm_ops_per_s"],
        "signer_to_raw_ratio": one["ratio"],
        "signer_to_raw_cpu_ratio": one["cpu_ratio"],
        "raw_sign_ops_per_s_2_threads": two["raw_ops_per_s"],
        "signer_ops_per_s_2_threads": two["hsm_ops_per_s"],
        "signer_to_raw_ratio_2_threads": two["ratio"],
        "signer_to_raw_cpu_ratio_2_threads": two["cpu_ratio"],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "goal_ratio": GOAL_RATIO,
        "meets_goal": min(one["ratio"], two["ratio"]) >= GOAL_RATIO,
        "keypackage_keygen_per_s": {k: v["keypackages_per_s"] for k, v in keygen.items()},
        "application_messages_per_s": dict(app["protect_per_s"]),
        "todo": None,
        "app_messages_per_s": dict(app["protect_per_s"]),
        "key_packages_per_s": key_packages["1"]["key_packages_per_s"],
        "sign": sign,
        "dh": dh,
        "keygen": keygen,
        "app_messages": app,
        "key_packages": key_packages,
    }


# ---- chart -------------------------------------------------------------------------------------------------


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_group = "app_messages" in report  # results written before the group-level figures existed lack them
    if with_group:
        fig, (ax_sign, ax_other, ax_group) = plt.subplots(
            1, 3, figsize=(22, 5.8), gridspec_kw={"width_ratios": [3, 2, 1.6]}
        )
        _group_bars(ax_group, report["app_messages"], report["key_packages"])
    else:
        fig, (ax_sign, ax_other) = plt.subplots(1, 2, figsize=(17, 5.8), gridspec_kw={"width_ratios": [3, 2]})
    _sign_bars(ax_sign, report["sign"])
    _other_bars(ax_other, report["dh"], report["keygen"])
    fig.suptitle(
        f"hsm/ over SoftHSM2 ({report['machine']['softhsm']}, "
        f"token on {report['machine']['token_filesystem']}, "
        f"{report['machine']['cpus']} CPUs, load average {report['load_average_at_end'][0]})"
        f"{' — quick' if report['quick'] else ''}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


_SHORT = {
    "ecdsa_secp256r1_sha256": "ECDSA P-256",
    "ecdsa_secp384r1_sha384": "ECDSA P-384",
    "ecdsa_secp521r1_sha512": "ECDSA P-521",
    "ed25519": "Ed25519",
    "ed448": "Ed448",
}


def _sign_bars(ax: Any, sign: dict[str, Any]) -> None:
    series = [
        ("raw python-pkcs11, 1 thread", "1_thread", "raw_ops_per_s", "#9e9e9e"),
        ("hsm Signer, 1 thread", "1_thread", "hsm_ops_per_s", "#1f77b4"),
        ("raw python-pkcs11, 2 threads", "2_threads", "raw_ops_per_s", "#616161"),
        ("hsm Signer, 2 threads", "2_threads", "hsm_ops_per_s", "#0b4f8a"),
    ]
    suites = list(sign)
    width = 0.2
    for i, (label, threads, field, colour) in enumerate(series):
        xs = [s + (i - 1.5) * width for s in range(len(suites))]
        values = [sign[s][threads][field] for s in suites]
        bars = ax.bar(xs, values, width, label=label, color=colour)
        if field == "hsm_ops_per_s":
            for bar, s in zip(bars, suites):
                row = sign[s][threads]
                ax.annotate(
                    f"×{row['ratio']:.2f}\nCPU\n×{row['cpu_ratio']:.2f}",
                    (bar.get_x() + width / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                )
    ax.set_xticks(
        range(len(suites)),
        [f"suite {s}\n{_SHORT.get(sign[s]['scheme'], sign[s]['scheme'])}" for s in suites],
        fontsize=8,
    )
    ax.margins(y=0.12)
    ax.set_ylabel("signatures / s")
    ax.set_title(
        f"Sign: hsm Signer vs raw python-pkcs11 (×wall-clock ratio, CPU-cost ratio; goal ≥ {GOAL_RATIO})",
        fontsize=10,
    )
    ax.legend(fontsize=8)


def _other_bars(ax: Any, dh: dict[str, Any], keygen: dict[str, Any]) -> None:
    labels, raw_vals, ours = [], [], []
    for s, row in dh.items():
        labels.append(f"DH s{s}\n{row['kem']}")
        raw_vals.append(row["1_thread"]["raw_ops_per_s"])
        ours.append(row["1_thread"]["hsm_ops_per_s"])
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], raw_vals, 0.4, label="raw python-pkcs11", color="#9e9e9e")
    ax.bar([x + 0.2 for x in xs], ours, 0.4, label="hsm HpkeKey.dh", color="#2ca02c")
    k_x = len(labels)
    for j, (s, row) in enumerate(keygen.items()):
        bar = ax.bar(
            k_x + j,
            row["keypackages_per_s"],
            0.4,
            color="#ff7f0e",
            label="KeyPackage key sets" if j == 0 else None,
        )
        ax.annotate(
            f"{row['keypackages_per_s']:.0f}/s",
            (k_x + j, bar[0].get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
        labels.append(f"keygen s{s}\nsig+HPKE")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("operations / s (log)")
    ax.set_title("DH (1 thread) and KeyPackage key generation")
    ax.legend(fontsize=8)


def _group_bars(ax: Any, app: dict[str, Any], key_packages: dict[str, Any]) -> None:
    """Application messages protected per second (HSM vs software keys) and KeyPackages per second (HSM)."""
    bars = [
        ("protect\nHSM keys", app["protect_per_s"]["hsm"], "#1f77b4"),
        ("protect\nsoftware", app["protect_per_s"]["software"], "#9e9e9e"),
        ("process\nHSM group", app["process_per_s"]["hsm"], "#6baed6"),
        ("process\nsoftware", app["process_per_s"]["software"], "#cfcfcf"),
    ]
    bars += [
        (f"KeyPackage\ns{s} (HSM)", row["key_packages_per_s"], "#ff7f0e") for s, row in key_packages.items()
    ]
    for x, (_, value, colour) in enumerate(bars):
        ax.bar(x, value, 0.6, color=colour)
        ax.annotate(f"{value:.0f}/s", (x, value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("operations / s (log)")
    ax.set_title(
        f"2-member suite-{app['suite']} group: application messages\n"
        f"(protect, HSM/software ×{app['hsm_to_software_ratio']:.2f}) and KeyPackages",
        fontsize=10,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.hsm", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer suites and shorter rounds (< 30 s)")
    parser.add_argument("--chart-only", action="store_true", help="redraw hsm.png from the existing hsm.json")
    args = parser.parse_args()
    if args.chart_only:
        chart(json.loads((RESULTS / "hsm.json").read_text()), RESULTS / "hsm.png")
        return
    import native
    from mls.crypto.backend import PythonBackend, set_backend

    set_backend(native.choose_backend(None, PythonBackend()))  # as the gateway runs: native when built
    started = time.perf_counter()
    report = run(args.quick)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hsm.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(report, RESULTS / "hsm.png")
    print(
        f"signer/raw (suite 1, Ed25519): {report['signer_to_raw_ratio']} on 1 thread, "
        f"{report['signer_to_raw_ratio_2_threads']} on 2 threads "
        f"(CPU-cost ratio {report['signer_to_raw_cpu_ratio']}"
        f" / {report['signer_to_raw_cpu_ratio_2_threads']}); wrote {RESULTS / 'hsm.json'} and hsm.png "
        f"in {report['wall_seconds']} s"
    )
    print(
        f"KeyPackages/s by custody (suite 2): {report['keypackages_per_s']}, wrapped/token "
        f"{report['wrapped_to_token_keypackages_ratio']}; token objects after wrapped keys: "
        f"{report['token_objects_after_wrapped_keys']}"
    )


if __name__ == "__main__":
    main()
