"""Pure-Python reference for the native layer's extra operations, on the Python backend's primitives.

These are the definitions the C code (``native/csrc``, bound in :mod:`native.batch`) must match byte for
byte, written as directly from RFC 9420 as possible:

* :func:`ratchet_steps` - the sender ratchet of §9.1, one DeriveTreeSecret after another;
* :func:`sender_data_key_nonce` - the sender-data key and nonce of §6.3.2;
* :func:`tree_hashes` (and :func:`tree_hashes_packed`, the form a ratchet tree asks for) /
  :func:`tree_hash_path` - tree hashes of §7.8, recursively over the tree math of Appendix C.

Every function uses :class:`mls.crypto.backend.PythonBackend` whatever backend is installed, so it stays a
reference while the native backend is in use. Argument checks are shared with the native backend
(:mod:`native._args`), so both reject the same inputs with the same errors. It lives with the tests (and
the native benchmark), not in shipped code: the library's own path is :mod:`mls.schedule.secret_tree` and
:mod:`mls.tree.ratchet_tree`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mls.crypto.backend import PythonBackend
from mls.errors import CryptoError
from mls.wire.codec import opaque_bytes
from native import _args

_PY = PythonBackend()
_LABEL_PREFIX = b"MLS 1.0 "


def expand_with_label(alg: str, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """ExpandWithLabel (§5.1.3), as :meth:`mls.crypto.cipher_suite.CipherSuite.expand_with_label`."""
    kdf_label = length.to_bytes(2, "big") + opaque_bytes(_LABEL_PREFIX + label) + opaque_bytes(context)
    return _PY.hkdf_expand(alg, secret, kdf_label, length)


def derive_tree_secret(alg: str, secret: bytes, label: bytes, generation: int, length: int) -> bytes:
    """DeriveTreeSecret (§9): ExpandWithLabel with the uint32 generation as context."""
    return expand_with_label(alg, secret, label, generation.to_bytes(4, "big"), length)


# ---- secret tree (§9.1, §6.3.2) -----------------------------------------------------------------


def ratchet_steps(
    alg: str, secret: bytes, start_generation: int, count: int, nk: int, nn: int
) -> tuple[bytes, bytes, bytes]:
    """Run a sender ratchet ``count`` generations from ``secret`` (the secret of ``start_generation``).

    Returns the keys of generations start..start+count-1 back to back (Nk bytes each), their nonces
    likewise (Nn bytes each), and the ratchet secret of generation start+count.
    """
    nh = _args.check_ratchet(alg, secret, start_generation, count, nk, nn)
    keys: list[bytes] = []
    nonces: list[bytes] = []
    for generation in range(start_generation, start_generation + count):
        keys.append(derive_tree_secret(alg, secret, b"key", generation, nk))
        nonces.append(derive_tree_secret(alg, secret, b"nonce", generation, nn))
        secret = derive_tree_secret(alg, secret, b"secret", generation, nh)
    return b"".join(keys), b"".join(nonces), secret


def sender_data_key_nonce(
    alg: str, sender_data_secret: bytes, ciphertext: bytes, nk: int, nn: int
) -> tuple[bytes, bytes]:
    """The sender-data key and nonce (§6.3.2) from the first KDF.Nh bytes of the content ciphertext."""
    nh = _args.check_sender_data(alg, sender_data_secret, nk, nn)
    sample = ciphertext[:nh]
    return (
        expand_with_label(alg, sender_data_secret, b"key", sample, nk),
        expand_with_label(alg, sender_data_secret, b"nonce", sample, nn),
    )


# ---- tree hashes (§7.8) over Appendix C's tree math ---------------------------------------------


def _level(x: int) -> int:
    k = 0
    while (x >> k) & 1:
        k += 1
    return k


def _left(x: int) -> int:
    return x ^ (1 << (_level(x) - 1))


def _right(x: int) -> int:
    return x ^ (3 << (_level(x) - 1))


def _optional(value: bytes | None) -> bytes:
    """``optional<T>``: a presence octet, then the value when present."""
    return b"\x00" if value is None else b"\x01" + value


def leaf_hash(alg: str, leaf_index: int, leaf_node: bytes | None) -> bytes:
    """Hash of TreeHashInput{node_type=leaf, LeafNodeHashInput{leaf_index, optional<LeafNode>}}."""
    return _PY.hash(alg, b"\x01" + leaf_index.to_bytes(4, "big") + _optional(leaf_node))


def parent_hash_input_hash(alg: str, parent_node: bytes | None, left_hash: bytes, right_hash: bytes) -> bytes:
    """Hash of TreeHashInput{node_type=parent,
    ParentNodeHashInput{optional<ParentNode>, left<V>, right<V>}}."""
    return _PY.hash(
        alg, b"\x02" + _optional(parent_node) + opaque_bytes(left_hash) + opaque_bytes(right_hash)
    )


def _full_tree(nodes: Sequence[bytes | None]) -> tuple[list[bytes | None], int]:
    """The node array extended with blank nodes to a perfect tree (§7.7), and its depth."""
    depth = _args.tree_depth(len(nodes))
    width = (2 << depth) - 1
    return [*nodes, *([None] * (width - len(nodes)))], depth


def tree_hashes(alg: str, nodes: Sequence[bytes | None]) -> list[bytes]:
    """The tree hash of every node (§7.8), in node order, for the array representation ``nodes``.

    ``nodes[2*i]`` is leaf i's encoded LeafNode, ``nodes[2*i+1]`` an encoded ParentNode; ``None`` is blank.
    A tree whose leaf count is not a power of two is taken as extended with blank nodes to the next one
    (RFC 9420 trees are perfect, §7.7), and the result covers that full width; the root is the node
    ``2^depth - 1``.
    """
    _args.hash_size(alg)
    full, depth = _full_tree(nodes)
    out = [b""] * len(full)

    def tree_hash(x: int) -> bytes:
        if _level(x) == 0:
            h = leaf_hash(alg, x // 2, full[x])
        else:
            h = parent_hash_input_hash(alg, full[x], tree_hash(_left(x)), tree_hash(_right(x)))
        out[x] = h
        return h

    tree_hash((1 << depth) - 1)
    return out


def tree_hashes_packed(alg: str, nodes: Sequence[bytes]) -> bytes:
    """:func:`tree_hashes` for a tree whose blank nodes are ``b""`` (an encoded LeafNode or ParentNode is
    never empty), as one buffer: every node's hash back to back, in node order."""
    values = [memoryview(node).tobytes() for node in nodes]  # bytes-like items only, like b"".join
    return b"".join(tree_hashes(alg, [value or None for value in values]))


def tree_hashes_spans(alg: str, source: bytes, starts: Sequence[int], lens: Sequence[int]) -> bytes:
    """:func:`tree_hashes_packed` with node x's encoding at ``source[starts[x] : starts[x] + lens[x]]``
    (``lens[x] == 0``: blank); every span must lie inside ``source``."""
    _args.check_span_count(starts, lens)
    if any(start < 0 or length < 0 or start + length > len(source) for start, length in zip(starts, lens)):
        raise CryptoError("7.8/tree-hash-input-length", "tree hash: a node's span lies outside the source")
    return tree_hashes_packed(alg, [source[start : start + length] for start, length in zip(starts, lens)])


def tree_hash_path(
    alg: str, nodes: Sequence[bytes | None], hashes: Sequence[bytes], leaf_index: int
) -> list[bytes]:
    """Tree hashes after a change on one leaf's direct path (the leaf and its ancestors).

    ``hashes`` are the previous :func:`tree_hashes`; nodes off the direct path must be unchanged since.
    Returns the full, updated list.
    """
    nh = _args.hash_size(alg)
    depth = _args.check_path_args(nodes, hashes, leaf_index, nh)
    full, _ = _full_tree(nodes)
    out = list(hashes)
    path = _args.direct_path(leaf_index, depth)
    _args.check_hash_lengths([hashes[s] for s in _args.copath(leaf_index, depth)], nh)
    out[path[0]] = leaf_hash(alg, leaf_index, full[path[0]])
    for x in path[1:]:
        out[x] = parent_hash_input_hash(alg, full[x], out[_left(x)], out[_right(x)])
    return out
