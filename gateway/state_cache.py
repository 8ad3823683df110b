"""Decoded group states kept in memory between requests, validated against the stored record version.

An entry is one membership's :class:`mls.GroupState` and pending :class:`mls.StagedCommit` as of one
record version (``groups.version``, bumped by every write of the record). A session uses an entry only
when the version it reads in its load transaction equals the entry's, so a write by any other process
(or anything else that bypasses this cache) is seen at once. The epoch is not such a version: sending or
processing an application message changes the secret tree without changing the epoch.

A writing session **takes** its entry out (:meth:`StateCache.take`): the ``mls`` operations change the
state in place (the secret tree's generations), so the entry must not survive an operation that failed
after changing it; the session puts the new state back (:meth:`StateCache.put`) only after its
transaction committed. Read-only sessions :meth:`peek` and leave it. The cache is bounded by an
approximate size (the sealed state's length) with least-recently-used eviction; thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mls import GroupState, StagedCommit

Key = tuple[str, bytes]


@dataclass(frozen=True)
class CachedState:
    """One membership's decoded state as of one stored record version."""

    version: int
    state: GroupState
    pending: StagedCommit | None
    #: Approximate memory cost in bytes (the sealed record's length).
    size: int
    #: The last entry of the group's log applied to this state (api-delivery.md).
    applied_seq: int = 0
    #: The version of the stored full state (below ``version`` by the ratchet writes since it was written).
    full_version: int | None = None
    #: ``state.ratchet_state_to_bytes()`` and ``state.structure_snapshot()`` of ``state`` as cached, when
    #: the session that cached it computed them already (its commit compares them): the next writing
    #: session starts from them instead of computing both again (``None``: not known, computed on use).
    ratchet: bytes | None = None
    structure: tuple[object, ...] | None = None


class StateCache:
    """An LRU cache of :class:`CachedState` per ``(identity_id, group_id)``, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, CachedState] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._on_lookup = on_lookup

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Key, version: int) -> CachedState | None:
        """The entry of ``key`` if it is of ``version`` (left in the cache), else ``None``."""
        return self._lookup(key, version, take=False)

    def take(self, key: Key, version: int) -> CachedState | None:
        """Remove ``key``'s entry; it is returned when it is of ``version``."""
        return self._lookup(key, version, take=True)

    def _lookup(self, key: Key, version: int, *, take: bool) -> CachedState | None:
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (take or entry.version != version):
                self._remove(key)
            elif entry is not None:
                self._entries.move_to_end(key)
        hit = entry is not None and entry.version == version
        if self._on_lookup is not None:
            self._on_lookup(hit)
        return entry if hit else None

    def put(self, key: Key, entry: CachedState) -> None:
        """Remember ``entry`` (unless a newer version is cached), evicting the least recently used."""
        if not self.enabled or entry.size > self.max_bytes:
            self.drop(key)
            return
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current.version > entry.version:
                return
            if current is not None:
                self._remove(key)
            self._entries[key] = entry
            self._bytes += entry.size
            while self._bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))

    def drop(self, key: Key) -> None:
        """Forget ``key`` (a deleted membership, a failed operation)."""
        with self._lock:
            if key in self._entries:
                self._remove(key)

    def drop_identity(self, identity_id: str) -> None:
        """Forget every membership of an identity."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == identity_id]:
                self._remove(key)

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size


__all__ = ["CachedState", "StateCache"]
