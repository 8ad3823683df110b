"""Token configuration: which PKCS#11 module, which token, where the PIN comes from, and pool/backoff tuning.

The PIN itself is never part of the configuration: it is read from an environment variable or a file at
connect time (:meth:`TokenConfig.read_pin`) and is not kept on the config object.

``montgomery_keygen`` is the per-token switch for X25519/X448 keys (see ``shared/docs/hsm-facts.md``):

* ``"standard"`` — ``CKM_EC_MONTGOMERY_KEY_PAIR_GEN`` / ``CKK_EC_MONTGOMERY`` (PKCS#11 3.0);
* ``"edwards-oid"`` — SoftHSM's quirk: ``CKM_EC_EDWARDS_KEY_PAIR_GEN`` with the X25519/X448 OID;
* ``"off"`` — never hold X25519/X448 keys in the token (HPKE keys of those suites are software keys);
* ``"auto"`` (default) — ``standard`` if the token advertises the mechanism, else ``edwards-oid`` if the
  token is a SoftHSM token, else ``off``.

Whatever is chosen is confirmed by a self-test at connect time (:mod:`hsm.capabilities`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, cast, get_args

from .errors import HsmError

MontgomeryKeygen = Literal["auto", "standard", "edwards-oid", "off"]
_MONTGOMERY_MODES: tuple[str, ...] = get_args(MontgomeryKeygen)


@dataclass(frozen=True)
class TokenConfig:
    """How to reach one token. Exactly one of ``pin_env`` / ``pin_file`` names the PIN's source."""

    module_path: str
    token_label: str
    pin_env: str | None = None
    pin_file: str | None = None
    #: Worker sessions serving operations (each is used by one thread at a time).
    pool_size: int = 4
    #: How long an operation waits for a free worker session before failing with HsmUnavailable.
    session_wait_s: float = 5.0
    #: Reconnect backoff: first delay, cap, and connect attempts at start-up.
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    startup_attempts: int = 5
    montgomery_keygen: MontgomeryKeygen = "auto"

    def __post_init__(self) -> None:
        self._check_types()
        if (self.pin_env is None) == (self.pin_file is None):
            raise HsmError("token config: set exactly one of pin_env or pin_file")
        if self.pool_size < 1 or self.startup_attempts < 1:
            raise HsmError("token config: pool_size and startup_attempts must be at least 1")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise HsmError("token config: need 0 < backoff_initial_s <= backoff_max_s")
        if self.montgomery_keygen not in _MONTGOMERY_MODES:
            raise HsmError(f"token config: montgomery_keygen must be one of {', '.join(_MONTGOMERY_MODES)}")

    def _check_types(self) -> None:
        for name, expected in _FIELD_TYPES.items():
            value = getattr(self, name)
            ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
            if not ok:
                raise HsmError(f"token config: {name} has the wrong type ({type(value).__name__})")

    def read_pin(self) -> str:
        """The user PIN from its configured source; HsmError (naming the source only) if it is missing."""
        if self.pin_env is not None:
            pin = os.environ.get(self.pin_env)
            if not pin:
                raise HsmError(f"token PIN: environment variable {self.pin_env} is not set")
            return pin
        assert self.pin_file is not None
        try:
            pin = Path(self.pin_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise HsmError(f"token PIN: cannot read {self.pin_file} ({exc.strerror})") from None
        if not pin:
            raise HsmError(f"token PIN: {self.pin_file} is empty")
        return pin

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> TokenConfig:
        """Build from a parsed config section; unknown keys and a literal ``pin`` are rejected."""
        if "pin" in data:
            raise HsmError("token config: the PIN must come from pin_env or pin_file, not the config text")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HsmError(f"token config: unknown keys {', '.join(unknown)}")
        return cls(**cast(dict[str, Any], dict(data)))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "module_path": (str,),
    "token_label": (str,),
    "pin_env": (str, type(None)),
    "pin_file": (str, type(None)),
    "pool_size": (int,),
    "session_wait_s": (int, float),
    "backoff_initial_s": (int, float),
    "backoff_max_s": (int, float),
    "startup_attempts": (int,),
    "montgomery_keygen": (str,),
}

__all__ = ["MontgomeryKeygen", "TokenConfig"]
