"""The Welcome message and the secrets it carries to each new member (RFC 9420 §12.4.3.1).

``joiner_secret`` and ``path_secret`` are kept out of ``repr``. Encrypting and opening a Welcome is the
group engine's (:mod:`mls.group.welcome`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from mls.tree.nodes import HPKECiphertext
from mls.wire.proposals import PreSharedKeyID
from mls.wire.struct import U16, Opaque, Opt, Struct, Vec


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
    """``struct { CipherSuite cipher_suite; EncryptedGroupSecrets secrets<V>;
    opaque encrypted_group_info<V>; }``"""

    cipher_suite: Annotated[int, U16]
    secrets: Annotated[tuple[EncryptedGroupSecrets, ...], Vec(EncryptedGroupSecrets)]
    encrypted_group_info: Annotated[bytes, Opaque]
