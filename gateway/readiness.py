"""Readiness beyond "the store answers": whether it takes writes now, and the ``mlsgw_ready`` gauge.

``GET /readyz`` (api-v1.md) says ready only if a write would go through: :func:`store_write_probe` takes
the store's write lock (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's advisory write lock; then ``ROLLBACK``:
nothing is written) on a connection of its own with a short timeout. While another process or a long
transaction holds the lock past that, writes would wait out the store's busy timeout and answer 503, so
readiness answers 503 too.

Every readiness check sets the gauge ``mlsgw_ready`` (1 ready, 0 not); :func:`readiness_gauge_task`
runs the check every :data:`GAUGE_INTERVAL_S` so the gauge is current without anyone polling ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .context import Runtime
    from .store import Store

#: Seconds between two background readiness checks (they keep ``mlsgw_ready`` current).
GAUGE_INTERVAL_S = 5.0


def store_write_probe(store: Store, timeout_s: float) -> str | None:
    """``None`` if the store's write lock can be taken within ``timeout_s``, else why not (either store:
    :meth:`gateway.store.Store.write_probe`)."""
    return store.write_probe(timeout_s)


async def _check_forever(rt: Runtime) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await loop.run_in_executor(rt.probe_executor, rt.readiness)
        await asyncio.sleep(GAUGE_INTERVAL_S)


async def readiness_gauge_task(app: web.Application) -> AsyncIterator[None]:
    """The app's background readiness check (sets ``mlsgw_ready``), cancelled when it shuts down."""
    from .context import APP

    task = asyncio.create_task(_check_forever(app[APP]), name="readiness-gauge")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
