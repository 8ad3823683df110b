"""The shipped client (gateway/client.py): a method for every route, each calling its own route, its helpers,
and a walk through every route against a real ``mls-gateway serve`` in which every answer — successes and
problem documents — is checked against the served OpenAPI document's schema for that status.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import time
import typing
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gateway.api import ROUTES
from gateway.client import (
    ApiResponse,
    BlockingClient,
    BoxClosed,
    BoxSocket,
    GatewayClient,
    GatewayConnectionError,
    GatewayError,
    b64,
    basic_credential,
    binary,
    client_routes,
    extension,
    external_psk,
    gid_segment,
    group_id_bytes,
    resumption_psk,
    unb64,
)
from tests.gateway.cert_authority import Authority, pem
from tests.openapi_schema import errors

from .gwclient import GatewayServer, free_port

GUARD_S = 60.0  # a bound against hanging, never a performance gate
ROUTE_KEYS = {(r.method, r.path) for r in ROUTES}


def _template_regex(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(path)) + "$")


TEMPLATES = [(key, _template_regex(key[1])) for key in sorted(ROUTE_KEYS)]


def route_of(method: str, path: str) -> tuple[str, str]:
    """The route (method, template) a concrete request path belongs to; static paths win over templates."""
    found = [key for key, rx in TEMPLATES if key[0] == method and rx.match(path)]
    assert found, f"{method} {path} is no route"
    return min(found, key=lambda key: key[1].count("{"))


# ---- a method per route ------------------------------------------------------------------------------------


def test_every_route_has_a_client_method() -> None:
    """A route added to the route tables without a client method (or a method for a route that is gone)
    fails here."""
    marked = client_routes()
    assert ROUTE_KEYS - set(marked) == set(), "routes without a client method"
    assert set(marked) - ROUTE_KEYS == set(), "client methods for routes that do not exist"


class _Recorder(GatewayClient):
    """Answers every request with a canned body and keeps (method, path, body) of what was sent."""

    def __init__(self) -> None:
        super().__init__("http://recorder.invalid", "tok")
        self.sent: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> ApiResponse:
        self.sent.append((method, path, body))
        return ApiResponse(200, {"secret": b64(b"s"), "items": [], "events": [], "next_cursor": "1"})

    @contextlib.asynccontextmanager
    async def _socket(self, path: str, after: str | None) -> AsyncIterator[BoxSocket]:
        self.sent.append(("GET", path, None))
        yield typing.cast(BoxSocket, None)


def _argument(hint: Any) -> Any:
    """A value of a required parameter's type, for calling each method once."""
    args = set(typing.get_args(hint)) or {hint}
    if bytes in args:
        return b"\x01\x02"
    if str in args:
        return "x1"
    if int in args:
        return 3
    return []  # a Sequence


@pytest.mark.parametrize("name", sorted({n for names in client_routes().values() for n in names}))
def test_each_method_calls_its_route(name: str) -> None:
    method = getattr(GatewayClient, name)
    hints = typing.get_type_hints(method)
    params = [
        p
        for p in inspect.signature(method).parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    recorder = _Recorder()
    bound = getattr(recorder, name)
    args = [_argument(hints[p.name]) for p in params]

    async def call() -> None:
        outcome = bound(*args)
        if isinstance(outcome, contextlib.AbstractAsyncContextManager):
            async with outcome:
                pass
        else:
            await outcome

    asyncio.run(call())
    (sent,) = recorder.sent
    assert route_of(sent[0], sent[1]) == method.gateway_route
    if sent[0] in ("POST", "PUT"):
        assert isinstance(sent[2], dict), "a POST or PUT always sends a JSON object"


# ---- helpers -----------------------------------------------------------------------------------------------


def test_base64_helpers_are_canonical_and_strict() -> None:
    assert b64(b"\xfb\xff") == "+/8="
    assert binary(b"\xfb\xff") == binary("+/8=") == "+/8="
    for bad in ("+/8", "-_8=", "a b=", "@@@@"):
        with pytest.raises(ValueError):
            binary(bad)
    assert unb64("+/8=") == b"\xfb\xff" and group_id_bytes("+/8=") == b"\xfb\xff"
    assert gid_segment(b"\xfb\xff") == "-_8" and gid_segment("-_8") == "-_8"
    with pytest.raises(ValueError):
        gid_segment("+/8=")  # standard base64 is not a path segment
    assert extension(5, b"d") == {"type": 5, "data": "ZA=="}
    assert external_psk(b"p") == {"psk_id": "cA=="}
    assert external_psk(b"p", b"s") == {"psk_id": "cA==", "secret": "cw=="}
    assert resumption_psk(b"g", 2) == {"resumption": {"group_id": "Zw==", "epoch": 2}}
    assert basic_credential(b"bob") == {"type": "basic", "identity": "Ym9i"}


def test_gateway_error_carries_the_problem_document() -> None:
    doc = {
        "type": "urn:mls-gateway:problem:conflict",
        "title": "Conflict",
        "status": 409,
        "code": "conflict",
        "detail": "the group is at epoch 1",
        "instance": "req-9",
        "current_epoch": 1,
    }
    e = GatewayError.from_response(ApiResponse(409, doc, {"x-request-id": "req-9"}))
    assert (e.status, e.code, e.detail, e.request_id, e.current_epoch) == (
        409,
        "conflict",
        "the group is at epoch 1",
        "req-9",
        1,
    )
    assert e.extra == {"current_epoch": 1} and e.problem == doc and e.rule is None
    assert str(e) == "409 conflict: the group is at epoch 1"
    text = GatewayError.from_response(ApiResponse(502, "bad gateway"))
    assert text.code is None and text.detail == "bad gateway" and text.current_epoch is None


def test_a_client_with_another_token_shares_the_session_its_maker_owns() -> None:
    async def check() -> None:
        maker = GatewayClient(f"http://127.0.0.1:{free_port()}", "tenant-token")
        other = maker.with_token("client-token", timeout=5)
        assert (other.token, other.timeout, maker.token) == ("client-token", 5, "tenant-token")
        session = maker._live_session()
        assert other._live_session() is session
        await other.close()  # not its session to close
        assert not session.closed
        await maker.close()
        assert session.closed

    asyncio.run(check())


def test_no_answer_is_a_connection_error() -> None:
    async def call() -> None:
        async with GatewayClient(f"http://127.0.0.1:{free_port()}", timeout=5) as client:
            await client.health()

    with pytest.raises(GatewayConnectionError) as e:
        asyncio.run(call())
    assert isinstance(e.value, OSError)


# ---- every route against a real server, every answer checked against the OpenAPI document ---------------


class _Logged(GatewayClient):
    """The shipped client, keeping every answer (and each WebSocket opened) for the schema check."""

    def __init__(self, base_url: str, token: str | None, log: list[tuple[str, str, ApiResponse]]) -> None:
        super().__init__(base_url, token, timeout=GUARD_S)
        self.log = log

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> ApiResponse:
        response = await super().request(method, path, body, **kw)
        self.log.append((method, path, response))
        return response

    @contextlib.asynccontextmanager
    async def _socket(self, path: str, after: str | None) -> AsyncIterator[BoxSocket]:
        async with super()._socket(path, after) as ws:
            self.log.append(("GET", path, ApiResponse(101, None)))
            yield ws


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """A gateway of its own that accepts a webhook on the loopback (nothing listens there)."""
    gw = GatewayServer(tmp_path_factory.mktemp("client") / "gw", env={"MLSGW_WEBHOOK_ALLOW_PRIVATE": "1"})
    gw.start()
    try:
        yield gw
    finally:
        gw.kill()


async def _until(predicate: Any, what: str) -> Any:
    """Poll ``predicate`` (a coroutine function) until it answers something truthy, within GUARD_S."""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _walk(base: str, admin_token: str, log: list[tuple[str, str, ApiResponse]]) -> None:
    sessions: list[GatewayClient] = []

    def client(token: str | None) -> _Logged:
        c = _Logged(base, token, log)
        sessions.append(c)
        return c

    try:
        await _walk_with(client, admin_token)
    finally:
        for c in sessions:
            await c.close()


async def _walk_with(client: Any, admin_token: str) -> None:
    anonymous, admin = client(None), client(admin_token)
    assert (await anonymous.health()) == {"status": "ok"}
    assert (await anonymous.readiness())["status"] == "ready"
    assert "mlsgw_" in await anonymous.metrics()
    assert (await anonymous.openapi())["openapi"] == "3.1.0"

    # tenants: an Idempotency-Key repeat answers the first response again
    tenant = await admin.create_tenant("client", idempotency_key="client-tenant-1")
    assert await admin.create_tenant("client", idempotency_key="client-tenant-1") == tenant
    other = await admin.create_tenant("doomed", custody="token")
    assert {"client", "doomed"} <= {t["name"] for t in (await admin.list_tenants())["tenants"]}
    extra = await admin.create_tenant_token(other["tenant_id"])
    await admin.revoke_tenant_token(other["tenant_id"], extra["token_id"])
    tokens = (await admin.list_tenant_tokens(other["tenant_id"]))["tokens"]
    assert {t["token_id"]: t["revoked"] for t in tokens}[extra["token_id"]] is True
    await admin.delete_tenant(other["tenant_id"])
    with pytest.raises(GatewayError) as gone:
        await admin.list_tenant_tokens(other["tenant_id"])
    assert gone.value.status == 404 and gone.value.code == "not_found" and gone.value.request_id

    api = client(tenant["token"])
    with pytest.raises(GatewayError) as refused:
        await client("not-a-token").list_identities()
    assert refused.value.status == 401 and refused.value.code == "unauthorized"

    # hosted identities, their KeyPackages and a group through the log
    alice = (await api.create_identity("alice"))["identity_id"]
    bob = (await api.create_identity("bob", credential=basic_credential(b"bob@example.org")))["identity_id"]
    assert (await api.get_identity(bob))["credential"] == basic_credential(b"bob@example.org")
    assert {alice, bob} <= {i["identity_id"] for i in (await api.list_identities())["identities"]}
    made = await api.create_key_packages(bob, count=2, lifetime_days=30, idempotency_key="bob-kps")
    assert len((await api.list_key_packages(bob))["key_packages"]) == 2
    created = await api.create_group(alice, group_id=b"client walk", extensions=[])
    gid = group_id_bytes(created["group_id"])
    assert gid == b"client walk" and created["epoch"] == 0
    assert [g["epoch"] for g in (await api.list_groups(alice))["groups"]] == [0]
    added = await api.commit(alice, gid, add=[made["key_packages"][0]["key_package"]])
    assert added["epoch"] == 1 and added["welcome"]
    async with contextlib.aclosing(api.follow_inbox(bob, wait=5)) as events:
        joined = await anext(events)
    assert joined["kind"] == "joined" and joined["epoch"] == 1
    membership = await api.join_group(bob, added["welcome"])  # a repeat: the membership as it is
    assert group_id_bytes(membership["group_id"]) == gid and membership["epoch"] == 1

    # the tenant's credential policy, and an X.509 credential for bob's HSM-held key from a CSR
    await _walk_credentials(admin, api, tenant["tenant_id"], bob)

    # a stale epoch: the 409 carries current_epoch
    with pytest.raises(GatewayError) as stale:
        await api.commit(alice, gid, update=True, epoch=0)
    assert (stale.value.status, stale.value.code, stale.value.current_epoch) == (409, "conflict", 1)
    assert stale.value.extra["current_epoch"] == 1

    # application messages, pushed over the inbox WebSocket and acknowledged there
    sent = await api.send_message(alice, gid, b"hello bob", authenticated_data=b"ad")
    async with api.inbox_socket(bob, after=joined["cursor"]) as ws:
        event = await ws.receive(timeout=GUARD_S)
        assert event["kind"] == "application" and unb64(event["data"]) == b"hello bob"
        assert unb64(event["authenticated_data"]) == b"ad"
        await ws.ack(event["cursor"])
    await _until(lambda: _empty(api.read_inbox(bob)), "the WebSocket ack")
    with pytest.raises(GatewayError) as no_upgrade:
        async with client("not-a-token").inbox_socket(bob):
            pass
    assert no_upgrade.value.status == 401
    # bob's own /process of that message: its event is acknowledged, so 409 with the entry's seq
    with pytest.raises(GatewayError) as repeated:
        await api.process(bob, gid, sent["message"])
    assert repeated.value.status == 409 and isinstance(repeated.value.extra.get("seq"), int)
    results = (await api.process_batch(bob, gid, [sent["message"]]))["results"]
    assert results[0]["code"] == "conflict"
    assert (await api.submit_message(gid, sent["message"]))["seq"] == repeated.value.extra["seq"]
    batch = await api.send_messages(alice, gid, [b"one", (b"two", b"ad2")])
    assert len(batch["messages"]) == 2
    assert await api.export_secret(alice, gid, "walk", 16) == await api.export_secret(bob, gid, "walk", 16)

    # proposals, a pending commit discarded, one carried to the log by the caller and merged
    await api.propose(alice, gid, "update")
    assert (await api.get_group(alice, gid))["pending_proposals"]
    assert (await api.commit(alice, gid))["epoch"] == 2
    await api.commit(alice, gid, update=True, pending=True)
    await api.discard_pending_commit(alice, gid)
    staged = await api.commit(alice, gid, update=True, pending=True)
    accepted = await api.submit_commit_bundle(
        gid, staged["commit"], staged["group_info"], ratchet_tree=staged["ratchet_tree"]
    )
    assert accepted["epoch"] == 3
    assert (await api.merge_pending_commit(alice, gid))["epoch"] == 3
    log_view = await api.group_log(gid)
    assert log_view["epoch"] == 3 and {m["endpoint"] for m in log_view["members"]} == {alice, bob}
    head = await api.log_group_info(gid)
    assert head["epoch"] == 3
    assert (await api.member_group_info(alice, gid, ratchet_tree="extension"))["group_info"]

    # an external join through the log, then a local leave
    carol = (await api.create_identity("carol"))["identity_id"]
    outside = await api.external_join(carol, head["group_info"], ratchet_tree=head["ratchet_tree"])
    assert outside["epoch"] == 4
    await api.delete_group(carol, gid)

    # a device: its mailbox (long-poll page, ack, WebSocket) and the KeyPackage directory
    device = await api.create_client("laptop")
    dev = client(device["token"])
    assert (await dev.get_client(device["client_id"]))["name"] == "laptop"
    assert device["client_id"] in {c["client_id"] for c in (await api.list_clients())["clients"]}
    assert await dev.key_package_status(device["client_id"]) == {"available": 0, "last_resort": False}
    with pytest.raises(GatewayError) as no_kp:
        await dev.upload_key_packages(device["client_id"], [b"\x00\x01"])
    assert no_kp.value.status == 400 and no_kp.value.code == "decode_error"
    claimed = await dev.claim_key_packages([bob])
    assert set(claimed["key_packages"]) == {bob}
    page = await dev.read_mailbox(device["client_id"], wait=0.1, limit=10)
    assert page["items"] == []
    await dev.ack_mailbox(device["client_id"], page["next_cursor"])
    async with dev.mailbox_socket(device["client_id"]) as ws:
        await ws.ws.send_str("not an ack")
        with pytest.raises(BoxClosed) as closed:
            await ws.receive(timeout=GUARD_S)
    assert closed.value.code == 1008
    await api.delete_client(device["client_id"])

    # the webhook of an identity
    with pytest.raises(GatewayError) as none_set:
        await api.get_webhook(bob)
    assert none_set.value.status == 404
    with pytest.raises(GatewayError) as unsafe:
        await api.set_webhook(bob, "ftp://127.0.0.1/hook", "s" * 16)
    assert unsafe.value.code == "invalid_request"
    hook = await api.set_webhook(bob, f"http://127.0.0.1:{free_port()}/hook", "whsec_" + "s" * 16)
    assert (await api.get_webhook(bob))["url"] == hook["url"]
    await api.delete_webhook(bob)
    await api.ack_inbox(bob, (await api.read_inbox(bob))["next_cursor"])
    await api.delete_identity(carol)


async def _walk_credentials(admin: Any, api: Any, tenant_id: str, identity_id: str) -> None:
    root = Authority.root()
    anchors = {"trust_anchors": [pem(root.cert)]}
    stored = await admin.set_credential_policy(tenant_id, ["basic", "x509"], x509=anchors)
    assert stored["allowed_types"] == ["basic", "x509"]
    assert (await api.credential_policy(tenant_id))["x509"]["trust_anchors"] == [pem(root.cert)]
    csr = x509.load_pem_x509_csr(
        (await api.certificate_request(identity_id, "CN=bob,O=Example"))["csr"].encode()
    )
    assert csr.is_signature_valid
    cert = root.issue(csr.public_key(), "bob")  # type: ignore[arg-type]
    view = await api.set_x509_credential(identity_id, [pem(cert)])
    assert view["credential"]["type"] == "x509"
    await admin.delete_credential_policy(tenant_id)
    kept = await api.set_retention(tenant_id, mailbox_s=7 * 86400)
    assert kept["mailbox_s"] == 7 * 86400 and kept["legal_hold"] is False
    assert (await admin.set_legal_hold(tenant_id, True))["legal_hold"] is True
    assert (await api.retention(tenant_id))["legal_hold"] is True
    with pytest.raises(GatewayError) as gone:
        await api.credential_policy(tenant_id)
    assert gone.value.status == 404


async def _empty(page: Any) -> bool:
    return not (await page)["events"]


def test_every_route_against_a_real_gateway_answers_as_its_openapi_schema(server: GatewayServer) -> None:
    log: list[tuple[str, str, ApiResponse]] = []
    asyncio.run(_walk(f"http://127.0.0.1:{server.port}", server.admin_token, log))
    doc = _served_document(log)
    reached: set[tuple[str, str]] = set()
    for method, path, response in log:
        key = route_of(method, path.split("?")[0])
        reached.add(key)
        responses = doc["paths"][key[1]][method.lower()]["responses"]
        assert str(response.status) in responses, f"{method} {path}: {response.status} {response.body!r}"
        _check(doc, responses[str(response.status)], response, f"{method} {path} {response.status}")
    assert reached == ROUTE_KEYS, ROUTE_KEYS - reached


def _served_document(log: list[tuple[str, str, ApiResponse]]) -> dict[str, Any]:
    served = [r.body for m, p, r in log if p == "/v1/openapi.json"]
    assert served and isinstance(served[0], dict)
    return served[0]


def _check(doc: dict[str, Any], spec: Mapping[str, Any], response: ApiResponse, what: str) -> None:
    content = spec.get("content")
    if content is None:
        assert not response.raw, f"{what}: a body where none is described"
        return
    (media, schema), *_ = content.items()
    assert response.headers.get("content-type", "").startswith(media), (what, response.headers)
    problems = errors(response.body, schema["schema"], doc)
    assert not problems, f"{what}: {problems}"


# ---- the blocking form ---------------------------------------------------------------------------------


def test_the_blocking_client_is_the_async_one_run_on_a_loop_thread(server: GatewayServer) -> None:
    with BlockingClient(f"http://127.0.0.1:{server.port}", server.admin_token) as admin:
        tenant = admin(lambda c: c.create_tenant("blocking"))
        api = admin.with_token(tenant["token"])
        made = api(lambda c: c.create_identity("dora"))
        assert api(lambda c: c.get_identity(made["identity_id"])) == made
        with pytest.raises(GatewayError) as e:
            api(lambda c: c.get_identity("idn_nobody"))
        assert e.value.status == 404 and e.value.code == "not_found"


def test_the_test_helpers_run_on_the_shipped_client() -> None:
    """tests/gateway/gwclient.py answers with the shipped client's responses (the suite exercises it)."""
    from . import gwclient

    assert issubclass(gwclient.Response, ApiResponse)
    assert isinstance(gwclient.Client(free_port()).api, GatewayClient)
    assert Path(gwclient.__file__).read_text().count("http.client.HTTPConnection(") == 1  # only fire()


def test_the_readme_example_runs_as_written(
    server: GatewayServer, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(r"## Python client.*?```python\n(.*?)```", readme, re.S)
    assert found, "the README's Python client example"
    _, token = server.admin.create_tenant("readme")
    code, calls = re.subn(
        r"^asyncio\.run\(main\(.*\)\)$",
        f'asyncio.run(main("http://127.0.0.1:{server.port}", "{token}"))',
        found.group(1),
        flags=re.M,
    )
    assert calls == 1
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.splitlines() == ["b'hello bob'", "conflict 1"]
