"""Joining a group from a Welcome (RFC 9420 §12.4.3.1), and the checks of reinit and branch Welcomes
(§11.2, §11.3).

:func:`state_from_welcome` decrypts the joiner's GroupSecrets and the GroupInfo, validates the ratchet
tree (from the ``ratchet_tree`` extension or handed over separately, §12.4.3.3), verifies the GroupInfo
signature and confirmation tag, places the joiner in the tree and derives the keys it holds on its path,
and returns the member's first :class:`~mls.group.state.GroupState`. Nothing is changed on failure.
"""

from __future__ import annotations

from collections.abc import Sequence

from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore
from mls.errors import ValidationError
from mls.group.state import GroupConfig, GroupState
from mls.group.welcome import decrypt_group_info, open_group_secrets, welcome_from_message
from mls.schedule.key_schedule import KeySchedule
from mls.schedule.psk import PskStore, psk_secret
from mls.schedule.transcript import interim_transcript_hash
from mls.tree import tree_math as tm
from mls.tree.leaf_node import LeafNode
from mls.tree.leaf_validation import validate_external_senders
from mls.tree.nodes import RatchetTreeExtension
from mls.tree.ratchet_tree import RatchetTree
from mls.tree.tree_validation import validate_tree
from mls.tree.treekem import PathKeys, derive_path_secrets, node_key
from mls.wire.extensions import RequiredCapabilities, check_unique_extension_types, find_payload
from mls.wire.group_context import GroupContext
from mls.wire.group_info import GroupInfo, verify_group_info_signature
from mls.wire.key_package import KeyPackage, key_package_ref
from mls.wire.proposals import PreSharedKeyID, PSKType, ReInit, ResumptionPSKUsage
from mls.wire.welcome import GroupSecrets, PathSecret, Welcome


def state_from_welcome(
    welcome: bytes | Welcome,
    *,
    key_package: KeyPackage,
    init_key: HpkePrivateKey,
    leaf_key: HpkePrivateKey,
    signer_ref: bytes,
    ratchet_tree: bytes | None,
    psks: PskStore,
    config: GroupConfig,
    expected_reinit: ReInit | None = None,
    resumed_from: GroupContext | None = None,
) -> GroupState:
    """The joiner's state in the group a Welcome (an MLSMessage, or its decoded body) is for (§12.4.3.1)."""
    cs = cipher_suite(key_package.cipher_suite)
    w = welcome_from_message(welcome)
    secrets = open_group_secrets(cs, w, key_package_ref(cs, key_package), init_key)
    psk_values = [(p, _joiner_psk(psks, p)) for p in secrets.psks]
    _check_joiner_psks(secrets.psks)
    psk = psk_secret(cs, psk_values)
    welcome_secret = KeySchedule.from_joiner_secret(cs, secrets.joiner_secret, psk, b"").welcome_secret
    gi = decrypt_group_info(cs, welcome_secret, w.encrypted_group_info)
    _check_resumption_join(gi, secrets.psks, expected_reinit, resumed_from)
    return _state_from_group_info(
        cs, gi, secrets, psk, key_package, leaf_key, signer_ref, ratchet_tree, config
    )


def member_state_from_welcome(
    key_store: KeyStore,
    welcome: bytes | Welcome,
    *,
    key_package: KeyPackage,
    init_key: HpkePrivateKey,
    leaf_key: HpkePrivateKey,
    signer_ref: bytes,
    ratchet_tree: bytes | None,
    psks: PskStore,
    config: GroupConfig,
    destroy_init_key: bool,
    retain_leaf_key: bool,
    expected_reinit: ReInit | None,
    resumed_from: GroupContext | None,
) -> GroupState:
    """:func:`state_from_welcome`, then the KeyPackage's keys are dealt with (§12.4.3.1, §16.8): the
    init key is destroyed, and the leaf key of a last-resort KeyPackage (shared by every group joined
    with it) is marked retained so that no commit of this group destroys it."""
    state = state_from_welcome(
        welcome,
        key_package=key_package,
        init_key=init_key,
        leaf_key=leaf_key,
        signer_ref=signer_ref,
        ratchet_tree=ratchet_tree,
        psks=psks,
        config=config,
        expected_reinit=expected_reinit,
        resumed_from=resumed_from,
    )
    if retain_leaf_key:
        state.retained_keys = frozenset({leaf_key.key_ref})
    if destroy_init_key:
        key_store.destroy(init_key.key_ref)
    return state


def _joiner_psk(store: PskStore, psk_id: PreSharedKeyID) -> bytes:
    value = store.get(psk_id)
    if value is None:
        raise ValidationError(
            "12.4.3.1/welcome-psk-available", "the Welcome needs a PSK this client does not have"
        )
    return value


def _check_resumption_join(
    gi: GroupInfo,
    psks: Sequence[PreSharedKeyID],
    expected_reinit: ReInit | None,
    resumed_from: GroupContext | None,
) -> None:
    """A Welcome with a reinit or branch PSK starts a new group at epoch 1 that matches the old group
    (§12.4.3.1, §11.2, §11.3); a joiner expecting a reinitialization requires its PSK."""
    ctx = gi.group_context
    special = [
        p
        for p in psks
        if p.psktype == PSKType.resumption
        and p.usage in (ResumptionPSKUsage.reinit, ResumptionPSKUsage.branch)
    ]
    if special and ctx.epoch != 1:
        raise ValidationError(
            "12.4.3.1/resumption-epoch-one", "a reinit or branch Welcome must be for epoch 1"
        )
    if expected_reinit is not None:
        if not any(p.usage == ResumptionPSKUsage.reinit for p in special):
            raise ValidationError(
                "11.2/reinit-psk-present", "a reinitialized group's Welcome must carry a reinit PSK"
            )
        got = (ctx.group_id, ctx.version, ctx.cipher_suite, ctx.extensions)
        want = (
            expected_reinit.group_id,
            expected_reinit.version,
            expected_reinit.cipher_suite,
            expected_reinit.extensions,
        )
        if got != want:
            raise ValidationError(
                "11.2/reinit-group-matches", "the new group does not match the ReInit proposal"
            )
    if resumed_from is None:
        return
    for p in special:
        if (p.psk_group_id, p.psk_epoch) != (resumed_from.group_id, resumed_from.epoch):
            raise ValidationError(
                "12.4.3.1/resumption-psk-group-epoch",
                "the resumption PSK is not from the expected group and epoch",
            )
        if p.usage == ResumptionPSKUsage.branch and (ctx.version, ctx.cipher_suite) != (
            resumed_from.version,
            resumed_from.cipher_suite,
        ):
            raise ValidationError(
                "11.3/branch-version-cipher-suite", "a branch keeps the old group's version and cipher suite"
            )


def _check_joiner_psks(psks: Sequence[PreSharedKeyID]) -> None:
    special = [
        p for p in psks if p.psktype == PSKType.resumption and p.usage != ResumptionPSKUsage.application
    ]
    if len(special) > 1:
        raise ValidationError(
            "12.4.3.1/resumption-psk-unique", "at most one resumption PSK of usage reinit or branch"
        )


def tree_from_group_info(cs: CipherSuite, gi: GroupInfo, ratchet_tree: bytes | None) -> RatchetTree:
    """The ratchet tree from the GroupInfo's ``ratchet_tree`` extension, or else the one given (§12.4.3.3)."""
    ext = find_payload(gi.extensions, RatchetTreeExtension)
    if ext is not None:
        return RatchetTree.from_extension(cs, ext)
    if ratchet_tree is None:
        raise ValidationError(
            "12.4.3.3/ratchet-tree-present", "no ratchet tree: neither in the GroupInfo nor given out of band"
        )
    return RatchetTree.decode(cs, ratchet_tree)


def verify_group_info_signer(cs: CipherSuite, gi: GroupInfo, tree: RatchetTree) -> None:
    """The GroupInfo is signed by the member at leaf ``signer``, which is not blank (§12.4.3)."""
    signer = tree.leaf(gi.signer)
    if signer is None:
        raise ValidationError("12.4.3/group-info-signer-leaf", "the GroupInfo signer's leaf is blank")
    verify_group_info_signature(cs, gi, signer.signature_key)


def _state_from_group_info(
    cs: CipherSuite,
    gi: GroupInfo,
    secrets: GroupSecrets,
    psk: bytes,
    key_package: KeyPackage,
    leaf_key: HpkePrivateKey,
    signer_ref: bytes,
    ratchet_tree: bytes | None,
    config: GroupConfig,
) -> GroupState:
    ctx = gi.group_context
    if ctx.cipher_suite != key_package.cipher_suite:
        raise ValidationError(
            "12.4.3.1/group-info-cipher-suite", "the GroupInfo's cipher suite is not the KeyPackage's"
        )
    check_unique_extension_types(ctx.extensions)
    tree = tree_from_group_info(cs, gi, ratchet_tree)
    verify_group_info_signer(cs, gi, tree)
    validate_tree(
        tree,
        group_id=ctx.group_id,
        tree_hash=ctx.tree_hash,
        policy=config.leaf_policy,
        required=find_payload(ctx.extensions, RequiredCapabilities),
    )
    validate_external_senders(ctx.extensions, config.leaf_policy)
    own = next((i for i, leaf in tree.leaves() if leaf == key_package.leaf_node), None)
    if own is None:
        raise ValidationError("12.4.3.1/own-leaf-in-tree", "the tree has no leaf equal to this KeyPackage's")
    keys = _joiner_path_keys(cs, tree, own, gi.signer, leaf_key, secrets.path_secret)
    ks = KeySchedule.from_joiner_secret(cs, secrets.joiner_secret, psk, ctx.to_bytes())
    ks.secrets.verify_confirmation_tag(ctx.confirmed_transcript_hash, gi.confirmation_tag)
    secret_tree, epoch_secrets = ks.secrets.start_secret_tree(tree.n_leaves, config.ratchet)
    return GroupState(
        context=ctx,
        tree=tree,
        keys=keys,
        signer_ref=signer_ref,
        secrets=epoch_secrets,
        secret_tree=secret_tree,
        interim_transcript_hash=interim_transcript_hash(
            cs, ctx.confirmed_transcript_hash, gi.confirmation_tag
        ),
        confirmation_tag=gi.confirmation_tag,
        config=config,
        resumption_psks={ctx.epoch: epoch_secrets.resumption_psk},
    )


def _joiner_path_keys(
    cs: CipherSuite,
    tree: RatchetTree,
    own: int,
    signer: int,
    leaf_key: HpkePrivateKey,
    path_secret: PathSecret | None,
) -> PathKeys:
    """The joiner's leaf key, plus keys from the common ancestor with the committer up (§12.4.3.1)."""
    keys = PathKeys(own, leaf_key)
    if leaf_key.public_key != (tree.leaf(own) or _never()).encryption_key:
        raise ValidationError(
            "12.4.3.1/leaf-private-key", "the leaf private key does not match the joiner's leaf"
        )
    if path_secret is None:
        return keys
    ancestor = tm.common_ancestor(2 * own, 2 * signer)
    path = (
        [ancestor, *tm.direct_path(ancestor, tree.n_leaves)]
        if ancestor != tm.root(tree.n_leaves)
        else [ancestor]
    )
    filtered = [x for x in path if tree.node(x) is not None]
    for x, secret in zip(filtered, derive_path_secrets(cs, path_secret.path_secret, len(filtered))):
        key = node_key(cs, secret)
        node = tree.node(x)
        assert node is not None
        if key.public_key != node.encryption_key:
            raise ValidationError(
                "12.4.3.1/path-secret-public-key", f"path_secret does not give the public key of node {x}"
            )
        keys.node_keys[x] = key
    return keys


def _never() -> LeafNode:
    raise ValidationError("12.4.3.1/own-leaf-non-blank", "the joiner's leaf is blank")
