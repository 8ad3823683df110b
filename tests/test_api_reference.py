"""docs/api.md, the project's API reference, documents every route of the route table.

Each route of :data:`gateway.api.ROUTES` must appear in the reference as ``METHOD /path`` inside backticks
(the heading of its section), with the path exactly as in the table; and the reference documents no route
that does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.api import ROUTES

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "api.md"
_DOCUMENTED = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`")


def _documented() -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2)) for m in _DOCUMENTED.finditer(REFERENCE.read_text(encoding="utf-8"))}


def test_every_route_is_documented() -> None:
    missing = sorted(f"{r.method} {r.path}" for r in ROUTES if (r.method, r.path) not in _documented())
    assert not missing, f"routes of gateway.api.ROUTES not documented in docs/api.md: {missing}"


def test_every_documented_route_exists() -> None:
    routes = {(r.method, r.path) for r in ROUTES}
    unknown = sorted(f"{m} {p}" for m, p in _documented() if (m, p) not in routes)
    assert not unknown, f"docs/api.md documents routes that gateway.api.ROUTES does not have: {unknown}"


def test_every_problem_code_is_documented() -> None:
    from gateway.errors import CODES

    text = REFERENCE.read_text(encoding="utf-8")
    missing = sorted(code for code in CODES if f"`{code}`" not in text)
    assert not missing, f"problem codes not documented in docs/api.md: {missing}"


def _sections() -> dict[tuple[str, str], str]:
    """The text of each route's section (``#### `METHOD /path```); consecutive headings share the text
    of the section that follows them."""
    out: dict[tuple[str, str], str] = {}
    waiting: list[tuple[str, str]] = []
    for block in re.split(r"^(?=#{2,4} )", REFERENCE.read_text(encoding="utf-8"), flags=re.M):
        heading, _, text = block.partition("\n")
        m = re.fullmatch(r"#### " + _DOCUMENTED.pattern, heading.strip())
        if m is None:
            waiting = []
            continue
        waiting.append((m.group(1), m.group(2)))
        if text.strip():
            out.update({key: text for key in waiting})
            waiting = []
    return out


def test_openapi_success_status_is_the_documented_one() -> None:
    """The success status the OpenAPI document gives each route is the one its section states."""
    from gateway.openapi import document

    sections = _sections()
    wrong = []
    for route in ROUTES:
        if route.path.endswith("/ws"):
            continue  # a WebSocket upgrade (101), not a JSON answer
        op = document()["paths"][route.path][route.method.lower()]
        status = next(s for s in op["responses"] if s.startswith("2"))
        if not re.search(rf"\b{status}\b", sections[(route.method, route.path)]):
            wrong.append(f"{route.method} {route.path}: OpenAPI says {status}")
    assert not wrong, wrong


def test_openapi_describes_bodies_and_queries_of_real_routes() -> None:
    """Every route that takes a JSON body has its request schema; every described route exists; mailbox
    and inbox reads document after, wait and limit."""
    from gateway import openapi

    routes = {(r.method, r.path) for r in ROUTES}
    for table in (openapi.REQUEST_BODIES, openapi.SUCCESS, openapi.RESPONSE_BODIES, openapi.QUERY):
        assert set(table) <= routes, set(table) - routes
    bodyless = {
        ("POST", "/v1/tenants/{tenant_id}/tokens"),
        ("POST", "/v1/identities/{identity_id}/groups/{gid}/pending-commit/merge"),
    }
    takes_body = {(r.method, r.path) for r in ROUTES if r.method in ("POST", "PUT")} - bodyless
    assert takes_body <= set(openapi.REQUEST_BODIES), takes_body - set(openapi.REQUEST_BODIES)
    doc = openapi.document()
    for path in ("/v1/clients/{client_id}/mailbox", "/v1/identities/{identity_id}/inbox"):
        names = {p["name"] for p in doc["paths"][path]["get"]["parameters"] if p["in"] == "query"}
        assert names == {"after", "wait", "limit"}
    for path in ("/v1/clients/{client_id}/mailbox/ws", "/v1/identities/{identity_id}/inbox/ws"):
        names = {p["name"] for p in doc["paths"][path]["get"]["parameters"] if p["in"] == "query"}
        assert names == {"after"}
    epochs = [
        openapi.REQUEST_BODIES[("POST", openapi._G + "/{gid}/commits")],
        openapi.REQUEST_BODIES[("POST", openapi._G + "/{gid}/proposals")],
    ]
    assert all("epoch" in schema["properties"] for schema in epochs)
