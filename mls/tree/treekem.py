"""TreeKEM: creating, merging and decrypting UpdatePaths (RFC 9420 §7.4–§7.6, §7.9, §12.4.2).

The private side of the ratchet tree is a :class:`PathKeys` value: the member's own leaf index and the
private keys it holds for nodes of the tree — its leaf encryption key (fresh, held by a KeyStore, maybe an
HSM) and the parent-node keys derived from path secrets (software by necessity, §7.4).

Creating an UpdatePath (:func:`create_update_path`) and processing one (:func:`apply_update_path` then
:func:`decrypt_update_path`) both work on a *copy* of the tree and return new values; the caller keeps
them when the commit is merged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mls.crypto.cipher_suite import CipherSuite
from mls.crypto.hpke import SoftwareHpkeKey
from mls.crypto.key_protocols import HpkePrivateKey
from mls.errors import CryptoError, ValidationError
from mls.tree.leaf_node import LeafNode, LeafNodeSource
from mls.tree.leaf_validation import check_leaf_node_source, verify_leaf_signature
from mls.tree.nodes import HPKECiphertext, ParentNode, UpdatePath, UpdatePathNode
from mls.tree.ratchet_tree import RatchetTree


@dataclass
class PathKeys:
    """The private keys one member holds for nodes of the tree (§7.4: the tree invariant)."""

    own_leaf: int
    leaf_key: HpkePrivateKey
    node_keys: dict[int, HpkePrivateKey] = field(default_factory=dict, repr=False)

    def key_for(self, node: int) -> HpkePrivateKey | None:
        if node == 2 * self.own_leaf:
            return self.leaf_key
        return self.node_keys.get(node)

    def copy(self) -> PathKeys:
        return PathKeys(self.own_leaf, self.leaf_key, dict(self.node_keys))

    def drop_nodes_not_in(self, tree: RatchetTree) -> None:
        """Forget keys of nodes that are now blank or carry another public key (§7.5 deletion)."""
        for x in list(self.node_keys):
            node = tree.node(x) if x < tree.width else None
            if node is None or node.encryption_key != self.node_keys[x].public_key:
                del self.node_keys[x]

    def __repr__(self) -> str:
        return f"PathKeys(own_leaf={self.own_leaf}, nodes={sorted(self.node_keys)})"


def derive_path_secrets(cs: CipherSuite, first: bytes, count: int) -> list[bytes]:
    """``path_secret[n] = DeriveSecret(path_secret[n-1], "path")`` (§7.4), ``count`` values from ``first``."""
    out = [first]
    for _ in range(count - 1):
        out.append(cs.derive_secret(out[-1], "path"))
    return out


def node_key(cs: CipherSuite, path_secret: bytes) -> SoftwareHpkeKey:
    """``node_priv, node_pub = KEM.DeriveKeyPair(DeriveSecret(path_secret, "node"))`` (§7.4)."""
    return cs.derive_key_pair(cs.derive_secret(path_secret, "node"))


def commit_secret_from(cs: CipherSuite, last_path_secret: bytes) -> bytes:
    """The commit secret: one more "path" step after the root's path secret (§8)."""
    return cs.derive_secret(last_path_secret, "path")


@dataclass
class CreatedPath:
    """The result of :func:`create_update_path`."""

    tree: RatchetTree
    update_path: UpdatePath
    path_keys: PathKeys
    commit_secret: bytes = field(repr=False)
    #: The path secret of every node on the filtered direct path (for Welcome ``path_secret``).
    path_secrets: dict[int, bytes] = field(repr=False)


def create_update_path(
    tree: RatchetTree,
    own_leaf: int,
    *,
    new_leaf_key: HpkePrivateKey,
    sign_leaf: Callable[[LeafNode], LeafNode],
    leaf_template: LeafNode,
    group_context_for: Callable[[RatchetTree], bytes],
    exclude_leaves: Iterable[int] = (),
    first_path_secret: bytes,
) -> CreatedPath:
    """Refresh the committer's leaf and filtered direct path and encrypt the path secrets (§7.5, §7.6).

    ``tree`` already has the commit's proposals applied; it is not modified. ``leaf_template`` carries
    the committer's leaf fields (credential, capabilities, extensions, signature key);
    ``sign_leaf`` signs a LeafNode for this group and leaf index; ``group_context_for`` gives the
    encoded provisional GroupContext for the new tree (its tree hash is part of it).
    """
    cs = tree.cs
    tree = tree.copy()
    tree.blank_direct_path(own_leaf)
    pairs = tree.filtered_path_and_copath(own_leaf)
    # path_secret[0..n-1] for the filtered direct path; path_secret[n] is the commit secret (§7.4, §8).
    chain = derive_path_secrets(cs, first_path_secret, len(pairs) + 1)
    secrets, commit_secret = chain[:-1], chain[-1]
    keys: dict[int, HpkePrivateKey] = {}
    for (p, _), secret in zip(pairs, secrets):
        key = node_key(cs, secret)
        keys[p] = key
        tree.set_parent(p, ParentNode(key.public_key, b"", ()))
    tree.set_leaf(own_leaf, _commit_leaf(leaf_template, new_leaf_key.public_key, b""))
    parent_hash = tree.set_path_parent_hashes(own_leaf)
    leaf = sign_leaf(_commit_leaf(leaf_template, new_leaf_key.public_key, parent_hash))
    tree.set_leaf(own_leaf, leaf)
    context = group_context_for(tree)
    excluded = set(exclude_leaves)
    nodes = []
    for (p, copath_child), secret in zip(pairs, secrets):
        cts = []
        for r in tree.resolution(copath_child, excluded):
            target = tree.node(r)
            assert target is not None
            kem_output, ct = cs.encrypt_with_label(target.encryption_key, "UpdatePathNode", context, secret)
            cts.append(HPKECiphertext(kem_output, ct))
        nodes.append(UpdatePathNode(keys[p].public_key, tuple(cts)))
    path_keys = PathKeys(own_leaf, new_leaf_key, keys)
    return CreatedPath(
        tree,
        UpdatePath(leaf, tuple(nodes)),
        path_keys,
        commit_secret,
        {p: s for (p, _), s in zip(pairs, secrets)},
    )


def _commit_leaf(template: LeafNode, encryption_key: bytes, parent_hash: bytes) -> LeafNode:
    return LeafNode(
        encryption_key=encryption_key,
        signature_key=template.signature_key,
        credential=template.credential,
        capabilities=template.capabilities,
        leaf_node_source=LeafNodeSource.commit,
        parent_hash=parent_hash,
        extensions=template.extensions,
        signature=b"",
    )


def apply_update_path(tree: RatchetTree, sender: int, path: UpdatePath, group_id: bytes) -> RatchetTree:
    """Merge a received UpdatePath into a copy of ``tree`` (§7.5 "merges UpdatePath into the tree").

    Checks the path length, the leaf's source, signature and parent hash (§7.9.2 for commits).
    """
    cs = tree.cs
    new = tree.copy()
    new.blank_direct_path(sender)
    pairs = new.filtered_path_and_copath(sender)
    if len(pairs) != len(path.nodes):
        raise ValidationError(
            "7.6/update-path-length",
            f"UpdatePath has {len(path.nodes)} nodes, the filtered direct path {len(pairs)}",
        )
    for (p, _), upn in zip(pairs, path.nodes):
        new.set_parent(p, ParentNode(upn.encryption_key, b"", ()))
    leaf = path.leaf_node
    check_leaf_node_source(leaf, LeafNodeSource.commit)
    new.set_leaf(sender, leaf)
    expected = new.set_path_parent_hashes(sender)
    if leaf.parent_hash != expected:
        raise ValidationError(
            "7.5/leaf-parent-hash", "the committer's leaf parent_hash does not match its path"
        )
    verify_leaf_signature(cs, leaf, group_id, sender)
    return new


def decrypt_update_path(
    tree: RatchetTree,
    sender: int,
    path: UpdatePath,
    keys: PathKeys,
    group_context: bytes,
    exclude_leaves: Iterable[int] = (),
) -> tuple[PathKeys, bytes, bytes]:
    """Decrypt the path secret meant for this member and derive the rest (§7.5 "decrypts the path
    secrets"). ``tree`` is the merged tree from :func:`apply_update_path`.

    Returns (new private keys, commit secret, the path secret decrypted at the common ancestor).
    """
    cs = tree.cs
    pairs = tree.filtered_path_and_copath(sender)
    excluded = set(exclude_leaves)
    own = 2 * keys.own_leaf
    for i, (_, copath_child) in enumerate(pairs):
        resolution = tree.resolution(copath_child, excluded)
        hit = next(((j, r) for j, r in enumerate(resolution) if keys.key_for(r) is not None), None)
        if hit is None:
            continue
        j, r = hit
        cts = path.nodes[i].encrypted_path_secret
        if len(cts) != len(resolution):
            raise ValidationError(
                "7.6/encrypted-path-secret-count",
                "encrypted_path_secret does not match the copath resolution",
            )
        key = keys.key_for(r)
        assert key is not None
        try:
            secret = cs.decrypt_with_label(
                key, "UpdatePathNode", group_context, cts[j].kem_output, cts[j].ciphertext
            )
        except CryptoError:
            raise CryptoError(
                "7.5/path-secret-decrypt", "cannot decrypt the path secret meant for this member"
            ) from None
        return _derive_from(tree, keys, pairs[i:], path, secret)
    raise ValidationError(
        "7.5/path-secret-recipient", f"no node in the sender's path covers leaf {own // 2} with a known key"
    )


def _derive_from(
    tree: RatchetTree, keys: PathKeys, pairs: list[tuple[int, int]], path: UpdatePath, secret: bytes
) -> tuple[PathKeys, bytes, bytes]:
    cs = tree.cs
    new_keys = keys.copy()
    secrets = derive_path_secrets(cs, secret, len(pairs))
    offset = len(path.nodes) - len(pairs)
    for k, ((p, _), s) in enumerate(zip(pairs, secrets)):
        key = node_key(cs, s)
        if key.public_key != path.nodes[offset + k].encryption_key:
            raise ValidationError(
                "7.5/derived-public-key", f"derived public key for node {p} does not match the UpdatePath"
            )
        new_keys.node_keys[p] = key
    new_keys.drop_nodes_not_in(tree)
    return new_keys, commit_secret_from(cs, secrets[-1]), secret
