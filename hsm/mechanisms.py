"""PKCS#11 operations on one session: key templates, key-pair generation and import, sign, ECDH, lookup.

Everything here takes a python-pkcs11 ``Session`` and lets python-pkcs11's exceptions through; callers run
these inside :meth:`hsm.token.Token.run`, which maps them.

* **Templates** — private keys are ``TOKEN``, ``PRIVATE``, ``SENSITIVE``, not ``EXTRACTABLE``, with only the
  one capability they need (``SIGN`` or ``DERIVE``). Public keys are token objects too and also ``PRIVATE``,
  so that SoftHSM stores their label and ID encrypted (it writes public objects' attributes in clear).
  Both carry ``CKA_ID`` = the key reference and a label naming kind and reference, and both are not
  ``MODIFIABLE``: once made, no ``C_SetAttributeValue`` can widen a key's use or move its ID.
  ``CKA_DESTROYABLE`` is left at its default, true (PKCS#11 v2.40 §4.4; tokens of v2.20 refuse the
  attribute in a template): the gateway destroys dead keys.
* **Sign** — ``CKM_EDDSA`` (pure, no parameters) for Ed25519/Ed448; ``CKM_ECDSA`` over the digest computed
  here, with the token's raw ``r‖s`` re-encoded as DER ``Ecdsa-Sig-Value`` for MLS (RFC 9420 §5.1.1).
* **ECDH** — ``CKM_ECDH1_DERIVE`` (KDF NULL) into a *session* ``GENERIC_SECRET`` that is not sensitive and
  extractable, read once and destroyed at once (``finally``) — the raw DH output RFC 9180's DHKEM needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import KDF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.types import Object, Session

from ._compat import EC_MONTGOMERY, EC_MONTGOMERY_KEY_PAIR_GEN, bound_key
from .kinds import KeyKind, der_octet_string, public_key_from_ec_point

_DIGESTS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


@dataclass(frozen=True)
class Pkcs11Form:
    """How the token holds one key kind: CKA_KEY_TYPE and the key-pair generation mechanism."""

    key_type: KeyType
    keygen: Mechanism

    @property
    def name(self) -> str:
        return f"{self.key_type.name}/{self.keygen.name}"


EC_FORM = Pkcs11Form(KeyType.EC, Mechanism.EC_KEY_PAIR_GEN)
EDWARDS_FORM = Pkcs11Form(KeyType.EC_EDWARDS, Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
MONTGOMERY_FORM = Pkcs11Form(EC_MONTGOMERY, EC_MONTGOMERY_KEY_PAIR_GEN)
#: SoftHSM's quirk: X25519/X448 keys made by the Edwards generator from the Montgomery curve's OID.
MONTGOMERY_AS_EDWARDS_FORM = EDWARDS_FORM


@dataclass(frozen=True)
class KeyPair:
    """Handles of one key pair in the token and its public key in MLS wire form."""

    private: int
    public: int
    public_key: bytes


@dataclass(frozen=True)
class KeyEntry:
    """A usable key in the handle caches: kind, form, handles, and the connection the handles belong to."""

    kind: KeyKind
    form: Pkcs11Form
    pair: KeyPair
    generation: int


def handle_of(obj: Object) -> int:
    """The handle of an object python-pkcs11 returned (always set for real objects)."""
    handle = obj.handle
    assert handle is not None
    return handle


def search(session: Session, template: dict[Attribute, Any]) -> list[Object]:
    """C_FindObjects*, run to the end before the objects are used.

    python-pkcs11's search is a generator; left suspended by an exception in the caller's loop, its
    clean-up fails later in a destructor (on a dead session) and is reported as an unraisable exception.
    """
    return list(session.get_objects(template))


def _label(prefix: str, kind: KeyKind, ref: bytes) -> str:
    return f"{prefix}/{kind.name}/{ref.hex()}"


def _usage(kind: KeyKind) -> Attribute:
    return Attribute.SIGN if kind.role == "signature" else Attribute.DERIVE


def private_template(kind: KeyKind, ref: bytes, label: str, *, store: bool) -> dict[Attribute, Any]:
    """Template for a non-extractable private key with the one capability its kind needs."""
    return {
        Attribute.TOKEN: store,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.ID: ref,
        Attribute.LABEL: label,
        _usage(kind): True,
    }


def public_template(kind: KeyKind, ref: bytes, label: str, *, store: bool) -> dict[Attribute, Any]:
    template: dict[Attribute, Any] = {
        Attribute.TOKEN: store,
        Attribute.PRIVATE: True,
        Attribute.MODIFIABLE: False,
        Attribute.ID: ref,
        Attribute.LABEL: label,
        Attribute.EC_PARAMS: kind.ec_params,
    }
    if kind.role == "signature":
        template[Attribute.VERIFY] = True
    return template


def generate_pair(
    session: Session, kind: KeyKind, form: Pkcs11Form, ref: bytes, prefix: str, *, store: bool = True
) -> KeyPair:
    """C_GenerateKeyPair of ``kind`` in ``form``; token objects unless ``store`` is False (probes)."""
    label = _label(prefix, kind, ref)
    pub, priv = session.generate_keypair(
        form.key_type,
        mechanism=form.keygen,
        store=store,
        capabilities=MechanismFlag(0),
        public_template=public_template(kind, ref, label, store=store),
        private_template=private_template(kind, ref, label, store=store),
    )
    public_key = public_key_from_ec_point(kind, pub[Attribute.EC_POINT])
    return KeyPair(handle_of(priv), handle_of(pub), public_key)


def import_pair(
    session: Session,
    kind: KeyKind,
    form: Pkcs11Form,
    ref: bytes,
    prefix: str,
    private: bytes,
    public_key: bytes,
) -> KeyPair:
    """C_CreateObject of an existing private key (non-extractable, sensitive) and its public key."""
    label = _label(prefix, kind, ref)
    common = {Attribute.KEY_TYPE: form.key_type, Attribute.EC_PARAMS: kind.ec_params}
    priv_attrs = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        **common,
        **private_template(kind, ref, label, store=True),
        Attribute.VALUE: private,
    }
    pub_attrs = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        **common,
        **public_template(kind, ref, label, store=True),
        Attribute.EC_POINT: der_octet_string(public_key),
    }
    priv = session.create_object(priv_attrs)
    try:
        pub = session.create_object(pub_attrs)
    except Exception:
        priv.destroy()
        raise
    return KeyPair(handle_of(priv), handle_of(pub), public_key)


def sign(session: Session, handle: int, kind: KeyKind, form: Pkcs11Form, data: bytes) -> bytes:
    """The MLS wire-form signature of ``data`` with the private key ``handle``."""
    key = bound_key(session, handle, form.key_type)
    if kind.hash_name is None:
        return key.sign(data, mechanism=Mechanism.EDDSA)  # type: ignore[no-any-return]
    digest = _DIGESTS[kind.hash_name](data).digest()
    raw: bytes = key.sign(digest, mechanism=Mechanism.ECDSA)
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def ecdh(session: Session, handle: int, kind: KeyKind, form: Pkcs11Form, peer_public_key: bytes) -> bytes:
    """Raw ECDH/X25519/X448 output with ``peer_public_key`` (wire form); the secret object is destroyed."""
    key = bound_key(session, handle, form.key_type)
    secret = key.derive_key(
        KeyType.GENERIC_SECRET,
        kind.key_len * 8,
        mechanism=Mechanism.ECDH1_DERIVE,
        mechanism_param=(KDF.NULL, None, peer_public_key),
        capabilities=MechanismFlag(0),
        template={
            Attribute.TOKEN: False,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: False,
            Attribute.EXTRACTABLE: True,
            Attribute.MODIFIABLE: False,
        },
    )
    try:
        return bytes(secret[Attribute.VALUE])
    finally:
        secret.destroy()


def find_pair(session: Session, kind: KeyKind, ref: bytes) -> KeyPair | None:
    """The key pair whose CKA_ID is ``ref`` (a token search: only on a cache miss), or None."""
    private = public = None
    public_key = b""
    for obj in search(session, {Attribute.ID: ref}):
        cls = obj[Attribute.CLASS]
        if cls == ObjectClass.PRIVATE_KEY:
            private = handle_of(obj)
        elif cls == ObjectClass.PUBLIC_KEY:
            public = handle_of(obj)
            public_key = public_key_from_ec_point(kind, obj[Attribute.EC_POINT])
    if private is None or public is None:
        return None
    return KeyPair(private, public, public_key)


def object_ids(session: Session, object_class: ObjectClass) -> Iterator[bytes]:
    """CKA_ID of every object of ``object_class`` the session can see."""
    for obj in search(session, {Attribute.CLASS: object_class}):
        yield bytes(obj[Attribute.ID])


def handles_by_id(session: Session, ref: bytes) -> list[int]:
    """Handles of every object whose CKA_ID is ``ref`` (a token search)."""
    return [handle_of(obj) for obj in search(session, {Attribute.ID: ref})]


def empty_keys(session: Session, key_type: KeyType) -> list[int]:
    """Handles of key objects of ``key_type`` with an empty CKA_ID, CKA_LABEL and CKA_EC_PARAMS: the default
    attributes SoftHSM leaves on the object of a refused key generation (no usable key has no curve)."""
    template = {
        Attribute.KEY_TYPE: key_type,
        Attribute.ID: b"",
        Attribute.LABEL: "",
        Attribute.EC_PARAMS: b"",
    }
    return [handle_of(obj) for obj in search(session, template)]


__all__ = [
    "EC_FORM",
    "EDWARDS_FORM",
    "MONTGOMERY_AS_EDWARDS_FORM",
    "MONTGOMERY_FORM",
    "KeyEntry",
    "KeyPair",
    "Pkcs11Form",
    "ecdh",
    "empty_keys",
    "find_pair",
    "generate_pair",
    "handles_by_id",
    "import_pair",
    "object_ids",
    "search",
    "sign",
]
