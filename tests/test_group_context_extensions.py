"""GroupContextExtensions proposals (RFC 9420 §12.1.7) and required capabilities (§11.1).

A GroupContextExtensions proposal replaces the GroupContext's extensions wholesale. With a
``required_capabilities`` extension it is valid only if every member that stays — and every member added
in the same commit — supports the required types; once in place, KeyPackages lacking them cannot be added
and commits whose path leaf lacks them are rejected. Rejections name the rule and change no state.

Members with non-default capabilities are made from hand-built KeyPackages (the library's own leaves list
only the default types), and a group whose members *all* support a non-default extension type is made by
removing the creator.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from mls.client import Client, KeyPackageBundle
from mls.credentials.credential import Credential
from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import DecodeError, MLSError, ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.creation import default_lifetime
from mls.group.group import Group
from mls.group.staged_commit import StagedCommit
from mls.tree.leaf_node import Capabilities, default_capabilities
from mls.wire.commit import Commit
from mls.wire.extensions import ApplicationId, Extension, ExternalSenders, RequiredCapabilities, find_payload
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PublicMessage,
    Sender,
    WireFormat,
)
from mls.wire.group_info import GroupInfo
from mls.wire.key_package import create_key_package, key_package_ref
from mls.wire.message_protection import protect_public, sign_framed_content
from mls.wire.proposals import Add, GroupContextExtensions, Proposal, ProposalOrRef, Remove

MAIN_SUITES = (1, 2, 3)
CUSTOM_EXT = 0xFF0A  # a non-default (private use) extension type
CUSTOM_PROPOSAL = 0xFF0B
X509 = 2


# ---- harness ---------------------------------------------------------------------------------------------


def view(g: Group) -> tuple[object, ...]:
    return (
        g.epoch,
        g.epoch_authenticator,
        g.state.context.to_bytes(),
        g.export("gce", b"", 32),
        tuple((i, leaf.signature_key) for i, leaf in g.members()),
    )


def agree(*groups: Group) -> None:
    first = view(groups[0])
    for g in groups:
        assert g.state.active and g.pending_commit is None
        assert view(g) == first, f"leaf {g.own_leaf} disagrees"


def client(suite: int, name: str) -> Client:
    return Client(SoftwareKeyStore(), suite, Credential.basic(name.encode()))


def key_package(
    c: Client,
    *,
    extensions: Sequence[int] = (),
    proposals: Sequence[int] = (),
    credentials: Sequence[int] = (1, X509),
) -> KeyPackageBundle:
    """A KeyPackage of ``c`` with the given capabilities, registered so that ``c.join`` finds it."""
    caps = Capabilities(
        default_capabilities().versions,
        default_capabilities().cipher_suites,
        tuple(extensions),
        tuple(proposals),
        tuple(credentials),
    )
    init_key = c.key_store.new_hpke_key(c.cs.suite_id)
    leaf_key = c.key_store.new_hpke_key(c.cs.suite_id)
    kp = create_key_package(
        c.cs,
        c.signer,
        init_key=init_key.public_key,
        encryption_key=leaf_key.public_key,
        credential=c.credential,
        lifetime=default_lifetime(),
        capabilities=caps,
    )
    bundle = KeyPackageBundle(kp, key_package_ref(c.cs, kp), init_key, leaf_key)
    c.key_packages[bundle.ref] = bundle
    return bundle


def add(
    committer: Group,
    others: Sequence[Group],
    members: Sequence[tuple[Client, KeyPackageBundle]],
    options: CommitOptions | None = None,
) -> list[Group]:
    opts = options or CommitOptions()
    opts.add = [*opts.add, *(b.key_package for _, b in members)]
    st = commit(committer, others, opts)
    return [c.join(st.welcome or b"") for c, _ in members]


def commit(committer: Group, others: Sequence[Group], options: CommitOptions | None = None) -> StagedCommit:
    st = committer.commit(options)
    committer.merge_pending_commit()
    for g in others:
        staged = g.process(st.commit or b"")
        assert isinstance(staged, StagedCommit)
        g.merge(staged)
    return st


def group(suite: int, names: Sequence[str] = ("alice", "bob", "carol")) -> tuple[list[Client], list[Group]]:
    clients = [client(suite, n) for n in names]
    first = clients[0].create_group()
    rest = add(first, [], [(c, c.key_package()) for c in clients[1:]])
    agree(first, *rest)
    return clients, [first, *rest]


def committer_rejects(g: Group, options: CommitOptions, rules: Sequence[str]) -> ValidationError:
    before, refs = g.to_bytes(), g.key_store.refs()  # type: ignore[attr-defined]
    with pytest.raises(ValidationError) as info:
        g.commit(options)
    assert info.value.rule in rules, str(info.value)
    assert g.to_bytes() == before and g.pending_commit is None
    assert g.key_store.refs() == refs, "a refused commit left keys behind"  # type: ignore[attr-defined]
    return info.value


def members_reject(
    groups: Sequence[Group],
    message: bytes,
    rules: Sequence[str | None],
    error: type[MLSError] = ValidationError,
) -> None:
    for g in groups:
        before = g.to_bytes()
        with pytest.raises(error) as info:
            g.process(message)
        assert getattr(info.value, "rule", None) in rules, str(info.value)
        assert g.to_bytes() == before, "a rejected commit changed the group state"


def forge_commit(g: Group, proposals: Sequence[Proposal]) -> bytes:
    """A PublicMessage commit by ``g``'s member with these proposals, no path and a random confirmation tag
    (the §12.1/§12.2 checks come before the path and the tag)."""
    s, cs = g.state, g.cs
    content = FramedContent(
        group_id=s.group_id,
        epoch=s.epoch,
        sender=Sender.member(s.own_leaf),
        authenticated_data=b"",
        content_type=ContentType.commit,
        commit=Commit(tuple(ProposalOrRef.of(p) for p in proposals), None),
    )
    signature = sign_framed_content(cs, g.signer(), WireFormat.mls_public_message, content, s.context)
    auth = AuthenticatedContent(
        WireFormat.mls_public_message, content, FramedContentAuthData(signature, os.urandom(cs.n_h))
    )
    return MLSMessage.of(protect_public(cs, auth, s.secrets.membership_key, s.context)).to_bytes()


def gce(*extensions: Extension) -> Proposal:
    return Proposal.of(GroupContextExtensions(tuple(extensions)))


# ---- accepted ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_required_capabilities_supported_by_all_are_accepted(suite: int) -> None:
    _, (ga, gb, gc) = group(suite)
    required = RequiredCapabilities((ExternalSenders.extension_type,), (), (1, X509))
    extensions = [required.to_extension(), ApplicationId(b"chat").to_extension()]
    st = commit(ga, [gb, gc], CommitOptions(group_context_extensions=extensions))
    msg = MLSMessage.from_bytes(st.commit or b"").body
    assert isinstance(msg, PublicMessage) and msg.content.commit is not None
    assert msg.content.commit.path is not None  # a GCE commit carries a path
    agree(ga, gb, gc)
    for g in (ga, gb, gc):
        assert g.state.context.extensions == tuple(extensions)
        assert find_payload(g.state.context.extensions, RequiredCapabilities) == required
    # a joiner sees them in the GroupInfo of its Welcome and in the exported GroupInfo
    dave = client(suite, "dave")
    (gd,) = add(gb, [ga, gc], [(dave, dave.key_package())])
    agree(ga, gb, gc, gd)
    assert find_payload(gd.state.context.extensions, RequiredCapabilities) == required
    gi = MLSMessage.from_bytes(gd.group_info()).body
    assert isinstance(gi, GroupInfo) and gi.group_context.extensions == tuple(extensions)

    # a GCE proposal by reference replaces the list wholesale (dropping the ApplicationId)
    message, _ = gc.propose_group_context_extensions([required.to_extension()])
    for g in (ga, gb, gd):
        g.process(message)
    commit(gd, [ga, gb, gc])
    agree(ga, gb, gc, gd)
    assert ga.state.context.extensions == (required.to_extension(),)
    # and an empty list removes them all
    commit(ga, [gb, gc, gd], CommitOptions(group_context_extensions=[]))
    agree(ga, gb, gc, gd)
    assert not ga.state.context.extensions


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_non_default_extension_required_when_every_member_lists_it(suite: int) -> None:
    _, (ga,) = group(suite, ["alice"])
    dave, erin = client(suite, "dave"), client(suite, "erin")
    gd, ge = add(
        ga,
        [],
        [
            (dave, key_package(dave, extensions=[CUSTOM_EXT])),
            (erin, key_package(erin, extensions=[CUSTOM_EXT], proposals=[CUSTOM_PROPOSAL])),
        ],
    )
    required = RequiredCapabilities((CUSTOM_EXT,), (), ())
    # alice (default capabilities) is still in: refused
    committer_rejects(
        gd,
        CommitOptions(group_context_extensions=[required.to_extension()]),
        ("12.1.7/members-support-required-capabilities", "11.1/leaf-required-capabilities"),
    )
    # removing alice in the same commit makes it valid ("excluding those removed", §12.1.7)
    st = gd.commit(CommitOptions(remove=[ga.own_leaf], group_context_extensions=[required.to_extension()]))
    gd.merge_pending_commit()
    ge.merge(ge.process(st.commit or b""))  # type: ignore[arg-type]
    assert ga.process(st.commit or b"").removed_self  # type: ignore[union-attr]
    agree(gd, ge)
    assert find_payload(gd.state.context.extensions, RequiredCapabilities) == required

    # now a KeyPackage with default capabilities cannot be added …
    frank = client(suite, "frank")
    plain = frank.key_package().key_package
    committer_rejects(gd, CommitOptions(add=[plain]), ("11.1/leaf-required-capabilities",))
    message = forge_commit(ge, [Proposal.of(Add(plain))])
    members_reject([gd], message, ("11.1/leaf-required-capabilities",))
    before = gd.to_bytes()
    with pytest.raises(ValidationError) as info:
        ge.propose_add(plain)
    assert info.value.rule == "11.1/leaf-required-capabilities" and gd.to_bytes() == before
    # … nor join by external commit: the joiner's own leaf lacks the extension, so it refuses to commit
    ks = SoftwareKeyStore()
    with pytest.raises(ValidationError) as info:
        Group.external_join(
            ks, gd.group_info(True), signer=ks.new_signature_key(suite), credential=Credential.basic(b"frank")
        )
    assert info.value.rule == "11.1/leaf-required-capabilities"
    # … but one that lists it can
    (gf,) = add(ge, [gd], [(frank, key_package(frank, extensions=[CUSTOM_EXT]))])
    agree(gd, ge, gf)


# ---- rejected ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
@pytest.mark.parametrize("kind", ["extension", "proposal", "credential"])
def test_required_capability_a_member_lacks_is_rejected(suite: int, kind: str) -> None:
    _, (ga, gb) = group(suite, ["alice", "bob"])
    # dave supports the custom extension and proposal types; nobody else does
    dave = client(suite, "dave")
    (gd,) = add(ga, [gb], [(dave, key_package(dave, extensions=[CUSTOM_EXT], proposals=[CUSTOM_PROPOSAL]))])
    agree(ga, gb, gd)
    required = {
        "extension": RequiredCapabilities((CUSTOM_EXT,), (), ()),
        "proposal": RequiredCapabilities((), (CUSTOM_PROPOSAL,), ()),
        "credential": RequiredCapabilities((), (), (0xFF0C,)),
    }[kind]
    for committer in (ga, gd):
        committer_rejects(
            committer,
            CommitOptions(group_context_extensions=[required.to_extension()]),
            ("12.1.7/members-support-required-capabilities", "11.1/leaf-required-capabilities"),
        )
    # the same list by a proposal: it may be cached, but no commit carries it (the committer leaves it out)
    message, _ = gb.propose_group_context_extensions([required.to_extension()])
    for g in (ga, gd):
        g.process(message)
    left_out = ga.commit(CommitOptions())
    assert left_out.proposals == []
    ga.discard_pending_commit()
    # a commit that carries it anyway is rejected by members
    members_reject(
        [ga, gd],
        forge_commit(gb, [gce(required.to_extension())]),
        ("12.1.7/members-support-required-capabilities", "11.1/leaf-required-capabilities"),
    )
    agree(ga, gb, gd)


def test_required_capability_checks_members_added_in_the_same_commit() -> None:
    _, (ga, gb) = group(1, ["alice", "bob"])
    required = RequiredCapabilities((), (), (1, X509))
    carol = client(1, "carol")
    carol_kp = key_package(carol, credentials=[1])
    basic_only = carol_kp.key_package
    committer_rejects(
        ga,
        CommitOptions(add=[basic_only], group_context_extensions=[required.to_extension()]),
        ("12.1.7/members-support-required-capabilities", "11.1/leaf-required-capabilities"),
    )
    members_reject(
        [gb],
        forge_commit(ga, [gce(required.to_extension()), Proposal.of(Add(basic_only))]),
        ("12.1.7/members-support-required-capabilities", "11.1/leaf-required-capabilities"),
    )
    # without the requirement carol can be added; then the requirement is refused while she is in …
    (gc,) = add(ga, [gb], [(carol, carol_kp)])
    agree(ga, gb, gc)
    committer_rejects(
        gb,
        CommitOptions(group_context_extensions=[required.to_extension()]),
        ("12.1.7/members-support-required-capabilities", "11.1/leaf-required-capabilities"),
    )
    # … and accepted when she is removed in the same commit
    st = gb.commit(CommitOptions(remove=[gc.own_leaf], group_context_extensions=[required.to_extension()]))
    gb.merge_pending_commit()
    ga.merge(ga.process(st.commit or b""))  # type: ignore[arg-type]
    assert gc.process(st.commit or b"").removed_self  # type: ignore[union-attr]
    agree(ga, gb)
    # with the requirement in place, a KeyPackage lacking X509 is refused, one with it accepted
    dave = client(1, "dave")
    committer_rejects(
        ga,
        CommitOptions(add=[key_package(dave, credentials=[1]).key_package]),
        ("11.1/leaf-required-capabilities",),
    )
    (gd,) = add(ga, [gb], [(dave, dave.key_package())])
    agree(ga, gb, gd)


def test_invalid_group_context_extensions_lists() -> None:
    _, (ga, gb, gc) = group(1)
    dup = [ApplicationId(b"a").to_extension(), ApplicationId(b"b").to_extension()]
    committer_rejects(ga, CommitOptions(group_context_extensions=dup), ("13.4/extension-type-unique",))
    before = gb.to_bytes()
    with pytest.raises(ValidationError) as info:
        gb.propose_group_context_extensions(dup)
    assert info.value.rule == "13.4/extension-type-unique" and gb.to_bytes() == before
    members_reject([gb, gc], forge_commit(ga, [gce(*dup)]), ("13.4/extension-type-unique",))
    # two GroupContextExtensions proposals in one commit
    message, _ = gb.propose_group_context_extensions([ApplicationId(b"x").to_extension()])
    ga.process(message)
    gc.process(message)
    committer_rejects(
        ga,
        CommitOptions(group_context_extensions=[ApplicationId(b"y").to_extension()]),
        ("12.2/group-context-extensions-once",),
    )
    members_reject(
        [gb, gc],
        forge_commit(ga, [gce(), gce(ApplicationId(b"z").to_extension())]),
        ("12.2/group-context-extensions-once",),
    )
    # a GCE commit without a path
    members_reject([gb, gc], forge_commit(ga, [gce()]), ("12.4/commit-path-required",))
    # a required_capabilities extension that does not decode
    garbage = Extension(RequiredCapabilities.extension_type, b"\xff")
    members_reject([gb, gc], forge_commit(ga, [gce(garbage)]), (None,), DecodeError)
    # the remove-and-require combination still needs the removed member to exist
    members_reject(
        [gb, gc], forge_commit(ga, [Proposal.of(Remove(7)), gce()]), ("12.1.3/remove-leaf-non-blank",)
    )
