"""HTTP routes of a group's log (api-delivery.md "A group's log"): commit bundles, messages, the group's
state and its latest GroupInfo. Submissions to one group are serialised in the process (its log lock);
across processes the log's compare-and-swap decides."""

from __future__ import annotations

from aiohttp import web

from . import parsing as rq
from .dispatch import Route, log_lock, principal, read_body, respond, service


async def submit_bundle(request: web.Request) -> web.Response:
    body = await read_body(request)
    parts = (
        body.b64("commit"),
        body.b64("group_info"),
        body.optional_b64("ratchet_tree"),
        body.optional_b64("welcome"),
    )
    group_id = rq.group_id_from_path(request.match_info["gid"])
    p, ops = principal(request), service(request).log_operations
    return await respond(
        request,
        lambda scope: ops.submit_bundle(p, group_id, parts, scope),
        idempotent=True,
        metric="submit_commit_bundle",
        lock=log_lock(p, group_id),
    )


async def submit_message(request: web.Request) -> web.Response:
    body = await read_body(request)
    message = body.b64("message")
    group_id = rq.group_id_from_path(request.match_info["gid"])
    p, ops = principal(request), service(request).log_operations
    return await respond(
        request,
        lambda scope: ops.submit_message(p, group_id, message, scope),
        idempotent=True,
        metric="submit_message",
        lock=log_lock(p, group_id),
    )


async def show_group(request: web.Request) -> web.Response:
    group_id = rq.group_id_from_path(request.match_info["gid"])
    p, ops = principal(request), service(request).log_operations
    return await respond(request, lambda scope: ops.show(p, group_id))


async def group_info(request: web.Request) -> web.Response:
    group_id = rq.group_id_from_path(request.match_info["gid"])
    p, ops = principal(request), service(request).log_operations
    return await respond(request, lambda scope: ops.group_info(p, group_id))


LOG_ROUTES: list[Route] = [
    Route(
        "POST",
        "/v1/groups/{gid}/commit-bundles",
        submit_bundle,
        "endpoint",
        "Submit a commit bundle to the group's log (one accepted commit per epoch)",
        True,
    ),
    Route(
        "POST",
        "/v1/groups/{gid}/messages",
        submit_message,
        "endpoint",
        "Submit a proposal or application message to the group's log",
        True,
    ),
    Route("GET", "/v1/groups/{gid}", show_group, "endpoint", "The group's log: epoch, seq, members"),
    Route(
        "GET", "/v1/groups/{gid}/group-info", group_info, "endpoint", "The latest accepted GroupInfo and tree"
    ),
]

__all__ = ["LOG_ROUTES"]
