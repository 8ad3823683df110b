"""The group engine's front door (RFC 9420 §11, §12): :class:`Group`, one member's membership of one group.

A :class:`Group` is a :class:`~mls.group.core.GroupCore` — the member's
:class:`~mls.group.state.GroupState`, the key store that holds its private keys, a PSK store and the
pending commit — with one method per operation, each delegating to the module named after it:

========================================  =============================================  ==============
operation                                 module                                         RFC 9420
========================================  =============================================  ==============
:meth:`Group.create`                      :mod:`mls.group.creation`                      §11
:meth:`Group.join`                        :mod:`mls.group.join`                          §12.4.3.1
:meth:`Group.external_join`               :mod:`mls.group.external_join`                 §12.4.3.2
:meth:`Group.protect`                     :mod:`mls.group.application`                   §6.3
:meth:`Group.propose` and ``propose_*``   :mod:`mls.group.proposing`                     §12.1
:meth:`Group.commit`                      :mod:`mls.group.create_commit`                 §12.4.1
:meth:`Group.process`                     :mod:`mls.group.process`,                      §6, §12.4.2
                                          :mod:`mls.group.receive_commit`
:meth:`Group.merge`                       :mod:`mls.group.merge`                         §12.4.2
========================================  =============================================  ==============

Every operation that can fail computes a new value first and only then replaces the current state, so a
rejected message leaves the group exactly as it was. Commits are *staged*: :meth:`Group.commit` and
:meth:`Group.process` return a :class:`~mls.group.staged_commit.StagedCommit` holding the next epoch's
state; :meth:`Group.merge` adopts it (after the delivery path accepted it) and destroys the private keys
it made dead (forward secrecy, §16.6). A member's own commit coming back from the delivery service is
recognised and merged from the pending commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from mls.credentials.credential import Credential
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore, Signer
from mls.group import application, create_commit, external_join, merge, process, proposing
from mls.group.commit_options import CommitOptions
from mls.group.core import GroupCore
from mls.group.creation import new_group_state
from mls.group.handshake_framing import HandshakeFraming
from mls.group.join import member_state_from_welcome
from mls.group.results import ProcessedMessage
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig, GroupState
from mls.schedule.psk import MemoryPskStore, PskStore
from mls.tree.leaf_node import Capabilities, Lifetime
from mls.wire.extensions import Extension
from mls.wire.framing import MLSMessage
from mls.wire.group_context import GroupContext
from mls.wire.key_package import KeyPackage
from mls.wire.proposals import (
    Add,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ReInit,
    Remove,
    ResumptionPSKUsage,
)
from mls.wire.welcome import Welcome


class Group(GroupCore):
    """One member's membership of one group, with its keys in ``key_store``."""

    # ---- creation and joining (§11, §12.4.3) -------------------------------------------------------
    @classmethod
    def create(
        cls,
        key_store: KeyStore,
        cipher_suite_id: int,
        *,
        signer: Signer,
        credential: Credential,
        group_id: bytes | None = None,
        extensions: Sequence[Extension] = (),
        config: GroupConfig | None = None,
        psks: PskStore | None = None,
        lifetime: Lifetime | None = None,
        capabilities: Capabilities | None = None,
    ) -> Group:
        """A one-member group with a fresh random epoch secret (§11)."""
        state = new_group_state(
            key_store,
            cipher_suite_id,
            signer=signer,
            credential=credential,
            group_id=group_id,
            extensions=extensions,
            config=config,
            lifetime=lifetime,
            capabilities=capabilities,
        )
        return cls(state, key_store, psks)

    @classmethod
    def from_bytes(
        cls, data: bytes, key_store: KeyStore, psks: PskStore | None = None, config: GroupConfig | None = None
    ) -> Group:
        """A group from :meth:`to_bytes` (see :meth:`GroupState.from_bytes`)."""
        return cls(
            GroupState.from_bytes(data, key_store, config.leaf_policy if config else None), key_store, psks
        )

    @classmethod
    def join(
        cls,
        key_store: KeyStore,
        welcome: bytes | Welcome,
        *,
        key_package: KeyPackage,
        init_key: HpkePrivateKey,
        leaf_key: HpkePrivateKey,
        signer_ref: bytes,
        ratchet_tree: bytes | None = None,
        psks: PskStore | None = None,
        config: GroupConfig | None = None,
        destroy_init_key: bool = True,
        retain_leaf_key: bool = False,
        expected_reinit: ReInit | None = None,
        resumed_from: GroupContext | None = None,
    ) -> Group:
        """Join from a Welcome (the MLSMessage, or its body already decoded) with the KeyPackage it was made
        for (§12.4.3.1). The init key is destroyed
        (unless the KeyPackage is a last-resort one: ``destroy_init_key=False``, and ``retain_leaf_key=True``
        so that no commit of this group destroys the leaf key other groups may share). ``expected_reinit``
        is the ReInit proposal of the old group when this Welcome is its reinitialization (§11.2);
        ``resumed_from`` the old group's GroupContext of the epoch a reinit or branch PSK must come from
        (§11.2, §11.3)."""
        psk_store: PskStore = psks or MemoryPskStore()
        state = member_state_from_welcome(
            key_store,
            welcome,
            key_package=key_package,
            init_key=init_key,
            leaf_key=leaf_key,
            signer_ref=signer_ref,
            ratchet_tree=ratchet_tree,
            psks=psk_store,
            config=config or GroupConfig(),
            destroy_init_key=destroy_init_key,
            retain_leaf_key=retain_leaf_key,
            expected_reinit=expected_reinit,
            resumed_from=resumed_from,
        )
        return cls(state, key_store, psk_store)

    @classmethod
    def external_join(
        cls,
        key_store: KeyStore,
        group_info: bytes,
        *,
        signer: Signer,
        credential: Credential,
        ratchet_tree: bytes | None = None,
        psks: PskStore | None = None,
        psk_ids: Sequence[PreSharedKeyID] = (),
        config: GroupConfig | None = None,
        remove_prior: int | None = None,
    ) -> tuple[Group, bytes]:
        """Join by external commit (§12.4.3.2); returns the group and the commit to send."""
        psk_store: PskStore = psks or MemoryPskStore()
        state, message = external_join.join_by_external_commit(
            key_store,
            group_info,
            signer=signer,
            credential=credential,
            psks=psk_store,
            ratchet_tree=ratchet_tree,
            psk_ids=psk_ids,
            config=config,
            remove_prior=remove_prior,
        )
        return cls(state, key_store, psk_store), message

    # ---- application messages (§6.3) -----------------------------------------------------------------
    def protect(self, data: bytes, authenticated_data: bytes = b"") -> bytes:
        """An application message as a PrivateMessage (§6.3)."""
        return application.protect(self, data, authenticated_data)

    def protect_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """:meth:`protect` of each (data, authenticated_data) pair, in order."""
        return [self.protect(data, aad) for data, aad in items]

    # ---- proposals (§12.1) -----------------------------------------------------------------------
    def propose(
        self,
        proposal: Proposal,
        handshake: HandshakeFraming = HandshakeFraming.public,
        authenticated_data: bytes = b"",
    ) -> tuple[bytes, bytes]:
        """Send a proposal; returns (MLSMessage bytes, ProposalRef). It is cached for commits by reference."""
        return proposing.propose(self, proposal, handshake, authenticated_data)

    def propose_add(
        self, key_package: KeyPackage, handshake: HandshakeFraming = HandshakeFraming.public
    ) -> tuple[bytes, bytes]:
        """An Add proposal (§12.1.1)."""
        return self.propose(Proposal.of(Add(key_package)), handshake)

    def propose_remove(
        self, leaf_index: int, handshake: HandshakeFraming = HandshakeFraming.public
    ) -> tuple[bytes, bytes]:
        """A Remove proposal (§12.1.3)."""
        return self.propose(Proposal.of(Remove(leaf_index)), handshake)

    def propose_psk(
        self, psk_id: PreSharedKeyID, handshake: HandshakeFraming = HandshakeFraming.public
    ) -> tuple[bytes, bytes]:
        """A PreSharedKey proposal (§12.1.4)."""
        return self.propose(Proposal.of(PreSharedKey(psk_id)), handshake)

    def propose_group_context_extensions(
        self, extensions: Sequence[Extension], handshake: HandshakeFraming = HandshakeFraming.public
    ) -> tuple[bytes, bytes]:
        """A GroupContextExtensions proposal (§12.1.7)."""
        return self.propose(Proposal.of(GroupContextExtensions(tuple(extensions))), handshake)

    def propose_update(self, handshake: HandshakeFraming = HandshakeFraming.public) -> tuple[bytes, bytes]:
        """An Update proposal with a fresh leaf key from the key store (§12.1.2)."""
        return proposing.propose_update(self, handshake)

    def new_psk_id(
        self,
        psk_id: bytes | None = None,
        *,
        resumption_epoch: int | None = None,
        group_id: bytes | None = None,
        usage: int = ResumptionPSKUsage.application,
    ) -> PreSharedKeyID:
        """A PreSharedKeyID with a fresh ``psk_nonce`` of KDF.Nh bytes (§8.4)."""
        return proposing.new_psk_id(
            self, psk_id, resumption_epoch=resumption_epoch, group_id=group_id, usage=usage
        )

    # ---- commits (§12.4) ---------------------------------------------------------------------------------
    def commit(self, options: CommitOptions | None = None) -> StagedCommit:
        """Create a commit (§12.4.1); it becomes the pending commit until :meth:`merge_pending_commit` or
        :meth:`discard_pending_commit`."""
        return create_commit.create_commit(self, options)

    def group_info(self, with_ratchet_tree: bool = False) -> bytes:
        """A signed GroupInfo of the current epoch, as an MLSMessage (§12.4.3)."""
        return MLSMessage.of(create_commit.signed_group_info(self, self.state, with_ratchet_tree)).to_bytes()

    def process(self, message: bytes) -> ProcessedMessage:
        """Process one MLSMessage from the group (§6, §12.4.2). Application data and proposals take effect
        at once; a commit is returned staged, for :meth:`merge`."""
        return process.process_message(self, message)

    def merge(self, staged: StagedCommit, *, destroy_dead_keys: bool = True) -> list[bytes]:
        """Adopt a staged commit (§12.4.2); returns every key reference the merge made dead — the staged
        ``dead_key_refs`` plus, when another commit beat our pending one, its new leaf key — and destroys
        them, unless ``destroy_dead_keys=False`` (a caller that persists the new state first and then
        destroys the returned keys itself). ``staged`` is not changed."""
        return merge.merge_staged_commit(self, staged, destroy_dead_keys=destroy_dead_keys)

    def merge_pending_commit(self, *, destroy_dead_keys: bool = True) -> list[bytes]:
        """Merge our own pending commit (:meth:`merge`); returns the key references it made dead."""
        return merge.merge_pending_commit(self, destroy_dead_keys=destroy_dead_keys)

    def discard_pending_commit(self) -> None:
        """Drop the pending commit; keys it created are destroyed, the epoch is unchanged."""
        merge.discard_pending_commit(self)


__all__ = ["Group"]
