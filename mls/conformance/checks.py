"""Small helpers shared by the vector runners."""

from __future__ import annotations


def h(value: str | None) -> bytes:
    """Hex string of a vector field as bytes (``None`` as empty)."""
    return bytes.fromhex(value) if value else b""


def expect_equal(what: str, got: object, want: object) -> None:
    """Raise an AssertionError naming ``what`` when the values differ (byte values shown as hex)."""
    if got != want:

        def show(x: object) -> str:
            return x.hex() if isinstance(x, bytes | bytearray) else repr(x)

        raise AssertionError(f"{what}: got {show(got)[:80]}, want {show(want)[:80]}")
