"""Whole-step operations in C (the ``BatchOps`` of :mod:`mls.crypto.backend`): the sender ratchet
(RFC 9420 §9.1), sender-data keys (§6.3.2) and tree hashes (§7.8), the half of
:class:`~native.backend.NativeBackend` beyond the symmetric primitives.

Each gives the bytes of the pure-Python reference the tests hold (``tests/native/reference.py``) and
raises the same project errors (the argument checks are shared, :mod:`native._args`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import compress, repeat
from operator import is_not
from typing import Any, cast

from . import _args
from ._ffi import (
    SIZE_T,
    alloc,
    as_bytes,
    ffi,
    fixed,
    hash_id,
    lib,
    raise_for_ratchet,
    raise_for_sender_data,
    raise_for_tree_hash,
    size_t_array,
    size_t_view,
    take_secret,
)


class NativeBatchOps:
    """Ratchet steps, sender-data keys and tree hashes, each one C call."""

    # ---- secret tree (RFC 9420 §9.1, §6.3.2) ------------------------------------------------------
    def ratchet_steps(
        self, alg: str, secret: bytes, start_generation: int, count: int, nk: int, nn: int
    ) -> tuple[bytes, bytes, bytes]:
        """Keys and nonces of generations start..start+count-1, back to back, and the next ratchet secret
        (§9.1)."""
        hid, _ = hash_id(alg)
        nh = _args.check_ratchet(alg, secret, start_generation, count, nk, nn)
        secret = as_bytes(secret)
        keys, nonces, following = (
            alloc("uint8_t[]", count * nk),
            alloc("uint8_t[]", count * nn),
            alloc("uint8_t[]", nh),
        )
        rc = lib.mlsn_ratchet_steps(
            hid,
            secret,
            nh,
            start_generation,
            count,
            nk,
            nn,
            keys,
            count * nk,
            nonces,
            count * nn,
            following,
            nh,
        )
        if rc:
            raise_for_ratchet(rc)
        return take_secret(keys, count * nk), take_secret(nonces, count * nn), take_secret(following, nh)

    def sender_data_key_nonce(
        self, alg: str, sender_data_secret: bytes, ciphertext: bytes, nk: int, nn: int
    ) -> tuple[bytes, bytes]:
        """Sender-data key and nonce from the first KDF.Nh bytes of the content ciphertext (§6.3.2)."""
        hid, _ = hash_id(alg)
        nh = _args.check_sender_data(alg, sender_data_secret, nk, nn)
        secret, sample = as_bytes(sender_data_secret), as_bytes(ciphertext[:nh])
        key, nonce = alloc("uint8_t[]", nk), alloc("uint8_t[]", nn)
        rc = lib.mlsn_sender_data_key_nonce(hid, secret, nh, sample, len(sample), key, nk, nonce, nn)
        if rc:
            raise_for_sender_data(rc)
        result = bytes(ffi.buffer(key)), bytes(ffi.buffer(nonce))
        lib.mlsn_cleanse(key, nk)
        lib.mlsn_cleanse(nonce, nn)
        return result

    # ---- tree hashes (RFC 9420 §7.8) ----------------------------------------------------------------
    def tree_hashes(self, alg: str, nodes: Sequence[bytes | None]) -> list[bytes]:
        """Every node's tree hash, over the tree extended to a power-of-two leaf count (see reference)."""
        hid, nh = hash_id(alg)
        depth = _args.tree_depth(len(nodes))
        width = (2 << depth) - 1
        present = bytes(map(is_not, nodes, repeat(None)))
        values = cast("list[bytes]", list(compress(nodes, present)))
        lens = array(SIZE_T, map(len, values))
        data = b"".join(values)
        out = alloc("uint8_t[]", width * nh)
        rc = lib.mlsn_tree_hashes(
            hid, len(nodes), present, data, len(data), size_t_view(lens), len(values), out, width * nh
        )
        if rc:
            raise_for_tree_hash(rc)
        return fixed(ffi.buffer(out), nh, width)

    def tree_hashes_packed(self, alg: str, nodes: Sequence[bytes]) -> Any:
        """Every node's tree hash (§7.8) back to back, Nh bytes each, over the tree extended to a
        power-of-two leaf count; ``nodes`` are the per-node encodings with ``b""`` for a blank node.

        Returns the C output buffer itself (its slices are bytes; equal to the bytes of the reference):
        one megabyte less to allocate and copy for a tree of 10,000 members.
        """
        hid, nh = hash_id(alg)
        size = ((2 << _args.tree_depth(len(nodes))) - 1) * nh
        data = b"".join(nodes)
        lens = array(SIZE_T, map(len, nodes))
        out = alloc("uint8_t[]", size)
        rc = lib.mlsn_tree_hashes_spans(
            hid, len(nodes), data, len(data), ffi.NULL, size_t_view(lens), out, size
        )
        if rc:
            raise_for_tree_hash(rc)
        return ffi.buffer(out)

    def tree_hashes_spans(self, alg: str, source: bytes, starts: Sequence[int], lens: Sequence[int]) -> Any:
        """:meth:`tree_hashes_packed` with node x's encoding at ``source[starts[x] : starts[x] + lens[x]]``
        (``lens[x] == 0`` for a blank node): a tree hashed straight from the message it was decoded from."""
        hid, nh = hash_id(alg)
        n = len(lens)
        _args.check_span_count(starts, lens)
        starts, lens = size_t_array(starts), size_t_array(lens)
        size = ((2 << _args.tree_depth(n)) - 1) * nh
        out = alloc("uint8_t[]", size)
        rc = lib.mlsn_tree_hashes_spans(
            hid, n, as_bytes(source), len(source), size_t_view(starts), size_t_view(lens), out, size
        )
        if rc:
            raise_for_tree_hash(rc)
        return ffi.buffer(out)

    def tree_hash_path(
        self, alg: str, nodes: Sequence[bytes | None], hashes: Sequence[bytes], leaf_index: int
    ) -> list[bytes]:
        """Tree hashes after a change on ``leaf_index``'s direct path; the full updated list."""
        hid, nh = hash_id(alg)
        depth = _args.check_path_args(nodes, hashes, leaf_index, nh)
        path = _args.direct_path(leaf_index, depth)
        siblings = [hashes[x] for x in _args.copath(leaf_index, depth)]
        _args.check_hash_lengths(siblings, nh)
        path_nodes = [nodes[x] if x < len(nodes) else None for x in path]
        present = bytes(map(is_not, path_nodes, repeat(None)))
        values = cast("list[bytes]", list(compress(path_nodes, present)))
        lens = array(SIZE_T, map(len, values))
        data, copath = b"".join(values), b"".join(siblings)
        out = alloc("uint8_t[]", (depth + 1) * nh)
        rc = lib.mlsn_tree_hash_path(
            hid, leaf_index, depth, present, data, len(data), size_t_view(lens), len(values),
            copath, len(copath), out, (depth + 1) * nh,
        )  # fmt: skip
        if rc:
            raise_for_tree_hash(rc)
        result = list(hashes)
        for x, h in zip(path, fixed(ffi.buffer(out), nh, depth + 1)):
            result[x] = h
        return result
