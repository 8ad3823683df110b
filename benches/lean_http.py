"""The load generator's HTTP client: one keep-alive HTTP/1.1 connection per simulated client, each request
written as bytes and its answer read with asyncio streams.

The generator shares the machine's cores with what it measures (two cores here: the gateways, PostgreSQL
and the generator), so what it spends is taken from the gateway's figures. The project's client
(:class:`gateway.client.GatewayClient`, over aiohttp's) costs about 0.7 ms of CPU per request; this one a
fraction of it. It speaks exactly the two calls of the load loop — ``send_message`` and ``process`` —
with the same arguments, answers and errors (:class:`gateway.client.GatewayError` with the problem
document, :class:`gateway.client.wire.GatewayConnectionError` when the connection fails), and is used only
for the load itself: setup and checks go through the project's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

from gateway.client import GatewayError
from gateway.client.wire import GatewayConnectionError, b64, group_path

#: The most bytes of an answer read (the load's answers are a few kB).
MAX_BODY = 16 << 20


class LeanGateway:
    """The load loop's calls to one gateway as one bearer token, over one connection of its own."""

    def __init__(self, base_url: str, token: str) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None or url.port is None:
            raise ValueError(f"an http://host:port address is needed, not {base_url!r}")
        self._host, self._port = url.hostname, url.port
        self._head = (
            f"Host: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\nContent-Type: application/json\r\n"
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send_message(self, identity_id: str, group_id: bytes, data: bytes) -> Any:
        """``POST …/messages``: ``{message}``."""
        return await self._post(group_path(identity_id, group_id, "/messages"), {"data": b64(data)})

    async def process(self, identity_id: str, group_id: bytes, message: str) -> Any:
        """``POST …/process`` of one MLSMessage (base64, as ``send_message`` answered it)."""
        return await self._post(group_path(identity_id, group_id, "/process"), {"message": message})

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _post(self, path: str, body: dict[str, str]) -> Any:
        data = json.dumps(body, separators=(",", ":")).encode()
        request = f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(data)}\r\n\r\n".encode() + data
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            assert self._reader is not None
            self._writer.write(request)
            status, payload, close = await _read_response(self._reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            await self.close()  # the next request opens a new connection
            raise GatewayConnectionError(f"POST {path}: {e!r}") from e
        if close:
            await self.close()
        answer = json.loads(payload) if payload else None
        if status >= 400:
            raise GatewayError(status, answer if isinstance(answer, dict) else {"detail": str(answer)})
        return answer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response: its status, its body and whether the server closes the connection after it
    (``ValueError`` for what is not an HTTP/1.1 response with a length or chunked body)."""
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP response: {status_line[:40]!r}")
    status = int(parts[1])
    length, chunked, close = 0, False, parts[0] == b"HTTP/1.0"
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if chunked:
        return status, await _read_chunked(reader), close
    if not 0 <= length <= MAX_BODY:
        raise ValueError(f"a body of {length} bytes")
    return status, await reader.readexactly(length), close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        if len(body) + size > MAX_BODY:
            raise ValueError("a chunked body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return bytes(body)


__all__ = ["LeanGateway"]
