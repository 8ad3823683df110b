"""Group scenarios with every member's signature and HPKE keys in the token (SoftHSM2), for every suite.

Each member is a :class:`mls.client.Client` over a :class:`hsm.Pkcs11KeyStore` of its own (all on the
session's token). One representative scenario per cipher suite the token holds (custody ``pkcs11`` for
both signature and HPKE keys): create; add one member (PublicMessage commit); add several in one
PrivateMessage commit; application messages every way; a self-update (commit with path); an Update
proposal committed by another member; proposals by reference (a Remove and an Add, from two members, in
a PrivateMessage commit); an external PSK; an external join; application messages again; finally every
member retires its identity (destroys all its keys) and none of its keys is left in the token.

After every step every current member agrees on epoch, epoch_authenticator, tree hash, exporter output
and membership (:func:`tests.group_helpers.check_agreement`), every member's live signature and leaf
keys are token keys that exist in the token, and every key the step made dead is gone from the token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from pkcs11 import Attribute

from hsm import Pkcs11HpkeKey, Pkcs11KeyStore, Pkcs11Signer, Token
from hsm.audit import AuditEvent
from mls.client import Client
from mls.credentials.credential import Credential
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.handshake_framing import HandshakeFraming
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig
from mls.schedule.psk import MemoryPskStore
from mls.wire.framing import MLSMessage, PrivateMessage, WireFormat
from tests.group_helpers import Harness, Member

#: Suites SoftHSM must hold in full (the issue's list); the others run when the token holds them too.
REQUIRED_SUITES = (1, 2, 3, 5, 7)
ALL_SUITES = (1, 2, 3, 4, 5, 6, 7)


class TrackedKeyStore(Pkcs11KeyStore):
    """A member's own key store on the shared token; remembers the keys it made and has not destroyed."""

    def __init__(self, token: Token) -> None:
        self.live: set[bytes] = set()
        self.made: list[bytes] = []
        super().__init__(token, audit_hook=self._track)

    def _track(self, event: AuditEvent) -> None:
        if not event.ok:
            return
        if event.operation in ("generate", "import"):
            self.live.add(event.key_ref)
            self.made.append(event.key_ref)
        elif event.operation == "destroy":
            self.live.discard(event.key_ref)

    def refs(self) -> set[bytes]:
        return set(self.live)


def objects_with_id(token: Token, key_ref: bytes) -> int:
    """Token objects (private and public) whose CKA_ID is ``key_ref`` — a python-pkcs11 search."""
    return token.run(lambda s: len(list(s.get_objects({Attribute.ID: key_ref}))), op="test: count by id")


@dataclass(eq=False)
class HsmHarness(Harness):
    """A :class:`Harness` whose members keep their keys in the token, each in a key store of its own."""

    token: Token | None = None

    def new_client(self, name: str, config: GroupConfig | None = None) -> Member:
        assert self.token is not None
        store = TrackedKeyStore(self.token)
        psks = MemoryPskStore()
        client = Client(store, self.suite, Credential.basic(name.encode()), psks=psks)
        return Member(name, client, store, psks, config if config is not None else self.config)  # type: ignore[arg-type]

    def check(self) -> None:
        super().check()
        assert self.token is not None
        for m in self.active:
            store = m.key_store
            assert isinstance(store, TrackedKeyStore)
            signer, leaf = m.g.signer(), m.g.state.keys.leaf_key
            assert isinstance(signer, Pkcs11Signer), f"{m.name}: signer {signer!r} is not a token key"
            assert isinstance(leaf, Pkcs11HpkeKey), f"{m.name}: leaf key {leaf!r} is not a token key"
            for ref in (signer.key_ref, leaf.key_ref):
                assert ref in store.live
                assert objects_with_id(self.token, ref) == 2, (
                    f"{m.name}: live key {ref.hex()} not in the token"
                )
        for m in self.members:
            store = m.key_store
            assert isinstance(store, TrackedKeyStore)
            for ref in set(store.made) - store.live:
                assert objects_with_id(self.token, ref) == 0, (
                    f"{m.name}: destroyed key {ref.hex()} still in the token"
                )


def require_token_custody(keystore: Pkcs11KeyStore, suite: int) -> None:
    custody = keystore.custody(suite)
    if suite in REQUIRED_SUITES:
        assert custody == ("pkcs11", "pkcs11"), f"suite {suite}: custody {custody}"
    elif custody != ("pkcs11", "pkcs11"):
        pytest.skip(f"this token does not hold suite {suite} keys (custody {custody})")


def wire(message: bytes) -> int:
    return MLSMessage.from_bytes(message).wire_format


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: f"suite{s}")
def test_group_lifecycle_with_all_keys_in_the_token(
    token: Token, keystore: Pkcs11KeyStore, suite: int
) -> None:
    require_token_custody(keystore, suite)
    h = HsmHarness(suite, token=token)

    # create; add one (PublicMessage); add several in one PrivateMessage commit
    alice = h.create("alice", b"hsm-group-" + bytes([suite]))
    (bob,), staged = h.add(alice, ["bob"])
    assert staged.commit is not None and wire(staged.commit) == WireFormat.mls_public_message
    (carol, dave), staged = h.add(bob, ["carol", "dave"], CommitOptions(handshake=HandshakeFraming.private))
    assert staged.commit is not None and wire(staged.commit) == WireFormat.mls_private_message
    h.everyone_talks()

    # self-update: a commit with path; the replaced leaf key is gone from the token
    old_leaf = carol.g.state.keys.leaf_key.key_ref
    h.commit(carol, CommitOptions(force_path=True, handshake=HandshakeFraming.private))
    assert carol.g.state.keys.leaf_key.key_ref != old_leaf
    assert objects_with_id(token, old_leaf) == 0

    # an Update proposal (PrivateMessage) committed by another member
    dave_old, alice_old = dave.g.state.keys.leaf_key.key_ref, alice.g.state.keys.leaf_key.key_ref
    message, _ = dave.g.propose_update(HandshakeFraming.private)
    assert isinstance(MLSMessage.from_bytes(message).body, PrivateMessage)
    h.propose(dave, message)
    h.commit(alice)
    assert objects_with_id(token, dave_old) == 0 and objects_with_id(token, alice_old) == 0
    h.everyone_talks()

    # proposals by reference: bob proposes to remove dave, carol proposes to add erin; alice commits both
    erin = h.new_client("erin")
    bundle = erin.client.key_package()
    removal, _ = bob.g.propose_remove(dave.leaf)
    h.propose(bob, removal)
    addition, _ = carol.g.propose_add(bundle.key_package)
    h.propose(carol, addition)
    dave_keys = dave.key_store.refs()
    staged = h.commit(alice, CommitOptions(handshake=HandshakeFraming.private), joiners=[(erin, bundle)])
    assert staged.commit is not None and wire(staged.commit) == WireFormat.mls_private_message
    assert [p.ref is not None for p in staged.proposals] == [True, True]  # both committed by reference
    assert dave.removed and dave not in h.active
    # the removed member's group keys are gone; its signature key (the identity's) stays
    assert dave.key_store.refs() == {dave.client.signer.key_ref}
    for ref in dave_keys - {dave.client.signer.key_ref}:
        assert objects_with_id(token, ref) == 0
    # the joiner's KeyPackage init key is gone; its leaf key is its live leaf key
    assert objects_with_id(token, bundle.init_key.key_ref) == 0
    assert erin.g.state.keys.leaf_key.key_ref == bundle.leaf_key.key_ref

    # an external PSK (every member holds it), committed by value
    psk_id, secret = b"hsm-external-psk", os.urandom(32)
    for m in h.active:
        m.psks.external[psk_id] = secret
    staged = h.commit(bob, CommitOptions(psks=[bob.g.new_psk_id(psk_id)]))
    assert [p.ref for p in staged.proposals] == [None]

    # an external join from erin's GroupInfo (ratchet tree in the GroupInfo)
    frank = h.new_client("frank")
    group_info = erin.g.group_info(with_ratchet_tree=True)
    frank.group, commit = Group.external_join(
        frank.client.key_store, group_info, signer=frank.client.signer, credential=frank.client.credential
    )
    for m in h.active:
        result = m.g.process(commit)
        assert isinstance(result, StagedCommit)
        m.g.merge(result)
    h.members.append(frank)
    h.check()
    h.everyone_talks()
    assert alice.g.epoch == 7 and len(alice.g.members()) == 5

    # retiring the identities: every key a member ever made is gone from the token
    for m in h.members:
        store = m.key_store
        assert isinstance(store, TrackedKeyStore)
        for ref in store.refs():
            store.destroy(ref)
        assert sum(objects_with_id(token, ref) for ref in store.made) == 0, m.name
