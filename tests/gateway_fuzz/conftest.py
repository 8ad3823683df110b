"""One in-process gateway for the whole fuzz package (see :mod:`.harness`).

The gateway lives for the package only: its SoftHSM2 configuration (SOFTHSM2_CONF, process-wide) is put
back as it was afterwards, so later tests that make tokens of their own are not confused by it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import Gateway, running_gateway


@pytest.fixture(scope="package")
def gw() -> Iterator[Gateway]:
    # Every key use is logged at INFO: too much even for a captured log. Internal errors (ERROR, with the
    # traceback) still show in the captured log of a failing test.
    quiet = [logging.getLogger(name) for name in ("mls_gateway.audit", "aiohttp.access")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        with running_gateway() as gateway:
            yield gateway
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


@pytest.fixture
def baseline(gw: Gateway) -> dict[str, Any]:
    """The gateway's state before a test: every fuzzed request must leave it exactly so."""
    return gw.snapshot()
