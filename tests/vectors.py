"""Read the MLS working group's test vectors from the shared folder next to the repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: ../shared/mls-test-vectors next to the repository (read in place, never copied).
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "mls-test-vectors"


def load(name: str) -> list[Any]:
    """The cases of vector file ``name`` (``"messages"`` or ``"messages.json"``)."""
    path = VECTORS / (name if name.endswith(".json") else f"{name}.json")
    cases = json.loads(path.read_text())
    return cases if isinstance(cases, list) else [cases]
