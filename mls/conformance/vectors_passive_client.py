"""Passive-client vectors (``passive-client-*`` and the ``interop-passive`` files): join from a Welcome with
the given KeyPackage and private keys, then follow every epoch's proposals and commit, checking the
epoch authenticator after each (§12.4.2, §12.4.3.1)."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite
from mls.crypto.key_store import SoftwareKeyStore
from mls.group.group import Group
from mls.group.results import ProposalMessage
from mls.group.staged_commit import StagedCommit
from mls.schedule.psk import MemoryPskStore
from mls.wire.framing import MLSMessage
from mls.wire.key_package import KeyPackage

PASSIVE_KEYS = [
    "cipher_suite",
    "key_package",
    "signature_priv",
    "encryption_priv",
    "init_priv",
    "welcome",
    "ratchet_tree",
    "initial_epoch_authenticator",
    "epochs",
    "external_psks",
]


def join_passive(case: dict[str, Any]) -> Group:
    cs = cipher_suite(case["cipher_suite"])
    kp = MLSMessage.from_bytes(h(case["key_package"])).body
    assert isinstance(kp, KeyPackage)
    store = SoftwareKeyStore()
    signer = store.add_signer(cs.signer_from_private_bytes(h(case["signature_priv"])))
    leaf_key = store.add_hpke_key(cs.hpke_key_from_private_bytes(h(case["encryption_priv"])))
    init_key = store.add_hpke_key(cs.hpke_key_from_private_bytes(h(case["init_priv"])))
    expect_equal("signature key", signer.public_key, kp.leaf_node.signature_key)
    expect_equal("leaf encryption key", leaf_key.public_key, kp.leaf_node.encryption_key)
    expect_equal("init key", init_key.public_key, kp.init_key)
    psks = MemoryPskStore(external={h(p["psk_id"]): h(p["psk"]) for p in case["external_psks"]})
    tree = h(case["ratchet_tree"]) if case["ratchet_tree"] else None
    group = Group.join(
        store,
        h(case["welcome"]),
        key_package=kp,
        init_key=init_key,
        leaf_key=leaf_key,
        signer_ref=signer.key_ref,
        ratchet_tree=tree,
        psks=psks,
    )
    expect_equal(
        "initial epoch authenticator", group.epoch_authenticator, h(case["initial_epoch_authenticator"])
    )
    return group


@vector_kind("passive-client", keys=PASSIVE_KEYS, file_prefixes=["passive-client-"])
def run(case: dict[str, Any]) -> None:
    group = join_passive(case)
    for n, epoch in enumerate(case["epochs"]):
        for proposal in epoch["proposals"]:
            if not isinstance(group.process(h(proposal)), ProposalMessage):
                raise AssertionError(f"epoch {n}: a proposal message did not give a proposal")
        staged = group.process(h(epoch["commit"]))
        if not isinstance(staged, StagedCommit):
            raise AssertionError(f"epoch {n}: the commit message did not give a commit")
        group.merge(staged)
        expect_equal(f"epoch {n} authenticator", group.epoch_authenticator, h(epoch["epoch_authenticator"]))
