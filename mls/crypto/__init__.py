"""Cryptography of MLS: cipher suites, HPKE, signatures, key-handle protocols and the crypto backend."""

from mls.crypto.cipher_suite import CIPHER_SUITES, CipherSuite, cipher_suite
from mls.crypto.key_protocols import HpkePrivateKey, KeyStore, Signer

__all__ = ["CIPHER_SUITES", "CipherSuite", "HpkePrivateKey", "KeyStore", "Signer", "cipher_suite"]
