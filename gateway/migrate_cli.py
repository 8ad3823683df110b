"""``mls-gateway migrate [--list] [--break-lock] [--json]`` (README, "Operating"; docs/architecture.md,
"Schema migrations").

* ``migrate`` applies the database's pending schema migrations (:func:`gateway.schema_migrations.migrate`)
  and says which; it is safe beside starting gateways (yoyo's lock: one run applies, the others wait).
* ``migrate --list`` lists every migration: applied (with its time, UTC), pending, or unknown to this
  version (written by a newer one); it changes nothing.
* ``migrate --break-lock`` removes the lock a migration run left when it was killed (then run ``migrate``).

The database is the configuration's (``[gateway] database`` / ``MLSGW_DATABASE``, default the data folder's
``gateway.sqlite3``); ``migrate_on_start`` does not apply to this command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import GatewayConfig
from .operator_cli import Exit, OperatorError
from .schema_migrations import MigrationState, break_lock, describe, is_postgresql, migrate, status


def add_migrate_parser(sub: Any) -> None:
    """The ``migrate`` command's arguments."""
    p = sub.add_parser("migrate", help="apply the database's pending schema migrations (or --list them)")
    p.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
    p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list applied, pending and unknown migrations")
    action.add_argument("--break-lock", action="store_true", help="remove the lock of a killed migration run")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def database_of(cfg: GatewayConfig) -> str:
    """The database the configuration names, as :mod:`gateway.schema_migrations` takes it: a
    ``postgresql://`` URL exactly as configured, else the SQLite file's path."""
    return cfg.postgres_url or str(cfg.database_path)


def migrate_command(cfg: GatewayConfig, args: Any) -> int:
    """Run ``migrate``; returns the exit code."""
    database = database_of(cfg)
    if not is_postgresql(database) and not cfg.database_path.exists():
        raise OperatorError(
            Exit.NOT_INITIALISED,
            f"database {database} does not exist (run: mls-gateway init --data-dir {cfg.data_dir})",
        )
    if args.list:
        state = status(database)
        _print(_listing(database, state), _listing_lines(state), args.json)
    elif args.break_lock:
        break_lock(database)
        report = {"database": describe(database), "lock": "removed"}
        _print(report, ["the migration lock is removed"], args.json)
    else:
        applied = migrate(database)
        total = len(status(database).applied)
        lines = [
            f"applied {_count(len(applied))}: {', '.join(applied)}"
            if applied
            else f"the schema is up to date ({_count(total)} applied)"
        ]
        _print({"database": describe(database), "applied_now": applied, "applied": total}, lines, args.json)
    return Exit.OK


def _count(n: int) -> str:
    return f"{n} schema migration{'' if n == 1 else 's'}"


def _listing(database: str, state: MigrationState) -> dict[str, Any]:
    return {
        "database": describe(database),
        "applied": [
            {"id": mid, "applied_at": when.isoformat() if when else None} for mid, when in state.applied
        ],
        "pending": state.pending,
        "unknown": state.unknown,
    }


def _listing_lines(state: MigrationState) -> list[str]:
    unknown = set(state.unknown)
    width = max((len(m) for m in [*(mid for mid, _ in state.applied), *state.pending]), default=0)
    lines = []
    for mid, when in state.applied:
        if mid in unknown:
            lines.append(f"{mid:<{width}}  unknown (a newer mls-gateway applied it)")
        else:
            at = f" {when:%Y-%m-%d %H:%M:%S} UTC" if when else ""
            lines.append(f"{mid:<{width}}  applied{at}")
    lines += [f"{mid:<{width}}  pending" for mid in state.pending]
    return lines or ["no schema migrations"]


def _print(payload: dict[str, Any], lines: list[str], as_json: bool) -> None:
    print(json.dumps(payload) if as_json else "\n".join(lines), flush=True)


__all__ = ["add_migrate_parser", "database_of", "migrate_command"]
