"""Validation of a ratchet tree received from outside (RFC 9420 §7.9.2, §12.4.3.1).

Run when joining (Welcome or external commit) and available to any caller that receives a tree:
tree hash, parent-hash validity of every non-blank parent node, every leaf (§7.3), unmerged-leaf
consistency, and uniqueness of encryption and signature keys. Failures raise
:class:`~mls.errors.ValidationError` naming the rule; nothing is changed.
"""

from __future__ import annotations

from mls.errors import ValidationError
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode, LeafNodeSource
from mls.tree.leaf_validation import (
    LeafPolicy,
    batch_signature_checks,
    leaf_signature_check,
    validate_leaf_node,
)
from mls.tree.nodes import ParentNode
from mls.tree.ratchet_tree import RatchetTree
from mls.wire.extensions import RequiredCapabilities


def _parent_hash_field(tree: RatchetTree, x: int) -> bytes | None:
    node = tree.node(x)
    if isinstance(node, ParentNode):
        return node.parent_hash
    if isinstance(node, LeafNode) and node.leaf_node_source == LeafNodeSource.commit:
        return node.parent_hash
    return None


def _valid_links(tree: RatchetTree, p: int) -> int:
    """How many descendants D of ``p`` carry a parent hash valid with respect to ``p`` (§7.9.2)."""
    node = tree.parent_node(p)
    assert node is not None
    count = 0
    for c, s in ((tm.left(p), tm.right(p)), (tm.right(p), tm.left(p))):
        expected = tree.parent_hash(p, s)
        resolution = tree.resolution(c)
        c_leaves = tm.subtree_leaves(c, tree.n_leaves)
        unmerged_under_c = {2 * leaf for leaf in node.unmerged_leaves if leaf in c_leaves}
        for d in resolution:
            if _parent_hash_field(tree, d) == expected and set(resolution) - {d} == unmerged_under_c:
                count += 1
    return count


def verify_parent_hashes(tree: RatchetTree) -> None:
    """Every non-blank parent node is parent-hash valid, checked top down (§7.9.2)."""
    for p in range(1, tree.width, 2):
        if tree.node(p) is not None and _valid_links(tree, p) != 1:
            raise ValidationError("7.9.2/parent-hash-valid", f"parent node {p} is not parent-hash valid")


def verify_unmerged_leaves(tree: RatchetTree) -> None:
    """Unmerged leaves are non-blank descendants, listed on every non-blank node in between (§12.4.3.1)."""
    for p in range(1, tree.width, 2):
        node = tree.parent_node(p)
        if node is None:
            continue
        if list(node.unmerged_leaves) != sorted(set(node.unmerged_leaves)):
            raise ValidationError(
                "7.1/unmerged-leaves-sorted", f"unmerged_leaves of node {p} are not strictly increasing"
            )
        for leaf in node.unmerged_leaves:
            if leaf not in tm.subtree_leaves(p, tree.n_leaves) or tree.leaf(leaf) is None:
                raise ValidationError(
                    "12.4.3.1/unmerged-leaf-descendant",
                    f"unmerged leaf {leaf} of node {p} is blank or not below it",
                )
            x = tm.parent(2 * leaf, tree.n_leaves)
            while x != p:
                between = tree.parent_node(x)
                if between is not None and leaf not in between.unmerged_leaves:
                    raise ValidationError(
                        "12.4.3.1/unmerged-leaf-intermediate", f"node {x} lacks unmerged leaf {leaf}"
                    )
                x = tm.parent(x, tree.n_leaves)


def verify_unique_keys(tree: RatchetTree) -> None:
    """No HPKE key appears in two nodes, no signature key in two leaves (§7.3, §12.4.3.1)."""
    enc_keys: set[bytes] = set()
    sig_keys: set[bytes] = set()
    for x in range(tree.width):
        node = tree.node(x)
        if node is None:
            continue
        if node.encryption_key in enc_keys:
            raise ValidationError(
                "12.4.3.1/encryption-key-unique",
                f"node {x} repeats an encryption key used elsewhere in the tree",
            )
        enc_keys.add(node.encryption_key)
        if isinstance(node, LeafNode):
            if node.signature_key in sig_keys:
                raise ValidationError(
                    "7.3/signature-key-unique",
                    f"leaf {x // 2} repeats a signature key used by another member",
                )
            sig_keys.add(node.signature_key)


def verify_leaves(
    tree: RatchetTree, group_id: bytes, policy: LeafPolicy, required: RequiredCapabilities | None = None
) -> None:
    """Every non-blank leaf is valid (§7.3) and the credential types in use are mutually supported. The
    leaf signatures are verified in one batch first (:mod:`mls.crypto.signature_batch`); each leaf's
    checks then run in order, its signature check taking the batch's result."""
    leaves = list(tree.leaves())
    checks = batch_signature_checks(leaves, lambda il: [leaf_signature_check(il[1], group_id, il[0])])
    with tree.cs.prefetch_verifications(checks):
        for index, leaf in leaves:
            validate_leaf_node(
                tree.cs,
                leaf,
                source=None,
                group_id=group_id,
                leaf_index=index,
                policy=policy,
                required=required,
            )
    check_credential_types_supported([leaf for _, leaf in leaves])


def check_credential_types_supported(leaves: list[LeafNode]) -> None:
    """Every credential type in use is supported by every member (§7.3), in one pass: the types in use
    must all be in the intersection of the members' supported types."""
    if not leaves:
        return
    in_use = {leaf.credential.credential_type for leaf in leaves}
    supported = set(leaves[0].capabilities.credentials)
    for leaf in leaves[1:]:
        supported &= set(leaf.capabilities.credentials)
    if not in_use <= supported:
        raise ValidationError(
            "7.3/credential-types-supported", "a credential type in use is not supported by every member"
        )


def validate_tree(
    tree: RatchetTree,
    *,
    group_id: bytes,
    tree_hash: bytes,
    policy: LeafPolicy,
    required: RequiredCapabilities | None = None,
) -> None:
    """All the integrity checks on a tree a joiner receives (§12.4.3.1)."""
    if tree.tree_hash() != tree_hash:
        raise ValidationError(
            "12.4.3.1/tree-hash", "the ratchet tree does not match the tree hash in the GroupInfo"
        )
    verify_parent_hashes(tree)
    verify_unmerged_leaves(tree)
    verify_unique_keys(tree)
    verify_leaves(tree, group_id, policy, required)
