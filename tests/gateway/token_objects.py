"""Counting a stopped server's token objects by CKA_ID, in a child process (its own SoftHSM configuration).

The test process may already have initialised SoftHSM on another token's configuration (``tests/hsm``);
SoftHSM reads ``SOFTHSM2_CONF`` once per process, so the token of a server's data folder is read by a
child: :mod:`hsm.token` opens it with the data folder's PIN file and lists every object's ``CKA_ID`` with a
search held inside :meth:`hsm.token.Token.run` (``objects("search")``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LIST = """
import json, sys
from pkcs11 import Attribute
from hsm import Token, TokenConfig
from hsm.bootstrap import find_softhsm_module
cfg = TokenConfig(module_path=find_softhsm_module(), token_label="mls-gateway", pin_file=sys.argv[1])
token = Token.open(cfg)
def ids(session):
    with token.objects("search"):
        return [bytes(o[Attribute.ID]).hex() for o in session.get_objects({})]
try:
    print(json.dumps(token.run(ids, op="list objects")))
finally:
    token.close()
"""


def token_object_ids(data_dir: Path) -> Counter[bytes]:
    """How many objects the data folder's token holds per CKA_ID (run it on a stopped server's folder)."""
    env = {**os.environ, "SOFTHSM2_CONF": str(data_dir / "softhsm" / "softhsm2.conf")}
    done = subprocess.run(
        [sys.executable, "-c", _LIST, str(data_dir / "hsm.pin")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return Counter(bytes.fromhex(h) for h in json.loads(done.stdout.strip().splitlines()[-1]))
