"""What a *stopped* gateway's data folder holds, for the reconciliation tests (run as a subprocess).

``python -m tests.gateway.key_inventory count DATA_DIR`` prints one JSON object: every key object in the
token (a search under the object-store guard, independent of :mod:`hsm.inventory`), the software keys
at rest, and the references the database holds in plain columns (signature keys, live KeyPackages).
``... missing DATA_DIR`` prints the references the database holds
(:func:`gateway.key_references.referenced_keys`, memberships included) that the key store does not have in
the token, in ``software_keys`` or in ``wrapped_keys`` (what a consistent backup never has).
``... plant-software DATA_DIR N`` makes N software-custody HPKE keys sealed into ``software_keys`` and
referenced by nothing: what a crash between a software key's save and its request's commit leaves.
A subprocess, because the token's SoftHSM configuration is the data folder's (``SOFTHSM2_CONF``).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from pkcs11 import Attribute, ObjectClass
from pkcs11.types import Session

from gateway.app import close_runtime, open_runtime
from gateway.cli import _prepare_softhsm
from gateway.config import load_config
from gateway.context import Runtime
from gateway.key_references import referenced_keys
from gateway.reconciliation import LABEL_PREFIX
from gateway.sealed_keys import SealedKeyPersistence
from hsm.audit_key import DEFAULT_AUDIT_LABEL
from hsm.capabilities import Capabilities
from hsm.inventory import store_key_refs
from hsm.keystore import Pkcs11KeyStore

_CLASSES = {
    "private": ObjectClass.PRIVATE_KEY,
    "public": ObjectClass.PUBLIC_KEY,
    "secret": ObjectClass.SECRET_KEY,
}


#: The audit signing key pair's ID (hsm.audit_key): the gateway's own key, listed apart from the store's.
_AUDIT_KEY_ID = DEFAULT_AUDIT_LABEL.encode().hex()


def _token_objects(rt: Runtime) -> dict[str, list[str]]:
    def listing(session: Session) -> dict[str, list[str]]:
        with rt.token.objects("search"):
            return {
                name: sorted(
                    bytes(o[Attribute.ID]).hex() for o in session.get_objects({Attribute.CLASS: cls})
                )
                for name, cls in _CLASSES.items()
            }

    found = rt.token.run(listing, op="test inventory")
    audit = [ref for name in ("private", "public") for ref in found[name] if ref == _AUDIT_KEY_ID]
    return {
        **{name: [ref for ref in refs if ref != _AUDIT_KEY_ID] for name, refs in found.items()},
        "audit": audit,
    }


def _database_refs(db: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(db)
    try:
        signature = [r[0].hex() for r in conn.execute("SELECT signature_key_ref FROM identities")]
        live = conn.execute(
            "SELECT init_key_ref, leaf_key_ref FROM key_packages WHERE consumed = 0 OR last_resort = 1"
        ).fetchall()
        groups = conn.execute("SELECT COUNT(*) FROM groups").fetchone()[0]
        software = [r[0].hex() for r in conn.execute("SELECT key_ref FROM software_keys")]
    finally:
        conn.close()
    return {
        "signature": sorted(signature),
        "key_packages": sorted(ref.hex() for row in live for ref in row),
        "software": sorted(software),
        "groups": [str(groups)],
    }


def _plant_software(rt: Runtime, n: int) -> list[str]:
    caps = rt.keys.capabilities
    no_kem = Capabilities({k: f for k, f in caps.forms.items() if k.role != "kem"}, caps.montgomery_mode)
    keys = Pkcs11KeyStore(
        rt.token, persistence=SealedKeyPersistence(rt.store, rt.envelope), capabilities=no_kem
    )
    return [keys.new_hpke_key(1).key_ref.hex() for _ in range(n)]


def _missing(rt: Runtime) -> dict[str, Any]:
    token_refs = store_key_refs(rt.token, LABEL_PREFIX)
    with rt.store.read_transaction() as tx:
        at_rest = set(tx.list_software_key_refs()) | set(tx.list_wrapped_key_refs())
    referenced = referenced_keys(rt.store, rt.service.identities.sessions)
    return {
        "referenced": len(referenced),
        "missing": sorted(r.hex() for r in referenced - token_refs - at_rest),
    }


def main(argv: list[str]) -> int:
    command, data_dir = argv[0], Path(argv[1])
    cfg = load_config(None, data_dir=data_dir)
    module, _ = _prepare_softhsm(cfg)
    rt = open_runtime(cfg, module)
    try:
        out: dict[str, Any]
        if command == "count":
            out = {"token": _token_objects(rt), "database": _database_refs(cfg.database_path)}
        elif command == "missing":
            out = _missing(rt)
        else:
            out = {"planted": _plant_software(rt, int(argv[2]))}
    finally:
        close_runtime(rt)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
