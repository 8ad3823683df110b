"""Building and opening Welcome messages (RFC 9420 §12.4.3.1): GroupSecrets encrypted to each new
member's init key, and the GroupInfo encrypted under the welcome key.

The structs are in :mod:`mls.wire.welcome`; building group state from a Welcome (tree validation,
private keys) is :mod:`mls.group.join`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from mls.crypto.cipher_suite import CipherSuite
from mls.crypto.key_protocols import HpkePrivateKey
from mls.errors import CryptoError, ValidationError
from mls.schedule.key_schedule import welcome_key_nonce
from mls.tree.nodes import HPKECiphertext
from mls.wire.framing import MLSMessage
from mls.wire.group_info import GroupInfo
from mls.wire.key_package import KeyPackage, key_package_ref
from mls.wire.welcome import EncryptedGroupSecrets, GroupSecrets, Welcome


def welcome_from_message(message: bytes | Welcome) -> Welcome:
    """The Welcome an MLSMessage carries (§12.4.3.1); a Welcome already decoded is taken as it is, so
    that a caller who looked into it (for the KeyPackage it is for) does not have it decoded twice."""
    if isinstance(message, Welcome):
        return message
    body = MLSMessage.from_bytes(message).body
    if not isinstance(body, Welcome):
        raise ValidationError("12.4.3.1/welcome-message-type", "the message is not a Welcome")
    return body


def encrypt_group_info(cs: CipherSuite, welcome_secret: bytes, group_info: GroupInfo) -> bytes:
    kn = welcome_key_nonce(cs, welcome_secret)
    return cs.aead_seal(kn.key, kn.nonce, b"", group_info.to_bytes())


def decrypt_group_info(cs: CipherSuite, welcome_secret: bytes, encrypted_group_info: bytes) -> GroupInfo:
    kn = welcome_key_nonce(cs, welcome_secret)
    try:
        plain = cs.aead_open(kn.key, kn.nonce, b"", encrypted_group_info)
    except CryptoError:
        raise CryptoError(
            "12.4.3.1/group-info-decrypt", "encrypted_group_info does not decrypt with the welcome key"
        ) from None
    return GroupInfo.from_bytes(plain)


def encrypt_group_secrets(
    cs: CipherSuite, key_package: KeyPackage, encrypted_group_info: bytes, secrets: GroupSecrets
) -> EncryptedGroupSecrets:
    """``EncryptWithLabel(init_key, "Welcome", encrypted_group_info, group_secrets)`` (§12.4.3.1)."""
    return encrypt_all_group_secrets(cs, [(key_package, secrets)], encrypted_group_info)[0]


def encrypt_all_group_secrets(
    cs: CipherSuite, members: Sequence[tuple[KeyPackage, GroupSecrets]], encrypted_group_info: bytes
) -> tuple[EncryptedGroupSecrets, ...]:
    """Each new member's GroupSecrets encrypted to its init key (§12.4.3.1), in ``members``' order. They
    share one EncryptContext, so its HPKE info hash over ``encrypted_group_info`` is computed once."""
    sealed = cs.encrypt_with_label_many(
        [kp.init_key for kp, _ in members],
        "Welcome",
        encrypted_group_info,
        [gs.to_bytes() for _, gs in members],
    )
    return tuple(
        EncryptedGroupSecrets(key_package_ref(cs, kp), HPKECiphertext(kem_output, ct))
        for (kp, _), (kem_output, ct) in zip(members, sealed, strict=True)
    )


def build_welcome(
    cs: CipherSuite,
    welcome_secret: bytes,
    group_info: GroupInfo,
    members: Sequence[tuple[KeyPackage, GroupSecrets]],
) -> Welcome:
    """The Welcome for ``members`` (§12.4.3.1): the GroupInfo encrypted under the welcome key, and each
    member's GroupSecrets encrypted to its init key."""
    encrypted_group_info = encrypt_group_info(cs, welcome_secret, group_info)
    secrets = encrypt_all_group_secrets(cs, members, encrypted_group_info)
    return Welcome(cs.suite_id, secrets, encrypted_group_info)


def open_group_secrets(
    cs: CipherSuite, welcome: Welcome, ref: bytes, init_key: HpkePrivateKey
) -> GroupSecrets:
    """Find this KeyPackage's entry and decrypt its GroupSecrets (§12.4.3.1)."""
    if welcome.cipher_suite != cs.suite_id:
        raise ValidationError(
            "12.4.3.1/welcome-cipher-suite", "the Welcome's cipher suite is not the KeyPackage's"
        )
    entry = next((s for s in welcome.secrets if s.new_member == ref), None)
    if entry is None:
        raise ValidationError(
            "12.4.3.1/welcome-secrets-entry", "the Welcome has no entry for this KeyPackage"
        )
    ct = entry.encrypted_group_secrets
    plain = cs.decrypt_with_label(
        init_key, "Welcome", welcome.encrypted_group_info, ct.kem_output, ct.ciphertext
    )
    return GroupSecrets.from_bytes(plain)
