"""The whole API as one client class: a method per route of :data:`gateway.api.ROUTES`."""

from __future__ import annotations

from .accounts import AccountRoutes
from .boxes import BoxRoutes
from .compliance import ComplianceRoutes
from .delivery import DeliveryRoutes
from .groups import GroupRoutes


class GatewayClient(AccountRoutes, GroupRoutes, DeliveryRoutes, BoxRoutes, ComplianceRoutes):
    """The gateway's API over one ``aiohttp.ClientSession``, as one bearer ``token`` (or none).

    ``session`` is used as is (and not closed) when given; otherwise the client makes its own on first
    use (``keep_alive=False`` opens a connection per request) and :meth:`close` closes it. ``timeout`` is
    the most seconds a request may take; a long poll waits longer by its ``wait``. Each route method is
    marked with its route (:func:`client_routes`)."""


def client_routes() -> dict[tuple[str, str], list[str]]:
    """Every route the client calls, with the names of its methods that call it."""
    routes: dict[tuple[str, str], list[str]] = {}
    for name in dir(GatewayClient):
        marked = getattr(getattr(GatewayClient, name), "gateway_route", None)
        if marked is not None:
            routes.setdefault(marked, []).append(name)
    return routes
