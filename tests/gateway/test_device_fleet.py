"""A fleet of ts-mls devices and a hosted bot in one group, with the gateway as delivery service.

The fleet test runs against a real ``mls-gateway serve`` over HTTP only (api-delivery.md): a hosted bot
identity creates a group; 52 ts-mls devices (clients with their own tokens) upload KeyPackages; the bot
claims them and adds them in three commits; the devices join from their mailboxes; the bot's message
reaches every device, devices' messages reach the bot's inbox and the other devices; four devices commit
self-updates at the same epoch — exactly one is accepted per epoch, the others get ``409`` with the log's
epoch, take the winner from their mailbox and retry — and at the end the bot and every device agree on
the epoch, the epoch authenticator and an exported secret. Waits are long-polls; the only time limits are
generous deadlock guards.

The other tests check the device helpers' own logic (tests/gateway/devices.py) with real ts-mls clients
and no server: parsing of mailbox pages and log answers, and applying mailbox items in order, once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.interop.ts_mls_peer import CommitResult, TsMlsPeer

from .devices import (
    DEVICE_SUITE,
    Deadline,
    Device,
    GatewayAnswerError,
    HostedInbox,
    MailboxItem,
    MailboxPage,
    Submission,
    create_devices,
    expect,
    gid_segment,
    group_id_of_segment,
    in_parallel,
)
from .gwclient import Client, GatewayServer, Hosted, Response, b64, unb64

DEVICES = 52
ADD_BATCHES = 3
CONTENDERS = 4
#: Deadlock guard per phase (seconds); the phases take a few seconds each.
GUARD = 90.0
EXPORT_LABEL, EXPORT_CONTEXT, EXPORT_LENGTH = "fleet", b"fleet context", 32


@pytest.fixture(scope="module")
def device_peers(ts_mls_peer: TsMlsPeer) -> Iterator[list[TsMlsPeer]]:
    """Two ts-mls peer processes (the session's and one more), so devices use both cores."""
    extra = TsMlsPeer()
    yield [ts_mls_peer, extra]
    extra.close()


# ---- the fleet -------------------------------------------------------------------------------------------


def chunks(devices: list[Device], n: int) -> list[list[Device]]:
    """``devices`` in ``n`` nearly equal consecutive batches."""
    size = -(-len(devices) // n)
    return [devices[i : i + size] for i in range(0, len(devices), size)]


def claim(api: Client, devices: list[Device]) -> list[str]:
    """Claim one KeyPackage of each device (tenant token); returned in the devices' order."""
    ids = [d.client_id for d in devices]
    body = {"endpoints": ids, "cipher_suite": DEVICE_SUITE}
    got = expect(api.post("/v1/key-packages/claim", body), "POST /v1/key-packages/claim", 200)
    kps = got["key_packages"]
    assert isinstance(kps, dict) and sorted(kps) == sorted(ids), f"claimed for other endpoints: {got.body!r}"
    return [kps[i] for i in ids]


def add_in_batches(api: Client, bot: Hosted, gid: str, devices: list[Device]) -> int:
    """The bot claims and adds the devices in ``ADD_BATCHES`` commits; returns the final epoch."""
    epoch = 0
    for batch in chunks(devices, ADD_BATCHES):
        resp = bot.post(gid, "/commits", {"add": claim(api, batch)})
        commit = expect(resp, f"POST {bot.path(gid, '/commits')} (add {len(batch)})", 200).body
        assert commit["epoch"] == epoch + 1 and commit["welcome"], commit
        epoch = commit["epoch"]
    return epoch


def sync_all(devices: list[Device], group_id: bytes, epoch: int, what: str) -> None:
    deadline = Deadline(GUARD, what)
    in_parallel(devices, lambda d: d.sync_to_epoch(group_id, epoch, deadline))


def wait_hosted_epoch(bot: Hosted, gid: str, epoch: int) -> dict[str, object]:
    """The bot's view of the group once the gateway applied the log up to ``epoch`` (polled)."""
    deadline = Deadline(GUARD, f"the bot to reach epoch {epoch}")
    while True:
        group = bot.group(gid)
        if group["epoch"] >= epoch:
            assert group["epoch"] == epoch, group
            return group
        deadline.check(f"(at {group['epoch']})")
        time.sleep(0.1)


def check_log_view(api: Client, gid: str, epoch: int, members: int) -> None:
    """``GET /v1/groups/{gid}``: the log's epoch and its members (every leaf, with its endpoint)."""
    log = expect(api.get(f"/v1/groups/{gid}"), f"GET /v1/groups/{gid}", 200).body
    assert log["epoch"] == epoch, log
    assert len(log["members"]) == members, log


def bot_to_devices(bot: Hosted, gid: str, group_id: bytes, devices: list[Device]) -> None:
    text = b"hello fleet, from the bot"
    bot.send(gid, text)
    deadline = Deadline(GUARD, "the bot's message at every device")
    in_parallel(devices, lambda d: d.sync(lambda x: text in x.texts(group_id), deadline))


def devices_to_all(inbox: HostedInbox, group_id: bytes, devices: list[Device]) -> None:
    """Three devices send; the bot's inbox and every other device get all three, in log order."""
    senders = devices[:: len(devices) // 3][:3]
    texts = {d.name: f"hello from {d.name}".encode() for d in senders}
    seqs = in_parallel(senders, lambda d: d.send(group_id, texts[d.name]))
    assert len(set(seqs)) == 3, seqs
    inbox.wait_for(group_id, list(texts.values()), Deadline(GUARD, "the devices' messages at the bot"))
    deadline = Deadline(GUARD, "the devices' messages at every device")

    def others(d: Device) -> set[bytes]:
        return {t for name, t in texts.items() if name != d.name}

    in_parallel(devices, lambda d: d.sync(lambda x: others(x) <= set(x.texts(group_id)), deadline))
    for d in devices:
        seen = [r for r in d.received if r.data in texts.values()]
        assert [r.seq for r in seen] == sorted(r.seq for r in seen), f"{d!r}: out of log order"


def racing_commits(group_id: bytes, contenders: list[Device], epoch: int) -> None:
    """Every contender commits at ``epoch`` at once: one wins it, the others get 409 and retry until
    each has one commit accepted, one per epoch."""
    pending = [(d, d.prepare_update(group_id)) for d in contenders]
    assert {c.epoch for _, c in pending} == {epoch + 1}
    gate = threading.Barrier(len(contenders))

    def submit_together(entry: tuple[Device, CommitResult]) -> Submission:
        gate.wait(timeout=GUARD)
        return entry[0].submit_bundle(group_id, entry[1])

    firsts = in_parallel(pending, submit_together)
    winners = [s for s in firsts if s.accepted]
    assert len(winners) == 1 and winners[0].epoch == epoch + 1, firsts
    assert all(s.epoch == epoch + 1 for s in firsts if not s.accepted), firsts
    losers = [d for d, s in zip(contenders, firsts, strict=True) if not s.accepted]
    deadline = Deadline(GUARD, "the losers' retries")
    in_parallel(losers, lambda d: d.commit_with_retry(group_id, deadline))
    accepted = sorted(s.epoch for d in contenders for s in d.submissions if s.accepted)
    assert accepted == list(range(epoch + 1, epoch + 1 + len(contenders))), accepted
    conflicts = [s for d in contenders for s in d.submissions if not s.accepted]
    assert len(conflicts) >= len(contenders) - 1


def assert_agreement(bot: Hosted, gid: str, group_id: bytes, devices: list[Device], epoch: int) -> None:
    """The bot and every device: same epoch, epoch authenticator and exported secret."""
    view = wait_hosted_epoch(bot, gid, epoch)
    want_auth = unb64(str(view["epoch_authenticator"]))
    want_secret = bot.export(gid, EXPORT_LABEL, EXPORT_LENGTH, EXPORT_CONTEXT)
    for d in devices:
        assert d.epoch_authenticator(group_id) == (want_auth, epoch), f"{d!r} forked from the bot"
        assert d.export(group_id, EXPORT_LABEL, EXPORT_CONTEXT, EXPORT_LENGTH) == want_secret, repr(d)


@pytest.mark.both_stores  # device clients: mailboxes, the log, racing commits on either store (issue 15)
def test_fleet_of_ts_mls_devices(gateway: GatewayServer, device_peers: list[TsMlsPeer]) -> None:
    api = gateway.client(gateway.admin.create_tenant("fleet")[1])
    bot = Hosted.create(api, "fleet-bot")
    gid = bot.create_group()
    group_id = group_id_of_segment(gid)
    devices = create_devices(api, device_peers, DEVICES, prefix=f"fleet-{gateway.port}")
    assert in_parallel(devices, lambda d: d.upload_key_packages(1)) == [1] * DEVICES
    listing = devices[0].api.get(f"/v1/clients/{devices[0].client_id}/key-packages")
    assert expect(listing, "GET /v1/clients/{id}/key-packages", 200)["available"] == 1

    epoch = add_in_batches(api, bot, gid, devices)
    sync_all(devices, group_id, epoch, "every device to join")
    check_log_view(api, gid, epoch, DEVICES + 1)
    assert_agreement(bot, gid, group_id, devices, epoch)

    bot_to_devices(bot, gid, group_id, devices)
    devices_to_all(HostedInbox(api, bot.identity_id), group_id, devices)

    contenders = devices[:: len(devices) // CONTENDERS][:CONTENDERS]
    racing_commits(group_id, contenders, epoch)
    epoch += CONTENDERS
    sync_all(devices, group_id, epoch, "every device to take the racing commits")
    check_log_view(api, gid, epoch, DEVICES + 1)
    assert_agreement(bot, gid, group_id, devices, epoch)


# ---- the device helpers, without a server ---------------------------------------------------------------


def test_group_id_segments_round_trip() -> None:
    for raw in (b"", b"\x00", b"\xfb\xff", bytes(range(32)), b"fleet group"):
        seg = gid_segment(raw)
        assert "=" not in seg and "+" not in seg and "/" not in seg
        assert group_id_of_segment(seg) == raw


def test_mailbox_pages_parse_and_refuse_malformed_items() -> None:
    item = {"cursor": 7, "group_id": b64(b"g"), "seq": 3, "kind": "commit", "message": b64(b"m")}
    page = MailboxPage.from_json({"items": [item], "next_cursor": None}, after=None)
    assert page.items == [MailboxItem(7, b"g", 3, "commit", b"m")] and page.next_cursor == 7
    assert MailboxPage.from_json({"items": [], "next_cursor": "c9"}, after=4).next_cursor == "c9"
    assert MailboxPage.from_json({"items": []}, after=4).next_cursor == 4
    for bad in (
        {**item, "kind": "update"},
        {**item, "seq": -1},
        {**item, "seq": True},
        {**item, "message": "not base64!"},
        {k: v for k, v in item.items() if k != "cursor"},
        [item],
    ):
        with pytest.raises(ValueError):
            MailboxItem.from_json(bad)
    with pytest.raises(ValueError):
        MailboxPage.from_json({"events": []}, after=None)


def test_log_answers_classify() -> None:
    ok = Submission.from_response(Response(201, {"seq": 9, "epoch": 4}), "bundle")
    assert ok == Submission(True, 4, 9)
    lost = Submission.from_response(Response(409, {"code": "conflict", "current_epoch": 5}), "bundle")
    assert lost == Submission(False, 5)
    for resp in (
        Response(404, {"code": "not_found"}),
        Response(409, {"code": "not_a_member"}),
        Response(403, {"code": "not_a_member"}),
    ):
        with pytest.raises(GatewayAnswerError, match="bundle"):
            Submission.from_response(resp, "bundle")


def offline_device(peer: TsMlsPeer, name: str) -> Device:
    """A device whose mailbox items the test hands over itself (its gateway client is never called)."""
    peer.new_client(name, name.encode(), DEVICE_SUITE)
    return Device(peer, name, f"cli_{name}", Client(port=9, token="unused"))


def test_device_applies_items_in_order_once(ts_mls_peer: TsMlsPeer) -> None:
    """Welcome (tree in its GroupInfo), application, commit, repeats: applied once, plaintexts kept."""
    peer = ts_mls_peer
    owner, group_id = f"owner-{id(peer)}-a", b"offline group a"
    peer.new_client(owner, b"owner", DEVICE_SUITE)
    peer.create_group(owner, group_id)
    device = offline_device(peer, f"dev-{id(peer)}-a")
    added = peer.add(owner, [peer.key_package(device.name)], ratchet_tree_extension=True)
    assert added.welcome is not None
    welcome = MailboxItem(1, group_id, 1, "welcome", added.welcome)
    app = MailboxItem(2, group_id, 2, "application", peer.send(owner, b"first"))
    update = MailboxItem(3, group_id, 3, "commit", peer.update(owner).commit)
    for item in (welcome, app, welcome, app, update, update):
        device.apply(item)
    assert device.texts(group_id) == [b"first"]
    assert device.epoch(group_id) == 2
    assert device.epoch_authenticator(group_id) == peer.epoch_authenticator(owner)
    with pytest.raises(AssertionError, match="not joined"):
        device.apply(MailboxItem(4, b"other group", 4, "commit", update.message))


def test_device_without_tree_asks_the_gateway(ts_mls_peer: TsMlsPeer) -> None:
    """A Welcome without the ratchet_tree extension sends the device to GET …/group-info (here: no
    gateway listens, so the attempt itself is what the test sees)."""
    peer = ts_mls_peer
    owner, group_id = f"owner-{id(peer)}-b", b"offline group b"
    peer.new_client(owner, b"owner", DEVICE_SUITE)
    peer.create_group(owner, group_id)
    device = offline_device(peer, f"dev-{id(peer)}-b")
    added = peer.add(owner, [peer.key_package(device.name)], ratchet_tree_extension=False)
    assert added.welcome is not None
    with pytest.raises(OSError):
        device.apply(MailboxItem(1, group_id, 1, "welcome", added.welcome))
    assert device.epoch(group_id) == -1


def test_pending_update_survives_a_lost_race(ts_mls_peer: TsMlsPeer) -> None:
    """What commit_with_retry does on 409, by hand: drop the pending commit, take the winner's, retry."""
    peer = ts_mls_peer
    owner, group_id = f"owner-{id(peer)}-c", b"offline group c"
    peer.new_client(owner, b"owner", DEVICE_SUITE)
    peer.create_group(owner, group_id)
    device = offline_device(peer, f"dev-{id(peer)}-c")
    added = peer.add(owner, [peer.key_package(device.name)], ratchet_tree_extension=True)
    assert added.welcome is not None
    device.apply(MailboxItem(1, group_id, 1, "welcome", added.welcome))
    mine = device.prepare_update(group_id)
    winner = peer.update(owner)
    peer.discard_pending(device.name, group_id=group_id)
    device.apply(MailboxItem(2, group_id, 2, "commit", winner.commit))
    retry = device.prepare_update(group_id)
    assert (mine.epoch, retry.epoch) == (2, 3)
    peer.process(owner, retry.commit)
    peer.merge_pending(device.name, group_id=group_id)
    assert device.epoch_authenticator(group_id) == peer.epoch_authenticator(owner)
