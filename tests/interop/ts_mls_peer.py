"""Python driver for the ts-mls interop peer (``peer.mjs``, run with Node).

:class:`TsMlsPeer` starts ``node peer.mjs`` in this directory and speaks its line-oriented JSON protocol:
one request object per line on the peer's stdin, one response object per line on its stdout, binary
values as standard padded base64. Each method mirrors one op, decodes binary results to ``bytes`` and
raises :class:`PeerError` when the peer answers ``ok: false`` (ts-mls refused or failed), when it does not
answer within the per-call timeout, or when the process has died.

A peer process holds any number of named clients; a client has one identity, one signature key pair,
one cipher suite, outstanding key packages and groups keyed by group id. Group ops take an optional
``group_id`` (needed only when the client is in several groups). By default ts-mls applies a commit to its
creator's state as soon as it creates it: the committer must not ``process`` its own commit. With
``pending=True`` the commit ops keep the new epoch aside instead (a commit a delivery service may still
refuse): the result also carries the new epoch's GroupInfo, and :meth:`TsMlsPeer.merge_pending` adopts the
new state or :meth:`TsMlsPeer.discard_pending` drops it, leaving the group at its old epoch. In between,
ops that would change that group's state are refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

#: This directory: holds peer.mjs, package.json and (after install.sh) node_modules.
INTEROP_DIR = Path(__file__).resolve().parent
PEER_SCRIPT = INTEROP_DIR / "peer.mjs"

Handshake = Literal["public", "private"]
#: How a GroupInfo's external_pub extension is encoded: as ts-mls 1.6.4 writes and reads it (the bare HPKE
#: key, LukaJCB/ts-mls#449), or as RFC 9420 §12.4.3.2 says (the ExternalPub struct, ``opaque<V>``).
ExternalPubDialect = Literal["ts-mls", "rfc9420"]


class PeerError(Exception):
    """The peer refused a request (``ok: false``), timed out, or is not running."""

    def __init__(self, op: str, message: str) -> None:
        super().__init__(f"ts-mls peer {op}: {message}")
        self.op = op
        self.message = message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a base64 string, got {type(value).__name__}")
    return base64.b64decode(value, validate=True)


@dataclass(frozen=True)
class CommitResult:
    """A commit the peer created: applied to its own state, or kept pending (``pending=True``)."""

    commit: bytes  # MLSMessage (PublicMessage or PrivateMessage)
    welcome: bytes | None  # MLSMessage(Welcome) when the commit added members
    ratchet_tree: bytes  # optional<Node> ratchet_tree<V> of the new epoch
    epoch: int  # the new epoch
    state: str  # ts-mls groupActiveState kind: "active", "removedFromGroup", ...
    pending: bool = False  # True: not applied yet (merge_pending / discard_pending)
    #: For a pending commit: the new epoch's signed MLSMessage(GroupInfo), with the ratchet_tree and
    #: external_pub extensions (the latter as RFC 9420 encodes it): what a commit bundle carries.
    group_info: bytes | None = None


@dataclass(frozen=True)
class JoinResult:
    epoch: int
    group_id: bytes


@dataclass(frozen=True)
class ExternalJoinResult:
    commit: bytes  # MLSMessage(PublicMessage) with sender new_member_commit
    epoch: int
    group_id: bytes


@dataclass(frozen=True)
class ProcessResult:
    kind: Literal["commit", "application", "proposal"]
    epoch: int
    data: bytes | None  # application data, for kind == "application"
    state: str  # "active", or "removedFromGroup" once a commit removed this client


@dataclass(frozen=True)
class GroupInfoResult:
    group_info: bytes  # MLSMessage(GroupInfo) with the external_pub extension
    ratchet_tree: bytes
    epoch: int


@dataclass(frozen=True)
class Member:
    leaf_index: int
    identity: bytes
    signature_key: bytes
    credential_type: str


@dataclass(frozen=True)
class GroupState:
    group_id: bytes
    epoch: int
    cipher_suite: int
    own_leaf_index: int
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    ratchet_tree: bytes
    state: str


class TsMlsPeer:
    """One ``node peer.mjs`` process; use as a context manager or call :meth:`close`."""

    def __init__(self, *, timeout: float = 60.0, node: str | None = None, cwd: Path = INTEROP_DIR) -> None:
        node_exe = node or shutil.which("node")
        if node_exe is None:
            raise PeerError(
                "start", "node is not on PATH (run tests/interop/install.sh after installing Node)"
            )
        if not (cwd / "node_modules" / "ts-mls").is_dir():
            raise PeerError("start", f"ts-mls is not installed in {cwd} (run tests/interop/install.sh)")
        self.timeout = timeout
        self._next_id = 0
        self._lock = threading.Lock()
        self._responses: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=200)
        self._proc = subprocess.Popen(
            [node_exe, str(PEER_SCRIPT)],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        threading.Thread(target=self._pump_stdout, name="ts-mls-peer-stdout", daemon=True).start()
        threading.Thread(target=self._pump_stderr, name="ts-mls-peer-stderr", daemon=True).start()

    # ---- process plumbing ----------------------------------------------------------------------
    def _pump_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._responses.put(line)
        self._responses.put(None)

    def _pump_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        """The peer's recent diagnostics (stderr), for error reports."""
        return "\n".join(self._stderr)

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def _dead(self, op: str, why: str) -> PeerError:
        tail = self.stderr[-4000:]
        return PeerError(op, f"{why} (exit code {self._proc.poll()}); peer stderr:\n{tail}")

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return the response object (without ``id``/``ok``)."""
        with self._lock:
            self._next_id += 1
            req_id = self._next_id
            line = json.dumps({"id": req_id, "op": op, **args}, separators=(",", ":"))
            if self._proc.stdin is None or not self.alive:
                raise self._dead(op, "peer is not running")
            try:
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                raise self._dead(op, f"cannot write to peer: {e}") from e
            while True:
                try:
                    raw = self._responses.get(timeout=self.timeout)
                except queue.Empty:
                    self._kill()
                    raise self._dead(op, f"no answer within {self.timeout} s; peer killed") from None
                if raw is None:
                    raise self._dead(op, "peer exited")
                try:
                    resp = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise PeerError(op, f"peer wrote a non-JSON line: {raw!r}") from e
                if resp.get("id") != req_id:
                    if resp.get("id") is None and not resp.get("ok", False):
                        raise PeerError(op, str(resp.get("error")))
                    continue  # a stale answer to an earlier request that timed out
                break
        if not resp.get("ok", False):
            raise PeerError(op, str(resp.get("error", "unknown error")))
        resp.pop("id", None)
        resp.pop("ok", None)
        return dict(resp)

    def _kill(self) -> None:
        if self.alive:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def close(self) -> None:
        """Ask the peer to exit; kill it if it does not within a few seconds."""
        if self.alive:
            with contextlib.suppress(PeerError):
                self.call("shutdown")
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> TsMlsPeer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _group(args: dict[str, Any], group_id: bytes | None) -> dict[str, Any]:
        if group_id is not None:
            args["group_id"] = _b64(group_id)
        return args

    @staticmethod
    def _commit(resp: dict[str, Any]) -> CommitResult:
        welcome = resp.get("welcome")
        group_info = resp.get("group_info")
        return CommitResult(
            commit=_unb64(resp["commit"]),
            welcome=None if welcome is None else _unb64(welcome),
            ratchet_tree=_unb64(resp["ratchet_tree"]),
            epoch=int(resp["epoch"]),
            state=str(resp["state"]),
            pending=bool(resp.get("pending", False)),
            group_info=None if group_info is None else _unb64(group_info),
        )

    # ---- ops -----------------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        """``{"version": ..., "suites": [ids ts-mls knows]}``."""
        return self.call("ping")

    def new_client(self, client: str, identity: bytes, cipher_suite: int, *, grease: bool = True) -> bytes:
        """A new client with a basic credential for ``identity`` and a fresh signature key pair; returns
        its signature public key (MLS encoding).

        ``grease`` keeps ts-mls's default capabilities, which add random GREASE values (RFC 9420 §13.5).
        """
        return _unb64(
            self.call(
                "new_client", client=client, identity=_b64(identity), cipher_suite=cipher_suite, grease=grease
            )["signature_key"]
        )

    def set_x509(self, client: str, certificates: list[bytes]) -> None:
        """Later KeyPackages of ``client`` carry an X.509 credential of ``certificates`` (DER, end entity
        first) instead of the basic one."""
        self.call("set_x509", client=client, certificates=[_b64(c) for c in certificates])

    def key_package(
        self, client: str, *, not_before: int | None = None, not_after: int | None = None
    ) -> bytes:
        """A fresh MLSMessage(KeyPackage); the peer keeps its private keys for :meth:`join`.

        The lifetime defaults to ts-mls's ``defaultLifetime`` (0 .. 2^63-1); pass both bounds to override.
        """
        args: dict[str, Any] = {"client": client}
        if not_before is not None or not_after is not None:
            args.update(not_before=not_before, not_after=not_after)
        return _unb64(self.call("key_package", **args)["key_package"])

    def create_group(self, client: str, group_id: bytes) -> int:
        return int(self.call("create_group", client=client, group_id=_b64(group_id))["epoch"])

    def add_psk(self, client: str, psk_id: bytes, secret: bytes) -> None:
        """Store an external PSK for ``client`` (used when committing, processing and joining)."""
        self.call("add_psk", client=client, psk_id=_b64(psk_id), secret=_b64(secret))

    def add(
        self,
        client: str,
        key_packages: Iterable[bytes],
        *,
        ratchet_tree_extension: bool = False,
        handshake: Handshake = "public",
        pending: bool = False,
        group_id: bytes | None = None,
    ) -> CommitResult:
        args = {
            "client": client,
            "key_packages": [_b64(kp) for kp in key_packages],
            "ratchet_tree_extension": ratchet_tree_extension,
            "handshake": handshake,
            "pending": pending,
        }
        return self._commit(self.call("add", **self._group(args, group_id)))

    def remove(
        self,
        client: str,
        leaf_indices: Iterable[int],
        *,
        handshake: Handshake = "public",
        pending: bool = False,
        group_id: bytes | None = None,
    ) -> CommitResult:
        args = {
            "client": client,
            "leaf_indices": list(leaf_indices),
            "handshake": handshake,
            "pending": pending,
        }
        return self._commit(self.call("remove", **self._group(args, group_id)))

    def update(
        self,
        client: str,
        *,
        handshake: Handshake = "public",
        pending: bool = False,
        group_id: bytes | None = None,
    ) -> CommitResult:
        """A commit with a path and no new proposals (it also commits any pending proposals)."""
        args = {"client": client, "handshake": handshake, "pending": pending}
        return self._commit(self.call("update", **self._group(args, group_id)))

    def commit(
        self,
        client: str,
        *,
        key_packages: Sequence[bytes] = (),
        leaf_indices: Sequence[int] = (),
        psk_ids: Sequence[bytes] = (),
        ratchet_tree_extension: bool = False,
        handshake: Handshake = "public",
        authenticated_data: bytes | None = None,
        pending: bool = False,
        group_id: bytes | None = None,
    ) -> CommitResult:
        """A commit of all pending proposals (by reference) plus these inline Add/Remove/PSK proposals."""
        args: dict[str, Any] = {
            "client": client,
            "key_packages": [_b64(kp) for kp in key_packages],
            "leaf_indices": list(leaf_indices),
            "psk_ids": [_b64(p) for p in psk_ids],
            "ratchet_tree_extension": ratchet_tree_extension,
            "handshake": handshake,
            "pending": pending,
        }
        if authenticated_data is not None:
            args["authenticated_data"] = _b64(authenticated_data)
        return self._commit(self.call("commit", **self._group(args, group_id)))

    def propose(
        self,
        client: str,
        proposal: Literal["add", "remove", "psk"],
        *,
        key_package: bytes | None = None,
        leaf_index: int | None = None,
        psk_id: bytes | None = None,
        handshake: Handshake = "public",
        group_id: bytes | None = None,
    ) -> bytes:
        """A standalone proposal message (MLSMessage); the sender keeps it pending for its next commit."""
        args: dict[str, Any] = {"client": client, "proposal": proposal, "handshake": handshake}
        if key_package is not None:
            args["key_package"] = _b64(key_package)
        if leaf_index is not None:
            args["leaf_index"] = leaf_index
        if psk_id is not None:
            args["psk_id"] = _b64(psk_id)
        return _unb64(self.call("propose", **self._group(args, group_id))["message"])

    def join(self, client: str, welcome: bytes, ratchet_tree: bytes | None = None) -> JoinResult:
        args: dict[str, Any] = {"client": client, "welcome": _b64(welcome)}
        if ratchet_tree is not None:
            args["ratchet_tree"] = _b64(ratchet_tree)
        resp = self.call("join", **args)
        return JoinResult(epoch=int(resp["epoch"]), group_id=_unb64(resp["group_id"]))

    def process(self, client: str, message: bytes) -> ProcessResult:
        """Process a PublicMessage or PrivateMessage (the group is taken from the message)."""
        resp = self.call("process", client=client, message=_b64(message))
        data = resp.get("data")
        return ProcessResult(
            kind=resp["kind"],
            epoch=int(resp["epoch"]),
            data=None if data is None else _unb64(data),
            state=str(resp["state"]),
        )

    def send(
        self,
        client: str,
        data: bytes,
        *,
        authenticated_data: bytes | None = None,
        group_id: bytes | None = None,
    ) -> bytes:
        """An application message: MLSMessage(PrivateMessage)."""
        args: dict[str, Any] = {"client": client, "data": _b64(data)}
        if authenticated_data is not None:
            args["authenticated_data"] = _b64(authenticated_data)
        return _unb64(self.call("send", **self._group(args, group_id))["message"])

    def export(
        self, client: str, label: str, context: bytes, length: int, *, group_id: bytes | None = None
    ) -> bytes:
        """``MLS-Exporter(label, context, length)`` of the current epoch."""
        args = {"client": client, "label": label, "context": _b64(context), "length": length}
        return _unb64(self.call("export", **self._group(args, group_id))["secret"])

    def epoch_authenticator(self, client: str, *, group_id: bytes | None = None) -> tuple[bytes, int]:
        """``(epoch_authenticator, epoch)`` of the current epoch."""
        resp = self.call("epoch_authenticator", **self._group({"client": client}, group_id))
        return _unb64(resp["epoch_authenticator"]), int(resp["epoch"])

    def group_info(
        self,
        client: str,
        *,
        ratchet_tree_extension: bool = False,
        pending: bool = False,
        external_pub: ExternalPubDialect = "ts-mls",
        group_id: bytes | None = None,
    ) -> GroupInfoResult:
        """A signed MLSMessage(GroupInfo) with external_pub (and ratchet_tree if asked), and the tree.

        With ``pending=True``: of the pending commit's new epoch (an error if there is none). The default
        ``external_pub="ts-mls"`` is what ts-mls's :meth:`external_join` reads; RFC 9420 readers need
        ``"rfc9420"``.
        """
        args = {
            "client": client,
            "ratchet_tree_extension": ratchet_tree_extension,
            "pending": pending,
            "external_pub": external_pub,
        }
        resp = self.call("group_info", **self._group(args, group_id))
        return GroupInfoResult(
            group_info=_unb64(resp["group_info"]),
            ratchet_tree=_unb64(resp["ratchet_tree"]),
            epoch=int(resp["epoch"]),
        )

    def merge_pending(self, client: str, *, group_id: bytes | None = None) -> int:
        """Adopt the pending commit's new state (the log accepted it); returns the new epoch."""
        return int(self.call("merge_pending", **self._group({"client": client}, group_id))["epoch"])

    def discard_pending(self, client: str, *, group_id: bytes | None = None) -> int:
        """Drop the pending commit (the log refused it); returns the unchanged epoch.

        After dropping a commit sent as a PrivateMessage, the peer refuses private handshake messages in
        that epoch: ts-mls does not hand back the handshake-ratchet generation the commit used.
        """
        return int(self.call("discard_pending", **self._group({"client": client}, group_id))["epoch"])

    def pending_commit(self, client: str, *, group_id: bytes | None = None) -> int | None:
        """The new epoch of the group's pending commit, or None when no commit is pending."""
        resp = self.call("pending_commit", **self._group({"client": client}, group_id))
        return int(resp["epoch"]) if resp["pending"] else None

    def external_join(
        self, client: str, group_info: bytes, ratchet_tree: bytes | None = None, *, resync: bool = False
    ) -> ExternalJoinResult:
        """Join by external commit; returns the commit (PublicMessage) for the members to process."""
        args: dict[str, Any] = {"client": client, "group_info": _b64(group_info), "resync": resync}
        if ratchet_tree is not None:
            args["ratchet_tree"] = _b64(ratchet_tree)
        resp = self.call("external_join", **args)
        return ExternalJoinResult(
            commit=_unb64(resp["commit"]), epoch=int(resp["epoch"]), group_id=_unb64(resp["group_id"])
        )

    def members(self, client: str, *, group_id: bytes | None = None) -> list[Member]:
        resp = self.call("members", **self._group({"client": client}, group_id))
        return [
            Member(
                leaf_index=int(m["leaf_index"]),
                identity=_unb64(m["identity"]),
                signature_key=_unb64(m["signature_key"]),
                credential_type=str(m["credential_type"]),
            )
            for m in resp["members"]
        ]

    def group_state(self, client: str, *, group_id: bytes | None = None) -> GroupState:
        """Epoch, own leaf, tree hash, confirmed transcript hash and tree: for diagnosing divergence."""
        r = self.call("group_state", **self._group({"client": client}, group_id))
        return GroupState(
            group_id=_unb64(r["group_id"]),
            epoch=int(r["epoch"]),
            cipher_suite=int(r["cipher_suite"]),
            own_leaf_index=int(r["own_leaf_index"]),
            tree_hash=_unb64(r["tree_hash"]),
            confirmed_transcript_hash=_unb64(r["confirmed_transcript_hash"]),
            ratchet_tree=_unb64(r["ratchet_tree"]),
            state=str(r["state"]),
        )


__all__ = [
    "CommitResult",
    "ExternalJoinResult",
    "ExternalPubDialect",
    "GroupInfoResult",
    "GroupState",
    "JoinResult",
    "Member",
    "PeerError",
    "ProcessResult",
    "TsMlsPeer",
]
