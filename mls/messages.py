"""Commit, group state and joining messages (RFC 9420 §8.1, §12.4, §12.4.3, §12.4.3.1).

``Commit`` (§12.4), ``GroupContext`` (§8.1), ``GroupInfo`` with its to-be-signed ``GroupInfoTBS``
(§12.4.3), and the Welcome message with the secrets it carries (§12.4.3.1). ``joiner_secret`` and
``path_secret`` are kept out of ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from .codec import U16, U32, U64, Opaque, Opt, Struct, Vec
from .extensions import Extension
from .leaf_node import MLS10
from .nodes import HPKECiphertext, UpdatePath
from .proposals import PreSharedKeyID, ProposalOrRef


@dataclass(frozen=True)
class Commit(Struct):
    """``struct { ProposalOrRef proposals<V>; optional<UpdatePath> path; } Commit;``"""

    proposals: Annotated[tuple[ProposalOrRef, ...], Vec(ProposalOrRef)]
    path: Annotated[UpdatePath | None, Opt(UpdatePath)]


@dataclass(frozen=True)
class GroupContext(Struct):
    """``GroupContext`` (§8.1); ``version`` is always mls10."""

    version: Annotated[int, MLS10]
    cipher_suite: Annotated[int, U16]
    group_id: Annotated[bytes, Opaque]
    epoch: Annotated[int, U64]
    tree_hash: Annotated[bytes, Opaque]
    confirmed_transcript_hash: Annotated[bytes, Opaque]
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]


@dataclass(frozen=True)
class GroupInfo(Struct):
    """``GroupInfo``; ``confirmation_tag`` is a MAC (``opaque<V>``), ``signer`` a leaf index."""

    group_context: Annotated[GroupContext, GroupContext]
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]
    confirmation_tag: Annotated[bytes, Opaque]
    signer: Annotated[int, U32]
    signature: Annotated[bytes, Opaque]

    def tbs(self) -> bytes:
        """The ``GroupInfoTBS`` encoding: every field but ``signature``."""
        return self.to_bytes_without("signature")


@dataclass(frozen=True)
class PathSecret(Struct):
    """``struct { opaque path_secret<V>; } PathSecret;``"""

    path_secret: Annotated[bytes, Opaque] = field(repr=False)


@dataclass(frozen=True)
class GroupSecrets(Struct):
    """``GroupSecrets``: the secrets a Welcome encrypts to each new member."""

    joiner_secret: Annotated[bytes, Opaque] = field(repr=False)
    path_secret: Annotated[PathSecret | None, Opt(PathSecret)] = field(repr=False)
    psks: Annotated[tuple[PreSharedKeyID, ...], Vec(PreSharedKeyID)]


@dataclass(frozen=True)
class EncryptedGroupSecrets(Struct):
    """``EncryptedGroupSecrets``; ``new_member`` is a KeyPackageRef (``opaque<V>``)."""

    new_member: Annotated[bytes, Opaque]
    encrypted_group_secrets: Annotated[HPKECiphertext, HPKECiphertext]


@dataclass(frozen=True)
class Welcome(Struct):
    """``struct { CipherSuite cipher_suite; EncryptedGroupSecrets secrets<V>; opaque encrypted_group_info<V>; }``"""

    cipher_suite: Annotated[int, U16]
    secrets: Annotated[tuple[EncryptedGroupSecrets, ...], Vec(EncryptedGroupSecrets)]
    encrypted_group_info: Annotated[bytes, Opaque]
