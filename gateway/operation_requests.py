"""What each operation of api-v1.md takes, parsed from its request (path and body) by :mod:`gateway.api`.

One frozen dataclass per operation that takes more than a path: the handler builds it (with
:mod:`gateway.parsing`), the operation (:mod:`gateway.groups`, :mod:`gateway.group_operations`, ...)
translates it into the ``mls`` calls. Binary fields are raw bytes here (already base64-decoded); MLS
messages are still encoded (decoded, and refused with ``decode_error``, by the operation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mls import Credential, Extension, ExternalSender

#: How a handshake message is sent (RFC 9420 §6): as a PublicMessage or a PrivateMessage.
HandshakeName = Literal["public", "private"]
ProposalKind = Literal["add", "remove", "update", "psk", "group_context_extensions"]


@dataclass(frozen=True)
class ExternalPsk:
    """An external PSK (RFC 9420 §8.4) by id; ``secret`` is given inline or was remembered earlier."""

    psk_id: bytes
    secret: bytes | None = None


@dataclass(frozen=True)
class ResumptionPsk:
    """A resumption PSK (RFC 9420 §8.6): an epoch of one of the identity's groups."""

    group_id: bytes
    epoch: int


@dataclass(frozen=True)
class CreateIdentityRequest:
    name: str
    cipher_suite: int = 1
    credential: Credential | None = None
    #: Join by itself from a Welcome the group's log routes to it (api-delivery.md, default true).
    auto_join: bool = True


@dataclass(frozen=True)
class CreateKeyPackagesRequest:
    identity_id: str
    count: int = 1
    last_resort: bool = False
    lifetime_days: int = 90


@dataclass(frozen=True)
class GroupAddress:
    """One identity's membership of one group, as the path names it."""

    identity_id: str
    group_id: bytes


@dataclass(frozen=True)
class GroupSettings:
    """A member's configuration of one group (api-delivery.md: the out-of-order window and the maximum
    forward distance are group configuration); ``None`` takes the gateway's ``[delivery]`` default."""

    #: Generations below the newest still readable (RFC 9420 §9.2's "reasonable amount of time").
    out_of_order_tolerance: int | None = None
    #: Generations a receiver may skip in one step.
    max_forward_distance: int | None = None
    #: Past epochs kept to read late application messages.
    past_epochs: int | None = None


@dataclass(frozen=True)
class CreateGroupRequest:
    identity_id: str
    group_id: bytes | None = None
    extensions: list[Extension] = field(default_factory=list)
    external_senders: list[ExternalSender] = field(default_factory=list)
    settings: GroupSettings = field(default_factory=GroupSettings)


@dataclass(frozen=True)
class JoinRequest:
    identity_id: str
    welcome: bytes
    ratchet_tree: bytes | None = None
    psks: list[tuple[bytes, bytes]] = field(default_factory=list)
    settings: GroupSettings = field(default_factory=GroupSettings)


@dataclass(frozen=True)
class ExternalJoinRequest:
    identity_id: str
    group_info: bytes
    ratchet_tree: bytes | None = None
    remove_prior: bool = False
    #: The leaf to remove, when the client names it (else found by the identity's signature key).
    prior_leaf: int | None = None
    psks: list[tuple[bytes, bytes]] = field(default_factory=list)
    settings: GroupSettings = field(default_factory=GroupSettings)


@dataclass(frozen=True)
class CommitRequest:
    identity_id: str
    group_id: bytes
    #: KeyPackages to add, each an encoded MLSMessage.
    add: list[bytes] = field(default_factory=list)
    remove: list[int] = field(default_factory=list)
    external_psks: list[ExternalPsk] = field(default_factory=list)
    resumption_psks: list[ResumptionPsk] = field(default_factory=list)
    group_context_extensions: list[Extension] | None = None
    include_pending: bool = True
    force_path: bool = False
    handshake: HandshakeName = "public"
    #: Stage the commit instead of merging it (merged or discarded by a later request).
    pending: bool = False
    #: The epoch the caller built its intent on: 409 when the group already left it (api-delivery.md).
    epoch: int | None = None


@dataclass(frozen=True)
class ProposalRequest:
    identity_id: str
    group_id: bytes
    kind: ProposalKind
    handshake: HandshakeName = "public"
    key_package: bytes | None = None
    leaf_index: int | None = None
    psk: ExternalPsk | None = None
    extensions: list[Extension] = field(default_factory=list)
    #: As :attr:`CommitRequest.epoch`.
    epoch: int | None = None


@dataclass(frozen=True)
class SendRequest:
    identity_id: str
    group_id: bytes
    #: (data, authenticated_data) of each application message, in order.
    messages: list[tuple[bytes, bytes]]
    #: The batch form (``messages``) was used: answer a list.
    batch: bool = False


@dataclass(frozen=True)
class ProcessRequest:
    identity_id: str
    group_id: bytes
    messages: list[bytes]
    batch: bool = False


@dataclass(frozen=True)
class ExportRequest:
    identity_id: str
    group_id: bytes
    label: str
    length: int
    context: bytes = b""
