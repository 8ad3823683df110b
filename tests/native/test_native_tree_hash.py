"""Tree hashes (RFC 9420 §7.8): native == reference == RFC tree-validation vectors; path updates."""

from __future__ import annotations

import json
import random
from array import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_testlib import HASHES, NH

from mls.crypto.cipher_suite import cipher_suite
from mls.errors import CryptoError, UnsupportedError, ValidationError
from mls.wire.codec import Reader
from tests.native import reference

hashes = st.sampled_from(HASHES)

# ---- a minimal ratchet_tree reader for the vectors: node boundaries only --------------------------


def _skip_leaf_node(r: Reader) -> None:
    r.opaque()  # encryption_key
    r.opaque()  # signature_key
    credential_type = r.u16()
    assert credential_type in (1, 2), "basic or x509 credential"
    r.opaque()  # identity, or the certificates vector
    for _ in range(5):  # capabilities: versions, cipher_suites, extensions, proposals, credentials
        r.opaque()
    source = r.u8()
    if source == 1:  # key_package: Lifetime
        r.u64()
        r.u64()
    elif source == 3:  # commit: parent_hash
        r.opaque()
    else:
        assert source == 2
    r.opaque()  # extensions
    r.opaque()  # signature


def _skip_parent_node(r: Reader) -> None:
    r.opaque()  # encryption_key
    r.opaque()  # parent_hash
    r.opaque()  # unmerged_leaves


def parse_ratchet_tree(data: bytes) -> list[bytes | None]:
    """``optional<Node> ratchet_tree<V>`` into the encoded LeafNode/ParentNode of each node (None: blank)."""
    r = Reader(data, "ratchet_tree")
    end = r.varint() + r.pos
    nodes: list[bytes | None] = []
    while r.pos < end:
        if r.u8() == 0:
            nodes.append(None)
            continue
        node_type = r.u8()
        assert node_type == (1 if len(nodes) % 2 == 0 else 2)
        start = r.pos
        (_skip_leaf_node if node_type == 1 else _skip_parent_node)(r)
        nodes.append(data[start : r.pos])
    r.done()
    return nodes


def _vector_cases(shared_dir: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(
        (shared_dir / "mls-test-vectors" / "tree-validation.json").read_text()
    )
    return cases


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_tree_validation_vectors(nb: Any, shared_dir: Path, impl: str) -> None:
    """Every node's tree hash for the RFC's tree-validation trees (truncated trees extended to full width)."""
    f = nb.tree_hashes if impl == "native" else reference.tree_hashes
    cases = _vector_cases(shared_dir)
    for case in cases:
        suite = cipher_suite(int(case["cipher_suite"]))
        nodes = parse_ratchet_tree(bytes.fromhex(case["tree"]))
        assert [h.hex() for h in f(suite.hash_name, nodes)] == case["tree_hashes"]
    assert len(cases) >= 90


def test_packed_tree_validation_vectors(nb: Any, shared_dir: Path) -> None:
    """The packed form - b"" for a blank node, all hashes in one buffer - of every vector tree."""
    for case in _vector_cases(shared_dir):
        alg = cipher_suite(int(case["cipher_suite"])).hash_name
        nodes = [node or b"" for node in parse_ratchet_tree(bytes.fromhex(case["tree"]))]
        got = bytes(nb.tree_hashes_packed(alg, nodes))
        assert got.hex() == "".join(case["tree_hashes"])
        assert reference.tree_hashes_packed(alg, nodes) == got


# ---- random trees ------------------------------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn, max_leaves: int = 70) -> tuple[str, list[bytes | None]]:
    alg = draw(hashes)
    n_leaves = draw(st.integers(1, max_leaves))
    blank = draw(st.floats(0.0, 1.0))
    rng = random.Random(draw(st.integers(0, 2**32)))
    nodes: list[bytes | None] = []
    for _ in range(2 * n_leaves - 1):
        # Empty encodings, short ones and some long enough to need 2- and 4-byte varints elsewhere.
        size = rng.choice([0, 1, rng.randrange(2, 300), rng.randrange(300, 20000)])
        nodes.append(None if rng.random() < blank else rng.randbytes(size))
    return alg, nodes


@settings(max_examples=150, deadline=None)
@given(case=trees())
def test_random_trees_match_reference(nb: Any, case: tuple[str, list[bytes | None]]) -> None:
    alg, nodes = case
    got = nb.tree_hashes(alg, nodes)
    assert got == reference.tree_hashes(alg, nodes)
    depth = (((len(nodes) + 1) // 2) - 1).bit_length()
    assert len(got) == (2 << depth) - 1 and all(len(h) == NH[alg] for h in got)


@settings(max_examples=150, deadline=None)
@given(case=trees())
def test_random_packed_trees_match_reference(nb: Any, case: tuple[str, list[bytes | None]]) -> None:
    """Packed: b"" is a blank node (so the drawn empty values are blank here)."""
    alg, drawn = case
    nodes = [node or b"" for node in drawn]
    got = bytes(nb.tree_hashes_packed(alg, nodes))
    assert got == reference.tree_hashes_packed(alg, nodes)
    assert got == b"".join(nb.tree_hashes(alg, [node or None for node in nodes]))


@settings(max_examples=150, deadline=None)
@given(case=trees(), data=st.data())
def test_random_span_trees_match_packed(
    nb: Any, case: tuple[str, list[bytes | None]], data: st.DataObject
) -> None:
    """Spans: the same values scattered in a larger source (filler between them, some order swapped,
    blanks pointing anywhere) hash exactly as packed back to back."""
    alg, drawn = case
    nodes = [node or b"" for node in drawn]
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    order = list(range(len(nodes)))
    if data.draw(st.booleans(), label="shuffle"):
        rng.shuffle(order)
    source, starts, lens = bytearray(rng.randbytes(rng.randrange(0, 4))), [0] * len(nodes), [0] * len(nodes)
    for x in order:
        starts[x], lens[x] = len(source), len(nodes[x])
        source += nodes[x] + rng.randbytes(rng.randrange(0, 3))
    for x, value in enumerate(nodes):
        if not value:
            starts[x] = rng.randrange(0, len(source) + 1)
    got = bytes(nb.tree_hashes_spans(alg, bytes(source), array("Q", starts), array("Q", lens)))
    assert got == bytes(nb.tree_hashes_packed(alg, nodes))
    assert got == reference.tree_hashes_spans(alg, bytes(source), starts, lens)


def test_span_argument_errors(nb: Any) -> None:
    """A span past the source, or a start and length count that differ, fail in both implementations."""
    for th in (nb.tree_hashes_spans, reference.tree_hashes_spans):
        assert bytes(th("sha256", b"xab", array("Q", [1, 0, 2]), array("Q", [1, 0, 1]))) == bytes(
            nb.tree_hashes_packed("sha256", [b"a", b"", b"b"])
        )
        with pytest.raises(CryptoError):
            th("sha256", b"xab", array("Q", [1, 0, 2]), array("Q", [1, 0, 2]))
        with pytest.raises(ValidationError):
            th("sha256", b"xab", array("Q", [1, 0]), array("Q", [1, 0, 1]))


def test_packed_value_lengths_across_block_boundaries(nb: Any) -> None:
    """Every leaf and parent value length from 1 to 300 bytes: the SHA-256 inputs then end at every
    offset of a 64-byte block, with the padding in the same block or the next (FIPS 180-4 §5.1.1)."""
    rng = random.Random(5)
    for n in range(1, 301):
        full, parent_only = [rng.randbytes(n) for _ in range(3)], [b"", rng.randbytes(n), b""]
        for nodes in (full, parent_only):
            got = bytes(nb.tree_hashes_packed("sha256", nodes))
            assert got == reference.tree_hashes_packed("sha256", nodes)


@settings(max_examples=150, deadline=None)
@given(case=trees(), data=st.data())
def test_path_update_equals_full_recompute(
    nb: Any, case: tuple[str, list[bytes | None]], data: st.DataObject
) -> None:
    alg, nodes = case
    before = nb.tree_hashes(alg, nodes)
    n_leaves = (len(nodes) + 1) // 2
    leaf = data.draw(st.integers(0, n_leaves - 1), label="leaf")
    depth = (n_leaves - 1).bit_length()
    # Change the leaf and every node of its direct path that lies within the given slots (blank or new).
    changed = list(nodes)
    for k in range(depth + 1):
        x = ((leaf >> k) << (k + 1)) + (1 << k) - 1
        if x < len(changed):
            changed[x] = data.draw(st.one_of(st.none(), st.binary(max_size=100)), label=f"node {x}")
    expected = reference.tree_hashes(alg, changed)
    assert nb.tree_hash_path(alg, changed, before, leaf) == expected
    assert reference.tree_hash_path(alg, changed, before, leaf) == expected


def test_small_trees_by_hand(nb: Any) -> None:
    """A one-leaf tree is its leaf; a two-leaf tree's root hashes both leaves (§7.8 layouts, sha256)."""
    import hashlib

    leaf0 = hashlib.sha256(b"\x01" + (0).to_bytes(4, "big") + b"\x01" + b"L0").digest()
    assert nb.tree_hashes("sha256", [b"L0"]) == [leaf0]
    leaf1 = hashlib.sha256(b"\x01" + (1).to_bytes(4, "big") + b"\x00").digest()
    root = hashlib.sha256(b"\x02" + b"\x00" + b"\x20" + leaf0 + b"\x20" + leaf1).digest()
    assert nb.tree_hashes("sha256", [b"L0", None, None]) == [leaf0, root, leaf1]
    # SHA-512's 64-byte hashes take a two-byte varint length (0x4040).
    l0 = hashlib.sha512(b"\x01\x00\x00\x00\x00\x00").digest()
    l1 = hashlib.sha512(b"\x01\x00\x00\x00\x01\x00").digest()
    r = hashlib.sha512(b"\x02\x01P" + b"\x40\x40" + l0 + b"\x40\x40" + l1).digest()
    assert nb.tree_hashes("sha512", [None, b"P", None]) == [l0, r, l1]


def test_large_tree(nb: Any) -> None:
    rng = random.Random(7)
    nodes = [rng.randbytes(rng.randrange(150, 250)) if i % 2 == 0 else (rng.randbytes(60) if i % 3 else None)
             for i in range(2 * 3000 - 1)]  # fmt: skip
    assert nb.tree_hashes("sha256", nodes) == reference.tree_hashes("sha256", nodes)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_tree_argument_errors(nb: Any, impl: str) -> None:
    th = nb.tree_hashes if impl == "native" else reference.tree_hashes
    path = nb.tree_hash_path if impl == "native" else reference.tree_hash_path
    for bad in ([], [b"a", b"b"], [None] * 4):
        with pytest.raises(ValidationError):
            th("sha256", bad)
    with pytest.raises(UnsupportedError):
        th("sha1", [b"a"])
    nodes: list[bytes | None] = [b"a", None, b"b"]
    good = th("sha256", nodes)
    with pytest.raises(ValidationError):
        path("sha256", nodes, good[:-1], 0)  # previous hashes do not cover the tree
    with pytest.raises(ValidationError):
        path("sha256", nodes, good, 2)  # no such leaf
    with pytest.raises(ValidationError):
        path("sha256", nodes, good, -1)
    with pytest.raises(ValidationError):
        path("sha256", nodes, [good[0], good[1], good[2][:31]], 0)  # a sibling hash of the wrong size
    with pytest.raises(TypeError):
        th("sha256", [b"a", 5, b"b"])


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_packed_argument_errors(nb: Any, impl: str) -> None:
    th = nb.tree_hashes_packed if impl == "native" else reference.tree_hashes_packed
    for bad in ([], [b"a", b"b"], [b""] * 4):
        with pytest.raises(ValidationError):
            th("sha256", bad)
    with pytest.raises(UnsupportedError):
        th("sha1", [b"a"])
    for item in (None, 5):  # a blank node is b"", not None
        with pytest.raises(TypeError):
            th("sha256", [b"a", item, b"b"])
