"""PKCS#11 operations of wrapped custody on one session: the KEK, wrappable session key pairs, wrap, unwrap.

Wrapped custody (docs/architecture.md, hsm-facts.md "Wrapping private keys") keeps a private key in the
token only as a *session* object; at rest it exists only wrapped under a key-encryption key (KEK) that
never leaves the token:

* **KEK** — an AES-256 token object (``CKK_AES``, ``SENSITIVE``, not ``EXTRACTABLE``, not ``MODIFIABLE``)
  with ``CKA_WRAP``/``CKA_UNWRAP`` and nothing else (no ``ENCRYPT``/``DECRYPT``: it is no data key).
  It is another object than the envelope's wrap key (:mod:`hsm.envelope`), which encrypts data keys with
  AES-GCM and may not wrap.
* **Generation** — ``C_GenerateKeyPair`` with a private template ``TOKEN=false, SENSITIVE=true,
  EXTRACTABLE=true, MODIFIABLE=false`` (extractable only so that ``C_WrapKey`` can export it, which is all
  this code ever does with it: ``CKA_VALUE`` of a private key is never read) and, where the token takes it,
  ``CKA_WRAP_WITH_TRUSTED=true`` (then only a ``CKA_TRUSTED`` KEK may wrap it). The public object is a
  session object too, read once for ``CKA_EC_POINT`` and destroyed at once.
* **Wrap** — ``C_WrapKey`` with ``CKM_AES_KEY_WRAP_PAD`` (RFC 5649), or ``CKM_AES_KEY_WRAP`` (RFC 3394)
  where the token refuses the padded form: both authenticate the wrapped key (an unwrap under another KEK,
  or of changed bytes, fails in the token).
* **Unwrap** — ``C_UnwrapKey`` into a session object that is ``SENSITIVE`` and *not* ``EXTRACTABLE`` (the
  blob at rest is the only exportable copy), with the one capability its kind needs. python-pkcs11 fills
  the template from its capability defaults (``CKA_ENCRYPT``, ``CKA_VERIFY``, ``CKA_WRAP``...); SoftHSM
  refuses those on a private key, so they are passed as python-pkcs11's ``DEFAULT`` (left out).
"""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11.types import Session

from ._compat import DEFAULT, bound_kek, bound_key
from .kek_ring import aes_token_key_template, create_aes_token_key, find_secret_keys
from .kinds import KeyKind, public_key_from_ec_point
from .mechanisms import Pkcs11Form, handle_of, public_template
from .token import Token

DEFAULT_KEK_LABEL = "mlsgw/kek/v1"
#: Wrap mechanisms in order of preference (RFC 5649 padded wrap first).
WRAP_MECHANISMS: tuple[Mechanism, ...] = (Mechanism.AES_KEY_WRAP_PAD, Mechanism.AES_KEY_WRAP)
#: Attributes python-pkcs11's ``unwrap_key`` would add that do not belong on an EC private key.
_LEFT_OUT = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.VERIFY,
    Attribute.VERIFY_RECOVER,
    Attribute.SIGN_RECOVER,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.DERIVE,
)


def kek_template(label: str) -> dict[Attribute, Any]:
    """The KEK: an AES-256 token key that wraps and unwraps and does nothing else."""
    return dict(aes_token_key_template(label, wraps=True))


def find_keks(session: Session, label: str) -> list[int]:
    """Handles of the secret keys labelled ``label`` (exactly one is a usable KEK)."""
    return find_secret_keys(session, label)


def create_kek(token: Token, label: str = DEFAULT_KEK_LABEL) -> bool:
    """Make the KEK unless a key labelled ``label`` exists; returns whether it made one."""
    return create_aes_token_key(token, label, wraps=True, op="create kek")


def _usage(kind: KeyKind) -> Attribute:
    return Attribute.SIGN if kind.role == "signature" else Attribute.DERIVE


def wrappable_private_template(
    kind: KeyKind, ref: bytes, label: str, *, trusted: bool
) -> dict[Attribute, Any]:
    """A session private key that is sensitive and extractable only for ``C_WrapKey``."""
    template: dict[Attribute, Any] = {
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: True,
        Attribute.MODIFIABLE: False,
        Attribute.ID: ref,
        Attribute.LABEL: label,
        _usage(kind): True,
    }
    if trusted:
        template[Attribute.WRAP_WITH_TRUSTED] = True
    return template


def generate_wrappable(
    session: Session, kind: KeyKind, form: Pkcs11Form, ref: bytes, label: str, *, trusted: bool
) -> tuple[int, bytes]:
    """C_GenerateKeyPair of a wrappable session key pair; returns (private handle, wire public key). The
    public session object is destroyed once its CKA_EC_POINT is read."""
    pub, priv = session.generate_keypair(
        form.key_type,
        mechanism=form.keygen,
        store=False,
        capabilities=MechanismFlag(0),
        public_template=public_template(kind, ref, label, store=False),
        private_template=wrappable_private_template(kind, ref, label, trusted=trusted),
    )
    try:
        public_key = public_key_from_ec_point(kind, pub[Attribute.EC_POINT])
    except Exception:
        priv.destroy()
        raise
    finally:
        pub.destroy()
    return handle_of(priv), public_key


def wrap(session: Session, kek: int, private: int, form: Pkcs11Form, mechanism: Mechanism) -> bytes:
    """C_WrapKey of the private key ``private`` under the KEK ``kek``."""
    return bytes(
        bound_kek(session, kek).wrap_key(bound_key(session, private, form.key_type), mechanism=mechanism)
    )


def unwrap(
    session: Session,
    kek: int,
    kind: KeyKind,
    form: Pkcs11Form,
    wrapped: bytes,
    ref: bytes,
    label: str,
    mechanism: Mechanism,
    *,
    for_wrap: bool = False,
    trusted: bool = False,
) -> int:
    """C_UnwrapKey of ``wrapped`` into a sensitive session private key; its handle. It is not extractable,
    unless ``for_wrap`` (a KEK rotation's re-wrap: extractable only so that the next ``C_WrapKey`` can
    export it under the new KEK, and with ``CKA_WRAP_WITH_TRUSTED`` when ``trusted``; destroyed at once)."""
    template: dict[Attribute, Any] = {a: DEFAULT for a in _LEFT_OUT}
    template.update(
        {
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: for_wrap,
            Attribute.MODIFIABLE: False,
            _usage(kind): True,
        }
    )
    if for_wrap and trusted:
        template[Attribute.WRAP_WITH_TRUSTED] = True
    key = bound_kek(session, kek).unwrap_key(
        ObjectClass.PRIVATE_KEY,
        form.key_type,
        wrapped,
        id=ref,
        label=label,
        mechanism=mechanism,
        store=False,
        capabilities=MechanismFlag(0),
        template=template,
    )
    return handle_of(key)


__all__ = [
    "DEFAULT_KEK_LABEL",
    "WRAP_MECHANISMS",
    "create_kek",
    "find_keks",
    "generate_wrappable",
    "kek_template",
    "unwrap",
    "wrap",
    "wrappable_private_template",
]
