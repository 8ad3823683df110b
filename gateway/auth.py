"""Bearer tokens: admin tokens manage tenants, tenant tokens see only their tenant (api-v1.md).

Tokens are 256-bit random strings; the store keeps only their SHA-256, so a database leak reveals no
usable token. A revoked token is refused from the next request on (every request looks the hash up).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "mlsgw_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``tenant_id is None`` for an admin token; ``client_id`` is set for a client's
    (device's) token (api-delivery.md), which acts only as that client."""

    token_id: str
    tenant_id: str | None
    client_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None

    @property
    def is_client(self) -> bool:
        return self.client_id is not None

    @property
    def endpoint_id(self) -> str | None:
        """The endpoint the caller acts as: its client, or ``None`` for a tenant (or admin) token."""
        return self.client_id


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_id(prefix: str) -> str:
    """A random, non-guessable identifier (ids cannot be probed across tenants)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
