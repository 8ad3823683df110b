"""Fixtures for the native backend's tests.

The native extension is part of the install (``pip install -e .`` builds it): when it is missing the
tests fail with that message rather than being skipped. ``native/sanitize_check.sh`` sets
``$MLS_NATIVE_EXPECTED_DIR`` to the folder of its sanitized build, and the tests then fail unless that is
the extension they load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mls.crypto.backend import PythonBackend


@pytest.fixture(scope="session", autouse=True)
def native_extension_is_the_expected_one() -> None:
    expected = os.environ.get("MLS_NATIVE_EXPECTED_DIR")
    if not expected:
        return
    from native import _mlsnative

    if Path(_mlsnative.__file__).parent != Path(expected):
        pytest.fail(f"loaded {_mlsnative.__file__}, not the extension in {expected}")


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
