"""TLS presentation language with MLS variable-length vectors (RFC 9420 §2.1): the byte level.

:class:`Reader` / :class:`Writer` read and write fixed-width integers, the MLS variable-length integer of
§2.1.2 (minimal encodings only), length-prefixed vectors and optionals. Every length is checked against
the remaining input *before* anything is allocated, and failures raise :class:`~mls.errors.DecodeError`
naming the structure path and the byte offset. Declarative structs built on these are in
:mod:`mls.wire.struct`.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from mls.errors import DecodeError

T = TypeVar("T")

#: Largest value of an MLS variable-length integer (§2.1.2: 30 bits usable).
VARINT_MAX = (1 << 30) - 1

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Reader:
    """A cursor over immutable input bytes, reporting errors by structure path and offset."""

    __slots__ = ("_data", "_path", "end", "pos")

    def __init__(self, data: bytes, structure: str = "input") -> None:
        self._data = bytes(data)
        self.pos = 0
        self.end = len(self._data)
        self._path: list[str] = [structure]

    # -- error reporting -------------------------------------------------------------------------
    @property
    def structure(self) -> str:
        return ".".join(p for p in self._path if p) or "input"

    def error(self, reason: str, offset: int | None = None) -> DecodeError:
        return DecodeError(self.structure, self.pos if offset is None else offset, reason)

    def enter(self, name: str) -> int:
        """Push a structure or field name; returns the depth to :meth:`restore` to."""
        self._path.append(name)
        return len(self._path) - 1

    def leave(self) -> None:
        self._path.pop()

    def path_names(self) -> list[str]:
        """The live list of names :meth:`enter` pushes, for a decoder that pushes and pops field names
        itself in a hot loop (it must leave the list as it found it, as :meth:`restore` does)."""
        return self._path

    def restore(self, depth: int) -> None:
        del self._path[depth:]

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Name a hand-decoded structure in error paths for the duration of a ``with`` block."""
        depth = self.enter(name)
        try:
            yield
        finally:
            self.restore(depth)

    # -- primitives ------------------------------------------------------------------------------
    def source(self) -> bytes:
        """All the input bytes this reader walks (positions are offsets into them)."""
        return self._data

    def span(self, start: int) -> bytes:
        """The input bytes from ``start`` to the current position."""
        return self._data[start : self.pos]

    def remaining(self) -> int:
        return self.end - self.pos

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise self.error(f"needs {n} bytes, {self.end - self.pos} remain")
        start = self.pos
        self.pos += n
        return self._data[start : self.pos]

    def u8(self) -> int:
        if self.pos >= self.end:
            raise self.error("needs 1 byte, 0 remain")
        v = self._data[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        return int(_U16.unpack(self.read(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.read(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.read(8))[0])

    def varint(self) -> int:
        """Variable-length integer (§2.1.2); rejects the reserved prefix and non-minimal encodings."""
        start = self.pos
        first = self.u8()
        prefix = first >> 6
        if prefix == 3:
            raise self.error("invalid variable-length integer prefix 0b11", start)
        value = first & 0x3F
        for _ in range((1 << prefix) - 1):
            value = (value << 8) | self.u8()
        if prefix > 0 and value < (1 << (8 * (1 << (prefix - 1)) - 2)):
            raise self.error("variable-length integer is not minimally encoded", start)
        return value

    def opaque(self) -> bytes:
        """``opaque data<V>``: a varint length then that many bytes."""
        n = self.varint()
        return self.read(n)

    def vector(self, item: Callable[[Reader], T]) -> list[T]:
        """``T items<V>``: a varint byte length, then items that must fill it exactly."""
        n = self.varint()
        if n > self.end - self.pos:
            raise self.error(f"vector length {n} exceeds the {self.end - self.pos} bytes remaining")
        outer_end = self.end
        self.end = self.pos + n
        items: list[T] = []
        try:
            while self.pos < self.end:
                items.append(item(self))
        finally:
            self.end = outer_end
        return items

    def optional(self, item: Callable[[Reader], T]) -> T | None:
        """``optional<T>``: a presence octet (0 or 1) then the value."""
        at = self.pos
        flag = self.u8()
        if flag == 0:
            return None
        if flag != 1:
            raise self.error(f"optional presence octet is {flag}, not 0 or 1", at)
        return item(self)

    def done(self) -> None:
        if self.pos != self.end:
            raise self.error(f"{self.end - self.pos} trailing bytes")


class Writer:
    """Appends encodings to a growing buffer."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self.buf)

    def write(self, data: bytes) -> None:
        self.buf += data

    def u8(self, v: int) -> None:
        if not 0 <= v <= 0xFF:
            raise ValueError("uint8 out of range")
        self.buf.append(v)

    def u16(self, v: int) -> None:
        self.buf += _U16.pack(v)

    def u32(self, v: int) -> None:
        self.buf += _U32.pack(v)

    def u64(self, v: int) -> None:
        self.buf += _U64.pack(v)

    def varint(self, v: int) -> None:
        self.buf += encode_varint(v)

    def opaque(self, data: bytes | bytearray) -> None:
        self.varint(len(data))
        self.buf += data

    def vector(self, items: Sequence[T], item: Callable[[Writer, T], None]) -> None:
        inner = Writer()
        for x in items:
            item(inner, x)
        self.opaque(inner.buf)

    def optional(self, value: T | None, item: Callable[[Writer, T], None]) -> None:
        if value is None:
            self.buf.append(0)
        else:
            self.buf.append(1)
            item(self, value)


def encode_varint(v: int) -> bytes:
    """Minimal MLS variable-length integer encoding (§2.1.2)."""
    if v < 0 or v > VARINT_MAX:
        raise ValueError("value does not fit a variable-length integer")
    if v < 0x40:
        return bytes((v,))
    if v < 0x4000:
        return (v | 0x4000).to_bytes(2, "big")
    return (v | 0x80000000).to_bytes(4, "big")


def opaque_bytes(data: bytes) -> bytes:
    """The encoding of ``opaque data<V>``."""
    return encode_varint(len(data)) + data


# ------------------------------------------------------------------------------------------------
# Field codecs
# ------------------------------------------------------------------------------------------------


def decode_exact(data: bytes, read: Callable[[Reader], T], structure: str) -> T:
    """Run ``read`` over ``data`` and require that it consumes every byte."""
    r = Reader(data, structure)
    value = read(r)
    r.done()
    return value
