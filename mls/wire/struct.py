"""Declarative TLS structs (RFC 9420 §2.1): field codecs and the :class:`Struct` base.

A frozen dataclass deriving from :class:`Struct` annotates its fields with codecs, e.g.
``not_before: Annotated[int, U64]``. ``encode``/``decode``/``to_bytes``/``from_bytes`` are derived from the
annotations in field order, which is the order of the RFC's struct definition. A ``select`` on an earlier
field is declared with ``__select__ = Select(tag, {value: (field, …)})``: the arm fields are optional
(``None`` unless selected) and are written/read only when selected. The byte-level primitives underneath
are :mod:`mls.wire.codec`'s.

Decoding is strict: :meth:`Struct.from_bytes` rejects trailing bytes, non-minimal varints and vectors
whose content does not fill their length exactly. Failures raise :class:`~mls.errors.DecodeError`
naming the structure path and the byte offset.
"""

from __future__ import annotations

import dataclasses
import struct as _pystruct
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from mls.wire.codec import Reader, Writer

T = TypeVar("T")
S = TypeVar("S", bound="Struct")


class Codec(Protocol[T]):
    """How one field is written and read."""

    def write(self, w: Writer, v: T) -> None: ...

    def read(self, r: Reader) -> T: ...


class _Int(Generic[T]):
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.size = bits // 8
        self.format_char = {8: "B", 16: "H", 32: "I", 64: "Q"}[bits]
        self._w = {8: Writer.u8, 16: Writer.u16, 32: Writer.u32, 64: Writer.u64}[bits]
        self._r = {8: Reader.u8, 16: Reader.u16, 32: Reader.u32, 64: Reader.u64}[bits]

    def write(self, w: Writer, v: int) -> None:
        if not 0 <= v < (1 << self.bits):
            raise ValueError(f"uint{self.bits} out of range")
        self._w(w, v)

    def read(self, r: Reader) -> int:
        return self._r(r)


class _Opaque:
    def write(self, w: Writer, v: bytes) -> None:
        w.opaque(v)

    def read(self, r: Reader) -> bytes:
        return r.opaque()


class _Bool:
    def write(self, w: Writer, v: bool) -> None:
        w.u8(1 if v else 0)

    def read(self, r: Reader) -> bool:
        at = r.pos
        b = r.u8()
        if b > 1:
            raise r.error(f"boolean octet is {b}", at)
        return b == 1


class Fixed:
    """``opaque data[n]``: exactly ``n`` bytes with no length prefix."""

    def __init__(self, n: int) -> None:
        self.n = n

    def write(self, w: Writer, v: bytes) -> None:
        if len(v) != self.n:
            raise ValueError(f"expected {self.n} bytes")
        w.write(v)

    def read(self, r: Reader) -> bytes:
        return r.read(self.n)


class Vec(Generic[T]):
    """``T items<V>`` of any item codec (a primitive codec or a :class:`Struct` subclass)."""

    def __init__(self, item: Any) -> None:
        self.item = as_codec(item)
        self._int = item if isinstance(item, _Int) else None

    def write(self, w: Writer, v: Sequence[T]) -> None:
        w.vector(v, self.item.write)

    def read(self, r: Reader) -> tuple[T, ...]:
        if self._int is not None:  # uint16 capabilities, uint32 unmerged leaves: one unpack for all
            ints = _read_uint_vector(r, self._int)
            if ints is not None:
                return ints
        return tuple(r.vector(self.item.read))


def _read_uint_vector(r: Reader, codec: _Int[Any]) -> tuple[Any, ...] | None:
    """A vector of fixed-width integers read in one unpack, or ``None`` (the reader left where it was)
    when its length is out of bounds or not a multiple of the width: the item-by-item path then reports
    the error as it always does."""
    at = r.pos
    n = r.varint()
    if n > r.remaining() or n % codec.size:
        r.pos = at
        return None
    return _pystruct.unpack(f">{n // codec.size}{codec.format_char}", r.read(n))


class Opt(Generic[T]):
    """``optional<T>``."""

    def __init__(self, item: Any) -> None:
        self.item = as_codec(item)

    def write(self, w: Writer, v: T | None) -> None:
        w.optional(v, self.item.write)

    def read(self, r: Reader) -> T | None:
        return r.optional(self.item.read)


class OneOf:
    """An integer codec accepting only ``values``: an enum whose unknown values the RFC gives no room for."""

    def __init__(self, base: Codec[int], values: Iterable[int]) -> None:
        self.base = base
        self.values = frozenset(int(v) for v in values)

    def write(self, w: Writer, v: int) -> None:
        if v not in self.values:
            raise ValueError(f"value {v} is not one of {sorted(self.values)}")
        self.base.write(w, v)

    def read(self, r: Reader) -> int:
        at = r.pos
        v = self.base.read(r)
        if v not in self.values:
            raise r.error(f"value {v} is not one of {sorted(self.values)}", at)
        return v


U8: Codec[int] = _Int(8)
U16: Codec[int] = _Int(16)
U32: Codec[int] = _Int(32)
U64: Codec[int] = _Int(64)
Opaque: Codec[bytes] = _Opaque()
Bool: Codec[bool] = _Bool()


class _StructCodec:
    def __init__(self, cls: type[Struct]) -> None:
        self.cls = cls

    def write(self, w: Writer, v: Struct) -> None:
        v.encode(w)

    def read(self, r: Reader) -> Struct:
        return self.cls.decode(r)


def as_codec(x: Any) -> Codec[Any]:
    """A codec object, or a :class:`Struct` subclass (or anything with ``encode``/``decode``)."""
    if isinstance(x, type) and hasattr(x, "decode") and hasattr(x, "encode"):
        return _StructCodec(x)
    if hasattr(x, "read") and hasattr(x, "write"):
        return typing.cast(Codec[Any], x)
    raise TypeError(f"not a codec: {x!r}")


# Declarative structs
# ------------------------------------------------------------------------------------------------


class Select:
    """A ``select (T.tag) { case v: fields… }`` block, declared on a struct as ``__select__``.

    ``arms`` maps each tag value to the names of the fields that value carries. A field named in any arm
    is ``None`` unless the struct's tag selects it; the tag field must come before every arm field.
    Decoding an unknown tag value is an error: without a length prefix the rest cannot be parsed.
    """

    def __init__(self, tag: str, arms: Mapping[int, Sequence[str]]) -> None:
        self.tag = tag
        self.arms = {int(k): frozenset(v) for k, v in arms.items()}
        self.fields = frozenset().union(*self.arms.values())

    def absent(self, tag_value: int) -> frozenset[str] | None:
        """The arm fields that ``tag_value`` leaves out, or ``None`` for an unknown tag value."""
        present = self.arms.get(tag_value)
        return None if present is None else self.fields - present

    def check(self, obj: object) -> None:
        """Raise ``ValueError`` unless exactly the fields selected by ``obj``'s tag are set."""
        tag = getattr(obj, self.tag)
        absent = self.absent(tag)
        if absent is None:
            raise ValueError(f"{type(obj).__name__}.{self.tag} = {tag} selects no known case")
        for name in self.fields:
            if (getattr(obj, name) is None) != (name in absent):
                state = "unset" if name in absent else "set"
                raise ValueError(f"{type(obj).__name__}.{name} must be {state} when {self.tag} = {tag}")


class Struct:
    """Base of TLS-encoded structs declared as frozen dataclasses with ``Annotated[type, codec]`` fields.

    Subclasses with a hand-written wire form (tagged unions, ``select`` blocks) override
    :meth:`encode` and :meth:`decode` and keep the rest.
    """

    __codecs__: ClassVar[tuple[tuple[str, Codec[Any]], ...] | None] = None
    __select__: ClassVar[Select | None] = None
    __trailing__: ClassVar[dict[Any, tuple[tuple[str, Codec[Any]], ...] | None] | None] = None

    def __post_init__(self) -> None:
        if self.__select__ is not None:
            self.__select__.check(self)

    @classmethod
    def _field_codecs(cls) -> tuple[tuple[str, Codec[Any]], ...]:
        codecs = cls.__dict__.get("__codecs__")
        if codecs is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            out = []
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                meta = getattr(hints[f.name], "__metadata__", None)
                if not meta:
                    raise TypeError(f"{cls.__name__}.{f.name} has no codec annotation")
                out.append((f.name, as_codec(meta[0])))
            codecs = tuple(out)
            select = cls.__select__
            if select is not None:
                names = [name for name, _ in codecs]
                if not select.fields <= set(names[names.index(select.tag) + 1 :]):
                    raise TypeError(f"{cls.__name__}: select arms must be fields after {select.tag}")
            cls.__codecs__ = codecs
        return codecs

    def _unselected(self) -> frozenset[str]:
        select = self.__select__
        if select is None:
            return frozenset()
        absent = select.absent(getattr(self, select.tag))
        if absent is None:
            raise ValueError(f"{type(self).__name__}.{select.tag} selects no known case")
        return absent

    def _write_fields(self, w: Writer, omit: frozenset[str]) -> None:
        for name, codec in self._field_codecs():
            if name not in omit:
                codec.write(w, getattr(self, name))

    def encode(self, w: Writer) -> None:
        """Write the encoding, and remember it (the value is immutable): a struct nested in another is
        encoded once however often its container, or the struct itself, is encoded again later (a
        KeyPackage's LeafNode goes into the tree hash, the Commit's Add proposals into several TBS)."""
        wire = self.__dict__.get("_wire")
        if wire is not None:
            w.write(wire)
            return
        buf = w.buf
        start = len(buf)
        self._write_fields(w, self._unselected())
        self._remember_wire(bytes(buf[start:]))

    def to_bytes_without(self, *names: str) -> bytes:
        """The encoding with the named fields left out (e.g. a ``…TBS`` struct: all but ``signature``).

        When they are the last fields written, it is the remembered encoding (of a decoded value, or one
        encoded before) cut short by their encoding: a ``LeafNodeTBS`` or ``KeyPackageTBS`` is then a
        slice of the bytes that were received, not a re-encoding of every field."""
        unselected = self._unselected()
        wire: bytes | None = self.__dict__.get("_wire")
        if wire is not None:
            tail = self._trailing_fields(unselected, names)
            if tail is not None:
                w = Writer()
                for name, codec in tail:
                    codec.write(w, getattr(self, name))
                if wire.endswith(w.buf):
                    return wire[: len(wire) - len(w.buf)]
        w = Writer()
        self._write_fields(w, unselected | frozenset(names))
        return w.getvalue()

    @classmethod
    def _trailing_fields(
        cls, unselected: frozenset[str], names: tuple[str, ...]
    ) -> tuple[tuple[str, Codec[Any]], ...] | None:
        """The written fields among ``names``, when they are the last ones written; else ``None``
        (cached per class and arguments: TBS encodings ask the same question of every value)."""
        cache = cls.__dict__.get("__trailing__")
        if cache is None:
            cache = {}
            cls.__trailing__ = cache
        key = (unselected, names)
        if key not in cache:
            written = [(name, codec) for name, codec in cls._field_codecs() if name not in unselected]
            dropped = [i for i, (name, _) in enumerate(written) if name in names]
            trailing = bool(dropped) and dropped == list(range(len(written) - len(dropped), len(written)))
            cache[key] = tuple(written[dropped[0] :]) if trailing else None
        result: tuple[tuple[str, Codec[Any]], ...] | None = cache[key]
        return result

    @classmethod
    def decode(cls: type[S], r: Reader) -> S:
        """Read the fields in order, naming each in the reader's structure path (for error reports); a
        hot loop (a 10,000-member ratchet tree is ~90,000 structs), so the path is pushed and popped on
        the reader's own list."""
        depth = r.enter(cls.__name__)
        path = r.path_names()
        push, pop = path.append, path.pop
        select = cls.__select__
        tag = None if select is None else select.tag
        skip: frozenset[str] = frozenset()
        start = r.pos
        try:
            values: dict[str, Any] = {}
            for name, codec in cls._field_codecs():
                if name in skip:
                    values[name] = None
                    continue
                push(name)
                if name == tag:
                    assert select is not None
                    at = r.pos
                    value = values[name] = codec.read(r)
                    absent = select.absent(value)
                    if absent is None:
                        raise r.error(f"unknown {name} {value}", at)
                    skip = absent
                else:
                    values[name] = codec.read(r)
                pop()
            obj = cls(**values)
            obj.check_decoded(r)
        finally:
            r.restore(depth)
        obj._remember_wire(r.span(start))
        return obj

    def _remember_wire(self, wire: bytes) -> None:
        """Keep the encoding of this (immutable) value: encoding it again costs nothing."""
        object.__setattr__(self, "_wire", wire)

    def check_decoded(self, r: Reader) -> None:
        """Hook for structural checks after decoding (raise ``r.error(...)``)."""

    def to_bytes(self) -> bytes:
        wire = self.__dict__.get("_wire")
        if wire is None:
            w = Writer()
            self.encode(w)
            wire = w.getvalue()
            self._remember_wire(wire)
        return wire

    @classmethod
    def from_bytes(cls: type[S], data: bytes) -> S:
        """Decode exactly one value from ``data``: trailing bytes are an error."""
        r = Reader(data, "")  # decode() names the structure itself
        obj = cls.decode(r)
        r.done()
        return obj
