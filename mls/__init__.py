"""RFC 9420 (Messaging Layer Security) as a library: the public API.

Applications (the gateway, tools, tests of the service) import from here; the subpackages are the
library's own layout, mapped to the RFC:

* :mod:`mls.wire` — the codec and every message on the wire (§2.1, §6, §10, §12);
* :mod:`mls.crypto` — cipher suites, HPKE, signatures, key-handle protocols, the crypto backend (§5);
* :mod:`mls.credentials` — credentials and X.509 validation (§5.3);
* :mod:`mls.tree` — tree math, the ratchet tree, TreeKEM, leaf and tree validation (§4.1, §7);
* :mod:`mls.schedule` — key schedule, PSKs, transcript hashes, secret tree (§8, §9);
* :mod:`mls.group` — the group engine: state, proposals, commits, joins, reinit (§11, §12);
* :mod:`mls.conformance` — the runner of the MLS working group's test vectors.

The crypto backend is chosen by the application: :func:`use_crypto_backend` installs one (the
pure-Python backend is the default until then). :func:`set_signature_verify_threads` sets how many
threads verify large batches of signatures (a joiner's tree, a commit's KeyPackages; default the CPU
count, at most 4; 1 keeps them in the calling thread).
"""

from mls.client import Client, KeyPackageBundle
from mls.credentials.credential import Certificate, Credential, CredentialType
from mls.credentials.x509 import X509CredentialValidator
from mls.crypto.backend import CryptoBackend, PythonBackend, get_backend, set_backend
from mls.crypto.cipher_suite import CIPHER_SUITES, CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore, Signer
from mls.crypto.signature_batch import set_verify_threads as set_signature_verify_threads
from mls.errors import (
    CryptoError,
    DecodeError,
    KeyStoreError,
    MLSError,
    StateError,
    UnsupportedError,
    ValidationError,
)
from mls.group.commit_options import CommitOptions
from mls.group.creation import default_lifetime
from mls.group.group import Group
from mls.group.handshake_framing import HandshakeFraming
from mls.group.join import tree_from_group_info
from mls.group.observer import (
    GroupView,
    MessageInfo,
    has_ratchet_tree_extension,
    inspect_message,
    state_view,
    verify_group_info,
    welcome_key_package_refs,
)
from mls.group.results import ApplicationMessage, ProcessedMessage, ProposalMessage
from mls.group.staged_commit import StagedCommit
from mls.group.state import GroupConfig, GroupState
from mls.schedule.psk import MemoryPskStore, PskStore
from mls.schedule.secret_tree import RatchetConfig
from mls.tree.leaf_validation import BasicCredentialValidator, CredentialValidator, LeafPolicy
from mls.wire.extensions import Extension, ExtensionType, ExternalSender, ExternalSenders
from mls.wire.framing import MLSMessage, Sender, SenderType, WireFormat
from mls.wire.group_info import GroupInfo
from mls.wire.key_package import KeyPackage, create_key_package, key_package_ref, validate_key_package
from mls.wire.proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalType,
    PSKType,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Update,
)
from mls.wire.welcome import Welcome

use_crypto_backend = set_backend
"""Install the crypto backend every cipher suite uses (an application's entry point calls this once)."""

__all__ = [
    "CIPHER_SUITES",
    "Add",
    "ApplicationMessage",
    "BasicCredentialValidator",
    "Certificate",
    "CipherSuite",
    "Client",
    "CommitOptions",
    "Credential",
    "CredentialType",
    "CredentialValidator",
    "CryptoBackend",
    "CryptoError",
    "DecodeError",
    "Extension",
    "ExtensionType",
    "ExternalInit",
    "ExternalSender",
    "ExternalSenders",
    "Group",
    "GroupConfig",
    "GroupContextExtensions",
    "GroupInfo",
    "GroupState",
    "GroupView",
    "HandshakeFraming",
    "HpkePrivateKey",
    "KeyPackage",
    "KeyPackageBundle",
    "KeyStore",
    "KeyStoreError",
    "LeafPolicy",
    "MLSError",
    "MLSMessage",
    "MemoryPskStore",
    "MessageInfo",
    "PSKType",
    "PreSharedKey",
    "PreSharedKeyID",
    "ProcessedMessage",
    "Proposal",
    "ProposalMessage",
    "ProposalType",
    "PskStore",
    "PythonBackend",
    "RatchetConfig",
    "ReInit",
    "Remove",
    "ResumptionPSKUsage",
    "Sender",
    "SenderType",
    "Signer",
    "StagedCommit",
    "StateError",
    "UnsupportedError",
    "Update",
    "ValidationError",
    "Welcome",
    "WireFormat",
    "X509CredentialValidator",
    "cipher_suite",
    "create_key_package",
    "default_lifetime",
    "get_backend",
    "has_ratchet_tree_extension",
    "inspect_message",
    "key_package_ref",
    "set_signature_verify_threads",
    "state_view",
    "tree_from_group_info",
    "use_crypto_backend",
    "validate_key_package",
    "verify_group_info",
    "welcome_key_package_refs",
]
