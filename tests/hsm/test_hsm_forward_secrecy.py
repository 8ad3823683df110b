"""Forward secrecy with token-held keys, checked by counting the token's objects (RFC 9420 §16.4).

Every key pair is two token objects (private and public) with ``CKA_ID`` = the key reference; the tests
search the token with python-pkcs11 (by ``CKA_ID``, and all objects) before and after each step:

* a join destroys the consumed KeyPackage's init key at once; its leaf key is the member's live leaf key
  until the member's first commit with path, which destroys it; a last-resort KeyPackage's init key stays;
* a merged self-update (commit with path) destroys the replaced leaf key, in the committer;
* an Update proposal committed by another member destroys the proposer's replaced leaf key; an own Update
  proposal that the commit left out is destroyed;
* a member removed from the group loses every group key (leaf key, pending Update keys); its signature key
  (the identity's) stays;
* the gateway: ``DELETE /v1/identities/{id}`` (over HTTP, to an in-process gateway on the session's
  token) removes every key of the identity from the token and no other identity's.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pkcs11 import Attribute

from hsm import Pkcs11KeyStore, Token
from hsm.audit import AuditEvent
from hsm.envelope import Envelope, create_wrap_key
from hsm.token import StaleHandle
from mls.client import Client
from mls.credentials.credential import Credential
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.staged_commit import StagedCommit
from tests.group_helpers import check_agreement

SUITES = (1, 2)


# ---- counting token objects ------------------------------------------------------------------------------


def count(token: Token, ref: bytes) -> int:
    """Token objects whose CKA_ID is ``ref`` (2 for a live key pair, 0 once destroyed)."""
    return token.run(lambda s: len(list(s.get_objects({Attribute.ID: ref}))), op="test: count by id")


def total(token: Token) -> int:
    """Every object in the token."""
    return token.run(lambda s: len(list(s.get_objects({}))), op="test: count all")


def token_ids(token: Token) -> list[bytes]:
    """The CKA_ID of every object in the token (one entry per object). The search holds the token's object
    store guard like the product's own searches (the gateway's background delivery may create or destroy
    objects meanwhile), and runs again when an object it found was destroyed under it."""

    def ids(session: Any) -> list[bytes]:
        with token.objects("search"):
            return [bytes(o[Attribute.ID]) for o in session.get_objects({}) if _has_id(o)]

    for _ in range(5):
        try:
            return token.run(ids, op="test: all ids")
        except StaleHandle:
            continue
    return token.run(ids, op="test: all ids")


def _has_id(obj: Any) -> bool:
    try:
        return bool(obj[Attribute.ID])
    except Exception:  # objects without CKA_ID (none expected, but a search returns every class)
        return False


class TrackedKeyStore(Pkcs11KeyStore):
    """A member's key store: remembers the keys it made and has not destroyed."""

    def __init__(self, token: Token) -> None:
        self.live: set[bytes] = set()
        super().__init__(token, audit_hook=self._track)

    def _track(self, event: AuditEvent) -> None:
        if event.ok and event.operation in ("generate", "import"):
            self.live.add(event.key_ref)
        elif event.ok and event.operation == "destroy":
            self.live.discard(event.key_ref)


def member(token: Token, suite: int, name: str) -> Client:
    return Client(TrackedKeyStore(token), suite, Credential.basic(name.encode()))


def live(client: Client) -> set[bytes]:
    store = client.key_store
    assert isinstance(store, TrackedKeyStore)
    return set(store.live)


def deliver(commit: bytes, groups: list[Group]) -> list[StagedCommit]:
    out = []
    for g in groups:
        staged = g.process(commit)
        assert isinstance(staged, StagedCommit)
        g.merge(staged)
        out.append(staged)
    return out


@pytest.fixture(params=SUITES, ids=lambda s: f"suite{s}")
def suite(request: pytest.FixtureRequest, keystore: Pkcs11KeyStore) -> int:
    s = int(request.param)
    assert keystore.custody(s) == ("pkcs11", "pkcs11")
    return s


# ---- the group engine over token keys ------------------------------------------------------------------


def test_join_destroys_init_key_and_first_commit_with_path_the_leaf_key(token: Token, suite: int) -> None:
    alice, bob = member(token, suite, "alice"), member(token, suite, "bob")
    ga = alice.create_group(b"fs-join")
    bundle = bob.key_package()
    init_ref, leaf_ref = bundle.init_key.key_ref, bundle.leaf_key.key_ref
    assert count(token, init_ref) == count(token, leaf_ref) == 2
    before, refs_before = total(token), set(Pkcs11KeyStore(token).key_refs())

    staged = ga.commit(CommitOptions(add=[bundle.key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome)
    check_agreement([ga, gb])
    # the init key is gone at once, the leaf key is bob's live leaf key; nothing else changed
    assert count(token, init_ref) == 0 and count(token, leaf_ref) == 2
    assert total(token) == before - 2
    assert refs_before - set(Pkcs11KeyStore(token).key_refs()) == {init_ref}
    assert gb.state.keys.leaf_key.key_ref == leaf_ref and bundle.ref not in bob.key_packages

    # bob's first commit with path replaces (and destroys) the KeyPackage's leaf key
    before = total(token)
    staged = gb.commit(CommitOptions(force_path=True))
    assert count(token, leaf_ref) == 2  # still needed until the commit is merged
    gb.merge_pending_commit()
    assert staged.commit is not None
    deliver(staged.commit, [ga])
    check_agreement([ga, gb])
    assert count(token, leaf_ref) == 0
    new_leaf = gb.state.keys.leaf_key.key_ref
    assert count(token, new_leaf) == 2 and total(token) == before  # one made, one destroyed
    assert live(bob) == {bob.signer.key_ref, new_leaf}


def test_last_resort_init_key_is_kept(token: Token, suite: int) -> None:
    alice, bob = member(token, suite, "alice"), member(token, suite, "bob")
    ga = alice.create_group(b"fs-last-resort")
    bundle = bob.key_package(last_resort=True)
    staged = ga.commit(CommitOptions(add=[bundle.key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome)
    check_agreement([ga, gb])
    assert count(token, bundle.init_key.key_ref) == 2, "a last-resort KeyPackage's init key must stay"
    assert bundle.ref in bob.key_packages
    # retiring the last-resort KeyPackage is the caller's call; then the init key goes
    bob.key_store.destroy(bundle.init_key.key_ref)
    assert count(token, bundle.init_key.key_ref) == 0


def test_last_resort_leaf_key_survives_use_in_another_group(token: Token, suite: int) -> None:
    alice, carol, bob = (member(token, suite, n) for n in ("alice", "carol", "bob"))
    bundle = bob.key_package(last_resort=True)
    groups = []
    for creator, gid in ((alice, b"fs-lr-1"), (carol, b"fs-lr-2")):
        g = creator.create_group(gid)
        staged = g.commit(CommitOptions(add=[bundle.key_package]))
        g.merge_pending_commit()
        assert staged.welcome is not None
        groups.append((g, bob.join(staged.welcome)))
    (ga, gb1), (gc, gb2) = groups
    staged = gb1.commit(CommitOptions(force_path=True))  # bob updates in the first group
    gb1.merge_pending_commit()
    assert staged.commit is not None
    deliver(staged.commit, [ga])
    staged = gc.commit(CommitOptions(force_path=True))  # carol's path is encrypted to bob's leaf key
    gc.merge_pending_commit()
    assert staged.commit is not None
    deliver(staged.commit, [gb2])
    check_agreement([gc, gb2])


def test_self_update_and_update_proposals_destroy_replaced_leaf_keys(token: Token, suite: int) -> None:
    alice, bob, carol = (member(token, suite, n) for n in ("alice", "bob", "carol"))
    ga = alice.create_group(b"fs-update")
    kps = [bob.key_package(), carol.key_package()]
    staged = ga.commit(CommitOptions(add=[k.key_package for k in kps]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb, gc = bob.join(staged.welcome), carol.join(staged.welcome)
    everyone = [ga, gb, gc]
    check_agreement(everyone)

    # a merged self-update by alice destroys her replaced leaf key
    old = ga.state.keys.leaf_key.key_ref
    before = total(token)
    staged = ga.commit(CommitOptions(force_path=True))
    ga.merge_pending_commit()
    assert staged.commit is not None
    deliver(staged.commit, [gb, gc])
    check_agreement(everyone)
    assert count(token, old) == 0 and total(token) == before
    assert live(alice) == {alice.signer.key_ref, ga.state.keys.leaf_key.key_ref}

    # bob's Update proposal, committed by carol: bob's replaced leaf key is gone, the proposed one is his leaf
    bob_old = gb.state.keys.leaf_key.key_ref
    message, _ = gb.propose_update()
    proposed = next(iter(gb.state.update_keys.values()))
    assert count(token, proposed) == 2
    for g in (ga, gc):
        g.process(message)
    carol_old = gc.state.keys.leaf_key.key_ref
    staged = gc.commit()
    gc.merge_pending_commit()
    assert staged.commit is not None
    deliver(staged.commit, [ga, gb])
    check_agreement(everyone)
    assert count(token, bob_old) == 0 and count(token, carol_old) == 0
    assert gb.state.keys.leaf_key.key_ref == proposed and count(token, proposed) == 2
    assert live(bob) == {bob.signer.key_ref, proposed} and not gb.state.update_keys

    # an Update proposal the commit leaves out is dead after it
    message, _ = gb.propose_update()
    left_out = next(iter(gb.state.update_keys.values()))
    for g in (ga, gc):
        g.process(message)
    staged = ga.commit(CommitOptions(include_pending=False, force_path=True))
    ga.merge_pending_commit()
    assert staged.commit is not None
    deliver(staged.commit, [gb, gc])
    check_agreement(everyone)
    assert count(token, left_out) == 0 and gb.state.keys.leaf_key.key_ref == proposed
    assert live(bob) == {bob.signer.key_ref, proposed}


def test_removed_member_loses_every_group_key(token: Token, suite: int) -> None:
    alice, bob = member(token, suite, "alice"), member(token, suite, "bob")
    ga = alice.create_group(b"fs-remove")
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome)
    message, _ = gb.propose_update()  # a pending Update key that never gets committed
    ga.process(message)
    group_keys = live(bob) - {bob.signer.key_ref}
    assert len(group_keys) == 2 and all(count(token, r) == 2 for r in group_keys)
    before = total(token)
    alice_old = ga.state.keys.leaf_key.key_ref

    staged = ga.commit(CommitOptions(remove=[gb.own_leaf], include_pending=False))
    ga.merge_pending_commit()
    assert staged.commit is not None
    (result,) = deliver(staged.commit, [gb])
    assert result.removed_self and not gb.state.active
    for ref in group_keys:
        assert count(token, ref) == 0
    assert count(token, alice_old) == 0  # the remover's commit had a path
    assert live(bob) == {bob.signer.key_ref} and count(token, bob.signer.key_ref) == 2
    # bob's leaf, bob's update key and alice's old leaf gone; alice's new leaf made
    assert total(token) == before - 2 * 3 + 2


def test_discarded_and_losing_pending_commits_destroy_their_new_leaf(token: Token, suite: int) -> None:
    alice, bob = member(token, suite, "alice"), member(token, suite, "bob")
    ga = alice.create_group(b"fs-pending")
    staged = ga.commit(CommitOptions(add=[bob.key_package().key_package]))
    ga.merge_pending_commit()
    assert staged.welcome is not None
    gb = bob.join(staged.welcome)
    before = total(token)
    discarded = ga.commit(CommitOptions(force_path=True))
    assert discarded.state is not None
    pending_leaf = discarded.state.keys.leaf_key.key_ref
    assert count(token, pending_leaf) == 2 and total(token) == before + 2
    ga.discard_pending_commit()
    assert count(token, pending_leaf) == 0 and total(token) == before

    # alice's pending commit loses the race against bob's: its new leaf key is destroyed on merge
    losing = ga.commit(CommitOptions(force_path=True))
    assert losing.state is not None
    losing_leaf = losing.state.keys.leaf_key.key_ref
    winning = gb.commit(CommitOptions(force_path=True))
    gb.merge_pending_commit()
    assert winning.commit is not None
    deliver(winning.commit, [ga])
    check_agreement([ga, gb])
    assert count(token, losing_leaf) == 0
    assert live(alice) == {alice.signer.key_ref, ga.state.keys.leaf_key.key_ref}


# ---- the gateway: DELETE /v1/identities/{id} -------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def path_gid(group_id_b64: str) -> str:
    return base64.urlsafe_b64encode(base64.b64decode(group_id_b64)).decode().rstrip("=")


class Api:
    """A tenant's HTTP client of the in-process gateway; every request is attributed to an identity by the
    token objects it made (snapshots of the token's CKA_IDs before and after)."""

    def __init__(self, client: TestClient[Any, Any], token: Token, bearer: str) -> None:
        self.client = client
        self.token = token
        self.headers = {"Authorization": f"Bearer {bearer}"}
        self.made: dict[str, set[bytes]] = {}

    @contextmanager
    def owned_by(self, owner: str) -> Iterator[None]:
        before = set(token_ids(self.token))
        yield
        self.made.setdefault(owner, set()).update(set(token_ids(self.token)) - before)

    async def call(
        self, method: str, path: str, body: Any = None, *, status: int, owner: str | None = None
    ) -> Any:
        async def go() -> Any:
            resp = await self.client.request(method, path, json=body, headers=self.headers)
            text = await resp.text()
            assert resp.status == status, f"{method} {path}: {resp.status} {text}"
            return await resp.json() if text else None

        if owner is None:
            return await go()
        with self.owned_by(owner):
            return await go()


@asynccontextmanager
async def in_process_gateway(token: Token, folder: Path) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    """The gateway's aiohttp app over the session's token and a fresh SQLite store; yields the HTTP client
    and an admin token. The token is not closed at the end (it is the session's)."""
    from gateway.app import create_app
    from gateway.config import GatewayConfig
    from gateway.context import Runtime
    from gateway.metrics import Metrics
    from gateway.sealed_keys import SealedKeyPersistence
    from gateway.service import GatewayService
    from gateway.sqlite_store import SqliteStore

    store = SqliteStore(folder / "gateway.sqlite3")
    create_wrap_key(token)
    envelope = Envelope(token)
    keys = Pkcs11KeyStore(token, persistence=SealedKeyPersistence(store, envelope))
    metrics = Metrics()
    service = GatewayService(store, keys, envelope, on_key_use=metrics.key_use)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlsgw-test")
    runtime = Runtime(
        GatewayConfig(data_dir=folder), store, token, keys, envelope, service, metrics, executor
    )
    app = create_app(runtime)
    app.on_cleanup.clear()  # create_app's cleanup closes the token: not the session's
    admin = service.bootstrap_admin()
    assert admin is not None
    try:
        async with TestClient(TestServer(app)) as client:
            yield client, admin
    finally:
        executor.shutdown(wait=True)
        store.close()


async def _hosted_scenario(token: Token, folder: Path, *, pending_commit: bool) -> tuple[Api, dict[str, str]]:
    """Identities alice and bob with KeyPackages (used, unused, last-resort), a group each containing the
    other, alice's pending Update proposal (and, with ``pending_commit``, her pending commit); then
    ``DELETE`` alice. Returns the API (with the attribution of token objects) and the identity ids."""
    async with in_process_gateway(token, folder) as (client, admin_token):
        admin = Api(client, token, admin_token)
        tenant = await admin.call("POST", "/v1/tenants", {"name": "fs"}, status=201)
        api = Api(client, token, tenant["token"])
        ids = {}
        for name in ("alice", "bob"):
            made = await api.call(
                "POST", "/v1/identities", {"name": name, "cipher_suite": 1}, status=201, owner=name
            )
            ids[name] = made["identity_id"]
        a, b = ids["alice"], ids["bob"]

        async def key_packages(who: str, count: int, last_resort: bool = False) -> list[str]:
            r = await api.call(
                "POST",
                f"/v1/identities/{ids[who]}/key-packages",
                {"count": count, "last_resort": last_resort},
                status=201,
                owner=who,
            )
            return [k["key_package"] for k in r["key_packages"]]

        alice_kps = await key_packages("alice", 2)
        await key_packages("alice", 1, last_resort=True)
        bob_kps = await key_packages("bob", 1)

        async def group_with(creator: str, joiner: str, kp: str) -> str:
            base = f"/v1/identities/{ids[creator]}/groups"
            made = await api.call("POST", base, {}, status=201, owner=creator)
            gid = path_gid(made["group_id"])
            out = await api.call("POST", f"{base}/{gid}/commits", {"add": [kp]}, status=200, owner=creator)
            await api.call(
                "POST",
                f"/v1/identities/{ids[joiner]}/groups/join",
                {"welcome": out["welcome"]},
                status=201,
                owner=joiner,
            )
            return gid

        g1 = await group_with("alice", "bob", bob_kps[0])
        g2 = await group_with("bob", "alice", alice_kps[0])
        await api.call(
            "POST", f"/v1/identities/{a}/groups/{g1}/proposals", {"type": "update"}, status=201, owner="alice"
        )
        if pending_commit:
            await api.call(
                "POST",
                f"/v1/identities/{a}/groups/{g2}/commits",
                {"update": True, "pending": True},
                status=200,
                owner="alice",
            )

        present = set(token_ids(token))
        alice_keys = api.made["alice"] & present
        bob_keys = api.made["bob"] & present
        # signature, unused KeyPackage (2), last-resort KeyPackage (2), g1 leaf, pending Update key, g2 leaf
        # (the consumed KeyPackage's leaf key), and the pending commit's new leaf key
        assert len(alice_keys) == 8 + int(pending_commit), sorted(k.hex() for k in alice_keys)
        assert len(bob_keys) == 3  # signature, g1 leaf (his consumed KeyPackage's), g2 leaf
        before = total(token)
        await api.call("DELETE", f"/v1/identities/{a}", status=204)
        after_ids = set(token_ids(token))
        left = sorted(k.hex() for k in alice_keys & after_ids)
        assert not left, f"keys of the deleted identity still in the token: {left}"
        assert bob_keys <= after_ids, "another identity's keys were destroyed"
        assert total(token) == before - 2 * len(alice_keys)
        await api.call("GET", f"/v1/identities/{a}", status=404)
        await api.call("GET", f"/v1/identities/{b}/groups/{g1}", status=200)
        # and bob's turn: nothing of either identity is left
        await api.call("DELETE", f"/v1/identities/{b}", status=204)
        assert not bob_keys & set(token_ids(token))
        return api, ids


def _run(coro_factory: Callable[[], Any]) -> Any:
    return asyncio.run(coro_factory())


GATEWAY_WARNINGS = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


@GATEWAY_WARNINGS
def test_gateway_delete_identity_removes_all_its_keys(token: Token, tmp_path: Path) -> None:
    _run(lambda: _hosted_scenario(token, tmp_path, pending_commit=False))


@GATEWAY_WARNINGS
def test_gateway_delete_identity_with_a_pending_commit_removes_all_its_keys(
    token: Token, tmp_path: Path
) -> None:
    _run(lambda: _hosted_scenario(token, tmp_path, pending_commit=True))
