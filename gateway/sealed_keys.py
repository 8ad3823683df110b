"""Keys the token cannot hold, at rest: sealed with the HSM's wrap key and kept in the store.

The PKCS#11 key store hands software-custody HPKE private keys (a KEM the token cannot do) to a
:class:`SealedKeyPersistence`, which seals each one with :class:`hsm.envelope.Envelope` (AAD bound to its
key reference) before it reaches the database.
"""

from __future__ import annotations

from hsm.envelope import Envelope

from .store import Store

_AAD = b"mls-gateway software key|"


class SealedKeyPersistence:
    """``hsm.keystore.SoftwareKeyPersistence`` over the gateway store."""

    def __init__(self, store: Store, envelope: Envelope) -> None:
        self._store = store
        self._envelope = envelope

    def save(self, key_ref: bytes, private_key: bytes) -> None:
        sealed = self._envelope.seal(private_key, _AAD + key_ref)
        with self._store.transaction() as tx:
            tx.put_software_key(key_ref, sealed)

    def load(self, key_ref: bytes) -> bytes | None:
        with self._store.transaction() as tx:
            sealed = tx.get_software_key(key_ref)
        return None if sealed is None else self._envelope.open(sealed, _AAD + key_ref)

    def delete(self, key_ref: bytes) -> None:
        with self._store.transaction() as tx:
            tx.delete_software_key(key_ref)
