"""A ``POST …/groups/join`` of a Welcome from the log, raced by the hosted-delivery worker (issue 13's
one-pass delivery, found by review): while the join is in flight, another member sends a message and the
worker — seeing no membership yet — records a ``welcome`` event and clears the joiner's work mark up to
that message. The join must still apply the message: after joining, delivery looks once more."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

from gateway.group_session import GroupSession
from gateway.operation_requests import GroupSettings
from gateway.store import Identity

from ..gateway_fuzz.harness import Gateway, b64url
from .test_transactions_per_message import _stop_hosted_worker


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_message_sent_while_a_member_joins_reaches_it(in_process: Gateway) -> None:
    gw = in_process
    hosted = gw.runtime.service.hosted
    erin, gid, first, welcome = _carol_adds_erin(gw)

    real_joiner = hosted.joiner
    assert real_joiner is not None
    raced: list[int] = []

    def joiner(
        identity: Identity,
        welcome_bytes: bytes,
        tree: bytes | None,
        psks: Sequence[tuple[bytes, bytes]],
        settings: GroupSettings | None,
    ) -> GroupSession:
        session = real_joiner(identity, welcome_bytes, tree, psks, settings)
        if not raced:  # once, in the middle of the join: a message, then the worker's delivery
            body = json.dumps({"data": _b64(b"sent while erin joins")}).encode()
            headers = {**gw.headers(), "Content-Type": "application/json"}
            sent = asyncio.run_coroutine_threadsafe(
                gw._request("POST", first + "/messages", body, headers, False), gw.loop
            ).result(timeout=60)
            raced.append(sent.status)
            hosted.advance_by_id(gw.world.tenant_id, erin, gid)
        return session

    hosted.joiner = joiner
    try:
        gw.ok("POST", f"/v1/identities/{erin}/groups/join", {"welcome": welcome}, expect=201)
    finally:
        hosted.joiner = real_joiner
    assert raced == [200]
    events = gw.ok("GET", f"/v1/identities/{erin}/inbox")["events"]
    data = [base64.b64decode(e["data"]) for e in events if e["kind"] == "application"]
    assert data == [b"sent while erin joins"], [e["kind"] for e in events]
    assert hosted.settled(_identity(gw, erin), gid)


def _identity(gw: Gateway, identity_id: str) -> Any:
    with gw.runtime.store.read_transaction() as tx:
        return tx.get_identity(gw.world.tenant_id, identity_id)


def test_a_member_that_does_not_join_by_itself_gets_one_welcome_event(in_process: Gateway) -> None:
    """An identity with ``auto_join`` off, added by a commit, gets one ``welcome`` event however often
    delivery looks at the group again before it joins (messages appended after the Welcome mark it)."""
    gw = in_process
    hosted = gw.runtime.service.hosted
    erin, gid, first, _ = _carol_adds_erin(gw)
    for text in (b"one", b"two"):
        gw.ok("POST", first + "/messages", {"data": _b64(text)})
        hosted.advance_by_id(gw.world.tenant_id, erin, gid)
    kinds = [e["kind"] for e in gw.ok("GET", f"/v1/identities/{erin}/inbox")["events"]]
    assert kinds == ["welcome"], kinds


def _carol_adds_erin(gw: Gateway) -> tuple[str, bytes, str, str]:
    """With the hosted worker stopped (its deliveries run where the test says): carol makes a group and
    adds erin, who does not join by herself; delivery then gives erin a welcome event. Returns erin, the
    group id, the path of carol's group and the Welcome."""
    _stop_hosted_worker(gw)
    carol = gw.ok("POST", "/v1/identities", {"name": "carol"})["identity_id"]
    erin = gw.ok("POST", "/v1/identities", {"name": "erin", "auto_join": False})["identity_id"]
    kp = gw.ok("POST", f"/v1/identities/{erin}/key-packages", {})["key_packages"][0]["key_package"]
    gid = base64.b64decode(gw.ok("POST", f"/v1/identities/{carol}/groups", {})["group_id"])
    first = f"/v1/identities/{carol}/groups/{b64url(gid)}"
    welcome = gw.ok("POST", first + "/commits", {"add": [kp]})["welcome"]
    gw.runtime.service.hosted.advance_by_id(gw.world.tenant_id, erin, gid)
    return erin, gid, first, welcome
