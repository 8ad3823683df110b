"""``psk_secret`` vectors: the PSK secret of a list of external PSKs (RFC 9420 §8.4)."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite
from mls.schedule.psk import psk_secret
from mls.wire.proposals import PreSharedKeyID


@vector_kind("psk_secret", keys=["cipher_suite", "psks", "psk_secret"], file_names=["psk-secret"])
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    psks = [(PreSharedKeyID.external(h(p["psk_id"]), h(p["psk_nonce"])), h(p["psk"])) for p in case["psks"]]
    expect_equal("psk_secret", psk_secret(cs, psks), h(case["psk_secret"]))
