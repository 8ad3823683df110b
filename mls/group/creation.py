"""Creating a group (RFC 9420 §11): a one-member group at epoch 0 with a fresh random epoch secret."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.key_protocols import KeyStore, Signer
from mls.group.state import GroupConfig, GroupState
from mls.schedule.key_schedule import EpochSecrets
from mls.schedule.transcript import interim_transcript_hash
from mls.tree.leaf_node import (
    Capabilities,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    default_capabilities,
    sign_leaf_node,
)
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.treekem import PathKeys
from mls.wire.extensions import Extension, check_group_context_extensions
from mls.wire.group_context import GroupContext


def default_lifetime(days: int = 90) -> Lifetime:
    """A leaf lifetime from an hour ago (clock skew) to ``days`` days from now (§7.2)."""
    now = int(time.time())
    return Lifetime(now - 3600, now + days * 86400)


def new_group_state(
    key_store: KeyStore,
    cipher_suite_id: int,
    *,
    signer: Signer,
    credential: Credential,
    group_id: bytes | None = None,
    extensions: Sequence[Extension] = (),
    config: GroupConfig | None = None,
    lifetime: Lifetime | None = None,
    capabilities: Capabilities | None = None,
) -> GroupState:
    """The creator's state of a new one-member group (§11), with a leaf key made by ``key_store``."""
    cs = cipher_suite(cipher_suite_id)
    config = config or GroupConfig()
    check_group_context_extensions(extensions)
    leaf_key = key_store.new_hpke_key(cipher_suite_id)
    leaf = LeafNode(
        encryption_key=leaf_key.public_key,
        signature_key=signer.public_key,
        credential=credential,
        capabilities=capabilities or default_capabilities(),
        leaf_node_source=LeafNodeSource.key_package,
        lifetime=lifetime or default_lifetime(),
        extensions=(),
        signature=b"",
    )
    tree = RatchetTree.one_member(cs, sign_leaf_node(cs, signer, leaf))
    gid = group_id if group_id is not None else os.urandom(cs.n_h)
    context = GroupContext(1, cs.suite_id, gid, 0, tree.tree_hash(), b"", tuple(extensions))
    secrets = EpochSecrets.derive(cs, os.urandom(cs.n_h))
    tag = secrets.confirmation_tag(b"")
    secret_tree, secrets = secrets.start_secret_tree(tree.n_leaves, config.ratchet)
    return GroupState(
        context=context,
        tree=tree,
        keys=PathKeys(0, leaf_key),
        signer_ref=signer.key_ref,
        secrets=secrets,
        secret_tree=secret_tree,
        interim_transcript_hash=interim_transcript_hash(cs, b"", tag),
        confirmation_tag=tag,
        config=config,
        resumption_psks={0: secrets.resumption_psk},
    )


__all__ = ["default_lifetime", "new_group_state"]
