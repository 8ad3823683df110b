"""``welcome`` vectors: decrypting a Welcome with the KeyPackage's init key and checking the GroupInfo's
signature and confirmation tag (§12.4.3.1)."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite
from mls.group.welcome import decrypt_group_info, open_group_secrets
from mls.schedule.key_schedule import KeySchedule
from mls.wire.framing import MLSMessage
from mls.wire.group_info import verify_group_info_signature
from mls.wire.key_package import KeyPackage, key_package_ref
from mls.wire.welcome import Welcome


@vector_kind("welcome", keys=["cipher_suite", "init_priv", "key_package", "signer_pub", "welcome"])
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    kp = MLSMessage.from_bytes(h(case["key_package"])).body
    welcome = MLSMessage.from_bytes(h(case["welcome"])).body
    assert isinstance(kp, KeyPackage) and isinstance(welcome, Welcome)
    init_key = cs.hpke_key_from_private_bytes(h(case["init_priv"]))
    if init_key.public_key != kp.init_key:
        raise AssertionError("init_priv does not match the KeyPackage's init_key")
    secrets = open_group_secrets(cs, welcome, key_package_ref(cs, kp), init_key)
    if secrets.psks:
        raise AssertionError("unexpected PSKs in a welcome vector")
    # The welcome secret does not depend on the GroupContext; derive it, then the epoch from the context.
    probe = KeySchedule.from_joiner_secret(cs, secrets.joiner_secret, None, b"")
    group_info = decrypt_group_info(cs, probe.welcome_secret, welcome.encrypted_group_info)
    verify_group_info_signature(cs, group_info, h(case["signer_pub"]))
    ks = KeySchedule.from_joiner_secret(cs, secrets.joiner_secret, None, group_info.group_context.to_bytes())
    ks.secrets.verify_confirmation_tag(
        group_info.group_context.confirmed_transcript_hash, group_info.confirmation_tag
    )
