"""The custody-mode part of ``benches.hsm``: KeyPackages per second in ``token`` and ``wrapped`` custody.

* **KeyPackages per mode** — complete ``Client.key_package()`` calls (two HPKE key pairs made, the
  KeyPackage signed) for suite 2 (P-256) with the key store in ``token`` mode (token objects) and in
  ``wrapped`` mode (session objects wrapped under the KEK with ``CKM_AES_KEY_WRAP_PAD``, the blobs kept in
  an in-memory dict — the gateway's SQLite row write is not part of this figure). Rounds alternate the
  two modes; ``wrapped_to_token_keypackages_ratio`` is the ratio of the medians (goal ≥ 10; hsm-facts.md
  measured 46× for bare keygen + wrap against token keygen).
* **Token objects after N wrapped keys** — the token's object count (``CKA_TOKEN=true``) before and after
  generating N wrapped HPKE keys: it must not grow (wrapped keys are never token objects). The cached
  session objects are bounded by the handle cache (:data:`hsm.wrapped_keys.DEFAULT_CACHE_SIZE`).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

SUITE = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256
GOAL_WRAPPED_RATIO = 10.0


class _DictBlobs:
    """``hsm.wrapped_keys.WrappedKeyPersistence`` in memory."""

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}

    def save(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None:
        self.rows[key_ref] = blob

    def load(self, key_ref: bytes) -> bytes | None:
        return self.rows.get(key_ref)

    def delete(self, key_ref: bytes) -> None:
        self.rows.pop(key_ref, None)


def wrapped_store(token: Any, audit_hook: Any) -> tuple[Any, Any]:
    """A key store in ``wrapped`` mode over ``token`` (the KEK made if missing), and its WrappedKeys."""
    from hsm import Pkcs11KeyStore
    from hsm.wrapped_keys import WrappedKeys
    from hsm.wrapping import create_kek

    create_kek(token)
    wrapped = WrappedKeys(token, _DictBlobs())
    wrapped.probe()
    return Pkcs11KeyStore(token, wrapped=wrapped, mode="wrapped", audit_hook=audit_hook), wrapped


def _token_objects(token: Any) -> int:
    from pkcs11 import Attribute

    def count(session: Any) -> int:
        with token.objects("search"):
            return len(list(session.get_objects({Attribute.TOKEN: True})))

    return int(token.run(count, op="count token objects"))


def _key_package_round(store: Any, count: int) -> float:
    from mls.client import Client
    from mls.credentials.credential import Credential

    client = Client(store, SUITE, Credential.basic(b"custody-bench"))
    start = time.perf_counter()
    for _ in range(count):
        client.key_package()
    elapsed = time.perf_counter() - start
    for bundle in client.key_packages.values():
        store.destroy(bundle.init_key.key_ref)
        store.destroy(bundle.leaf_key.key_ref)
    store.destroy(client.signer.key_ref)
    return count / elapsed


def custody_section(token: Any, store: Any, *, rounds: int, count: int, wrapped_keys: int) -> dict[str, Any]:
    """KeyPackages per second per custody mode (alternating rounds) and the token-object count after
    ``wrapped_keys`` wrapped keys."""
    wrapped_mode, wrapped = wrapped_store(token, None)
    modes = {"token": store.for_mode("token"), "wrapped": wrapped_mode}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, keys in modes.items():
            rates[mode].append(_key_package_round(keys, count))
    medians = {m: round(statistics.median(r), 1) for m, r in rates.items()}
    ratio = round(medians["wrapped"] / medians["token"], 2)
    print(f"  KeyPackages suite {SUITE} by custody: {medians} (wrapped/token {ratio})", flush=True)

    before = _token_objects(token)
    start = time.perf_counter()
    refs = [wrapped_mode.new_hpke_key(SUITE).key_ref for _ in range(wrapped_keys)]
    elapsed = time.perf_counter() - start
    after = _token_objects(token)
    for ref in refs:
        wrapped_mode.destroy(ref)
    wrapped.close()
    print(f"  token objects before/after {wrapped_keys} wrapped keys: {before}/{after}", flush=True)
    return {
        "suite": SUITE,
        "key_packages_per_round": count,
        "rounds": rounds,
        "keypackages_per_s": medians,
        "keypackages_per_s_rounds": {m: [round(x, 1) for x in r] for m, r in rates.items()},
        "wrapped_to_token_keypackages_ratio": ratio,
        "goal_ratio": GOAL_WRAPPED_RATIO,
        "meets_goal": ratio >= GOAL_WRAPPED_RATIO,
        "wrap_support": wrapped.describe(),
        "token_objects_after_wrapped_keys": {
            "wrapped_keys": wrapped_keys,
            "token_objects_before": before,
            "token_objects_after": after,
            "grew": after != before,
            "wrapped_keygen_per_s": round(wrapped_keys / elapsed, 1),
        },
    }


__all__ = ["GOAL_WRAPPED_RATIO", "custody_section", "wrapped_store"]
