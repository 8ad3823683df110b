"""The client's routes of a tenant's compliance controls: its credential policy, the X.509 credential of a
hosted identity (a CSR signed in the HSM, then the chain the tenant's CA issued for it), and the tenant's
retention periods and legal hold."""

from __future__ import annotations

from collections.abc import Sequence

from .transport import Transport
from .wire import JSON, drop_none, fill_path, route

POLICY = "/v1/tenants/{tenant_id}/credential-policy"
CSR = "/v1/identities/{identity_id}/csr"
CREDENTIAL = "/v1/identities/{identity_id}/credential"
RETENTION = "/v1/tenants/{tenant_id}/retention"
LEGAL_HOLD = "/v1/tenants/{tenant_id}/legal-hold"


class ComplianceRoutes(Transport):
    """Credential policy (admin or the tenant's own token) and identity certificates (tenant token)."""

    @route("PUT", POLICY)
    async def set_credential_policy(
        self, tenant_id: str, allowed_types: Sequence[str], *, x509: JSON | None = None
    ) -> JSON:
        """``allowed_types`` of ``"basic"``, ``"x509"``; ``x509`` is ``{trust_anchors, intermediates?, crls?,
        san_pattern?, required_eku?}`` (PEM strings, OIDs). The answer is the policy as stored."""
        body = drop_none(allowed_types=list(allowed_types), x509=x509)
        return await self._json("PUT", fill_path(POLICY, tenant_id=tenant_id), body)

    @route("GET", POLICY)
    async def credential_policy(self, tenant_id: str) -> JSON:
        return await self._json("GET", fill_path(POLICY, tenant_id=tenant_id))

    @route("DELETE", POLICY)
    async def delete_credential_policy(self, tenant_id: str) -> None:
        await self._none("DELETE", fill_path(POLICY, tenant_id=tenant_id))

    @route("POST", CSR)
    async def certificate_request(self, identity_id: str, subject: str) -> JSON:
        """``{csr}``: a PKCS#10 request (PEM) for the identity's signature key, signed in the HSM;
        ``subject`` is an RFC 4514 name such as ``"CN=bot-7,O=Example"``."""
        return await self._json("POST", fill_path(CSR, identity_id=identity_id), {"subject": subject})

    @route("PUT", CREDENTIAL)
    async def set_x509_credential(self, identity_id: str, chain: Sequence[str]) -> JSON:
        """The identity uses the X.509 chain (PEM, end entity first) from now on; the identity's view."""
        path = fill_path(CREDENTIAL, identity_id=identity_id)
        return await self._json("PUT", path, {"x509_chain": list(chain)})

    @route("GET", RETENTION)
    async def retention(self, tenant_id: str) -> JSON:
        """The tenant's retention overrides, the effective periods and its legal hold."""
        return await self._json("GET", fill_path(RETENTION, tenant_id=tenant_id))

    @route("PUT", RETENTION)
    async def set_retention(
        self,
        tenant_id: str,
        *,
        mailbox_s: int | None = None,
        idempotency_s: int | None = None,
        audit_s: int | None = None,
    ) -> JSON:
        """Replace the tenant's overrides (whole seconds; an override left out is the configured default)."""
        body = {"mailbox_s": mailbox_s, "idempotency_s": idempotency_s, "audit_s": audit_s}
        return await self._json("PUT", fill_path(RETENTION, tenant_id=tenant_id), body)

    @route("PUT", LEGAL_HOLD)
    async def set_legal_hold(self, tenant_id: str, enabled: bool) -> JSON:
        """Suspend (or resume) purging of the tenant's audit records (admin token); the retention view."""
        return await self._json("PUT", fill_path(LEGAL_HOLD, tenant_id=tenant_id), {"enabled": enabled})
