"""A hosted member's remembered external PSKs (RFC 9420 §8.4) are read from the store only when a commit or
Welcome names one (docs/architecture.md "Hot path"): the usual operations — a message sent or received —
never read them, and a commit that names one still finds it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.sqlite_store import SqliteTransaction

from ..gateway_fuzz.harness import Gateway, b64url

PSK_ID = b"fleet psk"
SECRET = bytes(range(32))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def psk_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The identities whose remembered PSKs were read from the store, in order."""
    reads: list[str] = []
    real = SqliteTransaction.list_psks

    def counted(self: SqliteTransaction, identity_id: str) -> Any:
        reads.append(identity_id)
        return real(self, identity_id)

    monkeypatch.setattr(SqliteTransaction, "list_psks", counted)
    yield reads


def _epoch(gw: Gateway, path: str, epoch: int) -> dict[str, Any]:
    """The membership once it reached ``epoch`` (the hosted-delivery worker applies the log)."""
    for _ in range(500):
        group: dict[str, Any] = gw.ok("GET", path)
        if group["epoch"] >= epoch:
            return group
        gw.loop.run_until_complete(asyncio.sleep(0.01))
    raise AssertionError(f"{path} did not reach epoch {epoch}")


def test_a_remembered_psk_is_read_only_when_a_commit_names_it(
    in_process: Gateway, psk_reads: list[str]
) -> None:
    gw = in_process
    carol, dave = (gw.ok("POST", "/v1/identities", {"name": n})["identity_id"] for n in ("carol", "dave"))
    kp = gw.ok("POST", f"/v1/identities/{dave}/key-packages", {})["key_packages"][0]["key_package"]
    gid = base64.b64decode(gw.ok("POST", f"/v1/identities/{carol}/groups", {})["group_id"])
    first, second = (f"/v1/identities/{who}/groups/{b64url(gid)}" for who in (carol, dave))
    psk = {"psk_id": _b64(PSK_ID), "secret": _b64(SECRET)}
    # The Welcome names the PSK: dave joins with its secret, and remembers it (sealed, in the store).
    welcome = gw.ok("POST", first + "/commits", {"add": [kp], "psks": [psk]})["welcome"]
    gw.ok("POST", f"/v1/identities/{dave}/groups/join", {"welcome": welcome, "psks": [psk]}, expect=201)

    psk_reads.clear()
    sent = gw.ok("POST", first + "/messages", {"data": _b64(b"no psk needed")})
    got = gw.ok("POST", second + "/process", {"message": sent["message"]})
    assert base64.b64decode(got["data"]) == b"no psk needed"
    assert psk_reads == [], "a message sent and received read the identities' PSKs"

    # Carol's next commit names the PSK by id alone: each member finds the secret it remembered.
    gw.ok("POST", first + "/commits", {"psks": [{"psk_id": _b64(PSK_ID)}]})
    mine, theirs = _epoch(gw, first, 2), _epoch(gw, second, 2)
    assert mine["epoch_authenticator"] == theirs["epoch_authenticator"]
    assert set(psk_reads) == {carol, dave}
