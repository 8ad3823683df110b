"""The served OpenAPI 3.1 document is complete: every route of the route tables, each operation with its
request schema (POST and PUT), a success response with its schema (or no content / text), the problem
documents of its failures, path parameters matching the path, and only schema keywords the response
checker (tests/openapi_schema.py) knows. Real answers are checked against it in tests/gateway/test_client.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.api import ROUTES
from gateway.errors import CODES, Problem, stale_epoch
from gateway.openapi import document
from tests.openapi_schema import ANNOTATIONS, ASSERTIONS, errors, resolve, walk_schemas

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, path, op) for path, ops in document()["paths"].items() for m, op in ops.items()]


def test_the_document_is_openapi_3_1_with_exactly_the_routes() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] and doc["info"]["version"]
    listed = {(m.upper(), path) for m, path, _ in _operations()}
    assert listed == {(r.method, r.path) for r in ROUTES}
    ids = [op["operationId"] for _, _, op in _operations()]
    assert len(ids) == len(ROUTES)
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_each_operation_is_complete(route: Any) -> None:
    op = document()["paths"][route.path][route.method.lower()]
    path_params = [p["name"] for p in op["parameters"] if p["in"] == "path"]
    assert path_params == re.findall(r"{(\w+)}", route.path)
    if route.method in ("POST", "PUT"):
        body = op["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] and (schema.get("type") == "object" or "oneOf" in schema), schema
    else:
        assert "requestBody" not in op
    if route.mutating and route.method == "POST":
        assert "Idempotency-Key" in {p["name"] for p in op["parameters"] if p["in"] == "header"}
    success = [s for s in op["responses"] if s.startswith("2") or s == "101"]
    assert len(success) == 1, op["responses"]
    answer = op["responses"][success[0]]
    if success[0] in ("204", "101"):
        assert "content" not in answer
    else:
        (media,) = answer["content"]
        assert media in ("application/json", "text/plain")
        assert answer["content"][media]["schema"]
    assert (route.auth != "none") == ("security" in op)
    failures = {s: r for s, r in op["responses"].items() if s[0] in "45"}
    for status in ("400", "404", "413", "503") + (("401",) if route.auth != "none" else ()):
        assert status in failures, status
    for status, response in failures.items():
        if route.path == "/readyz" and status == "503":
            continue  # the probe's own body, not a problem document
        assert response["content"] == {"application/problem+json": {"schema": PROBLEM_REF}}, status


def test_every_schema_uses_only_checked_keywords_and_resolvable_refs() -> None:
    doc = document()
    schemas = walk_schemas(doc["paths"]) + walk_schemas({"schema": doc["components"]["schemas"]["Problem"]})
    assert len(schemas) > 300
    for where, schema in schemas:
        assert set(schema) <= ASSERTIONS | ANNOTATIONS, (where, set(schema) - ASSERTIONS - ANNOTATIONS)
        if "$ref" in schema:
            assert resolve(doc, schema["$ref"])
        if "required" in schema:
            assert set(schema["required"]) <= set(schema.get("properties", {})), where


def test_the_problem_schema_takes_the_gateways_problem_documents() -> None:
    doc = document()
    problem = doc["components"]["schemas"]["Problem"]
    for code in CODES:
        assert not errors(Problem(code, "detail").document("req-1"), problem, doc), code
    assert not errors(stale_epoch(4).document("req-2"), problem, doc)
    assert errors({"type": "x", "title": "y", "status": 400, "code": "no_such_code"}, problem, doc)
    assert errors({"title": "y", "status": 400, "code": "conflict"}, problem, doc)


def test_the_checker_fails_what_breaks_a_schema() -> None:
    """The response checker is no rubber stamp: each kind of violation is reported."""
    doc = document()
    identity = doc["paths"]["/v1/identities/{identity_id}"]["get"]["responses"]["200"]["content"]
    schema = identity["application/json"]["schema"]
    good = {
        "identity_id": "idn_1",
        "name": "a",
        "cipher_suite": 1,
        "credential": {"type": "basic", "identity": "YQ=="},
        "signature_public_key": "AAAA",
        "custody": {"signature": "pkcs11", "hpke": "wrapped"},
        "auto_join": True,
    }
    assert errors(good, schema, doc) == []
    assert errors({**good, "cipher_suite": "1"}, schema, doc)
    assert errors({**good, "signature_public_key": "not base64!"}, schema, doc)
    assert errors({**good, "custody": {"signature": "disk", "hpke": "wrapped"}}, schema, doc)
    assert errors({k: v for k, v in good.items() if k != "name"}, schema, doc)
    assert errors({**good, "auto_join": 1}, schema, doc)
    assert errors(good, {"type": "object", "unevaluatedProperties": False}, doc)
