"""Key packages (RFC 9420 §10): ``KeyPackage`` and its to-be-signed encoding ``KeyPackageTBS``.

``version`` and ``cipher_suite`` are kept as received; checking them against the enclosing MLSMessage
and the group (§10.1) is validation, not decoding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import CipherSuite
from mls.crypto.key_protocols import Signer
from mls.errors import ValidationError
from mls.tree.leaf_node import (
    Capabilities,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    ProtocolVersion,
    default_capabilities,
    sign_leaf_node,
)
from mls.tree.leaf_validation import LeafPolicy, SignatureCheck, leaf_signature_check, validate_leaf_node
from mls.wire.extensions import Extension, RequiredCapabilities
from mls.wire.struct import U16, Opaque, Struct, Vec


@dataclass(frozen=True)
class KeyPackage(Struct):
    """``KeyPackage``; ``init_key`` is an HPKEPublicKey."""

    version: Annotated[int, U16]
    cipher_suite: Annotated[int, U16]
    init_key: Annotated[bytes, Opaque]
    leaf_node: Annotated[LeafNode, LeafNode]
    extensions: Annotated[tuple[Extension, ...], Vec(Extension)]
    signature: Annotated[bytes, Opaque]

    def tbs(self) -> bytes:
        """The ``KeyPackageTBS`` encoding: every field but ``signature``."""
        return self.to_bytes_without("signature")


def create_key_package(
    cs: CipherSuite,
    signer: Signer,
    *,
    init_key: bytes,
    encryption_key: bytes,
    credential: Credential,
    lifetime: Lifetime,
    capabilities: Capabilities | None = None,
    leaf_extensions: tuple[Extension, ...] = (),
    extensions: tuple[Extension, ...] = (),
) -> KeyPackage:
    """A signed KeyPackage (§10) whose leaf node is signed too (source ``key_package``, §7.2)."""
    _check_init_key_distinct(init_key, encryption_key)
    leaf = LeafNode(
        encryption_key=encryption_key,
        signature_key=signer.public_key,
        credential=credential,
        capabilities=capabilities or default_capabilities(),
        leaf_node_source=LeafNodeSource.key_package,
        lifetime=lifetime,
        extensions=leaf_extensions,
        signature=b"",
    )
    leaf = sign_leaf_node(cs, signer, leaf)
    unsigned = KeyPackage(ProtocolVersion.mls10, cs.suite_id, init_key, leaf, extensions, b"")
    return dataclasses.replace(
        unsigned, signature=cs.sign_with_label(signer, "KeyPackageTBS", unsigned.tbs())
    )


def validate_key_package(
    cs: CipherSuite, kp: KeyPackage, policy: LeafPolicy, required: RequiredCapabilities | None = None
) -> None:
    """KeyPackage validation (§10.1); raises :class:`ValidationError` naming the rule."""
    if kp.version != ProtocolVersion.mls10 or kp.cipher_suite != cs.suite_id:
        raise ValidationError(
            "10.1/version-cipher-suite", "the KeyPackage's version or cipher suite is not the group's"
        )
    validate_leaf_node(
        cs,
        kp.leaf_node,
        source=LeafNodeSource.key_package,
        group_id=None,
        leaf_index=None,
        policy=policy,
        required=required,
    )
    if not cs.verify_with_label(*key_package_signature_check(kp)):
        raise ValidationError("10.1/key-package-signature", "the KeyPackage signature does not verify")
    _check_init_key_distinct(kp.init_key, kp.leaf_node.encryption_key)
    cs.kem.check_public_key(kp.init_key)


def key_package_signature_check(kp: KeyPackage) -> SignatureCheck:
    """The KeyPackage's ``VerifyWithLabel(leaf_node.signature_key, "KeyPackageTBS", KeyPackageTBS,
    signature)`` (§10.1)."""
    return kp.leaf_node.signature_key, "KeyPackageTBS", kp.tbs(), kp.signature


def key_package_signature_checks(kp: KeyPackage) -> list[SignatureCheck]:
    """The signature checks of validating a KeyPackage (§10.1): its leaf's (§7.3), when the leaf is a
    ``key_package`` one (any other is rejected before its signature is looked at), and its own."""
    own = key_package_signature_check(kp)
    if kp.leaf_node.leaf_node_source != LeafNodeSource.key_package:
        return [own]
    return [leaf_signature_check(kp.leaf_node, None, None), own]


def _check_init_key_distinct(init_key: bytes, encryption_key: bytes) -> None:
    """A KeyPackage's ``init_key`` differs from its leaf's ``encryption_key`` (§10.1)."""
    if init_key == encryption_key:
        raise ValidationError("10.1/init-key-distinct", "init_key and the leaf's encryption_key must differ")


def key_package_ref(cs: CipherSuite, key_package: KeyPackage) -> bytes:
    """``MakeKeyPackageRef(value)`` over the encoded KeyPackage (§5.2)."""
    return cs.make_key_package_ref(key_package.to_bytes())
