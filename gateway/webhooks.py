"""Webhooks of hosted identities (api-delivery.md, "Webhook for a hosted identity" and "Details … Webhooks"):
which URLs may be called, how a delivery is signed and verified, and when a failed one is retried.

**Addresses.** Only ``http`` and ``https`` URLs with a host and no user-info are taken. Unless the operator
allows private targets (``[delivery] webhook_allow_private``, ``MLSGW_WEBHOOK_ALLOW_PRIVATE=1``), a host
that is, or resolves to, an address that is not globally routable — loopback, private, link-local,
unspecified, multicast, shared, reserved, and IPv4 addresses embedded in IPv6 ones (mapped, 6to4, Teredo,
NAT64) — is refused: when the webhook is set (400 ``invalid_request``) and again at every delivery
(:class:`SafeResolver` checks the very addresses the HTTP client connects to, so a DNS answer that changes
between the check and the connection is caught too).

**Signatures.** Each delivery carries ``MLS-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<body>")>``. A receiver checks it with :func:`verify_signature`::

    from gateway.webhooks import SIGNATURE_HEADER, verify_signature

    ok = verify_signature(secret, request_body_bytes, request.headers[SIGNATURE_HEADER])

which compares in constant time and refuses a ``t`` more than ``tolerance_s`` (default 5 minutes) away from
the receiver's clock (a replayed old delivery). Receivers should still de-duplicate by ``cursor``
(delivery is at least once).

**Retries.** :class:`RetrySchedule`: the n-th consecutive failure waits about ``initial_s * 2**(n-1)``
seconds, at most ``max_s``, less a random part of up to :data:`JITTER` (so many webhooks failing together
do not retry in step); after ``give_up_after_s`` of failing the webhook is paused (events wait in the
inbox; a PUT of the webhook resumes it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import random
import socket
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from hsm.envelope import Envelope

#: The request header that carries the signature.
SIGNATURE_HEADER = "MLS-Gateway-Signature"
#: Seconds a receiver accepts between the signature's ``t`` and its own clock (either way).
DEFAULT_TOLERANCE_S = 300
#: The webhook secret: this many bytes of UTF-8 text, at least and at most.
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 16, 256
#: The longest URL taken.
MAX_URL_LENGTH = 2048
#: Seconds one delivery attempt may take (connect, send, answer) before it counts as failed.
ATTEMPT_TIMEOUT_S = 10.0
#: The first retry's delay, the longest delay, and how long a webhook fails before it is paused (seconds).
INITIAL_BACKOFF_S, MAX_BACKOFF_S, GIVE_UP_AFTER_S = 1.0, 300.0, 24 * 3600.0
#: The part of a delay that is random: a delay is ``base * (1 - JITTER * u)`` with ``u`` uniform in [0, 1).
JITTER = 0.2

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(Exception):
    """The webhook URL is not allowed (wrong scheme, no host, or a non-public address). The message names
    the rule, never the secret."""


# ---- addresses ------------------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether a webhook may connect to ``ip`` when private targets are not allowed: globally routable,
    not multicast, and (for IPv6) not site-local nor standing for a non-public IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and not is_public_address(inner):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not ip.is_multicast


def parse_url(url: str) -> SplitResult:
    """The URL's parts when it is an ``http(s)`` URL with a host and no user-info; :class:`UnsafeTarget`
    otherwise (api-delivery.md: "http(s) URLs only")."""
    if not url or len(url) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UnsafeTarget(f"url must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise UnsafeTarget("url is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeTarget("url must use http or https")
    if not parts.hostname:
        raise UnsafeTarget("url must name a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("url must not carry user information")
    return parts


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _check_address(ip: IPAddress) -> None:
    if not is_public_address(ip):
        raise UnsafeTarget("url's host is or resolves to a loopback, private or otherwise non-public address")


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (IPv4 and IPv6); :class:`UnsafeTarget` when it does not."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeTarget("url's host does not resolve") from None
    found = {_literal_address(str(info[4][0])) for info in infos}
    return [ip for ip in found if ip is not None]


async def check_target(url: str, allow_private: bool) -> SplitResult:
    """Check a webhook URL as api-delivery.md asks (scheme, and the addresses its host is or resolves to
    unless ``allow_private``); returns its parts, raises :class:`UnsafeTarget`."""
    parts = parse_url(url)
    if allow_private:
        return parts
    host = parts.hostname or ""
    literal = _literal_address(host)
    addresses = [literal] if literal is not None else await resolve_host(host, parts.port or 443)
    if not addresses:
        raise UnsafeTarget("url's host does not resolve")
    for ip in addresses:
        _check_address(ip)
    return parts


def check_delivery_target(url: str, allow_private: bool) -> SplitResult:
    """The check before each delivery: the URL's form and, for a literal address, the address itself (a
    name's addresses are checked by :class:`SafeResolver` as the HTTP client resolves it)."""
    parts = parse_url(url)
    literal = _literal_address(parts.hostname or "")
    if literal is not None and not allow_private:
        _check_address(literal)
    return parts


class SafeResolver(AbstractResolver):
    """The HTTP client's resolver for deliveries: refuses a name with any non-public address (unless
    ``allow_private``), so the addresses connected to are the ones checked (no DNS rebinding)."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                ip = _literal_address(result["host"])
                if ip is None or not is_public_address(ip):
                    raise OSError("webhook host resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


# ---- signatures ------------------------------------------------------------------------------------


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: str | bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(_as_bytes(secret), b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``MLS-Gateway-Signature`` value of ``body``: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
    "<t>.<body>")>`` (``timestamp`` defaults to now)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def _parse_signature(header: str) -> tuple[int, list[str]] | None:
    """``(t, [v1 values])`` of a header value; ``None`` when it has no single integer ``t``."""
    stamps: list[str] = []
    macs: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep and key == "t":
            stamps.append(value)
        elif sep and key == "v1":
            macs.append(value)
    if len(stamps) != 1 or not stamps[0].isascii() or not stamps[0].isdigit():
        return None
    return int(stamps[0]), macs


def verify_signature(
    secret: str | bytes,
    body: bytes,
    header: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (the ``MLS-Gateway-Signature`` value) signs exactly ``body`` with ``secret`` at a
    time within ``tolerance_s`` seconds of ``now`` (default: the clock). Any ``v1`` may match (a receiver
    rotating secrets calls this once per secret); comparison is constant-time."""
    parsed = _parse_signature(header)
    if parsed is None:
        return False
    t, macs = parsed
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = _mac(secret, t, body)
    return any(hmac.compare_digest(expected.encode(), m.encode("ascii", "replace")) for m in macs)


def check_secret(secret: str) -> bytes:
    """The secret's bytes when it is 16 to 256 bytes of UTF-8 text; ``ValueError`` otherwise."""
    try:
        raw = secret.encode()
    except UnicodeEncodeError:
        raise ValueError("secret must be valid Unicode text") from None
    if not SECRET_MIN_BYTES <= len(raw) <= SECRET_MAX_BYTES:
        raise ValueError(f"secret must be {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes of text")
    return raw


def _secret_aad(identity_id: str) -> bytes:
    return b"mls-gateway webhook secret|" + identity_id.encode()


def seal_secret(envelope: Envelope, identity_id: str, secret: bytes) -> bytes:
    """The secret as stored: sealed under the wrap-key envelope, bound to its identity (a row moved to
    another identity does not open)."""
    return envelope.seal(secret, _secret_aad(identity_id))


def open_secret(envelope: Envelope, identity_id: str, sealed: bytes) -> bytes:
    """The stored secret's bytes (the envelope's error when the row was tampered with or moved)."""
    return envelope.open(sealed, _secret_aad(identity_id))


# ---- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrySchedule:
    """When a failing webhook is retried, and when it is paused (api-delivery.md: "retries start near 1 s
    and double up to 5 minutes, with jitter, for 24 h"). Tests pass a shorter one."""

    initial_s: float = INITIAL_BACKOFF_S
    max_s: float = MAX_BACKOFF_S
    give_up_after_s: float = GIVE_UP_AFTER_S
    jitter: float = JITTER

    def base_delay(self, failures: int) -> float:
        """The delay after ``failures`` consecutive failures (1 for the first), before jitter."""
        exponent = min(max(failures, 1) - 1, 62)
        return float(min(self.max_s, self.initial_s * 2.0**exponent))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The delay with jitter: in ``(base * (1 - jitter), base]``."""
        u = (rng or random).random()
        return self.base_delay(failures) * (1.0 - self.jitter * u)

    def gives_up(self, failing_since: float, now: float) -> bool:
        """Whether a webhook failing since ``failing_since`` is to be paused at ``now``."""
        return now - failing_since >= self.give_up_after_s


__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "DEFAULT_TOLERANCE_S",
    "GIVE_UP_AFTER_S",
    "INITIAL_BACKOFF_S",
    "MAX_BACKOFF_S",
    "SIGNATURE_HEADER",
    "RetrySchedule",
    "SafeResolver",
    "UnsafeTarget",
    "check_delivery_target",
    "check_secret",
    "check_target",
    "is_public_address",
    "open_secret",
    "parse_url",
    "resolve_host",
    "seal_secret",
    "sign",
    "verify_signature",
]
