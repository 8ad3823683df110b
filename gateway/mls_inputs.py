"""The MLS values requests carry, decoded and checked, and the ones operations make for them.

The operation layer's translation of :mod:`gateway.operation_requests` into ``mls`` values: encoded
messages decoded to the structure the field promises (else ``invalid_request``), PSK ids with fresh
nonces (RFC 9420 §8.4), the handshake wire format (§6), a resync's prior leaf (§12.4.3.2).
"""

from __future__ import annotations

import os

from mls import (
    GroupConfig,
    GroupInfo,
    HandshakeFraming,
    KeyPackage,
    MLSMessage,
    PreSharedKeyID,
    RatchetConfig,
    ResumptionPSKUsage,
    Welcome,
    cipher_suite,
    tree_from_group_info,
)

from .config import DeliverySettings
from .errors import Problem, invalid
from .operation_requests import GroupSettings, HandshakeName
from .store import Identity


def decode_key_package(data: bytes, field: str) -> KeyPackage:
    """An MLSMessage carrying a KeyPackage (RFC 9420 §10)."""
    kp = MLSMessage.from_bytes(data).body
    if not isinstance(kp, KeyPackage):
        raise invalid(f"{field} is not an MLSMessage carrying a KeyPackage")
    return kp


def decode_welcome(data: bytes) -> Welcome:
    """An MLSMessage carrying a Welcome (RFC 9420 §12.4.3.1)."""
    welcome = MLSMessage.from_bytes(data).body
    if not isinstance(welcome, Welcome):
        raise invalid("welcome is not an MLSMessage carrying a Welcome")
    return welcome


def handshake(name: HandshakeName) -> HandshakeFraming:
    """How handshake messages are sent: as PublicMessage or PrivateMessage (RFC 9420 §6)."""
    return HandshakeFraming(name)


def _nonce(suite: int) -> bytes:
    return os.urandom(cipher_suite(suite).n_h)


def external_psk_id(psk_id: bytes, suite: int) -> PreSharedKeyID:
    """An external PreSharedKeyID with a fresh nonce (RFC 9420 §8.4)."""
    return PreSharedKeyID.external(psk_id, _nonce(suite))


def resumption_psk_id(group_id: bytes, epoch: int, suite: int) -> PreSharedKeyID:
    """An application-usage resumption PreSharedKeyID with a fresh nonce (RFC 9420 §8.6)."""
    return PreSharedKeyID.resumption(ResumptionPSKUsage.application, group_id, epoch, _nonce(suite))


def prior_leaf(identity: Identity, group_info: bytes, ratchet_tree: bytes | None) -> int:
    """The identity's own leaf in the group a resync rejoins: the leaf with its signature key."""
    gi = MLSMessage.from_bytes(group_info).body
    if not isinstance(gi, GroupInfo):
        raise invalid("group_info is not an MLSMessage carrying a GroupInfo")
    tree = tree_from_group_info(cipher_suite(gi.group_context.cipher_suite), gi, ratchet_tree)
    for index, leaf in tree.leaves():
        if leaf.signature_key == identity.signature_public_key:
            return index
    raise Problem(
        "validation_failed",
        "remove_prior: this identity has no leaf in that group",
        rule="12.4.3.2/resync-prior-leaf",
    )


def group_config(defaults: DeliverySettings, settings: GroupSettings) -> GroupConfig:
    """A member's :class:`mls.GroupConfig`: the request's settings over the ``[delivery]`` defaults."""

    def pick(value: int | None, default: int) -> int:
        return default if value is None else value

    ratchet = RatchetConfig(
        pick(settings.out_of_order_tolerance, defaults.out_of_order_tolerance),
        pick(settings.max_forward_distance, defaults.max_forward_distance),
    )
    return GroupConfig(ratchet=ratchet, past_epochs=pick(settings.past_epochs, defaults.past_epochs))
