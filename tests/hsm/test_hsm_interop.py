"""HSM-backed members interoperate with software members and with the ts-mls peer.

* **Mixed with software members**, every cipher suite the token holds: members whose keys are in the
  token (:class:`hsm.Pkcs11KeyStore`) and members with :class:`mls.crypto.key_store.SoftwareKeyStore` in
  one group; each kind creates, adds, commits (PublicMessage and PrivateMessage), proposes an Update the
  other kind commits, removes the other kind, and is the GroupInfo source of an external join by the other.
* **With ts-mls** (tests/interop's Node peer): a group of an HSM-backed member, a software member and
  ts-mls members; joins from each side's Welcome, commits by each side, Update proposed by the HSM member
  and committed by ts-mls, a Remove proposed by ts-mls and committed (by reference) by the HSM member,
  external joins (an HSM member, its commit processed by ts-mls; ts-mls from an HSM member's GroupInfo,
  rewritten in ts-mls 1.6.4's external_pub dialect as tests/interop does), application messages every way.

After every step all members agree on epoch, epoch_authenticator, exporter output, tree hash and roster
(tests/group_helpers and tests/interop/interop_helpers), and every HSM-backed member's live signature and
leaf keys are token keys present in the token.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pkcs11 import Attribute

from hsm import Pkcs11HpkeKey, Pkcs11KeyStore, Pkcs11Signer, Token
from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto.signature import SoftwareSigner
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.handshake_framing import HandshakeFraming
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig
from mls.schedule.psk import MemoryPskStore
from tests.group_helpers import Harness, Member
from tests.interop.interop_helpers import MixedGroup, PyMember, TsMember, unique
from tests.interop.ts_mls_peer import INTEROP_DIR, TsMlsPeer

REQUIRED_SUITES = (1, 2, 3, 5, 7)
ALL_SUITES = (1, 2, 3, 4, 5, 6, 7)


def objects_with_id(token: Token, key_ref: bytes) -> int:
    return token.run(lambda s: len(list(s.get_objects({Attribute.ID: key_ref}))), op="test: count by id")


def require_token_custody(keystore: Pkcs11KeyStore, suite: int) -> None:
    custody = keystore.custody(suite)
    if suite in REQUIRED_SUITES:
        assert custody == ("pkcs11", "pkcs11"), f"suite {suite}: custody {custody}"
    elif custody != ("pkcs11", "pkcs11"):
        pytest.skip(f"this token does not hold suite {suite} keys (custody {custody})")


def assert_in_token(token: Token, who: str, group: Group) -> None:
    signer, leaf = group.signer(), group.state.keys.leaf_key
    assert isinstance(signer, Pkcs11Signer), f"{who}: signer {signer!r} is not a token key"
    assert isinstance(leaf, Pkcs11HpkeKey), f"{who}: leaf key {leaf!r} is not a token key"
    for ref in (signer.key_ref, leaf.key_ref):
        assert objects_with_id(token, ref) == 2, f"{who}: live key {ref.hex()} is not in the token"


def assert_in_software(who: str, group: Group) -> None:
    assert isinstance(group.signer(), SoftwareSigner), f"{who}: signer is not a software key"
    assert not isinstance(group.state.keys.leaf_key, Pkcs11HpkeKey), f"{who}: leaf key is a token key"


# ---- HSM-backed and software members ----------------------------------------------------------------------


@dataclass(eq=False)
class MixedCustodyHarness(Harness):
    """Members named in ``in_token`` keep their keys in the token; the others in software."""

    token: Token | None = None
    in_token: frozenset[str] = frozenset()

    def new_client(self, name: str, config: GroupConfig | None = None) -> Member:
        if name not in self.in_token:
            return super().new_client(name, config)
        assert self.token is not None
        store, psks = Pkcs11KeyStore(self.token), MemoryPskStore()
        client = Client(store, self.suite, Credential.basic(name.encode()), psks=psks)
        return Member(name, client, store, psks, config if config is not None else self.config)  # type: ignore[arg-type]

    def check(self) -> None:
        super().check()
        assert self.token is not None
        for m in self.active:
            if m.name in self.in_token:
                assert_in_token(self.token, m.name, m.g)
            else:
                assert_in_software(m.name, m.g)


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: f"suite{s}")
def test_hsm_and_software_members_in_one_group(token: Token, keystore: Pkcs11KeyStore, suite: int) -> None:
    require_token_custody(keystore, suite)
    h = MixedCustodyHarness(suite, token=token, in_token=frozenset({"bob", "dave", "erin"}))
    alice = h.create("alice")  # software
    (bob,), _ = h.add(alice, ["bob"])  # software adds HSM
    # HSM adds both
    (carol, dave), _ = h.add(bob, ["carol", "dave"], CommitOptions(handshake=HandshakeFraming.private))
    h.everyone_talks()

    # software proposes an Update, HSM commits it; HSM self-updates (PrivateMessage)
    message, _ = carol.g.propose_update(HandshakeFraming.private)
    h.propose(carol, message)
    h.commit(bob)
    h.commit(dave, CommitOptions(force_path=True, handshake=HandshakeFraming.private))
    # HSM proposes an Update, software commits it
    dave_old = dave.g.state.keys.leaf_key.key_ref
    message, _ = dave.g.propose_update()
    h.propose(dave, message)
    h.commit(alice, CommitOptions(handshake=HandshakeFraming.private))
    assert objects_with_id(token, dave_old) == 0

    # software removes an HSM member: its group keys leave the token
    bob_leaf = bob.g.state.keys.leaf_key.key_ref
    h.commit(alice, CommitOptions(remove=[bob.leaf]))
    assert bob.removed and objects_with_id(token, bob_leaf) == 0

    # an HSM member joins externally from a software member's GroupInfo, then removes it
    erin = h.new_client("erin")
    erin.group, commit = Group.external_join(
        erin.client.key_store,
        carol.g.group_info(with_ratchet_tree=True),
        signer=erin.client.signer,
        credential=erin.client.credential,
    )
    for m in h.active:
        result = m.g.process(commit)
        assert isinstance(result, StagedCommit)
        m.g.merge(result)
    h.members.append(erin)
    h.check()
    h.everyone_talks()
    h.commit(erin, CommitOptions(remove=[carol.leaf], handshake=HandshakeFraming.private))
    # and a software member joins externally from an HSM member's GroupInfo
    frank = h.new_client("frank")
    frank.group, commit = Group.external_join(
        frank.client.key_store,
        dave.g.group_info(with_ratchet_tree=False),
        signer=frank.client.signer,
        credential=frank.client.credential,
        ratchet_tree=dave.g.state.tree.encode(),
    )
    for m in h.active:
        result = m.g.process(commit)
        assert isinstance(result, StagedCommit)
        m.g.merge(result)
    h.members.append(frank)
    h.check()
    h.everyone_talks()


# ---- with ts-mls -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer() -> Iterator[TsMlsPeer]:
    """One ts-mls peer process for the module (tests/interop/install.sh first: a no-op when current)."""
    proc = subprocess.run(
        ["bash", str(INTEROP_DIR / "install.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"tests/interop/install.sh failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}",
            pytrace=False,
        )
    p = TsMlsPeer()
    yield p
    p.close()


class HsmPyMember(PyMember):
    """A member of this project's engine whose keys are in the token."""

    def __init__(self, name: str, suite: int, token: Token) -> None:
        self.name = name
        self.suite = suite
        self.identity = name.encode()
        self.client = Client(Pkcs11KeyStore(token), suite, Credential.basic(self.identity))
        self.group = None

    def __repr__(self) -> str:
        return f"hsm:{self.name}"


class CheckedMixedGroup(MixedGroup):
    """:class:`MixedGroup` whose check also requires HSM members' live keys to be in the token."""

    def __init__(self, token: Token, creator: PyMember | TsMember, group_id: bytes) -> None:
        self.token = token
        super().__init__(creator, group_id)

    def check(self, step: str) -> None:
        super().check(step)
        for m in self.members:
            if isinstance(m, HsmPyMember):
                assert_in_token(self.token, repr(m), m.g)
            elif isinstance(m, PyMember):
                assert_in_software(repr(m), m.g)


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: f"suite{s}")
def test_hsm_member_with_ts_mls_members(
    token: Token, keystore: Pkcs11KeyStore, peer: TsMlsPeer, suite: int
) -> None:
    require_token_custody(keystore, suite)
    alice = HsmPyMember(unique("hsm-alice"), suite, token)
    bob = TsMember(peer, unique("ts-bob"), suite)
    carol = PyMember(unique("sw-carol"), suite)
    dave = HsmPyMember(unique("hsm-dave"), suite, token)
    erin = TsMember(peer, unique("ts-erin"), suite)
    grp = CheckedMixedGroup(token, alice, unique(f"hsm-ts-{suite}").encode())

    grp.commit(alice, add=[bob])  # the HSM member's Welcome, tree in the GroupInfo
    grp.commit(bob, add=[carol, dave], tree_in_welcome=False, handshake="private")  # ts-mls Welcome to HSM
    grp.chat()
    grp.commit(bob, update=True)  # ts-mls path to the HSM members' leaves
    grp.commit(dave, update=True, handshake="private")  # HSM path, PrivateMessage

    # the HSM member's Update proposal, committed by ts-mls; its old leaf key leaves the token
    alice_old = alice.g.state.keys.leaf_key.key_ref
    grp.propose(alice, "update", handshake="private")
    grp.commit(bob)
    assert objects_with_id(token, alice_old) == 0
    grp.chat("after a committed Update")

    # ts-mls proposes adding a ts-mls member and removing the software member; the HSM member commits
    grp.propose(bob, "add", erin)
    grp.propose(bob, "remove", carol, handshake="private")
    grp.commit(dave, handshake="private")

    # external joins: an HSM member from an HSM member's GroupInfo (tree separate), its commit processed by
    # ts-mls; ts-mls from an HSM member's GroupInfo. (Not ours from a ts-mls GroupInfo: ts-mls 1.6.4 writes
    # external_pub without its length prefix, see tests/interop's OUR_READ_OF_TS_EXTERNAL_PUB.)
    frank = HsmPyMember(unique("hsm-frank"), suite, token)
    grp.external_join(frank, dave, tree_in_group_info=False)
    grp.external_join(
        TsMember(peer, unique("ts-gina"), suite), alice, tree_in_group_info=True, ts_mls_dialect=True
    )
    grp.chat("after external joins")
    frank_leaf = frank.g.state.keys.leaf_key.key_ref
    grp.commit(erin, remove=[frank])
    assert objects_with_id(token, frank_leaf) == 0
    grp.chat("at the end")
