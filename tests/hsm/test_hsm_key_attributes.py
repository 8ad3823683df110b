"""Key objects the product makes are not modifiable (no ``C_SetAttributeValue`` can widen a key's use or
move its ID) and stay destroyable; destroying a key that is already gone is no error."""

from __future__ import annotations

import logging

import pytest
from pkcs11 import Attribute, ObjectClass, PKCS11Error
from pkcs11.types import Object, Session

from hsm import Pkcs11KeyStore, Token, create_wrap_key
from hsm.kinds import parse_ref
from mls.crypto.cipher_suite import CIPHER_SUITES, cipher_suite

WRAP_LABEL = "mlsgw-test/wrap/attributes"


def _objects(token: Token, template: dict[Attribute, object]) -> list[tuple[int, bool, bool, str]]:
    """(class, MODIFIABLE, DESTROYABLE, label) of every object matching ``template``."""

    def read(session: Session) -> list[tuple[int, bool, bool, str]]:
        with token.objects("search"):
            found = list(session.get_objects(template))
        return [
            (
                int(o[Attribute.CLASS]),
                bool(o[Attribute.MODIFIABLE]),
                bool(o[Attribute.DESTROYABLE]),
                str(o[Attribute.LABEL]),
            )
            for o in found
        ]

    return token.run(read, op="test: read attributes")


def _try_relabel(token: Token, template: dict[Attribute, object]) -> list[str]:
    """Try ``C_SetAttributeValue`` (a new label, then a widened use) on each object; the refusals' names."""

    def attempt(session: Session) -> list[str]:
        with token.objects("search"):
            found: list[Object] = list(session.get_objects(template))
        refused = []
        for obj in found:
            for attribute, value in ((Attribute.LABEL, "moved"), (Attribute.DERIVE, True)):
                try:
                    with token.objects("change"):
                        obj[attribute] = value
                except PKCS11Error as e:
                    refused.append(type(e).__name__)
        return refused

    return token.run(attempt, op="test: set attributes", retry=False)


def _one_key_of_each_kind(keystore: Pkcs11KeyStore) -> list[bytes]:
    """Generated signature and HPKE keys of every suite the token holds, and an imported one of each role."""
    refs = []
    for suite in sorted(CIPHER_SUITES):
        sig, kem = keystore.custody(suite)
        if sig == "pkcs11":
            refs.append(keystore.new_signature_key(suite).key_ref)
        if kem == "pkcs11":
            refs.append(keystore.new_hpke_key(suite).key_ref)
    refs.append(keystore.import_signature_key(2, cipher_suite(2).generate_signer().private_bytes()).key_ref)
    refs.append(keystore.import_hpke_key(1, cipher_suite(1).kem.generate().private_bytes()).key_ref)
    return refs


def test_key_pairs_are_not_modifiable_and_stay_destroyable(token: Token, keystore: Pkcs11KeyStore) -> None:
    refs = _one_key_of_each_kind(keystore)
    kinds = {parse_ref(r)[0].name for r in refs}  # type: ignore[index]
    # P-256/384/521 ECDSA and ECDH, Ed25519/Ed448, X25519/X448 (SoftHSM's Edwards-OID quirk)
    assert {"ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519", "x25519", "ecdh-p256"} <= kinds, kinds
    for ref in refs:
        objects = _objects(token, {Attribute.ID: ref})
        assert sorted(c for c, *_ in objects) == [ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY], ref
        assert all(not modifiable and destroyable for _, modifiable, destroyable, _ in objects), objects
        labels = {label for *_, label in objects}
        assert len(_try_relabel(token, {Attribute.ID: ref})) == 2 * 2  # every attempt refused
        assert {label for *_, label in _objects(token, {Attribute.ID: ref})} == labels  # nothing changed
        keystore.destroy(ref)
        assert _objects(token, {Attribute.ID: ref}) == []


def test_the_wrap_key_is_not_modifiable_and_stays_destroyable(token: Token) -> None:
    assert create_wrap_key(token, WRAP_LABEL)
    template: dict[Attribute, object] = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: WRAP_LABEL}
    try:
        [(_, modifiable, destroyable, _)] = _objects(token, template)
        assert (modifiable, destroyable) == (False, True)
        assert len(_try_relabel(token, template)) == 2
        assert len(_objects(token, template)) == 1  # still under its label
    finally:

        def destroy(session: Session) -> None:
            with token.objects("search"):
                found = list(session.get_objects(template))
            for obj in found:
                token.destroy_handle(session, obj.handle)  # type: ignore[arg-type]

        token.run(destroy, op="test: destroy wrap key")
    assert _objects(token, template) == []


def test_destroying_a_key_already_gone_is_no_error(
    token: Token, keystore: Pkcs11KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Handles cached for a key whose objects someone else destroyed, then a reference never made."""
    key = keystore.new_hpke_key(1)
    keystore.hpke_key(key.key_ref)  # cached

    def destroy_behind_its_back(session: Session) -> None:
        with token.objects("search"):
            found = list(session.get_objects({Attribute.ID: key.key_ref}))
        for obj in found:
            token.destroy_handle(session, obj.handle)  # type: ignore[arg-type]

    token.run(destroy_behind_its_back, op="test: destroy objects")
    with caplog.at_level(logging.DEBUG, logger="hsm.keystore"):
        keystore.destroy(key.key_ref)
        keystore.destroy(key.key_ref)
    assert sum("nothing to destroy" in r.getMessage() for r in caplog.records) == 2
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "hsm.keystore")
    assert _objects(token, {Attribute.ID: key.key_ref}) == []
