"""External commits (RFC 9420 §12.4.3.2) and GroupInfo export (§12.4.3, §12.4.3.3).

A new member joins from a GroupInfo carrying ``external_pub`` — with the ratchet tree in the
``ratchet_tree`` extension or handed over out of band — optionally with PSKs, and a member that lost its
state rejoins by "resync" (the external commit removes its prior leaf). After each step every member agrees
on the epoch, the epoch_authenticator, the GroupContext and exporter output.

Invalid external commits are rejected by every member with an :class:`~mls.errors.MLSError` naming the
rule, and leave every member's serialised state byte-identical. Commits that
:func:`mls.group.group.Group.external_join` refuses to build are made by hand (:func:`forge_external_commit`,
which follows ``mls.group.external_join._commit`` with a proposal list of the test's choosing).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import pytest

from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.key_protocols import KeyStore, Signer
from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import CryptoError, MLSError, StateError, ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.external_join import _joiner_path
from mls.group.group import Group
from mls.group.join import tree_from_group_info
from mls.group.proposal_list import CommittedProposal, ValidationContext, apply_proposals
from mls.group.results import ApplicationMessage
from mls.group.staged_commit import StagedCommit
from mls.schedule.key_schedule import KeySchedule, external_init_send
from mls.schedule.psk import MemoryPskStore, psk_secret
from mls.schedule.transcript import TranscriptHashes, interim_transcript_hash
from mls.tree.leaf_node import LeafNode, LeafNodeSource, sign_leaf_node
from mls.tree.leaf_validation import LeafPolicy
from mls.tree.nodes import RatchetTreeExtension
from mls.wire.commit import Commit
from mls.wire.extensions import ExternalPub, RequiredCapabilities, find_payload
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
from mls.wire.group_context import GroupContext
from mls.wire.group_info import GroupInfo, sign_group_info
from mls.wire.message_protection import protect_public, sign_framed_content
from mls.wire.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalOrRef,
    ReInit,
    Remove,
    Update,
)

MAIN_SUITES = (1, 2, 3)
OTHER_SUITES = (4, 5, 6, 7)
PSK_ID = b"shared external psk"


# ---- a tiny group harness --------------------------------------------------------------------------------


def view(g: Group) -> tuple[object, ...]:
    return (
        g.epoch,
        g.group_id,
        g.epoch_authenticator,
        g.state.context.to_bytes(),
        g.export("external join test", b"ctx", 32),
        tuple((i, leaf.signature_key, leaf.encryption_key) for i, leaf in g.members()),
    )


def agree(*groups: Group) -> None:
    """Every group agrees on epoch, epoch_authenticator, context, exporter and membership; each member sits
    in its own leaf holding that leaf's private key."""
    first = view(groups[0])
    for g in groups:
        assert g.state.active and g.pending_commit is None
        v = view(g)
        assert v[0] == first[0], "epoch differs"
        assert v[2] == first[2], f"epoch_authenticator differs at leaf {g.own_leaf}"
        assert v == first
        leaf = g.state.tree.leaf(g.own_leaf)
        assert leaf is not None and leaf.encryption_key == g.state.keys.leaf_key.public_key
    assert len({g.own_leaf for g in groups}) == len(groups)


def client(suite: int, name: str, psks: MemoryPskStore | None = None) -> Client:
    return Client(SoftwareKeyStore(), suite, Credential.basic(name.encode()), psks=psks)


def make_group(suite: int, names: Sequence[str], psks: bool = False) -> tuple[list[Client], list[Group]]:
    """``names[0]`` creates the group and adds the others in one commit."""
    clients = [
        client(suite, n, MemoryPskStore(external={PSK_ID: b"k" * 32}) if psks else None) for n in names
    ]
    first = clients[0].create_group()
    groups = [first]
    if len(clients) > 1:
        staged = first.commit(CommitOptions(add=[c.key_package().key_package for c in clients[1:]]))
        first.merge_pending_commit()
        assert staged.welcome is not None
        groups += [c.join(staged.welcome) for c in clients[1:]]
    agree(*groups)
    return clients, groups


def deliver(commit: bytes, groups: Sequence[Group]) -> list[StagedCommit]:
    out = []
    for g in groups:
        staged = g.process(commit)
        assert isinstance(staged, StagedCommit)
        g.merge(staged)
        out.append(staged)
    return out


def talk(sender: Group, receivers: Sequence[Group]) -> None:
    data = f"hello from leaf {sender.own_leaf} in epoch {sender.epoch}".encode()
    msg = sender.protect(data)
    for g in receivers:
        got = g.process(msg)
        assert isinstance(got, ApplicationMessage) and got.data == data


def expect_rejected(
    groups: Sequence[Group],
    message: bytes,
    rules: str | Sequence[str] | None = None,
    error: type[MLSError] = MLSError,
) -> None:
    """Every group rejects ``message`` with ``error`` (rule in ``rules``) and keeps its state
    byte-identical."""
    allowed = (rules,) if isinstance(rules, str) else rules
    for g in groups:
        before = g.to_bytes()
        with pytest.raises(error) as info:
            g.process(message)
        if allowed is not None:
            rule = getattr(info.value, "rule", None)
            assert rule in allowed, f"rule {rule} not in {allowed}: {info.value}"
            assert f"§{str(rule).partition('/')[0]}: " in str(info.value)
        assert g.to_bytes() == before, "a rejected external commit changed the group state"
        assert g.pending_commit is None


def joiner(suite: int, name: str = "dave") -> tuple[SoftwareKeyStore, Signer, Credential]:
    ks = SoftwareKeyStore()
    return ks, ks.new_signature_key(suite), Credential.basic(name.encode())


def resign(group: Group, group_info: bytes, **changes: object) -> bytes:
    """``group_info`` with fields changed and re-signed by ``group``'s member (who must be its signer)."""
    gi = MLSMessage.from_bytes(group_info).body
    assert isinstance(gi, GroupInfo)
    unsigned = dataclasses.replace(gi, signature=b"", **changes)  # type: ignore[arg-type]
    return MLSMessage.of(sign_group_info(group.cs, group.signer(), unsigned)).to_bytes()


# ---- hand-made external commits --------------------------------------------------------------------------

ProposalItem = Proposal | bytes


def forge_external_commit(
    group_info: bytes,
    key_store: KeyStore,
    signer: Signer,
    credential: Credential,
    make_list: Callable[[ExternalInit], list[ProposalItem]],
    *,
    ratchet_tree: bytes | None = None,
    psks: MemoryPskStore | None = None,
    with_path: bool = True,
) -> bytes:
    """An external commit whose proposal list is ``make_list(ExternalInit(...))`` (proposals by value, or
    ProposalRefs as bytes), built exactly like ``mls.group.external_join._commit``: a path from the leftmost
    blank leaf after the by-value proposals (Updates and Removes of blank leaves are not applied), a valid
    signature and a confirmation tag computed from the external init secret."""
    gi = MLSMessage.from_bytes(group_info).body
    assert isinstance(gi, GroupInfo)
    ctx = gi.group_context
    cs = cipher_suite(ctx.cipher_suite)
    tree = tree_from_group_info(cs, gi, ratchet_tree)
    external = find_payload(gi.extensions, ExternalPub)
    assert external is not None
    kem_output, init_secret = external_init_send(cs, external.external_pub)
    items = make_list(ExternalInit(kem_output))
    sender = Sender(sender_type=SenderType.new_member_commit)
    applicable = [
        CommittedProposal(p, sender)
        for p in items
        if isinstance(p, Proposal)
        and not isinstance(p.body, Update)
        and not (isinstance(p.body, Remove) and tree.leaf(p.body.removed) is None)
    ]
    vc = ValidationContext(cs, ctx.group_id, ctx.version, tree, ctx.extensions, LeafPolicy())
    applied = apply_proposals(vc, applicable)
    leaf_key = key_store.new_hpke_key(cs.suite_id)
    created = _joiner_path(cs, gi, applied, signer, credential, leaf_key)
    commit = Commit(tuple(ProposalOrRef.of(p) for p in items), created.update_path if with_path else None)
    content = FramedContent(
        group_id=ctx.group_id,
        epoch=ctx.epoch,
        sender=sender,
        authenticated_data=b"",
        content_type=ContentType.commit,
        commit=commit,
    )
    signature = sign_framed_content(cs, signer, WireFormat.mls_public_message, content, ctx)
    auth = AuthenticatedContent(
        WireFormat.mls_public_message, content, FramedContentAuthData(signature, None)
    )
    interim = interim_transcript_hash(cs, ctx.confirmed_transcript_hash, gi.confirmation_tag)
    confirmed = TranscriptHashes(ctx.confirmed_transcript_hash, interim).next_confirmed(cs, auth)
    new_ctx = GroupContext(
        ctx.version,
        ctx.cipher_suite,
        ctx.group_id,
        ctx.epoch + 1,
        created.tree.tree_hash(),
        confirmed,
        applied.extensions,
    )
    store = psks or MemoryPskStore()
    psk = psk_secret(cs, [(p, store.get(p) or b"") for p in applied.psks])
    ks = KeySchedule.from_init_secret(cs, init_secret, created.commit_secret, psk, new_ctx.to_bytes())
    tag = ks.secrets.confirmation_tag(confirmed)
    auth = AuthenticatedContent(WireFormat.mls_public_message, content, FramedContentAuthData(signature, tag))
    return MLSMessage.of(protect_public(cs, auth, None, ctx)).to_bytes()


def update_leaf(group: Group) -> LeafNode:
    """A valid Update LeafNode of ``group``'s member (fresh encryption key nobody holds)."""
    s, cs = group.state, group.cs
    current = s.tree.leaf(s.own_leaf)
    assert current is not None
    leaf = dataclasses.replace(
        current,
        encryption_key=cs.kem.generate().public_key,
        leaf_node_source=LeafNodeSource.update,
        lifetime=None,
        parent_hash=None,
        signature=b"",
    )
    return sign_leaf_node(cs, group.signer(), leaf, s.group_id, s.own_leaf)


# ---- successful external joins ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_external_join_tree_in_extension_and_out_of_band(suite: int) -> None:
    _clients, (ga, gb, gc) = make_group(suite, ["alice", "bob", "carol"])
    # a blank leaf in the middle: the external joiner takes the leftmost blank leaf
    st = ga.commit(CommitOptions(remove=[1]))
    ga.merge_pending_commit()
    assert deliver(st.commit or b"", [gb])[0].removed_self
    deliver(st.commit or b"", [gc])
    agree(ga, gc)

    gi = ga.group_info(with_ratchet_tree=True)
    parsed = MLSMessage.from_bytes(gi).body
    assert isinstance(parsed, GroupInfo)
    assert find_payload(parsed.extensions, RatchetTreeExtension) is not None
    assert find_payload(parsed.extensions, ExternalPub) is not None
    ks, signer, cred = joiner(suite)
    gd, commit = Group.external_join(ks, gi, signer=signer, credential=cred)
    assert gd.own_leaf == 1 and gd.epoch == ga.epoch + 1
    assert MLSMessage.from_bytes(commit).wire_format == WireFormat.mls_public_message
    deliver(commit, [ga, gc])
    agree(ga, gc, gd)
    talk(gd, [ga, gc])
    talk(gc, [ga, gd])

    # out of band: a GroupInfo from the member who joined externally, without the tree
    gi = gd.group_info()
    parsed = MLSMessage.from_bytes(gi).body
    assert isinstance(parsed, GroupInfo) and find_payload(parsed.extensions, RatchetTreeExtension) is None
    ks, signer, cred = joiner(suite, "erin")
    with pytest.raises(ValidationError) as info:
        Group.external_join(ks, gi, signer=signer, credential=cred)
    assert info.value.rule == "12.4.3.3/ratchet-tree-present"
    ge, commit = Group.external_join(
        ks, gi, signer=signer, credential=cred, ratchet_tree=gd.state.tree.encode()
    )
    assert ge.own_leaf == 3
    deliver(commit, [ga, gc, gd])
    agree(ga, gc, gd, ge)
    talk(ge, [ga, gc, gd])
    # and the new members can commit in turn
    st = ge.commit(CommitOptions(force_path=True))
    ge.merge_pending_commit()
    deliver(st.commit or b"", [ga, gc, gd])
    agree(ga, gc, gd, ge)
    assert ga.epoch == 5


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_resync_removes_prior_leaf(suite: int) -> None:
    clients, (ga, gb, gc) = make_group(suite, ["alice", "bob", "carol"])
    bob = clients[1]
    old_leaf = gb.own_leaf
    # bob "lost" his state: he rejoins with the same identity from a GroupInfo (tree out of band)
    nb, commit = Group.external_join(
        bob.key_store,
        gc.group_info(),
        signer=bob.signer,
        credential=bob.credential,
        ratchet_tree=gc.state.tree.encode(),
        remove_prior=old_leaf,
    )
    msg = MLSMessage.from_bytes(commit).body
    assert isinstance(msg, PublicMessage) and msg.content.commit is not None
    kinds = [p.proposal.body for p in msg.content.commit.proposals if p.proposal is not None]
    assert [type(k) for k in kinds] == [ExternalInit, Remove] and kinds[1] == Remove(old_leaf)
    deliver(commit, [ga, gc])
    staged = gb.process(commit)
    assert isinstance(staged, StagedCommit) and staged.removed_self
    gb.merge(staged)
    assert not gb.state.active
    with pytest.raises(StateError):
        gb.protect(b"stale")
    assert nb.own_leaf == old_leaf  # the removed leaf is the leftmost blank one
    agree(ga, gc, nb)
    assert sum(leaf.credential == bob.credential for _, leaf in ga.members()) == 1
    talk(nb, [ga, gc])
    # a second resync, with the tree in the GroupInfo this time
    nb2, commit = Group.external_join(
        bob.key_store,
        ga.group_info(with_ratchet_tree=True),
        signer=bob.signer,
        credential=bob.credential,
        remove_prior=nb.own_leaf,
    )
    deliver(commit, [ga, gc])
    assert nb.process(commit).removed_self  # type: ignore[union-attr]
    agree(ga, gc, nb2)
    talk(ga, [gc, nb2])


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_external_join_with_external_psk(suite: int) -> None:
    clients, (ga, gb) = make_group(suite, ["alice", "bob"], psks=True)
    cs = cipher_suite(suite)
    psk_id = PreSharedKeyID.external(PSK_ID, os.urandom(cs.n_h))
    ks, signer, cred = joiner(suite)

    # without the PSK value the joiner cannot build the commit
    with pytest.raises(ValidationError) as info:
        Group.external_join(ks, ga.group_info(True), signer=signer, credential=cred, psk_ids=[psk_id])
    assert info.value.rule == "12.4.3.2/external-commit-psk-available"

    # with a different value under the same id, members reject (wrong psk_secret → confirmation tag)
    wrong = MemoryPskStore(external={PSK_ID: b"x" * 32})
    _, commit = Group.external_join(
        ks, ga.group_info(True), signer=signer, credential=cred, psks=wrong, psk_ids=[psk_id]
    )
    expect_rejected([ga, gb], commit, "6.1/confirmation-tag", CryptoError)

    # a member without the PSK rejects the commit; the ones with it accept
    carol = client(suite, "carol")  # no PSK store
    st = ga.commit(CommitOptions(add=[carol.key_package().key_package]))
    ga.merge_pending_commit()
    deliver(st.commit or b"", [gb])
    gc = carol.join(st.welcome or b"")
    agree(ga, gb, gc)
    store = MemoryPskStore(external={PSK_ID: b"k" * 32})
    gd, commit = Group.external_join(
        ks, ga.group_info(True), signer=signer, credential=cred, psks=store, psk_ids=[psk_id]
    )
    msg = MLSMessage.from_bytes(commit).body
    assert isinstance(msg, PublicMessage) and msg.content.commit is not None
    assert [p.proposal.body for p in msg.content.commit.proposals if p.proposal][1] == PreSharedKey(psk_id)
    expect_rejected([gc], commit, "12.4.2/commit-psk-available", ValidationError)
    deliver(commit, [ga, gb])
    agree(ga, gb, gd)
    talk(gd, [ga, gb])

    # resync with a PSK, too
    bob = clients[1]
    psk_id2 = PreSharedKeyID.external(PSK_ID, os.urandom(cs.n_h))
    nb, commit = Group.external_join(
        bob.key_store,
        gd.group_info(True),
        signer=bob.signer,
        credential=bob.credential,
        psks=store,
        psk_ids=[psk_id2],
        remove_prior=gb.own_leaf,
    )
    deliver(commit, [ga, gd])
    assert gb.process(commit).removed_self  # type: ignore[union-attr]
    agree(ga, gd, nb)


@pytest.mark.parametrize("suite", OTHER_SUITES)
def test_external_join_and_resync_other_suites(suite: int) -> None:
    clients, (ga, gb) = make_group(suite, ["alice", "bob"])
    ks, signer, cred = joiner(suite)
    gd, commit = Group.external_join(
        ks, ga.group_info(with_ratchet_tree=True), signer=signer, credential=cred
    )
    deliver(commit, [ga, gb])
    agree(ga, gb, gd)
    bob = clients[1]
    nb, commit = Group.external_join(
        bob.key_store,
        gd.group_info(),
        ratchet_tree=gd.state.tree.encode(),
        signer=bob.signer,
        credential=bob.credential,
        remove_prior=gb.own_leaf,
    )
    deliver(commit, [ga, gd])
    assert gb.process(commit).removed_self  # type: ignore[union-attr]
    agree(ga, gd, nb)
    talk(nb, [ga, gd])


def test_forged_commit_helper_builds_a_valid_external_commit() -> None:
    """The hand-built commit with the regular list is accepted: what the invalid variants below change is
    only the proposal list."""
    _, (ga, gb) = make_group(1, ["alice", "bob"])
    ks, signer, cred = joiner(1)
    commit = forge_external_commit(ga.group_info(True), ks, signer, cred, lambda ei: [Proposal.of(ei)])
    deliver(commit, [ga, gb])
    agree(ga, gb)
    assert ga.members()[-1][1].credential == cred


def test_group_info_carries_required_extensions_and_tree_matches() -> None:
    """An exported GroupInfo is for the current epoch, signed by the exporter, and its tree and
    external_pub are the epoch's."""
    _, (ga, gb) = make_group(1, ["alice", "bob"], psks=False)
    for g in (ga, gb):
        gi = MLSMessage.from_bytes(g.group_info(with_ratchet_tree=True)).body
        assert isinstance(gi, GroupInfo)
        assert gi.group_context == g.state.context and gi.signer == g.own_leaf
        assert gi.confirmation_tag == g.state.confirmation_tag
        tree = tree_from_group_info(g.cs, gi, None)
        assert tree.tree_hash() == g.state.context.tree_hash
        ext = find_payload(gi.extensions, ExternalPub)
        assert ext is not None and ext.external_pub == g.state.secrets.external_pub


# ---- invalid GroupInfos (joiner side) --------------------------------------------------------------------


def test_group_info_with_wrong_external_pub_is_rejected_by_members() -> None:
    """The joiner cannot tell that external_pub is wrong; members derive another init_secret and the
    confirmation tag fails."""
    _, (ga, gb, gc) = make_group(1, ["alice", "bob", "carol"])
    gi = MLSMessage.from_bytes(ga.group_info(True)).body
    assert isinstance(gi, GroupInfo)
    bogus = ExternalPub(ga.cs.kem.generate().public_key).to_extension()
    extensions = tuple(bogus if e.extension_type == bogus.extension_type else e for e in gi.extensions)
    tampered = resign(ga, ga.group_info(True), extensions=extensions)
    ks, signer, cred = joiner(1)
    _, commit = Group.external_join(ks, tampered, signer=signer, credential=cred)
    expect_rejected([ga, gb, gc], commit, "6.1/confirmation-tag", CryptoError)


def test_group_info_without_external_pub_is_refused() -> None:
    _, (ga, _gb) = make_group(1, ["alice", "bob"])
    gi = MLSMessage.from_bytes(ga.group_info(True)).body
    assert isinstance(gi, GroupInfo)
    stripped = resign(
        ga,
        ga.group_info(True),
        extensions=tuple(e for e in gi.extensions if e.extension_type != ExternalPub.extension_type),
    )
    ks, signer, cred = joiner(1)
    before = ks.refs()
    with pytest.raises(ValidationError) as info:
        Group.external_join(ks, stripped, signer=signer, credential=cred)
    assert info.value.rule == "12.4.3.2/external-pub-present"
    assert ks.refs() == before


@pytest.mark.parametrize("how", ["flipped byte", "signed by another member", "signer index blank"])
def test_group_info_with_bad_signature_is_refused(how: str) -> None:
    _, (ga, gb) = make_group(1, ["alice", "bob"])
    gi_bytes = ga.group_info(True)
    gi = MLSMessage.from_bytes(gi_bytes).body
    assert isinstance(gi, GroupInfo)
    if how == "flipped byte":
        sig = bytearray(gi.signature)
        sig[len(sig) // 2] ^= 1
        bad = MLSMessage.of(dataclasses.replace(gi, signature=bytes(sig))).to_bytes()
        want: tuple[type[MLSError], str] = (CryptoError, "12.4.3/group-info-signature")
    elif how == "signed by another member":  # bob signs, but the GroupInfo names alice as its signer
        bad = MLSMessage.of(
            sign_group_info(ga.cs, gb.signer(), dataclasses.replace(gi, signature=b""))
        ).to_bytes()
        want = (CryptoError, "12.4.3/group-info-signature")
    else:
        bad = resign(ga, gi_bytes, signer=5)
        want = (ValidationError, "12.4.3/group-info-signer-leaf")
    ks, signer, cred = joiner(1)
    with pytest.raises(want[0]) as info:
        Group.external_join(ks, bad, signer=signer, credential=cred)
    assert info.value.rule == want[1]  # type: ignore[attr-defined]


def test_out_of_band_tree_of_another_epoch_is_refused() -> None:
    _, (ga, gb) = make_group(1, ["alice", "bob"])
    old_tree = ga.state.tree.encode()
    st = ga.commit(CommitOptions(force_path=True))
    ga.merge_pending_commit()
    deliver(st.commit or b"", [gb])
    ks, signer, cred = joiner(1)
    with pytest.raises(MLSError):
        Group.external_join(ks, ga.group_info(), signer=signer, credential=cred, ratchet_tree=old_tree)


def test_resync_joiner_side_checks() -> None:
    clients, (ga, gb, _gc) = make_group(1, ["alice", "bob", "carol"])
    st = ga.commit(CommitOptions(remove=[2]))
    ga.merge_pending_commit()
    deliver(st.commit or b"", [gb])
    bob = clients[1]
    assert isinstance(bob.key_store, SoftwareKeyStore)
    before = bob.key_store.refs()
    blank, credential = "12.2/resync-leaf-non-blank", "12.2/resync-credential"
    for leaf, what, rule in ((2, "blank", blank), (0, "credential", credential), (9, "blank", blank)):
        with pytest.raises(ValidationError) as info:
            Group.external_join(
                bob.key_store,
                ga.group_info(True),
                signer=bob.signer,
                credential=bob.credential,
                remove_prior=leaf,
            )
        assert info.value.rule == rule and what in str(info.value)
    assert bob.key_store.refs() == before


# ---- invalid external commits (member side) --------------------------------------------------------------


def test_external_commit_with_corrupted_signature_is_rejected() -> None:
    _, (ga, gb) = make_group(1, ["alice", "bob"])
    ks, signer, cred = joiner(1)
    _, commit = Group.external_join(ks, ga.group_info(True), signer=signer, credential=cred)
    msg = MLSMessage.from_bytes(commit).body
    assert isinstance(msg, PublicMessage)
    sig = bytearray(msg.auth.signature)
    sig[0] ^= 0x80
    bad = MLSMessage.of(
        PublicMessage(msg.content, dataclasses.replace(msg.auth, signature=bytes(sig)))
    ).to_bytes()
    expect_rejected([ga, gb], bad, "6.1/content-signature", CryptoError)
    # signed by a key other than the path leaf's
    other = SoftwareKeyStore().new_signature_key(1)
    content = msg.content
    resigned = sign_framed_content(ga.cs, other, WireFormat.mls_public_message, content, ga.state.context)
    bad = MLSMessage.of(PublicMessage(content, dataclasses.replace(msg.auth, signature=resigned))).to_bytes()
    expect_rejected([ga, gb], bad, "6.1/content-signature", CryptoError)
    # the genuine commit is still fine afterwards, and replaying it later is rejected
    deliver(commit, [ga, gb])
    expect_rejected([ga, gb], commit, "6/message-epoch", ValidationError)


def test_external_commit_with_tampered_confirmation_tag_is_rejected() -> None:
    _, (ga, gb) = make_group(1, ["alice", "bob"])
    ks, signer, cred = joiner(1)
    _, commit = Group.external_join(ks, ga.group_info(True), signer=signer, credential=cred)
    msg = MLSMessage.from_bytes(commit).body
    assert isinstance(msg, PublicMessage) and msg.auth.confirmation_tag is not None
    tag = bytes(b ^ 1 for b in msg.auth.confirmation_tag)
    bad = MLSMessage.of(
        PublicMessage(msg.content, dataclasses.replace(msg.auth, confirmation_tag=tag))
    ).to_bytes()
    expect_rejected([ga, gb], bad, "6.1/confirmation-tag", CryptoError)


def _kp(suite: int, name: str) -> Add:
    return Add(client(suite, name).key_package().key_package)


FORBIDDEN: dict[
    str, tuple[Callable[[list[Group]], Callable[[ExternalInit], list[ProposalItem]]], tuple[str, ...]]
] = {
    "an Add": (
        lambda gs: lambda ei: [Proposal.of(ei), Proposal.of(_kp(1, "frank"))],
        ("12.2/external-commit-proposal-types",),
    ),
    "an Update": (
        lambda gs: lambda ei: [Proposal.of(ei), Proposal.of(Update(update_leaf(gs[1])))],
        ("12.1.2/update-sender-member",),
    ),
    "a GroupContextExtensions": (
        lambda gs: (
            lambda ei: [
                Proposal.of(ei),
                Proposal.of(GroupContextExtensions((RequiredCapabilities((), (), (1,)).to_extension(),))),
            ]
        ),
        ("12.2/external-commit-proposal-types",),
    ),
    "two Removes": (
        lambda gs: lambda ei: [Proposal.of(ei), Proposal.of(Remove(1)), Proposal.of(Remove(2))],
        ("12.2/external-commit-one-remove",),
    ),
    "a ReInit": (
        lambda gs: lambda ei: [Proposal.of(ei), Proposal.of(ReInit(b"new group", 1, 1, ()))],
        ("12.2/external-commit-proposal-types",),
    ),
    "no ExternalInit": (
        lambda gs: lambda ei: [Proposal.of(Remove(1))],
        ("12.2/external-commit-one-external-init",),
    ),
    "no proposal at all": (lambda gs: lambda ei: [], ("12.2/external-commit-one-external-init",)),
    "two ExternalInits": (
        lambda gs: lambda ei: [Proposal.of(ei), Proposal.of(ExternalInit(ei.kem_output))],
        ("12.2/external-commit-one-external-init",),
    ),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_external_commit_with_forbidden_proposals_is_rejected(case: str) -> None:
    _, groups = make_group(1, ["alice", "bob", "carol"])
    make, rules = FORBIDDEN[case]
    ks, signer, cred = joiner(1)
    commit = forge_external_commit(groups[0].group_info(True), ks, signer, cred, make(groups))
    expect_rejected(groups, commit, rules, ValidationError)


def test_external_commit_with_proposal_by_reference_is_rejected() -> None:
    _, (ga, gb, gc) = make_group(1, ["alice", "bob", "carol"], psks=True)
    # bob proposes a PSK; everyone caches it, so the reference resolves
    message, ref = gb.propose_psk(gb.new_psk_id(PSK_ID))
    for g in (ga, gc):
        g.process(message)
    ks, signer, cred = joiner(1)
    commit = forge_external_commit(ga.group_info(True), ks, signer, cred, lambda ei: [Proposal.of(ei), ref])
    expect_rejected([ga, gb, gc], commit, "12.4.3.2/external-commit-by-value", ValidationError)
    # a reference to a proposal nobody has is rejected too
    commit = forge_external_commit(
        ga.group_info(True), ks, signer, cred, lambda ei: [Proposal.of(ei), os.urandom(32)]
    )
    expect_rejected([ga, gb, gc], commit, "12.4.2/proposal-ref-known", ValidationError)


def test_external_commit_without_path_is_rejected() -> None:
    _, (ga, gb) = make_group(1, ["alice", "bob"])
    ks, signer, cred = joiner(1)
    commit = forge_external_commit(
        ga.group_info(True), ks, signer, cred, lambda ei: [Proposal.of(ei)], with_path=False
    )
    expect_rejected([ga, gb], commit, "12.4.3.2/external-commit-path", ValidationError)


def test_resync_of_blank_leaf_is_rejected_by_members() -> None:
    clients, (ga, gb, _gc) = make_group(1, ["alice", "bob", "carol"])
    st = ga.commit(CommitOptions(remove=[2]))
    ga.merge_pending_commit()
    deliver(st.commit or b"", [gb])
    bob = clients[1]
    for leaf in (2, 7):

        def resync(ei: ExternalInit, leaf: int = leaf) -> list[ProposalItem]:
            return [Proposal.of(ei), Proposal.of(Remove(leaf))]

        commit = forge_external_commit(ga.group_info(True), bob.key_store, bob.signer, bob.credential, resync)
        expect_rejected([ga, gb], commit, "12.1.3/remove-leaf-non-blank", ValidationError)


def test_resync_of_another_members_leaf_is_rejected_by_members() -> None:
    _clients, (ga, gb, gc) = make_group(1, ["alice", "bob", "carol"])
    ks, signer, cred = joiner(1, "mallory")
    # mallory "resyncs" carol's leaf away
    commit = forge_external_commit(
        ga.group_info(True), ks, signer, cred, lambda ei: [Proposal.of(ei), Proposal.of(Remove(gc.own_leaf))]
    )
    expect_rejected([ga, gb, gc], commit, "12.2/resync-credential", ValidationError)


def test_external_commit_for_another_group_or_epoch_is_rejected() -> None:
    _, (ga, gb) = make_group(1, ["alice", "bob"])
    _, (gx,) = make_group(1, ["xavier"])
    ks, signer, cred = joiner(1)
    _, commit = Group.external_join(ks, gx.group_info(True), signer=signer, credential=cred)
    expect_rejected([ga, gb], commit, "6/message-group-id", ValidationError)
    stale_gi = ga.group_info(True)
    st = ga.commit(CommitOptions(force_path=True))
    ga.merge_pending_commit()
    deliver(st.commit or b"", [gb])
    _, commit = Group.external_join(ks, stale_gi, signer=signer, credential=cred)
    expect_rejected([ga, gb], commit, "6/message-epoch", ValidationError)


def test_external_commit_repeating_a_members_signature_key_is_rejected() -> None:
    clients, (ga, gb) = make_group(1, ["alice", "bob"])
    bob = clients[1]
    # bob joins a second time with the same signature key and without removing his leaf
    commit = forge_external_commit(
        ga.group_info(True), bob.key_store, bob.signer, bob.credential, lambda ei: [Proposal.of(ei)]
    )
    expect_rejected([ga, gb], commit, "7.3/committer-signature-key-unique", ValidationError)
