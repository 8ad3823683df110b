"""The aiohttp application: middlewares (request id, auth, problem documents, metrics), routes, lifecycle.

:func:`create_app` builds an app around a :class:`~gateway.context.Runtime`; :func:`open_runtime` opens
the store, the token and the wrap key from a configuration. Shut-down closes the worker pool, drops the
envelope's in-memory data keys, closes the token sessions and the database, in that order. While it runs,
the app owns background tasks, each cancelled before the runtime closes: the retention task
(:mod:`gateway.retention`: mailbox items, idempotency and audit records, per tenant), the audit chain's
checkpoints (:mod:`gateway.audit_trail`, one more at shutdown), hosted delivery, webhooks, reconciliation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

from aiohttp import web

import native
from hsm.audit_key import create_audit_key
from hsm.envelope import Envelope
from hsm.keystore import Pkcs11KeyStore
from hsm.token import Token
from hsm.wrapped_keys import WrappedKeys
from mls import CryptoBackend, PythonBackend, get_backend, use_crypto_backend

from .api import ROUTES, Route, make_request_id
from .api_mailboxes import close_sockets
from .audit_trail import audit_checkpoints
from .auth import bearer_token
from .config import GatewayConfig
from .context import APP, PRINCIPAL, REQUEST_ID, ROUTE_LABEL, Runtime
from .errors import PROBLEM_CONTENT_TYPE, Problem, problem_from_exception
from .hosted_worker import hosted_delivery_task
from .kek_rotation import KekMetrics, KekRotation, kek_rotation_task
from .leases import lease_keeper
from .logs import request_context, valid_request_id
from .metrics import Metrics
from .notifications import notification_listener
from .quotas import Quotas
from .readiness import readiness_gauge_task
from .reconciliation import key_reconciliation
from .request_limits import UNREAD_BODY_CODES, TenantScheduler, refuse_encoded_body, server_settings
from .retention import retention_task
from .sealed_keys import SealedKeyPersistence, WrappedKeyRows
from .service import GatewayService
from .state_cache import StateCache
from .store import StoreFault, StoreUnavailable
from .store_factory import open_store
from .webhook_delivery import webhook_delivery

log = logging.getLogger("mls_gateway")

#: The status of a request whose client hung up before its answer (nginx's 499; never sent).
CLIENT_CLOSED = 499

_ROUTE_BY_KEY = {(r.method, r.path): r for r in ROUTES}


def problem_response(problem: Problem, request_id: str) -> web.Response:
    headers = {"X-Request-Id": request_id}
    if problem.retry_after is not None:
        headers["Retry-After"] = str(problem.retry_after)
    return web.Response(
        status=problem.status,
        body=json.dumps(problem.document(request_id)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _route_of(request: web.Request) -> Route | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return _ROUTE_BY_KEY.get((request.method, resource.canonical))


def _as_problem(exc: BaseException) -> Problem:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return Problem("payload_too_large", "the request body is over the configured limit")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return Problem("method_not_allowed", "this method is not allowed on this path")
    if isinstance(exc, web.HTTPNotFound):
        return Problem("not_found", "no such path")
    if isinstance(exc, StoreFault):  # retrying will not help: a defect, logged with the request id
        return Problem("internal_error", "internal error (see the server log for this request id)")
    if isinstance(exc, StoreUnavailable):
        return Problem("store_unavailable", "the store is unavailable; retry later", retry_after=5)
    if isinstance(exc, web.HTTPException):
        return Problem("invalid_request", exc.reason)
    return problem_from_exception(exc)


async def _authenticate(request: web.Request, route: Route) -> None:
    if route.auth == "none":
        return
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise Problem("unauthorized", "missing bearer token")
    rt = request.app[APP]
    # A token check never waits for a worker: on SQLite the loop runs its one local SELECT itself (a hop
    # to a thread and back cost more than the statement); else its own small pool runs it.
    if rt.store.lookup_is_local:
        principal = rt.service.authenticate(token)
    else:
        principal = await asyncio.get_running_loop().run_in_executor(
            rt.control_executor, rt.service.authenticate, token
        )
    if principal is None:
        raise Problem("unauthorized", "unknown or revoked token")
    if route.auth == "tenant_or_admin":  # a tenant's own settings: its token or the admin's
        refused = principal.is_client
    else:
        refused = (route.auth == "admin") != principal.is_admin or (
            route.auth == "tenant" and principal.is_client
        )
    if refused:
        # A token on a route not for its kind learns nothing: the resource "does not exist". Client
        # (device) tokens reach only the "endpoint" routes of api-delivery.md.
        raise Problem("not_found", "no such resource")
    request[PRINCIPAL] = principal


@web.middleware
async def gateway_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # A well-formed incoming X-Request-Id is honoured (and echoed); any other is replaced (gateway.logs).
    request_id = valid_request_id(request.headers.get("X-Request-Id")) or make_request_id()
    request[REQUEST_ID] = request_id
    route = _route_of(request)
    label = route.path if route else "unmatched"
    request[ROUTE_LABEL] = label
    started = time.perf_counter()
    with request_context(request_id):
        try:
            refuse_encoded_body(request)  # before authentication: costs nothing, reads no body
            if route is not None:
                await _authenticate(request, route)
            response = await handler(request)
            response.headers["X-Request-Id"] = request_id
        except Exception as exc:  # every failure becomes a problem document
            if isinstance(exc, ConnectionResetError) and _hung_up(request):
                response = _client_gone(request, label)  # nobody to answer; not a failure of ours
            else:
                response = _failure_response(request, exc, request_id)
    metrics = request.app[APP].metrics
    metrics.http_requests.labels(label, request.method, str(response.status)).inc()
    metrics.http_latency.labels(label, request.method).observe(time.perf_counter() - started)
    return response


def _failure_response(request: web.Request, exc: Exception, request_id: str) -> web.Response:
    """The problem document of a failed request (logged when it is ours; counted when a limit refused it)."""
    problem = _as_problem(exc)
    metrics = request.app[APP].metrics
    if problem.code == "internal_error":
        log.exception("request %s failed", request_id)
    elif problem.code == "hsm_unavailable":
        metrics.hsm_errors.labels("unavailable").inc()
    response = problem_response(problem, request_id)
    if problem.code in UNREAD_BODY_CODES:
        response.force_close()  # the rest of the body is not waited for
    if problem.status in (408, 413, 415, 429):
        metrics.refused.labels(problem.code).inc()
    return response


def _hung_up(request: web.Request) -> bool:
    """Whether the client's connection is gone (a reset raised while it is open is not the client's)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _client_gone(request: web.Request, label: str) -> web.Response:
    """One line, no traceback, a count of its own; the request is counted as ``status="499"`` (nginx's
    "client closed request"), never as a 5xx. The answer is for nobody: aiohttp drops it unsent."""
    request.app[APP].metrics.client_disconnects.labels(label).inc()
    log.info(
        "client closed the connection before the response (%s %s)",
        request.method,
        label,
        extra={"event": "client_disconnect", "route": label},
    )
    return web.Response(status=CLIENT_CLOSED)


def gateway_crypto_backend(choice: str | None = None) -> CryptoBackend:
    """The crypto backend the gateway runs on: native when built; ``choice`` or ``$MLS_CRYPTO_BACKEND``
    (``auto|python|native``) overrides, and ``native`` fails loudly when it is not built."""
    return native.choose_backend(choice, PythonBackend())


def create_app(runtime: Runtime) -> web.Application:
    use_crypto_backend(gateway_crypto_backend())
    cfg = runtime.config
    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=cfg.max_body_bytes,
        handler_args=server_settings(cfg.header_timeout_s),
    )
    app[APP] = runtime
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.on_startup.append(_log_startup)
    app.on_shutdown.append(_log_shutdown)
    app.on_shutdown.append(close_sockets)  # open mailbox/inbox WebSockets: 1001, not the shutdown timeout
    # cleanup_ctx clean-ups run in reverse order, all before on_cleanup's _close_runtime: the audit
    # checkpoint task is first, so its last checkpoint at shutdown follows every other task's writes.
    app.cleanup_ctx.append(lease_keeper)  # first: its clean-up (releasing the leases) runs last
    app.cleanup_ctx.append(audit_checkpoints)
    app.cleanup_ctx.append(retention_task)  # mailbox items, idempotency and audit records, per tenant
    app.cleanup_ctx.append(hosted_delivery_task)
    app.cleanup_ctx.append(webhook_delivery)  # signed webhooks of hosted identities (api-delivery.md)
    app.cleanup_ctx.append(key_reconciliation)  # orphaned keys: at start-up, then periodically
    app.cleanup_ctx.append(kek_rotation_task)  # current KEKs, re-wrap and destruction after a rotation
    app.cleanup_ctx.append(notification_listener)  # other processes' commits wake this one's waiters
    app.cleanup_ctx.append(readiness_gauge_task)  # mlsgw_ready kept current between /readyz calls
    app.on_cleanup.append(_close_runtime)
    return app


def gateway_version() -> str:
    try:
        return metadata.version("mls-gateway")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


async def _log_startup(app: web.Application) -> None:
    """The start-up line: version, listen address, crypto backend, HSM token and what it holds."""
    rt = app[APP]
    cfg = rt.config
    fields = {
        "event": "startup",
        "version": gateway_version(),
        "listen": f"{cfg.listen_host}:{cfg.listen_port}",
        "crypto_backend": get_backend().name,
        "token_label": cfg.hsm.token_label,
        "token_state": rt.token.state,
        "custody": rt.token.capabilities.describe() if rt.token.state == "up" else None,
        "wrapped_custody": rt.wrapped_custody,
    }
    log.info(
        "mls-gateway %s starting on %s (crypto backend %s, HSM token %r)",
        fields["version"],
        fields["listen"],
        fields["crypto_backend"],
        cfg.hsm.token_label,
        extra=fields,
    )


async def _log_shutdown(app: web.Application) -> None:
    log.info("mls-gateway shutting down", extra={"event": "shutdown"})


async def _close_runtime(app: web.Application) -> None:
    close_runtime(app[APP])
    log.info("mls-gateway stopped", extra={"event": "stopped"})


def open_runtime(config: GatewayConfig, module_path: str) -> Runtime:
    """Open the store, the token (login, session pool), the wrap key and the key store."""
    store = open_store(config)
    token = Token.open(config.token_config(module_path))
    create_audit_key(token)  # signs the audit chain's checkpoints (gateway.audit_trail)
    hsm = config.hsm
    envelope = Envelope(token, max_seals=hsm.data_key_max_seals, max_age_s=hsm.data_key_max_age_s)
    wrapped = WrappedKeys(token, WrappedKeyRows(store), cache_size=hsm.wrapped_handle_cache)
    metrics = Metrics()
    rotation = KekRotation(
        store,
        token,
        envelope,
        wrapped,
        batch=hsm.kek_rewrap_batch,
        grace_s=hsm.kek_retire_grace_s,
        metrics=KekMetrics(metrics.registry),
    )
    rotation.bootstrap()  # the current KEKs of the keks table (made in the token if missing), in use
    wrapped_custody = wrapped.probe()  # what the token can wrap: said once, in the start-up line
    keys = Pkcs11KeyStore(token, persistence=SealedKeyPersistence(store, envelope), wrapped=wrapped)
    service = GatewayService(store, keys, envelope, on_key_use=metrics.key_use)
    service.persistence.retention_s = config.idempotency_retention_s
    service.group_log.past_epochs = config.delivery.past_epochs
    service.groups.defaults = config.delivery
    service.delivery_metrics = metrics.delivery
    service.hosted.on_delivered = lambda ok, latency: metrics.delivery.delivered("hosted", ok, latency)
    service.identities.quotas = Quotas(
        config.quota_identities, config.quota_groups_per_identity, config.quota_key_packages_per_identity
    )
    service.identities.sessions.cache = StateCache(config.state_cache_bytes, metrics.state_cache_lookup)
    service.identities.sessions.full_state_every = config.full_state_every
    executor = ThreadPoolExecutor(max_workers=config.worker_pool_threads, thread_name_prefix="mlsgw")
    runtime = Runtime(config, store, token, keys, envelope, service, metrics, executor)
    runtime.wrapped_custody = wrapped_custody
    runtime.kek_rotation = rotation
    runtime.control_executor = ThreadPoolExecutor(config.auth_threads, thread_name_prefix="mlsgw-auth")
    if 1 < config.worker_pool_threads <= config.tenant_concurrency:
        log.warning(
            "tenant_max_concurrency %d is not below the %d worker threads: one tenant's flood can hold "
            "them all, and another tenant's request waits for one to free",
            config.tenant_concurrency,
            config.worker_pool_threads,
        )
    runtime.scheduler = TenantScheduler(
        config.worker_pool_threads, config.tenant_concurrency, config.tenant_max_waiting
    )
    return runtime


def close_runtime(rt: Runtime) -> None:
    rt.control_executor.shutdown(wait=True, cancel_futures=True)
    rt.probe_executor.shutdown(wait=True, cancel_futures=True)
    rt.background_executor.shutdown(wait=True, cancel_futures=True)
    rt.executor.shutdown(wait=True, cancel_futures=True)
    rt.envelope.close()  # drop the data keys held in memory
    rt.token.close()
    rt.store.close()
