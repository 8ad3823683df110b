"""A staged commit (RFC 9420 §12.4.2): the next epoch, computed but not yet adopted.

:meth:`Group.commit <mls.group.group.Group.commit>` and :meth:`Group.process
<mls.group.group.Group.process>` return a :class:`StagedCommit`; :meth:`Group.merge
<mls.group.group.Group.merge>` adopts it. The value is finished when it is made: ``dead_key_refs`` already
leaves out the keys the group must keep (``GroupState.retained_keys``, a last-resort KeyPackage's leaf key
shared with other groups), and merging never changes it.

:meth:`StagedCommit.to_bytes` / :meth:`StagedCommit.from_bytes` give a stable JSON encoding tagged with
``STAGED_COMMIT_VERSION``, for a caller that keeps a pending commit across restarts. The encoding holds
the next epoch's secrets: callers must seal it at rest, as they seal the group state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mls.crypto.key_protocols import KeyStore
from mls.errors import KeyStoreError, MLSError, StateError
from mls.group.proposal_list import CommittedProposal
from mls.group.state import GroupState
from mls.tree.leaf_validation import LeafPolicy
from mls.wire.framing import Sender
from mls.wire.proposals import Proposal

STAGED_COMMIT_VERSION = 1


@dataclass(frozen=True)
class StagedCommit:
    """The next epoch, computed but not adopted. ``state`` is ``None`` when the commit removed us."""

    state: GroupState | None
    sender: Sender
    #: The committed proposals with their senders (by-reference ones resolved from the epoch's cache).
    proposals: list[CommittedProposal]
    #: The committed AuthenticatedContent (identifies an own commit when it comes back).
    content: bytes = field(repr=False)
    #: For an own commit: the commit as an MLSMessage, the Welcome for added members, the new epoch's
    #: GroupInfo and ratchet tree.
    commit: bytes | None = None
    welcome: bytes | None = None
    group_info: bytes | None = None
    ratchet_tree: bytes | None = None
    #: Private keys that are dead once this commit is merged (retained keys are never among them).
    dead_key_refs: list[bytes] = field(default_factory=list)

    @property
    def epoch(self) -> int | None:
        return None if self.state is None else self.state.epoch

    @property
    def removed_self(self) -> bool:
        return self.state is None

    # ---- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The staged commit as versioned JSON. It contains the next epoch's secrets: seal it at rest.

        Proposals are stored rather than re-derived: a proposal committed by reference lives in the
        current epoch's proposal cache, which the next epoch's state no longer holds."""
        return json.dumps(self._to_state(), separators=(",", ":"), sort_keys=True).encode()

    def _to_state(self) -> dict[str, Any]:
        return {
            "version": STAGED_COMMIT_VERSION,
            "state": None if self.state is None else self.state.to_state(),
            "sender": self.sender.to_bytes().hex(),
            "proposals": [_proposal_to_state(p) for p in self.proposals],
            "content": self.content.hex(),
            "commit": _hex_or_none(self.commit),
            "welcome": _hex_or_none(self.welcome),
            "group_info": _hex_or_none(self.group_info),
            "ratchet_tree": _hex_or_none(self.ratchet_tree),
            "dead_key_refs": [r.hex() for r in self.dead_key_refs],
        }

    @classmethod
    def from_bytes(
        cls, data: bytes, key_store: KeyStore, leaf_policy: LeafPolicy | None = None
    ) -> StagedCommit:
        """Rebuild a staged commit; the next epoch's leaf key comes back from ``key_store`` by reference.

        Corrupt or unknown-version input raises :class:`StateError`; a key reference ``key_store`` does
        not hold raises its :class:`KeyStoreError`."""
        try:
            s = json.loads(data)
            if not isinstance(s, dict) or s.get("version") != STAGED_COMMIT_VERSION:
                version = s.get("version") if isinstance(s, dict) else None
                raise StateError(f"unsupported staged commit version {version!r}")
            return cls._from_state(s, key_store, leaf_policy)
        except (StateError, KeyStoreError):
            raise
        except MLSError as e:
            raise StateError(f"malformed staged commit ({type(e).__name__}: {e})") from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
            raise StateError(f"malformed staged commit ({type(e).__name__})") from None

    @classmethod
    def _from_state(
        cls, s: dict[str, Any], key_store: KeyStore, leaf_policy: LeafPolicy | None
    ) -> StagedCommit:
        state = None if s["state"] is None else GroupState.from_state(s["state"], key_store, leaf_policy)
        return cls(
            state=state,
            sender=Sender.from_bytes(bytes.fromhex(s["sender"])),
            proposals=[_proposal_from_state(p) for p in s["proposals"]],
            content=bytes.fromhex(s["content"]),
            commit=_bytes_or_none(s["commit"]),
            welcome=_bytes_or_none(s["welcome"]),
            group_info=_bytes_or_none(s["group_info"]),
            ratchet_tree=_bytes_or_none(s["ratchet_tree"]),
            dead_key_refs=[bytes.fromhex(r) for r in s["dead_key_refs"]],
        )


def _proposal_to_state(p: CommittedProposal) -> list[str | None]:
    return [p.proposal.to_bytes().hex(), p.sender.to_bytes().hex(), _hex_or_none(p.ref)]


def _proposal_from_state(s: list[str | None]) -> CommittedProposal:
    proposal, sender, ref = s
    if proposal is None or sender is None:
        raise StateError("malformed staged commit: a committed proposal without its body or sender")
    return CommittedProposal(
        Proposal.from_bytes(bytes.fromhex(proposal)),
        Sender.from_bytes(bytes.fromhex(sender)),
        _bytes_or_none(ref),
    )


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _bytes_or_none(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


__all__ = ["STAGED_COMMIT_VERSION", "StagedCommit"]
