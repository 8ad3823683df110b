"""The tamper-evident audit chain, end to end: a real ``mls-gateway serve`` on SoftHSM and SQLite runs a
workload (hosted identities, a group, messages), then ``mls-gateway audit verify`` passes on its data
folder and on its exports — and fails, naming the record, once one row is edited, deleted, swapped with
another or the chain is cut before the last checkpoint. The checkpoint signatures are checked by a
standalone program that uses only ``cryptography`` and the exported public key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit_chain import ChainBroken, hash_template, record_hash, verify
from gateway.audit_trail import export_lines
from gateway.postgres_store import PostgresStore
from gateway.sqlite_store import SqliteStore
from gateway.store import AuditRecord

from .conftest import StoreEnv
from .gwclient import GatewayServer, Hosted
from .stores import database_url

REPO = Path(__file__).resolve().parents[2]
#: The chain and its checkpoints, written by a server on either store (issue 15); the tampering tests
#: edit a copy of a SQLite data folder.
pytestmark = pytest.mark.both_stores
TAMPERING = "tampering edits a copy of a SQLite data folder; verify reads the same rows on PostgreSQL"
DROP_TRIGGERS = (
    "DROP TRIGGER IF EXISTS audit_erase_only; DROP TRIGGER IF EXISTS audit_append_only_delete; "
    "DROP TRIGGER IF EXISTS audit_append_only_update;"
)


def cli(*args: str, timeout: float = 120, database: str | None = None) -> subprocess.CompletedProcess[str]:
    """``mls-gateway ARGS`` (``database``: the ``postgresql://`` URL of the store, else the data folder's)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLSGW_LOG_LEVEL": "WARNING"}
    for var in ("MLSGW_CONFIG", "MLSGW_DATA_DIR", "MLSGW_LISTEN", "MLSGW_DATABASE", "SOFTHSM2_CONF"):
        env.pop(var, None)
    if database is not None:
        env["MLSGW_DATABASE"] = database
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def verify_folder(folder: Path, pem: Path, database: str | None = None) -> subprocess.CompletedProcess[str]:
    return cli("audit", "verify", "--data-dir", str(folder), "--public-key", str(pem), database=database)


def export(folder: Path, out: Path, *extra: str, database: str | None = None) -> list[dict[str, Any]]:
    done = cli("audit", "export", "--data-dir", str(folder), "--out", str(out), *extra, database=database)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def broken(done: subprocess.CompletedProcess[str], seq: int, *words: str) -> None:
    """``audit verify`` failed with exit 1 and one line naming record ``seq`` (and ``words``)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"record seq {seq}:" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


@dataclass(frozen=True)
class Workload:
    folder: Path
    pem: Path
    tenant_id: str
    last_seq: int
    checkpoints: list[int]
    #: The ``postgresql://`` URL of its store, or None (the folder's SQLite file).
    database: str | None


def wait_for_checkpoints(server: GatewayServer, count: int) -> None:
    deadline = time.monotonic() + 60
    while server.admin.metric("mlsgw_audit_checkpoints_total") < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.admin.metric("mlsgw_audit_checkpoints_total") >= count


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory, store_env: StoreEnv) -> Iterator[Workload]:
    """A workload on a real server (checkpoints every 5 records), stopped cleanly (a last checkpoint)."""
    root = tmp_path_factory.mktemp("audit")
    server = GatewayServer(root / "gw", env={"MLSGW_AUDIT_CHECKPOINT_RECORDS": "5", **store_env()})
    database = database_url(server)
    server.start()
    try:
        tenant_id, token = server.admin.create_tenant("acme")
        _, other_token = server.admin.create_tenant("other")
        api = server.client(token)
        alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
        Hosted.create(server.client(other_token), "olga").key_package()
        gid = alice.create_group()
        welcome = alice.commit(gid, {"add": [bob.key_package()]})["welcome"]
        bob.join(welcome)
        for phase in (1, 2):
            for i in range(6):  # a signature each: over 5 new records per phase
                bob.process(gid, alice.send(gid, b"hello %d" % i))
            wait_for_checkpoints(server, phase)  # by count, while serving
        alice.send(gid, b"after the last periodic checkpoint")
    finally:
        assert server.stop() == 0, server.log_tail()
    pem = root / "audit.pem"
    done = cli(
        "audit", "public-key", "--data-dir", str(server.data_dir), "--out", str(pem), database=database
    )
    assert done.returncode == 0, done.stderr
    lines = export(server.data_dir, root / "all.jsonl", database=database)
    records = [line for line in lines if line["type"] == "record"]
    checkpoints = [line["seq"] for line in lines if line["type"] == "checkpoint"]
    yield Workload(server.data_dir, pem, tenant_id, records[-1]["seq"], checkpoints, database)


@pytest.fixture
def copy(workload: Workload, tmp_path: Path) -> Path:
    """A copy of the workload's data folder, to tamper with."""
    folder = tmp_path / "copy"
    shutil.copytree(workload.folder, folder)
    return folder


def tamper(folder: Path, sql: str) -> None:
    conn = sqlite3.connect(folder / "gateway.sqlite3")
    try:
        conn.executescript(DROP_TRIGGERS + sql)
    finally:
        conn.close()


def test_the_workload_verifies_and_says_who_did_what(workload: Workload, tmp_path: Path) -> None:
    done = verify_folder(workload.folder, workload.pem, workload.database)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["records"] == summary["last_seq"] == workload.last_seq > 20
    # Checkpoints by count while serving, and one over the head at shutdown.
    assert len(workload.checkpoints) >= 3 and workload.checkpoints[-1] == workload.last_seq
    assert summary["records_after_last_checkpoint"] == 0
    records = [
        r
        for r in export(workload.folder, tmp_path / "e.jsonl", database=workload.database)
        if r["type"] == "record"
    ]
    tenant_rows = [r for r in records if r["tenant_id"] == workload.tenant_id]
    # Every key use of a tenant's request names the caller's token; KeyPackage keys name their identity.
    assert tenant_rows and all(r["token_id"] and r["token_id"].startswith("tok_") for r in tenant_rows)
    generated = [r for r in tenant_rows if r["operation"] == "generate"]
    assert generated and all(r["identity_id"] and r["identity_id"].startswith("idn_") for r in generated)
    in_group = [r for r in tenant_rows if r["group_id"] is not None]
    assert any(r["epoch"] == 1 and r["operation"] == "sign" for r in in_group)
    assert [r["seq"] for r in records] == list(range(1, workload.last_seq + 1))


def test_a_tenant_export_shows_its_records_and_still_verifies(workload: Workload, tmp_path: Path) -> None:
    out = tmp_path / "tenant.jsonl"
    lines = export(workload.folder, out, "--tenant", workload.tenant_id, database=workload.database)
    records = [line for line in lines if line["type"] == "record"]
    links = [line for line in lines if line["type"] == "link"]
    assert records and links and all(r["tenant_id"] == workload.tenant_id for r in records)
    assert all(set(link) == {"type", "seq", "prev_hash", "hash"} for link in links)
    done = cli("audit", "verify", "--file", str(out), "--public-key", str(workload.pem))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"] == len(records)
    # A window from the middle of the chain verifies from its anchor to the checkpoints it holds.
    since = records[len(records) // 2]["at"]
    window = tmp_path / "window.jsonl"
    part = export(workload.folder, window, "--since", str(since), database=workload.database)
    assert part[0]["from_seq"] > 1 and part[1]["seq"] == part[0]["from_seq"]
    done = cli("audit", "verify", "--file", str(window), "--public-key", str(workload.pem))
    assert done.returncode == 0, done.stderr


@pytest.mark.sqlite_only(
    "tampering edits a copy of the data folder's SQLite file; verify reads the same rows on both"
)
def test_an_edited_field_is_named(workload: Workload, copy: Path) -> None:
    seq = workload.checkpoints[0] - 1
    # Another operation than the record's own (which record precedes the first checkpoint depends on when
    # the checkpointer ticked: it may be a 'destroy' already, and setting 'destroy' would change nothing).
    tamper(
        copy,
        "UPDATE audit SET operation = CASE WHEN operation = 'destroy' THEN 'sign' ELSE 'destroy' END "
        f"WHERE seq = {seq};",
    )
    broken(verify_folder(copy, workload.pem), seq, "changed")


@pytest.mark.sqlite_only(
    "tampering edits a copy of the data folder's SQLite file; verify reads the same rows on both"
)
def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(workload: Workload, copy: Path) -> None:
    seq = 3
    conn = sqlite3.connect(copy / "gateway.sqlite3")
    conn.row_factory = sqlite3.Row
    try:
        conn.executescript(DROP_TRIGGERS)
        row = dict(conn.execute("SELECT * FROM audit WHERE seq = ?", (seq,)).fetchone())
        row["ok"] = 0
        conn.execute("UPDATE audit SET ok = 0, hash = ? WHERE seq = ?", (record_hash(row), seq))
        conn.commit()
    finally:
        conn.close()
    broken(verify_folder(copy, workload.pem), seq + 1, "does not link")


@pytest.mark.sqlite_only(
    "tampering edits a copy of the data folder's SQLite file; verify reads the same rows on both"
)
def test_a_deleted_row_is_named(workload: Workload, copy: Path) -> None:
    tamper(copy, "DELETE FROM audit WHERE seq = 7;")
    broken(verify_folder(copy, workload.pem), 7, "missing")


@pytest.mark.sqlite_only(
    "tampering edits a copy of the data folder's SQLite file; verify reads the same rows on both"
)
def test_swapped_rows_are_named(workload: Workload, copy: Path) -> None:
    tamper(
        copy,
        "UPDATE audit SET seq = -1 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 9; "
        "UPDATE audit SET seq = 9 WHERE seq = -1;",
    )
    broken(verify_folder(copy, workload.pem), 4)


@pytest.mark.sqlite_only(
    "tampering edits a copy of the data folder's SQLite file; verify reads the same rows on both"
)
def test_a_chain_cut_before_the_last_checkpoint_is_named(workload: Workload, copy: Path) -> None:
    keep = workload.checkpoints[-1] - 3
    tamper(copy, f"DELETE FROM audit WHERE seq > {keep};")
    broken(verify_folder(copy, workload.pem), keep + 1, "cut")


@pytest.mark.sqlite_only("it edits an export file: the same file whichever store it came from")
def test_an_edited_or_reordered_export_is_named(workload: Workload, tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    lines = export(workload.folder, out, database=workload.database)
    edited = [dict(line) for line in lines]
    edited[5]["identity_id"] = "idn_someone_else"
    out.write_text("".join(json.dumps(line) + "\n" for line in edited))
    done = cli("audit", "verify", "--file", str(out), "--public-key", str(workload.pem))
    broken(done, edited[5]["seq"], "changed")
    swapped = list(lines)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    out.write_text("".join(json.dumps(line) + "\n" for line in swapped))
    done = cli("audit", "verify", "--file", str(out), "--public-key", str(workload.pem))
    broken(done, lines[3]["seq"], "missing")


STANDALONE = """
import json, sys
from cryptography.hazmat.primitives.serialization import load_pem_public_key

key = load_pem_public_key(open(sys.argv[1], "rb").read())
count = 0
for line in open(sys.argv[2]):
    item = json.loads(line)
    if item["type"] != "checkpoint":
        continue
    message = "mlsgw-audit-checkpoint/v1\\n%d\\n%s\\n%d\\n" % (item["seq"], item["head"], item["at_ms"])
    key.verify(bytes.fromhex(item["signature"]), message.encode())  # raises InvalidSignature
    count += 1
print(count)
"""


def test_checkpoint_signatures_verify_with_only_cryptography(workload: Workload, tmp_path: Path) -> None:
    script = tmp_path / "check_checkpoints.py"
    script.write_text(STANDALONE)
    out = tmp_path / "all.jsonl"
    lines = export(workload.folder, out, database=workload.database)
    env = {"PATH": os.environ.get("PATH", "")}  # no PYTHONPATH: the gateway's code is not importable
    done = subprocess.run(
        [sys.executable, str(script), str(workload.pem), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(workload.checkpoints) >= 3
    forged = [dict(line) for line in lines]
    cp = next(line for line in forged if line["type"] == "checkpoint")
    cp["seq"] += 1  # a signature over another seq does not cover this one
    out.write_text("".join(json.dumps(line) + "\n" for line in forged))
    done = subprocess.run(
        [sys.executable, str(script), str(workload.pem), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "InvalidSignature" in done.stderr


# ---- the chain in the store, in process (real SQLite and PostgreSQL) ---------------------------------------

AnyStore = SqliteStore | PostgresStore


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[AnyStore]]:
    """Two stores on one database, as two processes would have (PostgreSQL: the session's cluster)."""
    stores: list[AnyStore]
    if request.param == "sqlite":
        stores = [SqliteStore(tmp_path / "gateway.sqlite3"), SqliteStore(tmp_path / "gateway.sqlite3")]
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        stores = [PostgresStore(dsn), PostgresStore(dsn)]
    yield stores
    for store in stores:
        store.close()


def _record(n: int) -> AuditRecord:
    """Records whose hashed encoding varies: absent and present fields, non-ASCII text, bytes, numbers."""
    return AuditRecord(
        f"req-{n}",
        "tnt_a",
        None if n % 2 else f"idn_\u00e9{n}",
        None if n % 3 else b"\x00group%d" % n,
        None if n % 5 else n * 7,
        b"k%d" % n,
        "sign",
        "pkcs11",
        bool(n % 4),
        "tok_1",
        None if n % 3 else json.dumps({"n": n, "why": '\u2603 "quoted" \\ back'}, ensure_ascii=False),
    )


def test_concurrent_writers_make_one_chain(two_stores: list[AnyStore]) -> None:
    """Writers on several connections (threads, and a second store on the same database as another process
    would be) append concurrently — on PostgreSQL in transactions scoped to different groups, which link
    their records to the chain's head in the database (gateway/postgres_audit.py): the chain is one line,
    every record in it, in commit order, each record's hash the one its fields give."""

    def write(n: int) -> None:
        with two_stores[n % 2].transaction(b"group-%d" % (n % 4)) as tx:
            tx.add_audit([_record(n)] * (1 + n % 3))

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(write, range(120)))
    lines = list(export_lines(two_stores[0]))
    result = verify(lines, Ed25519PrivateKey.generate().public_key())
    assert result.records == result.last_seq == sum(1 + n % 3 for n in range(120))
    # Each transaction's records are adjacent: nothing of another writer came between them.
    requests = [line["request_id"] for line in lines[1:]]
    runs = [r for i, r in enumerate(requests) if i == 0 or requests[i - 1] != r]
    assert sorted(runs) == sorted(f"req-{n}" for n in range(120))


def test_records_from_before_the_chain_are_reported_not_refused(two_stores: list[AnyStore]) -> None:
    """A database upgraded from a schema without the chain keeps its old records (no hash); the chain
    starts after them and verifies; an unchained record after the chain's start is refused."""
    store = two_stores[0]
    legacy = (
        "INSERT INTO audit (seq, at, request_id, key_ref, operation, custody, ok) "
        "VALUES (?, 1.0, 'old', ?, 'sign', 'pkcs11', 1)"
    )
    key = Ed25519PrivateKey.generate().public_key()
    with store.transaction() as tx:
        tx._c.execute(legacy, (1, b"\x01"))
        tx._c.execute(legacy, (2, b"\x01"))
    with store.transaction(b"group-1") as tx:
        tx.add_audit([AuditRecord("new", None, None, None, None, b"k", "sign", "pkcs11", True)] * 2)
    result = verify(list(export_lines(store)), key)
    assert (result.legacy, result.records, result.last_seq) == (2, 2, 4)
    with store.transaction() as tx:
        tx._c.execute(legacy, (5, b"\x01"))
    try:
        verify(list(export_lines(store)), key)
    except ChainBroken as e:
        assert e.seq == 5 and "unchained" in str(e)
    else:
        raise AssertionError("an unchained record after the chain's start verified")


_TEXT = st.none() | st.text(max_size=40)


@given(
    fields=st.fixed_dictionaries(
        {
            "at": st.floats(allow_nan=False, allow_infinity=False),
            "request_id": st.text(max_size=40),
            "tenant_id": _TEXT,
            "identity_id": _TEXT,
            "token_id": _TEXT,
            "group_id": st.none() | st.binary(max_size=40),
            "epoch": st.none() | st.integers(0, 2**63 - 1),
            "key_ref": st.binary(max_size=40),
            "operation": st.text(max_size=20),
            "custody": st.text(max_size=20),
            "ok": st.integers(0, 1),
            "detail": _TEXT,
        }
    ),
    seq=st.integers(1, 2**63 - 1),
    prev=st.binary(min_size=32, max_size=32),
)
def test_the_hash_template_is_the_record_hash_cut_around_its_link(
    fields: dict[str, Any], seq: int, prev: bytes
) -> None:
    """What PostgreSQL hashes when it links a record (gateway/postgres_audit.py) is what the verifier
    hashes: the template with the head's ``prev_hash`` (hex) and ``seq`` put in."""
    a, b, c = hash_template(fields)
    linked = hashlib.sha256(a + prev.hex().encode() + b + str(seq).encode() + c).digest()
    assert linked == record_hash({**fields, "seq": seq, "prev_hash": prev})


@pytest.mark.sqlite_only(
    "tampering edits a copy of the data folder's SQLite file; verify reads the same rows on both"
)
def test_a_chain_cut_with_its_checkpoints_fails_against_an_earlier_export(
    workload: Workload, copy: Path, tmp_path: Path
) -> None:
    """Cutting the records and the checkpoints over them leaves a chain that verifies alone; the
    checkpoints of an export kept elsewhere still name the first record cut."""
    earlier = tmp_path / "earlier.jsonl"
    export(workload.folder, earlier, database=workload.database)
    keep = workload.checkpoints[0] + 1
    tamper(copy, f"DELETE FROM audit WHERE seq > {keep}; DELETE FROM audit_checkpoints WHERE seq > {keep};")
    assert verify_folder(copy, workload.pem).returncode == 0  # what a local check alone cannot see
    done = cli(
        "audit",
        "verify",
        "--data-dir",
        str(copy),
        "--public-key",
        str(workload.pem),
        "--checkpoints",
        str(earlier),
    )
    broken(done, keep + 1, "cut")


def test_unreadable_inputs_are_one_line_each(tmp_path: Path) -> None:
    """A missing file, a key that is not a PEM public key and an export that is not JSON lines: exit 1,
    one line, no traceback (README, "Operating")."""
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    text = tmp_path / "export.jsonl"
    text.write_text("not json\n")
    for args, words in (
        (("--file", str(text), "--public-key", str(tmp_path / "none.pem")), ("cannot read",)),
        (("--file", str(tmp_path / "none.jsonl"), "--public-key", str(pem)), ("audit public key",)),
        (("--file", str(text), "--public-key", str(pem)), ("not a PEM public key",)),
    ):
        done = cli("audit", "verify", *args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert all(word in lines[0] for word in words), lines[0]
    good = Ed25519PrivateKey.generate().public_key()
    pem.write_bytes(
        good.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    done = cli("audit", "verify", "--file", str(text), "--public-key", str(pem))
    assert done.returncode == 1 and "line 1 is not JSON" in done.stderr, done.stderr
