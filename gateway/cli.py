"""``mls-gateway``: initialise a data folder, serve the API, or run the conformance vectors.

* ``mls-gateway init [--data-dir DIR] [--json]`` — create the data folder, the SoftHSM2 token (embedded
  default, when no PKCS#11 module is configured and no token exists), the wrap key, the database and the
  first admin token, which is printed once (``--json``: one JSON object with ``admin_token``).
* ``mls-gateway serve [--data-dir DIR] [--listen HOST:PORT] [--config FILE] [--workers N]`` — serve until
  SIGTERM or SIGINT, then shut down gracefully. A data folder that was never initialised is initialised
  first. Under systemd (``$NOTIFY_SOCKET``) it sends ``READY=1`` once it listens and ``STOPPING=1`` at
  shutdown (:mod:`gateway.systemd_notify`). ``--workers N`` (N > 1): a supervisor handing connections in
  turn to N worker processes (:mod:`gateway.supervisor`).
* ``mls-gateway conformance PATH... [--json] [--backend auto|python|native]`` — ``python -m mls.conformance``
  on the crypto backend chosen as the gateway chooses it (default: ``$MLS_CRYPTO_BACKEND``, else native
  when built).
* ``mls-gateway keys reconcile [--dry-run] [--json] [--grace-s S]`` — destroy orphaned keys (keys no
  database record references; :mod:`gateway.reconcile_cli`), or list them.
* ``mls-gateway keys rotate-kek [--kind all|envelope|custody] [--no-wait] [--resume] [--json]`` and
  ``mls-gateway keys keks [--json]`` — KEK rotation online, and the KEK versions (:mod:`gateway.kek_cli`).
* ``mls-gateway admin tokens|rotate-admin-token|delete-tenant`` and ``mls-gateway hsm check`` — the
  operator commands of :mod:`gateway.operator_cli`; ``mls-gateway --version``.
* ``mls-gateway backup DEST`` and ``mls-gateway restore SRC --data-dir DIR`` — :mod:`gateway.backup`.
* ``mls-gateway audit export|verify|public-key|checkpoint`` — the tamper-evident audit trail
  (:mod:`gateway.audit_cli`).
* ``mls-gateway migrate [--list] [--break-lock]`` — the database's schema migrations
  (:mod:`gateway.migrate_cli`). ``init`` and ``serve`` apply pending ones unless ``migrate_on_start`` is
  off, and refuse a database a newer gateway migrated (exit 11, one line).

An operator's mistake (wrong PIN, missing token or module, port in use, bad configuration, data folder
not initialised) is one line on stderr and an exit code of :class:`gateway.operator_cli.Exit`.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from hsm.bootstrap import find_softhsm_module, init_softhsm_token, write_conf
from native import BACKEND_CHOICES

from . import backup, http_server
from .app import close_runtime, create_app, gateway_crypto_backend, open_runtime
from .audit_cli import add_audit_parser
from .config import ConfigError, GatewayConfig, load_config
from .context import Runtime
from .logs import AccessLogger, access_log, configure_logging
from .migrate_cli import add_migrate_parser
from .operator_cli import Exit, OperatorError, add_parsers, classify, fail, require_initialised
from .supervisor import Supervisor, inherited_channel, is_worker
from .systemd_notify import notify

log = logging.getLogger("mls_gateway")


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


#: Where earlier versions of ``init`` kept the embedded token's SO-PIN; ``init`` and ``serve`` remove it.
OLD_SO_PIN_FILE = "hsm.so-pin"


def _forget_so_pin(cfg: GatewayConfig) -> None:
    """Remove the SO-PIN file an older ``init`` left in the data folder (the SO-PIN is not kept)."""
    old = cfg.data_dir / OLD_SO_PIN_FILE
    if old.exists():
        old.unlink()
        log.warning(
            "removed %s: the HSM SO-PIN is no longer kept in the data folder (README, HSM and data folder)",
            old,
        )


def _prepare_softhsm(cfg: GatewayConfig) -> tuple[str, bool]:
    """The PKCS#11 module path; for the embedded SoftHSM, point SOFTHSM2_CONF at the data folder's token
    and create the token on first use (its SO-PIN random and dropped). Returns (module path, whether a
    token was created)."""
    _forget_so_pin(cfg)
    if not cfg.embedded_softhsm:
        assert cfg.hsm.module_path is not None
        return cfg.hsm.module_path, False
    directory = cfg.softhsm_dir
    conf = directory / "softhsm2.conf"
    created = False
    tokens = directory / "tokens"
    has_token = tokens.is_dir() and any(tokens.iterdir())
    if has_token and not cfg.pin_file.exists():
        # A restored or damaged folder: a second token beside the first would hide every key (README, backup).
        raise OperatorError(
            Exit.HSM_PIN,
            f"the data folder's HSM token exists but its PIN file {cfg.pin_file} is missing: put the PIN"
            " back (or set [hsm] pin_file); no second token is created beside the first",
        )
    if not conf.exists() or not has_token:
        # The SO-PIN is drawn, used once to initialise the token, and dropped (README, "HSM and data folder").
        pin = secrets.token_urlsafe(24)
        token = init_softhsm_token(
            directory, label=cfg.hsm.token_label, pin=pin, so_pin=secrets.token_urlsafe(24)
        )
        _write_secret(cfg.pin_file, pin)
        conf = token.conf_path
        created = True
    else:
        write_conf(directory)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return find_softhsm_module(), created


def initialise(cfg: GatewayConfig) -> dict[str, Any]:
    """Everything ``init`` does; returns what to report (the admin token only when newly created)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    module, created = _prepare_softhsm(cfg)
    rt = open_runtime(cfg, module)
    try:
        admin = rt.service.bootstrap_admin()
    finally:
        close_runtime(rt)
    return {
        "data_dir": str(cfg.data_dir.resolve()),
        "database": cfg.database_location,
        "token_label": cfg.hsm.token_label,
        "token_created": created,
        "admin_token": admin,
    }


def _report_init(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report), flush=True)
        return
    print(f"data folder: {report['data_dir']}")
    print(f"HSM token:   {report['token_label']}{' (created)' if report['token_created'] else ''}")
    if report["admin_token"]:
        print(f"admin token (shown once, keep it safe): {report['admin_token']}", flush=True)
    else:
        print("an admin token already exists (it is not shown again)", flush=True)


def serve(cfg: GatewayConfig, argv: list[str] | None = None) -> int:
    """Serve the API; with ``workers`` > 1, as the supervisor of that many worker processes
    (:mod:`gateway.supervisor`, which starts each with ``argv``, these very arguments). A PostgreSQL
    database is initialised every start (its admin token is made once: ``bootstrap_admin``)."""
    worker = is_worker()
    if not worker and (
        cfg.postgres_url is not None
        or not cfg.database_path.exists()
        or not ((cfg.embedded_softhsm and cfg.pin_file.exists()) or not cfg.embedded_softhsm)
    ):
        report = initialise(cfg)
        if report["admin_token"]:
            print(
                f"first start: admin token (shown once): {report['admin_token']}", file=sys.stderr, flush=True
            )
    if cfg.workers > 1 and not worker:
        args = list(sys.argv[1:] if argv is None else argv)
        return Supervisor(args, cfg.listen_host, cfg.listen_port, cfg.workers).run()
    # A crash or SIGABRT writes every thread's stack (frames only, no values) to stderr: the log.
    faulthandler.enable(all_threads=True)
    module, _ = _prepare_softhsm(cfg)
    rt = open_runtime(cfg, module)
    app = create_app(rt)
    app.on_shutdown.append(_notify_stopping)
    http_server.serve(  # web.run_app, answering aiohttp's own refusals as problem documents
        app,
        cfg.listen_host,
        cfg.listen_port,
        on_listening=lambda: _listening(cfg, rt),  # called once every socket listens
        shutdown_timeout=10,
        access_log=access_log,
        access_log_class=AccessLogger,
        channel=inherited_channel() if worker else None,
    )
    return 0


def _listening(cfg: GatewayConfig, rt: Runtime) -> None:
    """The API listens: record a first readiness check (``mlsgw_ready``) and tell systemd (READY=1)."""
    problems = rt.readiness()  # sets mlsgw_ready
    address = f"http://{cfg.listen_host}:{cfg.listen_port}"
    print(f"mls-gateway listening on {address}", flush=True)
    status = f"listening on {address}" + (f"; not ready: {', '.join(problems)}" if problems else "")
    notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


#: Seconds after SIGTERM/SIGINT after which a shutdown still running writes every thread's stack to stderr
#: (the log): what it waits for. The shutdown itself goes on.
SLOW_STOP_S = 12.0


async def _notify_stopping(app: web.Application) -> None:
    """SIGTERM/SIGINT began the graceful shutdown (aiohttp's on_shutdown): tell systemd (STOPPING=1), and
    arm the slow-stop report (:data:`SLOW_STOP_S`; cancelled when the interpreter exits)."""
    notify("STOPPING=1", "STATUS=shutting down")
    faulthandler.dump_traceback_later(SLOW_STOP_S, exit=False)


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="the HSM's keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("reconcile", help="destroy keys no database record references")
    p.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
    p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")
    p.add_argument("--dry-run", action="store_true", help="list what would be destroyed; destroy nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--grace-s", type=float, help="seconds an orphan must stay one (default: the config's)")
    _add_kek_parsers(keys)


def _add_kek_parsers(keys: Any) -> None:
    """``keys rotate-kek`` and ``keys keks`` (:mod:`gateway.kek_cli`)."""
    p = keys.add_parser("rotate-kek", help="new KEK versions, blobs re-wrapped, old KEKs destroyed")
    p.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
    p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")
    p.add_argument("--kind", choices=["all", "envelope", "custody"], default="all", help="which KEKs rotate")
    p.add_argument("--no-wait", action="store_true", help="rotate only; the running gateway re-wraps")
    p.add_argument("--resume", action="store_true", help="no new version: finish a pending rotation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = keys.add_parser("keks", help="the KEK versions, their state and the blobs naming each")
    p.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
    p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mls-gateway", description="Enterprise MLS gateway with HSM key custody"
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("init", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
        p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")
        if name == "serve":
            p.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8080, or $MLSGW_LISTEN)")
            p.add_argument("--workers", type=int, help="processes serving (default 1, or $MLSGW_WORKERS)")
        else:
            p.add_argument("--json", action="store_true", help="print one JSON object")
    conf = sub.add_parser("conformance", help="run the MLS test vectors")
    conf.add_argument("paths", nargs="+", help="vector files or folders")
    conf.add_argument("--json", action="store_true", help="print the results as JSON")
    conf.add_argument("-v", "--verbose", action="store_true", help="list every failure and skip")
    conf.add_argument(
        "--backend", choices=BACKEND_CHOICES, help="crypto backend (default: $MLS_CRYPTO_BACKEND, else auto)"
    )
    _add_keys_parser(sub)
    add_parsers(sub)
    backup.add_parsers(sub)
    add_audit_parser(sub)
    add_migrate_parser(sub)
    args = ap.parse_args(argv)
    if args.command == "conformance":
        from mls.conformance import main as conformance

        flags = [flag for flag, on in (("--json", args.json), ("--verbose", args.verbose)) if on]
        return conformance([*args.paths, *flags], backend=gateway_crypto_backend(args.backend))
    logging.basicConfig(
        level=os.environ.get("MLSGW_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return _run(args, argv)
    except Exception as e:  # an operator's mistake is one line; anything else is a bug and raises
        error = classify(e)
        if error is None:
            raise
        return fail(error)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mls-gateway")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    try:
        cfg = load_config(
            args.config,
            data_dir=args.data_dir,
            listen=getattr(args, "listen", None),
            workers=getattr(args, "workers", None),
        )
    except ConfigError as e:
        raise OperatorError(Exit.CONFIG, f"configuration error: {e}") from None
    configure_logging(cfg.log_level, cfg.log_format, with_pid=args.command == "serve" and cfg.workers > 1)
    if args.command == "init":
        _report_init(initialise(cfg), args.json)
        return 0
    if args.command == "serve":
        return serve(cfg, argv)
    if args.command in ("backup", "restore"):
        return backup.command(cfg, args)
    if args.command == "audit":
        from .audit_cli import audit_command, needs_data_folder

        if needs_data_folder(args):
            require_initialised(cfg)
        return audit_command(cfg, args, lambda: _prepare_softhsm(cfg)[0])
    if args.command == "migrate":
        from .migrate_cli import migrate_command

        return migrate_command(cfg, args)
    require_initialised(cfg)
    if args.command == "admin" and args.admin_command != "delete-tenant":
        from .operator_cli import admin_command

        return admin_command(cfg, args, None)
    module, _ = _prepare_softhsm(cfg)
    if args.command == "keys" and args.keys_command in ("rotate-kek", "keks"):
        from .kek_cli import kek_command

        return kek_command(cfg, module, args)
    if args.command == "keys":
        from .reconcile_cli import reconcile_command

        return reconcile_command(cfg, module, dry_run=args.dry_run, as_json=args.json, grace_s=args.grace_s)
    if args.command == "hsm":
        from .operator_cli import hsm_check

        return hsm_check(cfg, module, args.json)
    from .operator_cli import admin_command

    return admin_command(cfg, args, module)


if __name__ == "__main__":
    sys.exit(main())
