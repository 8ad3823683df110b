"""Webhook building blocks (api-delivery.md, "Details … Webhooks"): the signature (a known answer computed
with OpenSSL, verification of tampered bodies, old and future timestamps, malformed headers), the address
policy (schemes, loopback/private/link-local/multicast literals in IPv4 and IPv6, IPv4 embedded in IPv6,
names that resolve to loopback, checked again by the delivery client's resolver), the secret's bounds and
the retry schedule (bounds, doubling, cap, jitter, give-up)."""

from __future__ import annotations

import asyncio
import ipaddress
import random

import pytest

from gateway.webhooks import (
    GIVE_UP_AFTER_S,
    INITIAL_BACKOFF_S,
    MAX_BACKOFF_S,
    RetrySchedule,
    SafeResolver,
    UnsafeTarget,
    check_delivery_target,
    check_secret,
    check_target,
    is_public_address,
    parse_url,
    sign,
    verify_signature,
)

SECRET = "whsec_0123456789abcdef"
BODY = b'{"cursor":"1","seq":1}'
T = 1700000000
#: ``printf '%s' '1700000000.{"cursor":"1","seq":1}' | openssl dgst -sha256 -hmac whsec_0123456789abcdef``
KNOWN_MAC = "2a91be05fb83a2a1265cea8e64d76c495cdc19b296761c179ffef950de4cd331"


# ---- signatures --------------------------------------------------------------------------------------------


def test_signature_known_answer() -> None:
    assert sign(SECRET, BODY, T) == f"t={T},v1={KNOWN_MAC}"
    assert sign(SECRET.encode(), BODY, T) == f"t={T},v1={KNOWN_MAC}"


def test_verification_accepts_the_signature_within_the_tolerance() -> None:
    header = sign(SECRET, BODY, T)
    assert verify_signature(SECRET, BODY, header, now=T)
    assert verify_signature(SECRET.encode(), BODY, header, now=T + 299)
    assert verify_signature(SECRET, BODY, header, now=T - 299)  # a receiver's clock a little behind
    assert verify_signature(SECRET, BODY, sign(SECRET, BODY))  # now, by the clock
    # Several v1 values (a sender rotating secrets): any may match; spaces after commas are tolerated.
    assert verify_signature(SECRET, BODY, f"t={T}, v1={'0' * 64}, v1={KNOWN_MAC}", now=T)


def test_verification_refuses_tampering_and_replays() -> None:
    header = sign(SECRET, BODY, T)
    assert not verify_signature(SECRET, BODY + b" ", header, now=T)
    assert not verify_signature(SECRET, BODY.replace(b'"1"', b'"2"'), header, now=T)
    assert not verify_signature("whsec_0123456789abcdeF", BODY, header, now=T)
    assert not verify_signature(SECRET, BODY, header, now=T + 301)  # an old delivery replayed
    assert not verify_signature(SECRET, BODY, header, now=T - 301)  # from the future
    assert not verify_signature(SECRET, BODY, header, now=T + 61, tolerance_s=60)
    # Another t with the same MAC: the MAC covers t.
    assert not verify_signature(SECRET, BODY, f"t={T + 1},v1={KNOWN_MAC}", now=T)


@pytest.mark.parametrize(
    "header",
    [
        "",
        f"v1={KNOWN_MAC}",
        f"t={T}",
        f"t=,v1={KNOWN_MAC}",
        f"t=-{T},v1={KNOWN_MAC}",
        f"t={T}.5,v1={KNOWN_MAC}",
        f"t={T},t={T},v1={KNOWN_MAC}",
        f"t={T},v1={KNOWN_MAC.upper()}",
        f"t={T},v0={KNOWN_MAC}",
        f"t={T},v1={KNOWN_MAC[:-2]}",
        f"t={T},v1={KNOWN_MAC}é",
        f"t=１７,v1={KNOWN_MAC}",
    ],
)
def test_malformed_signature_headers_are_refused(header: str) -> None:
    assert not verify_signature(SECRET, BODY, header, now=T)


def test_secret_bounds() -> None:
    assert check_secret("x" * 16) == b"x" * 16
    assert check_secret("é" * 128) == "é".encode() * 128  # 256 bytes
    for bad in ("x" * 15, "é" * 129, "x" * 257, "", "\ud800" * 20):
        with pytest.raises(ValueError) as info:
            check_secret(bad)
        assert bad not in str(info.value) or not bad


# ---- the address policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "example.com/hook",
        "http:///hook",
        "https://user:pw@example.com/hook",
        "https://user@example.com/hook",
        "https://example.com:99999/hook",
        "https://example.com/ho ok",
        "https://example.com/\nhook",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_urls_that_are_not_plain_http_are_refused(url: str) -> None:
    with pytest.raises(UnsafeTarget):
        parse_url(url)
    with pytest.raises(UnsafeTarget):
        asyncio.run(check_target(url, allow_private=True))


NON_PUBLIC = [
    "127.0.0.1",
    "127.255.0.7",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "100.64.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",
    "2002:7f00:1::1",
    "2002:c0a8:101::1",
]
PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_refused_unless_allowed(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    url = f"https://{host}:8443/hook"
    with pytest.raises(UnsafeTarget) as info:
        asyncio.run(check_target(url, allow_private=False))
    assert "secret" not in str(info.value)
    with pytest.raises(UnsafeTarget):
        check_delivery_target(url, allow_private=False)
    asyncio.run(check_target(url, allow_private=True))
    check_delivery_target(url, allow_private=True)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_taken(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    parts = asyncio.run(check_target(f"http://{host}/hook?x=1", allow_private=False))
    assert parts.scheme == "http"
    check_delivery_target(f"http://{host}/hook", allow_private=False)


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "localhost."])
def test_names_that_resolve_to_loopback_are_refused(name: str) -> None:
    with pytest.raises(UnsafeTarget):
        asyncio.run(check_target(f"http://{name}:8080/hook", allow_private=False))
    asyncio.run(check_target(f"http://{name}:8080/hook", allow_private=True))


def test_the_delivery_resolver_refuses_names_of_non_public_addresses() -> None:
    async def resolve(allow_private: bool) -> list[str]:
        resolver = SafeResolver(allow_private)
        try:
            return [r["host"] for r in await resolver.resolve("localhost", 80)]
        finally:
            await resolver.close()

    with pytest.raises(OSError):
        asyncio.run(resolve(False))
    assert "127.0.0.1" in asyncio.run(resolve(True))


# ---- the retry schedule ------------------------------------------------------------------------------------


def test_the_default_schedule_is_the_documented_one() -> None:
    assert (INITIAL_BACKOFF_S, MAX_BACKOFF_S, GIVE_UP_AFTER_S) == (1.0, 300.0, 86400.0)
    s = RetrySchedule()
    assert [s.base_delay(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert s.base_delay(0) == 1 and s.base_delay(10_000) == 300


def test_delays_have_jitter_within_bounds() -> None:
    s = RetrySchedule()
    rng = random.Random(7)
    for failures in range(1, 40):
        base = s.base_delay(failures)
        delays = [s.delay(failures, rng) for _ in range(200)]
        assert all(base * (1 - s.jitter) < d <= base for d in delays), failures
        assert max(delays) - min(delays) > base * s.jitter / 2  # really spread
        assert max(delays) <= MAX_BACKOFF_S
    first = [s.delay(1) for _ in range(50)]
    assert min(first) > 0.8 and max(first) <= 1.0 and len(set(first)) > 1


def test_giving_up_after_the_window() -> None:
    s = RetrySchedule(initial_s=0.01, max_s=0.1, give_up_after_s=5.0)
    assert not s.gives_up(failing_since=100.0, now=104.9)
    assert s.gives_up(failing_since=100.0, now=105.0)
    assert RetrySchedule().gives_up(0.0, 86400.0) and not RetrySchedule().gives_up(0.0, 86399.0)
