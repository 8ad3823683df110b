"""Regression tests for bugs the fuzzers found in gateway/ and mls/ (fixed), including the over-long
request line that aiohttp's parser used to answer in text/plain (now a problem document, gateway.http_server).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from .harness import Gateway, b64, check_problem, diff


def _unchanged(gw: Gateway, baseline: dict[str, Any], note: str) -> None:
    after = gw.snapshot()
    assert after == baseline, f"state changed by a refused request: {note}\n{diff(baseline, after)}"


@pytest.mark.parametrize("case", ["tenant name", "identity name", "export label"])
def test_lone_surrogates_in_text_fields_are_refused(gw: Gateway, baseline: dict[str, Any], case: str) -> None:
    w = gw.world
    method_path_body_auth = {
        "tenant name": ("/v1/tenants", b'{"name": "\\ud800"}', "admin"),
        "identity name": ("/v1/identities", b'{"name": "carol\\udfff"}', "tenant"),
        "export label": (w.group_path(w.alice) + "/export", b'{"label": "\\ud800", "length": 16}', "tenant"),
    }
    path, body, auth = method_path_body_auth[case]
    reply = gw.request("POST", path, body=body, auth=auth)
    check_problem(reply, expect_code="invalid_request")
    _unchanged(gw, baseline, case)


@pytest.mark.parametrize(
    "raw", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000], ids=["arrays", "objects"]
)
def test_deeply_nested_json_is_refused(gw: Gateway, baseline: dict[str, Any], raw: bytes) -> None:
    reply = gw.request("POST", "/v1/identities", body=raw)
    check_problem(reply, expect_code="invalid_request")
    _unchanged(gw, baseline, "deeply nested JSON")


def test_over_long_request_line_is_a_problem_document(gw: Gateway, baseline: dict[str, Any]) -> None:
    """A request line over aiohttp's max_line_size (8190 bytes) is refused by its HTTP parser before the
    app sees it; gateway.http_server answers that refusal as a problem document too (api-v1.md)."""
    w = gw.world
    reply = gw.request("GET", f"/v1/identities/{w.alice}/groups/" + "A" * 9000)
    check_problem(reply)
    _unchanged(gw, baseline, "over-long request line")


# ---- these change state when they fail: each works on a group of its own, after the tests above ------------


def test_proposal_to_add_a_member_is_refused(gw: Gateway) -> None:
    w = gw.world
    gid = base64.b64decode(gw.ok("POST", f"/v1/identities/{w.alice}/groups", {})["group_id"])
    path = w.group_path(w.alice, gid)
    add = {"add": [b64(w.messages["key_package_alice"])], "include_pending": False}
    check_problem(gw.request("POST", path + "/commits", json_body=add), expect_code="validation_failed")
    baseline = gw.snapshot()
    reply = gw.request("POST", path + "/proposals", json_body={"type": "add", "key_package": add["add"][0]})
    check_problem(reply, expect_code="validation_failed")
    _unchanged(gw, baseline, "a proposal to add a member")


def test_a_psk_proposal_can_be_committed(gw: Gateway) -> None:
    w = gw.world
    gid = base64.b64decode(gw.ok("POST", f"/v1/identities/{w.alice}/groups", {})["group_id"])
    path = w.group_path(w.alice, gid)
    gw.ok(
        "POST",
        path + "/proposals",
        {"type": "psk", "psk": {"psk_id": b64(b"known-bug psk"), "secret": b64(bytes(32))}},
    )
    reply = gw.request("POST", path + "/commits", json_body={})
    assert reply.status == 200, reply
