"""A statement the database refuses for good is a defect, not an outage: the API answers 500
``internal_error`` (logged with the request id), not 503 ``store_unavailable`` with Retry-After — a client
told to retry would retry forever. The in-process gateway on SQLite; the stores' classification of every
error is in test_store_contract.py (both stores) and test_store_concurrency.py (connection loss stays 503).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..gateway_fuzz.harness import Gateway, check_problem_document


@contextmanager
def refusing_inserts(database: Path, table: str) -> Iterator[None]:
    """A trigger that makes the database refuse every insert into ``table`` (SQLITE_CONSTRAINT), for the
    length of the block: what a violated constraint looks like to the gateway."""
    conn = sqlite3.connect(database, timeout=60, isolation_level=None)
    try:
        conn.execute(
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        yield
    finally:
        conn.execute(f"DROP TRIGGER IF EXISTS refuse_{table}")
        conn.close()


def test_a_refused_statement_answers_500_changes_nothing_and_is_logged(
    in_process: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = in_process
    before = gw.ok("GET", "/v1/tenants", auth="admin")
    with refusing_inserts(gw.database, "tenants"), caplog.at_level(logging.ERROR, logger="mls_gateway"):
        reply = gw.request("POST", "/v1/tenants", json_body={"name": "refused"}, auth="admin")
    assert reply.status == 500, reply
    doc = reply.json()
    check_problem_document(doc, 500)
    assert doc["code"] == "internal_error" and "retry-after" not in {k.lower() for k in reply.headers}
    assert any(doc["instance"] in r.getMessage() for r in caplog.records), "the failure is logged by id"
    assert gw.ok("GET", "/v1/tenants", auth="admin") == before  # nothing of it was written
    made = gw.ok("POST", "/v1/tenants", {"name": "after"}, auth="admin", expect=201)  # still working
    assert made["tenant_id"]
