"""The store interface (gateway.store.Transaction) on both stores: SQLite and a real PostgreSQL (issue 15).

Every test runs once per store (the ``store`` fixture); the races in ``test_store_concurrency.py`` run two
PostgreSQL stores (two pools: as two gateway processes) against each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from gateway.audit_chain import verify
from gateway.audit_trail import export_lines
from gateway.config import load_config
from gateway.delivery_store import HostedWork, LogConflict, LogEntry, LogHead, LogPosition, Member
from gateway.persistence import PendingWrites, Persistence, RequestScope, Response, StaleState
from gateway.postgres_sql import liveness_options
from gateway.postgres_store import PostgresStore
from gateway.sqlite_audit import RetentionRow
from gateway.sqlite_directory import ClientRecord
from gateway.sqlite_rewrap import SEALED_COLUMNS
from gateway.sqlite_store import SqliteStore
from gateway.store import (
    AuditRecord,
    EpochConflict,
    GroupRecord,
    IdempotentResponse,
    Identity,
    KeyPackageRecord,
    StoreFault,
    StoreUnavailable,
    Tenant,
    Transaction,
)
from gateway.store_factory import open_store

AnyStore = SqliteStore | PostgresStore
G = b"group-1"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyStore]:
    s: AnyStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "gateway.sqlite3")
    else:
        s = PostgresStore(request.getfixturevalue("postgres_dsn"))
    yield s
    s.close()


def identity(n: int = 1, tenant: str = "ten_1") -> Identity:
    return Identity(
        f"idn_{n}", tenant, f"alice{n}", 1, b"cred", b"sigref%d" % n, b"sigpub%d" % n, "hsm", "hsm"
    )


def seed(store: AnyStore, identities: int = 1) -> None:
    with store.transaction() as tx:
        tx.add_tenant(Tenant("ten_1", "tenant one", "wrapped"))
        for n in range(1, identities + 1):
            tx.add_identity(identity(n))


def group(version_state: bytes = b"s1", epoch: int = 0) -> GroupRecord:
    return GroupRecord("idn_1", G, epoch, version_state, None)


def audit_record(n: int) -> AuditRecord:
    return AuditRecord(f"req-{n}", "ten_1", "idn_1", G, n, b"ref", "sign", "hsm", True)


def test_tenants_and_tokens(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.add_token("tok_1", "ten_1", b"hash-1")
        tx.add_token("tok_admin", None, b"hash-admin")
        assert tx.count_admin_tokens() == 1
        assert tx.revoke_token("ten_1", "tok_1") is True
        assert tx.revoke_token("ten_1", "tok_1") is False
    with store.read_transaction() as tx:
        record = tx.token_by_hash(b"hash-1")
        assert record is not None and record.revoked and record.tenant_id == "ten_1"
        assert [t.token_id for t in tx.list_tokens("ten_1")] == ["tok_1"]
        assert tx.get_tenant("ten_1") == Tenant("ten_1", "tenant one", "wrapped")
        assert tx.get_tenant("nope") is None


def test_identity_deletion_cascades(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.add_key_package(KeyPackageRecord(b"kp1", "idn_1", b"kp", b"i", b"l", False, False))
        tx.put_group(group(), None)
        tx.put_psk("idn_1", b"psk", b"sealed")
        tx.put_idempotent("ten_1:idn_1", "k", IdempotentResponse(b"h", 200, b"b"), "idn_1")
        assert tx.endpoint_for_key("ten_1", b"sigpub1") == "idn_1"
    with store.transaction() as tx:
        tx.delete_identity("idn_1")
    with store.read_transaction() as tx:
        assert tx.get_identity("ten_1", "idn_1") is None
        assert tx.list_key_packages("idn_1") == [] and tx.get_group("idn_1", G) is None
        assert tx.list_psks("idn_1") == [] and tx.get_idempotent("ten_1:idn_1", "k", 0) is None
        assert tx.endpoint_for_key("ten_1", b"sigpub1") is None


def test_key_packages_are_claimed_once_except_last_resort(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.add_key_package(KeyPackageRecord(b"kp1", "idn_1", b"kp", b"i", b"l", False, False))
        tx.add_key_package(KeyPackageRecord(b"kp2", "idn_1", b"kp", b"i", b"l", True, False))
        assert tx.count_live_key_packages("idn_1") == 2
        assert tx.mark_key_package_consumed("idn_1", b"kp1") is True
        assert tx.mark_key_package_consumed("idn_1", b"kp1") is False
        assert tx.mark_key_package_consumed("idn_1", b"kp2") is True
        assert tx.mark_key_package_consumed("idn_1", b"kp2") is True
    with store.read_transaction() as tx:
        kp = tx.get_key_package("idn_1", b"kp1")
        assert kp is not None and kp.consumed and not kp.last_resort


def test_group_compare_and_swap_and_ratchet_rows(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        assert tx.put_group(group(), None) == 1
    with pytest.raises(EpochConflict), store.transaction() as tx:
        tx.put_group(group(), None)  # already a member
    with pytest.raises(EpochConflict), store.transaction() as tx:
        tx.put_group(GroupRecord("idn_gone", G, 0, b"s", None), None)  # no such identity (deleted)
    with store.transaction() as tx:
        assert tx.put_group_ratchet("idn_1", G, 3, b"r2", 1) == 2
        assert tx.put_group_ratchet("idn_1", G, 4, b"r3", 2) == 3
    # A lost compare-and-swap raises by the end of its transaction at the latest (on PostgreSQL the write
    # may wait for the commit's round trip), and the transaction writes nothing.
    with pytest.raises(EpochConflict), store.transaction() as tx:
        tx.add_inbox_event("idn_1", G, 9, b"not kept")
        tx.put_group_ratchet("idn_1", G, 5, b"rX", 2)  # stale
        tx.clear_hosted_pending("idn_1", G, 9)
    with store.read_transaction() as tx:
        g = tx.get_group("idn_1", G)
        assert g is not None and (g.version, g.applied_seq, g.ratchet, g.state) == (3, 4, b"r3", b"s1")
        assert tx.get_group_version("idn_1", G) == 3 and tx.hosted_progress("ten_1", "idn_1", G)[1] == 4
        assert tx.inbox_after("idn_1", 0, 10) == []
    with pytest.raises(EpochConflict), store.transaction() as tx:
        tx.put_group(group(b"s2", 1), 2)  # stale version
    with store.transaction() as tx:
        assert tx.put_group(group(b"s2", 1), 3) == 4
    with store.read_transaction() as tx:
        g = tx.get_group("idn_1", G)
        assert g is not None and (g.version, g.ratchet, g.state, g.epoch) == (4, None, b"s2", 1)
        assert [r.group_id for r in tx.list_groups("idn_1")] == [G]
    with store.transaction() as tx:
        assert tx.delete_group("idn_1", G) and not tx.delete_group("idn_1", G)


def test_idempotency_records(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.put_idempotent("s", "k", IdempotentResponse(b"h1", 201, b"b1"), None)
        tx.put_idempotent("s", "k", IdempotentResponse(b"h2", 200, b"b2"), None)  # replaces (expired)
    with store.read_transaction() as tx:
        assert tx.get_idempotent("s", "k", 0) == IdempotentResponse(b"h2", 200, b"b2")
        assert tx.get_idempotent("s", "k", 1e12) is None
    with store.transaction() as tx:
        assert tx.purge_idempotent(1e12) == 1


def test_audit_chain_verifies(store: AnyStore) -> None:
    seed(store)
    for n in range(3):
        with store.transaction() as tx:
            tx.add_audit([audit_record(2 * n), audit_record(2 * n + 1)])
    with store.read_transaction() as tx:
        head = tx.audit_head()
        assert head is not None and head[0] == 6
    assert verify(list(export_lines(store)), None).records == 6


def test_log_append_is_one_per_sequence(store: AnyStore) -> None:
    seed(store)
    head = LogHead("ten_1", G, 1, 1, 1, b"gi", b"tree")
    entry = LogEntry(1, 0, "commit", "idn_1", b"commit-1", b"welcome-1", b"gi", b"tree")
    with store.transaction() as tx:
        tx.put_log_head(head, None)
        tx.append_log_entries("ten_1", G, [entry])
        tx.set_members("ten_1", G, [Member(0, "idn_1"), Member(1, None)])
    with pytest.raises(LogConflict), store.transaction() as tx:
        tx.put_log_head(head, None)  # created concurrently
    with store.transaction() as tx:
        tx.put_log_head(LogHead("ten_1", G, 1, 2, 2, b"gi2", b"tree2"), 1)
    with pytest.raises(LogConflict), store.transaction() as tx:
        tx.put_log_head(LogHead("ten_1", G, 1, 2, 2, b"gi2", b"tree2"), 1)  # moved on
    with store.read_transaction() as tx:
        got = tx.get_log_head("ten_1", G)
        assert got is not None and (got.seq, got.epoch) == (2, 2)
        assert [e.message for e in tx.log_entries("ten_1", G, 0, 5)] == [b"commit-1"]
        assert tx.get_delivered_members("ten_1", G) == [Member(0, "idn_1")]
        assert tx.endpoint_groups("idn_1") == [("ten_1", G)]


def test_messages_move_the_log_position_without_rewriting_the_head(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.put_log_head(LogHead("ten_1", G, 1, 1, 1, b"gi", b"tree"), None)
    with store.read_transaction() as tx:
        position = tx.get_log_position("ten_1", G)
        assert tx.get_log_position("ten_1", b"other") is None
    assert position == LogPosition("ten_1", G, 1, 1, 1)
    with store.transaction() as tx:
        tx.advance_log_seq(position, 3)  # two messages appended
    with pytest.raises(LogConflict), store.transaction() as tx:
        tx.advance_log_seq(position, 2)  # a writer that read seq 1 lost the race
    with store.read_transaction() as tx:
        assert tx.get_log_head("ten_1", G) == LogHead("ten_1", G, 1, 1, 3, b"gi", b"tree")


def test_mailboxes_inboxes_and_hosted_work(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.add_client(ClientRecord("cli_1", "ten_1", "phone"))
        tx.put_log_head(LogHead("ten_1", G, 1, 1, 1, b"gi", b"tree"), None)
        tx.append_log_entries("ten_1", G, [LogEntry(1, 0, "commit", None, b"m1", b"w1")])
        tx.add_mailbox_items("ten_1", ["cli_1"], G, 1, "commit")
        tx.add_mailbox_items("ten_1", ["cli_1"], G, 1, "welcome")
        first = tx.add_inbox_event("idn_1", G, 1, b"e1")
        second = tx.add_inbox_event("idn_1", G, 2, b"e2")
        assert second > first
        tx.mark_hosted_pending([HostedWork("idn_1", "ten_1", G, 5)])
        tx.mark_hosted_pending([HostedWork("idn_1", "ten_1", G, 3)])  # keeps the larger
    with store.read_transaction() as tx:
        items = tx.mailbox_after("cli_1", 0, 10)
        assert [(i.kind, i.message) for i in items] == [("commit", b"m1"), ("welcome", b"w1")]
        assert [e.sealed_event for e in tx.inbox_after("idn_1", first, 10)] == [b"e2"]
        assert tx.hosted_pending(10) == [HostedWork("idn_1", "ten_1", G, 5)]
    with store.transaction() as tx:
        assert tx.ack_mailbox("cli_1", items[0].cursor) == 1
        tx.clear_hosted_pending("idn_1", G, 5)
        assert tx.hosted_pending(10) == []


def test_webhooks(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        generation = tx.put_webhook("idn_1", "https://example.test/hook", b"secret", 0)
        assert tx.webhook_delivered("idn_1", generation, 4) is True
        assert tx.webhook_delivered("idn_1", generation, 4) is False
        assert tx.webhook_failed(
            "idn_1", generation, attempts=2, failing_since=1.0, next_attempt_at=None, paused=True
        )
    with store.read_transaction() as tx:
        hook = tx.get_webhook("idn_1")
        assert hook is not None and hook.delivered_cursor == 4 and hook.paused
        assert tx.active_webhooks() == []


def test_kek_rows_and_rewrap_cursor(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        assert tx.add_kek("kek-1", "envelope", 1, "current") is True
        assert tx.add_kek("kek-1", "envelope", 1, "current") is False
        assert tx.add_kek("kek-2", "envelope", 2, "pending") is True
        tx.make_current("kek-2", "envelope")
        tx.put_software_key(b"ref-1", b"\x02OLDKEKID" + b"x" * 8)
        tx.put_software_key(b"ref-1", b"\x02OLDKEKID" + b"y" * 8)  # replaces
    column = next(c for c in SEALED_COLUMNS if c.table == "software_keys")
    with store.transaction() as tx:
        assert [(k.label, k.state) for k in tx.list_keks()] == [("kek-1", "retiring"), ("kek-2", "current")]
        stale = tx.stale_sealed_rows(column, b"NEWKEKID", 10)
        assert [s.blob for s in stale] == [b"\x02OLDKEKID" + b"y" * 8]
        assert tx.swap_sealed(column, stale[0].rowid, stale[0].blob, b"\x03NEWKEKIDz") is True
        assert tx.swap_sealed(column, stale[0].rowid, stale[0].blob, b"\x03NEWKEKIDz") is False
        assert tx.stale_sealed_rows(column, b"NEWKEKID", 10) == []
        assert tx.sealed_kek_counts(column) == {b"NEWKEKID": 1}


def test_retention_and_tenant_rows(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.put_retention(RetentionRow("ten_1", mailbox_s=5.0, legal_hold=True))
        tx.put_retention(RetentionRow("ten_1", mailbox_s=7.0, legal_hold=True))
        tx.add_client(ClientRecord("cli_1", "ten_1", "phone"))
        tx.put_idempotent("ten_1:x", "k", IdempotentResponse(b"h", 200, b"b"), None)
        assert tx.purge_tenant_idempotency("ten_1", 10) == 1
        assert tx.purge_tenant_rows("ten_1", "endpoint_keys", 10) == 1
        tx.add_audit([audit_record(1)])
        erasable = tx.erasable_audit("ten_1", 1e12, 10)
        assert tx.erase_audit([seq for seq, _ in erasable], 99) == 1
    with store.read_transaction() as tx:
        assert tx.get_retention("ten_1") == RetentionRow("ten_1", mailbox_s=7.0, legal_hold=True)
        assert tx.count_legal_holds() == 1
        assert [c.client_id for c in tx.list_clients("ten_1")] == ["cli_1"]
        assert tx.erasable_audit("ten_1", 1e12, 10) == []
        assert tx.audit_head() == erasable[0]  # erased in place: the chain link stays


def test_audit_rows_cannot_be_deleted(store: AnyStore) -> None:
    seed(store)
    with store.transaction() as tx:
        tx.add_audit([audit_record(1)])
    with pytest.raises(StoreFault), store.transaction() as tx:  # refused by a trigger: not "retry later"
        tx._c.execute("DELETE FROM audit")
    with store.read_transaction() as tx:
        assert tx.audit_head() is not None


def test_hosted_progress_reads_log_membership_and_mark_in_one(store: AnyStore) -> None:
    seed(store)
    with store.read_transaction() as tx:  # no log, no membership, no mark
        assert tx.hosted_progress("ten_1", "idn_1", G) == (None, None, None)
    with store.transaction() as tx:
        tx.mark_hosted_pending([HostedWork("idn_1", "ten_1", G, 4)])
    with store.read_transaction() as tx:  # a mark alone (a joiner's)
        assert tx.hosted_progress("ten_1", "idn_1", G) == (None, None, 4)
    with store.transaction() as tx:
        tx.put_log_head(LogHead("ten_1", G, 1, 2, 6, b"gi", b"tree"), None)
        assert tx.put_group(group(), None) == 1
        tx.put_group_ratchet("idn_1", G, 5, b"r", 1)
    with store.read_transaction() as tx:
        assert tx.hosted_progress("ten_1", "idn_1", G) == (LogPosition("ten_1", G, 1, 2, 6), 5, 4)
        assert tx.hosted_progress("ten_2", "idn_1", G)[0] is None  # another tenant's log
        assert tx.hosted_progress("ten_1", "idn_2", G) == (LogPosition("ten_1", G, 1, 2, 6), None, None)
    with store.transaction() as tx:
        tx.clear_hosted_pending("idn_1", G, 5)
    with store.read_transaction() as tx:
        assert tx.hosted_progress("ten_1", "idn_1", G)[2] is None


def test_read_transactions_refuse_writes_and_nest_in_one_snapshot(store: AnyStore) -> None:
    seed(store)
    with pytest.raises(StoreFault), store.read_transaction() as tx:  # a defect, not "retry later"
        tx.add_tenant(Tenant("ten_2", "two"))
    with store.read_transaction() as outer:
        assert outer.get_tenant("ten_2") is None
        with store.transaction() as tx:  # committed after the outer snapshot began
            tx.add_tenant(Tenant("ten_2", "two"))
        with store.read_transaction() as inner:
            assert inner.get_tenant("ten_2") is None
    with store.read_transaction() as tx:
        assert tx.get_tenant("ten_2") is not None
    store.ping()
    assert store.write_probe(1.0) is None


def test_a_lookup_reads_one_row_and_refuses_writes(store: AnyStore) -> None:
    """``Store.lookup`` (the token check's read): what is committed, nothing else; a write in it is a
    defect (StoreFault) that changes nothing; inside a read transaction it reads within that snapshot."""
    seed(store)
    with store.transaction() as tx:
        tx.add_token("tok_1", "ten_1", b"hash-1")
    with store.lookup() as tx:
        record = tx.token_by_hash(b"hash-1")
        assert record is not None and record.tenant_id == "ten_1" and not record.revoked
    with store.lookup() as tx:
        assert tx.token_by_hash(b"hash-2") is None
    with pytest.raises(StoreFault), store.lookup() as tx:
        tx.add_tenant(Tenant("ten_2", "two"))
    for sql in ("SELECT 1; DELETE FROM tokens", "SELECT * FROM tokens FOR UPDATE"):
        with pytest.raises(StoreFault), store.lookup() as tx:
            tx._c.execute(sql).fetchall()
    with store.lookup() as tx:
        assert tx.token_by_hash(b"hash-1") is not None
    with store.read_transaction() as outer:
        assert outer.get_tenant("ten_2") is None  # the snapshot begins
        with store.transaction() as tx:  # revoked after the outer snapshot began
            tx.revoke_token("ten_1", "tok_1")
        with store.lookup() as inner:
            record = inner.token_by_hash(b"hash-1")
            assert record is not None and not record.revoked
    with store.lookup() as tx:
        record = tx.token_by_hash(b"hash-1")
        assert record is not None and record.revoked


def test_a_sqlite_lookup_is_one_statement(tmp_path: Path) -> None:
    """On SQLite a lookup is its ``SELECT`` alone (autocommit: no ``BEGIN`` / ``COMMIT`` around it)."""
    store = SqliteStore(tmp_path / "gw.sqlite3")
    try:
        seed(store)
        statements: list[str] = []
        store._connect(reader=True).set_trace_callback(statements.append)
        with store.lookup() as tx:
            assert tx.token_by_hash(b"nothing") is None
        assert len(statements) == 1 and statements[0].startswith("SELECT * FROM tokens"), statements
    finally:
        store.close()


def test_a_refused_statement_is_a_fault_that_changes_nothing(store: AnyStore) -> None:
    """A statement the database refuses for good (here a primary key taken twice) is a StoreFault — the
    API's 500, not 503 "retry later" — whose text names the error class and not the values; the
    transaction's earlier writes are rolled back and the store goes on working."""
    seed(store)
    with pytest.raises(StoreFault) as refused, store.transaction() as tx:
        tx.add_tenant(Tenant("ten_2", "two"))
        tx.add_tenant(Tenant("ten_1", "secret-looking name Zq9"))
    assert isinstance(refused.value, StoreUnavailable)  # background tasks' "try again later" still holds
    text = str(refused.value)
    assert "Integrity" in text or "Unique" in text, text
    assert "Zq9" not in text and "ten_1" not in text, text
    with store.read_transaction() as tx:
        assert tx.get_tenant("ten_2") is None and tx.get_tenant("ten_1") is not None
    with store.transaction() as tx:
        tx.add_tenant(Tenant("ten_2", "two"))


def test_the_database_setting_selects_the_store(tmp_path: Path, postgres_dsn: str) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[gateway]\ndatabase = "{tmp_path / "db.sqlite3"}"\n')
    sqlite_cfg = load_config(toml, {})
    assert sqlite_cfg.postgres_url is None and sqlite_cfg.database_path == tmp_path / "db.sqlite3"
    with_password = postgres_dsn.replace("mlsgw@", "mlsgw:secret@")
    pg_cfg = load_config(None, {"MLSGW_DATABASE": with_password, "MLSGW_DATA_DIR": str(tmp_path)})
    assert pg_cfg.postgres_url == with_password
    assert pg_cfg.database_location == postgres_dsn  # no password in reports
    with pytest.raises(ValueError):
        _ = pg_cfg.database_path
    pg_cfg = load_config(None, {"MLSGW_DATABASE": postgres_dsn})
    for cfg, kind in ((sqlite_cfg, SqliteStore), (pg_cfg, PostgresStore)):
        opened = open_store(cfg)
        try:
            assert isinstance(opened, kind)
            opened.ping()
        finally:
            opened.close()


def test_a_full_disk_is_an_outage_not_a_fault(tmp_path: Path) -> None:
    """SQLite rolls a transaction back by itself on SQLITE_FULL (also IOERR, NOMEM, BUSY, INTERRUPT): the
    store then raises StoreUnavailable (503, background tasks retry) — not a raw sqlite3 error from a
    second ROLLBACK, not a StoreFault — and works again once there is room."""
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        seed(store)
        writer = store._connect()
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(StoreUnavailable) as full, store.transaction() as tx:
            for n in range(64):
                tx.add_tenant(Tenant(f"ten_big{n}", "x" * 4096))
        assert not isinstance(full.value, StoreFault), full.value
        writer.execute("PRAGMA max_page_count = 1073741823")
        with store.transaction() as tx:
            tx.add_tenant(Tenant("ten_2", "two"))
        with store.read_transaction() as tx:
            assert tx.get_tenant("ten_2") is not None and tx.get_tenant("ten_big0") is None
    finally:
        store.close()


def test_a_read_only_postgresql_server_is_an_outage_for_writes(postgres_dsn: str) -> None:
    """A write transaction refused because the server is read-only (a standby after a failover,
    ``default_transaction_read_only`` while storage is nearly full) is StoreUnavailable, not a StoreFault:
    it passes when the server is writable again."""
    store = PostgresStore(postgres_dsn)
    try:
        seed(store)
    finally:
        store.close()
    database = postgres_dsn.rsplit("/", 1)[1]
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    store = PostgresStore(postgres_dsn, migrate=False)
    try:
        with pytest.raises(StoreUnavailable) as refused, store.transaction() as tx:
            tx.add_tenant(Tenant("ten_2", "two"))
        assert not isinstance(refused.value, StoreFault), refused.value
    finally:
        store.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SET default_transaction_read_only = off")
            admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')


def test_liveness_settings_leave_a_named_service_alone() -> None:
    assert liveness_options("postgresql://h/db?service=prod") == {}
    assert liveness_options("service=prod dbname=x") == {}
    assert liveness_options("host=h dbname=x keepalives_idle=5")["tcp_user_timeout"] == "30000"
    assert "keepalives_idle" not in liveness_options("postgresql://h/db?keepalives_idle=5")


def test_the_audit_records_of_a_write_that_lost_its_race_stay_to_be_written(store: AnyStore) -> None:
    """``Persistence.commit``: a request's audit records leave its buffer only with a transaction that
    committed. A lost compare-and-swap — on PostgreSQL raised at the commit's round trip, after the records
    were handed to the transaction — leaves them for the retry, or for the failed request's own write:
    no key use goes unaudited."""
    seed(store)
    with store.transaction() as tx:
        tx.put_group(group(), None)
    persistence = Persistence(store, cast("Any", None), cast("Any", None))  # no keys made, none sealed
    scope = RequestScope([audit_record(1)])

    def ratchet(expected: int) -> PendingWrites:
        def write(tx: Transaction) -> None:
            tx.put_group_ratchet("idn_1", G, 2, b"r", expected)

        return PendingWrites([write])

    with pytest.raises(StaleState):
        persistence.commit(ratchet(7), Response(200, None), scope, group=G)
    assert scope.records == [audit_record(1)]
    with store.read_transaction() as tx:
        assert tx.audit_head() is None
    persistence.commit(ratchet(1), Response(200, None), scope, group=G)
    assert scope.records == []
    with store.read_transaction() as tx:
        head = tx.audit_head()
        assert head is not None and head[0] == 1
