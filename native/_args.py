"""Argument checks shared by the native backend and the pure-Python reference of the tests
(``tests/native/reference.py``), so both reject the same inputs with the same project errors (and the C
layer only ever sees well-formed calls; it re-checks every length anyway).

Like the rest of :mod:`native`, this imports nothing from :mod:`mls` but :mod:`mls.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mls.errors import CryptoError, UnsupportedError, ValidationError

#: KDF.Nh per hash name (the same table as ``mls.crypto.backend.HASH_SIZES``).
HASH_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
#: (Nk, Nn) per AEAD id (as ``mls.crypto.backend.AEAD_SIZES``): AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305.
AEAD_SIZES = {1: (16, 12), 2: (32, 12), 3: (32, 12)}
AEAD_TAG_LEN = 16

AeadItem = tuple[bytes, bytes, bytes, bytes]
"""One AEAD operation: (key, nonce, aad, plaintext-or-ciphertext)."""

#: Generations one ``ratchet_steps`` call may derive (the C layer's ``MLSN_MAX_RATCHET_STEPS``).
MAX_RATCHET_STEPS = 1 << 20
#: Generations are uint32 (RFC 9420 §9.1: DeriveTreeSecret's context).
GENERATION_LIMIT = 1 << 32
#: Leaf indices are uint32, so a tree has at most 2^32 leaves.
MAX_TREE_DEPTH = 32


def hash_size(alg: str) -> int:
    """KDF.Nh of a hash name; :class:`UnsupportedError` for anything but sha256/384/512."""
    try:
        return HASH_SIZES[alg]
    except (KeyError, TypeError):
        raise UnsupportedError(f"hash {alg!r} is not supported") from None


def check_expand_length(rule: str, what: str, length: int, nh: int) -> None:
    """An ExpandWithLabel output length: 1..255*Nh (HKDF, RFC 5869 §2.3), so it also fits the uint16."""
    if not 1 <= length <= 255 * nh:
        raise CryptoError(rule, f"{what} length must be between 1 and {255 * nh} bytes")


def check_ratchet(alg: str, secret: bytes, start_generation: int, count: int, nk: int, nn: int) -> int:
    """Validate ``ratchet_steps`` arguments (RFC 9420 §9.1); returns Nh."""
    nh = hash_size(alg)
    if len(secret) != nh:
        raise CryptoError("9.1/ratchet-secret-length", "ratchet secret must be KDF.Nh bytes")
    check_expand_length("9.1/ratchet-key-length", "ratchet key", nk, nh)
    check_expand_length("9.1/ratchet-nonce-length", "ratchet nonce", nn, nh)
    if not 0 <= count <= MAX_RATCHET_STEPS:
        raise ValidationError(
            "15.3/ratchet-step-count", f"ratchet step count must be between 0 and {MAX_RATCHET_STEPS}"
        )
    if not 0 <= start_generation < GENERATION_LIMIT or start_generation + count > GENERATION_LIMIT:
        raise ValidationError("9.1/ratchet-generation-uint32", "ratchet generation does not fit a uint32")
    return nh


def check_sender_data(alg: str, secret: bytes, nk: int, nn: int) -> int:
    """Validate ``sender_data_key_nonce`` arguments (RFC 9420 §6.3.2); returns Nh."""
    nh = hash_size(alg)
    if len(secret) != nh:
        raise CryptoError("6.3.2/sender-data-secret-length", "sender_data_secret must be KDF.Nh bytes")
    check_expand_length("6.3.2/sender-data-key-length", "sender data key", nk, nh)
    check_expand_length("6.3.2/sender-data-nonce-length", "sender data nonce", nn, nh)
    return nh


def tree_depth(n_nodes: int) -> int:
    """Depth d of the perfect tree holding ``n_nodes`` node slots (2^d leaves after extension, §7.7).

    ``n_nodes`` must be a node width 2n-1 for n >= 1 leaves (RFC 9420 Appendix C).
    """
    if n_nodes < 1 or n_nodes % 2 == 0:
        raise ValidationError(
            "7.8/tree-node-count-odd", "a ratchet tree has an odd number of nodes (2n - 1 for n leaves)"
        )
    n_leaves = (n_nodes + 1) // 2
    depth = (n_leaves - 1).bit_length()
    if depth > MAX_TREE_DEPTH:
        raise ValidationError("7.8/tree-leaf-count", "a ratchet tree has at most 2^32 leaves")
    return depth


def check_path_args(nodes: Sequence[bytes | None], hashes: Sequence[bytes], leaf_index: int, nh: int) -> int:
    """Validate ``tree_hash_path`` arguments; returns the tree depth."""
    depth = tree_depth(len(nodes))
    if len(hashes) != (2 << depth) - 1:
        raise ValidationError(
            "7.8/previous-hashes-cover-tree", "previous tree hashes do not cover the full tree"
        )
    if not 0 <= leaf_index < (len(nodes) + 1) // 2:
        raise ValidationError("7.8/leaf-index-in-tree", "leaf index is outside the tree")
    return depth


def check_span_count(starts: Sequence[int], lens: Sequence[int]) -> None:
    """``tree_hashes_spans`` takes one start and one length per node (§7.8)."""
    if len(starts) != len(lens):
        raise ValidationError("7.8/span-count", "tree hash: one start and one length per node")


def direct_path(leaf_index: int, depth: int) -> list[int]:
    """Node indices of the leaf and its direct path, leaf first, root last (Appendix C, perfect tree)."""
    return [((leaf_index >> k) << (k + 1)) + (1 << k) - 1 for k in range(depth + 1)]


def copath(leaf_index: int, depth: int) -> list[int]:
    """The sibling of each node of ``direct_path`` but the root (a level-k node x has sibling x ^ 2^(k+1))."""
    return [x ^ (1 << (k + 1)) for k, x in enumerate(direct_path(leaf_index, depth)[:-1])]


def check_hash_lengths(hashes: Sequence[bytes], nh: int) -> None:
    if any(len(h) != nh for h in hashes):
        raise ValidationError("7.8/previous-hash-length", "a previous tree hash has the wrong length")
