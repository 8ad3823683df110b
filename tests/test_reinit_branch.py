"""Resumption PSKs (RFC 9420 §8.6), reinitialization (§11.2) and subgroup branching (§11.3).

* A commit may inject the resumption PSK of an earlier epoch (usage ``application``) that every member
  retains; one outside a member's retention window cannot be used and is rejected without a state change.
* ReInit: a committed ReInit closes the old group; its successor — here with another cipher suite and group
  id — is started with a ``reinit`` resumption PSK, and every member joins it from the Welcome with the old
  group's resumption PSKs. Without them, or with a ReInit that does not describe the new group, joining
  fails.
* Branch: a member starts a subgroup of the same suite with a ``branch`` PSK of the current epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import MLSError, StateError, ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.reinit import branch, reinit_successor, resumption_psks
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig
from mls.group.welcome import open_group_secrets
from mls.wire.extensions import RequiredCapabilities
from mls.wire.framing import MLSMessage
from mls.wire.proposals import PreSharedKeyID, Proposal, PSKType, ReInit, ResumptionPSKUsage
from mls.wire.welcome import GroupSecrets, Welcome

MAIN_SUITES = (1, 2, 3)


# ---- harness ---------------------------------------------------------------------------------------------


def view(g: Group) -> tuple[object, ...]:
    return (
        g.epoch,
        g.group_id,
        g.cs.suite_id,
        g.epoch_authenticator,
        g.state.context.to_bytes(),
        g.export("reinit", b"", 32),
        tuple((i, leaf.signature_key) for i, leaf in g.members()),
    )


def agree(*groups: Group) -> None:
    first = view(groups[0])
    for g in groups:
        assert g.pending_commit is None and g.state.active
        assert view(g) == first, f"leaf {g.own_leaf} disagrees"
    assert len({g.own_leaf for g in groups}) == len(groups)


def client(suite: int, name: str) -> Client:
    return Client(SoftwareKeyStore(), suite, Credential.basic(name.encode()))


def commit(committer: Group, others: Sequence[Group], options: CommitOptions | None = None) -> StagedCommit:
    st = committer.commit(options)
    committer.merge_pending_commit()
    for g in others:
        staged = g.process(st.commit or b"")
        assert isinstance(staged, StagedCommit)
        g.merge(staged)
    return st


def group(
    suite: int,
    names: Sequence[str] = ("alice", "bob", "carol"),
    configs: Sequence[GroupConfig | None] | None = None,
) -> tuple[list[Client], list[Group]]:
    clients = [client(suite, n) for n in names]
    cfg = list(configs) if configs is not None else [None] * len(names)
    first = clients[0].create_group(config=cfg[0])
    rest: list[Group] = []
    if len(clients) > 1:
        st = commit(first, [], CommitOptions(add=[c.key_package().key_package for c in clients[1:]]))
        rest = [c.join(st.welcome or b"", config=k) for c, k in zip(clients[1:], cfg[1:])]
    agree(first, *rest)
    return clients, [first, *rest]


def refuses_to_send(g: Group) -> None:
    for action in (
        lambda: g.protect(b"x"),
        lambda: g.commit(),
        lambda: g.propose_remove(0),
        lambda: g.propose_update(),
    ):
        with pytest.raises(StateError) as info:
            action()
        assert "11.2" in str(info.value)


# ---- resumption PSKs across epochs -------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_resumption_psk_of_earlier_epochs(suite: int) -> None:
    window = 3
    _, (ga, gb, gc) = group(suite, configs=[GroupConfig(resumption_psks=window)] * 3)
    for i in range(4):  # epochs 2 … 5
        commit(
            [ga, gb, gc][i % 3],
            [g for g in (ga, gb, gc) if g is not [ga, gb, gc][i % 3]],
            CommitOptions(force_path=True),
        )
    agree(ga, gb, gc)
    assert ga.epoch == 5 and sorted(ga.state.resumption_psks) == [3, 4, 5]
    # the oldest retained epoch, then (one epoch later) the current one can be injected; members agree
    for k in (3, 6):
        psk = ga.new_psk_id(resumption_epoch=k)
        assert psk.psktype == PSKType.resumption and psk.usage == ResumptionPSKUsage.application
        commit(gb, [ga, gc], CommitOptions(psks=[psk]))
        agree(ga, gb, gc)
    # epoch 7 now: retained 5, 6, 7; epoch 4 is beyond the window
    assert sorted(gb.state.resumption_psks) == [5, 6, 7]
    before = gb.to_bytes()
    with pytest.raises(ValidationError) as info:
        gb.commit(CommitOptions(psks=[gb.new_psk_id(resumption_epoch=4)]))
    assert (
        info.value.rule == "12.4.2/commit-psk-available"
        and gb.to_bytes() == before
        and gb.pending_commit is None
    )
    # two PSKs at once: the same (epoch, nonce) twice is refused, different nonces are fine
    psk = ga.new_psk_id(resumption_epoch=6)
    with pytest.raises(ValidationError) as info:
        ga.commit(CommitOptions(psks=[psk, psk]))
    assert info.value.rule == "12.2/psk-id-unique"
    commit(ga, [gb, gc], CommitOptions(psks=[psk, ga.new_psk_id(resumption_epoch=6)]))
    agree(ga, gb, gc)


def test_member_lacking_the_resumption_psk_rejects_the_commit() -> None:
    """Alice keeps 10 epochs, bob 2: a commit injecting epoch 1 is fine for alice and carol, not for bob."""
    _, (ga, gb, gc) = group(
        1,
        configs=[
            GroupConfig(resumption_psks=10),
            GroupConfig(resumption_psks=2),
            GroupConfig(resumption_psks=10),
        ],
    )
    for _ in range(3):
        commit(ga, [gb, gc], CommitOptions(force_path=True))
    st = ga.commit(CommitOptions(psks=[ga.new_psk_id(resumption_epoch=1)]))
    before = gb.to_bytes()
    with pytest.raises(ValidationError) as info:
        gb.process(st.commit or b"")
    assert info.value.rule == "12.4.2/commit-psk-available" and gb.to_bytes() == before
    ga.merge_pending_commit()
    gc.merge(gc.process(st.commit or b""))  # type: ignore[arg-type]
    agree(ga, gc)


def test_resumption_psk_of_another_group() -> None:
    """A resumption PSK of another group (§8.6) that every member holds in its PSK store."""
    _, (gx,) = group(1, ["xavier"])
    store = resumption_psks(gx)
    clients = [Client(SoftwareKeyStore(), 1, Credential.basic(n), psks=store) for n in (b"alice", b"bob")]
    ga = clients[0].create_group()
    st = commit(ga, [], CommitOptions(add=[clients[1].key_package().key_package]))
    gb = clients[1].join(st.welcome or b"")
    commit(ga, [gb], CommitOptions(psks=[ga.new_psk_id(resumption_epoch=0, group_id=gx.group_id)]))
    agree(ga, gb)
    with pytest.raises(ValidationError):
        ga.commit(CommitOptions(psks=[ga.new_psk_id(resumption_epoch=1, group_id=gx.group_id)]))


@pytest.mark.parametrize("usage", [ResumptionPSKUsage.reinit, ResumptionPSKUsage.branch])
def test_reinit_and_branch_psk_usages_not_allowed_in_a_regular_commit(usage: int) -> None:
    _, (ga, _) = group(1, ["alice", "bob"])
    before = ga.to_bytes()
    with pytest.raises(ValidationError) as info:
        ga.commit(CommitOptions(psks=[ga.new_psk_id(resumption_epoch=ga.epoch, usage=usage)]))
    assert info.value.rule == "12.1.4/resumption-psk-usage" and ga.to_bytes() == before
    with pytest.raises(ValidationError) as info:
        ga.propose_psk(ga.new_psk_id(resumption_epoch=ga.epoch, usage=usage))
    assert info.value.rule == "12.1.4/resumption-psk-usage" and ga.to_bytes() == before


# ---- ReInit ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("old_suite", "new_suite"), [(1, 2), (2, 3), (3, 1)])
def test_reinit_to_new_suite_and_group_id(old_suite: int, new_suite: int) -> None:
    _, (ga, gb, gc) = group(old_suite)
    new_extensions = (RequiredCapabilities((), (), (1,)).to_extension(),)
    reinit = ReInit(os.urandom(16), 1, new_suite, new_extensions)
    # bob proposes, alice commits it by reference
    message, _ = gb.propose(Proposal.of(reinit))
    for g in (ga, gc):
        g.process(message)
    commit(ga, [gb, gc])
    agree(ga, gb, gc)
    for g in (ga, gb, gc):
        assert g.state.reinit == reinit
        refuses_to_send(g)

    # carol starts the new group, in the new suite and with fresh identities of that suite
    new_clients = {n: client(new_suite, n) for n in ("alice", "bob", "carol")}
    c = new_clients["carol"]
    nc, st = reinit_successor(
        gc,
        key_store=c.key_store,
        signer=c.signer,
        credential=c.credential,
        key_packages=[new_clients[n].key_package().key_package for n in ("alice", "bob")],
    )
    assert st.welcome is not None
    secrets_psks = _welcome_psks(new_clients["alice"], st.welcome)
    assert [(p.usage, p.psk_group_id, p.psk_epoch) for p in secrets_psks] == [
        (ResumptionPSKUsage.reinit, ga.group_id, ga.epoch)
    ]

    alice2, bob2 = new_clients["alice"], new_clients["bob"]
    # without the old group's resumption PSK, the Welcome cannot be opened (and the KeyPackage survives)
    with pytest.raises(ValidationError) as info:
        alice2.join(st.welcome)
    assert info.value.rule == "12.4.3.1/welcome-psk-available"
    with pytest.raises(ValidationError):  # the PSKs of another group do not help
        alice2.join(st.welcome, psks=resumption_psks(group(old_suite, ["zoe"])[1][0]))
    # a ReInit that does not describe the new group is refused
    for wrong in (
        ReInit(os.urandom(16), 1, new_suite, new_extensions),
        ReInit(reinit.group_id, 1, old_suite, new_extensions),
        ReInit(reinit.group_id, 1, new_suite, ()),
    ):
        with pytest.raises(ValidationError) as info:
            alice2.join(st.welcome, psks=resumption_psks(ga), expected_reinit=wrong)
        assert info.value.rule == "11.2/reinit-group-matches"
    na = alice2.join(st.welcome, psks=resumption_psks(ga), expected_reinit=ga.state.reinit)
    nb = bob2.join(st.welcome, psks=resumption_psks(gb), expected_reinit=gb.state.reinit)
    agree(na, nb, nc)
    assert na.group_id == reinit.group_id != ga.group_id
    assert na.cs.suite_id == new_suite and na.epoch == 1
    assert na.state.context.extensions == new_extensions
    # the new group works
    msg = nb.protect(b"hello in the new group")
    assert na.process(msg).data == b"hello in the new group"  # type: ignore[union-attr]
    commit(na, [nb, nc], CommitOptions(force_path=True))
    agree(na, nb, nc)


def _welcome_psks(c: Client, welcome: bytes) -> tuple[PreSharedKeyID, ...]:
    """The PSK ids in ``c``'s GroupSecrets of ``welcome`` (decrypting with its KeyPackage's init key)."""
    bundle = c.bundle_for(welcome)
    w = MLSMessage.from_bytes(welcome).body
    assert isinstance(w, Welcome)
    secrets: GroupSecrets = open_group_secrets(c.cs, w, bundle.ref, bundle.init_key)
    return secrets.psks


def test_reinit_proposal_rules() -> None:
    _, (ga, gb) = group(1, ["alice", "bob"])
    reinit = ReInit(os.urandom(16), 1, 2, ())
    # not together with other proposals
    carol = client(1, "carol")
    with pytest.raises(ValidationError) as info:
        ga.commit(CommitOptions(reinit=reinit, add=[carol.key_package().key_package]))
    assert info.value.rule == "12.2/reinit-alone"
    message, _ = gb.propose(Proposal.of(reinit))
    ga.process(message)
    with pytest.raises(ValidationError) as info:
        ga.commit(CommitOptions(remove=[gb.own_leaf]))
    assert info.value.rule == "12.2/reinit-alone"
    # not to an older protocol version
    with pytest.raises(ValidationError) as info:
        ga.propose(Proposal.of(ReInit(os.urandom(16), 0, 1, ())))
    assert info.value.rule == "12.1.5/reinit-version"
    # no successor before a ReInit is committed
    with pytest.raises(StateError):
        reinit_successor(
            ga,
            key_store=SoftwareKeyStore(),
            signer=ga.signer(),
            credential=Credential.basic(b"a"),
            key_packages=[],
        )
    # nothing of this changed alice's state but the cached proposal of bob's
    assert ga.pending_commit is None and len(ga.state.proposals) == 1
    # committing bob's ReInit by reference closes both
    commit(ga, [gb])
    assert ga.state.reinit == gb.state.reinit == reinit
    refuses_to_send(ga)
    refuses_to_send(gb)
    with pytest.raises(StateError):
        ga.commit(CommitOptions(reinit=reinit))


def test_reinit_same_suite_then_branch_of_the_new_group() -> None:
    """ReInit keeping the suite, then a branch of the reinitialized group: the resumption chain goes on."""
    clients, (ga, gb, gc) = group(1)
    reinit = ReInit(b"second incarnation", 1, 1, ())
    commit(gb, [ga, gc], CommitOptions(reinit=reinit))
    alice = clients[0]
    na, st = reinit_successor(
        ga,
        key_store=alice.key_store,
        signer=alice.signer,
        credential=alice.credential,
        key_packages=[c.key_package().key_package for c in clients[1:]],
    )
    nb = clients[1].join(st.welcome or b"", psks=resumption_psks(gb), expected_reinit=reinit)
    nc = clients[2].join(st.welcome or b"", psks=resumption_psks(gc), expected_reinit=reinit)
    agree(na, nb, nc)
    assert na.group_id == b"second incarnation"
    sub, st = branch(nc, key_packages=[clients[0].key_package().key_package])
    sa = clients[0].join(st.welcome or b"", psks=resumption_psks(na))
    agree(sub, sa)


# ---- branching ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_branch_subgroup(suite: int) -> None:
    clients, (ga, gb, gc) = group(suite)
    dave = client(suite, "dave")
    st = commit(ga, [gb, gc], CommitOptions(add=[dave.key_package().key_package]))
    gd = dave.join(st.welcome or b"")
    agree(ga, gb, gc, gd)
    # bob branches off with carol and dave
    sub, st = branch(gb, key_packages=[clients[2].key_package().key_package, dave.key_package().key_package])
    assert sub.epoch == 1 and sub.cs.suite_id == suite and sub.group_id != gb.group_id
    assert st.welcome is not None
    psk_ids = _welcome_psks(clients[2], st.welcome)
    assert [(p.usage, p.psk_group_id, p.psk_epoch) for p in psk_ids] == [
        (ResumptionPSKUsage.branch, gb.group_id, gb.epoch)
    ]
    # joining without the PSK fails and leaves the KeyPackage usable
    with pytest.raises(ValidationError) as info:
        dave.join(st.welcome)
    assert info.value.rule == "12.4.3.1/welcome-psk-available"
    sc = clients[2].join(st.welcome, psks=resumption_psks(gc))
    sd = dave.join(st.welcome, psks=resumption_psks(gd))
    agree(sub, sc, sd)
    assert sub.epoch == 1 and [leaf.credential for _, leaf in sub.members()] == [
        Credential.basic(n) for n in (b"bob", b"carol", b"dave")
    ]
    # alice was not invited: the Welcome has nothing for her
    clients[0].key_package()
    with pytest.raises(ValidationError) as info:
        clients[0].join(st.welcome, psks=resumption_psks(ga))
    assert info.value.rule == "12.4.3.1/welcome-key-package-ref"
    # the old group and the branch live on independently
    commit(ga, [gb, gc, gd], CommitOptions(force_path=True))
    agree(ga, gb, gc, gd)
    commit(sc, [sub, sd], CommitOptions(force_path=True))
    agree(sub, sc, sd)
    assert sub.epoch == 2 and ga.epoch == 3


def test_branch_with_psk_of_a_past_epoch_still_retained() -> None:
    """A member that has moved on can still join a branch of an epoch it retains."""
    clients, (ga, gb) = group(1, ["alice", "bob"])
    sub, st = branch(ga, key_packages=[clients[1].key_package().key_package])
    commit(ga, [gb], CommitOptions(force_path=True))  # bob is now one epoch further
    sb = clients[1].join(st.welcome or b"", psks=resumption_psks(gb))
    agree(sub, sb)
    # with a tiny retention window the branch epoch is gone
    _, (ha, hb) = group(1, ["alice", "bob"], configs=[None, GroupConfig(resumption_psks=1)])
    bob = Client(SoftwareKeyStore(), 1, Credential.basic(b"bob2"))
    sub, st = branch(ha, key_packages=[bob.key_package().key_package])
    commit(ha, [hb], CommitOptions(force_path=True))
    with pytest.raises(MLSError):
        bob.join(st.welcome or b"", psks=resumption_psks(hb))


# ---- joiner-side checks of reinit and branch Welcomes ------------------------------------------------------


def test_reinit_successor_without_reinit_psk_is_refused() -> None:
    _, (ga, gb) = group(1, ["alice", "bob"])
    reinit = ReInit(os.urandom(16), 1, 2, ())
    commit(ga, [gb], CommitOptions(reinit=reinit))
    # an impostor (who need not know any secret of the old group) creates a group with the ReInit's parameters
    mallory, bob2 = client(2, "mallory"), client(2, "bob")
    fake = Group.create(
        mallory.key_store, 2, signer=mallory.signer, credential=mallory.credential, group_id=reinit.group_id
    )
    st = fake.commit(CommitOptions(add=[bob2.key_package().key_package]))
    with pytest.raises(ValidationError) as info:
        bob2.join(st.welcome or b"", psks=resumption_psks(gb), expected_reinit=gb.state.reinit)
    assert info.value.rule == "11.2/reinit-psk-present"


def test_branch_into_another_cipher_suite_is_refused() -> None:
    from mls.group.reinit import _successor

    _, (ga, gb) = group(1, ["alice", "bob"])
    alice2, bob2 = client(2, "alice"), client(2, "bob")
    _, st = _successor(
        ga,
        ResumptionPSKUsage.branch,
        suite=2,
        group_id=os.urandom(16),
        extensions=(),
        key_store=alice2.key_store,
        signer=alice2.signer,
        credential=alice2.credential,
        key_packages=[bob2.key_package().key_package],
        config=None,
    )
    with pytest.raises(ValidationError) as info:
        bob2.join(st.welcome or b"", psks=resumption_psks(gb), resumed_from=gb.state.context)
    assert info.value.rule == "11.3/branch-version-cipher-suite"
