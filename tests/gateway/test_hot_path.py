"""The hot path of application messages (docs/architecture.md "Hot path").

* Store: a ratchet write is a compare-and-swap on the membership's version like a full write, leaves the
  ``groups`` row (and its large state) untouched, moves the version and ``applied_seq`` on; a full write
  removes the ratchet row; deleting the membership deletes it too.
* Group commit: concurrent write transactions share one fsync of the WAL, and none returns before an fsync
  that started after its COMMIT completed (an fsync held back shows that nobody got through); a barrier
  (what a replayed Idempotency-Key answer waits for) covers every commit a reader can already see.
* Through the real server: messages write the sealed ratchet state alone (the sealed full state stays
  byte for byte), a message delivered again writes no state, a commit writes the full state and removes
  the ratchet state; a ratchet state written by another process (same data folder) is loaded with the
  full state by the next request, so no generation is reused.
* A write that fails after the operation advanced the in-memory state (injected in process) leaves no
  cache entry with that state: the next request loads the stored one, and the group goes on.
* kill -9 right after a burst of concurrent sends was answered: after the restart every acknowledged send
  replays to its very answer (its idempotency record committed with its ratchet state and its log entry),
  and the sender continues after every acknowledged generation.
"""

from __future__ import annotations

import copy
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.sqlite_durability import WalSync
from gateway.sqlite_store import SqliteStore, SqliteTransaction
from gateway.store import EpochConflict, GroupRecord, Identity, StoreUnavailable, Tenant

from ..gateway_fuzz.harness import Gateway, two_member_group
from .gwclient import Client, GatewayServer, Hosted, b64, free_port, unb64

#: Deadlock guard of one wait (seconds); nothing asserts on elapsed time.
GUARD = 60.0


def _membership_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.add_tenant(Tenant("t1", "tenant", "token"))
        tx.add_identity(Identity("idn", "t1", "n", 1, b"cred", b"ref", b"pub", "token", "token"))
    return store


def test_ratchet_writes_are_versioned_and_leave_the_full_state_alone(tmp_path: Path) -> None:
    store = _membership_store(tmp_path / "db.sqlite3")
    with store.transaction() as tx:
        assert tx.put_group(GroupRecord("idn", b"g", 3, b"full", None, applied_seq=5), None) == 1
        assert tx.put_group_ratchet("idn", b"g", 6, b"r2", 1) == 2
        with pytest.raises(EpochConflict):
            tx.put_group_ratchet("idn", b"g", 7, b"stale", 1)  # the version moved on
        assert tx.put_group_ratchet("idn", b"g", 7, b"r3", 2) == 3
    with store.read_transaction() as tx:
        record = tx.get_group("idn", b"g")
        assert record is not None
        assert (record.state, record.epoch, record.version, record.applied_seq, record.ratchet) == (
            b"full",
            3,
            3,
            7,
            b"r3",
        )
        assert tx.get_group_version("idn", b"g") == 3 and tx.hosted_progress("ten", "idn", b"g")[1] == 7
        assert [g.ratchet for g in tx.list_groups("idn")] == [b"r3"]
    with store.transaction() as tx:
        with pytest.raises(EpochConflict):
            tx.put_group(GroupRecord("idn", b"g", 4, b"full2", None), 2)  # the full state's own version
        assert tx.put_group(GroupRecord("idn", b"g", 4, b"full2", None, applied_seq=8), 3) == 4
    with store.read_transaction() as tx:
        record = tx.get_group("idn", b"g")
        assert record is not None and (record.state, record.version, record.ratchet) == (b"full2", 4, None)
    with store.transaction() as tx:
        assert tx.put_group_ratchet("idn", b"g", 9, b"r5", 4) == 5
        assert tx.delete_group("idn", b"g")
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM group_ratchets").fetchone()[0] == 0
    conn.close()
    store.close()


class HeldSync(WalSync):
    """A WalSync whose first fsync waits until ``n`` commits took a ticket, recording how many
    transactions had returned when each fsync started."""

    def __init__(self, database: Path, n: int, returned: list[int]) -> None:
        super().__init__(database)
        self.n = n
        self.returned = returned
        self.returned_at_fsync: list[int] = []

    def _fsync(self) -> None:
        self.returned_at_fsync.append(len(self.returned))
        if len(self.returned_at_fsync) == 1:
            deadline = time.monotonic() + GUARD
            while self._tickets < self.n:
                assert time.monotonic() < deadline, "the other writers never committed"
                time.sleep(0.001)
        super()._fsync()


def test_concurrent_commits_share_one_fsync_and_none_returns_before_it(tmp_path: Path) -> None:
    n = 8
    store = SqliteStore(tmp_path / "db.sqlite3")
    returned: list[int] = []
    held = HeldSync(store.path, n, returned)
    store.durability = held

    def write(i: int) -> None:
        with store.transaction() as tx:
            tx.put_software_key(bytes([i]), b"sealed")
        returned.append(i)

    with ThreadPoolExecutor(n) as pool:
        for future in [pool.submit(write, i) for i in range(n)]:
            future.result(timeout=GUARD)
    # The first fsync covered the first commit only and was held until all n had committed: nobody had
    # returned when it started, at most its own writer when the second (covering the n-1 others) started.
    assert held.syncs == 2 and held.commits == n
    assert held.returned_at_fsync[0] == 0 and held.returned_at_fsync[1] <= 1
    assert sorted(returned) == list(range(n))
    with store.transaction() as tx:  # a transaction that changed nothing waits for no fsync
        tx.list_software_key_refs()
    assert held.syncs == 2
    store.close()


class GatedSync(WalSync):
    """A WalSync whose fsyncs wait for ``gate`` (set by the test)."""

    def __init__(self, database: Path) -> None:
        super().__init__(database)
        self.gate = threading.Event()
        self.started = threading.Event()

    def _fsync(self) -> None:
        self.started.set()
        assert self.gate.wait(GUARD), "the test never opened the gate"
        super()._fsync()


def test_a_barrier_waits_for_the_fsync_of_commits_it_can_see(tmp_path: Path) -> None:
    """What ``Persistence.replay`` relies on: ``SqliteStore.sync`` returns only once every commit so far
    (here one whose own fsync is still running) is on disk, though readers already see it."""
    store = SqliteStore(tmp_path / "db.sqlite3")
    gated = GatedSync(store.path)
    store.durability = gated

    def write() -> None:
        with store.transaction() as tx:
            tx.put_software_key(b"k", b"sealed")

    writer = threading.Thread(target=write)
    writer.start()
    assert gated.started.wait(GUARD)  # committed, its fsync under way (held)
    with store.read_transaction() as tx:
        assert tx.get_software_key(b"k") == b"sealed"  # visible to readers already
    barrier = threading.Thread(target=store.sync)
    barrier.start()
    barrier.join(timeout=0.5)
    assert barrier.is_alive() and writer.is_alive()  # neither returns before the fsync
    gated.gate.set()
    barrier.join(GUARD)
    writer.join(GUARD)
    assert not barrier.is_alive() and not writer.is_alive()
    assert gated.commits == 1 and gated.syncs >= 1
    store.sync()  # nothing new: no fsync due
    assert gated.syncs == 1
    store.close()


# ---- through the real server ----------------------------------------------------------------------------


def _pair(server: GatewayServer, name: str) -> tuple[Client, Hosted, Hosted, str]:
    api = server.client(server.admin.create_tenant(name)[1])
    alice, bob = Hosted.create(api, "alice"), Hosted.create(api, "bob")
    gid = alice.create_group()
    bob.join(alice.commit(gid, {"add": [bob.key_package()]})["welcome"])
    return api, alice, bob, gid


def _rows(server: GatewayServer, identity_id: str) -> tuple[bytes, int, bytes | None]:
    """The sealed full state, the groups row's own version and the sealed ratchet state (whose AAD binds
    the membership's version), as stored."""
    conn = sqlite3.connect(f"file:{server.data_dir / 'gateway.sqlite3'}?mode=ro", uri=True)
    try:
        state, version = conn.execute(
            "SELECT state, version FROM groups WHERE identity_id = ?", (identity_id,)
        ).fetchone()
        ratchet = conn.execute(
            "SELECT sealed FROM group_ratchets WHERE identity_id = ?", (identity_id,)
        ).fetchone()
    finally:
        conn.close()
    return bytes(state), int(version), None if ratchet is None else bytes(ratchet[0])


def test_messages_write_the_ratchet_state_and_commits_the_full_state(gateway: GatewayServer) -> None:
    _, alice, bob, gid = _pair(gateway, "hot-path")
    full, version, ratchet = _rows(gateway, alice.identity_id)
    assert ratchet is None
    for n in range(3):
        assert unb64(bob.process(gid, alice.send(gid, b"m%d" % n))["data"]) == b"m%d" % n
    after = _rows(gateway, alice.identity_id)
    assert after[:2] == (full, version)  # the full state was not written again
    assert after[2] is not None and len(after[2]) < len(full)
    message = alice.send(gid, b"once")
    assert unb64(bob.process(gid, message)["data"]) == b"once"
    bob_before = _rows(gateway, bob.identity_id)
    # Delivered again: answered from the group's log; bob's state did not change, so nothing is written.
    assert unb64(bob.process(gid, message)["data"]) == b"once"
    assert _rows(gateway, bob.identity_id) == bob_before
    alice.commit(gid, {})
    committed = _rows(gateway, alice.identity_id)
    assert committed[0] != full and committed[1] > version and committed[2] is None
    assert unb64(bob.process(gid, alice.send(gid, b"after the commit"))["data"]) == b"after the commit"


def _second_process(server: GatewayServer) -> GatewayServer:
    other = copy.copy(server)
    other.port, other.proc = free_port(), None
    other.start()
    return other


def test_a_ratchet_state_written_elsewhere_is_loaded_with_the_full_state(gateway: GatewayServer) -> None:
    api, alice, bob, gid = _pair(gateway, "hot-path-elsewhere")
    for n in range(2):  # both memberships cached here, with ratchet states
        assert unb64(bob.process(gid, alice.send(gid, b"warm %d" % n))["data"]) == b"warm %d" % n
    other = _second_process(gateway)
    try:
        elsewhere = Hosted(other.client(api.token), alice.identity_id, "alice")
        sent = [elsewhere.send(gid, b"elsewhere %d" % n) for n in range(2)]
    finally:
        other.stop()
    assert _rows(gateway, alice.identity_id)[2] is not None
    here = alice.send(gid, b"here")  # this process's cached state is stale: it must load the other's
    for n, message in enumerate(sent):
        assert unb64(bob.process(gid, message)["data"]) == b"elsewhere %d" % n
    assert unb64(bob.process(gid, here)["data"]) == b"here"


def test_kill_9_after_the_answers_loses_no_acknowledged_send(gateway: GatewayServer) -> None:
    api, alice, bob, gid = _pair(gateway, "hot-path-crash")
    path = alice.path(gid, "/messages")
    acked: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    lock = threading.Lock()

    def send(i: int) -> None:
        body = {"data": b64(b"burst %d" % i)}
        response = api.post(path, body, idem=f"burst-{i}").expect(200)
        with lock:
            acked[f"burst-{i}"] = (body, response.body)

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(send, i) for i in range(18)]:
            future.result(timeout=GUARD)
    gateway.kill()  # at once, after the last answer: no clean shutdown
    gateway.start()
    assert len(acked) == 18
    for idem, (body, answer) in acked.items():
        assert api.post(path, body, idem=idem).expect(200).body == answer  # replayed, not sent again
    fresh = alice.send(gid, b"after the crash")
    assert unb64(bob.process(gid, fresh)["data"]) == b"after the crash"
    seen = set()
    for _, answer in acked.values():  # every acknowledged message decrypts to its plaintext, once
        got = bob.api.post(bob.path(gid, "/process"), {"message": answer["message"]})
        assert got.status == 200, got.body
        seen.add(unb64(got.body["data"]))
    assert seen == {b"burst %d" % i for i in range(18)}


# ---- a failed request, in process (the state cache is observable) -----------------------------------------


def test_a_failed_write_leaves_no_advanced_state_in_the_cache(
    in_process: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = in_process
    sessions = gw.runtime.service.identities.sessions
    pair = two_member_group(gw)
    carol, gid = pair.first, pair.group_id
    alice, bob = pair.first_path, pair.second_path

    def send(data: bytes) -> str:
        return str(gw.ok("POST", alice + "/messages", {"data": b64(data)})["message"])

    def received(message: str) -> bytes:
        return unb64(gw.ok("POST", bob + "/process", {"message": message})["data"])

    assert received(send(b"cached")) == b"cached"
    key = (carol, gid)
    with gw.runtime.store.read_transaction() as tx:
        stored = tx.get_group(carol, gid)
    assert stored is not None and sessions.cache.peek(key, stored.version) is not None

    def refuse(*args: object, **kwargs: object) -> int:
        raise StoreUnavailable("injected: the disk is full")

    monkeypatch.setattr(SqliteTransaction, "put_group_ratchet", refuse)
    failed = gw.request("POST", alice + "/messages", json_body={"data": b64(b"lost")})
    assert failed.status == 503, failed
    monkeypatch.undo()
    # The operation advanced the in-memory state before its write failed: no entry may keep it.
    assert sessions.cache.peek(key, stored.version) is None
    with gw.runtime.store.read_transaction() as tx:
        after = tx.get_group(carol, gid)
    assert after == stored  # nothing was written
    assert received(send(b"after the failure")) == b"after the failure"
    assert received(send(b"and on")) == b"and on"


def test_a_read_inside_a_read_of_the_same_thread_shares_its_snapshot(tmp_path: Path) -> None:
    """A read started while the thread already reads (a blob's KEK looked up while a page of blobs is read,
    found in review: SQLite refused the second BEGIN and the page answered 503) reads in the outer one."""
    store = _membership_store(tmp_path / "db.sqlite3")
    with store.read_transaction() as outer:
        with store.read_transaction() as inner:
            assert [i.identity_id for i in inner.list_identities("t1")] == ["idn"]
        assert [i.identity_id for i in outer.list_identities("t1")] == ["idn"]
    with store.read_transaction() as again:  # the outer one ended as usual
        assert again.get_tenant("t1") is not None


def test_a_cache_entry_carries_the_ratchet_bytes_and_snapshot_of_its_state(in_process: Gateway) -> None:
    """What a commit computed (ratchet bytes, structure snapshot) goes into the cache entry with the state,
    for the next session to start from: it must be exactly its state's, after a send, a hosted delivery, a
    ``/process`` answered from the log and a commit (which writes the full state and carries none)."""
    gw = in_process
    sessions = gw.runtime.service.identities.sessions
    pair = two_member_group(gw)
    carol, dave, gid = pair.first, pair.second, pair.group_id
    alice, bob = pair.first_path, pair.second_path

    def entry_matches(identity_id: str) -> bool | None:
        """Whether the entry's carried values are its state's (``None``: it carries none)."""
        with gw.runtime.store.read_transaction() as tx:
            version = tx.get_group_version(identity_id, gid)
        assert version is not None
        entry = sessions.cache.peek((identity_id, gid), version)
        assert entry is not None
        if entry.ratchet is None:
            assert entry.structure is None
            return None
        return (
            entry.ratchet == entry.state.ratchet_state_to_bytes()
            and entry.structure == entry.state.structure_snapshot()
        )

    carried = []
    for n in range(4):
        message = gw.ok("POST", alice + "/messages", {"data": b64(b"m%d" % n)})["message"]
        carried.append(entry_matches(carol))
        assert unb64(gw.ok("POST", bob + "/process", {"message": message})["data"]) == b"m%d" % n
        carried.append(entry_matches(dave))
    assert carried and all(carried)  # every ratchet write carried its values, and they were right
    gw.ok("POST", alice + "/commits", {})  # a full write: nothing carried, computed on the next use
    assert entry_matches(carol) is None
    message = gw.ok("POST", alice + "/messages", {"data": b64(b"after")})["message"]
    assert entry_matches(carol) is True
    assert unb64(gw.ok("POST", bob + "/process", {"message": message})["data"]) == b"after"
