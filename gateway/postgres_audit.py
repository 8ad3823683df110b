"""Audit records linked into the chain by PostgreSQL itself, in the statement that inserts them.

A record's ``hash`` covers its ``seq`` and ``prev_hash`` (:mod:`gateway.audit_chain`): the chain's head
decides both. :func:`gateway.sqlite_audit.append_chained` reads the head, then inserts, with a round trip
between, while the writer holds the lock that orders the chain (``ORDER_LOCK`` of
:mod:`gateway.postgres_durability`, the one lock every process's message writes share); the holder's
process has to be scheduled and answer before anybody else may go on.

Here the client sends the record's hashed bytes cut around those two values
(:func:`gateway.audit_chain.hash_template`) and one ``INSERT … SELECT`` reads the head and computes
``sha256(a || hex(prev_hash) || b || seq || c)`` (PostgreSQL's ``sha256``) — the bytes
:func:`gateway.audit_chain.record_hash` hashes, so the chain verifies as before. It answers nothing, so in
a write transaction it waits in the queue for ``COMMIT``'s round trip
(:class:`gateway.postgres_sql.QueuedWrite`): the order lock, the records and ``COMMIT`` go together, and
the lock is held for the server's time alone. Under ``READ COMMITTED`` each statement reads the head after
the lock was taken (an earlier statement) and after this transaction's earlier records.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .audit_chain import GENESIS, hash_template
from .sqlite_audit import record_fields

if TYPE_CHECKING:
    from .store import AuditRecord

#: One record linked to the chain's head: ``(0, GENESIS)`` before the first record and ``GENESIS`` after
#: an unchained (legacy) one, as :func:`gateway.sqlite_audit.append_chained` reads the head. Every value is
#: cast: PostgreSQL infers no type for a parameter in a ``SELECT`` list.
LINKED_INSERT = (
    "INSERT INTO audit (seq, at, request_id, tenant_id, identity_id, token_id, group_id, epoch, key_ref, "
    "operation, custody, ok, detail, prev_hash, hash) "
    "SELECT head.seq + 1, ?::double precision, ?::text, ?::text, ?::text, ?::text, ?::bytea, ?::bigint, "
    "?::bytea, ?::text, ?::text, ?::bigint, ?::text, head.hash, "
    "sha256(?::bytea || convert_to(encode(head.hash, 'hex'), 'UTF8') || ?::bytea "
    "|| convert_to((head.seq + 1)::text, 'UTF8') || ?::bytea) "
    "FROM (SELECT COALESCE(last.seq, 0) AS seq, COALESCE(last.hash, ?::bytea) AS hash "
    "FROM (SELECT 1) AS start "
    "LEFT JOIN (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) AS last ON TRUE) AS head"
)


def linked_rows(records: list[AuditRecord]) -> list[tuple[Any, ...]]:
    """:data:`LINKED_INSERT`'s values for each record, made now (``at``: see :mod:`gateway.audit_chain`)."""
    now = time.time()
    rows = []
    for a in records:
        fields = record_fields(a, now)
        rows.append((*fields.values(), *hash_template(fields), GENESIS))
    return rows


__all__ = ["LINKED_INSERT", "linked_rows"]
