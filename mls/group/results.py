"""What processing a message gives a member (RFC 9420 §6, §12): application data, a cached proposal,
or a staged commit."""

from __future__ import annotations

from dataclasses import dataclass, field

from mls.group.staged_commit import StagedCommit
from mls.wire.framing import AuthenticatedContent, Sender
from mls.wire.proposals import Proposal


@dataclass
class ApplicationMessage:
    """Application data from a member (§6.3)."""

    sender: Sender
    data: bytes = field(repr=False)
    authenticated_data: bytes
    epoch: int

    @classmethod
    def from_content(cls, auth: AuthenticatedContent) -> ApplicationMessage:
        c = auth.content
        assert c.application_data is not None
        return cls(c.sender, c.application_data, c.authenticated_data, c.epoch)


@dataclass
class ProposalMessage:
    """A proposal received and cached for commits by reference (§12.1)."""

    sender: Sender
    ref: bytes
    proposal: Proposal
    epoch: int


ProcessedMessage = ApplicationMessage | ProposalMessage | StagedCommit

__all__ = ["ApplicationMessage", "ProcessedMessage", "ProposalMessage"]
