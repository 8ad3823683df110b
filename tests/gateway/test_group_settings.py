"""The out-of-order window, the maximum forward distance and the past epochs kept are group configuration
(api-delivery.md): defaults from ``[delivery]``, a ``config`` on create and join, shown by GET group."""

from __future__ import annotations

from .gwclient import GatewayServer, Hosted

DEFAULTS = {"out_of_order_tolerance": 32, "max_forward_distance": 1000, "past_epochs": 2}


def test_defaults_and_per_group_settings(shared_gateway: GatewayServer) -> None:
    api = shared_gateway.client(shared_gateway.admin.create_tenant("settings")[1])
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group(config={"out_of_order_tolerance": 3, "max_forward_distance": 10})
    assert alice.group(gid)["config"] == {**DEFAULTS, "out_of_order_tolerance": 3, "max_forward_distance": 10}
    welcome = alice.commit(gid, {"add": [bob.key_package()]})["welcome"]
    assert bob.join(welcome)["epoch"] == 1
    assert bob.group(gid)["config"] == DEFAULTS  # bob joined by himself: the gateway's defaults
    # Bad settings are refused before anything is made.
    for bad in ({"past_epochs": -1}, {"out_of_order_tolerance": 10**6}, {"max_forward_distance": "x"}, []):
        r = alice.api.post(alice.path(tail=""), {"config": bad})
        assert (r.status, r.code) == (400, "invalid_request"), bad


def test_an_identity_that_does_not_auto_join_gets_the_welcome_and_joins_with_its_settings(
    shared_gateway: GatewayServer,
) -> None:
    api = shared_gateway.client(shared_gateway.admin.create_tenant("no-auto-join")[1])
    alice = Hosted.create(api, "alice")
    bob = Hosted.create(api, "bob", auto_join=False)
    assert api.get(f"/v1/identities/{bob.identity_id}").expect(200)["auto_join"] is False
    gid = alice.create_group()
    welcome = alice.commit(gid, {"add": [bob.key_package()]})["welcome"]
    events = _wait_for_events(bob, 1)
    assert [(e["kind"], e["welcome"]) for e in events] == [("welcome", welcome)]
    assert api.get(bob.path(gid)).status == 404  # not joined by itself
    joined = bob.api.post(bob.path(tail="/join"), {"welcome": welcome, "config": {"past_epochs": 5}})
    assert joined.expect(201)["epoch"] == 1
    assert bob.group(gid)["config"]["past_epochs"] == 5
    assert bob.state(gid) == alice.state(gid)


def _wait_for_events(member: Hosted, count: int) -> list[dict[str, object]]:
    """The member's first ``count`` inbox events (long-polls; a deadlock guard, not a timing check)."""
    events: list[dict[str, object]] = []
    for _ in range(20):
        page = member.api.get(f"/v1/identities/{member.identity_id}/inbox?wait=5").expect(200)
        events = list(page["events"])
        if len(events) >= count:
            return events
    raise AssertionError(f"{member.name}'s inbox has {events}")
