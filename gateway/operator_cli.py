"""The operator commands of ``mls-gateway`` and its one-line errors (README, "Operating").

* ``mls-gateway admin tokens TENANT_ID [--json]`` — the tenant's tokens (ids, creation, revocation,
  client), never a token.
* ``mls-gateway admin rotate-admin-token [--json]`` — a new admin token, every other admin token revoked;
  the new one is printed once. It reads only the data folder's database (no HSM, no running gateway
  needed): the recovery path for a lost admin token.
* ``mls-gateway admin delete-tenant TENANT_ID`` — the tenant and everything of it, keys destroyed in the
  HSM (:mod:`gateway.tenant_deletion`).
* ``mls-gateway hsm check [--json]`` — opens the configured token and prints, per cipher suite, whether its
  signature keys and its HPKE keys can live in the token (``hsm.capabilities``) and be wrapped under the
  KEK (``hsm.wrapped_keys``), and whether the token lists the AES mechanisms of the wrap key and the KEK
  (docs/hsm.md).

An operator's mistake is one line on stderr and an exit code of :class:`Exit`, never a traceback.
"""

from __future__ import annotations

import errno
import json
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any

from hsm.errors import HsmError
from mls import cipher_suite

from .config import GatewayConfig
from .errors import Problem
from .schema_migrations import SchemaError
from .store import StoreUnavailable
from .store_factory import open_store
from .tenants import Tenants


class Exit(IntEnum):
    """``mls-gateway``'s exit codes (README, "Operating")."""

    OK = 0
    FAILED = 1  # the command ran and failed (e.g. an unknown tenant)
    USAGE = 2  # wrong command line (argparse)
    CONFIG = 3  # the configuration file is unreadable or invalid, or has unknown keys
    NOT_INITIALISED = 4  # the data folder was never initialised (mls-gateway init)
    HSM_MODULE = 5  # the PKCS#11 module cannot be loaded
    HSM_TOKEN = 6  # no token with the configured label
    HSM_PIN = 7  # the PIN is wrong, or its source cannot be read
    LISTEN = 8  # the listen address is in use or not allowed
    STORE = 9  # the database cannot be opened or used
    HSM = 10  # any other HSM failure
    SCHEMA = 11  # the database's schema: written by a newer gateway, or migrations pending (migrate)


class OperatorError(Exception):
    """A mistake to report in one line with its exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


def classify(exc: BaseException) -> OperatorError | None:
    """The operator error an exception means, if it is one (``None``: a bug, let it raise)."""
    if isinstance(exc, OperatorError):
        return exc
    text = str(exc)
    if isinstance(exc, HsmError):
        if "PinIncorrect" in text or "PinInvalid" in text or "PinLen" in text or "token PIN" in text:
            return OperatorError(Exit.HSM_PIN, f"HSM login failed: {text}")
        if "NoSuchToken" in text or "TokenNotPresent" in text:
            return OperatorError(Exit.HSM_TOKEN, f"HSM token not found: {text}")
        if "cannot be loaded" in text:
            return OperatorError(Exit.HSM_MODULE, f"PKCS#11 module: {text}")
        return OperatorError(Exit.HSM, f"HSM: {text}")
    if isinstance(exc, SchemaError):
        return OperatorError(Exit.SCHEMA, str(exc))
    if isinstance(exc, StoreUnavailable):
        return OperatorError(Exit.STORE, f"database: {text}")
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return OperatorError(Exit.LISTEN, f"cannot listen: {exc.strerror or text}")
    if isinstance(exc, Problem):
        return OperatorError(Exit.FAILED, exc.detail)
    return None


def require_initialised(cfg: GatewayConfig) -> None:
    """Refuse (exit 4) a data folder ``mls-gateway init`` never prepared, rather than create one; a PIN
    file configured but missing is a PIN error (exit 7)."""
    if cfg.embedded_softhsm and cfg.hsm.pin_file is not None and not cfg.pin_file.exists():
        raise OperatorError(Exit.HSM_PIN, f"token PIN: cannot read {cfg.pin_file} (no such file)")
    no_database = cfg.postgres_url is None and not cfg.database_path.exists()
    if no_database or (cfg.embedded_softhsm and not cfg.pin_file.exists()):
        raise OperatorError(
            Exit.NOT_INITIALISED,
            f"data folder {cfg.data_dir} is not initialised "
            f"(run: mls-gateway init --data-dir {cfg.data_dir})",
        )


def add_parsers(sub: Any) -> None:
    """The ``admin`` and ``hsm`` command groups."""
    admin = sub.add_parser("admin", help="tenants and tokens, offline on the data folder")
    cmds = admin.add_subparsers(dest="admin_command", required=True)
    tokens = cmds.add_parser("tokens", help="list a tenant's tokens (never a token)")
    tokens.add_argument("tenant_id")
    rotate = cmds.add_parser("rotate-admin-token", help="new admin token; every other one revoked")
    delete = cmds.add_parser("delete-tenant", help="delete a tenant and everything of it")
    delete.add_argument("tenant_id")
    hsm = sub.add_parser("hsm", help="the HSM token").add_subparsers(dest="hsm_command", required=True)
    check = hsm.add_parser("check", help="the token's custody per cipher suite")
    for p in (tokens, rotate, delete, check):
        p.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
        p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")
        p.add_argument("--json", action="store_true", help="print one JSON object")


def _print(payload: dict[str, Any], lines: list[str], as_json: bool) -> None:
    print(json.dumps(payload) if as_json else "\n".join(lines), flush=True)


def admin_command(cfg: GatewayConfig, args: Any, module_path: str | None) -> int:
    """``mls-gateway admin ...`` (the data folder checked first); returns the exit code."""
    if args.admin_command == "delete-tenant":
        from .app import close_runtime, open_runtime

        assert module_path is not None
        rt = open_runtime(cfg, module_path)
        try:
            rt.service.tenant_deletion.delete(args.tenant_id)
        finally:
            close_runtime(rt)
        _print({"deleted": args.tenant_id}, [f"tenant {args.tenant_id} deleted"], args.json)
        return Exit.OK
    store = open_store(cfg)
    try:
        tenants = Tenants(store, None)  # type: ignore[arg-type]  # neither command commits a request
        if args.admin_command == "tokens":
            listed = tenants.list_tokens(args.tenant_id)
            lines = [
                f"{t['token_id']}  created {t['created_at']:.0f}  {'revoked' if t['revoked'] else 'active'}"
                + (f"  client {t['client_id']}" if "client_id" in t else "")
                for t in listed["tokens"]
            ]
            _print(listed, lines, args.json)
            return Exit.OK
        token, revoked = tenants.rotate_admin_token()
    finally:
        store.close()
    _print(
        {"admin_token": token, "revoked": revoked},
        [f"admin token (shown once, keep it safe): {token}", f"{revoked} earlier admin token(s) revoked"],
        args.json,
    )
    return Exit.OK


#: The AES mechanisms of the token's secret keys (``hsm check`` reports whether the token lists them): the
#: at-rest envelope's wrap key (:mod:`hsm.envelope`) and wrapped custody's KEK (:mod:`hsm.wrapping`).
AES_MECHANISMS = ("AES_KEY_GEN", "AES_GCM", "AES_KEY_WRAP", "AES_KEY_WRAP_PAD")


def _custody_word(in_token: bool, wrappable: bool) -> str:
    if not in_token:
        return "NOT supported"
    return "in the token, wrappable" if wrappable else "in the token, not wrappable (token objects)"


def _suite_report(caps: Any, wrapped: Any, suite_id: int) -> dict[str, Any]:
    """One cipher suite's line of ``hsm check``: custody of its signature and HPKE keys, and whether a
    ``wrapped``-custody tenant's keys of it are wrapped under the KEK or stay token objects."""
    from hsm import kinds

    suite = cipher_suite(suite_id)
    sig, hpke = caps.custody(suite_id, software_hpke_fallback=True)
    return {
        "cipher_suite": suite_id,
        "name": suite.name,
        "signature_custody": sig,
        "hpke_custody": hpke,
        "signature_in_token": sig == "pkcs11",
        "hpke_in_token": hpke == "pkcs11",
        "signature_wrappable": sig == "pkcs11" and wrapped.supports(kinds.signature_kind(suite.signature)),
        "hpke_wrappable": hpke == "pkcs11" and wrapped.supports(kinds.kem_kind(suite.kem)),
    }


def hsm_check(cfg: GatewayConfig, module_path: str, as_json: bool) -> int:
    """``mls-gateway hsm check``: per cipher suite 1-7, whether its keys can live in the token and be
    wrapped (the wrap probe of :mod:`hsm.wrapped_keys`, on the KEK ``init`` made; nothing is created),
    and which of the AES mechanisms of the wrap key and the KEK the token lists."""
    from hsm.token import Token
    from hsm.wrapped_keys import WrappedKeys

    from .sealed_keys import WrappedKeyRows

    token = Token.open(cfg.token_config(module_path))
    store = open_store(cfg)
    try:
        caps = token.capabilities
        wrapped = WrappedKeys(token, WrappedKeyRows(store))
        wrap = wrapped.probe()
        listed = token.run(
            lambda session: {getattr(m, "name", "") for m in session.token.slot.get_mechanisms()},
            op="mechanisms",
        )
    finally:
        token.close()
        store.close()
    suites = [_suite_report(caps, wrapped, suite_id) for suite_id in range(1, 8)]
    mechanisms = {f"CKM_{name}": name in listed for name in AES_MECHANISMS}
    lines = [f"token {cfg.hsm.token_label!r}: montgomery_keygen={caps.montgomery_mode}"] + [
        f"suite {s['cipher_suite']} {s['name']}: signature keys "
        f"{_custody_word(s['signature_in_token'], s['signature_wrappable'])}; HPKE keys "
        + (_custody_word(True, s["hpke_wrappable"]) if s["hpke_in_token"] else "in software (sealed)")
        for s in suites
    ]
    lines.append(
        "mechanisms: " + ", ".join(f"{n} {'listed' if ok else 'NOT listed'}" for n, ok in mechanisms.items())
    )
    lines += [f"wrap probe: {kind} {reason}" for kind, reason in sorted(wrapped.refused.items())]
    payload = {
        "token_label": cfg.hsm.token_label,
        "suites": suites,
        "mechanisms": mechanisms,
        "wrapped_custody": wrap,
        **caps.describe(),
    }
    _print(payload, lines, as_json)
    return Exit.OK


def fail(error: OperatorError) -> int:
    print(f"mls-gateway: {error}", file=sys.stderr, flush=True)
    return int(error.code)


__all__ = ["Exit", "OperatorError", "add_parsers", "admin_command", "classify", "fail", "hsm_check"]
