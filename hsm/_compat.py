"""What python-pkcs11 (0.10.x) lacks, in one place.

* :func:`bound_key` — an object handle used in *any* session. python-pkcs11 ties every ``Object`` to the
  session that found it and offers no way to rebind a handle, but object handles are valid in every
  session of the application (PKCS#11 §2.4), and its key operations only read ``self.session``,
  ``self.handle`` and ``self.key_type``. :class:`_BoundKey` supplies those three, so a cached handle signs,
  derives or decrypts in whichever worker session is free — no token search per operation.
* PKCS#11 3.0 constants python-pkcs11 0.10.1 does not define (``CKM_EC_MONTGOMERY_KEY_PAIR_GEN``,
  ``CKK_EC_MONTGOMERY``), made as members of its enum types because it type-checks mechanisms and key
  types with ``isinstance``.
"""

from __future__ import annotations

from typing import Any

from pkcs11 import KeyType, Mechanism
from pkcs11 import _pkcs11 as _impl
from pkcs11.types import Session

_PrivateKey: Any = getattr(_impl, "PrivateKey")  # noqa: B009 (not in python-pkcs11's stub)
_SecretKey: Any = getattr(_impl, "SecretKey")  # noqa: B009
_Object: Any = getattr(_impl, "Object")  # noqa: B009
_SignMixin: Any = getattr(_impl, "SignMixin")  # noqa: B009
_DeriveMixin: Any = getattr(_impl, "DeriveMixin")  # noqa: B009
_EncryptMixin: Any = getattr(_impl, "EncryptMixin")  # noqa: B009
_DecryptMixin: Any = getattr(_impl, "DecryptMixin")  # noqa: B009
_WrapMixin: Any = getattr(_impl, "WrapMixin")  # noqa: B009
_UnwrapMixin: Any = getattr(_impl, "UnwrapMixin")  # noqa: B009
#: python-pkcs11's marker for "leave this attribute out of the template" (``merge_templates`` drops it).
DEFAULT: Any = getattr(_impl, "DEFAULT")  # noqa: B009


class _BoundKey(_PrivateKey, _SignMixin, _DeriveMixin, _Object):  # type: ignore[misc]
    """A private-key handle seen through one session (slots shadow python-pkcs11's properties)."""

    __slots__ = ("handle", "key_type", "session")

    def __init__(self, session: Session, handle: int, key_type: KeyType) -> None:
        self.session = session
        self.handle = handle
        self.key_type = key_type


class _BoundSecret(_SecretKey, _EncryptMixin, _DecryptMixin, _Object):  # type: ignore[misc]
    """A secret-key handle seen through one session (slots shadow python-pkcs11's properties)."""

    __slots__ = ("handle", "key_type", "session")

    def __init__(self, session: Session, handle: int, key_type: KeyType) -> None:
        self.session = session
        self.handle = handle
        self.key_type = key_type


class _BoundKek(_SecretKey, _WrapMixin, _UnwrapMixin, _Object):  # type: ignore[misc]
    """A key-encryption-key handle seen through one session (slots shadow python-pkcs11's properties)."""

    __slots__ = ("handle", "key_type", "session")

    def __init__(self, session: Session, handle: int, key_type: KeyType) -> None:
        self.session = session
        self.handle = handle
        self.key_type = key_type


def bound_kek(session: Session, handle: int) -> Any:
    """An AES key-encryption key for ``handle`` usable with ``session`` (wrap_key, unwrap_key)."""
    return _BoundKek(session, handle, KeyType.AES)


def bound_key(session: Session, handle: int, key_type: KeyType) -> Any:
    """A private key object for ``handle`` usable with ``session`` (sign, derive_key)."""
    return _BoundKey(session, handle, key_type)


def bound_secret(session: Session, handle: int, key_type: KeyType) -> Any:
    """A secret key object for ``handle`` usable with ``session`` (encrypt, decrypt)."""
    return _BoundSecret(session, handle, key_type)


def _enum_member(enum_type: Any, name: str, value: int) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        member = int.__new__(enum_type, value)
        member._name_ = name
        member._value_ = value
        return member


#: CKM_EC_MONTGOMERY_KEY_PAIR_GEN (PKCS#11 3.0).
EC_MONTGOMERY_KEY_PAIR_GEN: Mechanism = _enum_member(Mechanism, "EC_MONTGOMERY_KEY_PAIR_GEN", 0x1056)
#: CKK_EC_MONTGOMERY (PKCS#11 3.0).
EC_MONTGOMERY: KeyType = _enum_member(KeyType, "EC_MONTGOMERY", 0x41)

__all__ = ["DEFAULT", "EC_MONTGOMERY", "EC_MONTGOMERY_KEY_PAIR_GEN", "bound_kek", "bound_key", "bound_secret"]
