"""Welcome messages (RFC 9420 §12.4.3.1): encrypting GroupSecrets to new members and the GroupInfo under
the welcome key, and the joiner's side of both.

The joiner's checks on the GroupInfo (signature, confirmation tag) are here; building group state from a
Welcome (tree validation, private keys) is the group engine's (:mod:`mls.group`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .crypto.cipher_suite import CipherSuite
from .crypto.keys import HpkePrivateKey, Signer
from .errors import CryptoError, ValidationError
from .key_package import KeyPackage
from .key_schedule import welcome_key_nonce
from .messages import EncryptedGroupSecrets, GroupInfo, GroupSecrets, Welcome
from .nodes import HPKECiphertext


def key_package_ref(cs: CipherSuite, key_package: KeyPackage) -> bytes:
    """``MakeKeyPackageRef(value)`` over the encoded KeyPackage (§5.2)."""
    return cs.make_key_package_ref(key_package.to_bytes())


def sign_group_info(cs: CipherSuite, signer: Signer, unsigned: GroupInfo) -> GroupInfo:
    """``SignWithLabel(., "GroupInfoTBS", GroupInfoTBS)`` (§12.4.3)."""
    sig = cs.sign_with_label(signer, "GroupInfoTBS", unsigned.tbs())
    return GroupInfo(unsigned.group_context, unsigned.extensions, unsigned.confirmation_tag, unsigned.signer, sig)


def verify_group_info_signature(cs: CipherSuite, group_info: GroupInfo, signer_public_key: bytes) -> None:
    if not cs.verify_with_label(signer_public_key, "GroupInfoTBS", group_info.tbs(), group_info.signature):
        raise CryptoError("12.4.3", "the GroupInfo signature does not verify")


def encrypt_group_info(cs: CipherSuite, welcome_secret: bytes, group_info: GroupInfo) -> bytes:
    kn = welcome_key_nonce(cs, welcome_secret)
    return cs.aead_seal(kn.key, kn.nonce, b"", group_info.to_bytes())


def decrypt_group_info(cs: CipherSuite, welcome_secret: bytes, encrypted_group_info: bytes) -> GroupInfo:
    kn = welcome_key_nonce(cs, welcome_secret)
    try:
        plain = cs.aead_open(kn.key, kn.nonce, b"", encrypted_group_info)
    except CryptoError:
        raise CryptoError("12.4.3.1", "encrypted_group_info does not decrypt with the welcome key") from None
    return GroupInfo.from_bytes(plain)


def encrypt_group_secrets(
    cs: CipherSuite, key_package: KeyPackage, encrypted_group_info: bytes, secrets: GroupSecrets
) -> EncryptedGroupSecrets:
    """``EncryptWithLabel(init_key, "Welcome", encrypted_group_info, group_secrets)`` (§12.4.3.1)."""
    kem_output, ct = cs.encrypt_with_label(key_package.init_key, "Welcome", encrypted_group_info, secrets.to_bytes())
    return EncryptedGroupSecrets(key_package_ref(cs, key_package), HPKECiphertext(kem_output, ct))


def build_welcome(
    cs: CipherSuite, welcome_secret: bytes, group_info: GroupInfo, members: Sequence[tuple[KeyPackage, GroupSecrets]]
) -> Welcome:
    encrypted_group_info = encrypt_group_info(cs, welcome_secret, group_info)
    secrets = tuple(encrypt_group_secrets(cs, kp, encrypted_group_info, gs) for kp, gs in members)
    return Welcome(cs.suite_id, secrets, encrypted_group_info)


def open_group_secrets(cs: CipherSuite, welcome: Welcome, ref: bytes, init_key: HpkePrivateKey) -> GroupSecrets:
    """Find this KeyPackage's entry and decrypt its GroupSecrets (§12.4.3.1)."""
    if welcome.cipher_suite != cs.suite_id:
        raise ValidationError("12.4.3.1", "the Welcome's cipher suite is not the KeyPackage's")
    entry = next((s for s in welcome.secrets if s.new_member == ref), None)
    if entry is None:
        raise ValidationError("12.4.3.1", "the Welcome has no entry for this KeyPackage")
    ct = entry.encrypted_group_secrets
    plain = cs.decrypt_with_label(init_key, "Welcome", welcome.encrypted_group_info, ct.kem_output, ct.ciphertext)
    return GroupSecrets.from_bytes(plain)
