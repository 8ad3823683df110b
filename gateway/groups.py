"""An identity's memberships (api-v1.md "Groups"): create, list, show, delete, join, external join.

Each operation that changes a membership runs as one :class:`~gateway.group_session.GroupSession`; the
operations inside an existing group (commit, propose, send, process, ...) are in
:mod:`gateway.group_operations`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hsm.keystore import Pkcs11KeyStore
from mls import Credential, ExternalSenders, Group, GroupConfig, KeyPackage, MLSMessage, Welcome

from .auth import Principal
from .config import DeliverySettings
from .credential_policy import check_own_credential
from .custody import keys_for
from .delivery_store import LogConflict, message_digest
from .errors import Problem, conflict
from .group_session import GroupSession, GroupSessions
from .hosted_delivery import HostedDelivery, JoinOptions
from .hosted_submission import HostedSubmission
from .identities import Identities
from .mls_inputs import decode_welcome, external_psk_id, group_config, prior_leaf
from .operation_requests import (
    CreateGroupRequest,
    ExternalJoinRequest,
    GroupAddress,
    GroupSettings,
    JoinRequest,
)
from .persistence import Json, PendingWrites, RequestScope, Response, group_audit_context
from .store import Identity, KeyPackageRecord, Store, Transaction
from .views import b64, group_json, groups_json


class Groups:
    """Membership operations over the store, the HSM key store and the group sessions."""

    def __init__(
        self, store: Store, keys: Pkcs11KeyStore, identities: Identities, sessions: GroupSessions
    ) -> None:
        self.store = store
        self.keys = keys
        self.identities = identities
        self.sessions = sessions
        #: The group service's applier (joins from Welcomes that went through a group's log).
        self.hosted: HostedDelivery | None = None
        #: Submits hosted members' commits to their group's log (set by the service).
        self.submission: HostedSubmission | None = None
        #: The default group settings of hosted members (``[delivery]``; set by the app).
        self.defaults = DeliverySettings()

    def _config(self, identity: Identity, settings: GroupSettings) -> GroupConfig:
        """The member's group config, with its tenant's credential policy as the leaf policy (issue 16); an
        identity whose own credential the policy refuses creates and joins nothing."""
        config = group_config(self.defaults, settings)
        config.leaf_policy = self.sessions.leaf_policy(identity.tenant_id)
        check_own_credential(config.leaf_policy, identity)
        return config

    def create(self, principal: Principal, request: CreateGroupRequest, scope: RequestScope) -> Response:
        """``POST .../groups``: a one-member group at epoch 0 (RFC 9420 §11)."""
        identity = self._within_group_quota(principal, request.identity_id)
        extensions = list(request.extensions)
        config = self._config(identity, request.settings)
        for sender in request.external_senders:  # the tenant's credential policy (RFC 9420 §12.1.8.1)
            config.leaf_policy.credential_validator.validate(sender.credential, sender.signature_key)
        if request.external_senders:
            extensions.append(ExternalSenders(tuple(request.external_senders)).to_extension())
        signer = self.keys.signer(identity.signature_key_ref)
        with group_audit_context(identity.identity_id, request.group_id or b"", 0):
            group = Group.create(
                keys_for(self.keys, identity),
                identity.cipher_suite,
                signer=signer,
                credential=Credential.from_bytes(identity.credential),
                group_id=request.group_id,
                extensions=extensions,
                config=config,
            )
        session = self.sessions.start(
            identity, group, PendingWrites(new_keys=[group.state.keys.leaf_key.key_ref])
        )
        return session.commit(Response(201, {"group_id": b64(group.group_id), "epoch": 0}), scope)

    def _within_group_quota(self, principal: Principal, identity_id: str) -> Identity:
        """The caller's identity, if one more membership keeps it within ``groups_per_identity``
        (gateway.quotas; checked before any MLS or HSM work)."""
        identity = self.identities.get(principal, identity_id)
        with self.store.read_transaction() as tx:
            self.identities.quotas.check_groups(tx, identity_id)
        return identity

    def list(self, principal: Principal, identity_id: str) -> Json:
        """``GET .../groups``."""
        self.identities.get(principal, identity_id)
        with self.store.read_transaction() as tx:
            return groups_json(tx.list_groups(identity_id))

    def show(self, principal: Principal, address: GroupAddress) -> Json:
        """``GET .../groups/{gid}``."""
        identity = self.identities.get(principal, address.identity_id)
        return group_json(self.sessions.open(identity, address.group_id, read_only=True).group)

    def delete(self, principal: Principal, address: GroupAddress, scope: RequestScope) -> Response:
        """``DELETE .../groups/{gid}``: this identity's state of the group, and the keys only it used."""
        session = self.identities.open_group(principal, address.identity_id, address.group_id)
        session.leave()
        return session.commit(Response(204, None), scope)

    def join(self, principal: Principal, request: JoinRequest, scope: RequestScope) -> Response:
        """``POST .../groups/join``: from a Welcome to one of the identity's KeyPackages (RFC 9420 §12.4.3.1),
        which is consumed (its init key destroyed, unless it is a last-resort one). A Welcome that went
        through a group's log joins as the gateway does by itself (and then takes the log's later
        entries); if it already joined from it, the answer is the membership as it is."""
        identity = self._within_group_quota(principal, request.identity_id)
        with self.store.read_transaction() as tx:
            located = tx.welcome_log(identity.tenant_id, message_digest(request.welcome))
        if located is not None and self.hosted is not None and self._named_in(identity, request.welcome):
            group_id = located[0]
            options = JoinOptions(request.psks, request.settings)
            self.hosted.advance(identity, group_id, force_join=True, join=options)
            group = self.sessions.open(identity, group_id, read_only=True).group
            return self.sessions.persistence.commit(
                PendingWrites(), Response(201, _joined_json(group)), scope
            )
        session = self.join_session(
            identity, request.welcome, request.ratchet_tree, request.psks, request.settings
        )
        return session.commit(Response(201, _joined_json(session.group)), scope)

    def _named_in(self, identity: Identity, welcome: bytes) -> bool:
        """Whether the Welcome is for one of the identity's KeyPackages (used or not)."""
        refs = [entry.new_member for entry in decode_welcome(welcome).secrets]
        with self.store.read_transaction() as tx:
            return any(tx.get_key_package(identity.identity_id, ref) is not None for ref in refs)

    def join_session(
        self,
        identity: Identity,
        welcome: bytes,
        ratchet_tree: bytes | None,
        psks: Sequence[tuple[bytes, bytes]] = (),
        settings: GroupSettings | None = None,
    ) -> GroupSession:
        """The unit of work of a join (not committed yet): the group state from the Welcome, the KeyPackage
        consumed and its init key destroyed on commit. The groups quota is checked first: a hosted
        identity's own joins from a group's log count too (refused: a ``rejected`` inbox event)."""
        with self.store.read_transaction() as tx:
            self.identities.quotas.check_groups(tx, identity.identity_id)
        kp_record = self._key_package_for(identity, decode_welcome(welcome))
        kp = MLSMessage.from_bytes(kp_record.key_package).body
        assert isinstance(kp, KeyPackage)
        psk_store = self.sessions.psk_store(identity, psks)
        with group_audit_context(identity.identity_id, b"", None):
            group = Group.join(
                keys_for(self.keys, identity),
                welcome,
                key_package=kp,
                init_key=self.keys.hpke_key(kp_record.init_key_ref),
                leaf_key=self.keys.hpke_key(kp_record.leaf_key_ref),
                signer_ref=identity.signature_key_ref,
                ratchet_tree=ratchet_tree,
                psks=psk_store,
                destroy_init_key=False,
                retain_leaf_key=kp_record.last_resort,
                config=self._config(identity, settings or GroupSettings()),
            )
        identity_id, ref = identity.identity_id, kp_record.ref
        pending = PendingWrites(
            [lambda tx: _consume_key_package(tx, identity_id, ref)],
            dead_keys=[] if kp_record.last_resort else [kp_record.init_key_ref],
        )
        session = self.sessions.start(identity, group, pending)
        session.remember_psks(psks)
        return session

    def _key_package_for(self, identity: Identity, welcome: Welcome) -> KeyPackageRecord:
        """The identity's KeyPackage a Welcome is encrypted to (RFC 9420 §12.4.3.1)."""
        with self.store.read_transaction() as tx:
            for entry in welcome.secrets:
                record = tx.get_key_package(identity.identity_id, entry.new_member)
                if record is not None:
                    if record.consumed and not record.last_resort:
                        raise conflict("the key package of this Welcome was already consumed")
                    return record
        raise Problem(
            "validation_failed",
            "the Welcome is for none of this identity's key packages",
            rule="12.4.3.1/welcome-identity-key-package",
        )

    def external_join(
        self, principal: Principal, request: ExternalJoinRequest, scope: RequestScope
    ) -> Response:
        """``POST .../groups/external-join``: join by external commit (RFC 9420 §12.4.3.2), removing the
        identity's prior leaf on request (a resync: its membership is replaced, not added)."""
        if request.remove_prior or request.prior_leaf is not None:
            identity = self.identities.get(principal, request.identity_id)
        else:
            identity = self._within_group_quota(principal, request.identity_id)
        remove_prior = request.prior_leaf
        if request.remove_prior and remove_prior is None:
            remove_prior = prior_leaf(identity, request.group_info, request.ratchet_tree)
        psks = self.sessions.psk_store(identity, request.psks)
        psk_ids = [external_psk_id(psk_id, identity.cipher_suite) for psk_id, _ in request.psks]
        with group_audit_context(identity.identity_id, b"", None):
            group, commit = Group.external_join(
                keys_for(self.keys, identity),
                request.group_info,
                signer=self.keys.signer(identity.signature_key_ref),
                credential=Credential.from_bytes(identity.credential),
                ratchet_tree=request.ratchet_tree,
                psks=psks,
                psk_ids=psk_ids,
                remove_prior=remove_prior,
                config=self._config(identity, request.settings),
            )
        session = self.sessions.start(
            identity, group, PendingWrites(new_keys=[group.state.keys.leaf_key.key_ref])
        )
        session.remember_psks(request.psks)
        if self.submission is not None:
            self.submission.submit_external_commit(session, commit)
        body = {"group_id": b64(group.group_id), "epoch": group.epoch, "commit": b64(commit)}
        try:
            return session.commit(Response(201, body), scope)
        except LogConflict:
            raise conflict("the group's log moved on while joining; take its latest GroupInfo") from None


def _joined_json(group: Group) -> Json:
    return {
        "group_id": b64(group.group_id),
        "epoch": group.epoch,
        "epoch_authenticator": b64(group.epoch_authenticator),
    }


def _consume_key_package(tx: Transaction, identity_id: str, ref: bytes) -> None:
    if not tx.mark_key_package_consumed(identity_id, ref):
        raise conflict("the key package of this Welcome was already consumed")
