"""The PostgreSQL store's connection pool: psycopg_pool's, with what an outage needs (issue 15, "connection
loss → 503 ``store_unavailable`` … and recovery without restart").

Measured with psycopg_pool 3.3 against a cluster stopped and started again (``tests/gateway/
test_store_concurrency.py``):

* **Recovery lagged the outage.** The pool retries a failed connection with a delay that doubles each
  time (1 s, 2 s, 4 s, … up to ``reconnect_timeout``): after a 20 s outage the store kept answering
  "unreachable" for another 20 s once the server was back. :class:`StorePool` caps the delay at
  :data:`RECONNECT_MAX_DELAY_S`.
* **Every request waited out the pool's timeout.** With the server down, each request (and each
  ``/readyz``) waited the pool's whole wait (5 s) before its 503. While the last attempt to connect failed
  (:attr:`StorePool.failing`) *and* no connection is lent out, the store waits at most
  :data:`OUTAGE_WAIT_S` for one (a connection that comes in that time is still used), and the full wait
  again once an attempt succeeded. A pool that is merely busy keeps the full wait even when it cannot
  grow (the server at ``max_connections`` refuses the new connection, but the lent ones come back).
  The requests already waiting when an attempt fails, with none lent, are answered then
  (:meth:`StorePool._fail_waiting`): measured before, the first requests after the server went away
  still waited the whole 5 s.
"""

from __future__ import annotations

import threading
from typing import Any

from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

#: The longest pause between two attempts to reconnect while the server is unreachable (seconds).
RECONNECT_MAX_DELAY_S = 2.0
#: How long a request waits for a connection while the last attempt to connect failed (seconds).
OUTAGE_WAIT_S = 0.5


class _CappedBackoff(AttemptWithBackoff):
    """psycopg_pool's backoff (doubling, with jitter, given up after ``reconnect_timeout``) with its delay
    capped at :data:`RECONNECT_MAX_DELAY_S`."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY_S)


class StorePool(ConnectionPool):
    """:class:`psycopg_pool.ConnectionPool` with capped reconnect delays and :attr:`failing` (see the
    module docstring)."""

    #: Whether the last attempt to open a connection failed (the server refuses or does not answer).
    failing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lent = 0
        self._lent_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def lent(self) -> int:
        """Connections lent out right now."""
        return self._lent

    def getconn(self, timeout: float | None = None) -> Any:
        conn = super().getconn(timeout)
        with self._lent_lock:
            self._lent += 1
        return conn

    def putconn(self, conn: Any) -> None:
        with self._lent_lock:
            self._lent -= 1
        super().putconn(conn)

    def _connect(self, timeout: float | None = None) -> Any:
        try:
            conn = super()._connect(timeout)
        except BaseException:
            self.failing = True
            self._fail_waiting()
            raise
        self.failing = False
        return conn

    def _fail_waiting(self) -> None:
        """An attempt to connect failed and no connection is lent out (none can come back): the requests
        already waiting for one get their answer now (a 503) instead of at the end of the pool's wait."""
        if self._lent:
            return
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for client in waiting:
            client.fail(PoolTimeout("no connection: the database is unreachable"))

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _CappedBackoff(timeout=self.reconnect_timeout), growing)

    def wait_s(self) -> float | None:
        """How long a request should wait for a connection now: :data:`OUTAGE_WAIT_S` while the last
        attempt to connect failed and none is lent out, else ``None`` (the pool's own timeout)."""
        return OUTAGE_WAIT_S if self.failing and not self._lent else None


__all__ = ["OUTAGE_WAIT_S", "RECONNECT_MAX_DELAY_S", "StorePool"]
