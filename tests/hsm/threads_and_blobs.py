"""Helpers of the HSM tests that race threads against key destruction or session retirement."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """``target`` started in a daemon thread; the list receives what it raised (the test reports it)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


class MemoryBlobs:
    """Wrapped-key blobs kept in memory (:class:`hsm.wrapped_keys.WrappedKeyPersistence`)."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def save(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None:
        self.blobs[key_ref] = blob

    def load(self, key_ref: bytes) -> bytes | None:
        return self.blobs.get(key_ref)

    def delete(self, key_ref: bytes) -> None:
        self.blobs.pop(key_ref, None)
