"""Fixtures for the native backend's tests.

The native extension is part of the install (``pip install -e .`` builds it): when it is missing the
tests fail with that message rather than being skipped.
"""

from __future__ import annotations

from typing import Any

import pytest

from mls.crypto.backend import PythonBackend


@pytest.fixture(scope="session")
def nb() -> Any:
    import native

    if not native.available():
        pytest.fail("the native extension is not built (pip install -e . builds native._mlsnative)")
    from native.backend import NativeBackend

    return NativeBackend()


@pytest.fixture(scope="session")
def pb() -> PythonBackend:
    return PythonBackend()
