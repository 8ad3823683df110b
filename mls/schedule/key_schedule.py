"""The MLS key schedule (RFC 9420 §8, §8.1-§8.7) and the Welcome key and nonce (§12.4.3.1).

::

    init_secret_[n-1] ──┐
    commit_secret ──> Extract ──> ExpandWithLabel(., "joiner", GroupContext_[n], Nh) = joiner_secret
    psk_secret (or 0) ──> Extract(joiner_secret) = member secret
        ├─> DeriveSecret(., "welcome") = welcome_secret
        └─> ExpandWithLabel(., "epoch", GroupContext_[n], Nh) = epoch_secret
                ├─> DeriveSecret(., <label>) = the secrets of the §8 table (:class:`EpochSecrets`)
                └─> DeriveSecret(., "init") = init_secret_[n]

:class:`KeySchedule` is the transient result of one epoch change (joiner, welcome and epoch secrets, which
the caller drops once the Welcome is built or read). :class:`EpochSecrets` is what a member keeps for
the epoch: it offers the exporter (§8.5), the external key pair (§8 / §8.3), the confirmation tag
(§8.1, §8.2) and ``to_state``/``from_state`` for persistence. Its ``encryption_secret`` is consumed by
:meth:`EpochSecrets.start_secret_tree` (§9.2).

All secrets are excluded from ``repr``.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass, field
from typing import Any

from mls.crypto.cipher_suite import CipherSuite, cipher_suite
from mls.crypto.hpke import SoftwareHpkeKey
from mls.crypto.key_protocols import HpkePrivateKey
from mls.errors import CryptoError, MLSError, StateError
from mls.schedule.secret_tree import KeyNonce, RatchetConfig, SecretTree

#: The HPKE exporter label of an external init (§8.3).
EXTERNAL_INIT_LABEL = b"MLS 1.0 external init secret"

#: §8 table: EpochSecrets field → DeriveSecret label.
EPOCH_SECRET_LABELS: dict[str, str] = {
    "sender_data_secret": "sender data",
    "encryption_secret": "encryption",
    "exporter_secret": "exporter",
    "external_secret": "external",
    "confirmation_key": "confirm",
    "membership_key": "membership",
    "resumption_psk": "resumption",
    "epoch_authenticator": "authentication",
    "init_secret": "init",
}


# ------------------------------------------------------------------------------------------------
# Steps of the schedule
# ------------------------------------------------------------------------------------------------


def zero_secret(cs: CipherSuite) -> bytes:
    """The all-zero ``KDF.Nh`` vector (an absent commit_secret or psk_secret)."""
    return bytes(cs.n_h)


def derive_joiner_secret(
    cs: CipherSuite, init_secret: bytes, commit_secret: bytes | None, group_context: bytes
) -> bytes:
    """``ExpandWithLabel(Extract(init_secret, commit_secret), "joiner", GroupContext, Nh)``."""
    extracted = cs.extract(init_secret, commit_secret or zero_secret(cs))
    return cs.expand_with_label(extracted, "joiner", group_context, cs.n_h)


def derive_member_secret(cs: CipherSuite, joiner_secret: bytes, psk_secret: bytes | None) -> bytes:
    """``Extract(joiner_secret, psk_secret or 0)``: the unnamed node the welcome and epoch secrets
    hang off."""
    return cs.extract(joiner_secret, psk_secret or zero_secret(cs))


def derive_welcome_secret(cs: CipherSuite, joiner_secret: bytes, psk_secret: bytes | None) -> bytes:
    """``welcome_secret = DeriveSecret(member secret, "welcome")``."""
    return cs.derive_secret(derive_member_secret(cs, joiner_secret, psk_secret), "welcome")


def welcome_key_nonce(cs: CipherSuite, welcome_secret: bytes) -> KeyNonce:
    """The AEAD key and nonce that encrypt a Welcome's GroupInfo (§12.4.3.1)."""
    return KeyNonce(
        cs.expand_with_label(welcome_secret, "key", b"", cs.n_k),
        cs.expand_with_label(welcome_secret, "nonce", b"", cs.n_n),
    )


def derive_epoch_secret(cs: CipherSuite, member_secret: bytes, group_context: bytes) -> bytes:
    """``ExpandWithLabel(member secret, "epoch", GroupContext, Nh)``."""
    return cs.expand_with_label(member_secret, "epoch", group_context, cs.n_h)


def mls_exporter(
    cs: CipherSuite, exporter_secret: bytes, label: bytes | str, context: bytes, length: int
) -> bytes:
    """``MLS-Exporter`` (§8.5): ExpandWithLabel(DeriveSecret(exporter_secret, label), "exported",
    Hash(context), length)."""
    return cs.expand_with_label(
        cs.derive_secret(exporter_secret, label), "exported", cs.hash(context), length
    )


def confirmation_tag(cs: CipherSuite, confirmation_key: bytes, confirmed_transcript_hash: bytes) -> bytes:
    """``MAC(confirmation_key, confirmed_transcript_hash)`` (§6.1)."""
    return cs.mac(confirmation_key, confirmed_transcript_hash)


def verify_confirmation_tag(
    cs: CipherSuite, confirmation_key: bytes, confirmed_transcript_hash: bytes, tag: bytes
) -> None:
    """Raise :class:`CryptoError` unless ``tag`` is the confirmation tag (§6.1, §12.4.2), in constant time."""
    if not hmac.compare_digest(confirmation_tag(cs, confirmation_key, confirmed_transcript_hash), tag):
        raise CryptoError("6.1/confirmation-tag", "the confirmation_tag does not match")


def external_init_send(cs: CipherSuite, external_pub: bytes) -> tuple[bytes, bytes]:
    """A joiner's external init (§8.3): ``(kem_output, init_secret)`` from the group's external_pub."""
    kem_output, ctx = cs.hpke.setup_base_s(external_pub, b"")
    return kem_output, ctx.export(EXTERNAL_INIT_LABEL, cs.n_h)


def external_init_receive(cs: CipherSuite, external_key: HpkePrivateKey, kem_output: bytes) -> bytes:
    """A member's side of an external init (§8.3): the init_secret from an ExternalInit's kem_output."""
    try:
        ctx = cs.hpke.setup_base_r(kem_output, external_key, b"")
    except MLSError:
        raise CryptoError(
            "8.3/external-init-decapsulate", "ExternalInit kem_output could not be decapsulated"
        ) from None
    return ctx.export(EXTERNAL_INIT_LABEL, cs.n_h)


# ------------------------------------------------------------------------------------------------
# Epoch secrets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochSecrets:
    """The secrets derived from one epoch_secret (§8 table), kept by a member for the epoch.

    ``init_secret`` is the init secret of the *next* epoch. ``encryption_secret`` is ``None`` once the
    secret tree has been started from it.
    """

    cs: CipherSuite = field(repr=False)
    sender_data_secret: bytes = field(repr=False)
    encryption_secret: bytes | None = field(repr=False)
    exporter_secret: bytes = field(repr=False)
    external_secret: bytes = field(repr=False)
    confirmation_key: bytes = field(repr=False)
    membership_key: bytes = field(repr=False)
    resumption_psk: bytes = field(repr=False)
    epoch_authenticator: bytes = field(repr=False)
    init_secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        consumed = self.encryption_secret is None
        return f"EpochSecrets(suite={self.cs.suite_id}, encryption_secret_consumed={consumed})"

    @classmethod
    def derive(cls, cs: CipherSuite, epoch_secret: bytes) -> EpochSecrets:
        """Every secret of the §8 table from ``epoch_secret``."""
        values = {name: cs.derive_secret(epoch_secret, label) for name, label in EPOCH_SECRET_LABELS.items()}
        return cls(cs=cs, **values)

    # ---- uses ----------------------------------------------------------------------------------
    def export(self, label: bytes | str, context: bytes, length: int) -> bytes:
        """``MLS-Exporter(label, context, length)`` for this epoch (§8.5)."""
        return mls_exporter(self.cs, self.exporter_secret, label, context, length)

    def external_key_pair(self) -> SoftwareHpkeKey:
        """``KEM.DeriveKeyPair(external_secret)``: the group's external HPKE key pair (§8)."""
        return self.cs.derive_key_pair(self.external_secret)

    @property
    def external_pub(self) -> bytes:
        """The public half of the external key pair, published in GroupInfo (§8, §12.4.3)."""
        return self.external_key_pair().public_key

    def confirmation_tag(self, confirmed_transcript_hash: bytes) -> bytes:
        """This epoch's confirmation tag over ``confirmed_transcript_hash`` (§6.1)."""
        return confirmation_tag(self.cs, self.confirmation_key, confirmed_transcript_hash)

    def verify_confirmation_tag(self, confirmed_transcript_hash: bytes, tag: bytes) -> None:
        """Raise :class:`CryptoError` unless ``tag`` is this epoch's confirmation tag (§6.1, §12.4.2)."""
        verify_confirmation_tag(self.cs, self.confirmation_key, confirmed_transcript_hash, tag)

    def start_secret_tree(
        self, n_leaves: int, config: RatchetConfig | None = None
    ) -> tuple[SecretTree, EpochSecrets]:
        """The epoch's secret tree (§9), and these secrets without the consumed ``encryption_secret``."""
        if self.encryption_secret is None:
            raise StateError("RFC 9420 §9.2: the encryption_secret of this epoch was already consumed")
        tree = SecretTree(self.cs, self.encryption_secret, n_leaves, config)
        return tree, dataclasses.replace(self, encryption_secret=None)

    # ---- persistence ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """A JSON-compatible snapshot: the suite id and every secret as hex (``None`` once consumed)."""
        state: dict[str, Any] = {"cipher_suite": self.cs.suite_id}
        for name in EPOCH_SECRET_LABELS:
            value: bytes | None = getattr(self, name)
            state[name] = None if value is None else value.hex()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochSecrets:
        """Rebuild from :meth:`to_state` output; :class:`StateError` when it is malformed."""
        try:
            cs = cipher_suite(int(state["cipher_suite"]))
            values = {name: _secret_from_state(cs, state[name]) for name in EPOCH_SECRET_LABELS}
        except MLSError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError):
            raise StateError("the stored epoch secrets state is malformed") from None
        if any(v is None for name, v in values.items() if name != "encryption_secret"):
            raise StateError("the stored epoch secrets state is missing a secret")
        return cls(cs=cs, **values)  # type: ignore[arg-type]


def _secret_from_state(cs: CipherSuite, value: str | None) -> bytes | None:
    if value is None:
        return None
    secret = bytes.fromhex(value)
    if len(secret) != cs.n_h:
        raise ValueError("secret length")
    return secret


# ------------------------------------------------------------------------------------------------
# One run of the schedule
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySchedule:
    """One epoch change through the key schedule: the transient secrets and the epoch's secrets."""

    cs: CipherSuite = field(repr=False)
    joiner_secret: bytes = field(repr=False)
    welcome_secret: bytes = field(repr=False)
    epoch_secret: bytes = field(repr=False)
    secrets: EpochSecrets

    def __repr__(self) -> str:
        return f"KeySchedule(suite={self.cs.suite_id}, secrets={self.secrets!r})"

    @classmethod
    def from_init_secret(
        cls,
        cs: CipherSuite,
        init_secret: bytes,
        commit_secret: bytes | None,
        psk_secret: bytes | None,
        group_context: bytes,
    ) -> KeySchedule:
        """A member's epoch change: previous init_secret, commit_secret (``None`` = 0), psk_secret
        (``None`` = 0) and the new epoch's encoded GroupContext."""
        joiner = derive_joiner_secret(cs, init_secret, commit_secret, group_context)
        return cls.from_joiner_secret(cs, joiner, psk_secret, group_context)

    @classmethod
    def from_joiner_secret(
        cls, cs: CipherSuite, joiner_secret: bytes, psk_secret: bytes | None, group_context: bytes
    ) -> KeySchedule:
        """A new member's entry from the joiner_secret of a Welcome's GroupSecrets (§12.4.3.1)."""
        member = derive_member_secret(cs, joiner_secret, psk_secret)
        epoch_secret = derive_epoch_secret(cs, member, group_context)
        return cls(
            cs=cs,
            joiner_secret=joiner_secret,
            welcome_secret=cs.derive_secret(member, "welcome"),
            epoch_secret=epoch_secret,
            secrets=EpochSecrets.derive(cs, epoch_secret),
        )

    def welcome_key_nonce(self) -> KeyNonce:
        """The AEAD key and nonce of this epoch's Welcome (§12.4.3.1)."""
        return welcome_key_nonce(self.cs, self.welcome_secret)


__all__ = [
    "EPOCH_SECRET_LABELS",
    "EXTERNAL_INIT_LABEL",
    "EpochSecrets",
    "KeySchedule",
    "confirmation_tag",
    "derive_epoch_secret",
    "derive_joiner_secret",
    "derive_member_secret",
    "derive_welcome_secret",
    "external_init_receive",
    "external_init_send",
    "mls_exporter",
    "verify_confirmation_tag",
    "welcome_key_nonce",
    "zero_secret",
]
