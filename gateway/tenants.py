"""Tenants and their bearer tokens (api-v1.md "Tenants"), the first admin token, and authentication."""

from __future__ import annotations

from .auth import Principal, new_id, new_token, token_hash
from .errors import not_found
from .persistence import Json, PendingWrites, Persistence, RequestScope, Response
from .sqlite_tenants import TokenInfo
from .store import Store, Tenant

#: A tenant's custody modes (``hsm.keystore.CustodyMode``); the first is the default of ``POST /v1/tenants``.
CUSTODY_MODES = ("wrapped", "token")


class Tenants:
    """Tenant and token operations over the store (admin routes), and token lookup for every request."""

    def __init__(self, store: Store, persistence: Persistence) -> None:
        self.store = store
        self.persistence = persistence

    def bootstrap_admin(self) -> str | None:
        """Create the first admin token if there is none; returns it (to be shown once)."""
        token = new_token()
        with self.store.transaction() as tx:
            if tx.count_admin_tokens() > 0:
                return None
            tx.add_token(new_id("tok"), None, token_hash(token))
        return token

    def authenticate(self, token: str) -> Principal | None:
        """Who holds this bearer token (``None`` for an unknown or revoked one)."""
        with self.store.lookup() as tx:  # no snapshot or durability wait needed: see Store.lookup
            record = tx.token_by_hash(token_hash(token))
        if record is None or record.revoked:
            return None
        return Principal(record.token_id, record.tenant_id, record.client_id)

    def create(self, name: str, scope: RequestScope, custody_mode: str = "wrapped") -> Response:
        """``POST /v1/tenants``: the tenant (new keys of its identities in ``custody_mode``) and its first
        token."""
        tenant = Tenant(new_id("tnt"), name, custody_mode)
        token, token_id = new_token(), new_id("tok")
        pending = PendingWrites(
            [
                lambda tx: tx.add_tenant(tenant),
                lambda tx: tx.add_token(token_id, tenant.tenant_id, token_hash(token)),
            ]
        )
        return self.persistence.commit(
            pending,
            Response(201, {"tenant_id": tenant.tenant_id, "token": token, "custody": custody_mode}),
            scope,
        )

    def list(self) -> Json:
        """``GET /v1/tenants``."""
        with self.store.transaction() as tx:
            tenants = tx.list_tenants()
        return {
            "tenants": [
                {"tenant_id": t.tenant_id, "name": t.name, "custody": t.custody_mode} for t in tenants
            ]
        }

    def create_token(self, tenant_id: str, scope: RequestScope) -> Response:
        """``POST /v1/tenants/{tenant_id}/tokens``."""
        with self.store.transaction() as tx:
            if tx.get_tenant(tenant_id) is None:
                raise not_found("tenant")
        token, token_id = new_token(), new_id("tok")
        pending = PendingWrites([lambda tx: tx.add_token(token_id, tenant_id, token_hash(token))])
        return self.persistence.commit(pending, Response(201, {"token_id": token_id, "token": token}), scope)

    def revoke_token(self, tenant_id: str, token_id: str) -> Response:
        """``DELETE /v1/tenants/{tenant_id}/tokens/{token_id}``: refused from the next request on."""
        with self.store.transaction() as tx:
            if not tx.revoke_token(tenant_id, token_id):
                raise not_found("token")
        return Response(204, None)

    def list_tokens(self, tenant_id: str) -> Json:
        """``GET /v1/tenants/{tenant_id}/tokens``: ids, times, revocation, client (never a token)."""
        with self.store.read_transaction() as tx:
            if tx.get_tenant(tenant_id) is None:
                raise not_found("tenant")
            tokens = tx.list_tokens(tenant_id)
        return {"tokens": [token_json(t) for t in tokens]}

    def rotate_admin_token(self) -> tuple[str, int]:
        """A new admin token, every other admin token revoked: returns it (shown once) and how many were
        revoked. The recovery path for a lost admin token (``mls-gateway admin rotate-admin-token``)."""
        token = new_token()
        with self.store.transaction() as tx:
            revoked = tx.rotate_admin_token(new_id("tok"), token_hash(token))
        return token, revoked


def token_json(t: TokenInfo) -> Json:
    """A token as the API and the CLI list it."""
    out: Json = {"token_id": t.token_id, "created_at": t.created_at, "revoked": t.revoked}
    if t.client_id is not None:
        out["client_id"] = t.client_id
    return out
