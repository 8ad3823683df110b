"""Route calls by URL, for the benchmarks that drive a gateway's routes one by one (:mod:`benches.fanout`,
:mod:`benches.large_group_load`): each call goes through the shipped client's transport
(:class:`gateway.client.GatewayClient` on the benchmark's shared ``aiohttp`` session), so it sends what
the contract asks (``Content-Type: application/json``, canonical base64) and a failure answer raises the
client's :class:`gateway.client.GatewayError` (``status``, ``code``, ``detail``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.client import GatewayClient, GatewayError, b64, gid_segment

#: A failure answer of the gateway (the shipped client's error).
HttpError = GatewayError


def b64url(data: bytes) -> str:
    """A group id as a path segment (base64url without padding, docs/api.md)."""
    return gid_segment(data)


async def call(session: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None) -> Any:
    """``method url`` as ``token``, ``body`` as JSON: the answer's body, or :class:`HttpError`."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    client = GatewayClient(base, token, session=session, timeout=120.0)
    return await client.call(method, path, body)


def failure(detail: str) -> HttpError:
    """An error the benchmark raises itself (an answer that is not what it should be)."""
    return GatewayError(200, {"code": "unexpected_answer", "detail": detail})


__all__ = ["HttpError", "b64", "b64url", "call", "failure"]
