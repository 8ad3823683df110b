"""Readiness beyond "the store answers": whether it takes writes now, and the ``mlsgw_ready`` gauge.

``GET /readyz`` (api-v1.md) says ready only if a write would go through: :func:`store_write_probe` takes
SQLite's write lock (``BEGIN IMMEDIATE``, then ``ROLLBACK``: nothing is written) on a connection of its
own with a short busy timeout. While another process or a long transaction holds the lock past that,
writes would wait out the store's busy timeout and answer 503, so readiness answers 503 too.

Every readiness check sets the gauge ``mlsgw_ready`` (1 ready, 0 not); :func:`readiness_gauge_task`
runs the check every :data:`GAUGE_INTERVAL_S` so the gauge is current without anyone polling ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .context import Runtime

#: Seconds between two background readiness checks (they keep ``mlsgw_ready`` current).
GAUGE_INTERVAL_S = 5.0


def store_write_probe(database: Path, timeout_s: float) -> str | None:
    """``None`` if the store's write lock can be taken within ``timeout_s``, else why not."""
    try:
        conn = sqlite3.connect(database, timeout=timeout_s, isolation_level=None)
    except sqlite3.Error as e:
        return f"cannot open the database ({type(e).__name__})"
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return "the write lock is held (writes would wait and answer 503)"
        return f"not writable ({e})"
    except sqlite3.Error as e:
        return f"not writable ({type(e).__name__})"
    finally:
        conn.close()
    return None


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
