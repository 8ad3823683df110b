"""The load generator's HTTP client (benches/lean_http.py): how it reads answers. Its requests are
exercised against the real server by tests/test_bench_load.py and tests/test_bench_scale.py (every
message's plaintext is checked there)."""

from __future__ import annotations

import asyncio

import pytest

from benches.lean_http import LeanGateway, _read_response


def read(raw: bytes) -> tuple[int, bytes, bool]:
    async def go() -> tuple[int, bytes, bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await _read_response(reader)

    return asyncio.run(go())


def test_a_response_with_a_length() -> None:
    raw = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}'
    assert read(raw) == (201, b'{"a": 1}', False)


def test_a_chunked_response_and_a_closing_server() -> None:
    raw = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b'4\r\n{"a"\r\n4;x=y\r\n: 1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    assert read(raw) == (503, b'{"a": 1}', True)


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Len",
    ],
)
def test_what_is_not_a_whole_response_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, asyncio.IncompleteReadError)):
        read(raw)


def test_only_an_http_address_is_taken() -> None:
    with pytest.raises(ValueError):
        LeanGateway("https://gw.example:8443", "t")
    with pytest.raises(ValueError):
        LeanGateway("http://gw.example", "t")
