"""The secret tree and its per-sender hash ratchets (RFC 9420 §9, §9.1, §9.2), and the sender-data key
and nonce (§6.3.2).

The tree starts from the epoch's ``encryption_secret`` at the root. Node secrets are derived lazily,
only along the direct path of a leaf that is asked for, with ``ExpandWithLabel(., "tree", "left"|"right",
KDF.Nh)``. Deriving down the path consumes each path node: its secret is deleted and only the copath
siblings are kept (§9.2). A leaf secret seeds two :class:`SenderRatchet` objects, ``"handshake"`` and
``"application"``, and is then deleted as well.

A ratchet at generation ``j`` derives ``key``/``nonce`` for ``j`` and the ratchet secret for ``j+1`` with
``DeriveTreeSecret`` (:func:`ratchet_step`, the hot step). When the crypto backend batches
(:func:`~mls.crypto.backend.batch_ops`: the native backend does), the three values of a step come from one
``BatchOps.ratchet_steps`` call, one generation per call (a fast-forward steps through the skipped
generations, keeping their keys). Receiving side (:meth:`SenderRatchet.get`): a generation ahead of the
ratchet fast-forwards it, keeping the keys of the generations it skips within the out-of-order window of
:class:`RatchetConfig`; a generation may be obtained once only — its key is deleted when handed out —
and keys that fall below the window are erased. :meth:`SenderRatchet.peek` gives the same key without
consuming it, so that a receiver consumes a key only after the message has decrypted (§9.2). Sending
side: :meth:`SenderRatchet.next`.

``to_state()``/``from_state()`` give a JSON-compatible dict (secrets as hex) for group-state persistence.
Python ``bytes`` cannot be wiped in place: "deleted" here means every reference this module holds is
dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from mls.crypto.backend import batch_ops
from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.errors import MLSError, StateError, ValidationError
from mls.tree import tree_math as tm

T = TypeVar("T")

#: Generations are uint32 on the wire (§6.3.2 SenderData, §9.1 DeriveTreeSecret).
MAX_GENERATION = (1 << 32) - 1


class RatchetType(StrEnum):
    """The two ratchets of each leaf (§9): handshake (proposals, commits) and application messages."""

    handshake = "handshake"
    application = "application"


@dataclass(frozen=True)
class RatchetConfig:
    """The out-of-order window of a receiving ratchet (the "reasonable amount of time" of §9.2).

    ``out_of_order_tolerance`` — how many generations below the newest one derived keep their (unused)
    keys, so late messages still decrypt; older keys are erased.
    ``max_forward_distance`` — how many generations a receiver may skip ahead in one step; a message
    further ahead is rejected instead of making the receiver derive (and store) that many keys.
    """

    out_of_order_tolerance: int = 5
    max_forward_distance: int = 1000

    def __post_init__(self) -> None:
        if self.out_of_order_tolerance < 0 or self.max_forward_distance < 0:
            raise ValueError("ratchet window sizes must not be negative")

    def to_state(self) -> dict[str, int]:
        return {
            "out_of_order_tolerance": self.out_of_order_tolerance,
            "max_forward_distance": self.max_forward_distance,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RatchetConfig:
        return cls(int(state["out_of_order_tolerance"]), int(state["max_forward_distance"]))


@dataclass(frozen=True)
class KeyNonce:
    """An AEAD key and nonce."""

    key: bytes = field(repr=False)
    nonce: bytes = field(repr=False)


@dataclass(frozen=True)
class RatchetKey(KeyNonce):
    """The key and nonce of one ratchet generation (``ratchet_key_[N]_[j]``, ``ratchet_nonce_[N]_[j]``)."""

    generation: int


# ------------------------------------------------------------------------------------------------
# Derivation steps
# ------------------------------------------------------------------------------------------------


def ratchet_step(cs: CipherSuite, secret: bytes, generation: int) -> tuple[RatchetKey, bytes]:
    """One ratchet step (§9.1): the key and nonce of ``generation`` and the ratchet secret of the next."""
    ops = batch_ops()
    if ops is not None:
        key, nonce, next_secret = ops.ratchet_steps(cs.hash_name, secret, generation, 1, cs.n_k, cs.n_n)
        return RatchetKey(key, nonce, generation), next_secret
    key = cs.derive_tree_secret(secret, "key", generation, cs.n_k)
    nonce = cs.derive_tree_secret(secret, "nonce", generation, cs.n_n)
    next_secret = cs.derive_tree_secret(secret, "secret", generation, cs.n_h)
    return RatchetKey(key, nonce, generation), next_secret


def child_secrets(cs: CipherSuite, node_secret: bytes) -> tuple[bytes, bytes]:
    """The secrets of the left and right children of a secret-tree node (§9)."""
    return (
        cs.expand_with_label(node_secret, "tree", b"left", cs.n_h),
        cs.expand_with_label(node_secret, "tree", b"right", cs.n_h),
    )


def ratchet_root(cs: CipherSuite, leaf_secret: bytes, ratchet_type: RatchetType) -> bytes:
    """``handshake_ratchet_secret_[N]_[0]`` or ``application_ratchet_secret_[N]_[0]`` of a leaf (§9)."""
    return cs.expand_with_label(leaf_secret, ratchet_type.value, b"", cs.n_h)


def sender_data_key_nonce(cs: CipherSuite, sender_data_secret: bytes, ciphertext: bytes) -> KeyNonce:
    """The SenderData AEAD key and nonce (§6.3.2), from the first ``KDF.Nh`` bytes of the ciphertext."""
    ops = batch_ops()
    if ops is not None:
        return KeyNonce(
            *ops.sender_data_key_nonce(cs.hash_name, sender_data_secret, ciphertext, cs.n_k, cs.n_n)
        )
    sample = ciphertext[: cs.n_h]
    return KeyNonce(
        cs.expand_with_label(sender_data_secret, "key", sample, cs.n_k),
        cs.expand_with_label(sender_data_secret, "nonce", sample, cs.n_n),
    )


# ------------------------------------------------------------------------------------------------
# Sender ratchet
# ------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SenderRatchet:
    """One hash ratchet of one leaf (§9.1) with the deletion rules of §9.2.

    ``generation`` is the generation whose ratchet secret is held: every generation below it has been
    handed out or skipped, and only skipped ones inside the window keep their keys.
    """

    cs: CipherSuite = field(repr=False)
    secret: bytes = field(repr=False)
    generation: int = 0
    config: RatchetConfig = field(default_factory=RatchetConfig)
    _retained: dict[int, RatchetKey] = field(default_factory=dict, repr=False)

    @property
    def retained_generations(self) -> list[int]:
        """Generations below ``generation`` whose keys are still held for out-of-order messages."""
        return sorted(self._retained)

    def next(self) -> RatchetKey:
        """Sending side: the key and nonce of the next generation, which is consumed."""
        return self._advance()

    def get(self, generation: int) -> RatchetKey:
        """Receiving side: the key and nonce of ``generation``, which is consumed (§9.2)."""
        self._check_receivable(generation)
        if generation < self.generation:
            return self._retained.pop(generation)
        floor = generation - self.config.out_of_order_tolerance
        while self.generation < generation:
            skipped = self._advance()
            if skipped.generation >= floor:
                self._retained[skipped.generation] = skipped
        return self._advance()

    def peek(self, generation: int) -> RatchetKey:
        """Receiving side, without consuming: the key and nonce :meth:`get` would return, with the same
        checks, leaving the ratchet unchanged. §9.2 counts a key as consumed only once a message has
        *successfully* decrypted with it, so a receiver peeks, decrypts, and then calls :meth:`get`."""
        self._check_receivable(generation)
        if generation < self.generation:
            return self._retained[generation]
        secret, g = self.secret, self.generation
        while True:
            key, secret = ratchet_step(self.cs, secret, g)
            if g == generation:
                return key
            g += 1

    def _check_receivable(self, generation: int) -> None:
        _check_generation(generation)
        if generation < self.generation and generation not in self._retained:
            raise ValidationError(
                "9.2/generation-consumed",
                f"the key of generation {generation} was already used or has been erased",
            )
        if generation - self.generation > self.config.max_forward_distance:
            raise ValidationError(
                "15.3/forward-distance",
                f"generation {generation} is more than {self.config.max_forward_distance} "
                f"generations ahead of the ratchet (at {self.generation})",
            )

    def _advance(self) -> RatchetKey:
        if self.generation > MAX_GENERATION:
            raise StateError("RFC 9420 §9.1: the ratchet has used every uint32 generation")
        key, self.secret = ratchet_step(self.cs, self.secret, self.generation)
        self.generation += 1
        self._erase_below_window()
        return key

    def _erase_below_window(self) -> None:
        floor = self.generation - 1 - self.config.out_of_order_tolerance
        for g in [g for g in self._retained if g < floor]:
            del self._retained[g]

    def to_state(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "secret": self.secret.hex(),
            "retained": [[k.generation, k.key.hex(), k.nonce.hex()] for k in self._retained.values()],
        }

    @classmethod
    def from_state(cls, cs: CipherSuite, state: dict[str, Any], config: RatchetConfig) -> SenderRatchet:
        generation = int(state["generation"])
        retained = {
            int(g): RatchetKey(bytes.fromhex(k), bytes.fromhex(n), int(g)) for g, k, n in state["retained"]
        }
        if not 0 <= generation <= MAX_GENERATION + 1 or any(not 0 <= g < generation for g in retained):
            raise ValueError("ratchet generations out of range")
        return cls(cs, _secret(cs, state["secret"]), generation, config, retained)


def _check_generation(generation: int) -> None:
    if not 0 <= generation <= MAX_GENERATION:
        raise ValidationError("6.3.2/generation-uint32", "generation is not a uint32")


# ------------------------------------------------------------------------------------------------
# Secret tree
# ------------------------------------------------------------------------------------------------


class SecretTree:
    """The secret tree of one epoch (§9): lazily derived node secrets and per-leaf sender ratchets."""

    __slots__ = ("_nodes", "_ratchets", "config", "cs", "n_leaves")

    def __init__(
        self, cs: CipherSuite, encryption_secret: bytes, n_leaves: int, config: RatchetConfig | None = None
    ) -> None:
        self.cs = cs
        self.n_leaves = n_leaves
        self.config = config or RatchetConfig()
        self._nodes: dict[int, bytes] = {tm.root(n_leaves): encryption_secret}
        self._ratchets: dict[tuple[int, RatchetType], SenderRatchet] = {}

    def __repr__(self) -> str:
        return (
            f"SecretTree(suite={self.cs.suite_id}, n_leaves={self.n_leaves}, "
            f"node_secrets_held={sorted(self._nodes)}, ratchets={len(self._ratchets)})"
        )

    @property
    def held_nodes(self) -> list[int]:
        """Node indices whose secrets are still held (not yet consumed)."""
        return sorted(self._nodes)

    def ratchet(self, leaf: int, ratchet_type: RatchetType) -> SenderRatchet:
        """The ``ratchet_type`` ratchet of ``leaf``, deriving the leaf's secret on first use."""
        self._check_leaf(leaf)
        r = self._ratchets.get((leaf, ratchet_type))
        if r is None:
            self._start_ratchets(leaf)
            r = self._ratchets[(leaf, ratchet_type)]
        return r

    def _check_leaf(self, leaf: int) -> None:
        if not 0 <= leaf < self.n_leaves:
            raise ValidationError(
                "9/leaf-index", f"leaf {leaf} is outside the secret tree of {self.n_leaves} leaves"
            )

    def key_nonce(self, leaf: int, ratchet_type: RatchetType, generation: int) -> RatchetKey:
        """Receiving side: the key and nonce of ``generation`` of a leaf's ratchet (consumed)."""
        return self.ratchet(leaf, ratchet_type).get(generation)

    def peek_key_nonce(self, leaf: int, ratchet_type: RatchetType, generation: int) -> RatchetKey:
        """Receiving side, not consumed (see :meth:`SenderRatchet.peek`); :meth:`key_nonce` consumes it.

        Nothing is changed, not even for a sender not heard from yet: its ratchet is derived on the side
        and only started (node secrets consumed) when the key is taken with :meth:`key_nonce`.
        """
        self._check_leaf(leaf)
        r = self._ratchets.get((leaf, ratchet_type))
        if r is None:
            root = ratchet_root(self.cs, self._node_secret(tm.leaf_to_node(leaf)), ratchet_type)
            r = SenderRatchet(self.cs, root, 0, self.config)
        return r.peek(generation)

    def next_key_nonce(self, leaf: int, ratchet_type: RatchetType) -> RatchetKey:
        """Sending side: the key and nonce of the next generation of a leaf's ratchet (consumed)."""
        return self.ratchet(leaf, ratchet_type).next()

    def _start_ratchets(self, leaf: int) -> None:
        leaf_secret = self._take_node_secret(tm.leaf_to_node(leaf))
        for rt in RatchetType:
            self._ratchets[(leaf, rt)] = SenderRatchet(
                self.cs, ratchet_root(self.cs, leaf_secret, rt), 0, self.config
            )

    def _node_secret(self, x: int) -> bytes:
        """The secret of node ``x``, derived from its lowest held ancestor without consuming anything."""
        start = next((p for p in [x, *tm.direct_path(x, self.n_leaves)] if p in self._nodes), None)
        if start is None:
            raise StateError(f"RFC 9420 §9.2: the secret of tree node {x} has already been consumed")
        node, secret = start, self._nodes[start]
        while node != x:
            left_secret, right_secret = child_secrets(self.cs, secret)
            node, secret = (tm.left(node), left_secret) if x < node else (tm.right(node), right_secret)
        return secret

    def _take_node_secret(self, x: int) -> bytes:
        """Remove and return the secret of node ``x``, deriving it from its lowest held ancestor."""
        start = next((p for p in [x, *tm.direct_path(x, self.n_leaves)] if p in self._nodes), None)
        if start is None:
            raise StateError(f"RFC 9420 §9.2: the secret of tree node {x} has already been consumed")
        node, secret = start, self._nodes.pop(start)
        while node != x:
            left_secret, right_secret = child_secrets(self.cs, secret)
            lo, hi = tm.left(node), tm.right(node)
            if x < node:
                node, secret, self._nodes[hi] = lo, left_secret, right_secret
            else:
                node, secret, self._nodes[lo] = hi, right_secret, left_secret
        return secret

    # ---- persistence ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """A JSON-compatible snapshot (it holds secrets: store it as such)."""
        return {
            "cipher_suite": self.cs.suite_id,
            "n_leaves": self.n_leaves,
            "config": self.config.to_state(),
            "nodes": [[x, s.hex()] for x, s in sorted(self._nodes.items())],
            "ratchets": [
                {"leaf": leaf, "type": rt.value, **r.to_state()} for (leaf, rt), r in self._ratchets.items()
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SecretTree:
        """Rebuild a tree from :meth:`to_state` output; :class:`StateError` when it is malformed."""
        return _parse_state("secret tree", lambda: cls._from_state(state))

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> SecretTree:
        tree = cls.__new__(cls)
        tree.cs = cipher_suite(int(state["cipher_suite"]))
        tree.n_leaves = int(state["n_leaves"])
        tm.root(tree.n_leaves)  # validates the leaf count
        tree.config = RatchetConfig.from_state(state["config"])
        tree._nodes = {int(x): _secret(tree.cs, s) for x, s in state["nodes"]}
        tree._ratchets = {
            (int(r["leaf"]), RatchetType(r["type"])): SenderRatchet.from_state(tree.cs, r, tree.config)
            for r in state["ratchets"]
        }
        width = tm.node_width(tree.n_leaves)
        if any(not 0 <= x < width for x in tree._nodes) or any(
            not 0 <= leaf < tree.n_leaves for leaf, _ in tree._ratchets
        ):
            raise ValueError("node or leaf index outside the tree")
        return tree


def _secret(cs: CipherSuite, value: str) -> bytes:
    secret = bytes.fromhex(value)
    if len(secret) != cs.n_h:
        raise ValueError("secret length")
    return secret


def _parse_state(what: str, build: Callable[[], T]) -> T:
    try:
        return build()
    except MLSError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError):
        raise StateError(f"the stored {what} state is malformed") from None


__all__ = [
    "MAX_GENERATION",
    "KeyNonce",
    "RatchetConfig",
    "RatchetKey",
    "RatchetType",
    "SecretTree",
    "SenderRatchet",
    "child_secrets",
    "ratchet_root",
    "ratchet_step",
    "sender_data_key_nonce",
]
