"""Every private-key use reaches the audit hook with reference, operation and caller context — no secrets."""

from __future__ import annotations

import asyncio

import pytest

from hsm import AuditEvent, Envelope, Pkcs11KeyStore, Token, caller, create_wrap_key
from hsm.kinds import X448, X25519
from mls.crypto.cipher_suite import cipher_suite


def test_key_uses_are_reported_with_caller_context(token: Token) -> None:
    events: list[AuditEvent] = []
    store = Pkcs11KeyStore(token, audit_hook=events.append)
    cs = cipher_suite(2)
    with caller(tenant="acme", request="r-1"):
        signer = store.new_signature_key(2)
        signature = signer.sign(b"content")
        key = store.new_hpke_key(2)
        shared = key.dh(cs.kem.generate().public_key)
        store.destroy(signer.key_ref)
    assert [(e.key_ref, e.operation, e.ok) for e in events] == [
        (signer.key_ref, "generate", True),
        (signer.key_ref, "sign", True),
        (key.key_ref, "generate", True),
        (key.key_ref, "dh", True),
        (signer.key_ref, "destroy", True),
    ]
    for event in events:
        assert dict(event.context) == {"tenant": "acme", "request": "r-1"}
        assert event.custody == "pkcs11"
        values = [v for v in event if isinstance(v, bytes)]
        assert signature not in values and shared not in values


def test_failed_use_is_reported_as_failed(token: Token) -> None:
    events: list[AuditEvent] = []
    store = Pkcs11KeyStore(token, audit_hook=events.append)
    key = store.new_hpke_key(2)
    with pytest.raises(Exception):  # noqa: B017 — CryptoError; the point is the audit record
        key.dh(b"\x04" + bytes(64))
    assert (events[-1].key_ref, events[-1].operation, events[-1].ok) == (key.key_ref, "dh", False)


def test_context_follows_work_into_worker_threads(token: Token) -> None:
    events: list[AuditEvent] = []
    store = Pkcs11KeyStore(token, audit_hook=events.append)
    signer = store.new_signature_key(1)

    async def handler() -> None:
        with caller(tenant="t2", group="g"):
            await asyncio.to_thread(signer.sign, b"from a worker thread")

    asyncio.run(handler())
    assert events[-1].operation == "sign" and dict(events[-1].context) == {"tenant": "t2", "group": "g"}


def test_software_keys_and_envelope_are_audited(token: Token) -> None:
    events: list[AuditEvent] = []
    caps = token.capabilities
    from hsm.capabilities import Capabilities

    restricted = Capabilities({k: f for k, f in caps.forms.items() if k not in (X25519, X448)}, "off")
    store = Pkcs11KeyStore(token, capabilities=restricted, audit_hook=events.append)
    key = store.new_hpke_key(1)
    key.dh(cipher_suite(1).kem.generate().public_key)
    create_wrap_key(token)
    envelope = Envelope(token, audit_hook=events.append)
    with caller(tenant="t3"):
        blob = envelope.seal(b"state")  # the data key is wrapped in the token once ...
        envelope.open(envelope.seal(b"more state"))  # ... and reused: no token work
        envelope.forget()
        envelope.open(blob)  # unwrapped in the token once, then cached
        envelope.open(blob)
    assert [(e.operation, e.custody) for e in events] == [
        ("generate", "software"),
        ("dh", "software"),
        ("wrap", "pkcs11"),
        ("unwrap", "pkcs11"),
    ]
    assert [dict(e.context) for e in events[2:]] == [{"tenant": "t3"}] * 2


def test_a_failing_hook_fails_the_operation(token: Token) -> None:
    def refuse(event: AuditEvent) -> None:
        raise RuntimeError("audit sink down")

    store = Pkcs11KeyStore(token)
    signer = store.new_signature_key(1)
    store.set_audit_hook(refuse)
    with pytest.raises(RuntimeError):
        signer.sign(b"m")
