"""The shortcuts that make adding and joining large groups cheaper (issue 13) give exactly what the long
way gives: TBS encodings sliced from remembered bytes, encodings remembered for nested values, batched
signature verification (threads included) consulted by the one-by-one checks, a Welcome decoded once,
hash invalidation that stops early, and direct paths computed level by level."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from mls.client import Client
from mls.credentials.credential import Credential
from mls.crypto import signature_batch
from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.key_store import SoftwareKeyStore
from mls.errors import ValidationError
from mls.group.commit_options import CommitOptions
from mls.group.group import Group
from mls.group.welcome import welcome_from_message
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode
from mls.tree.leaf_validation import LeafPolicy, leaf_signature_check
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.tree_validation import verify_leaves
from mls.wire import framing
from mls.wire.codec import Writer
from mls.wire.key_package import KeyPackage

#: More members than signature_batch.PARALLEL_THRESHOLD, so that batches go to threads.
MANY = signature_batch.PARALLEL_THRESHOLD + 6


def client(name: bytes, suite: int = 1) -> Client:
    return Client(SoftwareKeyStore(), suite, Credential.basic(name))


@pytest.fixture
def two_threads() -> object:
    before = signature_batch.verify_threads()
    signature_batch.set_verify_threads(2)
    yield
    signature_batch.set_verify_threads(before)


def flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _reencoded(value: KeyPackage | LeafNode, *omit: str) -> bytes:
    """The encoding without ``omit``, field by field, from a copy that remembers nothing."""
    fresh = dataclasses.replace(value)
    assert "_wire" not in fresh.__dict__
    w = Writer()
    fresh._write_fields(w, fresh._unselected() | frozenset(omit))
    return w.getvalue()


# ---- encodings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", [1, 2, 5])
def test_tbs_slices_equal_the_field_by_field_encoding(suite: int) -> None:
    creator, joiner = client(b"creator", suite), client(b"joiner", suite)
    kp = joiner.key_package().key_package
    group = creator.create_group()
    group.commit(CommitOptions(add=[kp], force_path=True))
    group.merge_pending_commit()
    decoded_kp = KeyPackage.from_bytes(kp.to_bytes())
    assert decoded_kp.tbs() == _reencoded(kp, "signature") == kp.tbs()
    tree = RatchetTree.decode(group.state.tree.cs, group.state.tree.encode())
    for index, leaf in tree.leaves():  # a commit-source leaf (parent_hash arm) and a key_package one
        assert "_wire" in leaf.__dict__
        group_id = group.state.context.group_id
        in_group = leaf.leaf_node_source != 1
        assert leaf.tbs(group_id if in_group else None, index if in_group else None).startswith(
            _reencoded(leaf, "signature")
        )
        assert leaf.to_bytes_without("signature") == _reencoded(leaf, "signature")
        # Fields that are not the last ones written are left out by encoding the rest.
        assert leaf.to_bytes_without("encryption_key") == _reencoded(leaf, "encryption_key")
        assert leaf.to_bytes_without("extensions", "signature") == _reencoded(leaf, "extensions", "signature")


def test_nested_values_remember_their_encoding() -> None:
    kp = client(b"member").key_package().key_package
    fresh = dataclasses.replace(kp, leaf_node=dataclasses.replace(kp.leaf_node))
    encoded = fresh.to_bytes()
    assert encoded == kp.to_bytes()
    assert fresh.leaf_node.__dict__["_wire"] == dataclasses.replace(kp.leaf_node).to_bytes()
    assert fresh.leaf_node.credential.__dict__["_wire"] == kp.leaf_node.credential.to_bytes()


# ---- batched signature verification -----------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("suite", [1, 2, 4])
def test_verify_many_gives_verify_item_by_item(threads: int, suite: int) -> None:
    scheme = cipher_suite(suite).signature
    signers = [scheme.generate() for _ in range(3)]
    items = []
    for i in range(MANY):
        signer = signers[i % 3]
        data = b"message %d" % i
        sig = signer.sign(data)
        if i % 7 == 3:
            sig = bytes([sig[0] ^ 1]) + sig[1:]  # a bad signature
        elif i % 11 == 5:
            data += b"!"  # signed something else
        key = signer.public_key if i % 13 != 4 else b"\x00" * 5  # a malformed key
        items.append((key, data, sig))
    expected = [scheme.verify(*item) for item in items]
    assert True in expected and False in expected
    before = signature_batch.verify_threads()
    signature_batch.set_verify_threads(threads)
    try:
        assert signature_batch.verify_many(scheme, items) == expected
        assert signature_batch.verify_many(scheme, items[:5]) == expected[:5]
        assert signature_batch.verify_many(scheme, []) == []
    finally:
        signature_batch.set_verify_threads(before)


def test_set_verify_threads_refuses_zero() -> None:
    with pytest.raises(ValueError):
        signature_batch.set_verify_threads(0)


def test_prefetched_results_are_seen_inside_the_block_only_and_in_this_thread(two_threads: object) -> None:
    cs = cipher_suite(1)
    signer = cs.generate_signer()
    good = (
        signer.public_key,
        "LeafNodeTBS",
        b"content",
        cs.sign_with_label(signer, "LeafNodeTBS", b"content"),
    )
    bad = (signer.public_key, "LeafNodeTBS", b"other", good[3])
    filler = [(signer.public_key, "LeafNodeTBS", b"filler %d" % i, good[3]) for i in range(MANY)]
    data = cs.sign_content("LeafNodeTBS", b"content")
    assert signature_batch.prefetched_result(cs.signature, signer.public_key, data, good[3]) is None
    with cs.prefetch_verifications([good, bad]):  # too few to pay off: nothing is prefetched
        assert signature_batch.prefetched_result(cs.signature, signer.public_key, data, good[3]) is None
        assert cs.verify_with_label(*good) and not cs.verify_with_label(*bad)
    seen: list[bool | None] = []
    with cs.prefetch_verifications([good, bad, *filler]):
        assert signature_batch.prefetched_result(cs.signature, signer.public_key, data, good[3]) is True
        other = cs.sign_content("LeafNodeTBS", b"other")
        assert signature_batch.prefetched_result(cs.signature, signer.public_key, other, good[3]) is False
        assert cs.verify_with_label(*good) and not cs.verify_with_label(*bad)
        t = threading.Thread(
            target=lambda: seen.append(
                signature_batch.prefetched_result(cs.signature, signer.public_key, data, good[3])
            )
        )
        t.start()
        t.join()
        with cs.prefetch_verifications(filler[:-1]):  # an inner block keeps the outer results
            assert signature_batch.prefetched_result(cs.signature, signer.public_key, data, good[3])
    assert seen == [None]
    signature_batch.set_verify_threads(1)  # one thread: nothing to gain from a batch
    with cs.prefetch_verifications([good, bad, *filler]):
        assert signature_batch.prefetched_result(cs.signature, signer.public_key, data, good[3]) is None
        assert cs.verify_with_label(*good) and not cs.verify_with_label(*bad)
    assert signature_batch.prefetched_result(cs.signature, signer.public_key, data, good[3]) is None


@pytest.fixture(scope="module")
def large_group() -> tuple[Group, list[Client], bytes]:
    """A group of MANY + 1 members made in one commit: the first joiner's group, the other joiners (who
    have not joined yet) and the Welcome."""
    creator = client(b"creator")
    joiners = [client(b"member-%d" % i) for i in range(MANY)]
    group = creator.create_group()
    staged = group.commit(CommitOptions(add=[j.key_package().key_package for j in joiners], force_path=True))
    group.merge_pending_commit()
    assert staged.welcome is not None
    return joiners[0].join(staged.welcome), joiners[1:], staged.welcome


@pytest.mark.parametrize("position", [1, MANY // 2, MANY])
def test_a_bad_leaf_signature_in_a_large_tree_is_found(
    two_threads: object, large_group: tuple[Group, list[Client], bytes], position: int
) -> None:
    group = large_group[0]
    tree = group.state.tree.copy()
    group_id = group.state.context.group_id
    verify_leaves(tree, group_id, LeafPolicy())
    leaf = tree.leaf(position)
    assert leaf is not None
    tree.set_leaf(position, dataclasses.replace(leaf, signature=flip_last_bit(leaf.signature)))
    with pytest.raises(ValidationError) as e:
        verify_leaves(tree, group_id, LeafPolicy())
    assert e.value.rule == "7.3/leaf-signature"


@pytest.mark.parametrize("which", ["key_package", "leaf"])
def test_a_bad_signature_among_many_added_key_packages_is_found(two_threads: object, which: str) -> None:
    creator = client(b"creator")
    kps = [client(b"m-%d" % i).key_package().key_package for i in range(MANY)]
    i = MANY - 2
    if which == "key_package":
        kps[i] = dataclasses.replace(kps[i], signature=flip_last_bit(kps[i].signature))
        rule = "10.1/key-package-signature"
    else:
        leaf = kps[i].leaf_node
        kps[i] = dataclasses.replace(
            kps[i], leaf_node=dataclasses.replace(leaf, signature=leaf.signature[::-1])
        )
        rule = "7.3/leaf-signature"
    group = creator.create_group()
    with pytest.raises(ValidationError) as e:
        group.commit(CommitOptions(add=kps, force_path=True))
    assert e.value.rule == rule
    assert group.epoch == 0 and group.state.tree.member_count() == 1


def test_a_key_package_with_a_member_leaf_among_many_is_refused_by_its_rule(two_threads: object) -> None:
    """Its leaf's signature cannot be checked as a key_package leaf's: the batch leaves it out and the
    leaf-source check rejects it, as it does one KeyPackage at a time."""
    creator = client(b"creator")
    kps = [client(b"m-%d" % i).key_package().key_package for i in range(MANY)]
    leaf = kps[3].leaf_node
    member_leaf = dataclasses.replace(leaf, leaf_node_source=3, lifetime=None, parent_hash=b"")
    kps[3] = dataclasses.replace(kps[3], leaf_node=member_leaf)
    group = creator.create_group()
    with pytest.raises(ValidationError) as e:
        group.commit(CommitOptions(add=kps, force_path=True))
    assert e.value.rule == "7.3/leaf-node-source"
    with pytest.raises(ValidationError) as e:
        group.commit(CommitOptions(add=[kps[3]], force_path=True))
    assert e.value.rule == "7.3/leaf-node-source"


def test_many_members_join_and_agree(
    two_threads: object, large_group: tuple[Group, list[Client], bytes]
) -> None:
    first, joiners, welcome = large_group
    members = [first, *(j.join(welcome) for j in joiners[:3])]
    assert len({m.epoch_authenticator for m in members}) == 1
    assert all(m.state.tree.member_count() == MANY + 1 for m in members)


# ---- joining ----------------------------------------------------------------------------------------


def test_client_join_decodes_the_welcome_once(monkeypatch: pytest.MonkeyPatch) -> None:
    creator, joiner = client(b"creator"), client(b"joiner")
    group = creator.create_group()
    staged = group.commit(CommitOptions(add=[joiner.key_package().key_package]))
    group.merge_pending_commit()
    assert staged.welcome is not None
    decoded = []
    real = framing.MLSMessage.from_bytes.__func__  # type: ignore[attr-defined]

    def counting(cls: type[framing.MLSMessage], data: bytes) -> framing.MLSMessage:
        decoded.append(len(data))
        return real(cls, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(framing.MLSMessage, "from_bytes", classmethod(counting))
    joined = joiner.join(staged.welcome)
    assert decoded == [len(staged.welcome)]
    assert joined.epoch_authenticator == group.epoch_authenticator


def test_group_join_takes_a_decoded_welcome() -> None:
    creator, joiner = client(b"creator"), client(b"joiner")
    group = creator.create_group()
    staged = group.commit(CommitOptions(add=[joiner.key_package().key_package]))
    group.merge_pending_commit()
    assert staged.welcome is not None
    welcome = welcome_from_message(staged.welcome)
    assert welcome_from_message(welcome) is welcome
    assert joiner.join(welcome).epoch_authenticator == group.epoch_authenticator


# ---- tree caches and arithmetic -----------------------------------------------------------------------


def test_adding_leaves_one_by_one_keeps_the_tree_hash_right() -> None:
    cs = cipher_suite(1)
    leaves = [client(b"m-%d" % i).key_package().key_package.leaf_node for i in range(20)]
    tree = RatchetTree.one_member(cs, leaves[0])
    for i, leaf in enumerate(leaves[1:], 1):
        tree.add_leaf(leaf)
        if i % 3 == 0:  # hashes computed between some adds, so that invalidation meets cached ones
            tree.tree_hash()
        if i == 10:
            tree.remove_leaf(4)
    fresh = RatchetTree.decode(cs, tree.encode())
    assert tree.tree_hash() == fresh.tree_hash()
    assert tree.all_node_hashes() == fresh.all_node_hashes()


@pytest.mark.parametrize("n_leaves", [1, 2, 4, 8, 64])
def test_direct_path_and_copath_follow_parent(n_leaves: int) -> None:
    r = tm.root(n_leaves)
    for x in range(tm.node_width(n_leaves)):
        path, node = [], x
        while node != r:
            node = tm.parent(node, n_leaves)
            path.append(node)
        assert tm.direct_path(x, n_leaves) == path
        assert tm.copath(x, n_leaves) == [tm.sibling(y, n_leaves) for y in [x, *path][:-1]]
    with pytest.raises(ValueError):
        tm.direct_path(tm.node_width(n_leaves), n_leaves)


def test_leaf_signature_check_names_the_leaf_tbs() -> None:
    cs = cipher_suite(1)
    leaf = client(b"m").key_package().key_package.leaf_node
    key, label, tbs, sig = leaf_signature_check(leaf, None, None)
    assert (key, label, sig) == (leaf.signature_key, "LeafNodeTBS", leaf.signature)
    assert tbs == leaf.tbs() and cs.verify_with_label(key, label, tbs, sig)
