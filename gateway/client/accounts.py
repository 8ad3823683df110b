"""The client's routes of the service, the tenants (admin token) and the hosted identities (api-v1.md)."""

from __future__ import annotations

from .transport import Transport
from .wire import JSON, drop_none, fill_path, json_object, route


class AccountRoutes(Transport):
    """Service probes, tenants and their tokens, hosted identities and their KeyPackages."""

    # ---- service (no token) ------------------------------------------------------------------------

    @route("GET", "/healthz")
    async def health(self) -> JSON:
        return await self._json("GET", "/healthz")

    @route("GET", "/readyz")
    async def readiness(self) -> JSON:
        """``{status: "ready"}``, or ``{status: "unavailable", problems}`` (a 503 is no error here)."""
        response = await self.request("GET", "/readyz")
        if response.status == 503 and isinstance(response.body, dict):
            return response.body
        return json_object(response.result(), "GET /readyz")

    @route("GET", "/metrics")
    async def metrics(self) -> str:
        """The Prometheus text exposition."""
        return str(await self.call("GET", "/metrics"))

    @route("GET", "/v1/openapi.json")
    async def openapi(self) -> JSON:
        return await self._json("GET", "/v1/openapi.json")

    # ---- tenants (admin token) ---------------------------------------------------------------------

    @route("POST", "/v1/tenants")
    async def create_tenant(
        self, name: str, *, custody: str | None = None, idempotency_key: str | None = None
    ) -> JSON:
        """``{tenant_id, token, custody}``; ``custody`` is ``"wrapped"`` (default) or ``"token"``."""
        body = drop_none(name=name, custody=custody)
        return await self._json("POST", "/v1/tenants", body, idempotency_key=idempotency_key)

    @route("GET", "/v1/tenants")
    async def list_tenants(self) -> JSON:
        return await self._json("GET", "/v1/tenants")

    @route("POST", "/v1/tenants/{tenant_id}/tokens")
    async def create_tenant_token(self, tenant_id: str, *, idempotency_key: str | None = None) -> JSON:
        path = fill_path("/v1/tenants/{tenant_id}/tokens", tenant_id=tenant_id)
        return await self._json("POST", path, {}, idempotency_key=idempotency_key)

    @route("GET", "/v1/tenants/{tenant_id}/tokens")
    async def list_tenant_tokens(self, tenant_id: str) -> JSON:
        return await self._json("GET", fill_path("/v1/tenants/{tenant_id}/tokens", tenant_id=tenant_id))

    @route("DELETE", "/v1/tenants/{tenant_id}/tokens/{token_id}")
    async def revoke_tenant_token(self, tenant_id: str, token_id: str) -> None:
        path = fill_path("/v1/tenants/{tenant_id}/tokens/{token_id}", tenant_id=tenant_id, token_id=token_id)
        await self._none("DELETE", path)

    @route("DELETE", "/v1/tenants/{tenant_id}")
    async def delete_tenant(self, tenant_id: str) -> None:
        await self._none("DELETE", fill_path("/v1/tenants/{tenant_id}", tenant_id=tenant_id))

    # ---- hosted identities and their KeyPackages (tenant token) ------------------------------------

    @route("POST", "/v1/identities")
    async def create_identity(
        self,
        name: str,
        *,
        cipher_suite: int | None = None,
        credential: JSON | None = None,
        auto_join: bool | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """A hosted identity (keys in the HSM); ``credential`` as :func:`basic_credential` makes it."""
        body = drop_none(name=name, cipher_suite=cipher_suite, credential=credential, auto_join=auto_join)
        return await self._json("POST", "/v1/identities", body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities")
    async def list_identities(self) -> JSON:
        return await self._json("GET", "/v1/identities")

    @route("GET", "/v1/identities/{identity_id}")
    async def get_identity(self, identity_id: str) -> JSON:
        return await self._json("GET", fill_path("/v1/identities/{identity_id}", identity_id=identity_id))

    @route("DELETE", "/v1/identities/{identity_id}")
    async def delete_identity(self, identity_id: str) -> None:
        await self._none("DELETE", fill_path("/v1/identities/{identity_id}", identity_id=identity_id))

    @route("POST", "/v1/identities/{identity_id}/key-packages")
    async def create_key_packages(
        self,
        identity_id: str,
        *,
        count: int | None = None,
        last_resort: bool | None = None,
        lifetime_days: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{key_packages: [{ref, key_package}]}`` made in the HSM."""
        path = fill_path("/v1/identities/{identity_id}/key-packages", identity_id=identity_id)
        body = drop_none(count=count, last_resort=last_resort, lifetime_days=lifetime_days)
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/key-packages")
    async def list_key_packages(self, identity_id: str) -> JSON:
        path = fill_path("/v1/identities/{identity_id}/key-packages", identity_id=identity_id)
        return await self._json("GET", path)
