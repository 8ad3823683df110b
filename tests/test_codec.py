"""Unit tests of the strict TLS/MLS codec (mls/codec.py, RFC 9420 §2.1)."""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from typing import Annotated

import pytest

from mls.errors import DecodeError
from mls.wire.codec import VARINT_MAX, Reader, Writer, encode_varint, opaque_bytes
from mls.wire.struct import U8, U16, U32, U64, Bool, Codec, Fixed, OneOf, Opaque, Opt, Select, Struct, Vec


def read_varint(data: bytes) -> int:
    r = Reader(data)
    value = r.varint()
    r.done()
    return value


# -- variable-length integers (§2.1.2) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (0, "00"),
        (37, "25"),
        (63, "3f"),
        (64, "4040"),
        (15293, "7bbd"),
        (16383, "7fff"),
        (16384, "80004000"),
        (494878333, "9d7f3e7d"),
        (VARINT_MAX, "bfffffff"),
    ],
)
def test_varint_boundaries_round_trip(value: int, encoding: str) -> None:
    assert encode_varint(value).hex() == encoding
    assert read_varint(bytes.fromhex(encoding)) == value


@pytest.mark.parametrize("value", [-1, VARINT_MAX + 1])
def test_varint_out_of_range_is_not_encodable(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@pytest.mark.parametrize("encoding", ["4000", "403f", "80000000", "80003fff", "40 25"])
def test_varint_rejects_non_minimal_encodings(encoding: str) -> None:
    with pytest.raises(DecodeError, match="minimal"):
        read_varint(bytes.fromhex(encoding))


@pytest.mark.parametrize("encoding", ["c0", "c000000000000000", "ffffffff"])
def test_varint_rejects_prefix_0b11(encoding: str) -> None:
    with pytest.raises(DecodeError, match="0b11") as e:
        read_varint(bytes.fromhex(encoding))
    assert e.value.offset == 0


@pytest.mark.parametrize("encoding", ["", "40", "80", "80ffff"])
def test_varint_truncated(encoding: str) -> None:
    with pytest.raises(DecodeError):
        read_varint(bytes.fromhex(encoding))


# -- vectors, optionals, fixed-width values -----------------------------------------------------


def test_opaque_round_trip_and_exact_length() -> None:
    assert opaque_bytes(b"abc") == b"\x03abc"
    assert Reader(b"\x03abc").opaque() == b"abc"
    with pytest.raises(DecodeError, match="needs 3 bytes, 2 remain"):
        Reader(b"\x03ab").opaque()


def test_vector_items_must_fill_the_length_exactly() -> None:
    u16s: Vec[int] = Vec(U16)
    assert u16s.read(Reader(bytes.fromhex("0400010002"))) == (1, 2)
    with pytest.raises(DecodeError):  # 3 bytes cannot hold whole uint16 items
        u16s.read(Reader(bytes.fromhex("03000100")))


def test_huge_vector_length_fails_without_allocating() -> None:
    data = bytes.fromhex("bfffffff") + bytes(10)  # claims 2^30 - 1 bytes, has 10
    readers = [Reader.opaque, Vec(U8).read, Vec(Opaque).read, Vec(Vec(U64)).read]
    tracemalloc.start()
    try:
        start = time.perf_counter()
        for read in readers:
            with pytest.raises(DecodeError, match=r"exceeds|needs"):
                read(Reader(data))
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert elapsed < 0.5


def test_nested_vector_cannot_read_past_its_parent() -> None:
    # The outer vector holds 2 bytes; the inner opaque claims 3 bytes, which exist only past the outer end.
    with pytest.raises(DecodeError):
        Vec(Opaque).read(Reader(bytes.fromhex("0203616263")))


@pytest.mark.parametrize("flag", [2, 3, 0x80, 0xFF])
def test_optional_presence_octet_must_be_0_or_1(flag: int) -> None:
    with pytest.raises(DecodeError, match="presence octet"):
        Opt(U8).read(Reader(bytes([flag, 7])))


def test_optional_round_trip() -> None:
    opt: Opt[int] = Opt(U8)
    for value, encoding in [(None, b"\x00"), (7, b"\x01\x07")]:
        w = Writer()
        opt.write(w, value)
        assert w.getvalue() == encoding
        assert opt.read(Reader(encoding)) == value


def test_bool_rejects_values_above_1() -> None:
    assert Bool.read(Reader(b"\x01")) is True
    with pytest.raises(DecodeError, match="boolean"):
        Bool.read(Reader(b"\x02"))


@pytest.mark.parametrize(("codec", "bits"), [(U8, 8), (U16, 16), (U32, 32), (U64, 64)])
def test_fixed_width_integers_are_big_endian_and_range_checked(codec: Codec[int], bits: int) -> None:
    w = Writer()
    codec.write(w, (1 << bits) - 1)
    assert w.getvalue() == b"\xff" * (bits // 8)
    assert codec.read(Reader(w.getvalue())) == (1 << bits) - 1
    with pytest.raises(ValueError):
        codec.write(Writer(), 1 << bits)
    with pytest.raises(DecodeError):
        codec.read(Reader(b"\xff" * (bits // 8 - 1)))


def test_fixed_length_opaque() -> None:
    assert Fixed(4).read(Reader(b"abcd")) == b"abcd"
    with pytest.raises(ValueError):
        Fixed(4).write(Writer(), b"abc")
    with pytest.raises(DecodeError):
        Fixed(4).read(Reader(b"abc"))


def test_one_of_accepts_only_listed_values() -> None:
    codec = OneOf(U8, (1, 2))
    assert codec.read(Reader(b"\x02")) == 2
    with pytest.raises(DecodeError, match="not one of"):
        codec.read(Reader(b"\x03"))
    with pytest.raises(ValueError):
        codec.write(Writer(), 0)


# -- declarative structs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair(Struct):
    a: Annotated[int, U16]
    b: Annotated[bytes, Opaque]


@dataclass(frozen=True, kw_only=True)
class Choice(Struct):
    kind: Annotated[int, U8]
    number: Annotated[int | None, U32] = None
    pair: Annotated[Pair | None, Pair] = None
    trailer: Annotated[bytes, Opaque]

    __select__ = Select("kind", {1: ("number",), 2: ("pair",), 3: ()})


def test_struct_round_trip_in_field_order() -> None:
    p = Pair(0x0102, b"xy")
    assert p.to_bytes() == bytes.fromhex("0102027879")
    assert Pair.from_bytes(p.to_bytes()) == p
    assert p.to_bytes_without("b") == bytes.fromhex("0102")


def test_struct_rejects_trailing_bytes() -> None:
    with pytest.raises(DecodeError, match="1 trailing bytes") as e:
        Pair.from_bytes(bytes.fromhex("010202787900"))
    assert e.value.offset == 5


def test_decode_error_names_the_structure_path_and_offset() -> None:
    with pytest.raises(DecodeError) as e:
        Choice.from_bytes(bytes.fromhex("02 0001 05 78"))
    assert e.value.structure.endswith("Choice.pair.Pair.b")
    assert e.value.offset == 4


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (Choice(kind=1, number=9, trailer=b"t"), "01 00000009 0174"),
        (Choice(kind=2, pair=Pair(1, b""), trailer=b""), "02 0001 00 00"),
        (Choice(kind=3, trailer=b""), "03 00"),
    ],
)
def test_select_writes_and_reads_only_the_selected_arm(value: Choice, encoding: str) -> None:
    data = bytes.fromhex(encoding)
    assert value.to_bytes() == data
    assert Choice.from_bytes(data) == value


def test_select_rejects_unknown_tag_on_decode() -> None:
    with pytest.raises(DecodeError, match="unknown kind 4") as e:
        Choice.from_bytes(bytes.fromhex("04 00"))
    assert e.value.offset == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": 1, "trailer": b""},  # selected arm missing
        {"kind": 3, "number": 1, "trailer": b""},  # unselected arm set
        {"kind": 9, "trailer": b""},  # unknown tag
    ],
)
def test_select_rejects_inconsistent_construction(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Choice(**fields)  # type: ignore[arg-type]


def test_reader_scope_names_hand_decoded_structures() -> None:
    r = Reader(b"", "outer")
    with pytest.raises(DecodeError) as e, r.scope("Inner"):
        r.u8()
    assert e.value.structure == "outer.Inner"
    assert r.structure == "outer"
