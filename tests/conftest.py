"""Shared pytest configuration: where the shared test data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ../shared next to the repository (tests read vectors from there, never from copies).
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared test data not found at {SHARED}")
    return SHARED
