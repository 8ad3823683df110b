"""End to end against a real ``mls-gateway serve`` (SQLite + its own SoftHSM2 token), over HTTP only.

The main flow is the gateway issue's: two tenants, hosted identities of both in one group with a ts-mls
member whose KeyPackage is added through the API, messages and commits both ways, update, remove,
exporter agreement, then a graceful restart (SIGTERM, exit 0) after which the same groups carry on with
unchanged epochs and authenticators. The other tests cover one part of the contract each: idempotency
(also under concurrent repeats), per-group serialisation, pending commits, batches, external joins and
resync, proposals by reference, deletes, the OpenAPI document, metrics, readiness and problem documents.

"""

from __future__ import annotations

import base64
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gateway.api import ROUTES
from tests.interop.ts_mls_peer import TsMlsPeer

from .gwclient import Client, GatewayServer, Hosted, b64, unb64

#: The api-v1 basics, idempotency, per-group serialisation and the restart hold on both stores (issue 15).
pytestmark = pytest.mark.both_stores

_n = iter(range(1_000_000))


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_n)}"


def tenant(server: GatewayServer, name: str) -> Client:
    return server.client(server.admin.create_tenant(name)[1])


def agree(
    gid: str, members: list[Hosted], peer: TsMlsPeer | None = None, peer_client: str | None = None
) -> tuple[int, str]:
    """All hosted members (and the ts-mls member) are at the same epoch with the same authenticator."""
    states = {m.name: m.state(gid) for m in members}
    assert len(set(states.values())) == 1, f"members disagree: {states}"
    epoch, auth = next(iter(states.values()))
    if peer is not None:
        assert peer_client is not None
        assert peer.epoch_authenticator(peer_client) == (unb64(auth), epoch)
    return epoch, auth


def found_group(owner: Hosted, joiners: list[Hosted]) -> str:
    """``owner`` creates a group and adds ``joiners`` (each joins from the Welcome): epoch 1."""
    gid = owner.create_group()
    c = owner.commit(gid, {"add": [j.key_package() for j in joiners]})
    assert c["epoch"] == 1 and c["welcome"]
    for j in joiners:
        assert j.join(c["welcome"])["epoch"] == 1
    return gid


def hsm_sign_count(server: GatewayServer) -> float:
    return server.client().metric("mlsgw_hsm_operations_total", operation="sign")


# ---- the flow ------------------------------------------------------------------------------------


@pytest.mark.sqlite_only(
    "costly (ts-mls, restart); test_postgres_e2e.py runs the api-v1 basics and a restart on PostgreSQL"
)
def test_two_tenants_ts_mls_member_and_restart(gateway: GatewayServer, ts_mls_peer: TsMlsPeer) -> None:
    peer = ts_mls_peer
    acme, globex = tenant(gateway, "acme"), tenant(gateway, "globex")
    alice, bob = Hosted.create(acme, "alice"), Hosted.create(acme, "bob")
    carol = Hosted.create(globex, "carol", credential={"type": "basic", "identity": b64(b"carol@globex")})
    got = globex.get(f"/v1/identities/{carol.identity_id}").expect(200).body
    assert got["credential"] == {"type": "basic", "identity": b64(b"carol@globex")}
    assert got["custody"]["signature"] == "pkcs11"
    tess = fresh("tess")
    peer.new_client(tess, b"tess", 1)

    # Alice's group: bob (same tenant), carol (other tenant) and tess (ts-mls) added in one commit.
    gid = alice.create_group()
    kp_tess = peer.key_package(tess)
    c = alice.commit(gid, {"add": [bob.key_package(), carol.key_package(), b64(kp_tess)]})
    assert c["epoch"] == 1 and c["welcome"] is not None
    for m in (bob, carol):
        assert m.join(c["welcome"])["epoch"] == 1
    tree = alice.api.get(alice.path(gid, "/group-info")).expect(200)["ratchet_tree"]
    assert peer.join(tess, unb64(c["welcome"]), unb64(tree)).epoch == 1
    hosted = [alice, bob, carol]
    agree(gid, hosted, peer, tess)
    names = [unb64(m["credential"]["identity"]) for m in alice.group(gid)["members"]]
    assert names == [b"alice", b"bob", b"carol@globex", b"tess"]

    # Application messages both ways: the gateway's to ts-mls, ts-mls's through /process.
    msg = alice.send(gid, b"hello from alice")
    assert peer.process(tess, unb64(msg)).data == b"hello from alice"
    for m in (bob, carol):
        assert unb64(m.process(gid, msg)["data"]) == b"hello from alice"
    ts_msg = peer.send(tess, b"hello from ts-mls", authenticated_data=b"ad")
    for m in hosted:
        r = m.process(gid, ts_msg)
        assert r["kind"] == "application" and r["sender"] == {"type": "member", "leaf_index": 3}
        assert (unb64(r["data"]), unb64(r["authenticated_data"])) == (b"hello from ts-mls", b"ad")

    # Commits both ways: a ts-mls update (private handshake), then a hosted update (public).
    u = peer.update(tess, handshake="private")
    for m in hosted:
        r = m.process(gid, u.commit)
        assert (r["kind"], r["epoch"], r["removed"]) == ("commit", 2, False)
    u2 = carol.commit(gid, {"update": True})
    assert u2["epoch"] == 3 and u2["welcome"] is None
    assert peer.process(tess, unb64(u2["commit"])).epoch == 3
    for m in (alice, bob):
        assert m.process(gid, u2["commit"])["epoch"] == 3
    agree(gid, hosted, peer, tess)

    # ts-mls removes bob; bob learns it was removed; the rest carry on.
    rm = peer.remove(tess, [1])
    for m in (alice, carol):
        assert m.process(gid, rm.commit)["removed"] is False
    assert bob.process(gid, rm.commit)["removed"] is True
    hosted = [alice, carol]
    # A hosted member removes nobody but commits privately; ts-mls follows.
    u3 = alice.commit(gid, {"update": True, "handshake": "private"})
    assert peer.process(tess, unb64(u3["commit"])).epoch == u3["epoch"] == 5
    assert carol.process(gid, u3["commit"])["epoch"] == 5
    agree(gid, hosted, peer, tess)
    assert [m["leaf_index"] for m in carol.group(gid)["members"]] == [0, 2, 3]

    # Exporter agreement: the gateway's MLS-Exporter equals ts-mls's.
    for label, ctx, n in (("e2e", b"", 32), ("another label", b"context", 7)):
        want = peer.export(tess, label, ctx, n)
        assert alice.export(gid, label, n, ctx) == carol.export(gid, label, n, ctx) == want

    # A second group, founded by the other tenant's identity, hosted members only.
    dave = Hosted.create(globex, "dave")
    gid2 = found_group(carol, [dave, alice])
    m2 = dave.send(gid2, b"in group two")
    for m in (carol, alice):
        assert unb64(m.process(gid2, m2)["data"]) == b"in group two"
    # A commit staged (pending) before the restart, merged after it.
    frank = Hosted.create(globex, "frank")
    staged = carol.commit(gid2, {"add": [frank.key_package()], "pending": True})
    assert staged["epoch"] == 1
    # A message from ts-mls that will only be processed after the restart.
    late = peer.send(tess, b"sent before the restart")
    late_hosted = alice.send(gid, b"hosted, before the restart")

    before = {(m.name, g): m.group(g) for g, ms in ((gid, hosted), (gid2, [carol, dave, alice])) for m in ms}

    # ---- graceful restart on the same data folder ----
    assert gateway.stop() == 0, gateway.log_tail()
    gateway.start()

    for (name, g), was in before.items():
        member = next(m for m in (alice, carol, dave) if m.name == name)
        now = member.group(g)
        for key in (
            "epoch",
            "epoch_authenticator",
            "tree_hash",
            "members",
            "own_leaf_index",
            "pending_commit",
        ):
            assert now[key] == was[key], f"{name}: {key} changed across the restart"
    assert gateway.client().get("/readyz").status == 200

    # The same groups carry on: messages that crossed the restart, new messages and commits both ways.
    for m in hosted:
        assert unb64(m.process(gid, late)["data"]) == b"sent before the restart"
    assert peer.process(tess, unb64(late_hosted)).data == b"hosted, before the restart"
    assert unb64(carol.process(gid, late_hosted)["data"]) == b"hosted, before the restart"
    msg = carol.send(gid, b"after the restart")
    assert peer.process(tess, unb64(msg)).data == b"after the restart"
    assert unb64(alice.process(gid, msg)["data"]) == b"after the restart"
    u4 = peer.update(tess)
    for m in hosted:
        assert m.process(gid, u4.commit)["epoch"] == 6
    erin = Hosted.create(acme, "erin")
    add = alice.commit(gid, {"add": [erin.key_package()]})
    assert add["epoch"] == 7
    assert erin.join(add["welcome"])["epoch"] == 7
    assert peer.process(tess, unb64(add["commit"])).epoch == 7
    carol.process(gid, add["commit"])
    agree(gid, [alice, carol, erin], peer, tess)
    assert alice.export(gid) == erin.export(gid) == peer.export(tess, "e2e", b"", 32)
    assert carol.group(gid2)["pending_commit"] is True
    assert carol.post(gid2, "/pending-commit/merge", {}).expect(200)["epoch"] == 2
    for m in (dave, alice):
        assert m.process(gid2, staged["commit"])["epoch"] == 2
    assert frank.join(staged["welcome"])["epoch"] == 2
    u5 = dave.commit(gid2, {"update": True, "handshake": "private"})
    for m in (carol, alice, frank):
        assert m.process(gid2, u5["commit"])["epoch"] == 3
    agree(gid2, [carol, dave, alice, frank])

    # Tokens survive the restart; the graceful stop is clean a second time too.
    assert gateway.admin.get("/v1/tenants").expect(200)["tenants"]
    assert gateway.stop() == 0


# ---- idempotency ----------------------------------------------------------------------------------------


def test_idempotency(shared_gateway: GatewayServer) -> None:
    api = tenant(shared_gateway, "idem")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = found_group(alice, [bob])

    # A commit: the repeat returns the first response and does not commit again.
    r1 = alice.post(gid, "/commits", {"update": True}, idem="commit-1").expect(200)
    assert r1["epoch"] == 2
    r2 = alice.post(gid, "/commits", {"update": True}, idem="commit-1").expect(200)
    assert r2.body == r1.body
    assert alice.group(gid)["epoch"] == 2
    # The same key with another body: 409, and no state change.
    r3 = alice.post(gid, "/commits", {"update": True, "handshake": "private"}, idem="commit-1")
    assert (r3.status, r3.code) == (409, "conflict")
    assert r3.headers["content-type"].startswith("application/problem+json")
    assert alice.group(gid)["epoch"] == 2
    assert bob.process(gid, r1["commit"])["epoch"] == 2
    agree(gid, [alice, bob])

    # A message: the repeat returns the same ciphertext and signs nothing.
    body = {"data": b64(b"once")}
    m1 = alice.post(gid, "/messages", body, idem="msg-1").expect(200)
    signs = hsm_sign_count(shared_gateway)
    m2 = alice.post(gid, "/messages", body, idem="msg-1").expect(200)
    assert m2.body == m1.body
    assert hsm_sign_count(shared_gateway) == signs
    assert alice.post(gid, "/messages", {"data": b64(b"twice")}, idem="msg-1").status == 409
    # Processing it with a key: the repeat returns the stored result (a new key would be a replay).
    p1 = bob.post(gid, "/process", {"message": m1["message"]}, idem="proc-1").expect(200)
    assert unb64(p1["data"]) == b"once"
    assert bob.post(gid, "/process", {"message": m1["message"]}, idem="proc-1").expect(200).body == p1.body
    # A new key: the message went through the group's log and was applied once; a repeated delivery is
    # recognised and answers the event it produced (api-delivery.md: no duplicate effects).
    again = bob.post(gid, "/process", {"message": m1["message"]}, idem="proc-2").expect(200)
    assert again.body == p1.body
    # The next message is the sender's next generation: bob reads it (nothing was sent twice).
    assert unb64(bob.process(gid, alice.send(gid, b"next"))["data"]) == b"next"

    # Identities, key packages, groups, joins: repeats create nothing new.
    i1 = api.post("/v1/identities", {"name": "carol"}, idem="id-1").expect(201)
    i2 = api.post("/v1/identities", {"name": "carol"}, idem="id-1").expect(201)
    assert i1.body == i2.body
    assert [i["name"] for i in api.get("/v1/identities").body["identities"]].count("carol") == 1
    carol = Hosted(api, i1["identity_id"], "carol")
    kp_path = f"/v1/identities/{carol.identity_id}/key-packages"
    k1 = api.post(kp_path, {"count": 2}, idem="kp-1").expect(201)
    assert api.post(kp_path, {"count": 2}, idem="kp-1").expect(201).body == k1.body
    assert len(api.get(kp_path).body["key_packages"]) == 2
    assert api.post(kp_path, {"count": 3}, idem="kp-1").status == 409
    g1 = api.post(carol.path(), {}, idem="grp-1").expect(201)
    assert api.post(carol.path(), {}, idem="grp-1").expect(201).body == g1.body
    assert len(api.get(carol.path()).body["groups"]) == 1
    add = alice.commit(gid, {"add": [k1["key_packages"][0]["key_package"]]})
    bob.process(gid, add["commit"])
    j1 = api.post(carol.path(tail="/join"), {"welcome": add["welcome"]}, idem="join-1").expect(201)
    assert (
        api.post(carol.path(tail="/join"), {"welcome": add["welcome"]}, idem="join-1").expect(201).body
        == j1.body
    )
    agree(gid, [alice, bob, carol])
    # Keys are per tenant and route: the same key on another route is a different request.
    assert alice.post(gid, "/messages", {"data": b64(b"x")}, idem="commit-1").status == 200
    # An empty or over-long key is refused.
    assert alice.post(gid, "/messages", {"data": b64(b"x")}, idem="k" * 256).status == 400


def test_concurrent_requests_on_one_group(shared_gateway: GatewayServer) -> None:
    """Requests on one group from many client threads are serialised: every message gets its own
    generation, every commit its own epoch; parallel repeats of one Idempotency-Key do the work once."""
    api = tenant(shared_gateway, "concurrent")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = found_group(alice, [bob])

    def burst(fn: Any, args: list[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(fn, args))

    # Messages from 4 threads. A receiver keeps only 5 skipped generations (the library's default
    # out_of_order_tolerance), so bob reads them in the order their answers arrived, which is the order
    # the gateway protected them in up to a thread's wake-up delay.
    def timed_send(text: bytes) -> tuple[int, bytes, str]:
        message = alice.send(gid, text)
        return time.monotonic_ns(), text, message

    texts = [f"parallel {i}".encode() for i in range(16)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        sent = sorted(pool.map(timed_send, texts))
    assert len({m for _, _, m in sent}) == len(texts)
    results = bob.post(gid, "/process", {"messages": [m for _, _, m in sent]}).expect(200)["results"]
    assert [unb64(r["data"]) if "data" in r else r for r in results] == [t for _, t, _ in sent]

    commits = burst(lambda i: alice.commit(gid, {"update": True}), list(range(6)))
    assert sorted(c["epoch"] for c in commits) == list(range(2, 8))
    for c in sorted(commits, key=lambda c: c["epoch"]):
        assert bob.process(gid, c["commit"])["epoch"] == c["epoch"]
    agree(gid, [alice, bob])

    same = burst(lambda i: alice.post(gid, "/commits", {"update": True}, idem="one-key"), list(range(6)))
    assert all(r.status == 200 for r in same), [r.body for r in same]
    assert len({json.dumps(r.body, sort_keys=True) for r in same}) == 1
    assert alice.state(gid)[0] == 8
    bob.process(gid, same[0]["commit"])
    made = burst(lambda i: api.post("/v1/identities", {"name": "once"}, idem="one-identity"), list(range(6)))
    assert {r.status for r in made} == {201}
    assert len({r["identity_id"] for r in made}) == 1
    assert [i["name"] for i in api.get("/v1/identities").body["identities"]].count("once") == 1
    agree(gid, [alice, bob])


# ---- pending commits -----------------------------------------------------------------------------------


def test_pending_commit_blocks_then_merges_or_discards(shared_gateway: GatewayServer) -> None:
    api = tenant(shared_gateway, "pending")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = found_group(alice, [bob])
    carol = Hosted.create(api, "carol")

    staged = alice.commit(gid, {"update": True, "pending": True})
    assert staged["epoch"] == 1  # not merged yet
    g = alice.group(gid)
    assert g["epoch"] == 1
    assert g.get("pending_commit") is True

    # Everything else that would change alice's state in this group answers 409.
    blocked = {
        "commit": alice.post(gid, "/commits", {"update": True}),
        "add": alice.post(gid, "/commits", {"add": [carol.key_package()]}),
        "proposal": alice.post(gid, "/proposals", {"type": "remove", "leaf_index": 1}),
        "message": alice.post(gid, "/messages", {"data": b64(b"x")}),
    }
    for what, r in blocked.items():
        assert (r.status, r.code) == (409, "conflict"), f"{what}: {r.status} {r.body}"
    assert alice.state(gid)[0] == 1

    merged = alice.post(gid, "/pending-commit/merge", {}).expect(200)
    assert merged["epoch"] == 2
    assert alice.group(gid).get("pending_commit") is False
    assert bob.process(gid, staged["commit"])["epoch"] == 2
    agree(gid, [alice, bob])
    assert alice.post(gid, "/pending-commit/merge", {}).status == 409  # nothing pending any more

    # Staged then discarded: the epoch stays, the group works, the discarded commit is worthless.
    staged2 = alice.commit(gid, {"update": True, "pending": True})
    assert alice.api.delete(alice.path(gid, "/pending-commit")).status == 204
    assert alice.api.delete(alice.path(gid, "/pending-commit")).status == 409
    assert alice.state(gid)[0] == 2
    del staged2  # never delivered: bob would follow it to an epoch alice is not in
    msg = alice.send(gid, b"after discard")
    assert unb64(bob.process(gid, msg)["data"]) == b"after discard"
    agree(gid, [alice, bob])
    u = bob.commit(gid, {"update": True})
    assert alice.process(gid, u["commit"])["epoch"] == 3
    agree(gid, [alice, bob])


@pytest.mark.parametrize("incoming", ["application", "proposal", "commit"])
def test_pending_commit_and_the_log(shared_gateway: GatewayServer, incoming: str) -> None:
    """A member with a staged (pending) commit still takes what the group's log accepted: application
    messages and proposals leave its pending commit staged; another member's commit wins the epoch, and the
    staged one is discarded (api-delivery.md: the first commit for an epoch wins)."""
    api = tenant(shared_gateway, "pending-process")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = found_group(alice, [bob])
    alice.commit(gid, {"update": True, "pending": True})
    if incoming == "application":
        message = bob.send(gid, b"while pending")
    elif incoming == "proposal":
        message = bob.post(gid, "/proposals", {"type": "update"}).expect(201)["proposal"]
    else:
        message = bob.commit(gid, {"update": True})["commit"]
    r = alice.post(gid, "/process", {"message": message}).expect(200)
    after = alice.group(gid)
    if incoming == "commit":
        assert (r["kind"], r["epoch"], after["epoch"], after.get("pending_commit")) == ("commit", 2, 2, False)
        assert alice.post(gid, "/pending-commit/merge").status == 409
        agree(gid, [alice, bob])
    else:
        assert (r["kind"], after["epoch"], after.get("pending_commit")) == (incoming, 1, True)


# ---- batches -----------------------------------------------------------------------------------------


def test_batch_messages_and_batch_process(shared_gateway: GatewayServer) -> None:
    api = tenant(shared_gateway, "batch")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = found_group(alice, [bob])
    texts = [b"one", b"two", b"three"]
    sent = alice.post(
        gid,
        "/messages",
        {"messages": [{"data": b64(t), "authenticated_data": b64(b"ad-" + t)} for t in texts]},
    ).expect(200)["messages"]
    assert len(sent) == 3 and len(set(sent)) == 3

    bad = b64(b"\x00\x01not an MLS message")
    results = bob.post(gid, "/process", {"messages": [sent[0], bad, sent[1], sent[2]]}).expect(200)["results"]
    assert len(results) == 4
    problem = results[1]
    assert problem.get("code") == "decode_error" and problem.get("status") == 400, problem
    assert "kind" not in problem
    for r, t in zip([results[0], results[2], results[3]], texts):
        assert r["kind"] == "application"
        assert (unb64(r["data"]), unb64(r["authenticated_data"])) == (t, b"ad-" + t)
    # The same bad bytes alone: a 400 decode_error problem document.
    single = bob.post(gid, "/process", {"message": bad})
    assert (single.status, single.code) == (400, "decode_error")
    # A batch mixing a commit and messages of the new epoch, processed in order.
    u = alice.commit(gid, {"update": True})
    after = alice.post(gid, "/messages", {"messages": [{"data": b64(b"four")}]}).expect(200)["messages"]
    results = bob.post(gid, "/process", {"messages": [u["commit"], *after, sent[0]]}).expect(200)["results"]
    assert results[0]["kind"] == "commit" and results[0]["epoch"] == 2
    assert unb64(results[1]["data"]) == b"four"
    # A message of the old epoch delivered again: recognised (it went through the log), the same result.
    assert unb64(results[2]["data"]) == b"one" and results[2]["epoch"] == 1
    agree(gid, [alice, bob])
    assert alice.post(gid, "/messages", {"messages": []}).status == 400


# ---- external join, group-info -------------------------------------------------------------------------


def test_group_info_and_external_join(shared_gateway: GatewayServer, ts_mls_peer: TsMlsPeer) -> None:
    """Hosted identities join by external commit through the API; a ts-mls client's external commit is
    processed by the hosted members.

    ts-mls 1.6.4 writes and reads the GroupInfo external_pub extension without the HPKEPublicKey<V>
    length prefix (see tests/interop/test_ts_mls_interop.py, LukaJCB/ts-mls#449), so a GroupInfo crosses
    implementations only one way round: here each external joiner uses a GroupInfo of its own side.
    """
    peer = ts_mls_peer
    acme, globex = tenant(shared_gateway, "acme"), tenant(shared_gateway, "globex")
    alice, bob = Hosted.create(acme, "alice"), Hosted.create(acme, "bob")
    tess = fresh("tess")
    peer.new_client(tess, b"tess", 1)
    gid = alice.create_group()
    c = alice.commit(gid, {"add": [bob.key_package(), b64(peer.key_package(tess))]})
    bob.join(c["welcome"])
    peer.join(tess, unb64(c["welcome"]))

    info = alice.api.get(alice.path(gid, "/group-info")).expect(200)
    assert set(info.body) >= {"group_info", "ratchet_tree"}
    # A hosted identity of another tenant joins by external commit, tree given out of band.
    dave = Hosted.create(globex, "dave")
    j = dave.api.post(
        dave.path(tail="/external-join"),
        {"group_info": info["group_info"], "ratchet_tree": info["ratchet_tree"]},
    ).expect(201)
    assert j["epoch"] == 2 and j["commit"]
    assert dave.api.get(dave.path()).body["groups"] == [{"group_id": j["group_id"], "epoch": 2}]
    for m in (alice, bob):
        r = m.process(gid, j["commit"])
        assert r["epoch"] == 2 and r["sender"]["type"] == "new_member_commit"
    assert peer.process(tess, unb64(j["commit"])).epoch == 2
    agree(gid, [alice, bob, dave], peer, tess)
    assert peer.process(tess, unb64(dave.send(gid, b"joined externally"))).data == b"joined externally"

    # A second ts-mls client joins by external commit from the ts-mls member's GroupInfo; the hosted
    # members process its commit through /process.
    tom = fresh("tom")
    peer.new_client(tom, b"tom", 1)
    gi = peer.group_info(tess)
    ext = peer.external_join(tom, gi.group_info, gi.ratchet_tree)
    assert ext.epoch == 3
    for m in (alice, bob, dave):
        r = m.process(gid, ext.commit)
        assert (r["epoch"], r["sender"]["type"]) == (3, "new_member_commit")
    assert peer.process(tess, ext.commit).epoch == 3
    agree(gid, [alice, bob, dave], peer, tom)
    msg = peer.send(tom, b"from the external joiner", group_id=unb64(j["group_id"]))
    assert unb64(dave.process(gid, msg)["data"]) == b"from the external joiner"
    assert dave.export(gid) == peer.export(tom, "e2e", b"", 32)

    # Not a GroupInfo: a problem document, no group.
    bad = dave.api.post(dave.path(tail="/external-join"), {"group_info": b64(b"\x00\x01\x00\x04")})
    assert bad.status in (400, 422), bad.body
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert len(dave.api.get(dave.path()).body["groups"]) == 1


def test_external_join_resync_after_losing_state(shared_gateway: GatewayServer) -> None:
    """A member that lost its state (DELETE of its group) rejoins by external commit removing its old leaf."""
    api = tenant(shared_gateway, "resync")
    alice, bob, dave = (Hosted.create(api, n) for n in ("alice", "bob", "dave"))
    gid = found_group(alice, [bob, dave])
    assert api.delete(dave.path(gid)).status == 204
    assert api.get(dave.path(gid)).status == 404
    info = alice.api.get(alice.path(gid, "/group-info")).expect(200).body
    # Removing a leaf that is not the joiner's own is refused (RFC 9420 §12.2: a resync keeps the credential).
    steal = dave.api.post(
        dave.path(tail="/external-join"), {**info, "remove_prior": True, "remove_prior_leaf": 1}
    )
    assert (steal.status, steal.code, steal.body.get("rule")) == (
        422,
        "validation_failed",
        "12.2/resync-credential",
    )
    j = dave.api.post(
        dave.path(tail="/external-join"), {**info, "remove_prior": True, "remove_prior_leaf": 2}
    )
    j.expect(201)
    for m in (alice, bob):
        assert m.process(gid, j["commit"])["epoch"] == 2
    agree(gid, [alice, bob, dave])
    names = [unb64(m["credential"]["identity"]) for m in alice.group(gid)["members"]]
    assert sorted(names) == [b"alice", b"bob", b"dave"]


def test_external_join_remove_prior_as_the_contract_writes_it(shared_gateway: GatewayServer) -> None:
    api = tenant(shared_gateway, "resync-contract")
    alice, dave = Hosted.create(api, "alice"), Hosted.create(api, "dave")
    gid = found_group(alice, [dave])
    assert api.delete(dave.path(gid)).status == 204
    info = alice.api.get(alice.path(gid, "/group-info")).expect(200).body
    j = dave.api.post(dave.path(tail="/external-join"), {**info, "remove_prior": True})
    assert j.status == 201, j.body
    assert alice.process(gid, j["commit"])["epoch"] == 2
    agree(gid, [alice, dave])
    assert len(alice.group(gid)["members"]) == 2


# ---- proposals by reference ------------------------------------------------------------------------------


def test_proposals_by_reference(shared_gateway: GatewayServer, ts_mls_peer: TsMlsPeer) -> None:
    """Proposals sent by one hosted member and committed by reference by another; a ts-mls member follows.

    (A ts-mls 1.6.4 member removed by a commit whose Add refills its leaf misses its removal — a known
    ts-mls bug, tests/interop/test_ts_mls_interop.py — so the ts-mls member is removed on its own.)
    """
    peer = ts_mls_peer
    api = tenant(shared_gateway, "proposals")
    alice, bob, carol, xavier = (Hosted.create(api, n) for n in ("alice", "bob", "carol", "xavier"))
    tess = fresh("tess")
    peer.new_client(tess, b"tess", 1)
    gid = alice.create_group()
    c = alice.commit(gid, {"add": [bob.key_package(), b64(peer.key_package(tess)), xavier.key_package()]})
    bob.join(c["welcome"])
    xavier.join(c["welcome"])
    peer.join(tess, unb64(c["welcome"]))

    # Bob proposes adding carol and removing xavier (leaf 3); alice commits both by reference
    # (include_pending defaults to true). Removes apply first, so carol refills leaf 3.
    p = bob.post(gid, "/proposals", {"type": "add", "key_package": carol.key_package()}).expect(201)
    assert p["proposal"] and p["ref"]
    p2 = bob.post(gid, "/proposals", {"type": "remove", "leaf_index": 3, "handshake": "private"}).expect(201)
    for m in (alice, xavier):
        r = m.process(gid, p["proposal"])
        assert (r["kind"], r["ref"], r["proposal_type"]) == ("proposal", p["ref"], "add")
        assert r["sender"] == {"type": "member", "leaf_index": 1}
        assert m.process(gid, p2["proposal"])["proposal_type"] == "remove"
    assert [x["ref"] for x in alice.group(gid)["pending_proposals"]] == [p["ref"], p2["ref"]]
    for prop in (p, p2):
        assert peer.process(tess, unb64(prop["proposal"])).kind == "proposal"

    commit = alice.commit(gid, {})
    assert commit["epoch"] == 2 and commit["welcome"] is not None
    assert alice.group(gid)["pending_proposals"] == []
    assert bob.process(gid, commit["commit"])["epoch"] == 2
    assert xavier.process(gid, commit["commit"])["removed"] is True
    assert peer.process(tess, unb64(commit["commit"])).epoch == 2
    carol.join(commit["welcome"])
    agree(gid, [alice, bob, carol], peer, tess)
    roster = [(m["leaf_index"], unb64(m["credential"]["identity"])) for m in carol.group(gid)["members"]]
    assert roster == [(0, b"alice"), (1, b"bob"), (2, b"tess"), (3, b"carol")]

    # An update proposal by carol, and a remove of the ts-mls member by bob: committed by alice.
    p3 = carol.post(gid, "/proposals", {"type": "update"}).expect(201)
    p4 = bob.post(gid, "/proposals", {"type": "remove", "leaf_index": 2}).expect(201)
    for prop in (p3, p4):
        for m in (alice, bob, carol):
            if (prop is p3 and m is carol) or (prop is p4 and m is bob):
                continue
            m.process(gid, prop["proposal"])
        peer.process(tess, unb64(prop["proposal"]))
    c3 = alice.commit(gid, {"handshake": "private"})
    for m in (bob, carol):
        assert m.process(gid, c3["commit"])["epoch"] == 3
    assert peer.process(tess, unb64(c3["commit"])).state == "removedFromGroup"
    agree(gid, [alice, bob, carol])
    assert [m["leaf_index"] for m in alice.group(gid)["members"]] == [0, 1, 3]

    # include_pending: false leaves a received proposal out of the commit.
    p5 = bob.post(gid, "/proposals", {"type": "remove", "leaf_index": 3}).expect(201)
    alice.process(gid, p5["proposal"])
    c5 = alice.commit(gid, {"include_pending": False, "update": True})
    for m in (bob, carol):
        assert m.process(gid, c5["commit"])["removed"] is False
    agree(gid, [alice, bob, carol])


def test_pending_proposal_types_use_the_api_names(shared_gateway: GatewayServer) -> None:
    api = tenant(shared_gateway, "proposal-names")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = found_group(alice, [bob])
    sent = {
        "group_context_extensions": {"extensions": [{"type": 0xFF00, "data": b64(b"x")}]},
        "psk": {"psk": {"psk_id": b64(b"psk-id"), "secret": b64(bytes(32))}},
        "update": {},
    }
    for kind, extra in sent.items():
        p = bob.post(gid, "/proposals", {"type": kind, **extra}).expect(201)
        assert alice.process(gid, p["proposal"])["proposal_type"] == kind
    assert [x["type"] for x in alice.group(gid)["pending_proposals"]] == list(sent)


def test_delete_group_and_identity(shared_gateway: GatewayServer) -> None:
    api = tenant(shared_gateway, "deletes")
    alice, bob, carol = (Hosted.create(api, n) for n in ("alice", "bob", "carol"))
    gid = found_group(alice, [bob])
    # A Welcome cannot be used twice: the key package is consumed by the first join.
    c = alice.commit(gid, {"add": [carol.key_package()]})
    bob.process(gid, c["commit"])
    carol.join(c["welcome"])
    # The Welcome went through the group's log: joining from it again is recognised (the membership as it
    # is), nothing is joined twice.
    again = carol.api.post(carol.path(tail="/join"), {"welcome": c["welcome"]}).expect(201)
    assert again["group_id"] == c.get("group_id", again["group_id"]) and again["epoch"] == 2
    listed = api.get(f"/v1/identities/{carol.identity_id}/key-packages").expect(200)["key_packages"]
    assert [k["consumed"] for k in listed] == [True]

    bob.key_package()
    assert api.delete(bob.path(gid)).status == 204
    assert api.get(bob.path(gid)).status == 404
    assert api.delete(bob.path(gid)).status == 404
    assert api.get(bob.path()).body["groups"] == []
    assert api.delete(f"/v1/identities/{bob.identity_id}").status == 204
    for path in (f"/v1/identities/{bob.identity_id}", f"/v1/identities/{bob.identity_id}/key-packages"):
        assert api.get(path).status == 404
    assert api.delete(f"/v1/identities/{bob.identity_id}").status == 404
    assert bob.identity_id not in {i["identity_id"] for i in api.get("/v1/identities").body["identities"]}
    # The others are untouched.
    agree(gid, [alice, carol])
    assert unb64(carol.process(gid, alice.send(gid, b"still here"))["data"]) == b"still here"


# ---- service documents -------------------------------------------------------------------------------------


@pytest.mark.sqlite_only("the document is static: no store involved")
def test_openapi_lists_exactly_the_routes(shared_gateway: GatewayServer) -> None:
    doc = shared_gateway.client().get("/v1/openapi.json").expect(200).body
    assert doc["openapi"].startswith("3.1")
    served = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete", "head", "options")
    }
    assert served == {(r.method, r.path) for r in ROUTES}


def _metric_labels(text: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$", line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels))
    return out


@pytest.mark.sqlite_only("metric families and labels do not depend on the store")
def test_metrics_families_and_no_secret_labels(shared_gateway: GatewayServer) -> None:
    api = tenant(shared_gateway, "metrics")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = found_group(alice, [bob])
    bob.process(gid, alice.send(gid, b"counted"))
    alice.export(gid)
    # Requests whose paths carry ids and secrets, matched and unmatched.
    api.get(f"/v1/identities/{alice.identity_id}/nope/{api.token}")
    api.get(alice.path(gid))
    shared_gateway.client("mlsgw_not-a-real-token").get("/v1/identities")

    text = shared_gateway.client().get("/metrics").expect(200).body
    samples = _metric_labels(text)
    names = {n for n, _ in samples}
    for family in (
        "mlsgw_http_requests_total",
        "mlsgw_http_request_duration_seconds_count",
        "mlsgw_mls_operations_total",
        "mlsgw_hsm_operations_total",
        "mlsgw_identities",
        "mlsgw_groups",
        "mlsgw_crypto_backend_info",
    ):
        assert family in names, f"{family} missing from /metrics"
    ops = {lab["operation"] for n, lab in samples if n == "mlsgw_mls_operations_total"}
    assert {"create_identity", "create_group", "commit", "join", "protect", "unprotect", "export"} <= ops
    assert {lab["operation"] for n, lab in samples if n == "mlsgw_hsm_operations_total"} >= {
        "sign",
        "generate",
    }
    assert any(lab.get("backend") for n, lab in samples if n == "mlsgw_crypto_backend_info")

    raw_gid = base64.urlsafe_b64decode(gid + "=" * (-len(gid) % 4))
    secrets = [
        shared_gateway.admin_token,
        api.token or "",
        alice.identity_id,
        bob.identity_id,
        gid,
        b64(raw_gid),
        raw_gid.hex(),
    ]
    routes = {r.path for r in ROUTES} | {"unmatched"}
    for name, labels in samples:
        for key, value in labels.items():
            for secret in secrets:
                assert secret not in value, f"{name}{{{key}={value!r}}} carries an id or token"
            if key == "route":
                assert value in routes, f"{name}: route label {value!r} is not a route template"
            else:
                assert re.fullmatch(r"[A-Za-z0-9_.+\-]{0,40}", value), f"{name}{{{key}={value!r}}}"
                assert not re.fullmatch(r"[0-9a-f]{16,}|[A-Za-z0-9+/_\-]{24,}={0,2}", value), value


@pytest.mark.sqlite_only("test_postgres_e2e.py checks /readyz on PostgreSQL, also with the database down")
def test_health_and_readiness(shared_gateway: GatewayServer) -> None:
    c = shared_gateway.client()
    assert c.get("/healthz").expect(200).body["status"] == "ok"
    r = c.get("/readyz").expect(200)
    assert r.body["status"] == "ready"
    assert "x-request-id" in r.headers


def _fields(doc: Any) -> set[str]:
    return set(doc) if isinstance(doc, dict) else set()


@pytest.mark.sqlite_only("malformed requests are refused before the store is touched")
@pytest.mark.parametrize("path", ["/v1/identities", "/v1/tenants"])
def test_problem_documents_for_bad_requests(shared_gateway: GatewayServer, path: str) -> None:
    api = tenant(shared_gateway, "problems") if path == "/v1/identities" else shared_gateway.admin
    r = api.request("POST", path, raw=b"{not json")
    assert (r.status, r.code) == (400, "invalid_request")
    assert r.headers["content-type"].startswith("application/problem+json")
    assert _fields(r.body) >= {"type", "title", "status", "code", "detail"}
    assert api.post(path, {"name": 7}).code == "invalid_request"
    big = api.request("POST", path, raw=b'{"name": "' + b"x" * (2 << 20) + b'"}')
    assert (big.status, big.code) == (413, "payload_too_large")
    assert api.get(path + "/no/such/thing").status == 404
    wrong = api.request("PUT", path, {})
    assert wrong.status == 405 and wrong.headers["content-type"].startswith("application/problem+json")
