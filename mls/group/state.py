"""The state of one member in one group (RFC 9420 §8, §9, §12): an explicit, versioned, serialisable value.

:class:`GroupState` holds everything a member knows in the current epoch: the GroupContext, the public
ratchet tree, the member's private path keys (by reference for keys held by a KeyStore, as values for
parent-node keys derived from path secrets), the epoch secrets, the secret tree, the interim transcript
hash, the epoch's proposal cache, and a bounded window of past epochs kept to read late application
messages (§14 of RFC 9750; "retention" below).

:meth:`GroupState.to_bytes` / :meth:`GroupState.from_bytes` give a stable JSON encoding tagged with
``STATE_VERSION``; it contains secrets and must be sealed at rest by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore
from mls.errors import KeyStoreError, MLSError, StateError
from mls.schedule.key_schedule import EpochSecrets
from mls.schedule.secret_tree import RatchetConfig, SecretTree
from mls.tree.leaf_validation import LeafPolicy
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.treekem import PathKeys
from mls.wire.framing import AuthenticatedContent, Sender
from mls.wire.group_context import GroupContext
from mls.wire.proposals import Proposal, ReInit

STATE_VERSION = 1
#: Version tag of :meth:`GroupState.ratchet_state_to_bytes`.
RATCHET_STATE_VERSION = 1


@dataclass(frozen=True)
class DestroyedHpkeKey:
    """The leaf key of a member a commit removed (§12.4.2): destroyed with the removal, known by reference
    and public key only, so the removed member's state still loads, reads and can be deleted."""

    key_ref: bytes
    public_key: bytes = b""

    def dh(self, peer_public_key: bytes) -> bytes:
        raise StateError("RFC 9420 §12.4.2: this member was removed; its leaf key was destroyed")


@dataclass
class GroupConfig:
    """Tunable behaviour of one group member."""

    ratchet: RatchetConfig = field(default_factory=RatchetConfig)
    #: How many past epochs are kept to decrypt late application messages (0 = none).
    past_epochs: int = 2
    #: How many past epochs' resumption PSKs are kept (§8.6).
    resumption_psks: int = 8
    #: PrivateMessage plaintexts are padded to a multiple of this many bytes (0 = no padding, §6.3.1).
    padding_block: int = 32
    leaf_policy: LeafPolicy = field(default_factory=LeafPolicy)

    def to_state(self) -> dict[str, Any]:
        return {
            "ratchet": self.ratchet.to_state(),
            "past_epochs": self.past_epochs,
            "resumption_psks": self.resumption_psks,
            "padding_block": self.padding_block,
        }

    @classmethod
    def from_state(cls, s: dict[str, Any], leaf_policy: LeafPolicy | None = None) -> GroupConfig:
        return cls(
            RatchetConfig.from_state(s["ratchet"]),
            int(s["past_epochs"]),
            int(s["resumption_psks"]),
            int(s["padding_block"]),
            leaf_policy or LeafPolicy(),
        )


@dataclass
class CachedProposal:
    """A proposal received (or sent) in this epoch, kept for commits by reference (§12.1)."""

    ref: bytes
    proposal: Proposal
    sender: Sender
    authenticated_content: bytes

    @classmethod
    def from_content(cls, ref: bytes, content: AuthenticatedContent) -> CachedProposal:
        assert content.content.proposal is not None
        return cls(ref, content.content.proposal, content.content.sender, content.to_bytes())


@dataclass
class PastEpoch:
    """What is kept of a past epoch to read its late application messages (§9.2 deletion schedule)."""

    epoch: int
    context: GroupContext
    secret_tree: SecretTree = field(repr=False)
    sender_data_secret: bytes = field(repr=False)
    #: Signature key of every member leaf in that epoch.
    signature_keys: dict[int, bytes] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "context": self.context.to_bytes().hex(),
            "secret_tree": self.secret_tree.to_state(),
            "sender_data_secret": self.sender_data_secret.hex(),
            "signature_keys": {str(k): v.hex() for k, v in self.signature_keys.items()},
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> PastEpoch:
        return cls(
            int(s["epoch"]),
            GroupContext.from_bytes(bytes.fromhex(s["context"])),
            SecretTree.from_state(s["secret_tree"]),
            bytes.fromhex(s["sender_data_secret"]),
            {int(k): bytes.fromhex(v) for k, v in s["signature_keys"].items()},
        )


@dataclass
class GroupState:
    """One member's view of one group in one epoch."""

    context: GroupContext
    tree: RatchetTree
    keys: PathKeys
    signer_ref: bytes
    secrets: EpochSecrets = field(repr=False)
    secret_tree: SecretTree = field(repr=False)
    interim_transcript_hash: bytes
    confirmation_tag: bytes
    config: GroupConfig = field(default_factory=GroupConfig)
    proposals: dict[bytes, CachedProposal] = field(default_factory=dict)
    past_epochs: list[PastEpoch] = field(default_factory=list)
    resumption_psks: dict[int, bytes] = field(default_factory=dict, repr=False)
    #: Keys this group must never destroy (a last-resort KeyPackage's leaf key, shared by every group
    #: joined with it; its owner retires it).
    retained_keys: frozenset[bytes] = frozenset()
    #: Leaf keys of this member's own Update proposals in this epoch: public key -> key reference.
    update_keys: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    #: Set once a commit with a ReInit proposal was merged: the group must not be used any more (§11.2).
    reinit: ReInit | None = None
    #: False once a commit removed this member (§12.4.2: it must not send any more).
    active: bool = True

    @property
    def cs(self) -> CipherSuite:
        return self.tree.cs

    @property
    def epoch(self) -> int:
        return self.context.epoch

    @property
    def group_id(self) -> bytes:
        return self.context.group_id

    @property
    def own_leaf(self) -> int:
        return self.keys.own_leaf

    @property
    def removed_in_epoch(self) -> int | None:
        """The epoch of the commit that removed this member (its state stays at the one before), or None."""
        return None if self.active else self.epoch + 1

    def mark_removed(self) -> None:
        """A commit removed this member (§12.4.2): it holds no private key of the group any more (the leaf
        and Update keys died with the removal, parent-node keys are forgotten) and must not send."""
        self.active = False
        leaf = self.tree.leaf(self.keys.own_leaf)
        public = leaf.encryption_key if leaf is not None else b""
        self.keys = PathKeys(self.keys.own_leaf, DestroyedHpkeKey(self.keys.leaf_key.key_ref, public))
        self.update_keys = {}
        self.proposals = {}

    # ---- serialisation -------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "context": self.context.to_bytes().hex(),
            "tree": self.tree.encode().hex(),
            "own_leaf": self.keys.own_leaf,
            "leaf_key_ref": self.keys.leaf_key.key_ref.hex(),
            "node_keys": {str(x): _private_bytes(k).hex() for x, k in self.keys.node_keys.items()},
            "signer_ref": self.signer_ref.hex(),
            "secrets": self.secrets.to_state(),
            "secret_tree": self.secret_tree.to_state(),
            "interim_transcript_hash": self.interim_transcript_hash.hex(),
            "confirmation_tag": self.confirmation_tag.hex(),
            "config": self.config.to_state(),
            "proposals": [[p.ref.hex(), p.authenticated_content.hex()] for p in self.proposals.values()],
            "past_epochs": [p.to_state() for p in self.past_epochs],
            "resumption_psks": {str(e): v.hex() for e, v in self.resumption_psks.items()},
            "update_keys": {k.hex(): v.hex() for k, v in self.update_keys.items()},
            "retained_keys": sorted(r.hex() for r in self.retained_keys),
            "reinit": None if self.reinit is None else self.reinit.to_bytes().hex(),
            "active": self.active,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_state(), separators=(",", ":"), sort_keys=True).encode()

    # ---- the secret-tree part alone (what an application message changes) ----------------------------
    def ratchet_state_to_bytes(self) -> bytes:
        """The secret trees of this epoch and of the kept past epochs (RFC 9420 §9, §9.2), versioned JSON.

        Sending or receiving an application message changes nothing else (it advances a sender ratchet,
        consumes node secrets, and keeps or erases skipped generations' keys), so a store may write this
        part alone, tagged with the epoch, and :meth:`apply_ratchet_state` it onto the last full state
        of the same epoch; :meth:`structure_snapshot` tells whether anything else changed. It contains
        secrets and must be sealed at rest by the caller."""
        value = {
            "version": RATCHET_STATE_VERSION,
            "epoch": self.epoch,
            "secret_tree": self.secret_tree.to_state(),
            "past_epochs": [[p.epoch, p.secret_tree.to_state()] for p in self.past_epochs],
        }
        return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()

    def apply_ratchet_state(self, data: bytes) -> None:
        """Replace the secret trees with those of :meth:`ratchet_state_to_bytes` output of this state's
        epoch and past epochs; :class:`StateError` (and nothing changed) when it does not fit this state."""
        try:
            s = json.loads(data)
            if not isinstance(s, dict) or s.get("version") != RATCHET_STATE_VERSION:
                raise StateError("unsupported ratchet state version")
            if int(s["epoch"]) != self.epoch:
                raise StateError("the ratchet state is of another epoch than the group state")
            past = [(int(e), SecretTree.from_state(t)) for e, t in s["past_epochs"]]
            current = SecretTree.from_state(s["secret_tree"])
        except StateError:
            raise
        except MLSError as e:
            raise StateError(f"malformed ratchet state ({type(e).__name__})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StateError(f"malformed ratchet state ({type(e).__name__})") from None
        if [e for e, _ in past] != [p.epoch for p in self.past_epochs]:
            raise StateError("the ratchet state's past epochs are not the group state's")
        trees = [
            (self.secret_tree, current),
            *zip([p.secret_tree for p in self.past_epochs], [t for _, t in past]),
        ]
        if any(old.n_leaves != new.n_leaves or old.cs is not new.cs for old, new in trees):
            raise StateError("the ratchet state's secret trees do not fit the group state's")
        self.secret_tree = current
        for p, (_, tree) in zip(self.past_epochs, past, strict=True):
            p.secret_tree = tree

    def structure_snapshot(self) -> tuple[object, ...]:
        """A cheap value that changes whenever anything but the secret trees changes (compare with ``==``).

        The large parts a commit replaces rather than edits (context, ratchet tree, path keys, epoch
        secrets, past epochs' contexts and secrets) count by identity (the snapshot holds them, so an
        identity is never reused while it is kept), the small editable ones (proposal cache, Update keys,
        PSKs, flags) by value; O(members) work is never done. A state whose snapshot is unchanged after an
        operation differs from before only in :meth:`ratchet_state_to_bytes`."""
        return (
            _Same(self.context),
            _Same(self.tree),
            _Same(self.keys),
            tuple(self.keys.node_keys),
            _Same(self.keys.leaf_key),
            _Same(self.secrets),
            _Same(self.config),
            self.config.to_state(),
            self.signer_ref,
            self.interim_transcript_hash,
            self.confirmation_tag,
            tuple(self.proposals),
            tuple(
                (p.epoch, _Same(p.context), _Same(p.sender_data_secret), _Same(p.signature_keys))
                for p in self.past_epochs
            ),
            tuple(self.resumption_psks.items()),
            self.retained_keys,
            tuple(self.update_keys.items()),
            _Same(self.reinit),
            self.active,
        )

    @classmethod
    def from_bytes(
        cls, data: bytes, key_store: KeyStore, leaf_policy: LeafPolicy | None = None
    ) -> GroupState:
        """Rebuild a state; the leaf key comes back from ``key_store`` by reference."""
        try:
            s = json.loads(data)
        except ValueError as e:
            raise StateError(f"malformed group state ({type(e).__name__})") from None
        return cls.from_state(s, key_store, leaf_policy)

    @classmethod
    def from_state(cls, s: Any, key_store: KeyStore, leaf_policy: LeafPolicy | None = None) -> GroupState:
        """Rebuild a state from the value of :meth:`to_state` (as decoded from JSON). Corrupt or
        unknown-version input raises :class:`StateError`; a key ``key_store`` does not hold, KeyStoreError."""
        try:
            if not isinstance(s, dict) or s.get("version") != STATE_VERSION:
                version = s.get("version") if isinstance(s, dict) else None
                raise StateError(f"unsupported group state version {version!r}")
            state = cls._from_state(s, key_store, leaf_policy)
        except (StateError, KeyStoreError):
            raise
        except MLSError as e:
            raise StateError(f"malformed group state ({type(e).__name__}: {e})") from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
            raise StateError(f"malformed group state ({type(e).__name__})") from None
        state.check_consistent()
        return state

    def check_consistent(self) -> None:
        """The own leaf exists and holds the own leaf key (a state that fails this was tampered with)."""
        leaf = self.tree.leaf(self.keys.own_leaf)
        if self.active and (leaf is None or leaf.encryption_key != self.keys.leaf_key.public_key):
            raise StateError("malformed group state: the own leaf does not hold the own leaf key")

    @classmethod
    def _from_state(
        cls, s: dict[str, Any], key_store: KeyStore, leaf_policy: LeafPolicy | None
    ) -> GroupState:
        context = GroupContext.from_bytes(bytes.fromhex(s["context"]))
        cs = cipher_suite(context.cipher_suite)
        tree = RatchetTree.decode(cs, bytes.fromhex(s["tree"]))
        node_keys: dict[int, HpkePrivateKey] = {
            int(x): cs.hpke_key_from_private_bytes(bytes.fromhex(v)) for x, v in s["node_keys"].items()
        }
        leaf_ref = bytes.fromhex(s["leaf_key_ref"])
        if s["active"]:
            leaf_key: HpkePrivateKey = key_store.hpke_key(leaf_ref)
        else:  # removed: the leaf key was destroyed with the removal, never look it up
            own = tree.leaf(int(s["own_leaf"]))
            leaf_key = DestroyedHpkeKey(leaf_ref, own.encryption_key if own is not None else b"")
        keys = PathKeys(int(s["own_leaf"]), leaf_key, node_keys)
        proposals = {}
        for ref_hex, content_hex in s["proposals"]:
            content = AuthenticatedContent.from_bytes(bytes.fromhex(content_hex))
            proposals[bytes.fromhex(ref_hex)] = CachedProposal.from_content(bytes.fromhex(ref_hex), content)
        return cls(
            context=context,
            tree=tree,
            keys=keys,
            signer_ref=bytes.fromhex(s["signer_ref"]),
            secrets=EpochSecrets.from_state(s["secrets"]),
            secret_tree=SecretTree.from_state(s["secret_tree"]),
            interim_transcript_hash=bytes.fromhex(s["interim_transcript_hash"]),
            confirmation_tag=bytes.fromhex(s["confirmation_tag"]),
            config=GroupConfig.from_state(s["config"], leaf_policy),
            proposals=proposals,
            past_epochs=[PastEpoch.from_state(p) for p in s["past_epochs"]],
            resumption_psks={int(e): bytes.fromhex(v) for e, v in s["resumption_psks"].items()},
            update_keys={bytes.fromhex(k): bytes.fromhex(v) for k, v in s["update_keys"].items()},
            retained_keys=frozenset(bytes.fromhex(r) for r in s["retained_keys"]),
            reinit=None if s["reinit"] is None else ReInit.from_bytes(bytes.fromhex(s["reinit"])),
            active=bool(s["active"]),
        )


class _Same:
    """Equal to another ``_Same`` of the very same object (identity, never a deep comparison)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.value is self.value

    __hash__ = None  # type: ignore[assignment]


def _private_bytes(key: HpkePrivateKey) -> bytes:
    export = getattr(key, "private_bytes", None)
    if export is None:
        raise StateError("a parent-node key must be a software key (derived from a path secret)")
    value: bytes = export()
    return value


__all__ = [
    "RATCHET_STATE_VERSION",
    "STATE_VERSION",
    "CachedProposal",
    "DestroyedHpkeKey",
    "GroupConfig",
    "GroupState",
    "PastEpoch",
]
