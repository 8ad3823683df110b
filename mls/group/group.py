"""The group engine (RFC 9420 §11, §12): create, join, propose, commit, process, protect, export.

A :class:`Group` wraps one member's :class:`~mls.group.state.GroupState` with the key store that holds
its private keys and a PSK store. Every operation that can fail computes a new value first and only then
replaces the current state, so a rejected message leaves the group exactly as it was.

Commits are *staged*: :meth:`Group.commit` and :meth:`Group.process` return a :class:`StagedCommit`
holding the next epoch's state; :meth:`Group.merge` adopts it (after the delivery path accepted it) and
destroys the private keys it made dead (forward secrecy, §16.4). A member's own commit coming back from
the delivery service is recognised and merged from the pending commit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore, Signer
from mls.errors import MLSError, StateError, ValidationError
from mls.group.join import state_from_welcome
from mls.group.proposal_list import (
    AppliedProposals,
    CommittedProposal,
    ValidationContext,
    apply_proposals,
    check_adds,
    external_sender_key,
    path_required,
    validate_proposal,
    validate_proposal_list,
)
from mls.group.state import CachedProposal, GroupConfig, GroupState, PastEpoch
from mls.group.welcome import build_welcome
from mls.schedule.key_schedule import EpochSecrets, KeySchedule, external_init_receive
from mls.schedule.psk import MemoryPskStore, PskStore, psk_secret
from mls.schedule.secret_tree import RatchetType, SecretTree
from mls.schedule.transcript import TranscriptHashes, interim_transcript_hash
from mls.tree import tree_math as tm
from mls.tree.leaf_node import (
    Capabilities,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    default_capabilities,
    sign_leaf_node,
)
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.treekem import PathKeys, apply_update_path, create_update_path, decrypt_update_path
from mls.wire.commit import Commit
from mls.wire.extensions import (
    Extension,
    ExtensionType,
    ExternalPub,
    RequiredCapabilities,
    check_group_context_extensions,
    find_payload,
)
from mls.wire.framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.wire.group_context import GroupContext
from mls.wire.group_info import GroupInfo, sign_group_info
from mls.wire.key_package import KeyPackage
from mls.wire.message_protection import (
    decrypt_private,
    encrypt_private,
    protect_public,
    public_to_authenticated,
    ratchet_type_for,
    sign_framed_content,
    verify_framed_content,
    verify_membership_tag,
)
from mls.wire.proposals import (
    Add,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalOrRef,
    ProposalOrRefType,
    PSKType,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Update,
)
from mls.wire.welcome import GroupSecrets, PathSecret, Welcome


class Handshake(StrEnum):
    """How handshake messages (proposals, commits) are framed."""

    public = "public"
    private = "private"


# ---- results -----------------------------------------------------------------------------------------


@dataclass
class ApplicationMessage:
    sender: Sender
    data: bytes = field(repr=False)
    authenticated_data: bytes
    epoch: int


@dataclass
class ProposalMessage:
    sender: Sender
    ref: bytes
    proposal: Proposal
    epoch: int


@dataclass
class StagedCommit:
    """The next epoch, computed but not adopted. ``state`` is ``None`` when the commit removed us."""

    state: GroupState | None
    sender: Sender
    proposals: list[CommittedProposal]
    #: The committed AuthenticatedContent (identifies an own commit when it comes back).
    content: bytes = field(repr=False)
    commit: bytes | None = None
    welcome: bytes | None = None
    group_info: bytes | None = None
    ratchet_tree: bytes | None = None
    #: Private keys that are dead once this commit is merged.
    dead_key_refs: list[bytes] = field(default_factory=list)

    @property
    def epoch(self) -> int | None:
        return None if self.state is None else self.state.epoch

    @property
    def removed_self(self) -> bool:
        return self.state is None


ProcessedMessage = ApplicationMessage | ProposalMessage | StagedCommit


@dataclass
class CommitOptions:
    """What a commit contains and how it is sent (§12.4)."""

    add: Sequence[KeyPackage] = ()
    remove: Sequence[int] = ()
    psks: Sequence[PreSharedKeyID] = ()
    group_context_extensions: Sequence[Extension] | None = None
    include_pending: bool = True
    force_path: bool = False
    handshake: Handshake = Handshake.public
    #: A ReInit proposal to commit (it must be the only proposal, §12.2).
    reinit: ReInit | None = None
    #: Put the ratchet tree into the Welcome's GroupInfo (ratchet_tree extension, §12.4.3.3).
    ratchet_tree_in_welcome: bool = True
    authenticated_data: bytes = b""
    #: Resumption PSK usages allowed in this commit (reinit and branch only in a new group's first commit, §11).
    resumption_usages: frozenset[int] = frozenset({ResumptionPSKUsage.application})


def _now() -> int:
    return int(time.time())


def default_lifetime(days: int = 90) -> Lifetime:
    now = _now()
    return Lifetime(now - 3600, now + days * 86400)


class Group:
    """One member's membership of one group, with its keys in ``key_store``."""

    def __init__(self, state: GroupState, key_store: KeyStore, psks: PskStore | None = None) -> None:
        self.state = state
        self.key_store = key_store
        self.psks: PskStore = psks or MemoryPskStore()
        self.pending_commit: StagedCommit | None = None

    def __repr__(self) -> str:
        s = self.state
        return f"Group(id={s.group_id.hex()[:16]}…, epoch={s.epoch}, leaf={s.own_leaf}, members={s.tree.member_count()})"

    # ---- views -----------------------------------------------------------------------------------
    @property
    def cs(self) -> CipherSuite:
        return self.state.cs

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def group_id(self) -> bytes:
        return self.state.group_id

    @property
    def own_leaf(self) -> int:
        return self.state.own_leaf

    @property
    def epoch_authenticator(self) -> bytes:
        return self.state.secrets.epoch_authenticator

    def export(self, label: bytes | str, context: bytes, length: int) -> bytes:
        """``MLS-Exporter(label, context, length)`` (§8.5)."""
        if not 0 < length <= 0xFFFF:
            raise ValidationError("8.5", "exporter length must be a uint16 greater than zero")
        return self.state.secrets.export(label, context, length)

    def members(self) -> list[tuple[int, LeafNode]]:
        return list(self.state.tree.leaves())

    def signer(self) -> Signer:
        return self.key_store.signer(self.state.signer_ref)

    def to_bytes(self) -> bytes:
        return self.state.to_bytes()

    # ---- creation (§11) --------------------------------------------------------------------------
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
        cs = cipher_suite(cipher_suite_id)
        config = config or GroupConfig()
        check_group_context_extensions(extensions)
        leaf_key = key_store.new_hpke_key(cipher_suite_id)
        leaf = LeafNode(
            encryption_key=leaf_key.public_key, signature_key=signer.public_key, credential=credential,
            capabilities=capabilities or default_capabilities(), leaf_node_source=LeafNodeSource.key_package,
            lifetime=lifetime or default_lifetime(), extensions=(), signature=b"",
        )
        tree = RatchetTree.one_member(cs, sign_leaf_node(cs, signer, leaf))
        gid = group_id if group_id is not None else os.urandom(cs.n_h)
        context = GroupContext(1, cs.suite_id, gid, 0, tree.tree_hash(), b"", tuple(extensions))
        secrets = EpochSecrets.derive(cs, os.urandom(cs.n_h))
        tag = secrets.confirmation_tag(b"")
        secret_tree, secrets = secrets.start_secret_tree(tree.n_leaves, config.ratchet)
        state = GroupState(
            context=context, tree=tree, keys=PathKeys(0, leaf_key), signer_ref=signer.key_ref, secrets=secrets,
            secret_tree=secret_tree, interim_transcript_hash=interim_transcript_hash(cs, b"", tag),
            confirmation_tag=tag, config=config, resumption_psks={0: secrets.resumption_psk},
        )
        return cls(state, key_store, psks)

    @classmethod
    def from_bytes(cls, data: bytes, key_store: KeyStore, psks: PskStore | None = None,
                   config: GroupConfig | None = None) -> Group:
        state = GroupState.from_bytes(data, key_store, config.leaf_policy if config else None)
        return cls(state, key_store, psks)

    # ---- framing -------------------------------------------------------------------------------------
    def _framed(self, content_type: int, authenticated_data: bytes = b"", **body: Any) -> FramedContent:
        s = self.state
        return FramedContent(
            group_id=s.group_id, epoch=s.epoch, sender=Sender.member(s.own_leaf),
            authenticated_data=authenticated_data, content_type=content_type, **body,
        )

    def _sign(self, content: FramedContent, wire_format: int, confirmation_tag: bytes | None = None) -> AuthenticatedContent:
        signature = sign_framed_content(self.cs, self.signer(), wire_format, content, self.state.context)
        return AuthenticatedContent(wire_format, content, FramedContentAuthData(signature, confirmation_tag))

    def _protect(self, auth: AuthenticatedContent, secret_tree: SecretTree | None = None) -> bytes:
        """Frame signed content as a PublicMessage or encrypt it with the next ratchet key (§6.2, §6.3)."""
        s = self.state
        if auth.wire_format == WireFormat.mls_public_message:
            body: PublicMessage | PrivateMessage = protect_public(self.cs, auth, s.secrets.membership_key, s.context)
        else:
            tree = secret_tree or s.secret_tree
            key = tree.next_key_nonce(s.own_leaf, ratchet_type_for(auth.content.content_type))
            body = encrypt_private(
                self.cs, auth, key, s.secrets.sender_data_secret, padding=self._padding(auth)
            )
        return MLSMessage.of(body).to_bytes()

    def _padding(self, auth: AuthenticatedContent) -> int:
        block = self.state.config.padding_block
        if block <= 0:
            return 0
        size = len(auth.content.to_bytes()) + len(auth.auth.signature) + 64
        return -size % block

    def _require_active(self) -> None:
        if not self.state.active:
            raise StateError("RFC 9420 §12.4.2: this member was removed from the group")
        if self.state.reinit is not None:
            raise StateError("RFC 9420 §11.2: the group was reinitialized and must not be used any more")
        if self.pending_commit is not None:
            raise StateError("a pending commit must be merged or discarded first")

    # ---- application messages (§6.3) -----------------------------------------------------------------
    def protect(self, data: bytes, authenticated_data: bytes = b"") -> bytes:
        """An application message as a PrivateMessage (§6.3)."""
        self._require_active()
        if self.state.proposals:
            raise StateError("RFC 9420 §12.4: a member with pending proposals must commit before sending data")
        content = self._framed(ContentType.application, authenticated_data, application_data=data)
        return self._protect(self._sign(content, WireFormat.mls_private_message))

    def protect_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        return [self.protect(data, aad) for data, aad in items]

    # ---- proposals (§12.1) -----------------------------------------------------------------------
    def propose(self, proposal: Proposal, handshake: Handshake = Handshake.public,
                authenticated_data: bytes = b"") -> tuple[bytes, bytes]:
        """Send a proposal; returns (MLSMessage bytes, ProposalRef). It is cached for commits by reference."""
        self._require_active()
        s = self.state
        sender = Sender.member(s.own_leaf)
        cp = CommittedProposal(proposal, sender)
        vc = self._validation_context()
        validate_proposal(vc, cp, find_payload(s.context.extensions, RequiredCapabilities))
        check_adds(vc, [cp], removed=set())
        wire = WireFormat.mls_public_message if handshake == Handshake.public else WireFormat.mls_private_message
        auth = self._sign(self._framed(ContentType.proposal, authenticated_data, proposal=proposal), wire)
        ref = self.cs.make_proposal_ref(auth.to_bytes())
        message = self._protect(auth)
        s.proposals[ref] = CachedProposal.from_content(ref, auth)
        return message, ref

    def propose_add(self, key_package: KeyPackage, handshake: Handshake = Handshake.public) -> tuple[bytes, bytes]:
        return self.propose(Proposal.of(Add(key_package)), handshake)

    def propose_remove(self, leaf_index: int, handshake: Handshake = Handshake.public) -> tuple[bytes, bytes]:
        return self.propose(Proposal.of(Remove(leaf_index)), handshake)

    def propose_psk(self, psk_id: PreSharedKeyID, handshake: Handshake = Handshake.public) -> tuple[bytes, bytes]:
        return self.propose(Proposal.of(PreSharedKey(psk_id)), handshake)

    def propose_group_context_extensions(self, extensions: Sequence[Extension],
                                         handshake: Handshake = Handshake.public) -> tuple[bytes, bytes]:
        return self.propose(Proposal.of(GroupContextExtensions(tuple(extensions))), handshake)

    def propose_update(self, handshake: Handshake = Handshake.public) -> tuple[bytes, bytes]:
        """An Update proposal with a fresh leaf key from the key store (§12.1.2)."""
        s = self.state
        current = s.tree.leaf(s.own_leaf)
        assert current is not None
        new_key = self.key_store.new_hpke_key(self.cs.suite_id)
        leaf = LeafNode(
            encryption_key=new_key.public_key, signature_key=current.signature_key, credential=current.credential,
            capabilities=current.capabilities, leaf_node_source=LeafNodeSource.update,
            extensions=current.extensions, signature=b"",
        )
        leaf = sign_leaf_node(self.cs, self.signer(), leaf, s.group_id, s.own_leaf)
        try:
            out = self.propose(Proposal.of(Update(leaf)), handshake)
        except MLSError:
            self.key_store.destroy(new_key.key_ref)
            raise
        s.update_keys[new_key.public_key] = new_key.key_ref
        return out

    def new_psk_id(self, psk_id: bytes | None = None, *, resumption_epoch: int | None = None,
                   group_id: bytes | None = None, usage: int = ResumptionPSKUsage.application) -> PreSharedKeyID:
        """A PreSharedKeyID with a fresh ``psk_nonce`` of KDF.Nh bytes (§8.4)."""
        nonce = os.urandom(self.cs.n_h)
        if psk_id is not None:
            return PreSharedKeyID.external(psk_id, nonce)
        assert resumption_epoch is not None
        return PreSharedKeyID.resumption(usage, group_id or self.group_id, resumption_epoch, nonce)

    # ---- shared commit machinery -------------------------------------------------------------------
    def _validation_context(self, usages: frozenset[int] = frozenset({ResumptionPSKUsage.application})) -> ValidationContext:
        s = self.state
        return ValidationContext(
            self.cs, s.group_id, s.context.version, s.tree, tuple(s.context.extensions), s.config.leaf_policy, usages,
        )

    def _psk_value(self, psk_id: PreSharedKeyID) -> bytes:
        s = self.state
        value: bytes | None = None
        if psk_id.psktype == PSKType.resumption and psk_id.psk_group_id == s.group_id:
            assert psk_id.psk_epoch is not None
            value = s.resumption_psks.get(psk_id.psk_epoch)
        if value is None:
            value = self.psks.get(psk_id)
        if value is None:
            raise ValidationError("12.4.2", "a PreSharedKey of the commit is not available")
        return value

    def _psk_secret(self, psk_ids: Sequence[PreSharedKeyID]) -> bytes:
        return psk_secret(self.cs, [(p, self._psk_value(p)) for p in psk_ids])

    def _provisional_context(self, tree: RatchetTree, extensions: Sequence[Extension]) -> GroupContext:
        c = self.state.context
        return GroupContext(c.version, c.cipher_suite, c.group_id, c.epoch + 1, tree.tree_hash(),
                            c.confirmed_transcript_hash, tuple(extensions))

    def _next_state(
        self, *, tree: RatchetTree, keys: PathKeys, context: GroupContext, ks: KeySchedule,
        interim: bytes, tag: bytes, reinit: ReInit | None = None,
    ) -> GroupState:
        """The state of the next epoch; the current one becomes a past epoch (within the retention)."""
        s = self.state
        secret_tree, secrets = ks.secrets.start_secret_tree(tree.n_leaves, s.config.ratchet)
        past = [*s.past_epochs, self._past_epoch()][-s.config.past_epochs:] if s.config.past_epochs else []
        psks = {**s.resumption_psks, context.epoch: secrets.resumption_psk}
        keep = sorted(psks)[-s.config.resumption_psks:] if s.config.resumption_psks else []
        return GroupState(
            context=context, tree=tree, keys=keys, signer_ref=s.signer_ref, secrets=secrets,
            secret_tree=secret_tree, interim_transcript_hash=interim, confirmation_tag=tag, config=s.config,
            past_epochs=past, resumption_psks={e: psks[e] for e in keep}, reinit=reinit,
            retained_keys=s.retained_keys,
        )

    def _past_epoch(self) -> PastEpoch:
        s = self.state
        return PastEpoch(
            s.epoch, s.context, s.secret_tree, s.secrets.sender_data_secret,
            {i: leaf.signature_key for i, leaf in s.tree.leaves()},
        )

    # ---- commit creation (§12.4.1) ---------------------------------------------------------------------
    def commit(self, options: CommitOptions | None = None) -> StagedCommit:
        """Create a commit; it becomes the pending commit until :meth:`merge_pending_commit` or
        :meth:`discard_pending_commit`."""
        self._require_active()
        opts = options or CommitOptions()
        proposals = self._commit_proposals(opts)
        sender = Sender.member(self.own_leaf)
        vc = self._validation_context(usages=opts.resumption_usages)
        validate_proposal_list(vc, proposals, sender)
        applied = apply_proposals(vc, proposals)
        with_path = opts.force_path or path_required(proposals)
        staged = self._build_commit(opts, proposals, applied, with_path)
        self.pending_commit = staged
        return staged

    def _commit_proposals(self, opts: CommitOptions) -> list[CommittedProposal]:
        s = self.state
        sender = Sender.member(s.own_leaf)
        out: list[CommittedProposal] = []
        if opts.include_pending:
            out = self._valid_pending(sender, opts.resumption_usages)
        bodies: list[Any] = []
        if opts.group_context_extensions is not None:
            bodies.append(GroupContextExtensions(tuple(opts.group_context_extensions)))
        bodies += [Remove(i) for i in opts.remove] + [Add(kp) for kp in opts.add] + [PreSharedKey(p) for p in opts.psks]
        if opts.reinit is not None:
            bodies.append(opts.reinit)
        out.extend(CommittedProposal(Proposal.of(b), sender) for b in bodies)
        return out

    def _build_commit(self, opts: CommitOptions, proposals: list[CommittedProposal],
                      applied: AppliedProposals, with_path: bool) -> StagedCommit:
        s, cs = self.state, self.cs
        added_leaves = [i for i, _ in applied.added]
        tree, keys, dead = applied.tree, s.keys.copy(), list[bytes]()
        path = None
        path_secrets: dict[int, bytes] = {}
        commit_secret = bytes(cs.n_h)
        new_leaf_key: HpkePrivateKey | None = None
        if with_path:
            new_leaf_key = self.key_store.new_hpke_key(cs.suite_id)
            created = self._create_path(applied, new_leaf_key)
            tree, keys, path = created.tree, created.path_keys, created.update_path
            path_secrets, commit_secret = created.path_secrets, created.commit_secret
            dead.append(s.keys.leaf_key.key_ref)
        else:
            keys.drop_nodes_not_in(tree)
        try:
            return self._finish_commit(opts, proposals, applied, tree, keys, path, path_secrets, commit_secret,
                                       added_leaves, dead)
        except MLSError:
            if new_leaf_key is not None:
                self.key_store.destroy(new_leaf_key.key_ref)
            raise

    def _create_path(self, applied: AppliedProposals, new_leaf_key: HpkePrivateKey) -> Any:
        s, cs = self.state, self.cs
        template = applied.tree.leaf(s.own_leaf)
        assert template is not None
        signer = self.signer()
        return create_update_path(
            applied.tree, s.own_leaf, new_leaf_key=new_leaf_key,
            sign_leaf=lambda leaf: sign_leaf_node(cs, signer, leaf, s.group_id, s.own_leaf),
            leaf_template=template,
            group_context_for=lambda t: self._provisional_context(t, applied.extensions).to_bytes(),
            exclude_leaves=[i for i, _ in applied.added], first_path_secret=os.urandom(cs.n_h),
        )

    def _finish_commit(self, opts: CommitOptions, proposals: list[CommittedProposal], applied: AppliedProposals,
                       tree: RatchetTree, keys: PathKeys, path: Any, path_secrets: dict[int, bytes],
                       commit_secret: bytes, added_leaves: list[int], dead: list[bytes]) -> StagedCommit:
        s, cs = self.state, self.cs
        commit = Commit(tuple(self._proposal_or_ref(p) for p in proposals), path)
        wire = WireFormat.mls_public_message if opts.handshake == Handshake.public else WireFormat.mls_private_message
        content = self._framed(ContentType.commit, opts.authenticated_data, commit=commit)
        signature = sign_framed_content(cs, self.signer(), wire, content, s.context)
        auth = AuthenticatedContent(wire, content, FramedContentAuthData(signature, None))
        confirmed = TranscriptHashes(s.context.confirmed_transcript_hash, s.interim_transcript_hash).next_confirmed(cs, auth)
        new_ctx = GroupContext(1, cs.suite_id, s.group_id, s.epoch + 1, tree.tree_hash(), confirmed, applied.extensions)
        ks = KeySchedule.from_init_secret(cs, s.secrets.init_secret, commit_secret,
                                          self._psk_secret(applied.psks), new_ctx.to_bytes())
        tag = ks.secrets.confirmation_tag(confirmed)
        auth = AuthenticatedContent(wire, content, FramedContentAuthData(signature, tag))
        message = self._protect(auth, self._sender_secret_tree_copy())
        new_state = self._next_state(tree=tree, keys=keys, context=new_ctx, ks=ks,
                                     interim=interim_transcript_hash(cs, confirmed, tag), tag=tag,
                                     reinit=applied.reinit)
        group_info = self._group_info(new_state, opts.ratchet_tree_in_welcome and bool(applied.added))
        welcome = self._welcome(new_state, ks, group_info, applied, path_secrets) if applied.added else None
        dead += self._dead_update_keys(applied)
        return StagedCommit(
            new_state, Sender.member(s.own_leaf), proposals, auth.to_bytes(), message,
            None if welcome is None else MLSMessage.of(welcome).to_bytes(),
            MLSMessage.of(self._group_info(new_state, False)).to_bytes(), tree.encode(), dead,
        )

    def _sender_secret_tree_copy(self) -> SecretTree:
        """Encrypting a PrivateMessage commit consumes a handshake generation of a *copy*: the current
        epoch is untouched until the commit is merged."""
        return SecretTree.from_state(self.state.secret_tree.to_state())

    def _valid_pending(self, committer: Sender, usages: frozenset[int]) -> list[CommittedProposal]:
        """The cached proposals that keep the list valid, in order (§12.4: the committer SHOULD include
        every valid proposal it received, as long as the list stays valid; the others are left out)."""
        vc = self._validation_context(usages)
        cached = list(self.state.proposals.values())
        chosen: list[int] = []
        for i in sorted(range(len(cached)), key=lambda i: _selection_priority(cached, i)):
            candidate = [*chosen, i]
            try:
                validate_proposal_list(vc, [_committed(cached[j]) for j in sorted(candidate)], committer)
            except MLSError:
                continue
            chosen = candidate
        return [_committed(cached[j]) for j in sorted(chosen)]

    @staticmethod
    def _proposal_or_ref(p: CommittedProposal) -> ProposalOrRef:
        return ProposalOrRef.of(p.ref if p.ref is not None else p.proposal)

    def _group_info(self, state: GroupState, with_tree: bool) -> GroupInfo:
        """A signed GroupInfo for ``state`` with ``external_pub`` (§12.4.3)."""
        extensions: list[Extension] = [ExternalPub(state.secrets.external_pub).to_extension()]
        if with_tree:
            extensions.append(Extension(ExtensionType.ratchet_tree, state.tree.encode()))
        unsigned = GroupInfo(state.context, tuple(extensions), state.confirmation_tag, state.own_leaf, b"")
        return sign_group_info(self.cs, self.signer(), unsigned)

    def _welcome(self, state: GroupState, ks: KeySchedule, group_info: GroupInfo, applied: AppliedProposals,
                 path_secrets: dict[int, bytes]) -> Welcome:
        members = []
        for leaf_index, kp in applied.added:
            secret = None
            if path_secrets:
                ancestor = tm.common_ancestor(2 * leaf_index, 2 * state.own_leaf)
                secret = path_secrets.get(ancestor)
            members.append((kp, GroupSecrets(ks.joiner_secret, None if secret is None else PathSecret(secret),
                                             tuple(applied.psks))))
        return build_welcome(self.cs, ks.welcome_secret, group_info, members)

    def _dead_update_keys(self, applied: AppliedProposals) -> list[bytes]:
        """Keys of our own Update proposals that the commit did not make our leaf key: dead after it."""
        s = self.state
        used = applied.tree.leaf(s.own_leaf)
        return [ref for pub, ref in s.update_keys.items() if used is None or pub != used.encryption_key]

    def group_info(self, with_ratchet_tree: bool = False) -> bytes:
        """A signed GroupInfo of the current epoch, as an MLSMessage (§12.4.3)."""
        return MLSMessage.of(self._group_info(self.state, with_ratchet_tree)).to_bytes()

    # ---- merging (§12.4.2 end) --------------------------------------------------------------------------
    def merge(self, staged: StagedCommit, *, destroy_dead_keys: bool = True) -> None:
        """Adopt a staged commit and destroy the private keys it made dead.

        A caller that persists the new state first (and destroys the keys once that is durable) passes
        ``destroy_dead_keys=False`` and destroys ``staged.dead_key_refs`` itself.
        """
        if staged.state is not None and staged.state.epoch != self.epoch + 1:
            raise StateError(f"staged commit is for epoch {staged.state.epoch}, the group is at {self.epoch}")
        dead = list(staged.dead_key_refs)
        losing = self.pending_commit
        if losing is not None and losing is not staged and losing.state is not None:
            # Our own pending commit lost the race: the leaf key it made is dead too.
            ref = losing.state.keys.leaf_key.key_ref
            if ref != self.state.keys.leaf_key.key_ref:
                dead.append(ref)
        dead = [ref for ref in dead if ref not in self.state.retained_keys]
        staged.dead_key_refs = dead
        if staged.state is None:
            self.state.active = False
        else:
            self.state = staged.state
        self.pending_commit = None
        if destroy_dead_keys:
            for ref in dead:
                self.key_store.destroy(ref)

    def merge_pending_commit(self, *, destroy_dead_keys: bool = True) -> None:
        if self.pending_commit is None:
            raise StateError("there is no pending commit")
        self.merge(self.pending_commit, destroy_dead_keys=destroy_dead_keys)

    def discard_pending_commit(self) -> None:
        """Drop the pending commit; keys it created are destroyed, the epoch is unchanged."""
        staged = self.pending_commit
        if staged is None:
            raise StateError("there is no pending commit")
        self.pending_commit = None
        if staged.state is not None:
            new_leaf = staged.state.keys.leaf_key.key_ref
            if new_leaf != self.state.keys.leaf_key.key_ref:
                self.key_store.destroy(new_leaf)

    # ---- processing (§6, §12.4.2) -----------------------------------------------------------------------
    def process(self, message: bytes) -> ProcessedMessage:
        """Process one MLSMessage from the group. Application data and proposals take effect at once;
        a commit is returned staged, for :meth:`merge`."""
        msg = MLSMessage.from_bytes(message)
        body = msg.body
        if isinstance(body, PublicMessage):
            return self._process_public(body)
        if isinstance(body, PrivateMessage):
            return self._process_private(body)
        raise ValidationError("6", "only PublicMessage and PrivateMessage can be processed by a member")

    def _check_epoch_and_group(self, group_id: bytes, epoch: int) -> None:
        if group_id != self.group_id:
            raise ValidationError("6", "message for another group")
        if epoch != self.epoch:
            raise ValidationError("6", f"message for epoch {epoch}, the group is at epoch {self.epoch}")

    def _process_public(self, msg: PublicMessage) -> ProcessedMessage:
        s = self.state
        content = msg.content
        self._check_epoch_and_group(content.group_id, content.epoch)
        if content.content_type == ContentType.application:
            raise ValidationError("6.2", "application data must not be sent as a PublicMessage")
        verify_membership_tag(self.cs, msg, s.secrets.membership_key, s.context)
        auth = public_to_authenticated(msg)
        verify_framed_content(self.cs, self._sender_signature_key(auth), auth, s.context)
        return self._handle_authenticated(auth)

    def _process_private(self, msg: PrivateMessage) -> ProcessedMessage:
        if msg.group_id != self.group_id:
            raise ValidationError("6", "message for another group")
        if msg.epoch != self.epoch:
            return self._process_past_epoch(msg)
        s = self.state
        auth, sender_data = decrypt_private(self.cs, msg, s.secrets.sender_data_secret, s.secret_tree.peek_key_nonce)
        verify_framed_content(self.cs, self._sender_signature_key(auth), auth, s.context)
        result = self._handle_authenticated(auth)
        s.secret_tree.key_nonce(sender_data.leaf_index, ratchet_type_for(msg.content_type), sender_data.generation)
        return result

    def _process_past_epoch(self, msg: PrivateMessage) -> ApplicationMessage:
        """Late application messages of a retained past epoch (§14: RFC 9750 delayed messages)."""
        if msg.content_type != ContentType.application:
            raise ValidationError("6", f"handshake message for epoch {msg.epoch}, the group is at {self.epoch}")
        past = next((p for p in self.state.past_epochs if p.epoch == msg.epoch), None)
        if past is None:
            raise ValidationError("6", f"message for epoch {msg.epoch}, which is not retained")
        auth, sd = decrypt_private(self.cs, msg, past.sender_data_secret, past.secret_tree.peek_key_nonce)
        key = past.signature_keys.get(sd.leaf_index)
        if key is None:
            raise ValidationError("6.3.2", "sender was not a member in that epoch")
        verify_framed_content(self.cs, key, auth, past.context)
        past.secret_tree.key_nonce(sd.leaf_index, RatchetType.application, sd.generation)
        return self._application(auth)

    def _sender_signature_key(self, auth: AuthenticatedContent) -> bytes:
        sender = auth.content.sender
        s = self.state
        if sender.sender_type == SenderType.member:
            assert sender.leaf_index is not None
            leaf = s.tree.leaf(sender.leaf_index)
            if leaf is None:
                raise ValidationError("6.1", f"sender leaf {sender.leaf_index} is blank or outside the tree")
            return leaf.signature_key
        if sender.sender_type == SenderType.external:
            assert sender.sender_index is not None
            return external_sender_key(s.context.extensions, sender.sender_index)
        content = auth.content
        if sender.sender_type == SenderType.new_member_proposal:
            if content.proposal is None or not isinstance(content.proposal.body, Add):
                raise ValidationError("12.1.8", "a new_member_proposal sender may only send an Add proposal")
            return content.proposal.body.key_package.leaf_node.signature_key
        if content.commit is None or content.commit.path is None:
            raise ValidationError("12.4.3.2", "a new_member_commit sender must send a commit with a path")
        return content.commit.path.leaf_node.signature_key

    def _handle_authenticated(self, auth: AuthenticatedContent) -> ProcessedMessage:
        ct = auth.content.content_type
        if ct == ContentType.application:
            if auth.content.sender.sender_type != SenderType.member:
                raise ValidationError("6", "only members send application data")
            return self._application(auth)
        if ct == ContentType.proposal:
            return self._cache_proposal(auth)
        if auth.content.sender.sender_type not in (SenderType.member, SenderType.new_member_commit):
            raise ValidationError("12.4", "commits come from members or new members (external commits)")
        own = self.pending_commit
        if own is not None and auth.to_bytes() == own.content:
            return own
        return self._stage_commit(auth)

    def _application(self, auth: AuthenticatedContent) -> ApplicationMessage:
        c = auth.content
        assert c.application_data is not None
        return ApplicationMessage(c.sender, c.application_data, c.authenticated_data, c.epoch)

    def _cache_proposal(self, auth: AuthenticatedContent) -> ProposalMessage:
        proposal = auth.content.proposal
        assert proposal is not None
        validate_proposal(self._validation_context(), CommittedProposal(proposal, auth.content.sender),
                          find_payload(self.state.context.extensions, RequiredCapabilities))
        ref = self.cs.make_proposal_ref(auth.to_bytes())
        self.state.proposals[ref] = CachedProposal.from_content(ref, auth)
        return ProposalMessage(auth.content.sender, ref, proposal, auth.content.epoch)

    # ---- commit processing (§12.4.2) ----------------------------------------------------------------------
    def _resolve(self, por: ProposalOrRef, committer: Sender) -> CommittedProposal:
        if por.type == ProposalOrRefType.proposal:
            assert por.proposal is not None
            return CommittedProposal(por.proposal, committer)
        assert por.reference is not None
        cached = self.state.proposals.get(por.reference)
        if cached is None:
            raise ValidationError("12.4.2", "the commit references a proposal this member has not received")
        return CommittedProposal(cached.proposal, cached.sender, cached.ref)

    def _stage_commit(self, auth: AuthenticatedContent) -> StagedCommit:
        s = self.state
        commit = auth.content.commit
        assert commit is not None
        committer = auth.content.sender
        proposals = [self._resolve(p, committer) for p in commit.proposals]
        vc = self._validation_context()
        validate_proposal_list(vc, proposals, committer)
        if path_required(proposals) and commit.path is None:
            raise ValidationError("12.4", "this commit must carry a path")
        applied = apply_proposals(vc, proposals)
        if committer.sender_type == SenderType.new_member_commit:
            return self._stage_external_commit(auth, proposals, applied)
        assert committer.leaf_index is not None
        if s.own_leaf in applied.removed:
            return StagedCommit(None, committer, proposals, auth.to_bytes(), dead_key_refs=self._all_own_keys())
        tree, keys, commit_secret = self._apply_path(applied, committer.leaf_index, commit)
        init_secret = s.secrets.init_secret
        return self._complete_staging(auth, proposals, applied, tree, keys, commit_secret, init_secret)

    def _apply_path(self, applied: AppliedProposals, committer: int, commit: Commit) -> tuple[RatchetTree, PathKeys, bytes]:
        s, cs = self.state, self.cs
        keys = self._keys_after_updates(applied)
        if commit.path is None:
            keys.drop_nodes_not_in(applied.tree)
            return applied.tree, keys, bytes(cs.n_h)
        self._check_path_leaf(applied, committer, commit.path.leaf_node)
        self._check_path_keys_fresh(applied.tree, committer, commit)
        merged = apply_update_path(applied.tree, committer, commit.path, s.group_id)
        provisional = self._provisional_context(merged, applied.extensions)
        new_keys, commit_secret, _ = decrypt_update_path(
            merged, committer, commit.path, keys, provisional.to_bytes(), [i for i, _ in applied.added]
        )
        return merged, new_keys, commit_secret

    def _keys_after_updates(self, applied: AppliedProposals) -> PathKeys:
        """Our PathKeys after the proposals: our own committed Update swaps in its leaf key."""
        s = self.state
        keys = s.keys.copy()
        if s.own_leaf in applied.updated:
            leaf = applied.tree.leaf(s.own_leaf)
            assert leaf is not None
            ref = s.update_keys.get(leaf.encryption_key)
            if ref is None:
                raise StateError("an Update of our leaf was committed but its private key is unknown")
            keys = PathKeys(s.own_leaf, self.key_store.hpke_key(ref), dict(keys.node_keys))
        return keys

    def _check_path_leaf(self, applied: AppliedProposals, committer: int, leaf: LeafNode) -> None:
        s = self.state
        from mls.tree.leaf_validation import validate_leaf_node

        validate_leaf_node(self.cs, leaf, source=LeafNodeSource.commit, group_id=s.group_id, leaf_index=committer,
                           policy=s.config.leaf_policy,
                           required=find_payload(applied.extensions, RequiredCapabilities))
        current = applied.tree.leaf(committer)
        if current is not None and current.encryption_key == leaf.encryption_key:
            raise ValidationError("12.4.2", "the committer's new leaf must have a new encryption_key")

    @staticmethod
    def _check_path_keys_fresh(tree: RatchetTree, committer: int, commit: Commit) -> None:
        """No key of the UpdatePath is in the tree already; the leaf's signature key is no other member's
        (§7.3 uniqueness, §12.4.2)."""
        assert commit.path is not None
        in_tree = {n.encryption_key for x in range(tree.width) if (n := tree.node(x)) is not None}
        new = [commit.path.leaf_node.encryption_key, *(n.encryption_key for n in commit.path.nodes)]
        if any(k in in_tree for k in new) or len(set(new)) != len(new):
            raise ValidationError("12.4.2", "a public key of the UpdatePath already appears in the tree")
        signature_key = commit.path.leaf_node.signature_key
        if any(leaf.signature_key == signature_key for i, leaf in tree.leaves() if i != committer):
            raise ValidationError("7.3", "the committer's signature key is used by another member")

    def _complete_staging(self, auth: AuthenticatedContent, proposals: list[CommittedProposal],
                          applied: AppliedProposals, tree: RatchetTree, keys: PathKeys, commit_secret: bytes,
                          init_secret: bytes) -> StagedCommit:
        s, cs = self.state, self.cs
        tag = auth.auth.confirmation_tag
        if tag is None:
            raise ValidationError("6.1", "a commit must carry a confirmation tag")
        confirmed = TranscriptHashes(s.context.confirmed_transcript_hash, s.interim_transcript_hash).next_confirmed(cs, auth)
        new_ctx = GroupContext(1, cs.suite_id, s.group_id, s.epoch + 1, tree.tree_hash(), confirmed, applied.extensions)
        ks = KeySchedule.from_init_secret(cs, init_secret, commit_secret, self._psk_secret(applied.psks), new_ctx.to_bytes())
        ks.secrets.verify_confirmation_tag(confirmed, tag)
        state = self._next_state(tree=tree, keys=keys, context=new_ctx, ks=ks,
                                 interim=interim_transcript_hash(cs, confirmed, tag), tag=tag, reinit=applied.reinit)
        dead = self._dead_update_keys(applied)
        if keys.leaf_key.key_ref != s.keys.leaf_key.key_ref:
            dead.append(s.keys.leaf_key.key_ref)
        return StagedCommit(state, auth.content.sender, proposals, auth.to_bytes(), dead_key_refs=dead)

    def _all_own_keys(self) -> list[bytes]:
        s = self.state
        return [ref for ref in (s.keys.leaf_key.key_ref, *s.update_keys.values()) if ref not in s.retained_keys]

    # ---- external commits (§12.4.3.2) -------------------------------------------------------------------
    def _stage_external_commit(self, auth: AuthenticatedContent, proposals: list[CommittedProposal],
                               applied: AppliedProposals) -> StagedCommit:
        s, cs = self.state, self.cs
        commit = auth.content.commit
        external_init = applied.external_init
        assert commit is not None and commit.path is not None and external_init is not None
        self._check_resync(proposals, commit.path.leaf_node)
        joiner = _leftmost_blank(applied.tree)
        if s.own_leaf in applied.removed:
            return StagedCommit(None, auth.content.sender, proposals, auth.to_bytes(), dead_key_refs=self._all_own_keys())
        applied.tree = applied.tree.copy()
        applied.tree.extend_to(joiner + 1)
        tree_after, keys, commit_secret = self._apply_path(applied, joiner, commit)
        init_secret = external_init_receive(cs, s.secrets.external_key_pair(), external_init.kem_output)
        return self._complete_staging(auth, proposals, applied, tree_after, keys, commit_secret, init_secret)

    def _check_resync(self, proposals: list[CommittedProposal], leaf: LeafNode) -> None:
        """A resync removes the joiner's own prior leaf only: the new leaf must be acceptable as an Update of
        the removed one — here, the same credential (§12.2, §12.4.3.2)."""
        for p in proposals:
            body = p.proposal.body
            if isinstance(body, Remove):
                removed = self.state.tree.leaf(body.removed)
                if removed is None or removed.credential != leaf.credential:
                    raise ValidationError("12.4.3.2", "an external commit may only remove the joiner's prior leaf")

    # ---- joining from a Welcome (§12.4.3.1) ----------------------------------------------------------------
    @classmethod
    def join(
        cls,
        key_store: KeyStore,
        welcome: bytes,
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
        """Join from a Welcome with the KeyPackage it was made for. The init key is destroyed (unless the
        KeyPackage is a last-resort one: ``destroy_init_key=False``, and ``retain_leaf_key=True`` so that no
        commit of this group destroys the leaf key other groups may share). ``expected_reinit`` is the ReInit
        proposal of the old group when this Welcome is its reinitialization (§11.2); ``resumed_from`` the
        old group's GroupContext of the epoch a reinit or branch PSK must come from (§11.2, §11.3)."""
        psk_store: PskStore = psks or MemoryPskStore()
        state = state_from_welcome(
            welcome, key_package=key_package, init_key=init_key, leaf_key=leaf_key, signer_ref=signer_ref,
            ratchet_tree=ratchet_tree, psks=psk_store, config=config or GroupConfig(),
            expected_reinit=expected_reinit, resumed_from=resumed_from,
        )
        if retain_leaf_key:
            state.retained_keys = frozenset({leaf_key.key_ref})
        group = cls(state, key_store, psk_store)
        if destroy_init_key:
            key_store.destroy(init_key.key_ref)
        return group

    @classmethod
    def external_join(cls, key_store: KeyStore, group_info: bytes, *, signer: Signer, credential: Credential,
                      ratchet_tree: bytes | None = None, psks: PskStore | None = None,
                      psk_ids: Sequence[PreSharedKeyID] = (), config: GroupConfig | None = None,
                      remove_prior: int | None = None) -> tuple[Group, bytes]:
        """Join by external commit (§12.4.3.2); returns the group and the commit to send."""
        from mls.group.external_join import external_join

        return external_join(key_store, group_info, signer=signer, credential=credential,
                             ratchet_tree=ratchet_tree, psks=psks, psk_ids=psk_ids, config=config,
                             remove_prior=remove_prior)


def _committed(p: CachedProposal) -> CommittedProposal:
    return CommittedProposal(p.proposal, p.sender, p.ref)


def _selection_priority(cached: list[CachedProposal], i: int) -> tuple[int, int]:
    """Which cached proposals a committer considers first (§12.2): Removes before Updates of the same
    leaf, the most recent Update first, and a ReInit only after everything else."""
    body = cached[i].proposal.body
    if isinstance(body, ReInit):
        return (3, i)
    if isinstance(body, Remove):
        return (0, i)
    if isinstance(body, Update):
        return (1, -i)
    return (2, i)


def _leftmost_blank(tree: RatchetTree) -> int:
    return next((i for i in range(tree.n_leaves) if tree.leaf(i) is None), tree.n_leaves)


__all__ = [
    "ApplicationMessage",
    "CommitOptions",
    "Group",
    "GroupConfig",
    "Handshake",
    "MemoryPskStore",
    "ProcessedMessage",
    "ProposalMessage",
    "PskStore",
    "StagedCommit",
]
