"""What the token can hold, decided once at connect time, and the custody it implies per cipher suite.

For every :class:`hsm.kinds.KeyKind` the token is first asked whether it lists the mechanisms (key-pair
generation plus ``CKM_ECDSA``/``CKM_EDDSA``/``CKM_ECDH1_DERIVE``), then a *self-test* runs: a session key
pair (never stored) signs a message that ``cryptography`` must verify, or does a DH whose output must equal
``cryptography``'s. Only kinds that pass are used. This is what makes the custody reported to clients
truthful: a kind is ``pkcs11`` only if the token demonstrably does it right.

X25519/X448 follow the token's ``montgomery_keygen`` switch (:mod:`hsm.config`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pkcs11 import Mechanism, PKCS11Error
from pkcs11.types import Session

from mls.crypto.cipher_suite import cipher_suite

from . import kinds as K
from .config import MontgomeryKeygen
from .cryptoki import LOST_ERRORS
from .errors import HsmError
from .kinds import Custody, KeyKind
from .mechanisms import (
    EC_FORM,
    EDWARDS_FORM,
    MONTGOMERY_AS_EDWARDS_FORM,
    MONTGOMERY_FORM,
    Pkcs11Form,
    ecdh,
    generate_pair,
    sign,
)

_PROBE_MESSAGE = b"mls-gateway capability probe"
_PROBE_REF = b"\x00probe"


@dataclass(frozen=True)
class Capabilities:
    """The kinds the token holds, in which PKCS#11 form, and the resolved Montgomery mode."""

    forms: Mapping[KeyKind, Pkcs11Form]
    montgomery_mode: str
    refused: Mapping[str, str] = field(default_factory=dict)

    def supports(self, kind: KeyKind) -> bool:
        return kind in self.forms

    def form(self, kind: KeyKind) -> Pkcs11Form:
        return self.forms[kind]

    def custody(self, suite_id: int, *, software_hpke_fallback: bool = True) -> tuple[Custody, Custody]:
        """(signature custody, HPKE custody) for keys of cipher suite ``suite_id``."""
        cs = cipher_suite(suite_id)
        sig: Custody = "pkcs11" if self.supports(K.signature_kind(cs.signature)) else "unsupported"
        if self.supports(K.kem_kind(cs.kem)):
            return sig, "pkcs11"
        return sig, "software" if software_hpke_fallback else "unsupported"

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary (kind → form, refused kind → reason) for logs and the health endpoint."""
        return {
            "montgomery_keygen": self.montgomery_mode,
            "kinds": {k.name: f.name for k, f in self.forms.items()},
            "refused": dict(self.refused),
        }


def resolve_montgomery(mode: MontgomeryKeygen, mechanisms: Iterable[int], token_model: str) -> str:
    """``auto`` → ``standard`` if advertised, ``edwards-oid`` on SoftHSM, else ``off``."""
    if mode != "auto":
        return mode
    if int(MONTGOMERY_FORM.keygen) in {int(m) for m in mechanisms}:
        return "standard"
    return "edwards-oid" if "softhsm" in token_model.lower() else "off"


def _candidate(kind: KeyKind, montgomery: str) -> Pkcs11Form | None:
    if kind.family == "ec":
        return EC_FORM
    if kind.family == "edwards":
        return EDWARDS_FORM
    return {"standard": MONTGOMERY_FORM, "edwards-oid": MONTGOMERY_AS_EDWARDS_FORM}.get(montgomery)


def _needed(kind: KeyKind, form: Pkcs11Form) -> set[int]:
    use = (
        Mechanism.ECDH1_DERIVE
        if kind.role == "kem"
        else (Mechanism.EDDSA if kind.family == "edwards" else Mechanism.ECDSA)
    )
    return {int(form.keygen), int(use)}


DestroyHandle = Callable[[Session, int], None]


def self_test(session: Session, kind: KeyKind, form: Pkcs11Form, destroy: DestroyHandle) -> None:
    """Generate a session key pair of ``kind``, use it, check the result in software; raises on mismatch."""
    pair = generate_pair(session, kind, form, _PROBE_REF, "probe", store=False)
    try:
        if kind.role == "signature":
            signature = sign(session, pair.private, kind, form, _PROBE_MESSAGE)
            if not K.scheme_of(kind).verify(pair.public_key, _PROBE_MESSAGE, signature):
                raise ValueError("signature does not verify")
        else:
            peer = K.kem_of(kind).generate()
            if ecdh(session, pair.private, kind, form, peer.public_key) != peer.dh(pair.public_key):
                raise ValueError("DH output differs from software")
    finally:
        destroy(session, pair.private)
        destroy(session, pair.public)


def detect(
    session: Session,
    mechanisms: Iterable[int],
    montgomery: MontgomeryKeygen,
    token_model: str,
    destroy: DestroyHandle,
) -> Capabilities:
    """Decide, kind by kind, what the token can hold (mechanism list, then a self-test)."""
    listed = {int(m) for m in mechanisms}
    mode = resolve_montgomery(montgomery, listed, token_model)
    forms: dict[KeyKind, Pkcs11Form] = {}
    refused: dict[str, str] = {}
    for kind in K.ALL_KINDS:
        form = _candidate(kind, mode)
        if form is None:
            refused[kind.name] = f"montgomery_keygen={mode}"
        elif not _needed(kind, form) <= listed:
            refused[kind.name] = "mechanism not listed"
        else:
            reason = _try_self_test(session, kind, form, destroy)
            if reason is None:
                forms[kind] = form
            else:
                refused[kind.name] = reason
    return Capabilities(forms, mode, refused)


def _try_self_test(session: Session, kind: KeyKind, form: Pkcs11Form, destroy: DestroyHandle) -> str | None:
    try:
        self_test(session, kind, form, destroy)
    except LOST_ERRORS:
        raise
    except PKCS11Error as exc:
        return f"self-test refused ({type(exc).__name__})"
    except (ValueError, HsmError) as exc:
        return f"self-test failed ({exc})"
    return None


__all__ = ["Capabilities", "detect", "resolve_montgomery", "self_test"]
