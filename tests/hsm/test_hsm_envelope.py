"""Envelope encryption under the token's wrap key: round trip, and every kind of tampering is caught."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.types import Session

from hsm import Envelope, EnvelopeError, Token, WrapKeyMissing, create_wrap_key
from hsm.envelope import DEFAULT_WRAP_LABEL, VERSION, kek_id

# Offsets of the blob's parts (version 2): version, KEK id, data-key id, wrap nonce, wrapped data key (and
# its tag), data nonce, then ciphertext and tag.
PARTS = {
    "version": 0,
    "kek id": 3,
    "data-key id": 9,
    "data-key id end": 24,
    "wrap nonce": 30,
    "wrapped key": 40,
    "wrapped key tag": 80,
    "data nonce": 90,
    "ciphertext": 100,
}
RECORD = 1 + 8 + 16 + 12 + 48  # version to wrapped key
HEADER = RECORD + 12


@pytest.fixture(scope="module")
def envelope(token: Token) -> Envelope:
    create_wrap_key(token)
    return Envelope(token)


def test_round_trip(envelope: Envelope) -> None:
    for plaintext in (b"", b"group state", bytes(range(256)) * 400):
        blob = envelope.seal(plaintext, b"group-1/epoch-7")
        assert plaintext not in blob or not plaintext
        assert envelope.open(blob, b"group-1/epoch-7") == plaintext
    assert envelope.seal(b"same", b"") != envelope.seal(b"same", b"")  # fresh data nonces


def test_blob_names_its_kek_and_data_key(envelope: Envelope) -> None:
    one, two = envelope.seal(b"a"), envelope.seal(b"b")
    assert one[0] == VERSION == 3 and one[1:9] == kek_id(DEFAULT_WRAP_LABEL)
    assert one[:RECORD] == two[:RECORD]  # one data key, wrapped once, for both
    assert one[RECORD:HEADER] != two[RECORD:HEADER]  # a fresh data nonce per seal
    assert len(one) == HEADER + 1 + 16


@pytest.mark.parametrize("part", sorted(PARTS))
def test_tampering_with_any_part_is_detected(envelope: Envelope, part: str) -> None:
    blob = bytearray(envelope.seal(b"secret state that is long enough", b"aad"))
    blob[PARTS[part]] ^= 0x01
    with pytest.raises(EnvelopeError):
        envelope.open(bytes(blob), b"aad")


def test_tampering_with_every_byte_is_detected(token: Token, envelope: Envelope) -> None:
    """Every single bit flip, with the data key cached and with an empty cache."""
    blob = envelope.seal(b"state", b"aad")
    for cold in (False, True):
        for i in range(len(blob)):
            if cold and i >= HEADER:
                break  # ciphertext and tag: covered warm; cold, each would cost an unwrap
            if cold:
                envelope.forget()
            bad = bytearray(blob)
            bad[i] ^= 0x80
            with pytest.raises(EnvelopeError):
                envelope.open(bytes(bad), b"aad")
    assert envelope.open(blob, b"aad") == b"state"


def test_tampered_tag_aad_and_truncation(envelope: Envelope) -> None:
    blob = envelope.seal(b"secret state", b"aad")
    with pytest.raises(EnvelopeError):
        envelope.open(blob[:-1] + bytes((blob[-1] ^ 1,)), b"aad")
    with pytest.raises(EnvelopeError):
        envelope.open(blob, b"other aad")
    for cut in (0, 1, 60, RECORD, HEADER, HEADER + 15, len(blob) - 1):
        with pytest.raises(EnvelopeError):
            envelope.open(blob[:cut], b"aad")


def test_parts_of_another_data_key_cannot_be_swapped_in(token: Token, envelope: Envelope) -> None:
    first = envelope.seal(b"under the first key", b"aad")
    envelope.rotate()
    second = envelope.seal(b"under the second key", b"aad")
    assert first[9:25] != second[9:25]
    swaps = {
        "id": first[:9] + second[9:25] + first[25:],
        "wrapped key": first[:37] + second[37:RECORD] + first[RECORD:],
        "id and wrapped key": first[:9] + second[9:RECORD] + first[RECORD:],
        "record": second[:RECORD] + first[RECORD:],
    }
    for cached in (True, False):
        for blob in swaps.values():
            if not cached:
                envelope.forget()
            with pytest.raises(EnvelopeError, match="authentication"):
                envelope.open(blob, b"aad")
    assert envelope.open(first, b"aad") == b"under the first key"
    assert envelope.open(second, b"aad") == b"under the second key"


def test_blob_under_another_wrap_key_label_is_refused(token: Token, envelope: Envelope) -> None:
    blob = bytearray(envelope.seal(b"x"))
    blob[1:9] = kek_id("mlsgw/wrap/other")
    with pytest.raises(EnvelopeError, match="another wrap key"):
        envelope.open(bytes(blob))


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
    blob = bytearray(envelope.seal(b"x"))
    blob[1:9] = kek_id("mlsgw/wrap/none")
    with pytest.raises(WrapKeyMissing):
        other.open(bytes(blob))


def test_no_key_material_in_repr(token: Token, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[bytes] = []
    generate = AESGCM.generate_key

    def spy(bit_length: int) -> bytes:
        drawn.append(generate(bit_length))
        return drawn[-1]

    monkeypatch.setattr(AESGCM, "generate_key", staticmethod(spy))
    envelope = Envelope(token)
    envelope.open(envelope.seal(b"x"))
    holders = [envelope, envelope._current, *envelope._cache._keys.values()]
    text = " ".join(repr(h) for h in holders)
    assert len(drawn) == 1 and "seals=1" in text
    assert drawn[0].hex() not in text and repr(drawn[0])[2:-1] not in text


def test_settings_are_checked(token: Token) -> None:
    for bad in ({"max_seals": 0}, {"max_seals": (1 << 32) + 1}, {"max_age_s": 0.0}, {"cache_size": 0}):
        with pytest.raises(ValueError):
            Envelope(token, **bad)  # type: ignore[arg-type]
