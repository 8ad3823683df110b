"""Envelope encryption under the token's wrap key: round trip, and every kind of tampering is caught."""

from __future__ import annotations

import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.types import Session

from hsm import Envelope, EnvelopeError, Token, WrapKeyMissing, create_wrap_key
from hsm.envelope import DEFAULT_WRAP_LABEL

# Offsets of the blob's parts (version 1): version, wrap nonce, wrapped data key, data nonce, ciphertext, tag.
PARTS = {"version": 0, "wrap nonce": 5, "wrapped key": 20, "wrapped key tag": 60, "data nonce": 66}


@pytest.fixture(scope="module")
def envelope(token: Token) -> Envelope:
    create_wrap_key(token)
    return Envelope(token)


def test_round_trip(envelope: Envelope) -> None:
    for plaintext in (b"", b"group state", bytes(range(256)) * 400):
        blob = envelope.seal(plaintext, b"group-1/epoch-7")
        assert plaintext not in blob or not plaintext
        assert envelope.open(blob, b"group-1/epoch-7") == plaintext
    assert envelope.seal(b"same", b"") != envelope.seal(b"same", b"")  # fresh data key and nonces


@pytest.mark.parametrize("part", sorted(PARTS))
def test_tampering_with_any_part_is_detected(envelope: Envelope, part: str) -> None:
    blob = bytearray(envelope.seal(b"secret state", b"aad"))
    blob[PARTS[part]] ^= 0x01
    with pytest.raises(EnvelopeError):
        envelope.open(bytes(blob), b"aad")


def test_tampered_ciphertext_tag_aad_and_truncation(envelope: Envelope) -> None:
    blob = envelope.seal(b"secret state", b"aad")
    for bad in (blob[:-1] + bytes((blob[-1] ^ 1,)), blob[:80] + bytes((blob[80] ^ 1,)) + blob[81:]):
        with pytest.raises(EnvelopeError):
            envelope.open(bad, b"aad")
    with pytest.raises(EnvelopeError):
        envelope.open(blob, b"other aad")
    for cut in (0, 1, 60, 89, len(blob) - 1):
        with pytest.raises(EnvelopeError):
            envelope.open(blob[:cut], b"aad")
    other = envelope.seal(b"other", b"aad")
    swapped = blob[:13] + other[13:61] + blob[61:]  # another blob's wrapped data key
    with pytest.raises(EnvelopeError):
        envelope.open(swapped, b"aad")


def test_wrap_key_is_created_once_and_never_readable(token: Token, envelope: Envelope) -> None:
    assert create_wrap_key(token) is False

    def inspect(session: Session) -> list[tuple[bool, bool, bool]]:
        rows = []
        template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: DEFAULT_WRAP_LABEL}
        for obj in list(session.get_objects(template)):
            try:
                obj[Attribute.VALUE]
                readable = True
            except AttributeSensitive:
                readable = False
            rows.append((readable, obj[Attribute.SENSITIVE], obj[Attribute.EXTRACTABLE]))
        return rows

    assert token.run(inspect, op="test: wrap key") == [(False, True, False)]


def test_missing_wrap_key_is_reported(token: Token, envelope: Envelope) -> None:
    other = Envelope(token, "mlsgw/wrap/none")
    with pytest.raises(WrapKeyMissing):
        other.seal(b"x")
    with pytest.raises(WrapKeyMissing):
        other.open(envelope.seal(b"x"))
