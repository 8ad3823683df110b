"""A key store that holds private keys in process memory (software custody).

It implements the :class:`~mls.crypto.key_protocols.KeyStore` protocol for tests, for tools, and for key
kinds an HSM cannot hold (a KEM the token does not support). Destroying a key drops every reference this
store holds to it; Python cannot overwrite the bytes in place, so memory is reclaimed by the allocator.
"""

from __future__ import annotations

from mls.crypto.cipher_suite import cipher_suite
from mls.crypto.hpke import SoftwareHpkeKey
from mls.crypto.signature import SoftwareSigner
from mls.errors import KeyStoreError


class SoftwareKeyStore:
    """Private keys in memory, found by reference and destroyed on request."""

    def __init__(self) -> None:
        self._signers: dict[bytes, SoftwareSigner] = {}
        self._hpke: dict[bytes, SoftwareHpkeKey] = {}

    def new_signature_key(self, cipher_suite_id: int) -> SoftwareSigner:
        return self.add_signer(cipher_suite(cipher_suite_id).generate_signer())

    def new_hpke_key(self, cipher_suite_id: int) -> SoftwareHpkeKey:
        return self.add_hpke_key(cipher_suite(cipher_suite_id).kem.generate())

    def add_signer(self, signer: SoftwareSigner) -> SoftwareSigner:
        self._signers[signer.key_ref] = signer
        return signer

    def add_hpke_key(self, key: SoftwareHpkeKey) -> SoftwareHpkeKey:
        self._hpke[key.key_ref] = key
        return key

    def signer(self, key_ref: bytes) -> SoftwareSigner:
        try:
            return self._signers[key_ref]
        except KeyError:
            raise KeyStoreError("no signature key with this reference (destroyed or never created)") from None

    def hpke_key(self, key_ref: bytes) -> SoftwareHpkeKey:
        try:
            return self._hpke[key_ref]
        except KeyError:
            raise KeyStoreError("no HPKE key with this reference (destroyed or never created)") from None

    def destroy(self, key_ref: bytes) -> None:
        self._signers.pop(key_ref, None)
        self._hpke.pop(key_ref, None)

    def refs(self) -> set[bytes]:
        """Every key reference held (tests count keys with this)."""
        return set(self._signers) | set(self._hpke)

    def __contains__(self, key_ref: object) -> bool:
        return key_ref in self._signers or key_ref in self._hpke

    def __repr__(self) -> str:
        return f"SoftwareKeyStore(signature_keys={len(self._signers)}, hpke_keys={len(self._hpke)})"
