"""A hosted member's lifecycle to the end, through a real server: removed by another member's commit (the
gateway applies the removal to it by itself), its state still reads (``active: false``, the removal's epoch)
after a restart, its group and the identity delete (204), and afterwards nothing of the identity is left —
no object in the token (counted by CKA_ID) and no row in the database (but the append-only audit trail).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gwclient import Client, GatewayServer, Hosted
from .token_objects import token_object_ids

DEADLINE_S = 60.0  # a deadlock guard: the gateway applies the log in the background


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GatewayServer]:
    """A server of its own that may register loopback webhooks (nothing listens there)."""
    gw = GatewayServer(tmp_path / "gw", env={"MLSGW_WEBHOOK_ALLOW_PRIVATE": "1"})
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()


def _until(member: Hosted, gid: str, done: str) -> dict[str, object]:
    """The member's view once the gateway took it there by itself (no processing call by the client)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = member.api.get(member.path(gid))
        if r.status == 200 and (r["epoch"] >= 1 if done == "joined" else r["active"] is False):
            return dict(r.body)
        assert time.monotonic() < deadline, f"{member.name} is at {r.status} {r.body} (waiting: {done})"
        time.sleep(0.05)


def _ids(server: GatewayServer) -> set[bytes]:
    return set(token_object_ids(server.data_dir))


def _rows_naming(db: Path, identity_id: str) -> dict[str, int]:
    """Rows of every table but the audit trail with a column equal to ``identity_id``."""
    found: dict[str, int] = {}
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table == "audit" or table.startswith("sqlite_"):
                continue
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            where = " OR ".join(f"{c} = ?" for c in columns)
            n = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", [identity_id] * len(columns))
            count = n.fetchone()[0]
            if count:
                found[table] = count
    return found


def _destroys(db: Path) -> Counter[bytes]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key_ref FROM audit WHERE operation = 'destroy' AND ok = 1").fetchall()
    return Counter(bytes(r[0]) for r in rows)


def _a_member_with_everything(api: Client, name: str) -> tuple[Hosted, str]:
    """A hosted identity with a spare and a last-resort KeyPackage, a group of its own (made with an
    Idempotency-Key, which stores the response), a webhook, and one KeyPackage to be added with."""
    member = Hosted.create(api, name)
    member.api.key_packages(member.identity_id, 1)
    member.api.key_packages(member.identity_id, 1, last_resort=True)
    own = member.api.post(member.path(), {}, idem=f"{name}-own-group").expect(201)
    member.api.request(
        "PUT",
        f"/v1/identities/{member.identity_id}/webhook",
        {"url": "http://127.0.0.1:9/hook", "secret": "s" * 32},
    ).expect(200)
    assert own["epoch"] == 0
    return member, member.key_package()


def test_removed_members_read_and_delete_to_the_last_key(server: GatewayServer) -> None:
    db = server.data_dir / "gateway.sqlite3"
    api = server.client(server.admin.create_tenant("lifecycle")[1])
    alice = Hosted.create(api, "alice")
    gid = alice.create_group()
    before_members = _ids(server)
    bob, bob_kp = _a_member_with_everything(api, "bob")
    carol, carol_kp = _a_member_with_everything(api, "carol")
    theirs = _ids(server) - before_members  # every key bob and carol hold (alice did nothing meanwhile)
    assert len(theirs) == 2 * 8  # each: its signature key, 3 KeyPackages' init and leaf keys, a leaf key
    alice.commit(gid, {"add": [bob_kp, carol_kp]})
    for m in (bob, carol):
        _until(m, gid, "joined")
    removal = alice.commit(gid, {"remove": [1, 2]})
    assert removal["epoch"] == 2
    for m in (bob, carol):
        view = _until(m, gid, "removed")
        assert (view["active"], view["epoch"]) == (False, 2)

    # From the database, not the state cache: the removed state reads, and shows its removal.
    server.restart()
    for m in (bob, carol):
        view = m.group(gid)
        assert (view["active"], view["epoch"]) == (False, 2)
        listed = {g["group_id"]: g["epoch"] for g in m.api.get(m.path()).expect(200)["groups"]}
        assert listed[view["group_id"]] == 2
    destroyed = _destroys(db)
    server.stop()
    before_deletes = _ids(server)
    server.start()
    # The KeyPackage each joined with is gone (init key at the join, leaf key with the removal); the
    # signature key, the spare and last-resort KeyPackages and the own group's leaf key are left.
    assert len(before_deletes & theirs) == 2 * 6

    # bob: leaves the group first (its keys died with the removal: nothing more to destroy), then goes.
    bob.api.delete(bob.path(gid)).expect(204)
    assert bob.api.get(bob.path(gid)).status == 404
    assert _destroys(db) == destroyed
    # carol: goes at once, with the removed membership still there.
    for m in (bob, carol):
        api.delete(f"/v1/identities/{m.identity_id}").expect(204)
        assert api.get(f"/v1/identities/{m.identity_id}").status == 404
    assert max(_destroys(db).values()) == 1  # no key destroyed twice
    alice.send(gid, b"still here")  # the remaining member is unaffected

    server.stop()
    after = _ids(server)
    assert not (after & theirs)  # nothing of either identity is left in the token
    assert after == before_deletes - theirs  # and nothing of anyone else went
    for m in (bob, carol):
        assert _rows_naming(db, m.identity_id) == {}
