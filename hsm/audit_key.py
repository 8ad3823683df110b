"""The audit signing key: a dedicated token key pair that signs the audit chain's checkpoints.

The gateway's audit records form a hash chain (:mod:`gateway.audit_chain`); every so often a checkpoint
over the chain head is signed *inside the token* with this key, so whoever holds the exported public key
can check that the records up to the checkpoint are the ones the gateway wrote. The key is a token object
labelled (and identified) :data:`DEFAULT_AUDIT_LABEL`: ``SENSITIVE``, never ``EXTRACTABLE``, not
``MODIFIABLE``, with ``SIGN`` as its only capability (the public half: ``VERIFY``). It is Ed25519
(``CKM_EC_EDWARDS_KEY_PAIR_GEN`` + ``CKM_EDDSA``, which SoftHSM 2.6 supports, hsm-facts.md); a token that
refuses Ed25519 gets ECDSA P-256 (``CKM_ECDSA`` over a SHA-256 digest computed here, DER-encoded).

:func:`create_audit_key` makes it unless one exists (the gateway calls it where it makes the wrap key:
``init`` and ``serve``, :func:`gateway.app.open_runtime`); :class:`AuditSigner` finds it once per token
connection and signs. Signing is *not* reported to the key-use audit hook: a checkpoint is itself the
audit trail's record, and auditing it would append a record for every checkpoint, forever.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.types import Session

from .errors import HsmError, HsmUnavailable
from .kinds import ECDSA_P256, ED25519, KeyKind, public_key_from_ec_point
from .mechanisms import (
    EC_FORM,
    EDWARDS_FORM,
    Pkcs11Form,
    handle_of,
    private_template,
    public_template,
    search,
)
from .mechanisms import sign as token_sign
from .token import StaleHandle, Token

DEFAULT_AUDIT_LABEL = "mlsgw/audit/v1"

#: The kinds tried, in order, when the key is made (the first the token accepts is kept).
_CHOICES: tuple[tuple[KeyKind, Pkcs11Form], ...] = ((ED25519, EDWARDS_FORM), (ECDSA_P256, EC_FORM))


class AuditKeyMissing(HsmError):
    """The token has no audit key (or more than one) under the label: run ``mls-gateway init``."""


@dataclass(frozen=True)
class _Found:
    """The audit key on one connection: its kind, private handle and public key (wire form)."""

    kind: KeyKind
    form: Pkcs11Form
    handle: int
    public_key: bytes


def _find(session: Session, label: str) -> list[_Found]:
    """Every audit private key labelled ``label`` with its public half (exactly one is usable)."""
    found = []
    for priv in search(session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}):
        edwards = priv[Attribute.KEY_TYPE] == KeyType.EC_EDWARDS
        kind, form = _CHOICES[0] if edwards else _CHOICES[1]
        pubs = search(session, {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label})
        if len(pubs) != 1:
            continue
        point = public_key_from_ec_point(kind, pubs[0][Attribute.EC_POINT])
        found.append(_Found(kind, form, handle_of(priv), point))
    return found


def create_audit_key(token: Token, label: str = DEFAULT_AUDIT_LABEL) -> bool:
    """Make the audit key pair unless a key labelled ``label`` exists; returns whether it made one."""

    def generate(session: Session, kind: KeyKind, form: Pkcs11Form) -> None:
        ref = label.encode()
        with token.objects("change"):
            session.generate_keypair(
                form.key_type,
                mechanism=form.keygen,
                store=True,
                capabilities=MechanismFlag(0),
                public_template=public_template(kind, ref, label, store=True),
                private_template=private_template(kind, ref, label, store=True),
            )

    def create(session: Session) -> bool:
        with token.objects("search"):
            if search(session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}):
                return False
        (kind, form), (fallback, fallback_form) = _CHOICES
        try:
            generate(session, kind, form)
        except PKCS11Error:  # no Ed25519 on this token: ECDSA P-256
            generate(session, fallback, fallback_form)
        return True

    return token.run(create, op="create audit key", retry=False)


class AuditSigner:
    """Signs checkpoint messages with the token's audit key (thread-safe; the handle cached per
    connection)."""

    def __init__(self, token: Token, label: str = DEFAULT_AUDIT_LABEL) -> None:
        self._token = token
        self._label = label
        self._cached: tuple[int, _Found] | None = None

    def __repr__(self) -> str:
        return f"AuditSigner(label={self._label!r})"

    @property
    def label(self) -> str:
        return self._label

    def sign(self, message: bytes) -> bytes:
        """The signature of ``message`` (raw Ed25519, or DER ECDSA P-256 over SHA-256), made in the token."""
        for _ in range(3):
            generation, key = self._key()
            try:
                return self._token.run(
                    functools.partial(_sign_with, key, message),
                    op="sign audit checkpoint",
                    generation=generation,
                )
            except StaleHandle:
                self._cached = None
        raise HsmUnavailable("sign audit checkpoint: the token connection keeps changing")

    def public_key_pem(self) -> str:
        """The audit public key as a SubjectPublicKeyInfo PEM (what ``mls-gateway audit public-key``
        prints and ``audit verify`` takes)."""
        _, key = self._key()
        if key.kind is ED25519:
            public: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey = (
                ed25519.Ed25519PublicKey.from_public_bytes(key.public_key)
            )
        else:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key)
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem.decode()

    def _key(self) -> tuple[int, _Found]:
        cached = self._cached
        if cached is not None and cached[0] == self._token.generation:
            return cached

        def find(session: Session) -> list[_Found]:
            with self._token.objects("search"):
                return _find(session, self._label)

        found, generation = self._token.run_pinned(find, op="find audit key")
        if len(found) != 1:
            what = "no audit key" if not found else "several audit keys"
            raise AuditKeyMissing(f"token has {what} labelled {self._label!r}; run the gateway's init")
        self._cached = (generation, found[0])
        return self._cached


def _sign_with(key: _Found, message: bytes, session: Session) -> bytes:
    return token_sign(session, key.handle, key.kind, key.form, message)


__all__ = ["DEFAULT_AUDIT_LABEL", "AuditKeyMissing", "AuditSigner", "create_audit_key"]
