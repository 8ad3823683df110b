"""Mixed MLS groups of this project's members and ts-mls members, checked for agreement after every step.

A :class:`MixedGroup` holds members of both kinds: :class:`PyMember` (a :class:`mls.client.Client` and its
:class:`mls.group.group.Group`) and :class:`TsMember` (a named client of a :class:`TsMlsPeer`). Every
operation (commit, proposal, application message, external join) is made by one member, delivered as bytes
to all the others, and followed by :meth:`MixedGroup.check`: every member must report the same epoch (the
one the group is expected to be at), the same ``epoch_authenticator``, the same ``MLS-Exporter`` output, and
the same tree hash, confirmed transcript hash, ratchet tree and roster. When they do not, the assertion
message lists each member's values and names the fields that differ, to tell which side diverged.

ts-mls applies its own commits at once; our committer merges its pending commit (never processes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Literal

from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto.key_store import SoftwareKeyStore
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.handshake_framing import HandshakeFraming
from mls.group.results import ApplicationMessage, ProposalMessage
from mls.group.staged_commit import StagedCommit
from mls.tree.nodes import decode_ratchet_tree, encode_ratchet_tree
from mls.wire.extensions import Extension, ExtensionType, ExternalPub
from mls.wire.framing import MLSMessage, WireFormat
from mls.wire.group_info import GroupInfo, sign_group_info
from mls.wire.key_package import KeyPackage

from .ts_mls_peer import TsMlsPeer

HandshakeName = Literal["public", "private"]

EXPORT_LABEL = "ts-mls interop"
EXPORT_CONTEXT = b"exporter context"
EXPORT_LENGTH = 32

_names = itertools.count()


def unique(prefix: str) -> str:
    """A client name unique within this process (ts-mls client names live as long as the peer)."""
    return f"{prefix}-{next(_names)}"


def wire_format(message: bytes) -> int:
    return MLSMessage.from_bytes(message).wire_format


def expected_wire_format(handshake: HandshakeName) -> int:
    return WireFormat.mls_public_message if handshake == "public" else WireFormat.mls_private_message


def canonical_tree(tree: bytes) -> bytes:
    """A ratchet tree's encoding without trailing blank nodes (§12.4.3.3: the sender truncates them)."""
    nodes = list(decode_ratchet_tree(tree))
    while nodes and nodes[-1] is None:
        nodes.pop()
    return encode_ratchet_tree(nodes)


@dataclass(frozen=True)
class Snapshot:
    """What one member believes about the current epoch."""

    epoch: int
    epoch_authenticator: bytes
    exporter: bytes
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    ratchet_tree: bytes
    roster: tuple[tuple[int, bytes], ...]

    def describe(self) -> str:
        def h(b: bytes) -> str:
            return b.hex()[:16]

        tree = hashlib.sha256(self.ratchet_tree).hexdigest()[:16]
        roster = ", ".join(f"{i}:{ident.decode(errors='replace')}" for i, ident in self.roster)
        return (
            f"epoch={self.epoch} auth={h(self.epoch_authenticator)} export={h(self.exporter)} "
            f"tree_hash={h(self.tree_hash)} cth={h(self.confirmed_transcript_hash)} "
            f"tree=sha256:{tree} ({len(self.ratchet_tree)} B) roster=[{roster}]"
        )


class PyMember:
    """A member made with this project's engine."""

    def __init__(self, name: str, suite: int) -> None:
        self.name = name
        self.suite = suite
        self.identity = name.encode()
        self.client = Client(SoftwareKeyStore(), suite, Credential.basic(self.identity))
        self.group: Group | None = None

    def __repr__(self) -> str:
        return f"ours:{self.name}"

    @property
    def g(self) -> Group:
        assert self.group is not None, f"{self} is not in a group"
        return self.group

    def key_package(self) -> bytes:
        return self.client.key_package().message()

    def leaf_index(self) -> int:
        return self.g.own_leaf

    def snapshot(self) -> Snapshot:
        g = self.g
        ctx = g.state.context
        roster = []
        for i, leaf in g.members():
            assert leaf.credential.identity is not None
            roster.append((i, leaf.credential.identity))
        return Snapshot(
            epoch=g.epoch,
            epoch_authenticator=g.epoch_authenticator,
            exporter=g.export(EXPORT_LABEL, EXPORT_CONTEXT, EXPORT_LENGTH),
            tree_hash=ctx.tree_hash,
            confirmed_transcript_hash=ctx.confirmed_transcript_hash,
            ratchet_tree=canonical_tree(g.state.tree.encode()),
            roster=tuple(roster),
        )

    def ratchet_tree(self) -> bytes:
        return self.g.state.tree.encode()

    def group_info(self, with_tree: bool) -> bytes:
        return self.g.group_info(with_ratchet_tree=with_tree)

    def group_info_in_ts_mls_dialect(self, with_tree: bool) -> bytes:
        """Our GroupInfo with external_pub's extension_data as the bare key (how ts-mls 1.6.4 reads it,
        against RFC 9420 §12.4.3.2), re-signed by this member: everything else is as we made it."""
        gi = MLSMessage.from_bytes(self.group_info(with_tree)).body
        assert isinstance(gi, GroupInfo)
        extensions = tuple(
            Extension(e.extension_type, ExternalPub.from_bytes(e.extension_data).external_pub)
            if e.extension_type == ExtensionType.external_pub
            else e
            for e in gi.extensions
        )
        unsigned = GroupInfo(gi.group_context, extensions, gi.confirmation_tag, gi.signer, b"")
        return MLSMessage.of(sign_group_info(self.g.cs, self.g.signer(), unsigned)).to_bytes()


class TsMember:
    """A ts-mls client in the module's peer process."""

    def __init__(self, peer: TsMlsPeer, name: str, suite: int) -> None:
        self.peer = peer
        self.name = name  # the peer's client name (unique per peer process)
        self.suite = suite
        self.identity = name.encode()
        peer.new_client(name, self.identity, suite)

    def __repr__(self) -> str:
        return f"ts-mls:{self.name}"

    def key_package(self) -> bytes:
        return self.peer.key_package(self.name)

    def leaf_index(self) -> int:
        return self.peer.group_state(self.name).own_leaf_index

    def snapshot(self) -> Snapshot:
        p, c = self.peer, self.name
        auth, auth_epoch = p.epoch_authenticator(c)
        gs = p.group_state(c)
        assert auth_epoch == gs.epoch
        return Snapshot(
            epoch=gs.epoch,
            epoch_authenticator=auth,
            exporter=p.export(c, EXPORT_LABEL, EXPORT_CONTEXT, EXPORT_LENGTH),
            tree_hash=gs.tree_hash,
            confirmed_transcript_hash=gs.confirmed_transcript_hash,
            ratchet_tree=canonical_tree(gs.ratchet_tree),
            roster=tuple((m.leaf_index, m.identity) for m in p.members(c)),
        )

    def ratchet_tree(self) -> bytes:
        return self.peer.group_state(self.name).ratchet_tree

    def group_info(self, with_tree: bool) -> bytes:
        return self.peer.group_info(self.name, ratchet_tree_extension=with_tree).group_info


Member = PyMember | TsMember


def key_package_body(message: bytes) -> KeyPackage:
    kp = MLSMessage.from_bytes(message).body
    assert isinstance(kp, KeyPackage), "not an MLSMessage(KeyPackage)"
    return kp


@dataclass(frozen=True)
class CommitOut:
    commit: bytes
    welcome: bytes | None
    ratchet_tree: bytes


class MixedGroup:
    """One group with members on both sides; :attr:`members` are the current ones, in join order."""

    def __init__(self, creator: Member, group_id: bytes) -> None:
        self.suite = creator.suite
        self.group_id = group_id
        self.epoch = 0
        self.members: list[Member] = [creator]
        #: Members whose Add / Remove was proposed (by reference) and awaits a commit.
        self.proposed_adds: list[Member] = []
        self.proposed_removes: list[Member] = []
        self.log: list[str] = [f"{creator} creates the group"]
        if isinstance(creator, PyMember):
            creator.group = creator.client.create_group(group_id)
        else:
            assert creator.peer.create_group(creator.name, group_id) == 0
        self.check("create")

    # ---- agreement -----------------------------------------------------------------------------
    def check(self, step: str) -> None:
        """All members agree on the epoch (the expected one) and everything derived from it."""
        snaps = [(m, m.snapshot()) for m in self.members]
        differing = [f.name for f in fields(Snapshot) if len({getattr(s, f.name) for _, s in snaps}) > 1]
        wrong_epoch = [m for m, s in snaps if s.epoch != self.epoch]
        if differing or wrong_epoch:
            lines = [f"after step {step!r}: members disagree on {differing or ['epoch']}"]
            lines += [f"  {m!r:>22} {s.describe()}" for m, s in snaps]
            lines.append(f"  expected epoch {self.epoch}; steps: " + " | ".join(self.log))
            raise AssertionError("\n".join(lines))
        roster = sorted(ident for _, ident in snaps[0][1].roster)
        expected = sorted(m.identity for m in self.members)
        assert roster == expected, f"after {step!r}: the tree's members {roster} are not {expected}"

    # ---- delivery ------------------------------------------------------------------------------
    def _deliver_commit(self, message: bytes, receivers: Sequence[Member]) -> list[Member]:
        """Each of ``receivers`` processes and applies the commit ``message``; returns those it removed."""
        removed: list[Member] = []
        for m in receivers:
            with self.blame(m, f"processes a commit (epoch {self.epoch} -> {self.epoch + 1})"):
                if isinstance(m, PyMember):
                    staged = m.g.process(message)
                    assert isinstance(staged, StagedCommit), f"{m} got {type(staged).__name__}, not a commit"
                    m.g.merge(staged)
                    if staged.removed_self:
                        removed.append(m)
                    else:
                        assert m.g.epoch == self.epoch + 1
                else:
                    res = m.peer.process(m.name, message)
                    assert res.kind == "commit", f"{m} got a {res.kind}"
                    if res.state == "removedFromGroup":
                        removed.append(m)
                    else:
                        assert (res.state, res.epoch) == ("active", self.epoch + 1)
        return removed

    @contextlib.contextmanager
    def blame(self, member: Member, doing: str) -> Iterator[None]:
        """Name the member and the steps so far on any failure inside."""
        try:
            yield
        except Exception as e:
            e.add_note(f"while {member!r} {doing}; steps so far: " + " | ".join(self.log))
            raise

    def commit(
        self,
        committer: Member,
        *,
        add: Sequence[Member] = (),
        remove: Sequence[Member] = (),
        update: bool = False,
        handshake: HandshakeName = "public",
        tree_in_welcome: bool = True,
    ) -> CommitOut:
        """``committer`` commits Adds of ``add`` and Removes of ``remove`` (plus any pending proposals);
        ``update`` forces a path (ts-mls commits always carry one when nothing is added). New members
        (including those of proposed Adds) join from the Welcome, with the tree from its GroupInfo or
        handed over separately."""
        kps = [m.key_package() for m in add]
        leaves = [m.leaf_index() for m in remove]
        with self.blame(committer, "creates a commit"):
            out = self._create_commit(committer, kps, leaves, update, handshake, tree_in_welcome)
        assert wire_format(out.commit) == expected_wire_format(handshake)
        joiners = [*self.proposed_adds, *add]
        leavers = [*self.proposed_removes, *remove]
        self.proposed_adds, self.proposed_removes = [], []
        assert (out.welcome is not None) == bool(joiners)
        removed = self._deliver_commit(out.commit, [m for m in self.members if m is not committer])
        assert set(map(id, removed)) == set(map(id, leavers)), f"removed {removed}, expected {leavers}"
        self.epoch += 1
        self.members = [m for m in self.members if m not in removed]
        if out.welcome is not None:
            tree = None if tree_in_welcome else out.ratchet_tree
            for m in joiners:
                self._join(m, out.welcome, tree)
        changes = [f"+{m}" for m in joiners] + [f"-{m}" for m in leavers]
        what = " ".join(changes) if changes else "a path-only update"
        step = f"{committer} commits {what} ({handshake}, epoch {self.epoch})"
        self.log.append(step)
        self.check(step)
        return out

    def _create_commit(
        self,
        committer: Member,
        kps: list[bytes],
        leaves: list[int],
        update: bool,
        handshake: HandshakeName,
        tree_in_welcome: bool,
    ) -> CommitOut:
        if isinstance(committer, PyMember):
            staged = committer.g.commit(
                CommitOptions(
                    add=[key_package_body(kp) for kp in kps],
                    remove=leaves,
                    force_path=update,
                    handshake=HandshakeFraming(handshake),
                    ratchet_tree_in_welcome=tree_in_welcome,
                )
            )
            committer.g.merge_pending_commit()
            assert staged.commit is not None and staged.ratchet_tree is not None
            return CommitOut(staged.commit, staged.welcome, staged.ratchet_tree)
        res = committer.peer.commit(
            committer.name,
            key_packages=kps,
            leaf_indices=leaves,
            ratchet_tree_extension=tree_in_welcome,
            handshake=handshake,
        )
        assert res.epoch == self.epoch + 1
        return CommitOut(res.commit, res.welcome, res.ratchet_tree)

    def _join(self, m: Member, welcome: bytes, tree: bytes | None) -> None:
        with self.blame(m, f"joins from a Welcome (tree {'separate' if tree else 'in GroupInfo'})"):
            if isinstance(m, PyMember):
                m.group = m.client.join(welcome, ratchet_tree=tree)
                assert m.g.epoch == self.epoch
            else:
                res = m.peer.join(m.name, welcome, tree)
                assert (res.epoch, res.group_id) == (self.epoch, self.group_id)
        self.members.append(m)

    def propose(
        self,
        proposer: Member,
        kind: Literal["add", "remove", "update"],
        target: Member | None = None,
        *,
        handshake: HandshakeName = "public",
    ) -> None:
        """A standalone proposal by ``proposer``, delivered to every other member (who caches it)."""
        if isinstance(proposer, PyMember):
            if kind == "add":
                assert target is not None
                kp = key_package_body(target.key_package())
                msg, _ = proposer.g.propose_add(kp, HandshakeFraming(handshake))
            elif kind == "remove":
                assert target is not None
                msg, _ = proposer.g.propose_remove(target.leaf_index(), HandshakeFraming(handshake))
            else:
                msg, _ = proposer.g.propose_update(HandshakeFraming(handshake))
        else:
            assert kind != "update", "the ts-mls peer has no Update proposal op"
            assert target is not None
            if kind == "add":
                msg = proposer.peer.propose(
                    proposer.name, "add", key_package=target.key_package(), handshake=handshake
                )
            else:
                msg = proposer.peer.propose(
                    proposer.name, "remove", leaf_index=target.leaf_index(), handshake=handshake
                )
        assert wire_format(msg) == expected_wire_format(handshake)
        for m in self.members:
            if m is proposer:
                continue
            if isinstance(m, PyMember):
                res = m.g.process(msg)
                assert isinstance(res, ProposalMessage), f"{m} got {type(res).__name__}"
            else:
                assert m.peer.process(m.name, msg).kind == "proposal"
        if kind == "add":
            assert target is not None
            self.proposed_adds.append(target)
        elif kind == "remove":
            assert target is not None
            self.proposed_removes.append(target)
        self.log.append(f"{proposer} proposes {kind} {target or ''} ({handshake})")

    def send(self, sender: Member, data: bytes) -> None:
        """An application message from ``sender``; every other member must decrypt exactly ``data``."""
        if isinstance(sender, PyMember):
            msg = sender.g.protect(data)
        else:
            msg = sender.peer.send(sender.name, data)
        assert wire_format(msg) == WireFormat.mls_private_message
        for m in self.members:
            if m is sender:
                continue
            if isinstance(m, PyMember):
                res = m.g.process(msg)
                assert isinstance(res, ApplicationMessage), f"{m} got {type(res).__name__}"
                assert res.data == data
                assert res.sender.leaf_index == sender.leaf_index()
            else:
                got = m.peer.process(m.name, msg)
                assert (got.kind, got.data) == ("application", data), f"{m} got {got}"

    def chat(self, text: str = "hello") -> None:
        """Every member sends one application message to all the others."""
        for m in list(self.members):
            self.send(m, f"{text} from {m} at epoch {self.epoch}".encode())
        self.check(f"{text}: application messages at epoch {self.epoch}")

    def external_join(
        self,
        joiner: Member,
        via: Member,
        *,
        tree_in_group_info: bool,
        resync: bool = False,
        ts_mls_dialect: bool = False,
    ) -> bytes:
        """``joiner`` joins by external commit from ``via``'s GroupInfo (with the tree in its ratchet_tree
        extension, or handed over separately); the other members process the commit. With ``resync`` the
        joiner is a current member that rejoins, removing its old leaf. ``ts_mls_dialect``: ``via`` is our
        member and its GroupInfo is rewritten for ts-mls 1.6.4 (see
        :meth:`PyMember.group_info_in_ts_mls_dialect`)."""
        if ts_mls_dialect:
            assert isinstance(via, PyMember)
            gi = via.group_info_in_ts_mls_dialect(tree_in_group_info)
        else:
            gi = via.group_info(tree_in_group_info)
        assert wire_format(gi) == WireFormat.mls_group_info
        tree = None if tree_in_group_info else via.ratchet_tree()
        with self.blame(joiner, f"creates an external commit from {via!r}'s GroupInfo"):
            commit = self._create_external_commit(joiner, gi, tree, resync)
        assert wire_format(commit) == WireFormat.mls_public_message
        assert not self._deliver_commit(commit, [m for m in self.members if m is not joiner])
        self.epoch += 1
        if not resync:
            self.members.append(joiner)
        how = "resyncs" if resync else "joins"
        tree_where = "in GroupInfo" if tree_in_group_info else "separate"
        step = f"{joiner} {how} externally via {via} (tree {tree_where}, epoch {self.epoch})"
        self.log.append(step)
        self.check(step)
        return commit

    def _create_external_commit(self, joiner: Member, gi: bytes, tree: bytes | None, resync: bool) -> bytes:
        if isinstance(joiner, PyMember):
            prior = joiner.leaf_index() if resync else None
            group, commit = Group.external_join(
                joiner.client.key_store,
                gi,
                signer=joiner.client.signer,
                credential=joiner.client.credential,
                ratchet_tree=tree,
                remove_prior=prior,
            )
            joiner.group = group
            return commit
        ext = joiner.peer.external_join(joiner.name, gi, tree, resync=resync)
        assert (ext.epoch, ext.group_id) == (self.epoch + 1, self.group_id)
        return ext.commit


__all__ = [
    "EXPORT_CONTEXT",
    "EXPORT_LABEL",
    "EXPORT_LENGTH",
    "CommitOut",
    "HandshakeName",
    "Member",
    "MixedGroup",
    "PyMember",
    "Snapshot",
    "TsMember",
    "canonical_tree",
    "key_package_body",
    "unique",
    "wire_format",
]
