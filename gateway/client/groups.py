"""The client's routes of a hosted identity's groups (api-v1.md; through the group's log, api-delivery.md)."""

from __future__ import annotations

from collections.abc import Sequence

from .transport import Transport
from .wire import JSON, Binary, GroupId, as_list, b64, binary, drop_none, group_path, opt_binary, route, unb64


class GroupRoutes(Transport):
    """A hosted identity's groups: create, join, commit, propose, protect, process, export."""

    # ---- an identity's groups (tenant token) -------------------------------------------------------

    @route("POST", "/v1/identities/{identity_id}/groups")
    async def create_group(
        self,
        identity_id: str,
        *,
        group_id: bytes | None = None,
        extensions: Sequence[JSON] | None = None,
        external_senders: Sequence[JSON] | None = None,
        config: JSON | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{group_id, epoch: 0}``; ``extensions`` as :func:`extension` makes them."""
        body = drop_none(
            group_id=None if group_id is None else b64(group_id),
            extensions=as_list(extensions),
            external_senders=as_list(external_senders),
            config=config,
        )
        return await self._json("POST", group_path(identity_id), body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/groups")
    async def list_groups(self, identity_id: str) -> JSON:
        return await self._json("GET", group_path(identity_id))

    @route("POST", "/v1/identities/{identity_id}/groups/join")
    async def join_group(
        self,
        identity_id: str,
        welcome: Binary,
        *,
        ratchet_tree: Binary | None = None,
        psks: Sequence[JSON] | None = None,
        config: JSON | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Join from a Welcome: ``{group_id, epoch, epoch_authenticator}``."""
        body = drop_none(
            welcome=binary(welcome), ratchet_tree=opt_binary(ratchet_tree), psks=as_list(psks), config=config
        )
        path = group_path(identity_id, None, "/join")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/external-join")
    async def external_join(
        self,
        identity_id: str,
        group_info: Binary,
        *,
        ratchet_tree: Binary | None = None,
        remove_prior: bool | None = None,
        remove_prior_leaf: int | None = None,
        psks: Sequence[JSON] | None = None,
        config: JSON | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Join by external commit (RFC 9420 §12.4.3.2): ``{group_id, epoch, commit}``."""
        body = drop_none(
            group_info=binary(group_info),
            ratchet_tree=opt_binary(ratchet_tree),
            remove_prior=remove_prior,
            remove_prior_leaf=remove_prior_leaf,
            psks=as_list(psks),
            config=config,
        )
        path = group_path(identity_id, None, "/external-join")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/groups/{gid}")
    async def get_group(self, identity_id: str, gid: GroupId) -> JSON:
        """This member's view of the group."""
        return await self._json("GET", group_path(identity_id, gid))

    @route("DELETE", "/v1/identities/{identity_id}/groups/{gid}")
    async def delete_group(self, identity_id: str, gid: GroupId) -> None:
        await self._none("DELETE", group_path(identity_id, gid))

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/commits")
    async def commit(
        self,
        identity_id: str,
        gid: GroupId,
        *,
        add: Sequence[Binary] | None = None,
        remove: Sequence[int] | None = None,
        update: bool | None = None,
        force_path: bool | None = None,
        psks: Sequence[JSON] | None = None,
        group_context_extensions: Sequence[JSON] | None = None,
        include_pending: bool | None = None,
        handshake: str | None = None,
        pending: bool | None = None,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{commit, welcome, group_info, epoch}``; a stale ``epoch`` raises a 409 with
        ``current_epoch``. ``psks`` as :func:`external_psk` / :func:`resumption_psk` make them."""
        body = drop_none(
            add=None if add is None else [binary(kp) for kp in add],
            remove=as_list(remove),
            update=update,
            force_path=force_path,
            psks=as_list(psks),
            group_context_extensions=as_list(group_context_extensions),
            include_pending=include_pending,
            handshake=handshake,
            pending=pending,
            epoch=epoch,
        )
        path = group_path(identity_id, gid, "/commits")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/pending-commit/merge")
    async def merge_pending_commit(
        self, identity_id: str, gid: GroupId, *, idempotency_key: str | None = None
    ) -> JSON:
        path = group_path(identity_id, gid, "/pending-commit/merge")
        return await self._json("POST", path, {}, idempotency_key=idempotency_key)

    @route("DELETE", "/v1/identities/{identity_id}/groups/{gid}/pending-commit")
    async def discard_pending_commit(self, identity_id: str, gid: GroupId) -> None:
        await self._none("DELETE", group_path(identity_id, gid, "/pending-commit"))

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/proposals")
    async def propose(
        self,
        identity_id: str,
        gid: GroupId,
        proposal_type: str,
        *,
        key_package: Binary | None = None,
        leaf_index: int | None = None,
        psk: JSON | None = None,
        extensions: Sequence[JSON] | None = None,
        handshake: str | None = None,
        epoch: int | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """``{proposal, ref}``; ``proposal_type`` is add, remove, update, psk or group_context_extensions."""
        body = drop_none(
            type=proposal_type,
            key_package=opt_binary(key_package),
            leaf_index=leaf_index,
            psk=psk,
            extensions=as_list(extensions),
            handshake=handshake,
            epoch=epoch,
        )
        path = group_path(identity_id, gid, "/proposals")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/messages")
    async def send_message(
        self,
        identity_id: str,
        gid: GroupId,
        data: bytes,
        *,
        authenticated_data: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Protect one application message: ``{message}`` (a PrivateMessage)."""
        body = drop_none(data=b64(data), authenticated_data=opt_binary(authenticated_data))
        path = group_path(identity_id, gid, "/messages")
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/messages")
    async def send_messages(
        self,
        identity_id: str,
        gid: GroupId,
        messages: Sequence[bytes | tuple[bytes, bytes]],
        *,
        idempotency_key: str | None = None,
    ) -> JSON:
        """The batch form: each item is the data, or (data, authenticated_data); ``{messages}`` in order."""
        items = [
            {"data": b64(m)} if isinstance(m, bytes) else {"data": b64(m[0]), "authenticated_data": b64(m[1])}
            for m in messages
        ]
        path = group_path(identity_id, gid, "/messages")
        return await self._json("POST", path, {"messages": items}, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/process")
    async def process(
        self, identity_id: str, gid: GroupId, message: Binary, *, idempotency_key: str | None = None
    ) -> JSON:
        """Process one MLSMessage: the result (``kind`` application, proposal or commit)."""
        path = group_path(identity_id, gid, "/process")
        return await self._json("POST", path, {"message": binary(message)}, idempotency_key=idempotency_key)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/process")
    async def process_batch(
        self,
        identity_id: str,
        gid: GroupId,
        messages: Sequence[Binary],
        *,
        idempotency_key: str | None = None,
    ) -> JSON:
        """The batch form: ``{results}``, each a result or the problem document of that message."""
        path = group_path(identity_id, gid, "/process")
        body = {"messages": [binary(m) for m in messages]}
        return await self._json("POST", path, body, idempotency_key=idempotency_key)

    @route("GET", "/v1/identities/{identity_id}/groups/{gid}/group-info")
    async def member_group_info(
        self, identity_id: str, gid: GroupId, *, ratchet_tree: str | None = None
    ) -> JSON:
        """A GroupInfo this member signs now: ``{group_info, ratchet_tree}``; ``ratchet_tree`` is
        ``"separate"`` (default) or ``"extension"``."""
        params = None if ratchet_tree is None else {"ratchet_tree": ratchet_tree}
        return await self._json("GET", group_path(identity_id, gid, "/group-info"), params=params)

    @route("POST", "/v1/identities/{identity_id}/groups/{gid}/export")
    async def export_secret(
        self, identity_id: str, gid: GroupId, label: str, length: int, *, context: bytes = b""
    ) -> bytes:
        """The MLS-Exporter secret (RFC 9420 §8.5)."""
        body = {"label": label, "length": length, "context": b64(context)}
        result = await self._json("POST", group_path(identity_id, gid, "/export"), body)
        return unb64(result["secret"])
