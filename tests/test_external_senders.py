"""External senders (RFC 9420 §12.1.8, §12.1.8.1) and new-member proposals.

A group carries the ``external_senders`` extension; a server provisioned there proposes Add, Remove,
PreSharedKey, GroupContextExtensions and ReInit, signed as sender type ``external`` with its index. Members
cache the proposals and commit them by reference. A prospective member proposes its own Add as sender
type ``new_member_proposal``. Anything else from outside the group is rejected with the rule named and no
change of any member's state.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import pytest

from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import CryptoError, MLSError, StateError, ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.external_sender import _external_message, external_proposal, new_member_add_proposal
from mls.group.group import Group
from mls.group.reinit import reinit_successor, resumption_psks
from mls.group.results import ApplicationMessage, ProposalMessage
from mls.group.staged_commit import StagedCommit
from mls.schedule.psk import MemoryPskStore
from mls.tree.leaf_node import LeafNodeSource, sign_leaf_node
from mls.wire.commit import Commit
from mls.wire.extensions import ExternalSender, ExternalSenders, RequiredCapabilities, find_payload
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.wire.message_protection import sign_framed_content
from mls.wire.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalOrRef,
    ProposalOrRefType,
    ReInit,
    Remove,
    Update,
)

MAIN_SUITES = (1, 2, 3)
PSK_ID = b"server-distributed psk"


# ---- harness ---------------------------------------------------------------------------------------------


def view(g: Group) -> tuple[object, ...]:
    return (
        g.epoch,
        g.group_id,
        g.epoch_authenticator,
        g.state.context.to_bytes(),
        g.export("external senders test", b"", 32),
        tuple((i, leaf.signature_key) for i, leaf in g.members()),
    )


def agree(*groups: Group) -> None:
    first = view(groups[0])
    for g in groups:
        assert g.state.active and g.pending_commit is None
        assert view(g) == first, f"leaf {g.own_leaf} disagrees"
    assert len({g.own_leaf for g in groups}) == len(groups)


class Server:
    """An external sender: a signature key provisioned in the group's external_senders extension."""

    def __init__(self, suite: int, name: bytes = b"server") -> None:
        self.suite = suite
        self.signer = SoftwareKeyStore().new_signature_key(suite)
        self.entry = ExternalSender(self.signer.public_key, Credential.basic(name))

    def propose(self, group: Group, proposal: Proposal, index: int = 0) -> bytes:
        return external_proposal(self.suite, self.signer, index, group.group_id, group.epoch, proposal)


def client(suite: int, name: str) -> Client:
    return Client(
        SoftwareKeyStore(),
        suite,
        Credential.basic(name.encode()),
        psks=MemoryPskStore(external={PSK_ID: b"p" * 32}),
    )


def setup(
    suite: int, names: Sequence[str] = ("alice", "bob"), with_senders: bool = True
) -> tuple[Server, Server, list[Client], list[Group]]:
    """A group whose external_senders lists ``server`` (index 0) and ``other`` (index 1)."""
    server, other = Server(suite), Server(suite, b"other")
    ext = ExternalSenders((server.entry, other.entry)).to_extension()
    clients = [client(suite, n) for n in names]
    first = clients[0].create_group(extensions=[ext] if with_senders else [])
    groups = [first]
    if len(clients) > 1:
        st = first.commit(CommitOptions(add=[c.key_package().key_package for c in clients[1:]]))
        first.merge_pending_commit()
        groups += [c.join(st.welcome or b"") for c in clients[1:]]
    agree(*groups)
    return server, other, clients, groups


def receive(message: bytes, groups: Sequence[Group]) -> list[ProposalMessage]:
    out = []
    for g in groups:
        got = g.process(message)
        assert isinstance(got, ProposalMessage)
        out.append(got)
    assert len({p.ref for p in out}) == 1, "members disagree on the ProposalRef"
    return out


def commit_all(
    committer: Group, others: Sequence[Group], options: CommitOptions | None = None
) -> StagedCommit:
    st = committer.commit(options)
    committer.merge_pending_commit()
    for g in others:
        staged = g.process(st.commit or b"")
        assert isinstance(staged, StagedCommit)
        g.merge(staged)
    return st


def committed_refs(st: StagedCommit) -> list[bytes]:
    msg = MLSMessage.from_bytes(st.commit or b"").body
    assert isinstance(msg, PublicMessage) and msg.content.commit is not None
    return [
        p.reference
        for p in msg.content.commit.proposals
        if p.type == ProposalOrRefType.reference and p.reference is not None
    ]


def expect_rejected(
    groups: Sequence[Group], message: bytes, rule: str | None, error: type[MLSError] = ValidationError
) -> None:
    for g in groups:
        before = g.to_bytes()
        with pytest.raises(error) as info:
            g.process(message)
        if rule is not None:
            assert getattr(info.value, "rule", None) == rule, (
                f"{getattr(info.value, 'rule', None)}: {info.value}"
            )
            assert f"§{rule.partition('/')[0]}: " in str(info.value)
        assert g.to_bytes() == before, "a rejected message changed the group state"


# ---- accepted external proposals ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_external_add_psk_remove_committed(suite: int) -> None:
    server, _, _, (ga, gb) = setup(suite)
    cs = cipher_suite(suite)

    # Add
    carol = client(suite, "carol")
    msg = server.propose(ga, Proposal.of(Add(carol.key_package().key_package)))
    got = receive(msg, [ga, gb])
    assert got[0].sender == Sender.external(0) and isinstance(got[0].proposal.body, Add)
    st = commit_all(gb, [ga])
    assert committed_refs(st) == [got[0].ref]
    gc = carol.join(st.welcome or b"")
    agree(ga, gb, gc)

    # PreSharedKey (an external PSK every member holds)
    psk = PreSharedKeyID.external(PSK_ID, os.urandom(cs.n_h))
    got = receive(server.propose(ga, Proposal.of(PreSharedKey(psk))), [ga, gb, gc])
    st = commit_all(ga, [gb, gc])
    assert committed_refs(st) == [got[0].ref]
    agree(ga, gb, gc)

    # Remove
    got = receive(server.propose(ga, Proposal.of(Remove(gb.own_leaf))), [ga, gb, gc])
    st = gc.commit()
    gc.merge_pending_commit()
    ga.merge(ga.process(st.commit or b""))  # type: ignore[arg-type]
    removed = gb.process(st.commit or b"")
    assert isinstance(removed, StagedCommit) and removed.removed_self
    gb.merge(removed)
    assert committed_refs(st) == [got[0].ref]
    agree(ga, gc)
    with pytest.raises(StateError):
        gb.protect(b"gone")
    data = gc.protect(b"after the server removed bob")
    got_app = ga.process(data)
    assert isinstance(got_app, ApplicationMessage) and got_app.data == b"after the server removed bob"


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_external_group_context_extensions_committed(suite: int) -> None:
    server, other, _, (ga, gb) = setup(suite)
    senders = find_payload(ga.state.context.extensions, ExternalSenders)
    assert senders is not None
    required = RequiredCapabilities((ExternalSenders.extension_type,), (), (1,))
    # keep only the server as external sender and require capabilities every member has
    new_extensions = (ExternalSenders((server.entry,)).to_extension(), required.to_extension())
    receive(server.propose(ga, Proposal.of(GroupContextExtensions(new_extensions))), [ga, gb])
    commit_all(ga, [gb])
    agree(ga, gb)
    for g in (ga, gb):
        assert g.state.context.extensions == new_extensions
        assert find_payload(g.state.context.extensions, RequiredCapabilities) == required
    # the server is still provisioned (index 0); the dropped sender (was index 1) no longer is
    expect_rejected(
        [ga, gb],
        other.propose(ga, Proposal.of(Remove(gb.own_leaf)), index=1),
        "12.1.8.1/external-sender-index",
    )
    receive(server.propose(ga, Proposal.of(Remove(gb.own_leaf))), [ga, gb])
    st = ga.commit()
    ga.merge_pending_commit()
    assert gb.process(st.commit or b"").removed_self  # type: ignore[union-attr]
    assert ga.state.context.extensions == new_extensions and ga.state.tree.member_count() == 1


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_external_reinit_committed(suite: int) -> None:
    server, _, _, (ga, gb) = setup(suite)
    new_suite = 2 if suite != 2 else 1
    reinit = ReInit(os.urandom(16), 1, new_suite, ())
    got = receive(server.propose(ga, Proposal.of(reinit)), [ga, gb])
    st = commit_all(gb, [ga])
    assert committed_refs(st) == [got[0].ref]
    for g in (ga, gb):
        assert g.state.reinit == reinit
        with pytest.raises(StateError):
            g.protect(b"closed")
        with pytest.raises(StateError):
            g.commit()
    # the committer starts the new group; alice joins it with her resumption PSKs
    alice2 = Client(SoftwareKeyStore(), new_suite, Credential.basic(b"alice"))
    bob2 = Client(SoftwareKeyStore(), new_suite, Credential.basic(b"bob"))
    nb, staged = reinit_successor(
        gb,
        key_store=bob2.key_store,
        signer=bob2.signer,
        credential=bob2.credential,
        key_packages=[alice2.key_package().key_package],
    )
    na = alice2.join(staged.welcome or b"", psks=resumption_psks(ga), expected_reinit=ga.state.reinit)
    agree(na, nb)
    assert na.group_id == reinit.group_id and na.cs.suite_id == new_suite


def test_reinit_from_external_sender_must_be_alone() -> None:
    """A ReInit must be alone (§12.2): with other proposals pending, the committer prefers them and leaves
    the ReInit out, so it can be proposed again in a later epoch."""
    server, _, _, (ga, gb) = setup(1)
    receive(server.propose(ga, Proposal.of(ReInit(b"g2", 1, 1, ()))), [ga, gb])
    receive(server.propose(ga, Proposal.of(Remove(gb.own_leaf))), [ga, gb])
    st = ga.commit()
    assert [type(p.proposal.body) for p in st.proposals] == [Remove]
    ga.merge_pending_commit()
    assert ga.state.reinit is None and ga.state.tree.leaf(gb.own_leaf) is None
    assert gb.process(st.commit or b"").removed_self  # type: ignore[union-attr]


def test_external_remove_of_the_committer() -> None:
    """The committer may not commit its own removal (§12.2); another member can."""
    server, _, _, (ga, gb, gc) = setup(1, ("alice", "bob", "carol"))
    receive(server.propose(ga, Proposal.of(Remove(ga.own_leaf))), [ga, gb, gc])
    own = ga.commit()  # the committer leaves its own removal out of its commit
    assert own.proposals == [] and own.commit is not None
    ga.discard_pending_commit()
    st = gb.commit()
    gb.merge_pending_commit()
    gc.merge(gc.process(st.commit or b""))  # type: ignore[arg-type]
    assert ga.process(st.commit or b"").removed_self  # type: ignore[union-attr]
    agree(gb, gc)


# ---- new-member proposals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_new_member_add_proposal_committed(suite: int) -> None:
    _, _, _, (ga, gb) = setup(suite, with_senders=False)
    carol = client(suite, "carol")
    kp = carol.key_package()
    msg = new_member_add_proposal(carol.signer, kp.key_package, ga.group_id, ga.epoch)
    body = MLSMessage.from_bytes(msg).body
    assert isinstance(body, PublicMessage) and body.membership_tag is None
    got = receive(msg, [ga, gb])
    assert got[0].sender.sender_type == SenderType.new_member_proposal
    assert got[0].proposal == Proposal.of(Add(kp.key_package))
    st = commit_all(gb, [ga])
    assert committed_refs(st) == [got[0].ref]
    gc = carol.join(st.welcome or b"")
    agree(ga, gb, gc)


def test_new_member_add_signed_with_another_key() -> None:
    _, _, _, (ga, gb) = setup(1, with_senders=False)
    carol = client(1, "carol")
    kp = carol.key_package().key_package
    intruder = SoftwareKeyStore().new_signature_key(1)
    with pytest.raises(ValidationError) as info:
        new_member_add_proposal(intruder, kp, ga.group_id, ga.epoch)
    assert info.value.rule == "6.1/new-member-proposal-signer"
    forged = _external_message(
        1,
        intruder,
        Sender(sender_type=SenderType.new_member_proposal),
        ga.group_id,
        ga.epoch,
        Proposal.of(Add(kp)),
        b"",
    )
    expect_rejected([ga, gb], forged, "6.1/content-signature", CryptoError)


@pytest.mark.parametrize("kind", ["Remove", "PreSharedKey", "GroupContextExtensions"])
def test_new_member_proposal_that_is_not_an_add_is_rejected(kind: str) -> None:
    _, _, _, (ga, gb) = setup(1, with_senders=False)
    carol = client(1, "carol")
    bodies = {
        "Remove": Remove(1),
        "PreSharedKey": PreSharedKey(PreSharedKeyID.external(PSK_ID, os.urandom(32))),
        "GroupContextExtensions": GroupContextExtensions(()),
    }
    msg = _external_message(
        1,
        carol.signer,
        Sender(sender_type=SenderType.new_member_proposal),
        ga.group_id,
        ga.epoch,
        Proposal.of(bodies[kind]),
        b"",
    )  # type: ignore[arg-type]
    expect_rejected([ga, gb], msg, "6.1/new-member-proposal-content")


# ---- rejected external proposals ---------------------------------------------------------------------------


def test_external_update_is_rejected() -> None:
    server, _, _, (ga, gb) = setup(1)
    current = gb.state.tree.leaf(gb.own_leaf)
    assert current is not None
    leaf = sign_leaf_node(
        gb.cs,
        gb.signer(),
        dataclasses.replace(
            current,
            encryption_key=gb.cs.kem.generate().public_key,
            leaf_node_source=LeafNodeSource.update,
            lifetime=None,
            signature=b"",
        ),
        gb.group_id,
        gb.own_leaf,
    )
    update = Proposal.of(Update(leaf))
    # the sending side refuses …
    with pytest.raises(ValidationError) as info:
        server.propose(ga, update)
    assert info.value.rule == "12.1.8/external-sender-proposal-type"
    # … and members reject a hand-made one
    msg = _external_message(1, server.signer, Sender.external(0), ga.group_id, ga.epoch, update, b"")
    expect_rejected([ga, gb], msg, "12.1.8/external-sender-proposal-type")
    # the same for ExternalInit, which is no external sender's either
    msg = _external_message(
        1,
        server.signer,
        Sender.external(0),
        ga.group_id,
        ga.epoch,
        Proposal.of(ExternalInit(os.urandom(32))),
        b"",
    )
    expect_rejected([ga, gb], msg, "12.1.8/external-sender-proposal-type")


def test_wrong_sender_index_is_rejected() -> None:
    server, other, _, (ga, gb) = setup(1)
    msg = server.propose(ga, Proposal.of(Remove(1)), index=2)
    expect_rejected([ga, gb], msg, "12.1.8.1/external-sender-index")
    # index 1 exists, but it is the other sender's key: the server's signature does not verify
    msg = server.propose(ga, Proposal.of(Remove(1)), index=1)
    expect_rejected([ga, gb], msg, "6.1/content-signature", CryptoError)
    # the other sender at its own index is fine
    receive(other.propose(ga, Proposal.of(Remove(1)), index=1), [ga, gb])


def test_signature_by_non_provisioned_key_is_rejected() -> None:
    _, _, _, (ga, gb) = setup(1)
    rogue = Server(1, b"server")  # same name, different key
    msg = rogue.propose(ga, Proposal.of(Remove(1)), index=0)
    expect_rejected([ga, gb], msg, "6.1/content-signature", CryptoError)


def test_group_without_external_senders_rejects_external_proposals() -> None:
    server, _, _, (ga, gb) = setup(1, with_senders=False)
    expect_rejected([ga, gb], server.propose(ga, Proposal.of(Remove(1))), "12.1.8.1/external-sender-index")


def test_external_proposal_for_another_epoch_or_group_is_rejected() -> None:
    server, _, _, (ga, gb) = setup(1)
    kp = client(1, "carol").key_package().key_package
    stale = external_proposal(1, server.signer, 0, ga.group_id, ga.epoch - 1, Proposal.of(Add(kp)))
    expect_rejected([ga, gb], stale, "6/message-epoch")
    other_group = external_proposal(1, server.signer, 0, os.urandom(16), ga.epoch, Proposal.of(Add(kp)))
    expect_rejected([ga, gb], other_group, "6/message-group-id")


def test_invalid_external_add_is_rejected() -> None:
    """The external Add's KeyPackage is validated like any Add (§12.1.1): here, the wrong suite."""
    server, _, _, (ga, gb) = setup(1)
    kp = Client(SoftwareKeyStore(), 2, Credential.basic(b"carol")).key_package().key_package
    expect_rejected([ga, gb], server.propose(ga, Proposal.of(Add(kp))), "10.1/version-cipher-suite")


def test_external_sender_cannot_commit() -> None:
    server, _, _, (ga, gb) = setup(1)
    content = FramedContent(
        group_id=ga.group_id,
        epoch=ga.epoch,
        sender=Sender.external(0),
        authenticated_data=b"",
        content_type=ContentType.commit,
        commit=Commit((ProposalOrRef.of(Proposal.of(Remove(1))),), None),
    )
    signature = sign_framed_content(ga.cs, server.signer, WireFormat.mls_public_message, content, None)
    auth = AuthenticatedContent(
        WireFormat.mls_public_message, content, FramedContentAuthData(signature, b"\0" * 32)
    )
    msg = MLSMessage.of(PublicMessage(auth.content, auth.auth, None)).to_bytes()
    expect_rejected([ga, gb], msg, "6.1/commit-sender-type")
