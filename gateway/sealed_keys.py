"""Keys at rest in the store: software keys sealed with the HSM's wrap key, and wrapped-custody blobs.

Wrapped-custody private keys (``hsm.wrapped_keys``) arrive already wrapped by the token under its KEK
(``CKM_AES_KEY_WRAP_PAD``): :class:`WrappedKeyRows` stores them as they are, in ``wrapped_keys``.

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
        with self._store.read_transaction() as tx:  # no write lock: often called inside a read
            sealed = tx.get_software_key(key_ref)
        return None if sealed is None else self._envelope.open(sealed, _AAD + key_ref)

    def delete(self, key_ref: bytes) -> None:
        with self._store.transaction() as tx:
            tx.delete_software_key(key_ref)


class WrappedKeyRows:
    """``hsm.wrapped_keys.WrappedKeyPersistence`` over the gateway store (table ``wrapped_keys``)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def save(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None:
        with self._store.transaction() as tx:
            tx.put_wrapped_key(key_ref, blob, kek_id)

    def load(self, key_ref: bytes) -> bytes | None:
        with self._store.read_transaction() as tx:
            return tx.get_wrapped_key(key_ref)

    def delete(self, key_ref: bytes) -> None:
        with self._store.transaction() as tx:
            tx.delete_wrapped_key(key_ref)
