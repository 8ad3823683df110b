"""A last-resort KeyPackage used for two groups (RFC 9420 §16.8, api-v1 "a last-resort one is kept").

One identity publishes a single last-resort KeyPackage; another identity adds it to two groups with it,
so both memberships start with the same leaf encryption key. A path commit in group 1 replaces that key
there, but group 2 still needs it: the gateway must not destroy it in the HSM. Afterwards the identity
still processes an application message and a path commit of group 2 (the commit's path secret is
encrypted to that leaf key).
"""

from __future__ import annotations

from .gwclient import GatewayServer, Hosted, unb64


def test_last_resort_leaf_key_survives_a_path_commit_in_another_group(shared_gateway: GatewayServer) -> None:
    api = shared_gateway.client(shared_gateway.admin.create_tenant("last-resort")[1])
    owner, member = Hosted.create(api, "owner"), Hosted.create(api, "member")
    last_resort = member.key_package(last_resort=True)

    groups = []
    for _ in range(2):
        gid = owner.create_group()
        added = owner.commit(gid, {"add": [last_resort]})
        assert member.join(added["welcome"])["epoch"] == 1
        groups.append(gid)
    g1, g2 = groups

    own_update = member.commit(g1, {"force_path": True})
    assert owner.process(g1, own_update["commit"])["epoch"] == 2

    message = owner.send(g2, b"still readable in group 2")
    assert unb64(member.process(g2, message)["data"]) == b"still readable in group 2"
    path_commit = owner.commit(g2, {"update": True})
    assert member.process(g2, path_commit["commit"])["epoch"] == 2
    assert member.state(g2) == owner.state(g2)
