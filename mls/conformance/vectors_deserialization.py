"""``deserialization`` vectors: the variable-length integer header of ``opaque data<V>`` (RFC 9420
§2.1.2) decodes to the vector's length, and encoding that length reproduces the header exactly."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.wire.codec import Reader, encode_varint


@vector_kind("deserialization", keys=["vlbytes_header", "length"])
def run(case: dict[str, Any]) -> None:
    header = h(case["vlbytes_header"])
    r = Reader(header, "vlbytes_header")
    expect_equal("length", r.varint(), case["length"])
    r.done()
    expect_equal("encode_varint(length)", encode_varint(case["length"]), header)
