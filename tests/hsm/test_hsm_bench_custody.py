"""``benches.hsm``'s custody section runs at a tiny size on the session token and reports what the issue asks.

Only the report's shape and the token-object count are asserted: rates on a shared machine are not.
"""

from __future__ import annotations

from benches.hsm_custody import custody_section
from hsm import Pkcs11KeyStore, Token


def test_custody_section_reports_both_modes_and_no_token_object_growth(token: Token) -> None:
    report = custody_section(token, Pkcs11KeyStore(token), rounds=1, count=2, wrapped_keys=50)
    assert set(report["keypackages_per_s"]) == {"token", "wrapped"}
    assert all(rate > 0 for rate in report["keypackages_per_s"].values())
    assert report["wrapped_to_token_keypackages_ratio"] > 0
    objects = report["token_objects_after_wrapped_keys"]
    assert objects["wrapped_keys"] == 50
    assert objects["token_objects_after"] == objects["token_objects_before"] and not objects["grew"]
    assert "ecdh-p256" in report["wrap_support"]["kinds"]
