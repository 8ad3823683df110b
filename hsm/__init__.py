"""PKCS#11 key custody for the gateway, over python-pkcs11 (architecture.md: the ``hsm/`` layer).

Knows nothing of groups or HTTP; implements the key protocols of :mod:`mls.crypto.key_protocols`.

* :class:`Token` (:mod:`hsm.token`) — thread-safe access to one token: Cryptoki initialised with OS
  locking, one login session, a bounded pool of worker sessions, error mapping, reconnect with backoff.
* :class:`Pkcs11KeyStore` (:mod:`hsm.keystore`) — signature keys and HPKE keys as non-extractable token
  objects (software HPKE keys for KEMs the token cannot do), import, destroy, listing.
* :class:`Capabilities` (:mod:`hsm.capabilities`) — what the token can hold; custody per cipher suite.
* :class:`Envelope` (:mod:`hsm.envelope`) — envelope encryption of state at rest under a token wrap key.
* :mod:`hsm.audit` — the audit hook and the caller context.
* :mod:`hsm.bootstrap` — private SoftHSM2 tokens for tests and ``init``.
* :mod:`hsm.errors` — ``HsmError``, ``HsmUnavailable``, ``EnvelopeError``.
"""

from __future__ import annotations

from .audit import AuditEvent, AuditHook, caller, caller_context
from .capabilities import Capabilities
from .config import TokenConfig
from .envelope import Envelope, WrapKeyMissing, create_wrap_key
from .errors import EnvelopeError, HsmError, HsmUnavailable
from .key_handles import Pkcs11HpkeKey, Pkcs11Signer, SoftwareCustodyHpkeKey
from .keystore import Pkcs11KeyStore, SoftwareKeyPersistence
from .kinds import Custody
from .token import Token

__all__ = [
    "AuditEvent",
    "AuditHook",
    "Capabilities",
    "Custody",
    "Envelope",
    "EnvelopeError",
    "HsmError",
    "HsmUnavailable",
    "Pkcs11HpkeKey",
    "Pkcs11KeyStore",
    "Pkcs11Signer",
    "SoftwareCustodyHpkeKey",
    "SoftwareKeyPersistence",
    "Token",
    "TokenConfig",
    "WrapKeyMissing",
    "caller",
    "caller_context",
    "create_wrap_key",
]
