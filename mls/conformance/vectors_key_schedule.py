"""``key-schedule`` vectors: a chain of epochs through the key schedule (RFC 9420 §8, §8.1, §8.5).

For each epoch the GroupContext is built from the vector's group_id, the epoch index, tree_hash and
confirmed_transcript_hash with no extensions, and compared with the vector's encoding; then every secret
of the epoch, external_pub and one MLS-Exporter output are checked (the exporter label is the hex text as
written in the vector, not the bytes it spells). init_secret chains from
``initial_init_secret``."""

from __future__ import annotations

from typing import Any

from mls.conformance.checks import expect_equal, h
from mls.conformance.runner import vector_kind
from mls.crypto import cipher_suite
from mls.schedule.key_schedule import EPOCH_SECRET_LABELS, KeySchedule
from mls.tree.leaf_node import ProtocolVersion
from mls.wire.group_context import GroupContext


@vector_kind("key-schedule", keys=["cipher_suite", "group_id", "initial_init_secret", "epochs"])
def run(case: dict[str, Any]) -> None:
    cs = cipher_suite(case["cipher_suite"])
    init_secret = h(case["initial_init_secret"])
    for epoch, v in enumerate(case["epochs"]):
        at = f"epoch {epoch}"
        ctx = GroupContext(
            ProtocolVersion.mls10,
            cs.suite_id,
            h(case["group_id"]),
            epoch,
            h(v["tree_hash"]),
            h(v["confirmed_transcript_hash"]),
            (),
        ).to_bytes()
        expect_equal(f"{at} group_context", ctx, h(v["group_context"]))

        ks = KeySchedule.from_init_secret(cs, init_secret, h(v["commit_secret"]), h(v["psk_secret"]), ctx)
        expect_equal(f"{at} joiner_secret", ks.joiner_secret, h(v["joiner_secret"]))
        expect_equal(f"{at} welcome_secret", ks.welcome_secret, h(v["welcome_secret"]))
        for name in EPOCH_SECRET_LABELS:
            expect_equal(f"{at} {name}", getattr(ks.secrets, name), h(v[name]))
        expect_equal(f"{at} external_pub", ks.secrets.external_pub, h(v["external_pub"]))

        ex = v["exporter"]
        # The vectors use the label's hex text itself as the (string) label; the context is hex data.
        out = ks.secrets.export(ex["label"], h(ex["context"]), ex["length"])
        expect_equal(f"{at} exporter", out, h(ex["secret"]))
        init_secret = ks.secrets.init_secret
