"""Private keys stay in the token: unreadable, not findable in the token files, destroyed on request."""

from __future__ import annotations

from pathlib import Path

from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.types import Session

from hsm import Pkcs11KeyStore, Token
from hsm.bootstrap import SoftHsmToken
from mls.crypto.cipher_suite import CIPHER_SUITES, cipher_suite


def _make_one_of_each(keystore: Pkcs11KeyStore) -> list[bytes]:
    refs = []
    for suite in sorted(CIPHER_SUITES):
        refs.append(keystore.new_signature_key(suite).key_ref)
        refs.append(keystore.new_hpke_key(suite).key_ref)
    cs = cipher_suite(2)
    refs.append(keystore.import_signature_key(2, cs.generate_signer().private_bytes()).key_ref)
    refs.append(keystore.import_hpke_key(1, cipher_suite(1).kem.generate().private_bytes()).key_ref)
    return refs


def _private_key_report(session: Session) -> list[tuple[bytes, bool, bool, bool, bool]]:
    """(id, VALUE readable?, SENSITIVE, EXTRACTABLE, TOKEN) for every private key in the token."""
    report = []
    for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
        try:
            obj[Attribute.VALUE]
            readable = True
        except AttributeSensitive:
            readable = False
        attrs = obj.get_attributes([Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.TOKEN])
        report.append(
            (
                bytes(obj[Attribute.ID]),
                readable,
                attrs[Attribute.SENSITIVE],
                attrs[Attribute.EXTRACTABLE],
                attrs[Attribute.TOKEN],
            )
        )
    return report


def test_no_private_key_value_can_be_read(token: Token, keystore: Pkcs11KeyStore) -> None:
    refs = set(_make_one_of_each(keystore))
    report = _private_key_report_via(token)
    seen = {row[0] for row in report}
    assert refs <= seen
    for row in report:
        _key_id, readable, sensitive, extractable, on_token = row
        assert not readable, row
        assert sensitive and not extractable and on_token, (
            row
        )  # (id, readable, SENSITIVE, EXTRACTABLE, TOKEN)


def _private_key_report_via(token: Token) -> list[tuple[bytes, bool, bool, bool, bool]]:
    return token.run(_private_key_report, op="test: inspect private keys")


def _token_files_bytes(token_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(token_dir.rglob("*")) if p.is_file())


def test_token_files_hold_no_key_label_or_id_in_clear(
    token: Token, keystore: Pkcs11KeyStore, softhsm: SoftHsmToken
) -> None:
    refs = _make_one_of_each(keystore)
    labels = token.run(
        lambda s: [obj[Attribute.LABEL] for ref in refs for obj in s.get_objects({Attribute.ID: ref})],
        op="test: labels",
    )
    assert len(labels) == 2 * len(refs)  # a private and a public object per key
    files = _token_files_bytes(softhsm.token_dir)
    for label in labels:
        assert label.encode() not in files, label
    for ref in refs:
        assert ref not in files and ref.hex().encode() not in files


def test_control_public_objects_are_stored_in_clear(token: Token, softhsm: SoftHsmToken) -> None:
    """The grep above can see labels: SoftHSM writes a non-PRIVATE object's label in clear."""
    label = "mlsgw-control-label-0123456789"

    def create(session: Session) -> None:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.LABEL: label,
                Attribute.VALUE: b"public",
            }
        )

    def destroy(session: Session) -> None:
        for obj in list(session.get_objects({Attribute.LABEL: label})):
            obj.destroy()

    token.run(create, op="test: control object")
    try:
        assert label.encode() in _token_files_bytes(softhsm.token_dir)
    finally:
        token.run(destroy, op="test: control object")


def _count(token: Token, ref: bytes | None = None) -> int:
    template = {} if ref is None else {Attribute.ID: ref}
    return token.run(lambda s: len(list(s.get_objects(template))), op="test: count")


def test_destroy_removes_private_and_public_objects(token: Token, keystore: Pkcs11KeyStore) -> None:
    signer = keystore.new_signature_key(1)
    hpke = keystore.new_hpke_key(2)
    imported = keystore.import_signature_key(7, cipher_suite(7).generate_signer().private_bytes())
    before = _count(token)
    refs_before = set(keystore.key_refs())
    for key in (signer, hpke, imported):
        assert _count(token, key.key_ref) == 2
    keystore.destroy(signer.key_ref)
    Pkcs11KeyStore(token).destroy(hpke.key_ref)  # not in that store's cache: found by CKA_ID
    keystore.destroy(imported.key_ref)
    for key in (signer, hpke, imported):
        assert _count(token, key.key_ref) == 0
    assert _count(token) == before - 6
    assert refs_before - set(keystore.key_refs()) == {signer.key_ref, hpke.key_ref, imported.key_ref}
    keystore.destroy(signer.key_ref)  # twice: no-op
