"""The error types of the MLS library.

Every failure that a caller can provoke with input — malformed bytes, a message that breaks a rule of
RFC 9420, a failed signature or AEAD check — is raised as a subclass of :class:`MLSError`. No other
exception type escapes a decoder or the group engine for bad input.

Error text never carries key material or secrets: it names a structure, an offset or an RFC rule.
"""

from __future__ import annotations


class MLSError(Exception):
    """Base class of every error raised by the ``mls`` package for bad input or state."""


class DecodeError(MLSError):
    """Bytes are not a valid TLS presentation-language / MLS encoding (RFC 9420 §2.1).

    ``structure`` names the structure being decoded (innermost last, e.g. ``"KeyPackage.leaf_node"``)
    and ``offset`` is the byte offset in the input where decoding failed.
    """

    def __init__(self, structure: str, offset: int, reason: str) -> None:
        self.structure = structure
        self.offset = offset
        self.reason = reason
        super().__init__(f"{structure}: {reason} at byte offset {offset}")


class ValidationError(MLSError):
    """Well-formed input rejected by a rule of RFC 9420.

    ``rule`` names the one check that failed, as ``"<section>/<check>"``: the RFC 9420 section whose
    rule the check enforces, a slash, and a short kebab-case name of what was checked, e.g.
    ``"7.3/leaf-signature"``, ``"12.4.3.1/welcome-key-package-ref"`` or ``"6.3.1/content-aead"``. Every
    check has its own id (``tests/test_rule_ids.py`` keeps them unique), so an HTTP problem document
    that carries ``rule`` says exactly which check refused the input. ``section`` is the part before the
    slash; the message reads ``RFC 9420 §<section>: <message>``.
    """

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        self.message = message
        super().__init__(f"RFC 9420 §{self.section}: {message}")

    @property
    def section(self) -> str:
        """The RFC 9420 section of the rule, e.g. ``"7.3"`` for ``"7.3/leaf-signature"``."""
        return self.rule.partition("/")[0]


class CryptoError(ValidationError):
    """A cryptographic check failed (signature, AEAD tag, HPKE decryption, MAC)."""


# The checks every crypto backend makes, the pure-Python one (mls/crypto/backend.py) and the native one
# (native/, which may import nothing of mls but this module): built here, once, so that both raise them
# with the same id.


def aead_key_nonce_length_error() -> CryptoError:
    """An AEAD key or nonce is not the AEAD's Nk or Nn bytes (RFC 9420 §5.1)."""
    return CryptoError("5.1/aead-key-nonce-length", "AEAD key or nonce has the wrong length")


def aead_tag_error(message: str = "AEAD decryption failed") -> CryptoError:
    """An AEAD tag did not verify, or a ciphertext is too short to carry one (§5.1)."""
    return CryptoError("5.1/aead-tag", message)


def aead_batch_size_error() -> CryptoError:
    """A batch's keys or nonces are not Nk or Nn bytes per item (§5.1)."""
    return CryptoError("5.1/aead-batch-size", "AEAD keys or nonces do not match the batch size")


def aead_batch_aad_error() -> CryptoError:
    """A batch has neither one AAD for all items nor one per item (§5.1)."""
    return CryptoError("5.1/aead-batch-aad", "a batch needs one AAD, or one per item")


class UnsupportedError(MLSError):
    """A cipher suite, algorithm or feature that this implementation or key holder does not support."""


class StateError(MLSError):
    """An operation is not allowed in the current state (e.g. a pending commit is in the way)."""


class KeyStoreError(MLSError):
    """A key holder could not perform an operation (missing key reference, refused operation)."""
