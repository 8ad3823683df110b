"""Clients (devices): endpoints that run their own MLS stack, with a bearer token and a mailbox
(api-delivery.md "The model", "Clients (devices)").

A client's token acts only as that client: it reaches the ``"endpoint"`` routes, and of those only its own
client's resources (another client's answer ``404``, as another tenant's do). Deleting a client deletes its
mailbox and KeyPackages, revokes its tokens, forgets the signature keys it registered and detaches its
leaves from the groups' members (they are no longer delivered to).
"""

from __future__ import annotations

from .auth import Principal, new_id, new_token, token_hash
from .errors import not_found
from .persistence import Json, PendingWrites, Persistence, RequestScope, Response
from .sqlite_directory import ClientRecord
from .store import Store


def client_json(client: ClientRecord) -> Json:
    return {"client_id": client.client_id, "name": client.name}


def can_act_as(principal: Principal, endpoint_id: str) -> bool:
    """Whether the caller may act as this endpoint: a tenant token for any of its tenant's (the tenant
    check is the caller's), a client token only for its own client."""
    return not principal.is_client or principal.client_id == endpoint_id


class Clients:
    """Client operations; :meth:`get` is also the directory's tenant and client-token check."""

    def __init__(self, store: Store, persistence: Persistence) -> None:
        self.store = store
        self.persistence = persistence

    def get(self, principal: Principal, client_id: str) -> ClientRecord:
        """The client of the caller's tenant that the caller may act as (404 otherwise: ids cannot be
        probed, by another tenant nor by another client's token)."""
        assert principal.tenant_id is not None
        found = None
        if can_act_as(principal, client_id):
            with self.store.read_transaction() as tx:
                found = tx.get_client(principal.tenant_id, client_id)
        if found is None:
            raise not_found("client")
        return found

    def create(self, principal: Principal, name: str, scope: RequestScope) -> Response:
        """``POST /v1/clients``: the client and its bearer token (shown once)."""
        assert principal.tenant_id is not None
        client = ClientRecord(new_id("cli"), principal.tenant_id, name)
        token, token_id = new_token(), new_id("tok")
        pending = PendingWrites(
            [
                lambda tx: tx.add_client(client),
                lambda tx: tx.add_token(token_id, client.tenant_id, token_hash(token), client.client_id),
            ]
        )
        return self.persistence.commit(pending, Response(201, {**client_json(client), "token": token}), scope)

    def list(self, principal: Principal) -> Json:
        """``GET /v1/clients``."""
        assert principal.tenant_id is not None
        with self.store.read_transaction() as tx:
            found = tx.list_clients(principal.tenant_id)
        return {"clients": [client_json(c) for c in found]}

    def show(self, principal: Principal, client_id: str) -> Json:
        """``GET /v1/clients/{client_id}`` (a tenant token, or the client's own)."""
        return client_json(self.get(principal, client_id))

    def delete(self, principal: Principal, client_id: str, scope: RequestScope) -> Response:
        """``DELETE /v1/clients/{client_id}``: its mailbox and KeyPackages go, its tokens are revoked."""
        client = self.get(principal, client_id)
        pending = PendingWrites([lambda tx: tx.delete_client(client.client_id)])
        return self.persistence.commit(pending, Response(204, None), scope)


__all__ = ["Clients", "can_act_as", "client_json"]
