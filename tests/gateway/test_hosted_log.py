"""Hosted members and their group's log (api-delivery.md): an external join through the log, the stale
epoch answered 409 with ``current_epoch`` (api-v1.md's table), a removed member told the new epoch, and the
GroupInfo with the tree in its extension for joiners that take no separate tree."""

from __future__ import annotations

import time

import pytest

from mls import has_ratchet_tree_extension, verify_group_info

from .gwclient import Client, GatewayServer, Hosted, unb64

#: The group log and epoch compare-and-swap are the store's guarantees: both stores (issue 15).
pytestmark = pytest.mark.both_stores

DEADLINE_S = 60.0  # a deadlock guard: the gateway applies the log in the background


def _tenant(server: GatewayServer, name: str) -> Client:
    return server.client(server.admin.create_tenant(name)[1])


def _group(owner: Hosted, members: list[Hosted]) -> str:
    gid = owner.create_group()
    owner.commit(gid, {"add": [m.key_package() for m in members]})
    return gid


def _until(member: Hosted, gid: str, epoch: int) -> dict[str, object]:
    """The member's state once the gateway took it to ``epoch`` (no processing call by the client)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = member.api.get(member.path(gid))
        if r.status == 200 and r["epoch"] >= epoch:
            return dict(r.body)
        assert time.monotonic() < deadline, f"{member.name} is at {r.body} (waiting for epoch {epoch})"
        time.sleep(0.05)


def test_external_join_goes_through_the_log(shared_gateway: GatewayServer) -> None:
    api = _tenant(shared_gateway, "external-log")
    alice, bob, carol = (Hosted.create(api, n) for n in ("alice", "bob", "carol"))
    gid = _group(alice, [bob])
    _until(bob, gid, 1)
    info = api.get(f"/v1/groups/{gid}/group-info").expect(200)
    joined = carol.api.post(
        carol.path(tail="/external-join"),
        {"group_info": info["group_info"], "ratchet_tree": info["ratchet_tree"]},
    ).expect(201)
    assert joined["epoch"] == 2
    states = {m.name: _until(m, gid, 2)["epoch_authenticator"] for m in (alice, bob, carol)}
    assert len(set(states.values())) == 1, states
    log = api.get(f"/v1/groups/{gid}").expect(200)
    assert log["epoch"] == 2
    assert {m["endpoint"] for m in log["members"]} == {alice.identity_id, bob.identity_id, carol.identity_id}
    # The same GroupInfo again is for an epoch the log left: 409 with current_epoch, nothing changed.
    again = Hosted.create(api, "dave").api.post(
        f"/v1/identities/{Hosted.create(api, 'erin').identity_id}/groups/external-join",
        {"group_info": info["group_info"], "ratchet_tree": info["ratchet_tree"]},
    )
    assert (again.status, again.code, again.body.get("current_epoch")) == (409, "conflict", 2)
    assert api.get(f"/v1/groups/{gid}").expect(200)["seq"] == log["seq"]


def test_stale_epoch_is_409_with_current_epoch(shared_gateway: GatewayServer) -> None:
    api = _tenant(shared_gateway, "stale")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = _group(alice, [bob])
    stale = alice.commit(gid, {"update": True, "pending": True})["commit"]  # a commit for epoch 1
    api.delete(alice.path(gid, "/pending-commit")).expect(204)
    alice.commit(gid, {"update": True})  # the log moves to epoch 2
    _until(bob, gid, 2)
    r = bob.api.post(bob.path(gid, "/process"), {"message": stale})
    assert (r.status, r.code, r.body.get("current_epoch")) == (409, "conflict", 2)
    # A hosted commit built on an epoch the log left: 409, and the log is unchanged.
    before = api.get(f"/v1/groups/{gid}").expect(200).body
    r = bob.api.post(bob.path(gid, "/commits"), {"update": True, "epoch": 1})
    assert (r.status, r.code, r.body.get("current_epoch")) == (409, "conflict", 2)
    assert api.get(f"/v1/groups/{gid}").expect(200).body == before
    assert bob.group(gid)["epoch"] == 2
    # Counted: the refusal by its reason, the accepted commits and the hosted deliveries.
    metrics = shared_gateway.client()
    assert metrics.metric("mlsgw_log_commits_total", outcome="stale_epoch") >= 1
    assert metrics.metric("mlsgw_log_commits_total", outcome="accepted") >= 2
    assert metrics.metric("mlsgw_deliveries_total", channel="hosted", outcome="ok") >= 2


def test_a_removed_member_reports_the_new_epoch(shared_gateway: GatewayServer) -> None:
    api = _tenant(shared_gateway, "removed")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = _group(alice, [bob])
    _until(bob, gid, 1)
    removal = alice.commit(gid, {"remove": [1]})
    assert removal["epoch"] == 2
    result = bob.process(gid, removal["commit"])  # recognised: the event the log's entry produced for bob
    assert (result["kind"], result["removed"], result["epoch"]) == ("commit", True, 2)
    events = bob.api.get(f"/v1/identities/{bob.identity_id}/inbox").expect(200)["events"]
    assert [(e["kind"], e.get("removed"), e["epoch"]) for e in events][-1] == ("commit", True, 2)


def test_group_info_with_the_tree_in_its_extension(shared_gateway: GatewayServer) -> None:
    api = _tenant(shared_gateway, "tree-extension")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = _group(alice, [bob])
    plain = alice.api.get(alice.path(gid, "/group-info")).expect(200)
    assert not has_ratchet_tree_extension(unb64(plain["group_info"]))
    with_tree = alice.api.get(alice.path(gid, "/group-info") + "?ratchet_tree=extension").expect(200)
    gi = unb64(with_tree["group_info"])
    assert has_ratchet_tree_extension(gi)
    view = verify_group_info(gi, None)  # a joiner that takes no separate tree has all it needs
    assert view.epoch == 1 and len(view.leaves) == 2
    bad = alice.api.get(alice.path(gid, "/group-info") + "?ratchet_tree=sideways")
    assert (bad.status, bad.code) == (400, "invalid_request")


def test_a_repeated_submission_is_answered_and_not_appended_again(shared_gateway: GatewayServer) -> None:
    api = _tenant(shared_gateway, "repeat")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = _group(alice, [bob])
    message = alice.send(gid, b"once only")
    head = api.get(f"/v1/groups/{gid}").expect(200)
    again = api.post(f"/v1/groups/{gid}/messages", {"message": message}).expect(201)
    assert again["seq"] == head["seq"]
    assert api.get(f"/v1/groups/{gid}").expect(200)["seq"] == head["seq"]
    result = bob.process(gid, message)
    assert unb64(result["data"]) == b"once only"
    events = bob.api.get(f"/v1/identities/{bob.identity_id}/inbox").expect(200)["events"]
    assert [e["seq"] for e in events if e["kind"] == "application"] == [head["seq"]]


def test_a_pending_commit_carried_to_the_log_by_the_caller(shared_gateway: GatewayServer) -> None:
    """A staged commit's answer is a complete commit bundle; carried to the log, it is the group's next
    epoch: the other members follow, and merging it answers the new epoch (no fork)."""
    api = _tenant(shared_gateway, "carried")
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = _group(alice, [bob])
    staged = alice.commit(gid, {"update": True, "pending": True})
    bundle = {k: staged[k] for k in ("commit", "group_info", "ratchet_tree")}
    accepted = api.post(f"/v1/groups/{gid}/commit-bundles", bundle).expect(201)
    assert accepted["epoch"] == 2
    assert api.post(f"/v1/groups/{gid}/commit-bundles", bundle).expect(201).body == accepted.body  # repeated
    assert alice.post(gid, "/pending-commit/merge", {}).expect(200)["epoch"] == 2
    _until(bob, gid, 2)
    assert alice.state(gid) == bob.state(gid)
