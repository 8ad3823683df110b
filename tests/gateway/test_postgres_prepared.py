"""Prepared statements and the read snapshot's memory on the PostgreSQL store (gateway/postgres_store.py,
gateway/postgres_sql.py), against the session's real throw-away cluster: a rollback keeps a connection's
prepared statements; a plan made stale by another process's migration is one retryable 503 per connection,
not a fault forever; read transactions answer a repeated SELECT from memory, write transactions never."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from gateway.postgres_rows import MemoCursor
from gateway.postgres_store import PostgresStore
from gateway.store import StoreUnavailable, Tenant

#: psycopg prepares a statement on its fifth run on a connection.
RUNS_TO_PREPARE = 6


@pytest.fixture
def store(postgres_dsn: str) -> Iterator[PostgresStore]:
    """A store with one pooled connection (every transaction on it), and a tenant."""
    s = PostgresStore(postgres_dsn, pool_size=1)
    with s.transaction() as tx:
        tx.add_tenant(Tenant("ten_1", "one"))
        tx.add_token("tok_1", "ten_1", b"h" * 32)
    yield s
    s.close()


def prepared_count(store: PostgresStore) -> int:
    with store._pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row is not None
    return int(row[0])


def read_tenant_often(store: PostgresStore) -> None:
    for _ in range(RUNS_TO_PREPARE):
        with store.read_transaction() as tx:
            assert tx.get_tenant("ten_1") is not None


def test_a_rollback_keeps_the_prepared_statements(store: PostgresStore) -> None:
    read_tenant_often(store)
    before = prepared_count(store)
    assert before >= 1
    with pytest.raises(RuntimeError), store.transaction() as tx:  # a conflict found inside: rolled back
        tx.get_tenant("ten_1")
        raise RuntimeError("lost the race")
    with pytest.raises(StoreUnavailable), store.read_transaction() as tx:
        tx.get_tenant("ten_1")
        raise StoreUnavailable("rolled back too")
    assert prepared_count(store) == before


def test_a_plan_made_stale_by_a_migration_is_one_retry(store: PostgresStore, postgres_dsn: str) -> None:
    """A prepared ``SELECT *`` fails once the table gained a column ("cached plan must not change result
    type") — every time, until the statement is deallocated: the store answers it 503 and forgets the
    connection's prepared statements, so the retry succeeds. In a transaction and in an autocommit lookup."""
    read_tenant_often(store)
    migrate(postgres_dsn, "ALTER TABLE tenants ADD COLUMN extra integer")
    with pytest.raises(StoreUnavailable, match="FeatureNotSupported"), store.read_transaction() as tx:
        tx.get_tenant("ten_1")
    with store.read_transaction() as tx:  # the connection forgot its plans: prepared anew
        assert tx.get_tenant("ten_1") is not None
    for _ in range(RUNS_TO_PREPARE):
        with store.lookup() as tx:
            assert tx.token_by_hash(b"h" * 32) is not None
    migrate(postgres_dsn, "ALTER TABLE tokens ADD COLUMN extra integer")
    with pytest.raises(StoreUnavailable, match="FeatureNotSupported"), store.lookup() as tx:
        tx.token_by_hash(b"h" * 32)
    with store.lookup() as tx:
        assert tx.token_by_hash(b"h" * 32) is not None


def migrate(dsn: str, ddl: str) -> None:
    """Another process changes the schema."""
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(ddl)


def test_read_transactions_remember_and_write_transactions_do_not(store: PostgresStore) -> None:
    sql, args = "SELECT name FROM tenants WHERE tenant_id = ?", ("ten_1",)
    with store.read_transaction() as tx:
        tx._c.execute(sql, args)
        assert isinstance(tx._c.execute(sql, args), MemoCursor)
        with store.read_transaction() as inner:  # a nested read shares the snapshot and its memory
            assert isinstance(inner._c.execute(sql, args), MemoCursor)
    with store.transaction() as tx:
        tx._c.execute(sql, args)
        assert not isinstance(tx._c.execute(sql, args), MemoCursor)
    with store.transaction(group=b"g") as tx:
        tx._c.execute("SELECT seq FROM group_logs WHERE group_id = ?", (b"g",))
        assert not isinstance(
            tx._c.execute("SELECT seq FROM group_logs WHERE group_id = ?", (b"g",)), MemoCursor
        )
    with store.transaction() as tx:
        tx._c.execute("UPDATE tenants SET name = ? WHERE tenant_id = ?", ("renamed", "ten_1"))
    with store.read_transaction() as tx:  # a new snapshot starts with an empty memory
        assert tx._c.execute(sql, args).fetchone() == ("renamed",)
