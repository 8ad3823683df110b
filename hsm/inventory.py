"""The token's key objects of one key store: what orphan reconciliation compares with the database.

:func:`store_key_refs` lists the private- and public-key *token* objects that
:class:`hsm.keystore.Pkcs11KeyStore` made: ``CKA_ID`` a key reference of :mod:`hsm.kinds` of custody
``pkcs11``, and ``CKA_LABEL`` exactly ``<prefix>/<kind>/<reference in hex>``
(:func:`hsm.mechanisms.generate_pair`, ``import_pair``). Anything else in the token — the envelope's
wrap key (a secret key, its ID its label), session objects, another application's keys, the empty
debris of a refused generation — is never listed, hence never touched.

The search and the attribute reads run inside the token's object-store guard (``objects("search")``):
SoftHSM corrupts an object created while another thread searches.
"""

from __future__ import annotations

from pkcs11 import Attribute, ObjectClass, PKCS11Error
from pkcs11.types import Session

from .cryptoki import LOST_ERRORS
from .kinds import parse_ref
from .mechanisms import search
from .token import Token

_CLASSES = (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)


def store_key_refs(token: Token, prefix: str) -> set[bytes]:
    """Key references of every token key object of the key store labelled with ``prefix`` (one token
    search per object class, under the object-store guard)."""

    def listing(session: Session) -> set[bytes]:
        with token.objects("search"):
            return {ref for cls in _CLASSES for ref in _refs_of_class(session, cls, prefix)}

    return token.run(listing, op="list keys")


def _refs_of_class(session: Session, object_class: ObjectClass, prefix: str) -> list[bytes]:
    found = []
    for obj in search(session, {Attribute.CLASS: object_class, Attribute.TOKEN: True}):
        try:
            ref, label = bytes(obj[Attribute.ID]), str(obj[Attribute.LABEL])
        except LOST_ERRORS:
            raise
        except PKCS11Error:  # an object without an ID or a label is nobody's key of this store
            continue
        if _is_store_key(ref, label, prefix):
            found.append(ref)
    return found


def _is_store_key(ref: bytes, label: str, prefix: str) -> bool:
    parsed = parse_ref(ref)
    if parsed is None or parsed[1] != "pkcs11":
        return False
    return label == f"{prefix}/{parsed[0].name}/{ref.hex()}"


__all__ = ["store_key_refs"]
