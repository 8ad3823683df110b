"""Reconciliation of orphaned keys against a real server (``gateway.reconciliation``).

1. ``kill -9`` in the middle of a 100-KeyPackage batch leaves private keys no record references (and,
   planted beside them, software keys at rest that nothing references). A dry run lists them and destroys
   nothing; the restarted server's periodic reconciliation (a short interval and grace: destroyed on a
   later pass than the one that first saw them) destroys exactly those, counted in
   ``mlsgw_hsm_orphans_destroyed_total``; then the token holds exactly the keys the database references.
2. A busy gateway (groups, a pending commit, own Update proposals, last-resort KeyPackages in two groups,
   a removed member), reconciled while requests run and then once more with no grace: nothing is
   destroyed and every member still sends, processes and exports in agreement.

Token objects are counted by a subprocess (``tests/gateway/key_inventory.py``) with a search under the
object-store guard, while the server is stopped.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .gwclient import GATEWAY_EXE, REPO, Client, GatewayServer, Hosted, unb64

FAST_RECONCILE = {"MLSGW_RECONCILE_INTERVAL_S": "0.3", "MLSGW_RECONCILE_GRACE_S": "1.5"}


def _run(server: GatewayServer, argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        argv, capture_output=True, text=True, env=server.env, cwd=REPO, timeout=300, check=False
    )
    assert out.returncode == 0, f"{argv[:4]} failed ({out.returncode}): {out.stderr[-3000:]}"
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def inventory(server: GatewayServer) -> dict[str, Any]:
    assert not server.running
    return _run(server, [sys.executable, "-m", "tests.gateway.key_inventory", "count", str(server.data_dir)])


def plant_software_orphans(server: GatewayServer, n: int) -> list[str]:
    argv = [sys.executable, "-m", "tests.gateway.key_inventory", "plant", str(server.data_dir), str(n)]
    return list(_run(server, argv)["planted"])


def reconcile_cli(server: GatewayServer, *flags: str) -> dict[str, Any]:
    argv = [str(GATEWAY_EXE), "keys", "reconcile", "--data-dir", str(server.data_dir), "--json", *flags]
    return _run(server, argv)


def token_ids(inv: dict[str, Any]) -> set[str]:
    """Key references of the token's private and public key objects (each pair shares one)."""
    return set(inv["token"]["private"]) | set(inv["token"]["public"])


def object_files(server: GatewayServer) -> int:
    return len(list((server.data_dir / "softhsm" / "tokens").glob("*/*.object")))


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def kill_during_batch(server: GatewayServer, api: Client, identity_id: str) -> None:
    """POST 100 KeyPackages in a thread and kill -9 the server once the token holds ≥ 40 new objects."""
    before = object_files(server)
    outcome: list[Any] = []

    def batch() -> None:
        try:
            outcome.append(api.post(f"/v1/identities/{identity_id}/key-packages", {"count": 100}).status)
        except (OSError, http.client.HTTPException) as e:
            outcome.append(e)

    thread = threading.Thread(target=batch)
    thread.start()
    wait_for(lambda: object_files(server) >= before + 40 or outcome, 120, "keys of the batch")
    server.kill()
    thread.join(60)
    assert outcome and not isinstance(outcome[0], int), f"the batch finished before the kill: {outcome}"


@pytest.fixture
def server(tmp_path: Path) -> Any:
    made = GatewayServer(tmp_path / "gw")
    try:
        made.start()
        yield made
    finally:
        made.kill()


def test_kill_during_key_package_batch_then_reconcile(server: GatewayServer) -> None:
    api = server.client(server.admin.create_tenant("reconcile")[1])
    owner = Hosted.create(api, "owner")
    api.key_packages(owner.identity_id, 3)
    owner.key_package(last_resort=True)
    kill_during_batch(server, api, owner.identity_id)
    planted = set(plant_software_orphans(server, 5))

    before = inventory(server)
    db = before["database"]
    referenced = set(db["signature"]) | set(db["key_packages"])
    token_orphans = token_ids(before) - referenced
    assert len(referenced) == 1 + 2 * 4 and referenced <= token_ids(before)
    assert len(token_orphans) >= 20 and set(db["software"]) == planted

    dry = reconcile_cli(server, "--dry-run", "--grace-s", "0")  # (3) a dry run destroys nothing
    assert dry["dry_run"] and dry["orphans"] == {"token": len(token_orphans), "software": 5, "wrapped": 0}
    assert set(dry["destroyed_refs"]) == token_orphans | planted
    assert inventory(server) == before

    server.env.update(FAST_RECONCILE)
    server.start()
    wait_for(
        lambda: (
            api.metric("mlsgw_hsm_orphans_destroyed_total", kind="token") >= len(token_orphans)
            and api.metric("mlsgw_hsm_orphans_destroyed_total", kind="software") >= 5
        ),
        120,
        "the periodic reconciliation",
    )
    assert api.metric("mlsgw_hsm_orphans_destroyed_total", kind="token") == len(token_orphans)
    assert api.metric("mlsgw_hsm_orphans_destroyed_total", kind="software") == 5
    server.stop()

    after = inventory(server)
    assert token_ids(after) == referenced, "the token holds exactly the referenced keys"
    assert set(after["token"]["private"]) == set(after["token"]["public"]) == referenced
    assert after["database"]["software"] == [] and len(after["token"]["secret"]) == 2  # wrap key, KEK
    assert len(after["token"]["audit"]) == 2  # the audit key pair (hsm.audit_key) is never an orphan
    assert reconcile_cli(server, "--grace-s", "0")["orphans"] == {"token": 0, "software": 0, "wrapped": 0}

    server.start()
    member = Hosted.create(api, "member")
    gid = owner.create_group()
    member.join(owner.commit(gid, {"add": [member.key_package()]})["welcome"])
    assert unb64(member.process(gid, owner.send(gid, b"after"))["data"]) == b"after"
    assert member.export(gid) == owner.export(gid)


def outage_during_batches(server: GatewayServer, parked: Path, owners: list[list[Hosted]]) -> list[Any]:
    """One thread per list of owners, posting 100-KeyPackage batches for them in turn until one is not
    answered 201. Once every thread has had a batch answered (each is then in the middle of another) and
    the token holds ≥ 10 more objects than when the first thread's last batch was answered (its keys are
    token objects: its batch in flight has made some), the token's folder is moved away — SoftHSM then has
    no token: the HSM is gone — until every thread stopped; then it is put back. Returns each thread's
    last answer."""
    (token_dir,) = [p for p in (server.data_dir / "softhsm" / "tokens").iterdir() if p.is_dir()]
    before = object_files(server)
    done = [0] * len(owners)
    last: list[Any] = [None] * len(owners)
    answered_at = [before]  # the token's object count when the first thread's last batch was answered

    def batches(n: int) -> None:
        try:
            for i in range(1000):
                owner = owners[n][i % len(owners[n])]
                reply = owner.api.post(f"/v1/identities/{owner.identity_id}/key-packages", {"count": 100})
                last[n] = (reply.status, reply.code, reply.body if reply.status != 201 else None)
                if reply.status != 201:
                    return
                if n == 0:
                    answered_at[0] = object_files(server)
                done[n] += 1
        except (OSError, http.client.HTTPException) as e:
            last[n] = e

    threads = [threading.Thread(target=batches, args=(n,)) for n in range(len(owners))]
    for t in threads:
        t.start()
    wait_for(
        lambda: (
            (all(done) and object_files(server) >= answered_at[0] + 10)
            or any(x is not None and x[0] != 201 for x in last if isinstance(x, tuple))
        ),
        120,
        "keys of the batches",
    )
    token_dir.rename(parked)
    try:
        for t in threads:
            t.join(120)
    finally:
        parked.rename(token_dir)
    return last


def test_an_hsm_outage_cutting_key_package_batches_leaves_no_orphan(
    server: GatewayServer, tmp_path: Path
) -> None:
    """The HSM goes away in the middle of two KeyPackage batches — X25519/Ed25519 keys, token objects, and
    P-256 keys held wrapped — which answer 503: after a restart the reconciliation destroys what they left,
    and then nothing is orphaned, token objects and wrapped blobs both counted, and nothing referenced is
    missing."""
    api = server.client(server.admin.create_tenant("outage")[1])  # wrapped custody, the default
    token_kept = [Hosted.create(api, "x25519", cipher_suite=1)]
    wrapped = [Hosted.create(api, f"p256-{n}", cipher_suite=2) for n in range(10)]  # quotas: fast batches
    outcome = outage_during_batches(server, tmp_path / "parked-token", [token_kept, wrapped])
    assert [x[:2] for x in outcome] == [(503, "hsm_unavailable")] * 2, json.dumps(outcome)
    server.stop()

    stopped = inventory(server)
    referenced = set(stopped["database"]["signature"]) | set(stopped["database"]["key_packages"])
    dry = reconcile_cli(server, "--dry-run", "--grace-s", "0")
    assert dry["orphans"]["token"] == len(token_ids(stopped) - referenced) > 0, dry["orphans"]  # the debris
    server.env.update(FAST_RECONCILE)
    server.start()
    wait_for(
        lambda: api.metric("mlsgw_hsm_orphans_destroyed_total", kind="token") >= dry["orphans"]["token"],
        120,
        "the periodic reconciliation",
    )
    server.stop()
    after = reconcile_cli(server, "--dry-run", "--grace-s", "0")
    assert after["orphans"] == {"token": 0, "software": 0, "wrapped": 0}, after
    assert token_ids(inventory(server)) <= referenced, "the token holds referenced keys only"
    missing = [sys.executable, "-m", "tests.gateway.key_inventory", "missing", str(server.data_dir)]
    assert _run(server, missing)["missing"] == []

    server.start()  # both kinds of owner still work: new KeyPackages, a group, a message
    for owner, suite in ((token_kept[0], 1), (wrapped[0], 2)):
        member = Hosted.create(api, f"member of {owner.name}", cipher_suite=suite)
        gid = owner.create_group()
        member.join(owner.commit(gid, {"add": [member.key_package()]})["welcome"])
        assert unb64(member.process(gid, owner.send(gid, b"after the outage"))["data"]) == b"after the outage"


def busy_groups(api: Client) -> tuple[list[Hosted], list[str], str]:
    """Two groups of four hosted members, a last-resort KeyPackage in both, a removed member, an own Update
    proposal and a pending commit left in place (its message is returned)."""
    owner, *others = (Hosted.create(api, n) for n in ("owner", "lr", "b", "gone"))
    last_resort = others[0].key_package(last_resort=True)
    groups = []
    for _ in range(2):
        gid = owner.create_group()
        kps = [last_resort, others[1].key_package(), others[2].key_package()]
        welcome = owner.commit(gid, {"add": kps})["welcome"]
        for m in others:
            m.join(welcome)
        groups.append(gid)
    g1, g2 = groups
    removal = owner.commit(g1, {"remove": [3]})
    for m in others:
        m.process(g1, removal["commit"])
    others[0].post(g1, "/proposals", {"type": "update"}).expect(201)
    pending = others[1].commit(g2, {"update": True, "pending": True})["commit"]
    return [owner, *others], groups, pending


def check_groups_work(members: list[Hosted], groups: list[str], pending: str) -> None:
    owner, lr, b, gone = members
    g1, g2 = groups
    assert b.group(g2)["pending_commit"]
    for m in (owner, lr, gone):
        m.process(g2, pending)  # b's staged commit, carried to the log: b merges it when it takes the log
    commit = owner.commit(g1, {"update": True})
    for m in (lr, b):
        m.process(g1, commit["commit"])
    c2 = owner.commit(g2, {"update": True})
    for m in (lr, b, gone):
        m.process(g2, c2["commit"])
    for gid, group_members in ((g1, (owner, lr, b)), (g2, (owner, lr, b, gone))):
        sender, *receivers = group_members
        msg = sender.send(gid, b"still here")
        for r in receivers:
            assert unb64(r.process(gid, msg)["data"]) == b"still here"
            assert r.export(gid) == sender.export(gid)
            assert r.state(gid) == sender.state(gid)


def test_busy_gateway_loses_no_referenced_key(tmp_path: Path) -> None:
    server = GatewayServer(tmp_path / "gw", env={**FAST_RECONCILE, "MLSGW_LOG_LEVEL": "INFO"})
    try:
        server.start()
        api = server.client(server.admin.create_tenant("busy")[1])
        members, groups, pending = busy_groups(api)
        runs = server.log_tail(10**7).count("key reconciliation:")
        wait_for(
            lambda: server.log_tail(10**7).count("key reconciliation:") >= runs + 8, 120, "reconciliations"
        )
        assert api.metric("mlsgw_hsm_orphans_destroyed_total") == 0
        server.stop()
        report = reconcile_cli(server, "--grace-s", "0")
        assert (
            report["orphans"] == {"token": 0, "software": 0, "wrapped": 0} and report["destroyed_refs"] == []
        )
        server.start()
        check_groups_work(members, groups, pending)
    finally:
        server.kill()
