"""``GroupInfo`` and its to-be-signed form ``GroupInfoTBS`` (RFC 9420 §12.4.3), with signing and
verification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from mls.crypto.cipher_suite import CipherSuite
from mls.crypto.key_protocols import Signer
from mls.errors import CryptoError
from mls.wire.extensions import Extension
from mls.wire.group_context import GroupContext
from mls.wire.struct import U32, Opaque, Struct, Vec


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


def sign_group_info(cs: CipherSuite, signer: Signer, unsigned: GroupInfo) -> GroupInfo:
    """``SignWithLabel(., "GroupInfoTBS", GroupInfoTBS)`` (§12.4.3)."""
    sig = cs.sign_with_label(signer, "GroupInfoTBS", unsigned.tbs())
    return GroupInfo(
        unsigned.group_context, unsigned.extensions, unsigned.confirmation_tag, unsigned.signer, sig
    )


def verify_group_info_signature(cs: CipherSuite, group_info: GroupInfo, signer_public_key: bytes) -> None:
    if not cs.verify_with_label(signer_public_key, "GroupInfoTBS", group_info.tbs(), group_info.signature):
        raise CryptoError("12.4.3/group-info-signature", "the GroupInfo signature does not verify")
