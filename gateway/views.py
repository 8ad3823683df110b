"""The JSON documents of api-v1.md's responses: identities, groups, credentials, senders, processed messages.

Every response body that shows an MLS value is built here, so the API's field names live in one place.
Binary values are standard base64 with padding (RFC 4648 §4).
"""

from __future__ import annotations

import base64

from mls import (
    Add,
    ApplicationMessage,
    Credential,
    CredentialType,
    ExternalInit,
    Group,
    GroupContextExtensions,
    PreSharedKey,
    ProcessedMessage,
    ProposalMessage,
    ReInit,
    Remove,
    Sender,
    StagedCommit,
    Update,
)

from .persistence import Json
from .store import GroupRecord, Identity, KeyPackageRecord

_SENDER_TYPES = {1: "member", 2: "external", 3: "new_member_proposal", 4: "new_member_commit"}
_PROPOSAL_NAMES: dict[type, str] = {
    Add: "add",
    Update: "update",
    Remove: "remove",
    PreSharedKey: "psk",
    ReInit: "reinit",
    ExternalInit: "external_init",
    GroupContextExtensions: "group_context_extensions",
}


def b64(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4), the API's encoding of every binary field."""
    return base64.b64encode(data).decode()


def credential_json(credential: Credential) -> Json:
    """A credential (RFC 9420 §5.3): ``basic`` with its identity, or ``x509`` with its certificates."""
    if credential.credential_type == CredentialType.basic:
        assert credential.identity is not None
        return {"type": "basic", "identity": b64(credential.identity)}
    return {"type": "x509", "certificates": [b64(c.cert_data) for c in credential.certificates or ()]}


def sender_json(sender: Sender) -> Json:
    """A message's sender (RFC 9420 §6): its type and, for members, the leaf index."""
    out: Json = {"type": _SENDER_TYPES.get(sender.sender_type, str(sender.sender_type))}
    if sender.leaf_index is not None:
        out["leaf_index"] = sender.leaf_index
    if sender.sender_index is not None:
        out["sender_index"] = sender.sender_index
    return out


def proposal_name(body: object) -> str:
    """The API's name of a proposal type (api-v1: add, update, remove, psk, reinit, ...)."""
    return _PROPOSAL_NAMES.get(type(body), type(body).__name__.lower())


def identity_json(identity: Identity, kek: str | None = None) -> Json:
    """``GET /v1/identities/{identity_id}`` (``kek``: the label of the KEK its wrapped keys are under)."""
    custody = {"signature": identity.custody_signature, "hpke": identity.custody_hpke}
    if kek is not None:
        custody["kek"] = kek
    return {
        "identity_id": identity.identity_id,
        "name": identity.name,
        "cipher_suite": identity.cipher_suite,
        "credential": credential_json(Credential.from_bytes(identity.credential)),
        "signature_public_key": b64(identity.signature_public_key),
        "custody": custody,
        "auto_join": identity.auto_join,
    }


def key_packages_json(records: list[KeyPackageRecord]) -> Json:
    """``GET /v1/identities/{identity_id}/key-packages``."""
    return {
        "key_packages": [
            {"ref": b64(k.ref), "consumed": k.consumed, "last_resort": k.last_resort} for k in records
        ]
    }


def groups_json(records: list[GroupRecord]) -> Json:
    """``GET /v1/identities/{identity_id}/groups``."""
    return {"groups": [{"group_id": b64(g.group_id), "epoch": g.epoch} for g in records]}


def group_json(group: Group) -> Json:
    """``GET .../groups/{gid}``: the member's view of the group's current epoch."""
    s = group.state
    return {
        "group_id": b64(s.group_id),
        # A removed member's state stays at the epoch before its removal: show the removal's epoch.
        "epoch": s.epoch if s.removed_in_epoch is None else s.removed_in_epoch,
        "cipher_suite": s.cs.suite_id,
        "own_leaf_index": s.own_leaf,
        "epoch_authenticator": b64(group.epoch_authenticator),
        "tree_hash": b64(s.tree.tree_hash()),
        "active": s.active,
        "members": [
            {
                "leaf_index": i,
                "credential": credential_json(leaf.credential),
                "signature_key": b64(leaf.signature_key),
            }
            for i, leaf in s.tree.leaves()
        ],
        "pending_proposals": [
            {"ref": b64(p.ref), "type": proposal_name(p.proposal.body), "sender": sender_json(p.sender)}
            for p in s.proposals.values()
        ],
        "pending_commit": group.pending_commit is not None,
        "config": {
            "out_of_order_tolerance": s.config.ratchet.out_of_order_tolerance,
            "max_forward_distance": s.config.ratchet.max_forward_distance,
            "past_epochs": s.config.past_epochs,
        },
    }


def commit_json(staged: StagedCommit, epoch: int | None) -> Json:
    """The answer to ``POST .../commits``: ``epoch`` is the new one once merged, the current one
    if pending."""
    return {
        "commit": b64(staged.commit or b""),
        "welcome": None if staged.welcome is None else b64(staged.welcome),
        "group_info": b64(staged.group_info or b""),
        # The new epoch's tree: with the three above, a commit bundle (api-delivery.md) to carry.
        "ratchet_tree": None if staged.state is None else b64(staged.state.tree.encode()),
        "epoch": epoch,
    }


def result_json(result: ProcessedMessage, group: Group) -> Json:
    """One result of ``POST .../process`` (an application message, a proposal, or a merged commit)."""
    if isinstance(result, ApplicationMessage):
        return {
            "kind": "application",
            "sender": sender_json(result.sender),
            "data": b64(result.data),
            "authenticated_data": b64(result.authenticated_data),
            "epoch": result.epoch,
        }
    if isinstance(result, ProposalMessage):
        return {
            "kind": "proposal",
            "sender": sender_json(result.sender),
            "ref": b64(result.ref),
            "proposal_type": proposal_name(result.proposal.body),
            "epoch": result.epoch,
        }
    return {
        "kind": "commit",
        "sender": sender_json(result.sender),
        # The new epoch, also for a member the commit removed (its merged state stays at the old one).
        "epoch": result.epoch if result.epoch is not None else group.epoch + 1,
        "removed": result.removed_self,
        "epoch_authenticator": b64(group.epoch_authenticator),
    }
