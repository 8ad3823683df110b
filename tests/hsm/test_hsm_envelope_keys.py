"""Envelope data keys: the token works per data key, not per seal or open (counted through the audit hook).

Rotation by count and by age (an injected clock), the open-side cache and its bound, ``forget``, version 1
blobs, and concurrent seal/open from a worker pool — all against the real SoftHSM token.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.types import Session

from hsm import AuditEvent, Envelope, EnvelopeError, Token, create_wrap_key
from hsm.envelope import DEFAULT_WRAP_LABEL


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events(token: Token) -> list[AuditEvent]:
    create_wrap_key(token)
    return []


def ops(events: list[AuditEvent]) -> list[str]:
    assert all(e.ok and e.custody == "pkcs11" and e.key_ref == DEFAULT_WRAP_LABEL.encode() for e in events)
    return [e.operation for e in events]


def test_many_seals_make_one_wrap_and_their_opens_no_unwrap(token: Token, events: list[AuditEvent]) -> None:
    envelope = Envelope(token, audit_hook=events.append)
    blobs = [envelope.seal(b"state %d" % i, b"g") for i in range(200)]
    assert ops(events) == ["wrap"]
    assert [envelope.open(b, b"g") for b in blobs] == [b"state %d" % i for i in range(200)]
    assert ops(events) == ["wrap"]  # the sealing envelope holds the key it wrapped


def test_many_opens_under_one_key_make_one_unwrap(token: Token, events: list[AuditEvent]) -> None:
    sealer = Envelope(token)
    blobs = [sealer.seal(b"state %d" % i) for i in range(100)]
    opener = Envelope(token, audit_hook=events.append)  # another process, say: nothing cached
    assert all(opener.open(b) == b"state %d" % i for i, b in enumerate(blobs))
    assert ops(events) == ["unwrap"]
    opener.forget()
    assert opener.open(blobs[0]) == b"state 0" and opener.open(blobs[1]) == b"state 1"
    assert ops(events) == ["unwrap", "unwrap"]  # forget() dropped it: one more unwrap, then cached again


def test_rotation_by_count(token: Token, events: list[AuditEvent]) -> None:
    envelope = Envelope(token, audit_hook=events.append, max_seals=10)
    blobs = [envelope.seal(b"m") for _ in range(25)]
    assert ops(events) == ["wrap"] * 3
    ids = [b[9:25] for b in blobs]
    assert ids[:10] == [ids[0]] * 10 and ids[10:20] == [ids[10]] * 10 and ids[20:] == [ids[20]] * 5
    assert len({ids[0], ids[10], ids[20]}) == 3
    assert all(envelope.open(b) == b"m" for b in blobs) and ops(events) == ["wrap"] * 3


def test_rotation_by_age_and_on_demand(token: Token, events: list[AuditEvent]) -> None:
    clock = Clock()
    envelope = Envelope(token, audit_hook=events.append, max_age_s=60.0, clock=clock)
    first = envelope.seal(b"a")
    clock.now += 59.9
    assert envelope.seal(b"b")[9:25] == first[9:25]
    clock.now += 0.1
    second = envelope.seal(b"c")
    assert second[9:25] != first[9:25] and ops(events) == ["wrap", "wrap"]
    envelope.rotate()
    third = envelope.seal(b"d")
    assert third[9:25] != second[9:25] and ops(events) == ["wrap"] * 3
    assert [envelope.open(b) for b in (first, second, third)] == [b"a", b"c", b"d"]
    assert ops(events) == ["wrap"] * 3  # rotated-out keys stay cached for opening


def test_cache_is_bounded_lru(token: Token, events: list[AuditEvent]) -> None:
    sealer = Envelope(token, max_seals=1)
    blobs = [sealer.seal(b"%d" % i) for i in range(4)]  # four data keys
    opener = Envelope(token, audit_hook=events.append, cache_size=2)
    for i in (0, 1, 0, 2, 0, 1):  # 0 stays (recently used), 1 is evicted by 2, then unwrapped again
        assert opener.open(blobs[i]) == b"%d" % i
    assert ops(events) == ["unwrap"] * 4


def test_close_drops_current_key_and_cache(token: Token, events: list[AuditEvent]) -> None:
    envelope = Envelope(token, audit_hook=events.append)
    blob = envelope.seal(b"x")
    envelope.close()
    assert envelope.open(blob) == b"x"
    assert envelope.seal(b"y")[9:25] != blob[9:25]
    assert ops(events) == ["wrap", "unwrap", "wrap"]


def _seal_v1(token: Token, plaintext: bytes, aad: bytes) -> bytes:
    """A version 1 blob as the previous release sealed it (one data key per blob), for existing data."""
    data_key, wrap_nonce, data_nonce = AESGCM.generate_key(256), os.urandom(12), os.urandom(12)
    params = GCMParams(wrap_nonce, b"mlsgw envelope data key v\x01", 128)

    def wrap(session: Session) -> bytes:
        with token.objects("search"):
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=DEFAULT_WRAP_LABEL)
        assert key.key_type == KeyType.AES and key[Attribute.EXTRACTABLE] is False
        return bytes(key.encrypt(data_key, mechanism=Mechanism.AES_GCM, mechanism_param=params))

    head = b"\x01" + wrap_nonce + token.run(wrap, op="test: v1 wrap") + data_nonce
    return head + AESGCM(data_key).encrypt(data_nonce, plaintext, head + aad)


def test_version_1_blobs_still_open(token: Token, events: list[AuditEvent]) -> None:
    envelope = Envelope(token, audit_hook=events.append)
    old = _seal_v1(token, b"sealed by the previous release", b"g/1")
    assert len(old) == 1 + 12 + 48 + 12 + 30 + 16
    assert envelope.open(old, b"g/1") == b"sealed by the previous release"
    assert ops(events) == ["unwrap"]
    for i in range(len(old)):
        bad = bytearray(old)
        bad[i] ^= 0x04
        with pytest.raises(EnvelopeError):
            envelope.open(bytes(bad), b"g/1")
    with pytest.raises(EnvelopeError):
        envelope.open(old, b"g/2")


def test_concurrent_seal_and_open(token: Token, events: list[AuditEvent]) -> None:
    envelope = Envelope(token, audit_hook=events.append, max_seals=50, cache_size=4)

    def work(n: int) -> int:
        done = 0
        for i in range(60):
            plaintext = b"%d/%d" % (n, i)
            blob = envelope.seal(plaintext, b"w%d" % n)
            assert envelope.open(blob, b"w%d" % n) == plaintext
            if i % 20 == 0:
                envelope.forget() if n % 2 else envelope.rotate()
            done += 1
        return done

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(work, range(8))) == 480
    wraps = ops(events).count("wrap")
    assert 480 // 50 <= wraps <= 480 // 50 + 8 * 3 + 1  # by count, plus the explicit rotations/forgets
