"""Shared helpers for the group-engine tests: a small in-memory "delivery service" over several members of
this implementation, an agreement check run after every step, and builders of hand-made (possibly
invalid) commits signed with a member's key.

Every member has its own :class:`SoftwareKeyStore` (so that tests can count its keys) and its own
:class:`MemoryPskStore`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mls.client import Client, KeyPackageBundle
from mls.credentials.credential import Credential
from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import MLSError, StateError
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.handshake_framing import HandshakeFraming
from mls.group.results import ApplicationMessage
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig
from mls.schedule.psk import MemoryPskStore
from mls.schedule.secret_tree import RatchetType, SecretTree
from mls.tree.leaf_node import LeafNode, LeafNodeSource, sign_leaf_node
from mls.tree.nodes import UpdatePath
from mls.wire.commit import Commit
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    WireFormat,
)
from mls.wire.message_protection import encrypt_private, protect_public, sign_framed_content
from mls.wire.proposals import Proposal, ProposalOrRef, Update

#: Suites the scenarios run in full; the others get a quicker smoke test.
MAIN_SUITES = (1, 2, 3)
OTHER_SUITES = (4, 5, 6, 7)
ALL_SUITES = MAIN_SUITES + OTHER_SUITES

EXPORT_LABEL = "test"
EXPORT_CONTEXT = b"ctx"


@dataclass(eq=False)
class Member:
    """One client of the harness and (once it is in the group) its Group."""

    name: str
    client: Client
    key_store: SoftwareKeyStore
    psks: MemoryPskStore
    config: GroupConfig | None = None
    group: Group | None = None
    removed: bool = False

    @property
    def g(self) -> Group:
        assert self.group is not None, f"{self.name} is not in the group"
        return self.group

    @property
    def leaf(self) -> int:
        return self.g.own_leaf

    def key_refs(self) -> set[bytes]:
        return self.key_store.refs()

    def __repr__(self) -> str:
        return f"Member({self.name})"


@dataclass(eq=False)
class Harness:
    """Members of one group, with in-order delivery of handshake messages to every current member."""

    suite: int
    config: GroupConfig | None = None
    members: list[Member] = field(default_factory=list)
    #: Members that missed a commit on purpose (e.g. lacking a PSK): not checked for agreement any more.
    stale: list[Member] = field(default_factory=list)

    # ---- membership ---------------------------------------------------------------------------------
    def new_client(self, name: str, config: GroupConfig | None = None) -> Member:
        ks = SoftwareKeyStore()
        psks = MemoryPskStore()
        client = Client(ks, self.suite, Credential.basic(name.encode()), psks=psks)
        m = Member(name, client, ks, psks, config if config is not None else self.config)
        return m

    def create(self, name: str = "alice", group_id: bytes | None = None) -> Member:
        m = self.new_client(name)
        m.group = m.client.create_group(group_id=group_id or os.urandom(16), config=m.config)
        self.members.append(m)
        self.check()
        return m

    @property
    def active(self) -> list[Member]:
        return [m for m in self.members if not m.removed and m not in self.stale]

    def by_name(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def others(self, me: Member) -> list[Member]:
        return [m for m in self.active if m is not me]

    # ---- commits ------------------------------------------------------------------------------------
    def commit(
        self,
        committer: Member,
        options: CommitOptions | None = None,
        *,
        joiners: Sequence[tuple[Member, KeyPackageBundle]] = (),
        echo: bool = False,
        skip: Iterable[Member] = (),
        pass_tree: bool | None = None,
    ) -> StagedCommit:
        """``committer`` commits; every other active member processes and merges; joiners join.

        ``echo``: the committer gets its own commit back from the "delivery service" and merges what
        :meth:`Group.process` returns (it must be the pending commit itself). ``pass_tree``: hand the
        ratchet tree to joiners out of band (default: when it is not in the Welcome)."""
        opts = options or CommitOptions()
        staged = committer.g.commit(opts)
        assert committer.g.pending_commit is staged
        assert staged.commit is not None
        self.deliver_commit(committer, staged, echo=echo, skip=skip)
        if joiners:
            assert staged.welcome is not None
            give_tree = (not opts.ratchet_tree_in_welcome) if pass_tree is None else pass_tree
            for m, _bundle in joiners:
                m.group = m.client.join(staged.welcome, staged.ratchet_tree if give_tree else None, m.config)
                self.members.append(m)
        self.check()
        return staged

    def deliver_commit(
        self, committer: Member, staged: StagedCommit, *, echo: bool = False, skip: Iterable[Member] = ()
    ) -> None:
        assert staged.commit is not None
        skipped = set(skip)
        for m in list(self.active):
            if m in skipped:
                continue
            if m is committer:
                if echo:
                    back = m.g.process(staged.commit)
                    assert back is staged, "the own pending commit must be recognised"
                    m.g.merge(back)
                else:
                    m.g.merge_pending_commit()
                assert m.g.pending_commit is None
                continue
            result = m.g.process(staged.commit)
            assert isinstance(result, StagedCommit)
            m.g.merge(result)
            if result.removed_self:
                m.removed = True

    def add(
        self,
        committer: Member,
        names: Sequence[str],
        options: CommitOptions | None = None,
        *,
        echo: bool = False,
        pass_tree: bool | None = None,
    ) -> tuple[list[Member], StagedCommit]:
        """Add new clients ``names`` in one commit (with whatever else ``options`` holds)."""
        new = [self.new_client(n) for n in names]
        bundles = [m.client.key_package() for m in new]
        opts = options or CommitOptions()
        opts.add = [*opts.add, *(b.key_package for b in bundles)]
        staged = self.commit(committer, opts, joiners=list(zip(new, bundles)), echo=echo, pass_tree=pass_tree)
        return new, staged

    def propose(self, proposer: Member, message: bytes) -> None:
        """Deliver a proposal message (already cached by ``proposer``) to every other active member."""
        for m in self.others(proposer):
            m.g.process(message)

    # ---- application data ---------------------------------------------------------------------------
    def broadcast(self, sender: Member, data: bytes) -> None:
        """``sender`` sends ``data``; every other active member decrypts it."""
        msg = sender.g.protect(data, b"aad")
        for m in self.others(sender):
            out = m.g.process(msg)
            assert isinstance(out, ApplicationMessage)
            assert out.data == data and out.authenticated_data == b"aad"
            assert out.sender == Sender.member(sender.leaf)
            assert out.epoch == sender.g.epoch

    def everyone_talks(self) -> None:
        for m in self.active:
            self.broadcast(m, f"hello from {m.name} in epoch {m.g.epoch}".encode())

    # ---- agreement ----------------------------------------------------------------------------------
    def check(self) -> None:
        """All current members agree on epoch, epoch_authenticator, tree hash, exporter output and
        membership; removed members are inactive."""
        check_agreement([m.g for m in self.active])
        for m in self.members:
            if m.removed:
                assert not m.g.state.active
                try:
                    m.g.protect(b"after removal")
                except StateError:
                    pass
                else:
                    raise AssertionError(f"{m.name} was removed but can still send")


def group_view(g: Group) -> tuple[object, ...]:
    return (
        g.epoch,
        g.group_id,
        g.epoch_authenticator,
        g.state.tree.tree_hash(),
        g.export(EXPORT_LABEL, EXPORT_CONTEXT, 32),
        g.state.context.to_bytes(),
        tuple((i, leaf.signature_key, leaf.encryption_key) for i, leaf in g.members()),
    )


def check_agreement(groups: Sequence[Group]) -> None:
    assert groups, "no members"
    views = [group_view(g) for g in groups]
    first = views[0]
    for g, v in zip(groups, views):
        assert g.state.active
        assert g.pending_commit is None
        assert v[0] == first[0], f"epoch differs: {v[0]} != {first[0]}"
        assert v[2] == first[2], f"epoch_authenticator differs at leaf {g.own_leaf}"
        assert v[3] == first[3], f"tree hash differs at leaf {g.own_leaf}"
        assert v[4] == first[4], f"exporter output differs at leaf {g.own_leaf}"
        assert v == first
    # every member sits in its own leaf, with the leaf key it holds
    leaves = {g.own_leaf for g in groups}
    assert len(leaves) == len(groups)
    for g in groups:
        leaf = g.state.tree.leaf(g.own_leaf)
        assert leaf is not None and leaf.encryption_key == g.state.keys.leaf_key.public_key


def build_group(
    suite: int, names: Sequence[str], config: GroupConfig | None = None, group_id: bytes | None = None
) -> tuple[Harness, list[Member]]:
    """A harness with ``names[0]`` creating the group and adding the others in one commit."""
    h = Harness(suite, config)
    first = h.create(names[0], group_id)
    rest: list[Member] = []
    if len(names) > 1:
        rest, _ = h.add(first, names[1:])
    return h, [first, *rest]


# ---- hand-made messages --------------------------------------------------------------------------------


def wire_of(message: bytes) -> int:
    return MLSMessage.from_bytes(message).wire_format


def frame(
    group: Group,
    content: FramedContent,
    wire: int,
    confirmation_tag: bytes | None = None,
    *,
    signer_group: Group | None = None,
    signature: bytes | None = None,
) -> bytes:
    """Sign ``content`` with ``signer_group``'s (default: ``group``'s) key (or use ``signature``) and
    protect it as ``group`` would: with the membership key, or encrypted with the next handshake or
    application key of a *copy* of ``group``'s secret tree (so ``group``'s state is untouched)."""
    s, cs = group.state, group.cs
    if signature is None:
        signature = sign_framed_content(cs, (signer_group or group).signer(), wire, content, s.context)
    auth = AuthenticatedContent(wire, content, FramedContentAuthData(signature, confirmation_tag))
    body: PublicMessage | PrivateMessage
    if wire == WireFormat.mls_public_message:
        body = protect_public(cs, auth, s.secrets.membership_key, s.context)
    else:
        tree = SecretTree.from_state(s.secret_tree.to_state())
        rt = (
            RatchetType.application
            if content.content_type == ContentType.application
            else RatchetType.handshake
        )
        assert content.sender.leaf_index is not None
        key = tree.next_key_nonce(content.sender.leaf_index, rt)
        body = encrypt_private(cs, auth, key, s.secrets.sender_data_secret)
    return MLSMessage.of(body).to_bytes()


def forge_commit(
    group: Group,
    proposals: Sequence[Proposal | bytes],
    path: UpdatePath | None = None,
    *,
    wire: int = WireFormat.mls_public_message,
    confirmation_tag: bytes | None = None,
    sender_leaf: int | None = None,
    signer_group: Group | None = None,
    signature: bytes | None = None,
) -> bytes:
    """A Commit with the given proposals (by value, or by reference when given as bytes), signed by
    ``group``'s member. The confirmation tag is random unless given: every §12 list rule is checked
    before the tag."""
    s = group.state
    commit = Commit(tuple(ProposalOrRef.of(p) for p in proposals), path)
    content = FramedContent(
        group_id=s.group_id,
        epoch=s.epoch,
        sender=Sender.member(s.own_leaf if sender_leaf is None else sender_leaf),
        authenticated_data=b"",
        content_type=ContentType.commit,
        commit=commit,
    )
    tag = confirmation_tag if confirmation_tag is not None else os.urandom(group.cs.n_h)
    return frame(group, content, wire, tag, signer_group=signer_group, signature=signature)


def forge_proposal(group: Group, proposal: Proposal, wire: int = WireFormat.mls_public_message) -> bytes:
    s = group.state
    content = FramedContent(
        group_id=s.group_id,
        epoch=s.epoch,
        sender=Sender.member(s.own_leaf),
        authenticated_data=b"",
        content_type=ContentType.proposal,
        proposal=proposal,
    )
    return frame(group, content, wire)


def update_leaf(group: Group) -> LeafNode:
    """A valid Update LeafNode for ``group``'s member, with a fresh key that no key store holds."""
    s, cs = group.state, group.cs
    current = s.tree.leaf(s.own_leaf)
    assert current is not None
    fresh = cs.kem.generate()
    leaf = LeafNode(
        encryption_key=fresh.public_key,
        signature_key=current.signature_key,
        credential=current.credential,
        capabilities=current.capabilities,
        leaf_node_source=LeafNodeSource.update,
        extensions=current.extensions,
        signature=b"",
    )
    return sign_leaf_node(cs, group.signer(), leaf, s.group_id, s.own_leaf)


def update_proposal(group: Group) -> Proposal:
    return Proposal.of(Update(update_leaf(group)))


def expect_rejected(
    group: Group, message: bytes, rule: str | None = None, error: type[MLSError] = MLSError
) -> MLSError:
    """``group.process(message)`` raises ``error`` (with ``rule``) and leaves the state byte-identical."""
    before = group.to_bytes()
    pending = group.pending_commit
    try:
        group.process(message)
    except MLSError as e:
        assert isinstance(e, error), f"expected {error.__name__}, got {type(e).__name__}: {e}"
        if rule is not None:
            assert getattr(e, "rule", None) == rule, (
                f"expected rule {rule}, got {getattr(e, 'rule', None)}: {e}"
            )
            assert f"§{rule.partition('/')[0]}: " in str(e)
        caught = e
    else:
        raise AssertionError("the message was accepted")
    assert group.to_bytes() == before, "a rejected message changed the group state"
    assert group.pending_commit is pending
    return caught


__all__ = [
    "ALL_SUITES",
    "EXPORT_CONTEXT",
    "EXPORT_LABEL",
    "MAIN_SUITES",
    "OTHER_SUITES",
    "HandshakeFraming",
    "Harness",
    "Member",
    "build_group",
    "check_agreement",
    "expect_rejected",
    "forge_commit",
    "forge_proposal",
    "frame",
    "group_view",
    "update_leaf",
    "update_proposal",
    "wire_of",
]
