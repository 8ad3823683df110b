"""Constants and Hypothesis strategies shared by the native backend's tests."""

from __future__ import annotations

import random

from hypothesis import strategies as st

HASHES = ("sha256", "sha384", "sha512")
NH = {"sha256": 32, "sha384": 48, "sha512": 64}
#: AEAD id -> (Nk, Nn)
AEADS = {1: (16, 12), 2: (32, 12), 3: (32, 12)}


def sized_bytes(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes of any size in the range, cheap to generate even when large (a drawn size and seed)."""
    return st.builds(
        lambda n, seed: random.Random(seed).randbytes(n),
        st.integers(min_size, max_size),
        st.integers(0, 2**32),
    )


def payloads(max_size: int = 65536) -> st.SearchStrategy[bytes]:
    """Plaintexts from 0 bytes to ``max_size``: small ones byte-by-byte, larger ones sized and seeded."""
    return st.one_of(st.binary(max_size=64), sized_bytes(0, max_size))
