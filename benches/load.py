"""Load benchmark: application messages through the real gateway server, against the raw HSM sign rate.

    python -m benches.load [--quick] [--workers N] [--groups N] [--clients C] [--duration S]
                           [--max-messages M] [--raw-seconds S] [--clients-sweep 8,32] [--sweep-duration S]
                           [--library-duration S] [--out DIR]
    python -m benches.load --url URL --token TOKEN [--quick] [--groups N] [--clients C] [--duration S] ...

Runs the real server, on loopback only, and stops by itself:

1. ``mls-gateway init`` makes a data folder in a temporary directory: the embedded SoftHSM2 token, the
   SQLite database and an admin token.
2. **Raw HSM sign rate** — this process opens that token with python-pkcs11 directly, makes an Ed25519
   session key (CKM_EC_EDWARDS_KEY_PAIR_GEN) and signs a 248-byte message with CKM_EDDSA on one thread:
   the mechanism of suite 1's signatures. Measured before the server starts and again after it stopped,
   so that the two processes never share the token at once; ``raw_sign_ops_per_s`` is the median round.
3. ``mls-gateway serve`` on a free loopback port. Over HTTP: a tenant, then N groups of two hosted
   members each (2N identities, cipher suite 1): member A creates the group and commits an Add of B's
   KeyPackage; B joins from the Welcome.
4. **Load** — C concurrent clients (asyncio + aiohttp; client i works on group i mod N) repeat: ``POST
   /messages`` on member A (16-256 random bytes) then ``POST /process`` of that message on member B,
   checking the plaintext, until the duration or the message budget is used up. One *message* is one
   such send + process; its latency is the time of both requests. By default there is one client per
   group, so B gets A's messages in order. With more clients than groups (``--clients``), clients share
   a group and B may get its messages out of order: MLS allows that within the receiver's window (the
   library's default keeps 5 skipped generations), and messages overtaken by more are refused (422,
   counted under ``errors``).
5. The gateway's own count of signatures (``mlsgw_hsm_operations_total{operation="sign"}`` from
   ``/metrics``, before and after the load) over the load's duration, divided by the raw sign rate, is
   ``fraction_of_hsm``: each protected application message costs the gateway one signature.
6. **Client sweep** (``--clients-sweep 8,32``, on by default; ``none`` skips it) — the load again at each
   client count for ``--sweep-duration`` seconds, one group per client (groups added as needed), on the
   same server: ``clients_sweep`` lists messages/s, p50 and p99 per count.
7. **The library in-process** — after the server stopped, this process opens the same token with the
   gateway's token config (``hsm.Token`` + ``hsm.Pkcs11KeyStore``), installs the crypto backend as the
   gateway does, and builds min(clients, groups) suite-1 groups of two members whose signature and HPKE
   keys live in that token. One thread per group repeats A ``Group.protect`` (16-256 random bytes), B
   ``Group.process``, plaintext checked, for ``--library-duration`` (default: the load's duration):
   ``library_messages_per_s``; ``fraction_of_library`` = ``messages_per_s`` / ``library_messages_per_s``.

**Processes** (``--workers N``, default: the number of CPUs): steps 3-6 run on ``mls-gateway serve
--workers N`` — a supervisor handing connections in turn to N worker processes, as the README deploys the
gateway on one machine — and, when N > 1, the load of step 4 runs again (same groups, clients and duration,
no sweep) on a fresh one-process ``serve`` of the same data folder: ``messages_per_s_1_process`` and
``fraction_of_library_1_process`` beside the main figures (issue 13).

Writes ``load.json`` (top level: ``messages_per_s``, ``p50_ms``, ``p99_ms``, ``raw_sign_ops_per_s``,
``fraction_of_hsm``, ``library_messages_per_s``, ``fraction_of_library``, ``workers``,
``messages_per_s_1_process``, ``fraction_of_library_1_process``, ``clients_sweep``; details below
them) and ``load.png`` to ``benches/results`` (or ``--out``), prints a
summary table, and shows a progress bar while the load runs. ``--quick`` finishes in well under a minute.

**A deployed gateway** (``--url URL --token TOKEN``): steps 3 (setup over HTTP), 4 (the load) and 6 (the
sweep) against a gateway started elsewhere, through the shipped client (:mod:`gateway.client`). An admin
token makes a tenant of its own first (``load-…``); a tenant token is used as is. The identities and groups
it makes stay (delete the tenant to remove them). Writes ``load-remote.json`` (``messages_per_s``,
``p50_ms``, ``p99_ms``, ``clients_sweep``, ``gateway_signatures`` from the gateway's ``/metrics``,
``target``, ``token``: its kind) and no chart; the raw sign rate and the library need the gateway's own
token, so they are not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.client import GatewayClient, GatewayError, unb64
from tests.ports import free_port

from .lean_http import LeanGateway

RESULTS = Path(__file__).resolve().parent / "results"
MESSAGE = b"FramedContentTBS-sized message " * 8  # 248 bytes, as in benches/hsm.py
ED25519_OID = bytes.fromhex("06032b6570")  # CKA_EC_PARAMS of Ed25519
TOKEN_LABEL = "mls-gateway"  # the embedded token's default label
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Settings:
    quick: bool
    groups: int
    clients: int
    duration_s: float
    max_messages: int
    raw_seconds: float
    raw_rounds: int
    out: Path
    clients_sweep: tuple[int, ...] = ()
    sweep_duration_s: float = 4.0
    library_duration_s: float = 12.0
    workers: int = 1


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    groups = args.groups or (8 if quick else 24)
    duration = args.duration or (12.0 if quick else 40.0)
    return Settings(
        quick=quick,
        groups=groups,
        clients=args.clients or groups,
        duration_s=duration,
        max_messages=args.max_messages or (20_000 if quick else 500_000),
        raw_seconds=args.raw_seconds or (0.5 if quick else 1.0),
        raw_rounds=3 if quick else 5,
        out=args.out,
        clients_sweep=parse_sweep(args.clients_sweep),
        sweep_duration_s=args.sweep_duration or (4.0 if quick else 15.0),
        library_duration_s=args.library_duration or duration,
        workers=args.workers or os.cpu_count() or 1,
    )


def parse_sweep(text: str) -> tuple[int, ...]:
    """``"8,32"`` → (8, 32); ``""`` or ``"none"`` → no sweep."""
    if text.strip().lower() in ("", "none", "off"):
        return ()
    counts = tuple(int(part) for part in text.split(","))
    if any(n < 1 for n in counts):
        raise ValueError("client counts must be at least 1")
    return counts


# ---- the server --------------------------------------------------------------------------------------------


def gateway_command() -> list[str]:
    """The ``mls-gateway`` console script next to this Python, or the CLI module."""
    script = Path(sys.executable).with_name("mls-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def server_env() -> dict[str, str]:
    """This environment without MLSGW_* settings (the benchmark's flags decide) and with quiet logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSGW_") and k != "SOFTHSM2_CONF"}
    env["MLSGW_LOG_LEVEL"] = "WARNING"  # key use is logged at INFO: one line per signature otherwise
    return env


def init_gateway(data_dir: Path, env: dict[str, str] | None = None) -> str:
    """``mls-gateway init --json`` (``env``: settings over :func:`server_env`, e.g. ``MLSGW_DATABASE``);
    returns the admin token."""
    done = subprocess.run(
        [*gateway_command(), "init", "--data-dir", str(data_dir), "--json"],
        env={**server_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mls-gateway init failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    report = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    return str(report["admin_token"])


class Server:
    """``mls-gateway serve`` on a loopback port, its output in a log file; stopped with SIGTERM."""

    def __init__(
        self, data_dir: Path, log_path: Path, env: dict[str, str] | None = None, workers: int = 1
    ) -> None:
        """``env``: settings for this server over :func:`server_env` (e.g. a larger body limit);
        ``workers`` > 1: ``serve --workers N`` (a supervisor handing connections to N processes)."""
        self.workers = workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *gateway_command(),
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                *(["--workers", str(workers)] if workers > 1 else []),
            ],
            env={**server_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can end the workers too
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def wait_ready(self, api: GatewayClient) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mls-gateway serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if (await api.readiness())["status"] == "ready" and self._all_workers_up():
                    return time.perf_counter() - started
            except OSError:  # GatewayConnectionError: not listening yet
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"mls-gateway serve not ready after {START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def _all_workers_up(self) -> bool:
        """With ``workers`` > 1, whether the supervisor announced every worker ready (its
        ``listening … (N workers)`` line), so that the load meets all of them, not the first alone."""
        return self.workers == 1 or f"({self.workers} workers)" in self.log_tail(1_000_000)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # the whole group: no worker is left behind
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


# ---- raw python-pkcs11 sign rate ---------------------------------------------------------------------------


class RawSigner:
    """python-pkcs11 straight on the gateway's token: an Ed25519 session key signing with CKM_EDDSA."""

    def __init__(self, data_dir: Path) -> None:
        import pkcs11

        from hsm.bootstrap import find_softhsm_module

        os.environ["SOFTHSM2_CONF"] = str(data_dir / "softhsm" / "softhsm2.conf")
        self._lib = pkcs11.lib(find_softhsm_module())
        self._pin = (data_dir / "hsm.pin").read_text().strip()

    def measure(self, seconds: float, rounds: int) -> list[float]:
        """Signatures per second on one thread, ``rounds`` times (a session key: the token is not written)."""
        from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag

        token = self._lib.get_token(token_label=TOKEN_LABEL)
        with token.open(user_pin=self._pin, rw=True) as session:
            key: Any  # python-pkcs11's key classes mix in sign() at run time (hsm._compat)
            _, key = session.generate_keypair(
                KeyType.EC_EDWARDS,
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                store=False,
                capabilities=MechanismFlag(0),
                public_template={
                    Attribute.TOKEN: False,
                    Attribute.EC_PARAMS: ED25519_OID,
                    Attribute.VERIFY: True,
                },
                private_template={
                    Attribute.TOKEN: False,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                },
            )
            key.sign(MESSAGE, mechanism=Mechanism.EDDSA)  # warm-up
            rates = []
            for _ in range(rounds):
                n, start = 0, time.perf_counter()
                end = start + seconds
                while True:
                    key.sign(MESSAGE, mechanism=Mechanism.EDDSA)
                    n += 1
                    if n % 16 == 0 and time.perf_counter() >= end:
                        break
                rates.append(n / (time.perf_counter() - start))
        return rates


# ---- HTTP (the shipped client, gateway.client) -------------------------------------------------------------


async def tenant_client(api: GatewayClient) -> tuple[GatewayClient, str]:
    """The client to load with, and the kind of ``api``'s token: with an admin token, a new tenant's
    client (created over the API); with a tenant token, ``api`` itself."""
    try:
        await api.list_tenants()
    except GatewayError as e:
        if e.status == 404:  # a tenant token on an admin route answers 404 (docs/api.md), never 403
            return api, "tenant"
        raise
    tenant = await api.create_tenant(f"load-{secrets.token_hex(4)}")
    return api.with_token(tenant["token"]), "admin"


@dataclass(frozen=True)
class Pair:
    """One group: member A (``sender``) sends, member B (``receiver``) processes."""

    sender: str  # identity ids
    receiver: str
    group_id: bytes


async def make_pair(api: GatewayClient, i: int) -> Pair:
    a = (await api.create_identity(f"load-a{i}"))["identity_id"]
    b = (await api.create_identity(f"load-b{i}"))["identity_id"]
    kp = (await api.create_key_packages(b))["key_packages"][0]["key_package"]
    gid = unb64((await api.create_group(a))["group_id"])
    commit = await api.commit(a, gid, add=[kp])
    await api.join_group(b, commit["welcome"])
    return Pair(a, b, gid)


async def sign_count(api: GatewayClient) -> float:
    """The gateway's successful signatures so far (Prometheus counter)."""
    ops = await hsm_operations(api)
    return sum(v for k, v in ops.items() if k.startswith("sign/") and k.endswith("/ok"))


async def hsm_operations(api: GatewayClient) -> dict[str, float]:
    """``mlsgw_hsm_operations_total`` by operation/custody/outcome, from ``GET /metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(await api.metrics()):
        for sample in family.samples:
            if sample.name == "mlsgw_hsm_operations_total":
                labels = sample.labels
                key = f"{labels.get('operation')}/{labels.get('custody')}/{labels.get('outcome')}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


# ---- the load ----------------------------------------------------------------------------------------------


@dataclass
class LoadStats:
    budget: int
    started: float = 0.0
    pair_ms: list[float] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    process_ms: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)  # seconds since the start, per message
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)  # the first few, as "request: code: detail"

    def claim(self) -> bool:
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def client_loop(
    api: LeanGateway, pair: Pair, stats: LoadStats, deadline: float, rng: random.Random
) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline and stats.claim():
        data = rng.randbytes(rng.randint(16, 256))
        t0 = time.perf_counter()
        step = "send"
        try:
            sent = await api.send_message(pair.sender, pair.group_id, data)
            t1 = time.perf_counter()
            step = "process"
            got = await api.process(pair.receiver, pair.group_id, sent["message"])
            t2 = time.perf_counter()
            if got.get("kind") != "application" or unb64(got["data"]) != data:
                raise GatewayError(200, {"code": "wrong_plaintext", "detail": json.dumps(got)[:200]})
        except GatewayError as e:
            key = f"{step}: {e.code or e.status}"
            stats.errors[key] = stats.errors.get(key, 0) + 1
            if len(stats.error_samples) < 5:
                stats.error_samples.append(f"{key}: {e.detail}")
            if stats.error_count > 50 and stats.error_count > len(stats.pair_ms):
                raise RuntimeError(f"too many errors during the load: {stats.errors}") from e
            continue
        stats.send_ms.append((t1 - t0) * 1000)
        stats.process_ms.append((t2 - t1) * 1000)
        stats.pair_ms.append((t2 - t0) * 1000)
        stats.done_at.append(t2 - stats.started)


async def progress(stats: LoadStats, duration: float, stop: asyncio.Event, label: str = "load") -> None:
    """A progress bar on stderr (a line every 2 s when stderr is not a terminal)."""
    tty = sys.stderr.isatty()
    last_line = 0.0
    while not stop.is_set():
        elapsed = time.perf_counter() - stats.started
        if tty or elapsed - last_line >= 2.0:
            last_line = elapsed
            frac = min(1.0, elapsed / duration)
            bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
            recent = stats.pair_ms[-500:]
            line = (
                f"{label} [{bar}] {elapsed:5.1f}/{duration:.0f} s  {len(stats.pair_ms):7d} msgs  "
                f"{len(stats.pair_ms) / max(elapsed, 1e-9):7.1f} msg/s  "
                f"p50 {percentile(recent, 50):6.1f} ms  errors {stats.error_count}"
            )
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    if tty:
        print(file=sys.stderr, flush=True)


def lean_connections(api: GatewayClient, count: int) -> list[LeanGateway]:
    """``count`` connections of the load loop to ``api``'s gateway, as its token (opened on first use)."""
    assert api.token is not None
    return [LeanGateway(api.base_url, api.token) for _ in range(count)]


async def run_clients(
    api: GatewayClient,
    pairs: list[Pair],
    clients: int,
    duration: float,
    budget: int,
    label: str,
    connections: list[LeanGateway] | None = None,
) -> tuple[LoadStats, float]:
    """``clients`` concurrent client loops (client i on ``pairs[i mod len]``), each on a connection of its
    own (:class:`benches.lean_http.LeanGateway`, as ``api``'s token): ``connections`` when given (kept
    open, e.g. from a warm-up into the measured load: with several worker processes a new connection may
    reach a worker the warm-up never did), else new ones closed at the end; the stats and the seconds."""
    lean = connections if connections is not None else lean_connections(api, clients)
    stats = LoadStats(budget=budget)
    loop = asyncio.get_running_loop()
    stats.started = time.perf_counter()
    deadline = loop.time() + duration
    stop = asyncio.Event()
    bar = asyncio.create_task(progress(stats, duration, stop, label))
    rng = random.Random(9420)
    try:
        await asyncio.gather(
            *(
                client_loop(lean[i], pairs[i % len(pairs)], stats, deadline, random.Random(rng.random()))
                for i in range(clients)
            )
        )
    finally:
        elapsed = time.perf_counter() - stats.started
        stop.set()
        await bar
        if connections is None:
            await asyncio.gather(*(c.close() for c in lean))
    return stats, elapsed


#: Tries of one group's setup when the gateway answers 503 (a transient refusal with Retry-After, e.g.
#: ``hsm_unavailable`` while several processes share one SoftHSM2 token that another is writing).
SETUP_TRIES = 5


async def make_pairs(api: GatewayClient, first: int, count: int) -> list[Pair]:
    gate = asyncio.Semaphore(4)

    async def setup(i: int) -> Pair:
        async with gate:
            for attempt in range(1, SETUP_TRIES + 1):
                try:
                    return await make_pair(api, i)
                except GatewayError as e:  # a new pair from scratch; what the failed try made stays
                    if e.status != 503 or attempt == SETUP_TRIES:
                        raise
                    print(f"setup of group {i}: 503 {e.code}, trying again", file=sys.stderr, flush=True)
                    await asyncio.sleep(1.0)
            raise AssertionError("unreachable")

    return list(await asyncio.gather(*(setup(i) for i in range(first, first + count))))


async def run_sweep(cfg: Settings, api: GatewayClient, pairs: list[Pair]) -> list[dict[str, Any]]:
    """The load again at each client count of ``--clients-sweep``, one group per client (groups added as
    needed, so that no two clients share a group and B gets its messages in order)."""
    out = []
    for clients in cfg.clients_sweep:
        if clients > len(pairs):
            pairs = pairs + await make_pairs(api, len(pairs), clients - len(pairs))
        stats, elapsed = await run_clients(
            api,
            pairs[:clients],
            clients,
            cfg.sweep_duration_s,
            cfg.max_messages,
            f"{clients:>3} clients",
        )
        out.append(sweep_entry(clients, stats, elapsed))
    return out


def sweep_entry(clients: int, stats: LoadStats, elapsed: float) -> dict[str, Any]:
    pair = latency_summary(stats.pair_ms)
    return {
        "clients": clients,
        "groups": clients,
        "messages": len(stats.pair_ms),
        "elapsed_s": round(elapsed, 3),
        "messages_per_s": round(len(stats.pair_ms) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": pair["p50"],
        "p99_ms": pair["p99"],
        "errors": dict(stats.errors),
    }


async def run_server_phase(cfg: Settings, server: Server, admin: str) -> dict[str, Any]:
    """The load on the server this benchmark started (its admin token makes the tenant)."""
    async with GatewayClient(server.base, admin, timeout=60.0) as api:
        ready_s = await server.wait_ready(api)
        return await load_phase(cfg, api, ready_s)


async def load_phase(cfg: Settings, api: GatewayClient, ready_s: float) -> dict[str, Any]:
    """A tenant (when ``api`` holds an admin token), the groups, the load and the sweep, over ``api``."""
    t0 = time.perf_counter()
    api, token_kind = await tenant_client(api)
    pairs = await make_pairs(api, 0, cfg.groups)
    setup_s = time.perf_counter() - t0
    print(
        f"setup: {cfg.groups} groups of 2 hosted members in {setup_s:.1f} s "
        f"(server ready in {ready_s:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    ops_before = await hsm_operations(api)
    signs_before = await sign_count(api)
    stats, elapsed = await run_clients(api, pairs, cfg.clients, cfg.duration_s, cfg.max_messages, "load")
    signs_after = await sign_count(api)
    ops_after = await hsm_operations(api)
    sweep = await run_sweep(cfg, api, pairs)
    ops = {
        k: ops_after.get(k, 0.0) - ops_before.get(k, 0.0) for k in sorted(set(ops_after) | set(ops_before))
    }
    return {
        "stats": stats,
        "elapsed_s": elapsed,
        "signatures": signs_after - signs_before,
        "setup_s": setup_s,
        "ready_s": ready_s,
        "hsm_operations": {k: int(v) for k, v in ops.items() if v},
        "sweep": sweep,
        "token_kind": token_kind,
    }


# ---- the library in-process --------------------------------------------------------------------------------


@dataclass
class LibraryGroup:
    """Two in-process members of one group: ``sender`` protects, ``receiver`` processes."""

    sender: Any
    receiver: Any


def library_backend() -> str:
    """Install the crypto backend as the gateway does (native when built); its class name."""
    import native
    from mls import PythonBackend, use_crypto_backend

    backend = native.choose_backend(None, PythonBackend())
    use_crypto_backend(backend)
    return type(backend).__name__


def library_group(store: Any, i: int) -> LibraryGroup:
    """Suite 1, members A and B with their signature and HPKE keys in ``store``; A adds B, B joins."""
    from mls import ApplicationMessage, Client, CommitOptions, Credential

    alice = Client(store, 1, Credential.basic(b"lib-a%d" % i))
    bob = Client(store, 1, Credential.basic(b"lib-b%d" % i))
    ga = alice.create_group(b"bench-load-lib-%d" % i)
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome)
    out = gb.process(ga.protect(MESSAGE))
    assert isinstance(out, ApplicationMessage) and out.data == MESSAGE
    return LibraryGroup(ga, gb)


def library_worker(
    group: LibraryGroup, stats: LoadStats, lock: threading.Lock, deadline: float, seed: float
) -> None:
    from mls import ApplicationMessage

    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        with lock:
            if not stats.claim():
                return
        data = rng.randbytes(rng.randint(16, 256))
        t0 = time.perf_counter()
        message = group.sender.protect(data)
        t1 = time.perf_counter()
        got = group.receiver.process(message)
        t2 = time.perf_counter()
        if not isinstance(got, ApplicationMessage) or got.data != data:
            raise RuntimeError(f"library: wrong plaintext back: {got!r}")
        with lock:
            stats.send_ms.append((t1 - t0) * 1000)
            stats.process_ms.append((t2 - t1) * 1000)
            stats.pair_ms.append((t2 - t0) * 1000)
            stats.done_at.append(t2 - stats.started)


def run_library_threads(groups: list[LibraryGroup], duration: float, budget: int) -> tuple[LoadStats, float]:
    stats = LoadStats(budget=budget)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            library_worker(groups[i], stats, lock, deadline, 9420.0 + i)
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)

    stats.started = time.perf_counter()
    deadline = stats.started + duration
    threads = [threading.Thread(target=work, args=(i,), name=f"lib{i}") for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - stats.started
    if errors:
        raise RuntimeError(f"library run failed: {errors[0]!r}") from errors[0]
    return stats, elapsed


def run_library_phase(cfg: Settings, data_dir: Path) -> dict[str, Any]:
    """The same send + process work done in this process by the library, keys in the gateway's token."""
    from gateway.config import GatewayConfig
    from hsm import Pkcs11KeyStore, Token
    from hsm.bootstrap import find_softhsm_module

    backend = library_backend()
    os.environ["SOFTHSM2_CONF"] = str(data_dir / "softhsm" / "softhsm2.conf")
    token_cfg = GatewayConfig(data_dir=data_dir).token_config(find_softhsm_module())
    token = Token.open(token_cfg)
    try:
        store = Pkcs11KeyStore(token)
        threads = min(cfg.clients, cfg.groups)
        t0 = time.perf_counter()
        groups = [library_group(store, i) for i in range(threads)]
        setup_s = time.perf_counter() - t0
        print(
            f"library: {threads} in-process groups of 2 ({backend}, keys in SoftHSM2) in {setup_s:.1f} s; "
            f"{threads} threads for {cfg.library_duration_s:g} s",
            file=sys.stderr,
            flush=True,
        )
        stats, elapsed = run_library_threads(groups, cfg.library_duration_s, cfg.max_messages)
    finally:
        token.close()
    return {
        "stats": stats,
        "elapsed_s": elapsed,
        "threads": threads,
        "backend": backend,
        "pool_size": token_cfg.pool_size,
        "setup_s": setup_s,
    }


# ---- report ------------------------------------------------------------------------------------------------


def latency_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def build_report(
    cfg: Settings,
    phase: dict[str, Any],
    raw_before: list[float],
    raw_after: list[float],
    library: dict[str, Any],
    one_process: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of a run on the server this benchmark started: the load, the raw sign rate and the
    library in-process."""
    load = load_fields(cfg, phase)
    raw_rounds = raw_before + raw_after
    raw = statistics.median(raw_rounds)
    signatures_per_s = load["gateway_signatures"]["per_s"]
    lib = library_section(cfg, library)
    lib_rate = lib["messages_per_s"]
    return {
        "messages_per_s": load["messages_per_s"],
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "raw_sign_ops_per_s": round(raw, 1),
        "fraction_of_hsm": round(signatures_per_s / raw, 4) if raw > 0 else None,
        "library_messages_per_s": lib_rate,
        "fraction_of_library": round(load["messages_per_s"] / lib_rate, 4) if lib_rate > 0 else None,
        "workers": cfg.workers,
        **one_process_fields(cfg, one_process, load, lib_rate),
        **load,
        "config": config_section(cfg, "HTTP/1.1 over loopback (127.0.0.1)"),
        "raw_sign": {
            "mechanism": "CKM_EDDSA (Ed25519 session key, python-pkcs11, 1 thread)",
            "message_bytes": len(MESSAGE),
            "rounds_before_ops_per_s": [round(r, 1) for r in raw_before],
            "rounds_after_ops_per_s": [round(r, 1) for r in raw_after],
            "median_ops_per_s": round(raw, 1),
        },
        "library": lib,
        "server_ready_s": round(phase["ready_s"], 2),
        "deployment": (
            f"`mls-gateway serve --workers {cfg.workers}` (a supervisor handing connections in turn to "
            f"{cfg.workers} worker processes), as the README deploys it on this machine"
            if cfg.workers > 1
            else "one `mls-gateway serve` process"
        ),
    }


def one_process_fields(
    cfg: Settings, one_process: dict[str, Any] | None, load: dict[str, Any], lib_rate: float
) -> dict[str, Any]:
    """``messages_per_s_1_process`` and ``fraction_of_library_1_process``: the same load on one gateway
    process (the main figures are ``serve --workers N``'s); with one worker, the main figures themselves."""
    one = load if one_process is None else load_fields(replace(cfg, clients_sweep=()), one_process)
    rate = one["messages_per_s"]
    return {
        "messages_per_s_1_process": rate,
        "fraction_of_library_1_process": round(rate / lib_rate, 4) if lib_rate > 0 else None,
        "one_process": {
            "messages": one["messages"],
            "elapsed_s": one["elapsed_s"],
            "p50_ms": one["p50_ms"],
            "p99_ms": one["p99_ms"],
            "errors": one["errors"],
            "what": "the same load (groups, clients, duration) on one `mls-gateway serve` process"
            + (" (this run's main figures: --workers 1)" if one_process is None else ", after the main run"),
        },
    }


def build_remote_report(cfg: Settings, phase: dict[str, Any], url: str) -> dict[str, Any]:
    """The report of a run against a gateway started elsewhere (``--url``): the load only (its token,
    its SoftHSM2 and its process are not this one's to measure)."""
    return {
        **load_fields(cfg, phase),
        "mode": "remote",
        "target": url,
        "token": phase["token_kind"],
        "config": config_section(cfg, f"HTTP to {url}"),
    }


def load_fields(cfg: Settings, phase: dict[str, Any]) -> dict[str, Any]:
    """The figures of the load and the sweep, as both kinds of report give them."""
    stats: LoadStats = phase["stats"]
    elapsed = phase["elapsed_s"]
    messages = len(stats.pair_ms)
    signatures = phase["signatures"]
    seconds = max(1, int(elapsed))  # whole seconds only: a last partial second would look like a drop
    timeline = [0] * seconds
    for t in stats.done_at:
        if int(t) < seconds:
            timeline[int(t)] += 1
    pair = latency_summary(stats.pair_ms)
    return {
        "messages_per_s": round(messages / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": pair["p50"],
        "p99_ms": pair["p99"],
        "clients_sweep": phase["sweep"],
        "benchmark": "load",
        "quick": cfg.quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": "one message = POST /messages on member A + POST /process of it on member B (latency: both)",
        "messages": messages,
        "elapsed_s": round(elapsed, 3),
        "errors": dict(stats.errors),
        "error_samples": list(stats.error_samples),
        "latency_ms": {
            "send_and_process": pair,
            "send": latency_summary(stats.send_ms),
            "process": latency_summary(stats.process_ms),
        },
        "gateway_signatures": {
            "count": int(signatures),
            "per_s": round(signatures / elapsed, 2) if elapsed > 0 else 0.0,
            "per_message": round(signatures / messages, 3) if messages else None,
            "source": "GET /metrics mlsgw_hsm_operations_total{operation=sign,outcome=ok}",
        },
        "hsm_operations_during_load": phase["hsm_operations"],
        "clients_sweep_what": (
            f"the gateway load again with N clients, one group of 2 hosted members per client, "
            f"{cfg.sweep_duration_s:g} s each, after the main load (same server, same run)"
        ),
        "timeline_messages_per_s": timeline,
        "setup_s": round(phase["setup_s"], 2),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }


def config_section(cfg: Settings, transport: str) -> dict[str, Any]:
    return {
        "groups": cfg.groups,
        "members_per_group": 2,
        "identities": 2 * cfg.groups,
        "clients": cfg.clients,
        "duration_s": cfg.duration_s,
        "max_messages": cfg.max_messages,
        "cipher_suite": 1,
        "message_bytes": [16, 256],
        "transport": transport,
    }


def library_section(cfg: Settings, library: dict[str, Any]) -> dict[str, Any]:
    stats: LoadStats = library["stats"]
    elapsed = library["elapsed_s"]
    messages = len(stats.pair_ms)
    return {
        "messages_per_s": round(messages / elapsed, 2) if elapsed > 0 else 0.0,
        "what": (
            "the gateway's send + process done in this process by the library, with no HTTP, database or "
            "key sealing: per message Group.protect on member A (16-256 random bytes) then Group.process of "
            "those bytes on member B, plaintext checked; latency: both calls"
        ),
        "how": (
            f"{library['threads']} threads, thread i on its own 2-member group i (suite 1), for "
            f"{cfg.library_duration_s:g} s (or the message budget), after the server stopped: A's and B's "
            f"signature and HPKE keys in the gateway's own SoftHSM2 token through hsm.Pkcs11KeyStore over "
            f"hsm.Token (the gateway's token config, pool of {library['pool_size']} sessions)"
        ),
        "crypto_backend": library["backend"],
        "threads": library["threads"],
        "groups": library["threads"],
        "messages": messages,
        "elapsed_s": round(elapsed, 3),
        "setup_s": round(library["setup_s"], 2),
        "latency_ms": {
            "protect_and_process": latency_summary(stats.pair_ms),
            "protect": latency_summary(stats.send_ms),
            "process": latency_summary(stats.process_ms),
        },
    }


def print_summary(report: dict[str, Any]) -> None:
    c = report["config"]
    lat = report["latency_ms"]
    rows = [
        ("groups × members / clients", f"{c['groups']} × 2 / {c['clients']}"),
        ("load duration", f"{report['elapsed_s']:.1f} s"),
        ("messages sent + processed", f"{report['messages']}  ({report['messages_per_s']:.1f} /s)"),
        (
            "latency send+process p50 / p99",
            f"{_ms(lat['send_and_process']['p50'])} / {_ms(lat['send_and_process']['p99'])}",
        ),
        ("latency send p50 / p99", f"{_ms(lat['send']['p50'])} / {_ms(lat['send']['p99'])}"),
        ("latency process p50 / p99", f"{_ms(lat['process']['p50'])} / {_ms(lat['process']['p99'])}"),
        (
            "errors",
            str(sum(report["errors"].values())) + (f"  {report['errors']}" if report["errors"] else ""),
        ),
        (
            "gateway signatures",
            f"{report['gateway_signatures']['count']}  ({report['gateway_signatures']['per_s']:.1f} /s)",
        ),
        *(_local_rows(report) if "raw_sign_ops_per_s" in report else [("target", report["target"])]),
        *(
            (
                f"{s['clients']} clients: msgs/s, p50 / p99",
                f"{s['messages_per_s']:.1f} /s, {_ms(s['p50_ms'])} / {_ms(s['p99_ms'])}"
                + (f"  errors {s['errors']}" if s["errors"] else ""),
            )
            for s in report["clients_sweep"]
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nload benchmark{' (quick)' if report['quick'] else ''}")
    print("-" * (width + 40))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 40))


def _local_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary rows of what only a run on its own server measures: the raw sign rate, the library."""
    return [
        ("raw Ed25519 sign (python-pkcs11)", f"{report['raw_sign_ops_per_s']:.1f} /s"),
        ("fraction of HSM sign rate", f"{report['fraction_of_hsm']}"),
        (
            "library in-process (same keys)",
            f"{report['library_messages_per_s']:.1f} /s  (p50 "
            f"{_ms(report['library']['latency_ms']['protect_and_process']['p50'])})",
        ),
        ("fraction of library", f"{report['fraction_of_library']}  ({report['workers']} gateway processes)"),
        (
            "1 process: msgs/s, fraction of library",
            f"{report['messages_per_s_1_process']:.1f} /s, {report['fraction_of_library_1_process']}",
        ),
    ]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def chart(report: dict[str, Any], stats: LoadStats, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ((ax_t, ax_l, ax_h), (ax_g, ax_sl, ax_st)) = plt.subplots(
        2, 3, figsize=(15, 9.2), gridspec_kw={"width_ratios": [3, 3, 2]}
    )
    timeline = report["timeline_messages_per_s"]
    ax_t.plot(
        range(len(timeline) + 1),
        [*timeline, timeline[-1]],
        drawstyle="steps-post",
        color="#1f77b4",
        label="per second",
    )
    ax_t.axhline(
        report["messages_per_s"],
        color="#d62728",
        linestyle="--",
        label=f"mean {report['messages_per_s']:.1f}/s",
    )
    ax_t.set_xlabel("time since load start (s)")
    ax_t.set_ylabel("messages sent + processed / s")
    ax_t.set_title("Throughput")
    ax_t.set_ylim(bottom=0)
    ax_t.legend(fontsize=8)

    for values, label, colour in (
        (stats.pair_ms, "send + process", "#1f77b4"),
        (stats.send_ms, "send", "#2ca02c"),
        (stats.process_ms, "process", "#ff7f0e"),
    ):
        if values:
            ordered = sorted(values)
            ax_l.plot(
                ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label, color=colour
            )
    for q, style in (("p50_ms", ":"), ("p99_ms", "--")):
        if report[q] is not None:
            ax_l.axvline(report[q], color="#444444", linestyle=style, label=f"{q[:3]} {report[q]:.1f} ms")
    ax_l.set_xscale("log")
    ax_l.set_xlabel("latency (ms, log)")
    ax_l.set_ylabel("fraction of messages")
    ax_l.set_title("Latency (CDF)")
    ax_l.legend(fontsize=8)

    raw, used = report["raw_sign_ops_per_s"], report["gateway_signatures"]["per_s"]
    bars = ax_h.bar(
        ["raw python-pkcs11\nEd25519 sign", "gateway signatures\nduring the load"],
        [raw, used],
        color=["#9e9e9e", "#1f77b4"],
    )
    ax_h.annotate(
        f"{used:.0f}/s = {report['fraction_of_hsm']:.1%} of raw"
        if report["fraction_of_hsm"] is not None
        else "",
        (bars[1].get_x() + bars[1].get_width() / 2, bars[1].get_height()),
        ha="center",
        va="bottom",
        fontsize=9,
    )
    ax_h.annotate(
        f"{raw:.0f}/s",
        (bars[0].get_x() + bars[0].get_width() / 2, bars[0].get_height()),
        ha="center",
        va="bottom",
        fontsize=9,
    )
    ax_h.set_yscale("log")
    ax_h.set_ylim(bottom=max(1.0, min(raw, used or raw) / 10), top=max(raw, used) * 2.5)
    ax_h.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_h.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_h.set_ylabel("signatures / s (log)")
    ax_h.set_title("HSM sign capacity used")

    library_bars(ax_g, report)
    sweep_charts(ax_sl, ax_st, report)

    c = report["config"]
    fig.suptitle(
        f"mls-gateway load: {c['groups']} groups × 2 hosted members, {c['clients']} clients, "
        f"{report['elapsed_s']:.0f} s, suite 1, SoftHSM2 ({report['machine']['cpus']} CPUs)"
        f"{' — quick' if report['quick'] else ''}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def library_bars(ax: Any, report: dict[str, Any]) -> None:
    """Gateway messages/s next to the library's in-process rate, with the fraction."""
    gw, lib, one = (
        report["messages_per_s"],
        report["library_messages_per_s"],
        report["messages_per_s_1_process"],
    )
    lib_cfg = report["library"]
    workers = report["workers"]
    names = [
        f"gateway, {workers} process{'es' if workers > 1 else ''}\n{report['config']['clients']} clients"
    ]
    rates, fractions = [gw], [report["fraction_of_library"]]
    if workers > 1:
        names.append("gateway, 1 process\nsame load")
        rates.append(one)
        fractions.append(report["fraction_of_library_1_process"])
    bars = ax.bar(
        [*names, f"library in-process\n{lib_cfg['threads']} threads, same token"],
        [*rates, lib],
        color=[*["#1f77b4", "#6baed6"][: len(rates)], "#9e9e9e"],
    )
    labels = [
        f"{rate:.0f}/s" + (f"\n= {fraction:.1%} of library" if fraction is not None else "")
        for rate, fraction in zip(rates, fractions, strict=True)
    ] + [f"{lib:.0f}/s"]
    for bar, label in zip(bars, labels, strict=True):
        ax.annotate(
            label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=9
        )
    ax.set_ylim(0, max(gw, one, lib, 1.0) * 1.25)
    ax.set_ylabel("messages sent + processed / s")
    ax.set_title("Gateway against the library (suite 1, SoftHSM2 keys)")


def sweep_charts(ax_lat: Any, ax_rate: Any, report: dict[str, Any]) -> None:
    """p50 / p99 and messages/s at each client count of the sweep."""
    sweep = report["clients_sweep"]
    if not sweep:
        for ax in (ax_lat, ax_rate):
            ax.text(0.5, 0.5, "no client sweep (--clients-sweep none)", ha="center", va="center")
            ax.set_axis_off()
        return
    names = [str(s["clients"]) for s in sweep]
    xs = list(range(len(sweep)))
    width = 0.38
    for offset, key, colour in ((-width / 2, "p50_ms", "#2ca02c"), (width / 2, "p99_ms", "#d62728")):
        values = [s[key] or 0.0 for s in sweep]
        bars = ax_lat.bar([x + offset for x in xs], values, width, label=key[:3], color=colour)
        for bar, v in zip(bars, values, strict=True):
            ax_lat.annotate(
                f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
            )
    ax_lat.set_xticks(xs, names)
    ax_lat.set_xlabel("concurrent clients (one group each)")
    ax_lat.set_ylabel("send + process latency (ms)")
    ax_lat.set_title("Latency by client count")
    ax_lat.legend(fontsize=8)
    rates = [s["messages_per_s"] for s in sweep]
    bars = ax_rate.bar(xs, rates, 0.6, color="#1f77b4")
    for bar, v in zip(bars, rates, strict=True):
        ax_rate.annotate(
            f"{v:.0f}/s", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
        )
    ax_rate.set_xticks(xs, names)
    ax_rate.set_ylim(0, max([*rates, 1.0]) * 1.2)
    ax_rate.set_xlabel("concurrent clients")
    ax_rate.set_ylabel("messages / s")
    ax_rate.set_title("Throughput by client count")


# ---- main --------------------------------------------------------------------------------------------------


def run(cfg: Settings) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mlsgw-bench-load-"))
    try:
        data_dir = tmp / "data"
        t0 = time.perf_counter()
        admin = init_gateway(data_dir)
        print(
            f"init: data folder and SoftHSM2 token in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        raw = RawSigner(data_dir)
        raw_before = raw.measure(cfg.raw_seconds, cfg.raw_rounds)
        print(
            f"raw Ed25519 sign: {', '.join(f'{r:.0f}' for r in raw_before)} /s", file=sys.stderr, flush=True
        )
        phase = serve_and_load(cfg, data_dir, admin, tmp / "server.log", cfg.workers)
        one_process = None
        if cfg.workers > 1:  # the one-process figure beside it (issue 13), no sweep
            print("the same load on one process:", file=sys.stderr, flush=True)
            one_process = serve_and_load(
                replace(cfg, clients_sweep=()), data_dir, admin, tmp / "server-1.log", 1
            )
        raw_after = raw.measure(cfg.raw_seconds, cfg.raw_rounds)
        print(
            f"raw Ed25519 sign after: {', '.join(f'{r:.0f}' for r in raw_after)} /s",
            file=sys.stderr,
            flush=True,
        )
        library = run_library_phase(cfg, data_dir)
        report = build_report(cfg, phase, raw_before, raw_after, library, one_process)
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
        chart(report, phase["stats"], cfg.out / "load.png")
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def serve_and_load(cfg: Settings, data_dir: Path, admin: str, log: Path, workers: int) -> dict[str, Any]:
    """``mls-gateway serve`` with ``workers`` processes on ``data_dir``, the load phase on it, stopped."""
    server = Server(data_dir, log, workers=workers)
    try:
        phase = asyncio.run(run_server_phase(cfg, server, admin))
    finally:
        code = server.stop()
    if code not in (0, -signal.SIGTERM):
        print(f"warning: the server exited with {code}:\n{server.log_tail()}", file=sys.stderr)
    return phase


def run_remote(cfg: Settings, url: str, token: str) -> dict[str, Any]:
    """The load against a gateway started elsewhere: its identities and groups made over the API with
    ``token`` (an admin token makes a tenant first); writes ``load-remote.json``."""

    async def phase() -> dict[str, Any]:
        async with GatewayClient(url, token, timeout=60.0) as api:
            t0 = time.perf_counter()
            ready = await api.readiness()
            if ready.get("status") != "ready":
                raise RuntimeError(f"{url} is not ready: {ready}")
            return await load_phase(cfg, api, time.perf_counter() - t0)

    report = build_remote_report(cfg, asyncio.run(phase()), url)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "load-remote.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benches.load", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 groups, 8 clients, 12 s of load (< 60 s in all)"
    )
    parser.add_argument("--groups", type=int, help="groups of 2 hosted members (default 8 quick, 24 full)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default one per group)")
    parser.add_argument("--duration", type=float, help="seconds of load (default 12 quick, 40 full)")
    parser.add_argument("--max-messages", type=int, help="stop after this many messages (default 20k / 500k)")
    parser.add_argument("--raw-seconds", type=float, help="seconds per raw-sign round (default 0.5 / 1.0)")
    parser.add_argument(
        "--clients-sweep",
        default="8,32",
        help="also run the load at these client counts, comma-separated ('none' to skip; default 8,32)",
    )
    parser.add_argument("--sweep-duration", type=float, help="seconds per sweep point (default 4 / 15)")
    parser.add_argument(
        "--library-duration", type=float, help="seconds of the in-process library run (default: --duration)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="gateway processes (serve --workers N; default: the number of CPUs); with N > 1 the load also "
        "runs on one process for the figure beside it",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for load.json and load.png")
    parser.add_argument(
        "--url",
        help="drive a gateway started elsewhere (e.g. http://gw:8080) instead of starting one; writes "
        "load-remote.json (the load and the sweep; no raw-sign or library figures)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MLSGW_BENCH_TOKEN"),
        help="with --url: an admin token (a tenant is made) or a tenant token (default $MLSGW_BENCH_TOKEN)",
    )
    args = parser.parse_args(argv)
    if args.url is not None and not args.token:
        parser.error("--url needs --token (or MLSGW_BENCH_TOKEN)")
    if args.url is not None and not args.url.startswith(("http://", "https://")):
        parser.error("--url must be an http:// or https:// URL")
    for name in ("groups", "clients", "max_messages", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        parse_sweep(args.clients_sweep)
    except ValueError as e:
        parser.error(f"--clients-sweep: {e}")
    for name in ("duration", "raw_seconds", "sweep_duration", "library_duration"):
        if getattr(args, name) is not None and not 0 < getattr(args, name) <= 3600:
            parser.error(f"--{name.replace('_', '-')} must be in (0, 3600] seconds")
    cfg = settings_from(args)
    started = time.perf_counter()
    if args.url is not None:
        report = run_remote(cfg, args.url, args.token)
        print_summary(report)
        print(f"wrote {cfg.out / 'load-remote.json'} in {time.perf_counter() - started:.1f} s")
        return report
    report = run(cfg)
    print_summary(report)
    print(
        f"wrote {cfg.out / 'load.json'} and {cfg.out / 'load.png'} in {time.perf_counter() - started:.1f} s"
    )
    return report


if __name__ == "__main__":
    main()
