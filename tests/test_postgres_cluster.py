"""The throw-away PostgreSQL cluster the store tests run on: reachable, one empty database per test, and a
crash of the server recovered by a start (what the chaos and connection-loss tests rely on)."""

from __future__ import annotations

import psycopg

from .postgres_cluster import PostgresCluster, fresh_database


def test_each_test_gets_an_empty_database(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        version = conn.execute("SHOW server_version_num").fetchone()
    assert tables == (0,)
    assert version is not None and int(version[0]) // 10000 == 15


def test_a_crashed_server_keeps_committed_rows_after_start(postgres_cluster: PostgresCluster) -> None:
    dsn = fresh_database(postgres_cluster, "crash_recovery")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v integer)")
        conn.execute("INSERT INTO t VALUES (7)")
    postgres_cluster.kill()
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
        raise AssertionError("the server still answered after the crash")
    except psycopg.OperationalError:
        pass
    postgres_cluster.start()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(7,)]
