"""Key-handle protocols: how the protocol code uses private keys without holding them (architecture.md).

* :class:`Signer` — one signature key; ``sign`` returns the signature in the cipher suite's wire form
  (raw for EdDSA, DER for ECDSA).
* :class:`HpkePrivateKey` — one KEM private key; ``dh`` is the Diffie-Hellman with a peer public key,
  which is all HPKE decapsulation (RFC 9180 §4.1) needs of the private key.
* :class:`KeyStore` — makes fresh signature keys and HPKE key pairs, finds them again by reference, and
  destroys them when the group engine says they are dead (forward secrecy, RFC 9420 §16.4).

Software implementations live in :mod:`mls.crypto.signature` and :mod:`mls.crypto.hpke`, a software
key store in :mod:`mls.crypto.key_store`; ``hsm/`` provides PKCS#11 ones.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Signer(Protocol):
    """A signature private key that signs on request and never reveals itself."""

    @property
    def public_key(self) -> bytes:
        """The ``SignaturePublicKey`` bytes (RFC 9420 §5.1.1)."""
        ...

    @property
    def key_ref(self) -> bytes:
        """An opaque, non-secret reference to this key in its store."""
        ...

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class HpkePrivateKey(Protocol):
    """A KEM private key whose only operation is DH with a peer's serialized public key."""

    @property
    def public_key(self) -> bytes:
        """``SerializePublicKey(pk)`` of RFC 9180 §7.1.1."""
        ...

    @property
    def key_ref(self) -> bytes: ...

    def dh(self, peer_public_key: bytes) -> bytes:
        """The raw DH shared secret with ``peer_public_key`` (serialized as RFC 9180 §7.1.1)."""
        ...


class KeyStore(Protocol):
    """Where fresh private keys are made, found again by reference, and destroyed."""

    def new_signature_key(self, cipher_suite: int) -> Signer: ...

    def new_hpke_key(self, cipher_suite: int) -> HpkePrivateKey: ...

    def signer(self, key_ref: bytes) -> Signer: ...

    def hpke_key(self, key_ref: bytes) -> HpkePrivateKey: ...

    def destroy(self, key_ref: bytes) -> None:
        """Destroy the key; destroying an unknown reference is a no-op."""
        ...
