"""``Commit`` (RFC 9420 §12.4): the proposals a commit covers and its optional UpdatePath."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from mls.tree.nodes import UpdatePath
from mls.wire.proposals import ProposalOrRef
from mls.wire.struct import Opt, Struct, Vec


@dataclass(frozen=True)
class Commit(Struct):
    """``struct { ProposalOrRef proposals<V>; optional<UpdatePath> path; } Commit;``"""

    proposals: Annotated[tuple[ProposalOrRef, ...], Vec(ProposalOrRef)]
    path: Annotated[UpdatePath | None, Opt(UpdatePath)]
