"""An MLS client: one identity (signature key and credential in one cipher suite) and its KeyPackages.

:class:`Client` is the convenient front door to the group engine: it makes KeyPackages whose private
keys live in its KeyStore (§10), creates groups (§11), and joins from a Welcome by finding which of its
KeyPackages the Welcome is for (§12.4.3.1). A consumed KeyPackage's private keys are destroyed at once,
except the init key of a last-resort KeyPackage, which stays until the caller retires it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mls.credentials.credential import Credential
from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore, Signer
from mls.errors import MLSError, ValidationError
from mls.group.creation import default_lifetime
from mls.group.group import Group
from mls.group.state import GroupConfig
from mls.group.welcome import welcome_from_message
from mls.schedule.psk import PskStore
from mls.tree.leaf_node import Capabilities, Lifetime
from mls.wire.extensions import Extension
from mls.wire.framing import MLSMessage
from mls.wire.group_context import GroupContext
from mls.wire.key_package import KeyPackage, create_key_package, key_package_ref
from mls.wire.proposals import ReInit
from mls.wire.welcome import Welcome


@dataclass
class KeyPackageBundle:
    """A KeyPackage and the private keys behind it (held by reference in the client's KeyStore)."""

    key_package: KeyPackage
    ref: bytes
    init_key: HpkePrivateKey = field(repr=False)
    leaf_key: HpkePrivateKey = field(repr=False)
    last_resort: bool = False

    def message(self) -> bytes:
        """The KeyPackage as an MLSMessage."""
        return MLSMessage.of(self.key_package).to_bytes()


class Client:
    """One member identity; its private keys are in ``key_store``."""

    def __init__(
        self,
        key_store: KeyStore,
        cipher_suite_id: int,
        credential: Credential,
        signer: Signer | None = None,
        psks: PskStore | None = None,
    ) -> None:
        self.key_store = key_store
        self.cs: CipherSuite = cipher_suite(cipher_suite_id)
        self.credential = credential
        self.signer = signer or key_store.new_signature_key(cipher_suite_id)
        self.psks = psks
        self.key_packages: dict[bytes, KeyPackageBundle] = {}

    def __repr__(self) -> str:
        return f"Client(suite={self.cs.suite_id}, key_packages={len(self.key_packages)})"

    def key_package(
        self,
        lifetime: Lifetime | None = None,
        last_resort: bool = False,
        extensions: Sequence[Extension] = (),
        capabilities: Capabilities | None = None,
    ) -> KeyPackageBundle:
        """A fresh KeyPackage with init and leaf keys made by the key store."""
        suite = self.cs.suite_id
        init_key = self.key_store.new_hpke_key(suite)
        leaf_key = self.key_store.new_hpke_key(suite)
        try:
            kp = create_key_package(
                self.cs,
                self.signer,
                init_key=init_key.public_key,
                encryption_key=leaf_key.public_key,
                credential=self.credential,
                lifetime=lifetime or default_lifetime(),
                extensions=tuple(extensions),
                capabilities=capabilities,
            )
        except MLSError:
            self.key_store.destroy(init_key.key_ref)
            self.key_store.destroy(leaf_key.key_ref)
            raise
        bundle = KeyPackageBundle(kp, key_package_ref(self.cs, kp), init_key, leaf_key, last_resort)
        self.key_packages[bundle.ref] = bundle
        return bundle

    def create_group(
        self,
        group_id: bytes | None = None,
        extensions: Sequence[Extension] = (),
        config: GroupConfig | None = None,
        capabilities: Capabilities | None = None,
    ) -> Group:
        return Group.create(
            self.key_store,
            self.cs.suite_id,
            signer=self.signer,
            credential=self.credential,
            group_id=group_id,
            extensions=extensions,
            config=config,
            psks=self.psks,
            capabilities=capabilities,
        )

    def bundle_for(self, welcome: bytes | Welcome) -> KeyPackageBundle:
        """The bundle of this client's KeyPackage that the Welcome has an entry for (§12.4.3.1)."""
        for secrets in welcome_from_message(welcome).secrets:
            bundle = self.key_packages.get(secrets.new_member)
            if bundle is not None:
                return bundle
        raise ValidationError(
            "12.4.3.1/welcome-key-package-ref", "the Welcome is for none of this client's KeyPackages"
        )

    def join(
        self,
        welcome: bytes | Welcome,
        ratchet_tree: bytes | None = None,
        config: GroupConfig | None = None,
        psks: PskStore | None = None,
        expected_reinit: ReInit | None = None,
        resumed_from: GroupContext | None = None,
    ) -> Group:
        """Join from a Welcome; the KeyPackage is consumed (its keys destroyed unless last-resort)."""
        decoded = welcome_from_message(welcome)  # once, for finding the KeyPackage and for joining
        bundle = self.bundle_for(decoded)
        group = Group.join(
            self.key_store,
            decoded,
            key_package=bundle.key_package,
            init_key=bundle.init_key,
            leaf_key=bundle.leaf_key,
            signer_ref=self.signer.key_ref,
            ratchet_tree=ratchet_tree,
            psks=psks or self.psks,
            config=config,
            destroy_init_key=not bundle.last_resort,
            retain_leaf_key=bundle.last_resort,
            expected_reinit=expected_reinit,
            resumed_from=resumed_from,
        )
        if not bundle.last_resort:
            del self.key_packages[bundle.ref]
        return group
