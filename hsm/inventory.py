"""The token's key objects of one key store: what orphan reconciliation compares with the database.

:func:`store_key_refs` lists the private- and public-key *token* objects that
:class:`hsm.keystore.Pkcs11KeyStore` made: ``CKA_ID`` a key reference of :mod:`hsm.kinds` of custody
``pkcs11``, and ``CKA_LABEL`` exactly ``<prefix>/<kind>/<reference in hex>``
(:func:`hsm.mechanisms.generate_pair`, ``import_pair``). Anything else in the token — the envelope's
wrap key (a secret key, its ID its label), the store's session objects (their references are of another
custody, or their label is not the store's), another application's keys — is never listed, hence never
touched. An object with the store's kind of ID but no label, or with CKA_TOKEN still false, is listed: a
crash cut it short (SoftHSM writes an object's attributes one after another), and only the store writes
such IDs.

The search and the attribute reads run inside the token's object-store guard (``objects("search")``):
SoftHSM corrupts an object created while another thread searches.
"""

from __future__ import annotations

from typing import Any

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
    # By class only, not CKA_TOKEN: SoftHSM writes a new object's default attributes (CKA_TOKEN false among
    # them) before the template's, so a crash can leave a token object that says it is none. The store's
    # own session objects (wrapped custody, capability probes) never carry a pkcs11-custody reference
    # with the store's label, so they are not listed.
    for obj in search(session, {Attribute.CLASS: object_class}):
        ref = _attribute(obj, Attribute.ID)
        if isinstance(ref, bytes) and _is_store_key(ref, _attribute(obj, Attribute.LABEL), prefix):
            found.append(ref)
    return found


def _attribute(obj: Any, attribute: Attribute) -> Any:
    """An attribute's value, or ``None`` when the object does not have it (or it cannot be read)."""
    try:
        value = obj[attribute]
    except LOST_ERRORS:
        raise
    except PKCS11Error:
        return None
    return bytes(value) if isinstance(value, bytes | bytearray) else value


def _is_store_key(ref: bytes, label: Any, prefix: str) -> bool:
    """The store's key: its ID a key reference of custody ``pkcs11`` and its label the store's for that
    reference — or no label at all: an object a crash cut short between its ID and its label is the
    store's debris (its ID says so; nothing else writes such IDs), unusable and never referenced."""
    parsed = parse_ref(ref)
    if parsed is None or parsed[1] != "pkcs11":
        return False
    return label in (None, "") or label == f"{prefix}/{parsed[0].name}/{ref.hex()}"


def debris(token: Token, prefix: str, *, destroy: bool = False) -> int:
    """How many private- or public-key token objects have no ID, and no label or the store's kind of label
    — what a crash leaves when it cuts an object's creation short (SoftHSM writes the object, then its
    attributes one after another) — and, with ``destroy``, destroy them. Such objects are nobody's usable
    key (the store finds keys by ID), but only a token the gateway owns whole (its embedded SoftHSM token)
    may be swept of them: the caller decides."""

    def sweep(session: Session) -> int:
        with token.objects("search"):
            handles = [
                obj.handle
                for cls in _CLASSES
                # by class only: a cut-short object may lack CKA_TOKEN, or still say false
                for obj in search(session, {Attribute.CLASS: cls})
                if obj.handle is not None and _is_debris(obj, prefix)
            ]
        if destroy:
            for handle in handles:
                token.destroy_handle(session, handle)
        return len(handles)

    return token.run(sweep, op="key debris", retry=False)


def _is_debris(obj: Any, prefix: str) -> bool:
    # CKA_TOKEN is not looked at: a cut-short token object may still say false (SoftHSM writes its default
    # attributes before the template's), and this process's own session key objects always carry an ID
    # (they are made whole under the object-store guard, which this search holds).
    label = _attribute(obj, Attribute.LABEL)
    return not _attribute(obj, Attribute.ID) and (not label or str(label).startswith(f"{prefix}/"))


__all__ = ["debris", "store_key_refs"]
