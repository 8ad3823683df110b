"""Fan-out benchmark: one hosted sender, groups of hosted members and device clients, end-to-end delivery.

    python -m benches.fanout [--quick] [--sizes 2,50,500] [--messages N[,N...]] [--window W]
                             [--device-share F] [--no-ack] [--timeout S] [--out DIR]

The gateway is the delivery service of its groups (docs: api-delivery.md). This benchmark runs the real
server on loopback (``mls-gateway init`` + ``serve``, the embedded SoftHSM2 token, SQLite; helpers shared
with :mod:`benches.load`) and, for each group size M (default 2, 50, 500; ``--quick``: 2, 10, 40):

1. **Setup** (not timed in the results, reported under ``setup_s``): a hosted *bot* identity (the sender),
   ``H`` hosted identities and ``D`` device clients (``POST /v1/clients``), M = 1 + H + D, by default half
   and half (at least one of each when M ≥ 3). Each device is a Python MLS client built on the project's
   own ``mls`` library with software keys; it uploads one KeyPackage to the directory. The bot claims one
   KeyPackage per endpoint (``POST /v1/key-packages/claim``; hosted identities' are made on demand) and
   adds everyone in one commit; hosted members join by themselves (``auto_join``), devices join from the
   Welcome in their mailbox.
2. **Fan-out** (timed): every receiver reads with long-polls — a hosted member its inbox (``GET
   /v1/identities/{id}/inbox?after=&wait=``: the gateway already applied the message to its state and the
   event carries the plaintext), a device its mailbox (``GET /v1/clients/{id}/mailbox?after=&wait=``) and
   decrypts each PrivateMessage in this process with ``mls.Group.process``; both ack each page (not with
   ``--no-ack``: each ack is a write transaction of the gateway's database). The bot
   sends N application messages (``POST /v1/identities/{bot}/groups/{gid}/messages``, 16-256 random bytes,
   at most ``--window`` requests in flight, default 1 = one after another). A **delivery** is one
   receiver having one message's plaintext; its latency is from the start of the send request to that
   moment (for a device: after its decrypt). ``deliveries_per_s`` = deliveries / (last delivery − first
   send), ``p50_delivery_ms``/``p99_delivery_ms`` over all deliveries.
3. **The library in-process** (after the server stopped, in this process): the same work with no HTTP,
   database or sealing — a group of M members in suite 1, the sender and the hosted receivers with their
   signature and HPKE keys in the gateway's own SoftHSM2 token (``hsm.Pkcs11KeyStore``), devices with
   software keys; per message one ``Group.protect`` at the sender and one ``Group.process`` at every
   receiver, plaintext checked. ``library_deliveries_per_s`` and ``fraction_of_library`` =
   ``deliveries_per_s`` / ``library_deliveries_per_s``. Up to ``LIBRARY_JOINS`` receivers join from the
   Welcome; the others are restored from those members' state (``Group.from_bytes``, each its own object
   with its own secret tree), since a join at 500 members costs ~80 ms and unprotecting a PrivateMessage
   never uses the receiver's own private keys — the per-message work is the same.

Per size the report also has the gateway's own counters over the fan-out (``GET /metrics``: delivery
latency by channel, MLS operation times, HSM operations, state-cache hits, HTTP time by route) and the CPU
seconds of the server and of this process, which shows where the time goes (both share the machine).

Writes ``fanout.json`` (``results``: one entry per size with ``members``, ``deliveries_per_s``,
``p50_delivery_ms``, ``p99_delivery_ms``, ``fraction_of_library`` and details; machine/run metadata) and
``fanout.png`` to ``benches/results`` (or ``--out``), prints a summary table, and shows a progress bar
while messages fan out. Every wait is bounded (``--timeout`` per size); the server is stopped with SIGTERM
(SIGKILL after 15 s) whatever happens. ``--quick`` finishes in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benches.http_calls import HttpError, b64, b64url, call
from benches.load import Server, init_gateway, latency_summary, library_backend
from gateway.client import GatewayClient

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (2, 50, 500)
QUICK_SIZES = (2, 10, 40)
#: Messages sent per size (by default): more for small groups, so that each size has enough deliveries.
DEFAULT_MESSAGES = {2: 300, 50: 60, 500: 12}
QUICK_MESSAGES = {2: 200, 10: 80, 40: 30}
SUITE = 1
#: Long-poll wait of the receivers (seconds; the gateway caps it at 30).
POLL_WAIT_S = 5
#: Items per mailbox / inbox page.
PAGE = 100
#: Receivers of the in-process library group that join from the Welcome (the rest are restored copies).
LIBRARY_JOINS = 24
#: A message's plaintext starts with this tag and its index.
TAG = b"FO"


@dataclass(frozen=True)
class Settings:
    quick: bool
    sizes: tuple[int, ...]
    messages: dict[int, int]
    window: int
    device_share: float
    timeout_s: float
    out: Path
    acks: bool = True


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError as e:
        raise ValueError(f"sizes must be integers: {text!r}") from e
    if not sizes or sizes[0] < 2:
        raise ValueError("every size must be at least 2 (the sender and one receiver)")
    return tuple(sizes)


def messages_for(size: int, default: dict[int, int]) -> int:
    """The default message count of a size: its own, else scaled so that deliveries stay comparable."""
    if size in default:
        return default[size]
    return max(5, min(300, 3000 // max(1, size - 1)))


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    sizes = parse_sizes(args.sizes) if args.sizes else (QUICK_SIZES if quick else DEFAULT_SIZES)
    table = QUICK_MESSAGES if quick else DEFAULT_MESSAGES
    if args.messages:
        counts = [int(x) for x in args.messages.split(",")]
        if len(counts) == 1:
            counts *= len(sizes)
        if len(counts) != len(sizes) or min(counts) < 1:
            raise ValueError("--messages: one count, or one per size, each at least 1")
        messages = dict(zip(sizes, counts, strict=True))
    else:
        messages = {n: messages_for(n, table) for n in sizes}
    return Settings(
        quick=quick,
        sizes=sizes,
        messages=messages,
        window=args.window,
        device_share=args.device_share,
        timeout_s=args.timeout or (40.0 if quick else 300.0),
        out=args.out,
        acks=not args.no_ack,
    )


def split_members(size: int, device_share: float) -> tuple[int, int]:
    """(hosted receivers, devices) of a group of ``size`` (the sender is hosted and not counted)."""
    receivers = size - 1
    devices = round(receivers * device_share)
    if receivers >= 2:
        devices = min(max(devices, 1), receivers - 1)
    return receivers - devices, devices


def plaintext(index: int, rng: random.Random) -> bytes:
    n = rng.randint(16, 256)
    return TAG + struct.pack(">I", index) + rng.randbytes(n - len(TAG) - 4)


def index_of(data: bytes) -> int | None:
    if len(data) < 6 or data[:2] != TAG:
        return None
    return int(struct.unpack(">I", data[2:6])[0])


# ---- endpoints ---------------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """One receiving endpoint: a hosted member (inbox) or a device (mailbox + its own MLS state)."""

    kind: str  # "hosted" | "device"
    endpoint_id: str
    token: str
    name: str
    mls: Any = None  # a device's mls.Client
    group: Any = None  # a device's mls.Group once joined
    cursor: Any = None
    epoch: int = -1
    #: message index -> perf_counter() when this receiver had its plaintext
    got: dict[int, float] = field(default_factory=dict)
    wrong: int = 0
    pages: int = 0

    def box_url(self, base: str) -> str:
        if self.kind == "hosted":
            return f"{base}/v1/identities/{self.endpoint_id}/inbox"
        return f"{base}/v1/clients/{self.endpoint_id}/mailbox"


async def read_page(session: Any, base: str, r: Receiver, wait: float) -> list[dict[str, Any]]:
    """One long-poll read after the receiver's cursor; moves the cursor and acks the page."""
    query = f"?wait={int(wait)}&limit={PAGE}"
    if r.cursor is not None:
        query += f"&after={r.cursor}"
    body = await call(session, "GET", r.box_url(base) + query, r.token)
    items: list[dict[str, Any]] = body["events" if r.kind == "hosted" else "items"]
    r.pages += 1
    nxt = body.get("next_cursor")
    r.cursor = nxt if nxt is not None else (items[-1]["cursor"] if items else r.cursor)
    return items


async def ack(session: Any, base: str, r: Receiver, items: list[dict[str, Any]]) -> None:
    if items:
        await call(session, "POST", r.box_url(base) + "/ack", r.token, {"up_to": items[-1]["cursor"]})


def apply_item(r: Receiver, group_id: bytes, item: dict[str, Any]) -> int | None:
    """Take one inbox event or mailbox item of the group; the message index of an application plaintext."""
    from mls import ApplicationMessage, StagedCommit

    if base64.b64decode(item["group_id"]) != group_id:
        return None
    kind = item.get("kind")
    if r.kind == "hosted":
        if kind in ("joined", "commit"):
            r.epoch = int(item["epoch"])
        elif kind == "application":
            return index_of(base64.b64decode(item["data"]))
        elif kind == "rejected":
            raise RuntimeError(f"hosted member {r.endpoint_id}: entry {item.get('seq')} rejected: {item}")
        return None
    message = base64.b64decode(item["message"])
    if kind == "welcome":
        if r.group is None:
            r.group = r.mls.join(message)
            r.epoch = r.group.epoch
        return None
    if r.group is None:
        raise RuntimeError(f"device {r.endpoint_id}: {kind} seq {item.get('seq')} before its Welcome")
    out = r.group.process(message)
    if isinstance(out, StagedCommit):
        r.group.merge(out)
        r.epoch = r.group.epoch
        return None
    if isinstance(out, ApplicationMessage):
        return index_of(out.data)
    return None


@dataclass
class FanoutGroup:
    size: int
    base: str
    tenant_token: str
    bot: str  # identity id
    group_id: bytes
    epoch: int
    receivers: list[Receiver]

    @property
    def sender_url(self) -> str:
        return f"{self.base}/v1/identities/{self.bot}/groups/{b64url(self.group_id)}/messages"


async def gather_bounded(coros: list[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with gate:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def make_group(
    session: Any, base: str, token: str, size: int, cfg: Settings, deadline: float
) -> tuple[FanoutGroup, dict[str, float]]:
    """The bot, its hosted members and devices, all in one group at one epoch; with setup timings."""
    from mls import Credential
    from mls.client import Client as MlsClient
    from mls.crypto.key_store import SoftwareKeyStore

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    hosted_n, device_n = split_members(size, cfg.device_share)
    tag = f"m{size}"
    bot = (await call(session, "POST", f"{base}/v1/identities", token, {"name": f"{tag}-bot"}))["identity_id"]

    async def hosted(i: int) -> Receiver:
        got = await call(session, "POST", f"{base}/v1/identities", token, {"name": f"{tag}-h{i}"})
        return Receiver("hosted", got["identity_id"], token, f"{tag}-h{i}")

    async def device(i: int) -> Receiver:
        got = await call(session, "POST", f"{base}/v1/clients", token, {"name": f"{tag}-d{i}"})
        client = MlsClient(SoftwareKeyStore(), SUITE, Credential.basic(f"{tag}-d{i}".encode()))
        kp = b64(client.key_package().message())
        path = f"{base}/v1/clients/{got['client_id']}/key-packages"
        await call(session, "POST", path, got["token"], {"key_packages": [kp]})
        return Receiver("device", got["client_id"], got["token"], f"{tag}-d{i}", mls=client)

    receivers = await gather_bounded(
        [hosted(i) for i in range(hosted_n)] + [device(i) for i in range(device_n)]
    )
    phases["endpoints_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    gid_b64 = (await call(session, "POST", f"{base}/v1/identities/{bot}/groups", token, {}))["group_id"]
    group_id = base64.b64decode(gid_b64)
    ids = [r.endpoint_id for r in receivers]
    kps: dict[str, str] = {}
    for i in range(0, len(ids), 100):
        chunk = ids[i : i + 100]
        got = await call(
            session,
            "POST",
            f"{base}/v1/key-packages/claim",
            token,
            {"endpoints": chunk, "cipher_suite": SUITE},
        )
        kps.update(got["key_packages"])
    phases["claim_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    commit = await call(
        session,
        "POST",
        f"{base}/v1/identities/{bot}/groups/{b64url(group_id)}/commits",
        token,
        {"add": [kps[i] for i in ids]},
    )
    epoch = int(commit["epoch"])
    phases["add_commit_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    await gather_bounded([join_wait(session, base, r, group_id, epoch, deadline) for r in receivers], 64)
    phases["joins_s"] = time.perf_counter() - t3
    phases["total_s"] = time.perf_counter() - t0
    return FanoutGroup(size, base, token, bot, group_id, epoch, receivers), phases


async def join_wait(
    session: Any, base: str, r: Receiver, group_id: bytes, epoch: int, deadline: float
) -> None:
    """Read the receiver's box until it is in the group at ``epoch`` (hosted: joined by the gateway)."""
    while r.epoch < epoch:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"{r.kind} {r.endpoint_id} not at epoch {epoch} (at {r.epoch}) in time")
        items = await read_page(session, base, r, min(POLL_WAIT_S, max(1, int(left))))
        for item in items:
            apply_item(r, group_id, item)
        await ack(session, base, r, items)


# ---- the fan-out -------------------------------------------------------------------------------------------


@dataclass
class Fanout:
    messages: int
    expected: int  # deliveries
    sent_at: dict[int, float] = field(default_factory=dict)
    acked_at: dict[int, float] = field(default_factory=dict)
    send_errors: list[str] = field(default_factory=list)
    delivered: int = 0
    started: float = 0.0
    acks: bool = True


async def receive(session: Any, g: FanoutGroup, r: Receiver, run: Fanout, stop: asyncio.Event) -> None:
    while len(r.got) < run.messages and not stop.is_set():
        items = await read_page(session, g.base, r, POLL_WAIT_S)
        for item in items:
            index = apply_item(r, g.group_id, item)
            if index is None:
                continue
            if index in r.got or index not in range(run.messages):
                r.wrong += 1
                continue
            r.got[index] = time.perf_counter()
            run.delivered += 1
        if run.acks:
            await ack(session, g.base, r, items)


async def send_all(session: Any, g: FanoutGroup, run: Fanout, window: int) -> None:
    gate = asyncio.Semaphore(window)
    rng = random.Random(9420 + g.size)

    async def one(i: int) -> None:
        data = plaintext(i, rng)
        async with gate:
            run.sent_at[i] = time.perf_counter()
            try:
                await call(session, "POST", g.sender_url, g.tenant_token, {"data": b64(data)})
            except HttpError as e:
                run.send_errors.append(f"message {i}: {e.code}: {e.detail}")
                return
            run.acked_at[i] = time.perf_counter()

    await asyncio.gather(*(one(i) for i in range(run.messages)))


async def progress(run: Fanout, label: str, stop: asyncio.Event) -> None:
    """A progress bar on stderr (a line every 2 s when stderr is not a terminal)."""
    tty = sys.stderr.isatty()
    last = -10.0
    while not stop.is_set():
        elapsed = time.perf_counter() - run.started
        if tty or elapsed - last >= 2.0:
            last = elapsed
            frac = run.delivered / max(1, run.expected)
            bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
            line = (
                f"{label} [{bar}] {run.delivered:6d}/{run.expected} deliveries  sent {len(run.acked_at):4d}/"
                f"{run.messages}  {run.delivered / max(elapsed, 1e-9):7.1f} /s  {elapsed:5.1f} s"
            )
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    if tty:
        print(file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), or nan."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


async def run_fanout(session: Any, g: FanoutGroup, cfg: Settings, server_pid: int) -> dict[str, Any]:
    n = cfg.messages[g.size]
    run = Fanout(messages=n, expected=n * len(g.receivers), acks=cfg.acks)
    metrics_before = await gateway_metrics(session, g.base)
    cpu_server, cpu_self = cpu_seconds(server_pid), time.process_time()
    stop = asyncio.Event()
    run.started = time.perf_counter()
    bar = asyncio.create_task(progress(run, f"{g.size:>4} members", stop))
    readers = [asyncio.create_task(receive(session, g, r, run, stop)) for r in g.receivers]
    timed_out = False
    try:
        await asyncio.sleep(0.2)  # the readers' first long-polls are in place before the first send
        run.started = time.perf_counter()
        sender = asyncio.create_task(send_all(session, g, run, cfg.window))
        done, _ = await asyncio.wait([sender, *readers], timeout=cfg.timeout_s)
        timed_out = not sender.done() or not all(t.done() for t in readers)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        stop.set()
        for t in readers:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*readers, return_exceptions=True)
        if "sender" in locals() and not sender.done():
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        await bar
    cpu_server, cpu_self = cpu_seconds(server_pid) - cpu_server, time.process_time() - cpu_self
    metrics_after = await gateway_metrics(session, g.base)
    return fanout_entry(g, run, cfg, timed_out, metrics_before, metrics_after, cpu_server, cpu_self)


def fanout_entry(
    g: FanoutGroup,
    run: Fanout,
    cfg: Settings,
    timed_out: bool,
    before: dict[str, float],
    after: dict[str, float],
    cpu_server: float,
    cpu_self: float,
) -> dict[str, Any]:
    by_kind: dict[str, list[float]] = {"hosted": [], "device": []}
    last = run.started
    for r in g.receivers:
        for i, t in r.got.items():
            by_kind[r.kind].append((t - run.sent_at[i]) * 1000)
            last = max(last, t)
    every = by_kind["hosted"] + by_kind["device"]
    first = min(run.sent_at.values(), default=run.started)
    elapsed = last - first
    sends = [(run.acked_at[i] - run.sent_at[i]) * 1000 for i in run.acked_at]
    send_span = (max(run.acked_at.values()) - first) if run.acked_at else 0.0
    summary = latency_summary(every)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(after) | set(before))}
    return {
        "members": g.size,
        "deliveries_per_s": round(len(every) / elapsed, 2) if elapsed > 0 and every else 0.0,
        "p50_delivery_ms": summary["p50"],
        "p99_delivery_ms": summary["p99"],
        "fraction_of_library": None,  # filled in after the library run
        "hosted_receivers": sum(r.kind == "hosted" for r in g.receivers),
        "device_receivers": sum(r.kind == "device" for r in g.receivers),
        "messages": run.messages,
        "deliveries": len(every),
        "expected_deliveries": run.expected,
        "missing_deliveries": run.expected - len(every),
        "timed_out": timed_out,
        "send_errors": run.send_errors[:5],
        "send_error_count": len(run.send_errors),
        "wrong_or_repeated": sum(r.wrong for r in g.receivers),
        "elapsed_s": round(elapsed, 6),  # precise enough that deliveries / elapsed_s gives deliveries_per_s
        "send_span_s": round(send_span, 3),
        "sends_per_s": round(len(run.acked_at) / send_span, 2) if send_span > 0 else 0.0,
        "latency_ms": {
            "all": summary,
            "hosted": latency_summary(by_kind["hosted"]),
            "device": latency_summary(by_kind["device"]),
            "send_request": latency_summary(sends),
        },
        "reads": {
            "pages": sum(r.pages for r in g.receivers),
            "per_receiver_mean": round(statistics.fmean(r.pages for r in g.receivers), 1),
        },
        "cpu_s": {
            "server": round(cpu_server, 3),
            "bench_process": round(cpu_self, 3),
            "what": "CPU seconds over the fan-out: the gateway process, and this process (HTTP clients of "
            "every receiver and the devices' decrypts)",
        },
        "gateway_metrics": where_time_goes(delta),
        "window": cfg.window,
    }


# ---- the gateway's own counters ----------------------------------------------------------------------------

#: The metric families worth diffing around a fan-out (counters, and histograms' _sum / _count).
FAMILIES = (
    "mlsgw_delivery_latency_seconds",
    "mlsgw_deliveries",
    "mlsgw_mls_operation_duration_seconds",
    "mlsgw_hsm_operations",
    "mlsgw_state_cache_hits",
    "mlsgw_state_cache_misses",
    "mlsgw_http_request_duration_seconds",
    "mlsgw_log_appends",
)


async def gateway_metrics(session: Any, base: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in FAMILIES:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket") or s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = out.get(f"{s.name}{{{labels}}}", 0.0) + s.value
    return out


def where_time_goes(delta: dict[str, float]) -> dict[str, Any]:
    """The metric differences, grouped: histograms as {count, total_s, mean_ms}, counters as numbers."""
    hist: dict[str, dict[str, float]] = {}
    counters: dict[str, float] = {}
    for key, value in delta.items():
        if not value:
            continue
        name, _, labels = key.partition("{")
        labels = labels.rstrip("}")
        if name.endswith("_sum") or name.endswith("_count"):
            base = name.rsplit("_", 1)[0]
            entry = hist.setdefault(f"{base}{{{labels}}}", {})
            entry["total_s" if name.endswith("_sum") else "count"] = value
        else:
            counters[key] = round(value, 3)
    histograms = {}
    for key, entry in sorted(hist.items(), key=lambda kv: -kv[1].get("total_s", 0.0)):
        count, total = entry.get("count", 0.0), entry.get("total_s", 0.0)
        histograms[key] = {
            "count": int(count),
            "total_s": round(total, 4),
            "mean_ms": round(total / count * 1000, 3) if count else None,
        }
    return {"histograms": histograms, "counters": counters}


# ---- the server phase --------------------------------------------------------------------------------------


async def run_server_phase(cfg: Settings, server: Server, admin: str) -> dict[str, Any]:
    import aiohttp

    most = max(cfg.sizes)
    timeout = aiohttp.ClientTimeout(total=POLL_WAIT_S + 60)
    connector = aiohttp.TCPConnector(limit=2 * most + 32)
    results, setups, devices = [], [], {}
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        ready_s = await server.wait_ready(GatewayClient(server.base, session=session))
        base = server.base
        token = (await call(session, "POST", f"{base}/v1/tenants", admin, {"name": "fanout"}))["token"]
        for size in cfg.sizes:
            deadline = time.perf_counter() + cfg.timeout_s + 1.0 * size  # setup grows with the group
            g, phases = await make_group(session, base, token, size, cfg, deadline)
            print(
                f"setup: {size} members ({sum(r.kind == 'hosted' for r in g.receivers)} hosted receivers, "
                f"{sum(r.kind == 'device' for r in g.receivers)} devices) in {phases['total_s']:.1f} s "
                f"(joins {phases['joins_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
            entry = await run_fanout(session, g, cfg, server.proc.pid)
            entry["setup_s"] = {k: round(v, 2) for k, v in phases.items()}
            results.append(entry)
            setups.append(phases)
            devices[size] = sum(r.kind == "device" for r in g.receivers)
    return {"results": results, "ready_s": ready_s}


# ---- the library in-process --------------------------------------------------------------------------------


def library_run(store: Any, size: int, hosted_n: int, device_n: int, messages: int) -> dict[str, Any]:
    """Protect once at the sender, process at every receiver, ``messages`` times; keys as described."""
    from mls import ApplicationMessage, Client, CommitOptions, Credential, Group
    from mls.crypto.key_store import SoftwareKeyStore

    t0 = time.perf_counter()
    sender = Client(store, SUITE, Credential.basic(b"lib-bot-%d" % size))
    clients = [Client(store, SUITE, Credential.basic(b"lib-h%d" % i)) for i in range(hosted_n)] + [
        Client(SoftwareKeyStore(), SUITE, Credential.basic(b"lib-d%d" % i)) for i in range(device_n)
    ]
    kps = [c.key_package().key_package for c in clients]
    group = sender.create_group(b"bench-fanout-lib-%d" % size)
    staged = group.commit(CommitOptions(add=kps))
    group.merge_pending_commit()
    assert staged.welcome is not None
    # Join from the Welcome: hosted receivers and devices alike, up to LIBRARY_JOINS in all (spread over
    # both kinds); the others restore a joined member's state of their own kind.
    joiners = spread(hosted_n, device_n, LIBRARY_JOINS)
    joined: dict[int, Any] = {i: clients[i].join(staged.welcome) for i in joiners}
    receivers: list[Any] = []
    for i in range(len(clients)):
        if i in joined:
            receivers.append(joined[i])
        else:
            kind = [j for j in joiners if (j < hosted_n) == (i < hosted_n)] or joiners
            src = joined[kind[i % len(kind)]]
            receivers.append(Group.from_bytes(src.to_bytes(), src.key_store))
    setup_s = time.perf_counter() - t0

    rng = random.Random(9420 + size)
    latencies: list[float] = []
    protect_ms: list[float] = []
    start = time.perf_counter()
    for i in range(messages):
        data = plaintext(i, rng)
        t = time.perf_counter()
        wire = group.protect(data)
        protect_ms.append((time.perf_counter() - t) * 1000)
        for r in receivers:
            out = r.process(wire)
            if not isinstance(out, ApplicationMessage) or out.data != data:
                raise RuntimeError(f"library: wrong plaintext back at {size} members: {out!r}")
            latencies.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - start
    deliveries = messages * len(receivers)
    return {
        "deliveries_per_s": round(deliveries / elapsed, 2) if elapsed > 0 else 0.0,
        "deliveries": deliveries,
        "messages": messages,
        "elapsed_s": round(elapsed, 4),
        "setup_s": round(setup_s, 2),
        "receivers_joined": len(joined),
        "receivers_restored": len(receivers) - len(joined),
        "protect_ms": latency_summary(protect_ms),
        "delivery_ms": latency_summary(latencies),
    }


def spread(hosted_n: int, device_n: int, joins: int) -> list[int]:
    """Indexes of up to ``joins`` receivers, half hosted (indexes < hosted_n), half devices."""
    h = min(hosted_n, max(joins // 2, joins - device_n))
    d = min(device_n, joins - h)
    return list(range(h)) + list(range(hosted_n, hosted_n + d))


def run_library_phase(cfg: Settings, data_dir: Path) -> dict[str, Any]:
    from gateway.config import GatewayConfig
    from hsm import Pkcs11KeyStore, Token
    from hsm.bootstrap import find_softhsm_module

    backend = library_backend()
    os.environ["SOFTHSM2_CONF"] = str(data_dir / "softhsm" / "softhsm2.conf")
    token_cfg = GatewayConfig(data_dir=data_dir).token_config(find_softhsm_module())
    token = Token.open(token_cfg)
    out: dict[str, Any] = {"backend": backend, "sizes": {}}
    try:
        store = Pkcs11KeyStore(token)
        for size in cfg.sizes:
            hosted_n, device_n = split_members(size, cfg.device_share)
            got = library_run(store, size, hosted_n, device_n, cfg.messages[size])
            out["sizes"][size] = got
            print(
                f"library: {size} members, {got['deliveries']} deliveries at "
                f"{got['deliveries_per_s']:.0f} /s ({backend}; setup {got['setup_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        token.close()
    return out


# ---- report ------------------------------------------------------------------------------------------------


def build_report(cfg: Settings, phase: dict[str, Any], library: dict[str, Any]) -> dict[str, Any]:
    results = []
    for entry in phase["results"]:
        lib = library["sizes"][entry["members"]]
        rate = lib["deliveries_per_s"]
        entry["library_deliveries_per_s"] = rate
        entry["fraction_of_library"] = round(entry["deliveries_per_s"] / rate, 4) if rate > 0 else None
        entry["library"] = lib
        results.append(entry)
    return {
        "benchmark": "fanout",
        "quick": cfg.quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": (
            "one hosted sender; a delivery = one receiver having one message's plaintext: a hosted member "
            "from its inbox event (long-poll), a device from its mailbox (long-poll) + Group.process in the "
            "benchmark process; latency from the start of the send request"
        ),
        "sizes": list(cfg.sizes),
        "results": results,
        "config": {
            "messages": {str(k): v for k, v in cfg.messages.items()},
            "window": cfg.window,
            "device_share": cfg.device_share,
            "timeout_s": cfg.timeout_s,
            "cipher_suite": SUITE,
            "message_bytes": [16, 256],
            "poll_wait_s": POLL_WAIT_S,
            "page_limit": PAGE,
            "transport": "HTTP/1.1 over loopback (127.0.0.1)",
            "acks": (
                "each receiver acks every non-empty page"
                if cfg.acks
                else "none during the fan-out (--no-ack): the cursor alone moves the readers on"
            ),
        },
        "library": {
            "what": (
                "the same work in this process with no HTTP, database or sealing: one Group.protect at the "
                "sender per message, then Group.process at every receiver in turn, plaintext checked"
            ),
            "keys": (
                "sender and hosted receivers: signature and HPKE keys in the gateway's SoftHSM2 token "
                "(hsm.Pkcs11KeyStore, the gateway's token config); devices: software keys (as the "
                "benchmark's devices); a receiver's own private keys are not used to unprotect"
            ),
            "receivers": (
                f"up to {LIBRARY_JOINS} receivers join from the Welcome, the others are restored copies of a "
                "joined member of their kind (Group.from_bytes: own object, own secret tree)"
            ),
            "crypto_backend": library["backend"],
            "threads": 1,
        },
        "server_ready_s": round(phase["ready_s"], 2),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "crypto_backend": library["backend"],
            "note": "server, receivers' HTTP clients and devices' decrypts share this machine",
        },
    }


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def print_summary(report: dict[str, Any]) -> None:
    head = (
        "members",
        "hosted/dev",
        "msgs",
        "deliveries",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "hosted p50",
        "device p50",
        "library /s",
        "fraction",
    )
    rows = [head]
    for e in report["results"]:
        lat = e["latency_ms"]
        rows.append(
            (
                str(e["members"]),
                f"{e['hosted_receivers']}/{e['device_receivers']}",
                str(e["messages"]),
                f"{e['deliveries']}/{e['expected_deliveries']}",
                f"{e['deliveries_per_s']:.1f}",
                _ms(e["p50_delivery_ms"]),
                _ms(e["p99_delivery_ms"]),
                _ms(lat["hosted"]["p50"]),
                _ms(lat["device"]["p50"]),
                f"{e['library_deliveries_per_s']:.0f}",
                "n/a" if e["fraction_of_library"] is None else f"{e['fraction_of_library']:.4f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    line = "-" * (sum(widths) + 2 * len(widths))
    print(f"\nfan-out benchmark{' (quick)' if report['quick'] else ''}")
    print(line)
    for k, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            print(line)
    print(line)
    for e in report["results"]:
        if e["missing_deliveries"] or e["send_error_count"] or e["wrong_or_repeated"] or e["timed_out"]:
            print(
                f"{e['members']} members: missing {e['missing_deliveries']}, send errors "
                f"{e['send_error_count']}, wrong/repeated {e['wrong_or_repeated']}, "
                f"timed out {e['timed_out']}"
            )


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    results = report["results"]
    names = [str(e["members"]) for e in results]
    xs = list(range(len(results)))
    fig, (ax_r, ax_l, ax_f) = plt.subplots(1, 3, figsize=(16, 5.6))

    width = 0.38
    gw = [e["deliveries_per_s"] for e in results]
    lib = [e["library_deliveries_per_s"] for e in results]
    for offset, values, label, colour in (
        (-width / 2, gw, "gateway end to end", "#1f77b4"),
        (width / 2, lib, "library in-process", "#9e9e9e"),
    ):
        bars = ax_r.bar([x + offset for x in xs], values, width, label=label, color=colour)
        for bar, v in zip(bars, values, strict=True):
            ax_r.annotate(
                f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
            )
    ax_r.set_ylim(0, max([*gw, *lib, 1.0]) * 1.15)
    ax_r.set_xticks(xs, names)
    ax_r.set_xlabel("group members")
    ax_r.set_ylabel("deliveries (receiver-messages decrypted) / s")
    ax_r.set_title("Throughput")
    ax_r.legend(fontsize=8)

    width = 0.2
    for k, (key, label, colour) in enumerate(
        (
            ("hosted", "hosted p50", "#2ca02c"),
            ("hosted", "hosted p99", "#98df8a"),
            ("device", "device p50", "#ff7f0e"),
            ("device", "device p99", "#ffbb78"),
        )
    ):
        q = "p50" if "p50" in label else "p99"
        values = [e["latency_ms"][key][q] or 0.0 for e in results]
        bars = ax_l.bar([x + (k - 1.5) * width for x in xs], values, width, label=label, color=colour)
        for bar, v in zip(bars, values, strict=True):
            if not v:
                continue  # no receiver of that kind (2 members: the one receiver is hosted)
            ax_l.annotate(
                f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7
            )
    ax_l.set_yscale("log")
    ax_l.yaxis.set_major_formatter(plain)
    ax_l.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_l.set_xticks(xs, names)
    ax_l.set_xlabel("group members")
    ax_l.set_ylabel("send request start → plaintext at the receiver (ms, log)")
    ax_l.set_title("Delivery latency")
    ax_l.legend(fontsize=8)

    fractions = [e["fraction_of_library"] or 0.0 for e in results]
    bars = ax_f.bar(xs, fractions, 0.6, color="#1f77b4")
    for bar, v in zip(bars, fractions, strict=True):
        ax_f.annotate(
            f"{v:.1%}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
        )
    ax_f.set_xticks(xs, names)
    ax_f.set_ylim(0, max([*fractions, 0.01]) * 1.25)
    ax_f.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax_f.set_xlabel("group members")
    ax_f.set_ylabel("gateway deliveries/s ÷ library deliveries/s")
    ax_f.set_title("Fraction of the library")

    m = report["machine"]
    fig.suptitle(
        f"mls-gateway fan-out: one hosted sender, hosted members + devices (half each), suite 1, SoftHSM2, "
        f"window {report['config']['window']} ({m['cpus']} CPUs, {m['crypto_backend']})"
        f"{' — quick' if report['quick'] else ''}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main --------------------------------------------------------------------------------------------------


def run(cfg: Settings) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mlsgw-bench-fanout-"))
    try:
        data_dir = tmp / "data"
        t0 = time.perf_counter()
        admin = init_gateway(data_dir)
        print(
            f"init: data folder and SoftHSM2 token in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        server = Server(data_dir, tmp / "server.log")
        try:
            phase = asyncio.run(run_server_phase(cfg, server, admin))
        except BaseException:
            print(f"server log tail:\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            code = server.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"warning: the server exited with {code}:\n{server.log_tail()}", file=sys.stderr)
        library = run_library_phase(cfg, data_dir)
        report = build_report(cfg, phase, library)
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "fanout.json").write_text(json.dumps(report, indent=2) + "\n")
        chart(report, cfg.out / "fanout.png")
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benches.fanout", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="sizes 2, 10, 40 (< 60 s in all)")
    parser.add_argument("--sizes", help="group sizes, comma-separated (default 2,50,500; quick 2,10,40)")
    parser.add_argument("--messages", help="messages per size: one count, or one per size")
    parser.add_argument("--window", type=int, default=1, help="send requests in flight (default 1)")
    parser.add_argument(
        "--device-share", type=float, default=0.5, help="share of receivers that are devices (default 0.5)"
    )
    parser.add_argument(
        "--no-ack", action="store_true", help="receivers do not ack pages during the fan-out (cursor only)"
    )
    parser.add_argument("--timeout", type=float, help="seconds per size's fan-out (default 40 / 300)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for fanout.json and fanout.png")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error("--window must be at least 1")
    if not 0 <= args.device_share <= 1:
        parser.error("--device-share must be in [0, 1]")
    if args.timeout is not None and not 0 < args.timeout <= 3600:
        parser.error("--timeout must be in (0, 3600] seconds")
    try:
        cfg = settings_from(args)
    except ValueError as e:
        parser.error(str(e))
    started = time.perf_counter()
    report = run(cfg)
    print_summary(report)
    took = time.perf_counter() - started
    print(f"wrote {cfg.out / 'fanout.json'} and {cfg.out / 'fanout.png'} in {took:.1f} s")
    return report


if __name__ == "__main__":
    main()
