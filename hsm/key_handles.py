"""Key handles returned by :class:`hsm.keystore.Pkcs11KeyStore`; they implement ``mls.crypto.key_protocols``.

* :class:`Pkcs11Signer` — ``Signer`` for a signature key in the token.
* :class:`Pkcs11HpkeKey` — ``HpkePrivateKey`` whose DH runs in the token.
* :class:`SoftwareCustodyHpkeKey` — ``HpkePrivateKey`` held in memory for suites whose KEM the token cannot
  do; reported as custody ``software`` and audited like the others.

A handle holds the reference, the public key and the store; the private key never leaves the token (or,
for software custody, the wrapped :class:`mls.crypto.hpke.SoftwareHpkeKey`). ``repr`` shows the kind and a
prefix of the reference only.
"""

from __future__ import annotations

from typing import Protocol

from mls.crypto.hpke import SoftwareHpkeKey
from mls.errors import CryptoError

from .audit import Auditor
from .kinds import Custody, KeyKind


class KeyOperations(Protocol):
    """What a handle needs from its store."""

    def sign_with(self, key_ref: bytes, data: bytes) -> bytes: ...

    def dh_with(self, key_ref: bytes, peer_public_key: bytes) -> bytes: ...


class _Handle:
    __slots__ = ("_ops", "_public_key", "_ref", "kind")

    custody: Custody = "pkcs11"

    def __init__(self, ops: KeyOperations, kind: KeyKind, key_ref: bytes, public_key: bytes) -> None:
        self._ops = ops
        self.kind = kind
        self._ref = key_ref
        self._public_key = public_key

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def key_ref(self) -> bytes:
        return self._ref

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind.name}, ref={self._ref.hex()[6:14]}…)"


class Pkcs11Signer(_Handle):
    """A signature key held in the token (``mls.crypto.key_protocols.Signer``)."""

    __slots__ = ()

    def sign(self, data: bytes) -> bytes:
        """Signature in MLS wire form: raw for EdDSA, DER for ECDSA."""
        return self._ops.sign_with(self._ref, data)


class Pkcs11HpkeKey(_Handle):
    """A KEM private key held in the token (``mls.crypto.key_protocols.HpkePrivateKey``)."""

    __slots__ = ()

    def dh(self, peer_public_key: bytes) -> bytes:
        """Raw DH output with ``peer_public_key`` (RFC 9180 SerializePublicKey form)."""
        return self._ops.dh_with(self._ref, peer_public_key)


class WrappedSigner(Pkcs11Signer):
    """A signature key in wrapped custody: a session object unwrapped from its blob on use."""

    __slots__ = ()

    custody: Custody = "wrapped"


class WrappedHpkeKey(Pkcs11HpkeKey):
    """A KEM private key in wrapped custody: a session object unwrapped from its blob on use."""

    __slots__ = ()

    custody: Custody = "wrapped"


class SoftwareCustodyHpkeKey:
    """An HPKE key in process memory, for a KEM the token cannot do (custody ``software``)."""

    __slots__ = ("_auditor", "_inner", "_ref", "kind")

    custody: Custody = "software"

    def __init__(self, kind: KeyKind, key_ref: bytes, inner: SoftwareHpkeKey, auditor: Auditor) -> None:
        self.kind = kind
        self._ref = key_ref
        self._inner = inner
        self._auditor = auditor

    @property
    def public_key(self) -> bytes:
        return self._inner.public_key

    @property
    def key_ref(self) -> bytes:
        return self._ref

    def dh(self, peer_public_key: bytes) -> bytes:
        try:
            out = self._inner.dh(peer_public_key)
        except CryptoError:
            self._auditor.emit(self._ref, "dh", "software", False)
            raise
        self._auditor.emit(self._ref, "dh", "software", True)
        return out

    def private_bytes(self) -> bytes:
        """The raw private key, for wrapped persistence by the gateway only."""
        return self._inner.private_bytes()

    def __repr__(self) -> str:
        return f"SoftwareCustodyHpkeKey({self.kind.name}, ref={self._ref.hex()[6:14]}…)"


__all__ = [
    "KeyOperations",
    "Pkcs11HpkeKey",
    "Pkcs11Signer",
    "SoftwareCustodyHpkeKey",
    "WrappedHpkeKey",
    "WrappedSigner",
]
