"""Forward secrecy at rest within an epoch (docs/architecture.md "Forward secrecy at rest").

* Store: a replaced or deleted sealed state (an identity's or a tenant's deletion, by cascade, included)
  leaves no byte in the database file or its WAL once the background eraser caught up
  (``secure_delete`` zeroes the freed pages, a ``wal_checkpoint(TRUNCATE)`` copies them over the old ones
  and empties the WAL); concurrent replacements share checkpoints. A reader of an older snapshot holds
  up neither the replacing write nor any other: the erasure waits (``pending_seconds``) and completes
  once the reader is gone.
* Through the app (real SoftHSM2, real SQLite): with ``full_state_every = N``, the stored full state stays
  as it was for N application messages and is written again by the (N+1)-th; then neither the database
  file nor the WAL holds the sealed state written before the first message, and the stored full state,
  opened with the data key, no longer decrypts the first message (the secret-tree nodes it was derived
  from are gone) — while the state written before it, opened the same way, did.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.custody import keys_for
from gateway.readiness import store_write_probe
from gateway.sealed_state import _state_aad
from gateway.sqlite_store import SqliteStore
from gateway.store import GroupRecord, Identity, Tenant
from mls import Group, GroupState, MemoryPskStore

from ..gateway_fuzz.harness import Gateway, two_member_group

#: full_state_every of the test: small, so a test sends few messages.
EVERY = 4


def _files(database: Path) -> bytes:
    """Every byte the store keeps: the database file and its WAL."""
    wal = database.with_name(database.name + "-wal")
    return database.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _windows(blob: bytes) -> list[bytes]:
    """Two 48-byte pieces of a sealed blob's ciphertext (middle, end; not its header, which names the data
    key and is the same in every blob sealed under it): random-looking, so neither occurs by chance, and
    any one left behind would be a remnant."""
    assert len(blob) > 1000
    mid = len(blob) // 2
    return [blob[mid : mid + 48], blob[-48:]]


def _store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.add_tenant(Tenant("t1", "tenant", "token"))
        for i in range(4):
            tx.add_identity(Identity(f"idn{i}", "t1", "n", 1, b"cred", b"ref", b"pub", "token", "token"))
    return store


def test_a_replaced_or_deleted_state_leaves_no_bytes_in_the_files(tmp_path: Path) -> None:
    store = _store(tmp_path / "db.sqlite3")
    old = [os.urandom(20_000) for _ in range(4)]  # overflow pages, as a real state has
    with store.transaction() as tx:
        for i, blob in enumerate(old):
            tx.put_group(GroupRecord(f"idn{i}", b"g", 0, blob, None), None)
    files = _files(store.path)
    assert all(w in files for blob in old for w in _windows(blob))

    def replace(i: int) -> None:
        with store.transaction() as tx:
            if i == 3:
                assert tx.delete_group(f"idn{i}", b"g")
            else:
                tx.put_group(GroupRecord(f"idn{i}", b"g", 1, os.urandom(20_000), None), 1)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(replace, i) for i in range(4)]:
            future.result(timeout=60)
    assert store.erasure.drain(timeout_s=60)
    files = _files(store.path)
    assert not any(w in files for blob in old for w in _windows(blob))
    assert 1 <= store.erasure.runs <= 4 and store.erasure.pending_seconds == 0.0
    with store.read_transaction() as tx:  # what stays is intact
        assert [g.epoch for g in tx.list_groups("idn0")] == [1] and tx.get_group("idn3", b"g") is None
    store.close()


def _put_states(store: SqliteStore, identity_ids: list[str]) -> dict[str, bytes]:
    states = {i: os.urandom(20_000) for i in identity_ids}
    with store.transaction() as tx:
        for identity_id, blob in states.items():
            tx.put_group(GroupRecord(identity_id, b"g", 0, blob, None), None)
        tx.put_group_ratchet(identity_ids[0], b"g", 0, os.urandom(2_000), 1)  # a ratchet row goes too
    assert store.erasure.drain(timeout_s=60)
    return states


def _lingers(store: SqliteStore, blobs: list[bytes]) -> list[bool]:
    files = _files(store.path)
    return [any(w in files for w in _windows(blob)) for blob in blobs]


def test_deleting_an_identity_erases_its_states(tmp_path: Path) -> None:
    store = _store(tmp_path / "db.sqlite3")
    states = _put_states(store, ["idn0", "idn1"])
    assert _lingers(store, list(states.values())) == [True, True]
    with store.transaction() as tx:  # DELETE /v1/identities/idn0: its groups go by ON DELETE CASCADE
        tx.delete_identity("idn0")
    assert store.erasure.drain(timeout_s=60)
    assert _lingers(store, [states["idn0"], states["idn1"]]) == [False, True]
    store.close()


def test_a_rolled_back_deletion_asks_for_no_erasure(tmp_path: Path) -> None:
    store = _store(tmp_path / "db.sqlite3")
    _put_states(store, ["idn0"])
    requested = store.erasure.progress()
    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert tx.delete_group("idn0", b"g")
        raise RuntimeError("the request fails after the delete")
    with store.transaction() as tx:  # a later write that replaces nothing is not marked by the rollback
        tx.add_identity(Identity("idn9", "t1", "n", 1, b"cred", b"ref", b"pub", "token", "token"))
    assert store.erasure.progress()[1:] == requested[1:] and store.erasure.pending_seconds == 0.0
    store.close()


def test_a_long_reader_holds_up_no_writer_and_erasure_follows_it(tmp_path: Path) -> None:
    """The reader holds its snapshot until the test lets it go (at most 30 s); the store's busy timeout
    is longer than that, so a write that waited for the reader would return only after it let go."""
    store = SqliteStore(tmp_path / "db.sqlite3", busy_timeout_s=120)
    with store.transaction() as tx:
        tx.add_tenant(Tenant("t1", "tenant", "token"))
        tx.add_identity(Identity("idn0", "t1", "n", 1, b"cred", b"ref", b"pub", "token", "token"))
    old = _put_states(store, ["idn0"])["idn0"]
    reading, release, released = threading.Event(), threading.Event(), threading.Event()
    write_inside, wrote_inside = threading.Event(), threading.Event()

    def reader() -> None:
        with store.read_transaction() as tx:
            assert tx.get_group("idn0", b"g") is not None  # a snapshot older than the writes below
            reading.set()
            if write_inside.wait(30):  # a write of the reading thread itself, its snapshot still held
                with store.transaction() as wtx:
                    wtx.add_identity(Identity("idn2", "t1", "n", 1, b"c", b"r", b"p", "token", "token"))
                wrote_inside.set()
            release.wait(30)
            released.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert reading.wait(60)
        with store.transaction() as tx:  # replaces the state: erasure due
            tx.put_group(GroupRecord("idn0", b"g", 1, os.urandom(20_000), None), 2)  # after the ratchet
        with store.transaction() as tx:  # an unrelated write after it
            tx.add_identity(Identity("idn1", "t1", "n", 1, b"cred", b"ref", b"pub", "token", "token"))
        assert store_write_probe(store, 60) is None  # /readyz's probe takes the write lock too
        write_inside.set()
        assert wrote_inside.wait(60)
        assert not released.is_set(), "a write waited for the reader of an older snapshot"
        assert not store.erasure.drain(timeout_s=0.3)  # the reader still needs the old pages
        assert store.erasure.pending_seconds > 0 and store.erasure.incomplete >= 1
        assert _lingers(store, [old]) == [True]
    finally:
        release.set()
        thread.join()
    assert store.erasure.drain(timeout_s=60)  # once the reader is gone, the eraser completes
    assert _lingers(store, [old]) == [False] and store.erasure.pending_seconds == 0.0
    store.close()


def test_full_state_every_is_a_setting_of_at_least_1(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\nfull_state_every = 9\n')
    assert load_config(config).full_state_every == 9
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\nfull_state_every = 0\n')
    with pytest.raises(ConfigError, match="full_state_every"):
        load_config(config)


def _sealed_state(database: Path, identity_id: str) -> bytes:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        (state,) = conn.execute("SELECT state FROM groups WHERE identity_id = ?", (identity_id,)).fetchone()
    finally:
        conn.close()
    return bytes(state)


def _decrypts(gw: Gateway, identity_id: str, group_id: bytes, sealed: bytes, message: bytes) -> bool:
    """Whether the sealed full state ``sealed`` (opened with the data key, as an attacker holding the
    database and the wrap key would) still derives the key of ``message``."""
    sealer = gw.runtime.service.identities.sessions.sealer
    with gw.runtime.store.read_transaction() as tx:
        identity = tx.get_identity(gw.world.tenant_id, identity_id)
    assert identity is not None
    keys = keys_for(sealer.keys, identity)
    state = GroupState.from_bytes(sealer.envelope.open(sealed, _state_aad(identity_id, group_id)), keys)
    try:
        Group(state, keys, MemoryPskStore()).process(message)
    except Exception:  # the library's refusal: the generation's key is gone
        return False
    return True


def test_after_n_plus_1_messages_the_first_key_is_gone_from_disk(in_process: Gateway) -> None:
    gw = in_process
    gw.runtime.service.identities.sessions.full_state_every = EVERY  # [gateway] full_state_every
    pair = two_member_group(gw)
    carol, dave, gid = pair.first, pair.second, pair.group_id
    sender, receiver = pair.first_path, pair.second_path
    before = {i: _sealed_state(gw.database, i) for i in (carol, dave)}

    def message(n: int) -> bytes:
        sent = gw.ok("POST", sender + "/messages", {"data": base64.b64encode(b"m%d" % n).decode()})
        got = gw.ok("POST", receiver + "/process", {"message": sent["message"]})
        assert base64.b64decode(got["data"]) == b"m%d" % n
        return base64.b64decode(sent["message"])

    first = message(1)
    assert _decrypts(gw, dave, gid, before[dave], first)  # the check can see a key that is still there
    for n in range(2, EVERY + 1):
        message(n)
    # N messages: the full states were not written again (the hot path), so they still derive the first key.
    assert {i: _sealed_state(gw.database, i) for i in (carol, dave)} == before
    message(EVERY + 1)
    assert isinstance(gw.runtime.store, SqliteStore) and gw.runtime.store.erasure.drain(timeout_s=60)
    files = _files(gw.database)
    for identity_id, sealed in before.items():
        now = _sealed_state(gw.database, identity_id)
        assert now != sealed
        assert not any(w in files for w in _windows(sealed)), "the old sealed state lingers on disk"
    assert not _decrypts(gw, dave, gid, _sealed_state(gw.database, dave), first)
    # The group goes on, from the rewritten state and the cache alike.
    gw.runtime.service.identities.sessions.cache.drop((dave, gid))
    message(EVERY + 2)


def test_deleting_an_identity_or_a_tenant_through_the_api_erases_their_states(in_process: Gateway) -> None:
    """DELETE /v1/identities/{id} and DELETE /v1/tenants/{id} (gateway.tenant_deletion) remove sealed states
    by ``ON DELETE CASCADE``; their bytes leave the files all the same."""
    gw = in_process
    tenant = gw.ok("POST", "/v1/tenants", {"name": "erased"}, auth="admin", expect=201)
    auth = f"Bearer {tenant['token']}"
    ids = [gw.ok("POST", "/v1/identities", {"name": n}, auth=auth)["identity_id"] for n in "abc"]
    for identity_id in ids:
        gw.ok("POST", f"/v1/identities/{identity_id}/groups", {}, auth=auth)
    store = gw.runtime.store
    assert isinstance(store, SqliteStore)
    assert store.erasure.drain(timeout_s=60)
    states = [_sealed_state(gw.database, identity_id) for identity_id in ids]
    assert _lingers(store, states) == [True, True, True]
    gw.ok("DELETE", f"/v1/identities/{ids[0]}", auth=auth, expect=204)
    assert store.erasure.drain(timeout_s=60)
    assert _lingers(store, states) == [False, True, True]
    gw.ok("DELETE", f"/v1/tenants/{tenant['tenant_id']}", auth="admin", expect=204)
    assert store.erasure.drain(timeout_s=60)
    assert _lingers(store, states) == [False, False, False]
    metrics = gw.request("GET", "/metrics", auth=None).body.decode()  # how far behind erasure is: not at all
    assert "\nmlsgw_erasure_pending_seconds 0.0\n" in metrics
    complete = 'mlsgw_erasure_checkpoints_total{outcome="complete"} '
    assert float(metrics.split(complete)[1].split()[0]) >= 2  # the two deletions above, at least
