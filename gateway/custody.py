"""Custody modes per tenant (docs/architecture.md): which key store makes an identity's new keys.

A tenant's ``custody_mode`` (``wrapped`` by default for new tenants, ``token`` for those of older
databases) decides how its identities' keys are made (:meth:`hsm.keystore.Pkcs11KeyStore.for_mode`). An
identity records the custody its keys got (truthfully: a kind the token cannot wrap stays ``pkcs11``), and
its later keys (KeyPackages, a commit's new leaf keys) follow that record. A wrapped identity's view names
the KEK its signature key is wrapped under now (:func:`identity_kek`).
"""

from __future__ import annotations

from hsm.keystore import CustodyMode, Pkcs11KeyStore
from mls import KeyStore, KeyStoreError

from .store import Identity, Tenant


def tenant_mode(tenant: Tenant | None) -> CustodyMode:
    """The custody mode of new identities of ``tenant``."""
    return "wrapped" if tenant is not None and tenant.custody_mode == "wrapped" else "token"


def mode_of(identity: Identity) -> CustodyMode:
    """The custody mode of ``identity``'s new keys: ``wrapped`` when either of its custodies is."""
    return "wrapped" if "wrapped" in (identity.custody_signature, identity.custody_hpke) else "token"


def identity_kek(keys: KeyStore, identity: Identity) -> str | None:
    """The label of the KEK that wraps ``identity``'s signature key now (wrapped custody; KEK rotation
    moves it, :mod:`gateway.kek_rotation`), or None for a key in the token."""
    if not isinstance(keys, Pkcs11KeyStore) or identity.custody_signature != "wrapped":
        return None
    try:
        return keys.kek_label(identity.signature_key_ref)
    except KeyStoreError:  # deleted meanwhile: the view says no KEK
        return None


def keys_for(keys: KeyStore, identity: Identity) -> KeyStore:
    """The key store that makes ``identity``'s new keys in its custody mode."""
    return keys.for_mode(mode_of(identity)) if isinstance(keys, Pkcs11KeyStore) else keys


__all__ = ["identity_kek", "keys_for", "mode_of", "tenant_mode"]
