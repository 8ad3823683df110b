"""Leaf node validation (RFC 9420 §7.3) and the pluggable credential validator (§5.3.1).

Every check raises :class:`~mls.errors.ValidationError` naming the rule. Checks that need the whole
group (uniqueness of keys, credential types in use) take the tree's other leaves as an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from mls.credentials.credential import Credential, CredentialType
from mls.crypto.cipher_suite import CipherSuite
from mls.errors import ValidationError
from mls.tree.leaf_node import LeafNode, LeafNodeSource
from mls.wire.extensions import Extension, ExternalSenders, RequiredCapabilities, find_payload

T = TypeVar("T")

#: Proposal and extension types that are "default" and never listed in capabilities (§7.2).
DEFAULT_PROPOSAL_TYPES = frozenset(range(1, 8))
DEFAULT_EXTENSION_TYPES = frozenset(range(1, 6))


class CredentialValidator(Protocol):
    """Decides whether a credential is acceptable and bound to ``signature_key`` (§5.3.1)."""

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        """Raise :class:`ValidationError` (section ``"5.3.1"``) when the credential is not acceptable."""
        ...


class BasicCredentialValidator:
    """Accepts basic credentials with a non-empty identity; other types are refused.

    A basic credential carries no proof: the application is expected to authenticate identities by other
    means (§5.3.1). Deployments with certificates plug in an X.509 validator instead.
    """

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        if credential.credential_type != CredentialType.basic:
            raise ValidationError(
                "5.3.1/basic-credential-type", f"credential type {credential.credential_type} is not accepted"
            )
        require_basic_identity(credential)


def require_basic_identity(credential: Credential) -> bytes:
    """The identity of a basic credential, which must not be empty (§5.3.1)."""
    if not credential.identity:
        raise ValidationError(
            "5.3.1/basic-identity-non-empty", "a basic credential needs a non-empty identity"
        )
    return credential.identity


class AcceptAnyCredential:
    """Accepts every credential (test vectors carry credentials no deployment would trust)."""

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        return None


@dataclass
class LeafPolicy:
    """How strictly leaf nodes are checked (§7.3)."""

    credential_validator: CredentialValidator = field(default_factory=AcceptAnyCredential)
    #: Current time in seconds for lifetime checks, or ``None`` not to check lifetimes.
    now: int | None = None
    #: Largest accepted ``not_after - not_before`` in seconds (applications MUST set one, §7.2).
    max_lifetime: int | None = None


SignatureCheck = tuple[bytes, str, bytes, bytes]
"""One ``VerifyWithLabel`` check: (public key, label, content, signature), as
:meth:`~mls.crypto.cipher_suite.CipherSuite.prefetch_verifications` takes them."""


def leaf_signature_check(leaf: LeafNode, group_id: bytes | None, leaf_index: int | None) -> SignatureCheck:
    """The leaf's ``VerifyWithLabel(signature_key, "LeafNodeTBS", LeafNodeTBS, signature)`` (§7.2); the
    group id and leaf index go into the TBS only for the ``update`` and ``commit`` sources."""
    in_group = leaf.leaf_node_source != LeafNodeSource.key_package
    tbs = leaf.tbs(group_id if in_group else None, leaf_index if in_group else None)
    return leaf.signature_key, "LeafNodeTBS", tbs, leaf.signature


def batch_signature_checks(
    values: Iterable[T], checks_of: Callable[[T], Sequence[SignatureCheck]]
) -> list[SignatureCheck]:
    """The signature checks of every value, for one batch ahead of their one-by-one validation; a value
    whose TBS cannot be encoded is left out (its validation reports what is wrong with it, in turn)."""
    out: list[SignatureCheck] = []
    for value in values:
        try:
            out.extend(checks_of(value))
        except ValueError:
            continue
    return out


def verify_leaf_signature(
    cs: CipherSuite, leaf: LeafNode, group_id: bytes | None, leaf_index: int | None
) -> None:
    """``VerifyWithLabel(signature_key, "LeafNodeTBS", LeafNodeTBS, signature)`` (§7.2)."""
    if not cs.verify_with_label(*leaf_signature_check(leaf, group_id, leaf_index)):
        raise ValidationError("7.3/leaf-signature", "LeafNode signature does not verify")


def check_required_capabilities(leaf: LeafNode, required: RequiredCapabilities | None) -> None:
    """The leaf supports every extension, proposal and credential type the group requires (§11.1)."""
    if required is None:
        return
    caps = leaf.capabilities
    for kind, need, have in (
        ("extension", required.extension_types, caps.extensions),
        ("proposal", required.proposal_types, caps.proposals),
        ("credential", required.credential_types, caps.credentials),
    ):
        defaults = {"extension": DEFAULT_EXTENSION_TYPES, "proposal": DEFAULT_PROPOSAL_TYPES}.get(
            kind, frozenset()
        )
        missing = [t for t in need if t not in have and t not in defaults]
        if missing:
            raise ValidationError(
                "11.1/leaf-required-capabilities", f"leaf does not support required {kind} types {missing}"
            )


def check_leaf_extensions_supported(leaf: LeafNode) -> None:
    """Every non-default extension in the leaf is listed in its capabilities (§7.2, §7.3)."""
    for ext in leaf.extensions:
        if (
            ext.extension_type not in DEFAULT_EXTENSION_TYPES
            and ext.extension_type not in leaf.capabilities.extensions
        ):
            raise ValidationError(
                "7.3/leaf-extensions-supported",
                f"leaf extension {ext.extension_type} is not in its capabilities",
            )
    if leaf.credential.credential_type not in leaf.capabilities.credentials:
        raise ValidationError(
            "7.2/leaf-credential-in-capabilities", "the leaf's credential type is not in its capabilities"
        )


def check_lifetime(leaf: LeafNode, policy: LeafPolicy) -> None:
    if leaf.lifetime is None:
        return
    lt = leaf.lifetime
    if policy.max_lifetime is not None and lt.not_after - lt.not_before > policy.max_lifetime:
        raise ValidationError(
            "7.2/leaf-lifetime-maximum", "leaf lifetime is longer than the accepted maximum"
        )
    if policy.now is not None and not lt.not_before <= policy.now <= lt.not_after:
        raise ValidationError("7.3/leaf-lifetime-current", "the current time is outside the leaf's lifetime")


def check_leaf_node_source(leaf: LeafNode, source: LeafNodeSource) -> None:
    """The leaf's ``leaf_node_source`` is the one where it appears: KeyPackage, Update or Commit (§7.3)."""
    if leaf.leaf_node_source != source:
        raise ValidationError("7.3/leaf-node-source", f"leaf_node_source must be {source.name}")


def validate_leaf_node(
    cs: CipherSuite,
    leaf: LeafNode,
    *,
    source: LeafNodeSource | None,
    group_id: bytes | None,
    leaf_index: int | None,
    policy: LeafPolicy,
    required: RequiredCapabilities | None = None,
) -> None:
    """The per-leaf checks of §7.3 (uniqueness and compatibility are checked by the caller)."""
    if source is not None:
        check_leaf_node_source(leaf, source)
    if leaf.leaf_node_source == LeafNodeSource.key_package and leaf.lifetime is None:
        raise ValidationError("7.2/key-package-leaf-lifetime", "a key_package leaf must carry a lifetime")
    if 1 not in leaf.capabilities.versions:
        raise ValidationError("7.3/leaf-supports-mls10", "the leaf does not support protocol version mls10")
    verify_leaf_signature(cs, leaf, group_id, leaf_index)
    policy.credential_validator.validate(leaf.credential, leaf.signature_key)
    check_required_capabilities(leaf, required)
    check_leaf_extensions_supported(leaf)
    check_lifetime(leaf, policy)


def validate_external_senders(extensions: Iterable[Extension], policy: LeafPolicy) -> None:
    """Every external sender of a group context's ``external_senders`` extension has a credential the
    policy's validator accepts for its signature key (§12.1.8.1, §5.3.1): checked when the extension
    enters a member's view of the group — a GroupContextExtensions proposal, a Welcome, an external join."""
    senders = find_payload(extensions, ExternalSenders)
    for external in senders.external_senders if senders else ():
        policy.credential_validator.validate(external.credential, external.signature_key)
