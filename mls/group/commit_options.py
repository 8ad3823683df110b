"""What a member's commit contains and how it is sent (RFC 9420 §12.4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mls.credentials.credential import Credential
from mls.group.handshake_framing import HandshakeFraming
from mls.wire.extensions import Extension
from mls.wire.key_package import KeyPackage
from mls.wire.proposals import PreSharedKeyID, ReInit, ResumptionPSKUsage


@dataclass
class CommitOptions:
    """What a commit contains and how it is sent (§12.4)."""

    add: Sequence[KeyPackage] = ()
    remove: Sequence[int] = ()
    psks: Sequence[PreSharedKeyID] = ()
    group_context_extensions: Sequence[Extension] | None = None
    include_pending: bool = True
    force_path: bool = False
    handshake: HandshakeFraming = HandshakeFraming.public
    #: A ReInit proposal to commit (it must be the only proposal, §12.2).
    reinit: ReInit | None = None
    #: Put the ratchet tree into the Welcome's GroupInfo (ratchet_tree extension, §12.4.3.3).
    ratchet_tree_in_welcome: bool = True
    authenticated_data: bytes = b""
    #: Resumption PSK usages allowed in this commit (reinit and branch only in a new group's first
    #: commit, §11).
    resumption_usages: frozenset[int] = frozenset({ResumptionPSKUsage.application})
    #: A new credential for our own leaf, carried by the commit's UpdatePath leaf node (§7.5; a member
    #: changes its credential with an Update or a commit path, §5.3.1). The commit then has a path.
    credential: Credential | None = None


__all__ = ["CommitOptions"]
