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
