"""Serving the app: aiohttp's server, with its own HTTP-level refusals as problem documents too.

Requests aiohttp's parser refuses (a request line or header over 8190 bytes, more than 128 headers,
malformed HTTP, a bad method) never reach the app's middleware; aiohttp answers them itself, in
``text/plain``, echoing part of the request. :class:`ProblemRequestHandler` answers them as every other
failure, a problem document (``application/problem+json``, 400 ``invalid_request``) whose detail names
the kind of error and never echoes the request (which may hold a token); it logs one line, no
traceback. :func:`serve` runs the app as ``web.run_app`` does (signals, graceful shut-down) on a runner
whose server makes these handlers.

aiohttp has no public hook for its connection handler's class: :class:`ProblemServer` overrides
``Server.__call__`` (the protocol factory) and :class:`ProblemAppRunner` the runner's server factory;
tests/gateway/test_abuse.py pins the behaviour, so an aiohttp upgrade that changes these fails there.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_exceptions import HTTPException
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import GracefulExit

from .connection_handoff import HandedSite
from .errors import PROBLEM_CONTENT_TYPE, Problem

log = logging.getLogger("mls_gateway")


def parser_problem(exc: BaseException | None) -> Problem:
    """The problem of a request aiohttp's parser refused (its detail never quotes the request)."""
    if isinstance(exc, LineTooLong):
        detail = "the request line or a header is too long"
    elif isinstance(exc, BadStatusLine):
        detail = "the request line is not valid HTTP/1.1"
    else:
        detail = "the request is not valid HTTP/1.1 (headers or framing)"
    return Problem("invalid_request", detail)


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its parser's refusals as problem documents."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError | HTTPException | None):
            return super().handle_error(request, status, exc, message)
        problem, request_id = parser_problem(exc), uuid.uuid4().hex
        log.info(
            "malformed HTTP request refused (%s)",
            type(exc).__name__,
            extra={"event": "bad_http", "error": type(exc).__name__, "request_id": request_id},
        )
        response = web.Response(
            status=problem.status,
            body=json.dumps(problem.document(request_id)),
            content_type=PROBLEM_CONTENT_TYPE,
            headers={"X-Request-Id": request_id},
        )
        response.force_close()
        return response


class ProblemServer(web.Server):
    """aiohttp's low-level server, making :class:`ProblemRequestHandler` connection handlers."""

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`ProblemServer` (same handler, factory, settings)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server._kwargs,
        )


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    on_listening: Callable[[], None] | None,
    channel: socket.socket | None,
    **settings: Any,
) -> None:
    runner = ProblemAppRunner(app, handle_signals=True, **settings)
    await runner.setup()
    try:
        site: web.BaseSite
        if channel is None:
            site = web.TCPSite(runner, host, port)
        else:
            site = HandedSite(runner, channel, f"http://{host}:{port}")
        await site.start()
        if on_listening is not None:
            on_listening()
        await asyncio.Event().wait()  # until SIGINT/SIGTERM raises GracefulExit
    finally:
        await _bounded_cleanup(runner)


#: Seconds the graceful shutdown (in-flight requests, then the app's clean-up) may take before the process
#: stops anyway: every commit is durable before it is answered, leases lapse by themselves.
CLEANUP_BOUND_S = 20.0


async def _bounded_cleanup(runner: web.BaseRunner) -> None:
    """``runner.cleanup()``, given up after :data:`CLEANUP_BOUND_S` with an error naming every asyncio task
    still pending and where it waits (a clean-up that awaits something that never comes must not keep the
    process alive: seen once in a while right after start)."""
    try:
        await asyncio.wait_for(runner.cleanup(), CLEANUP_BOUND_S)
    except TimeoutError:
        log.error("shutdown did not finish within %g s; stopping anyway. Pending tasks:", CLEANUP_BOUND_S)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                buffer = io.StringIO()
                task.print_stack(limit=8, file=buffer)
                log.error("%s", buffer.getvalue().rstrip())


def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    on_listening: Callable[[], None] | None = None,
    channel: socket.socket | None = None,
    **settings: Any,
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT or SIGTERM, then shut it down gracefully (as
    ``web.run_app``: its shut-down and clean-up hooks run; remaining tasks are cancelled).
    ``on_listening`` is called once the socket listens (readiness, systemd's READY=1). ``channel``: a
    worker's channel its supervisor hands connections over instead (:mod:`gateway.connection_handoff`)."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(_serve(app, host, port, on_listening, channel, **settings))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        remaining = asyncio.all_tasks(loop)
        for task in remaining:
            task.cancel()
        if remaining:  # a task that ignores its cancellation must not keep the process alive either
            loop.run_until_complete(asyncio.wait(remaining, timeout=5.0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
