"""An in-process gateway for the fuzz tests, and the checks every fuzzed answer must pass.

:func:`start_gateway` does what ``mls-gateway init`` + ``serve`` do (:func:`gateway.cli.initialise`, then
:func:`gateway.app.open_runtime` and :func:`gateway.app.create_app`) over a throwaway SoftHSM2 token and
SQLite database in a temporary directory, serves the app with ``aiohttp.test_utils.TestServer`` on a
private event loop, and seeds it over HTTP with one tenant, two identities (alice, bob), one group with
both as members, two more groups of alice alone and KeyPackages (see :func:`seed`). Along the way it keeps
real MLS messages (commits, a proposal, application messages, KeyPackages, Welcomes, GroupInfos and
ratchet trees) for the fuzzers to mutate.

The tests are synchronous (Hypothesis drives them): :meth:`Gateway.request` runs one request on the
private loop. :meth:`Gateway.snapshot` is everything a rejected request must leave unchanged: the API's
summaries (tenants, identities, key packages with their consumed flags, groups with epoch, epoch
authenticator, tree hash, members, pending proposals and pending commit), the database rows apart from
the audit trail and the sealed state blobs, and the number of objects in the HSM token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import BaseRunner, TestClient, TestServer

from gateway.app import create_app, open_runtime
from gateway.cli import initialise
from gateway.config import GatewayConfig, HsmSettings
from gateway.context import Runtime
from gateway.errors import CODES, PROBLEM_CONTENT_TYPE
from gateway.http_server import ProblemAppRunner
from hsm.bootstrap import find_softhsm_module

#: The body limit of the fuzzed gateway: small, so that oversized bodies are cheap to send.
MAX_BODY_BYTES = 32 * 1024

_UNSET: Any = object()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class Reply:
    status: int
    content_type: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.content_type!r}, {self.body[:300]!r})"


@dataclass
class World:
    """Ids, tokens and real MLS messages of the seeded gateway."""

    admin_token: str = ""
    tenant_id: str = ""
    tenant_token: str = ""
    spare_token_id: str = ""  # a second token of the tenant (a target for the revoke route)
    revoked_token: str = ""  # a third one, revoked
    alice: str = ""
    bob: str = ""
    gid: bytes = b""  # the group of alice and bob
    gid2: bytes = b""  # a group of alice alone (bob's fresh Welcome is into it)
    gid3: bytes = b""  # another group of alice alone (bob may join it by external commit)
    client: str = ""  # a client (device) of the tenant, with KeyPackages in the directory
    client_token: str = ""
    #: Real MLS messages (wire format), by name: see :func:`seed`.
    messages: dict[str, bytes] = field(default_factory=dict)

    @property
    def identities(self) -> tuple[str, str]:
        return (self.alice, self.bob)

    def group_path(self, identity: str, gid: bytes | None = None) -> str:
        return f"/v1/identities/{identity}/groups/{b64url(self.gid if gid is None else gid)}"


class Snapshot(dict[str, Any]):
    """A :meth:`Gateway.snapshot` (short repr: Hypothesis prints the test's arguments on failure)."""

    def __repr__(self) -> str:
        return f"<snapshot: {len(self)} summaries, database rows and HSM object count>"


class Gateway:
    """A running in-process gateway (see the module docstring)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, client: TestClient[Any, Any], runtime: Runtime, database: Path
    ) -> None:
        self.loop = loop
        self.client = client
        self.runtime = runtime
        self.database = database
        self.world = World()

    # ---- requests ----------------------------------------------------------------------------------
    def headers(self, auth: str | None = "tenant", extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """``auth``: "tenant", "admin", None (no Authorization header) or a raw header value."""
        out: dict[str, str] = {}
        if auth == "tenant":
            out["Authorization"] = f"Bearer {self.world.tenant_token}"
        elif auth == "admin":
            out["Authorization"] = f"Bearer {self.world.admin_token}"
        elif auth is not None:
            out["Authorization"] = auth
        out.update(extra or {})
        return out

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: Any = _UNSET,
        auth: str | None = "tenant",
        headers: Mapping[str, str] | None = None,
        chunked: bool = False,
    ) -> Reply:
        """One request; ``chunked`` sends the body with chunked transfer encoding (no Content-Length)."""
        if json_body is not _UNSET:
            body = json.dumps(json_body).encode()
        hdrs = self.headers(auth, headers)
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        return self.loop.run_until_complete(self._request(method, path, body, hdrs, chunked))

    async def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], chunked: bool
    ) -> Reply:
        data: Any = body
        if chunked and body is not None:

            async def chunks(raw: bytes = body) -> Any:
                for i in range(0, len(raw), 4096):
                    yield raw[i : i + 4096]

            data = chunks()
        async with self.client.request(method, path, data=data, headers=headers) as resp:
            raw = await resp.read()
            return Reply(resp.status, resp.content_type, dict(resp.headers), raw)

    def ok(
        self,
        method: str,
        path: str,
        json_body: Any = _UNSET,
        *,
        auth: str | None = "tenant",
        expect: int | None = None,
    ) -> Any:
        """A request that must succeed (seeding and snapshots); its JSON body, or None."""
        reply = self.request(method, path, json_body=json_body, auth=auth)
        if not 200 <= reply.status < 300 or (expect is not None and reply.status != expect):
            raise AssertionError(f"{method} {path} failed: {reply!r}")
        return reply.json() if reply.body else None

    # ---- what a rejected request must leave unchanged ----------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The summaries (fetched concurrently), the database rows and the HSM object count."""
        return Snapshot(self.loop.run_until_complete(self._snapshot()))

    async def _get(self, path: str, auth: str = "tenant") -> Any:
        reply = await self._request("GET", path, None, self.headers(auth), False)
        if reply.status != 200:
            raise AssertionError(f"GET {path} failed: {reply!r}")
        return reply.json()

    async def _snapshot(self) -> dict[str, Any]:
        w = self.world
        paths = ["/v1/identities"]
        for iid in w.identities:
            paths += [f"/v1/identities/{iid}/key-packages", f"/v1/identities/{iid}/groups"]
        first = await asyncio.gather(self._get("/v1/tenants", "admin"), *(self._get(p) for p in paths))
        snap: dict[str, Any] = {"tenants": first[0], **dict(zip(paths, first[1:]))}
        groups = [
            w.group_path(iid, base64.b64decode(g["group_id"]))
            for iid in w.identities
            for g in snap[f"/v1/identities/{iid}/groups"]["groups"]
        ]
        snap.update(zip(groups, await asyncio.gather(*(self._get(p) for p in groups))))
        # the group service: clients, the directory's counts, and the logs of the world's groups
        directory = ["/v1/clients", f"/v1/clients/{w.client}", f"/v1/clients/{w.client}/key-packages"]
        snap.update(zip(directory, await asyncio.gather(*(self._get(p) for p in directory))))
        logs = [f"/v1/groups/{b64url(gid)}" for gid in self.logged_groups()]
        snap.update(zip(logs, await asyncio.gather(*(self._get(p) for p in logs))))
        snap["database"] = self.database_rows()
        snap["hsm_objects"] = self.hsm_object_count()
        return snap

    def database_rows(self) -> dict[str, Any]:
        """Every table but the audit trail; group rows without their sealed blobs (re-sealing is not a
        change)."""
        queries = {
            "tenants": "SELECT tenant_id, name FROM tenants ORDER BY tenant_id",
            "tokens": "SELECT token_id, tenant_id, token_hash, revoked_at IS NULL "
            "FROM tokens ORDER BY token_id",
            "identities": "SELECT identity_id, tenant_id, name, cipher_suite, credential, signature_key_ref "
            "FROM identities ORDER BY identity_id",
            "key_packages": "SELECT identity_id, ref, init_key_ref, leaf_key_ref, last_resort, consumed "
            "FROM key_packages ORDER BY identity_id, ref",
            "groups": "SELECT identity_id, group_id, epoch, pending IS NULL "
            "FROM groups ORDER BY identity_id, group_id",
            "group_ratchets": "SELECT identity_id, group_id, version, applied_seq "
            "FROM group_ratchets ORDER BY identity_id, group_id",
            "software_keys": "SELECT key_ref FROM software_keys ORDER BY key_ref",
            "idempotency": "SELECT scope, key, status FROM idempotency ORDER BY scope, key",
            # the group service (api-delivery.md)
            "clients": "SELECT client_id, tenant_id, name FROM clients ORDER BY client_id",
            "endpoint_keys": "SELECT * FROM endpoint_keys ORDER BY tenant_id, signature_key",
            "directory_key_packages": "SELECT client_id, ref, cipher_suite, key_package, last_resort, "
            "claimed_at FROM directory_key_packages ORDER BY client_id, ref",
            "group_logs": "SELECT tenant_id, group_id, cipher_suite, epoch, seq, group_info, ratchet_tree "
            "FROM group_logs ORDER BY tenant_id, group_id",
            "group_members": "SELECT * FROM group_members ORDER BY tenant_id, group_id, leaf_index",
            "log_entries": "SELECT tenant_id, group_id, seq, epoch, kind, sender, message, welcome, "
            "group_info, ratchet_tree, digest FROM log_entries ORDER BY tenant_id, group_id, seq",
            "log_welcomes": "SELECT * FROM log_welcomes ORDER BY tenant_id, digest",
            "mailbox": "SELECT cursor, client_id, tenant_id, group_id, seq, kind FROM mailbox "
            "ORDER BY cursor",
            "inbox": "SELECT cursor, identity_id, group_id, seq FROM inbox ORDER BY cursor",
            "hosted_pending": "SELECT * FROM hosted_pending ORDER BY identity_id, group_id",
            "webhooks": "SELECT identity_id, url, delivered_cursor, attempts, failing_since, "
            "next_attempt_at, paused FROM webhooks ORDER BY identity_id",
        }
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}
        finally:
            conn.close()

    def logged_groups(self) -> list[bytes]:
        """The ids of the groups the log knows (of any tenant)."""
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            return [row[0] for row in conn.execute("SELECT group_id FROM group_logs ORDER BY group_id")]
        finally:
            conn.close()

    def hsm_object_count(self) -> int:
        """Objects in the token (a key made by a failed request and not destroyed would show here)."""
        return self.runtime.token.run(
            lambda session: sum(1 for _ in session.get_objects()), op="fuzz: count objects"
        )


# ---- start, seed, stop -------------------------------------------------------------------------------------


class ProblemTestServer(TestServer):
    """aiohttp's test server on the runner ``serve`` uses (gateway.http_server): the HTTP parser's own
    refusals are problem documents here too."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ProblemAppRunner(self.app, **kwargs)


def start_gateway(directory: Path) -> Gateway:
    """``mls-gateway init`` + the app of ``serve``, in-process (SOFTHSM2_CONF is set by ``initialise``)."""
    # A label of its own: PKCS#11 is initialised once per process, and a token of the default label made by
    # another test in this process would otherwise be found first (with another PIN).
    hsm = HsmSettings(token_label=f"mlsgw-fuzz-{secrets.token_hex(4)}")
    config = GatewayConfig(
        data_dir=directory / "data", max_body_bytes=MAX_BODY_BYTES, worker_threads=4, hsm=hsm
    )
    report = initialise(config)
    runtime = open_runtime(config, find_softhsm_module())
    loop = asyncio.new_event_loop()
    client: TestClient[Any, Any] = TestClient(ProblemTestServer(create_app(runtime)), loop=loop)
    loop.run_until_complete(client.start_server())
    gw = Gateway(loop, client, runtime, config.database_path)
    gw.world.admin_token = report["admin_token"]
    try:
        seed(gw)
    except BaseException:
        stop_gateway(gw)
        raise
    return gw


def stop_gateway(gw: Gateway) -> None:
    """Close the client and the server; the app's clean-up closes the runtime (pool, token, database)."""
    gw.loop.run_until_complete(gw.client.close())
    gw.loop.close()


def seed(gw: Gateway) -> None:
    """One tenant, alice and bob, group G (both), groups G2 and G3 (alice), KeyPackages, and real messages:

    ``commit_epoch0`` (alice's Add of bob, stale now), ``commit`` and ``commit_private`` (alice's commits
    for the current epoch, public with an UpdatePath and private; staged and discarded, so bob has never
    seen them), ``proposal`` (bob's, pending at bob only), ``application_seen`` (alice → bob,
    processed), ``application`` (alice → bob, not processed), ``application_bob`` (bob → alice, not
    processed), ``key_package`` (an outside client's, addable), ``key_package_bob`` (bob's, unconsumed),
    ``key_package_alice`` (alice's, last-resort),
    ``welcome_stale`` (bob's join, consumed), ``welcome`` (into G2 for bob's unconsumed KeyPackage; the
    commit was discarded), ``group_info`` and ``ratchet_tree`` (of G), ``group_info3`` and ``ratchet_tree3``
    (of G3, a group of alice alone that bob could join by external commit), ``bundle_group_info`` (the
    GroupInfo of ``commit``: with it, a commit bundle for G's log), ``device_key_package`` (of the seeded
    client's device, not uploaded). The client has two KeyPackages in the directory.
    """
    w = gw.world
    m = w.messages
    tenant = gw.ok("POST", "/v1/tenants", {"name": "fuzz-tenant"}, auth="admin", expect=201)
    w.tenant_id, w.tenant_token = tenant["tenant_id"], tenant["token"]
    w.spare_token_id = gw.ok("POST", f"/v1/tenants/{w.tenant_id}/tokens", {}, auth="admin")["token_id"]
    revoked = gw.ok("POST", f"/v1/tenants/{w.tenant_id}/tokens", {}, auth="admin")
    gw.ok("DELETE", f"/v1/tenants/{w.tenant_id}/tokens/{revoked['token_id']}", auth="admin", expect=204)
    w.revoked_token = revoked["token"]
    w.alice = gw.ok("POST", "/v1/identities", {"name": "alice"})["identity_id"]
    w.bob = gw.ok("POST", "/v1/identities", {"name": "bob", "cipher_suite": 1})["identity_id"]
    bob_kps = gw.ok("POST", f"/v1/identities/{w.bob}/key-packages", {"count": 3})["key_packages"]
    alice_kps = gw.ok("POST", f"/v1/identities/{w.alice}/key-packages", {"count": 2, "last_resort": True})[
        "key_packages"
    ]

    w.gid = base64.b64decode(gw.ok("POST", f"/v1/identities/{w.alice}/groups", {})["group_id"])
    g_alice, g_bob = w.group_path(w.alice), w.group_path(w.bob)
    add = gw.ok("POST", g_alice + "/commits", {"add": [bob_kps[0]["key_package"]]})
    m["commit_epoch0"], m["welcome_stale"] = base64.b64decode(add["commit"]), base64.b64decode(add["welcome"])
    gw.ok("POST", f"/v1/identities/{w.bob}/groups/join", {"welcome": add["welcome"]}, expect=201)

    def send(path: str, data: bytes) -> bytes:
        return base64.b64decode(gw.ok("POST", path + "/messages", {"data": b64(data)})["message"])

    m["application_seen"] = send(g_alice, b"hello bob")
    assert gw.ok("POST", g_bob + "/process", {"message": b64(m["application_seen"])})["kind"] == "application"
    m["application"] = send(g_alice, b"never processed")
    m["application_bob"] = send(g_bob, b"hello alice, never processed")

    # bob's proposal, pending at bob only (a member with pending proposals may not send: alice must stay free)
    proposal = gw.ok("POST", g_bob + "/proposals", {"type": "group_context_extensions", "extensions": []})
    m["proposal"] = base64.b64decode(proposal["proposal"])
    for name, options in (("commit", {"update": True}), ("commit_private", {"handshake": "private"})):
        staged = gw.ok("POST", g_alice + "/commits", {**options, "include_pending": False, "pending": True})
        m[name] = base64.b64decode(staged["commit"])
        if name == "commit":  # a commit bundle the log would take (nobody submits it during the fuzz)
            m["bundle_group_info"] = base64.b64decode(staged["group_info"])
        gw.ok("DELETE", g_alice + "/pending-commit")

    w.gid2 = base64.b64decode(gw.ok("POST", f"/v1/identities/{w.alice}/groups", {})["group_id"])
    g2_alice = w.group_path(w.alice, w.gid2)
    staged = gw.ok("POST", g2_alice + "/commits", {"add": [bob_kps[1]["key_package"]], "pending": True})
    m["welcome"] = base64.b64decode(staged["welcome"])
    gw.ok("DELETE", g2_alice + "/pending-commit")

    info = gw.ok("GET", g_alice + "/group-info")
    m["group_info"], m["ratchet_tree"] = (
        base64.b64decode(info["group_info"]),
        base64.b64decode(info["ratchet_tree"]),
    )
    w.gid3 = base64.b64decode(gw.ok("POST", f"/v1/identities/{w.alice}/groups", {})["group_id"])
    info = gw.ok("GET", w.group_path(w.alice, w.gid3) + "/group-info")
    m["group_info3"], m["ratchet_tree3"] = (
        base64.b64decode(info["group_info"]),
        base64.b64decode(info["ratchet_tree"]),
    )
    m["key_package_bob"] = base64.b64decode(bob_kps[2]["key_package"])
    m["key_package_alice"] = base64.b64decode(alice_kps[0]["key_package"])
    m["key_package"] = outside_key_package()

    # a client (device) of the tenant, with two KeyPackages in the directory (one to claim, one left), and a
    # third KeyPackage of the device, never uploaded
    client = gw.ok("POST", "/v1/clients", {"name": "fuzz-phone"}, expect=201)
    w.client, w.client_token = client["client_id"], client["token"]
    device = device_client()
    uploaded = [b64(device.key_package().message()) for _ in range(2)]
    gw.ok("POST", f"/v1/clients/{w.client}/key-packages", {"key_packages": uploaded})
    m["device_key_package"] = device.key_package().message()


def outside_key_package() -> bytes:
    """A KeyPackage of a client that is not hosted on the gateway (keys in a software key store)."""
    from mls.client import Client
    from mls.credentials.credential import Credential
    from mls.crypto.key_store import SoftwareKeyStore

    return Client(SoftwareKeyStore(), 1, Credential.basic(b"dave (outside)")).key_package().message()


def device_client() -> Any:
    """A device's MLS stack (its own signature key, software keys), as tests/gateway/test_directory.py."""
    from mls.client import Client
    from mls.credentials.credential import Credential
    from mls.crypto.key_store import SoftwareKeyStore

    return Client(SoftwareKeyStore(), 1, Credential.basic(b"fuzz-phone"))


@dataclass(frozen=True)
class Pair:
    """Two hosted identities in one group (the first added the second): ids, group id, membership paths."""

    first: str
    second: str
    group_id: bytes
    first_path: str
    second_path: str


def two_member_group(gw: Gateway) -> Pair:
    """``carol`` creates a group and adds ``dave``, who joins from the Welcome."""
    carol, dave = (gw.ok("POST", "/v1/identities", {"name": n})["identity_id"] for n in ("carol", "dave"))
    kp = gw.ok("POST", f"/v1/identities/{dave}/key-packages", {})["key_packages"][0]["key_package"]
    gid = base64.b64decode(gw.ok("POST", f"/v1/identities/{carol}/groups", {})["group_id"])
    first = f"/v1/identities/{carol}/groups/{b64url(gid)}"
    welcome = gw.ok("POST", first + "/commits", {"add": [kp]})["welcome"]
    gw.ok("POST", f"/v1/identities/{dave}/groups/join", {"welcome": welcome}, expect=201)
    return Pair(carol, dave, gid, first, f"/v1/identities/{dave}/groups/{b64url(gid)}")


def make_gateway() -> tuple[Gateway, str | None, tempfile.TemporaryDirectory[str]]:
    """A started gateway, the SOFTHSM2_CONF to restore afterwards, and its temporary directory."""
    previous = os.environ.get("SOFTHSM2_CONF")
    tmp = tempfile.TemporaryDirectory(prefix="mlsgw-fuzz-")
    try:
        return start_gateway(Path(tmp.name)), previous, tmp
    except BaseException:
        tmp.cleanup()
        restore_softhsm_conf(previous)
        raise


@contextlib.contextmanager
def running_gateway() -> Iterator[Gateway]:
    """A started in-process gateway for the block; stopped, its folder removed and SOFTHSM2_CONF restored
    afterwards."""
    gateway, previous_conf, tmp = make_gateway()
    try:
        yield gateway
    finally:
        stop_gateway(gateway)
        tmp.cleanup()
        restore_softhsm_conf(previous_conf)


def restore_softhsm_conf(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


# ---- checks ------------------------------------------------------------------------------------------------

_DECODE_DETAIL = re.compile(r"^[A-Za-z_][\w.\[\]<>]*: .+ at byte offset \d+$")


def check_problem(reply: Reply, *, expect_code: str | set[str] | None = None) -> dict[str, Any]:
    """A 4xx problem document (RFC 9457) with a code of gateway.errors.CODES; returns the document."""
    assert 400 <= reply.status < 500, f"expected a 4xx answer, got {reply!r}"
    assert reply.content_type == PROBLEM_CONTENT_TYPE, f"not a problem document: {reply!r}"
    doc = reply.json()
    assert isinstance(doc, dict), reply
    check_problem_document(doc, reply.status)
    if expect_code is not None:
        allowed = {expect_code} if isinstance(expect_code, str) else expect_code
        assert doc["code"] in allowed, f"expected {sorted(allowed)}, got {doc}"
    return doc


def check_problem_document(doc: dict[str, Any], status: int | None = None) -> None:
    """The fields of a problem document; ``decode_error`` names a structure and an offset, and
    ``validation_failed`` the RFC 9420 rule."""
    code = doc.get("code")
    assert code in CODES, f"unknown problem code in {doc}"
    assert doc.get("status") == CODES[code][0], doc
    if status is not None:
        assert status == CODES[code][0], doc
    assert doc.get("type") == f"urn:mls-gateway:problem:{code}" and doc.get("title") == CODES[code][1], doc
    assert isinstance(doc.get("detail"), str) and doc["detail"], doc
    if code == "decode_error":
        assert _DECODE_DETAIL.match(doc["detail"]), (
            f"decode_error must name a structure and a byte offset: {doc}"
        )
    if code == "validation_failed":
        assert isinstance(doc.get("rule"), str) and doc["rule"], f"validation_failed without a rule: {doc}"


def diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A readable description of what changed between two snapshots."""
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}:\n  before {before.get(key)!r:.600}\n  after  {after.get(key)!r:.600}")
    return "\n".join(lines)
