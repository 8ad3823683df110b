"""``mls-gateway audit``: export the audit chain, verify it, print the audit public key, checkpoint now.

* ``audit export [--since T] [--until T] [--tenant ID] [--out FILE]`` — JSON lines
  (:mod:`gateway.audit_chain`, "Export") read from the data folder's database in one snapshot; ``T`` is
  unix seconds or ISO 8601. A ``--tenant`` export shows only the tenant's records but keeps every other
  record's chain link, so it verifies on its own.
* ``audit verify [--file EXPORT] [--public-key PEM] [--checkpoints EARLIER_EXPORT]`` — verify an export
  file, or (without ``--file``) the data folder's chain; with no ``--public-key`` the key is read from the
  data folder's token; ``--checkpoints``: an earlier export kept elsewhere, whose signed checkpoints must
  hold too (a chain cut together with its last checkpoints fails). Exit 0 and a JSON summary when the
  chain holds; exit 1 and one line naming the first bad record otherwise.
* ``audit public-key [--out FILE]`` — the audit key's public key as PEM (from the token).
* ``audit checkpoint`` — sign a checkpoint over the chain head now (offline, e.g. before an export).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from hsm.audit_key import AuditSigner
from hsm.token import Token

from .audit_chain import ChainBroken, load_public_key, verify
from .audit_trail import Checkpointer, export_lines
from .config import GatewayConfig
from .operator_cli import Exit, OperatorError
from .store_factory import open_store


def add_audit_parser(sub: Any) -> None:
    """The ``audit`` command group."""
    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    cmds = audit.add_subparsers(dest="audit_command", required=True)
    export = cmds.add_parser("export", help="write the audit records and checkpoints as JSON lines")
    export.add_argument("--since", help="first record's time (unix seconds or ISO 8601)")
    export.add_argument("--until", help="last record's time (unix seconds or ISO 8601)")
    export.add_argument("--tenant", help="show only this tenant's records (other records as chain links)")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    check = cmds.add_parser("verify", help="verify the chain (the data folder's, or an export file)")
    check.add_argument("--file", type=Path, help="an export file (default: the data folder's database)")
    check.add_argument("--public-key", type=Path, help="the audit public key PEM (default: from the token)")
    check.add_argument(
        "--checkpoints", type=Path, help="an earlier export kept elsewhere: its checkpoints must hold too"
    )
    key = cmds.add_parser("public-key", help="print the audit public key (PEM)")
    key.add_argument("--out", type=Path, help="file to write (default: standard output)")
    cmds.add_parser("checkpoint", help="sign a checkpoint over the chain head now")
    for p in (export, check, key, cmds.choices["checkpoint"]):
        p.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
        p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")


def needs_data_folder(args: Any) -> bool:
    """``audit verify --file F --public-key K`` runs without a data folder; everything else needs one."""
    return not (args.audit_command == "verify" and args.file is not None and args.public_key is not None)


def audit_command(cfg: GatewayConfig, args: Any, module_path: Callable[[], str]) -> int:
    """Run one ``audit`` command (``module_path`` prepares the token's module, only when it is needed)."""
    command = args.audit_command
    if command == "export":
        _export(cfg, args)
        return 0
    if command == "verify":
        pem = _read_key(args.public_key) if args.public_key else _with_signer(cfg, module_path, _pem).encode()
        return _verify(cfg, args.file, pem, args.checkpoints)
    if command == "public-key":
        _write(args.out, _with_signer(cfg, module_path, _pem))
        return 0
    seq = _with_signer(cfg, module_path, lambda signer: _checkpoint(cfg, signer))
    print(json.dumps({"checkpoint_seq": seq}), flush=True)
    return 0


def _time(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise OperatorError(
            Exit.USAGE, f"--{name}: not unix seconds nor an ISO 8601 time: {value!r}"
        ) from None


def _export(cfg: GatewayConfig, args: Any) -> None:
    since, until = _time(args.since, "since"), _time(args.until, "until")
    store = open_store(cfg)
    try:
        lines = export_lines(store, since=since, until=until, tenant=args.tenant)
        text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    finally:
        store.close()
    _write(args.out, text)


def _write(out: Path | None, text: str) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        out.write_text(text)
    except OSError as e:
        raise OperatorError(Exit.FAILED, f"cannot write {out}: {e.strerror}") from None


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OperatorError(Exit.FAILED, f"cannot read the audit public key {path}: {e.strerror}") from None


def _read_export(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open() as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise OperatorError(Exit.FAILED, f"{path}: line {number} is not JSON") from None
    except OSError as e:
        raise OperatorError(Exit.FAILED, f"cannot read {path}: {e.strerror}") from None


def _verify(cfg: GatewayConfig, path: Path | None, pem: bytes, earlier: Path | None) -> int:
    try:
        key = load_public_key(pem)
    except ValueError as e:
        raise OperatorError(Exit.FAILED, f"audit public key: {e}") from None
    if path is not None:
        lines = list(_read_export(path))
    else:
        store = open_store(cfg)
        try:
            lines = list(export_lines(store))
        finally:
            store.close()
    trusted = [] if earlier is None else list(_read_export(earlier))
    try:
        result = verify(lines, key, trusted)
    except ChainBroken as e:
        raise OperatorError(Exit.FAILED, f"audit chain broken: {e}") from None
    print(json.dumps(result.summary()), flush=True)
    return 0


def _pem(signer: AuditSigner) -> str:
    return signer.public_key_pem()


def _checkpoint(cfg: GatewayConfig, signer: AuditSigner) -> int | None:
    store = open_store(cfg)
    try:
        cp = Checkpointer(store, signer, cfg.audit).checkpoint(force=True)
    finally:
        store.close()
    return None if cp is None else cp.seq


def _with_signer(
    cfg: GatewayConfig, module_path: Callable[[], str], use: Callable[[AuditSigner], Any]
) -> Any:
    token = Token.open(cfg.token_config(module_path()))
    try:
        return use(AuditSigner(token))
    finally:
        token.close()


__all__ = ["add_audit_parser", "audit_command", "needs_data_folder"]
