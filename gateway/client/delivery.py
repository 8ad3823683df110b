"""The client's routes of the group service (api-delivery.md): group logs, clients, KeyPackages, webhooks."""

from __future__ import annotations

from collections.abc import Sequence

from .transport import Transport
from .wire import JSON, Binary, GroupId, binary, drop_none, fill_path, gid_segment, opt_binary, route


class DeliveryRoutes(Transport):
    """A group's log, clients (devices), the KeyPackage directory and webhooks."""

    # ---- a group's log (endpoint token) ------------------------------------------------------------

    @route("POST", "/v1/groups/{gid}/commit-bundles")
    async def submit_commit_bundle(
        self,
        gid: GroupId,
        commit: Binary,
        group_info: Binary,
        *,
        ratchet_tree: Binary | None = None,
        welcome: Binary | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{seq, epoch}``; a commit for another epoch raises a 409 with ``current_epoch``."""
        body = drop_none(
            commit=binary(commit),
            group_info=binary(group_info),
            ratchet_tree=opt_binary(ratchet_tree),
            welcome=opt_binary(welcome),
        )
        path = "/v1/groups/" + gid_segment(gid) + "/commit-bundles"
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/groups/{gid}/messages")
    async def submit_message(
        self, gid: GroupId, message: Binary, *, idempotency_key: str | None = None
    ) -> JSON:
        """A proposal or application message into the log: ``{seq}``."""
        path = "/v1/groups/" + gid_segment(gid) + "/messages"
        return await self._json("POST", path, {"message": binary(message)}, idempotency_key=idempotency_key)

    @route("GET", "/v1/groups/{gid}")
    async def group_log(self, gid: GroupId) -> JSON:
        """The log's view: ``{group_id, epoch, seq, cipher_suite, members}``."""
        return await self._json("GET", "/v1/groups/" + gid_segment(gid))

    @route("GET", "/v1/groups/{gid}/group-info")
    async def log_group_info(self, gid: GroupId) -> JSON:
        """The latest accepted GroupInfo and tree: ``{group_info, ratchet_tree, epoch}``."""
        return await self._json("GET", "/v1/groups/" + gid_segment(gid) + "/group-info")

    # ---- clients (devices) and the KeyPackage directory --------------------------------------------

    @route("POST", "/v1/clients")
    async def create_client(self, name: str, *, idempotency_key: str | None = None) -> JSON:
        """``{client_id, name, token}`` (the client's token, shown once)."""
        return await self._json("POST", "/v1/clients", {"name": name}, idempotency_key=idempotency_key)

    @route("GET", "/v1/clients")
    async def list_clients(self) -> JSON:
        return await self._json("GET", "/v1/clients")

    @route("GET", "/v1/clients/{client_id}")
    async def get_client(self, client_id: str) -> JSON:
        return await self._json("GET", fill_path("/v1/clients/{client_id}", client_id=client_id))

    @route("DELETE", "/v1/clients/{client_id}")
    async def delete_client(self, client_id: str) -> None:
        await self._none("DELETE", fill_path("/v1/clients/{client_id}", client_id=client_id))

    @route("POST", "/v1/clients/{client_id}/key-packages")
    async def upload_key_packages(
        self,
        client_id: str,
        key_packages: Sequence[Binary],
        *,
        last_resort: Binary | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{stored}``: KeyPackages (MLSMessages) the device made with its own MLS stack."""
        body = drop_none(
            key_packages=[binary(kp) for kp in key_packages], last_resort=opt_binary(last_resort)
        )
        path = fill_path("/v1/clients/{client_id}/key-packages", client_id=client_id)
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/clients/{client_id}/key-packages")
    async def key_package_status(self, client_id: str) -> JSON:
        """``{available, last_resort}``: the client's unclaimed KeyPackages."""
        return await self._json("GET", fill_path("/v1/clients/{client_id}/key-packages", client_id=client_id))

    @route("POST", "/v1/key-packages/claim")
    async def claim_key_packages(
        self,
        endpoints: Sequence[str],
        *,
        cipher_suite: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{key_packages: {endpoint_id: KeyPackage}}``, one per endpoint (all or none)."""
        body = drop_none(endpoints=list(endpoints), cipher_suite=cipher_suite)
        return await self._json("POST", "/v1/key-packages/claim", body, idempotency_key=idempotency_key)

    # ---- webhooks (tenant token) -------------------------------------------------------------------

    @route("PUT", "/v1/identities/{identity_id}/webhook")
    async def set_webhook(self, identity_id: str, url: str, secret: str, *, after: str | None = None) -> JSON:
        """``{url, after}``; the secret signs deliveries (``gateway.webhooks.verify_signature``)."""
        body = drop_none(url=url, secret=secret, after=after)
        return await self._json(
            "PUT", fill_path("/v1/identities/{identity_id}/webhook", identity_id=identity_id), body
        )

    @route("GET", "/v1/identities/{identity_id}/webhook")
    async def get_webhook(self, identity_id: str) -> JSON:
        return await self._json(
            "GET", fill_path("/v1/identities/{identity_id}/webhook", identity_id=identity_id)
        )

    @route("DELETE", "/v1/identities/{identity_id}/webhook")
    async def delete_webhook(self, identity_id: str) -> None:
        await self._none("DELETE", fill_path("/v1/identities/{identity_id}/webhook", identity_id=identity_id))
