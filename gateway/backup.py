"""``mls-gateway backup DEST`` and ``mls-gateway restore SRC --data-dir DIR`` (README, "Backup and restore").

A backup is a folder::

    backup.json        what it holds: format, time, token label, and the SHA-256 and size of every file
    gateway.sqlite3    the database, copied with SQLite's online backup API (the gateway may be running)
    softhsm/tokens/    the embedded SoftHSM2 token's files (absent for a real HSM: its keys stay there)
    hsm.pin            the token's user PIN, when it is kept in the data folder (the embedded default)
    gateway.toml       the configuration file the command was given (--config or $MLSGW_CONFIG), if any

**Consistency (keys the database references exist in the token copy).** The gateway makes a request's
keys before its transaction commits and destroys dead keys only after it committed
(:mod:`gateway.persistence`). The backup takes the database's write lock (``BEGIN IMMEDIATE`` on a
connection of its own), copies the database, then copies the token, and only then releases the lock. A key
the database copy references was made before that copy, so it is in the token copy; it cannot be destroyed
during the token copy, because the commit that would make it dead waits for the lock. A key made during
the copies (its commit waiting) may be in the token copy without a reference: an orphan, which
reconciliation destroys on the restored gateway. Each token file is read under a shared ``fcntl`` lock,
the kind SoftHSM2 takes to write it. Writers wait while the lock is held (up to the store's busy timeout,
10 s); the command prints how long it was held.

**Restore** checks the backup (manifest, checksums, the database's integrity, and that it holds no schema
migration this version does not know: a newer gateway's backup is refused) before touching anything,
builds the data folder beside the target and renames it into place, so a failure leaves nothing behind; it
refuses a target that is not empty. Restoring rolls MLS state back (README, "Backup and restore").
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hsm.bootstrap import write_conf

from .config import GatewayConfig
from .operator_cli import Exit, OperatorError, require_initialised
from .schema_migrations import MIGRATION_TABLE, known_migrations, migrations_directory
from .sqlite_files import make_owner_only
from .store_factory import POSTGRES_BACKUP_REFUSAL

#: The manifest's file name and the format it declares.
MANIFEST = "backup.json"
FORMAT = "mls-gateway-backup/1"
DATABASE = "gateway.sqlite3"
TOKEN_FILES = Path("softhsm") / "tokens"
PIN = "hsm.pin"
CONFIG = "gateway.toml"
#: How long the backup waits for the database's write lock (the gateway's own busy timeout).
LOCK_TIMEOUT_S = 10.0


def _usable_target(folder: Path, what: str) -> None:
    """Refuse a target that exists and is not an empty folder (nothing is changed)."""
    if folder.is_symlink() or (folder.exists() and (not folder.is_dir() or any(folder.iterdir()))):
        raise OperatorError(Exit.FAILED, f"{what} {folder} exists and is not an empty folder: refusing")
    if not folder.parent.is_dir():
        raise OperatorError(Exit.FAILED, f"{what} {folder}: its parent folder does not exist")


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A folder beside ``target`` to build in; renamed to ``target`` on success, removed on failure."""
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    staging.mkdir(mode=0o700)
    try:
        yield staging
        if target.exists():
            target.rmdir()  # empty (checked by _usable_target); rename needs it gone or empty
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_locked(src: Path, dst: Path) -> None:
    """Copy one file under a shared ``fcntl`` lock (SoftHSM2 holds an exclusive one while it writes)."""
    with src.open("rb") as f:
        fcntl.lockf(f, fcntl.LOCK_SH)
        try:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(f, out)
                out.flush()
                os.fsync(out.fileno())
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def _copy_tree(src: Path, dst: Path) -> None:
    """The token folder's files and subfolders (SoftHSM2's lock files included, as they are)."""
    dst.mkdir(mode=0o700)
    for entry in sorted(src.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            _copy_tree(entry, dst / entry.name)
        elif entry.is_file():
            _copy_locked(entry, dst / entry.name)


def _sqlite(path: Path, mode: str) -> sqlite3.Connection:
    try:
        return sqlite3.connect(
            f"file:{path}?mode={mode}", uri=True, isolation_level=None, timeout=LOCK_TIMEOUT_S
        )
    except sqlite3.Error as e:
        raise OperatorError(Exit.STORE, f"database: cannot open {path}: {e}") from None


def _check_database(path: Path) -> tuple[int, list[str]]:
    """``PRAGMA integrity_check`` of a database copy; returns its schema version (``user_version``, the
    version the baseline migration reached) and the schema migrations applied to it
    (:mod:`gateway.schema_migrations`)."""
    conn = _sqlite(path, "ro")
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        recorded = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (MIGRATION_TABLE,)).fetchone()
        migrations = (
            [r[0] for r in conn.execute(f"SELECT migration_id FROM {MIGRATION_TABLE} ORDER BY migration_id")]
            if recorded
            else []
        )
    except sqlite3.Error as e:
        raise OperatorError(Exit.STORE, f"database copy {path.name} is not readable: {e}") from None
    finally:
        conn.close()
    if verdict != "ok":
        raise OperatorError(Exit.STORE, f"database copy {path.name} fails its integrity check: {verdict}")
    return version, migrations


def _refuse_newer(src: Path, migrations: list[str]) -> None:
    """A backup whose database a newer gateway migrated cannot be served by this one: refuse it."""
    unknown = sorted(set(migrations) - set(known_migrations(migrations_directory(DATABASE))))
    if unknown:
        raise OperatorError(
            Exit.SCHEMA,
            f"backup {src} holds schema migrations this mls-gateway does not know ({', '.join(unknown)}): "
            "a newer mls-gateway wrote it; restore it with that version or newer",
        )


def _snapshot(cfg: GatewayConfig, staging: Path) -> float:
    """The database and (embedded) token copies under the database's write lock; returns the seconds the
    lock was held."""
    lock = _sqlite(cfg.database_path, "rw")
    try:
        try:
            lock.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise OperatorError(Exit.STORE, f"database: cannot take the write lock: {e}") from None
        held_since = time.monotonic()
        make_owner_only(staging / DATABASE)
        source, copy = _sqlite(cfg.database_path, "rw"), sqlite3.connect(staging / DATABASE)
        try:
            source.backup(copy)  # all pages in one step: one consistent snapshot
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file (the gateway sets WAL)
        except sqlite3.Error as e:
            raise OperatorError(Exit.STORE, f"database backup failed: {e}") from None
        finally:
            copy.close()
            source.close()
        if cfg.embedded_softhsm:
            (staging / TOKEN_FILES.parent).mkdir(mode=0o700)
            _copy_tree(cfg.softhsm_dir / "tokens", staging / TOKEN_FILES)
        held = time.monotonic() - held_since
        lock.execute("ROLLBACK")
        return held
    finally:
        lock.close()


def _pin_in_data_folder(cfg: GatewayConfig) -> bool:
    """Whether the embedded token's PIN file is kept in the data folder (then it belongs to the backup)."""
    if not cfg.embedded_softhsm or cfg.hsm.pin_env or not cfg.pin_file.is_file():
        return False
    return cfg.pin_file.resolve().is_relative_to(cfg.data_dir.resolve())


def _manifest(cfg: GatewayConfig, staging: Path, schema: tuple[int, list[str]]) -> dict[str, Any]:
    files = {
        str(p.relative_to(staging)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    return {
        "format": FORMAT,
        "created_at": time.time(),
        "schema_version": schema[0],
        "schema_migrations": schema[1],
        "token": "embedded" if cfg.embedded_softhsm else "external",
        "token_label": cfg.hsm.token_label,
        "contains_pin": PIN in files,
        "files": files,
    }


def backup(cfg: GatewayConfig, dest: Path, config_file: Path | None) -> dict[str, Any]:
    """``mls-gateway backup DEST``: a consistent copy of the database and the embedded token (module doc);
    returns the report to print."""
    _usable_target(dest, "backup destination")
    with _staging(dest) as staging:
        held = _snapshot(cfg, staging)
        schema = _check_database(staging / DATABASE)
        if _pin_in_data_folder(cfg):
            _copy_locked(cfg.pin_file, staging / PIN)
        if config_file is not None:
            _copy_locked(config_file, staging / CONFIG)
        manifest = _manifest(cfg, staging, schema)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return {
        "backup": str(dest.resolve()),
        "token": manifest["token"],
        "contains_pin": manifest["contains_pin"],
        "files": len(manifest["files"]),
        "bytes": sum(f["bytes"] for f in manifest["files"].values()),
        "write_lock_held_s": round(held, 3),
    }


def _read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError):
        raise OperatorError(Exit.FAILED, f"{src} is not a gateway backup (no readable {MANIFEST})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OperatorError(Exit.FAILED, f"{src}: {MANIFEST} is not of the format {FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or DATABASE not in files:
        raise OperatorError(Exit.FAILED, f"{src}: {MANIFEST} lists no database")
    return manifest


def _verify(src: Path, manifest: dict[str, Any]) -> None:
    """Every listed file present with its checksum, nothing outside the backup's own names."""
    for name, meta in manifest["files"].items():
        path = src / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            raise OperatorError(Exit.FAILED, f"backup {src} is damaged: {name} is missing")
        if _sha256(path) != meta.get("sha256"):
            raise OperatorError(Exit.FAILED, f"backup {src} is damaged: {name} does not match its checksum")
    if manifest["token"] == "embedded" and not any(
        n.startswith(f"{TOKEN_FILES}/") for n in manifest["files"]
    ):
        raise OperatorError(Exit.FAILED, f"backup {src} is damaged: it has no token files")


def restore(src: Path, data_dir: Path) -> dict[str, Any]:
    """``mls-gateway restore SRC --data-dir DIR``: a new data folder from a backup (module doc)."""
    manifest = _read_manifest(src)
    _verify(src, manifest)
    _usable_target(data_dir, "data folder")
    with _staging(data_dir) as staging:
        for name in manifest["files"]:
            for folder in reversed(Path(name).parents[:-1]):  # each level 0700, as the data folder's
                (staging / folder).mkdir(exist_ok=True, mode=0o700)
            _copy_locked(src / name, staging / name)
        _refuse_newer(src, _check_database(staging / DATABASE)[1])
    if manifest["token"] == "embedded":
        write_conf(data_dir / "softhsm")  # softhsm2.conf names the token folder by its absolute path
    return {
        "data_dir": str(data_dir.resolve()),
        "token": manifest["token"],
        "token_label": manifest["token_label"],
        "backup_created_at": manifest["created_at"],
        "pin_restored": manifest["contains_pin"],
        "config": str(data_dir.resolve() / CONFIG) if CONFIG in manifest["files"] else None,
    }


def backup_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"backup written to {report['backup']}: {report['files']} files, {report['bytes']} bytes "
        f"(database write lock held {report['write_lock_held_s']:.3f} s)"
    ]
    if report["token"] == "external":
        lines.append("the HSM is external: the backup holds the database only; the keys stay in the HSM")
    elif report["contains_pin"]:
        lines.append("the backup holds the token and its PIN: keep it as secret as the keys")
    else:
        lines.append("the token's PIN is not in the backup (it is not kept in the data folder)")
    return lines


def restore_lines(report: dict[str, Any]) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["backup_created_at"]))
    lines = [
        f"restored the backup of {when} into {report['data_dir']}",
        "MLS state is rolled back to that moment: never run this gateway beside the original "
        "(README, Backup and restore)",
    ]
    if report["token"] == "embedded" and not report["pin_restored"]:
        lines.append("the token's PIN was not in the backup: configure pin_file or pin_env before serving")
    if report["config"]:
        lines.append(f"configuration restored to {report['config']}: check its paths before using it")
    return lines


def add_parsers(sub: Any) -> None:
    """``mls-gateway backup`` and ``mls-gateway restore``."""
    b = sub.add_parser("backup", help="a consistent copy of the database and the embedded token")
    b.add_argument("dest", type=Path, help="a new (or empty) folder for the backup")
    b.add_argument("--data-dir", type=Path, help="data folder (default ./data, or $MLSGW_DATA_DIR)")
    r = sub.add_parser("restore", help="a new data folder from a backup (rolls MLS state back)")
    r.add_argument("src", type=Path, help="a folder written by mls-gateway backup")
    r.add_argument("--data-dir", type=Path, required=True, help="the new data folder (absent or empty)")
    for p in (b, r):
        p.add_argument("--config", type=Path, help="TOML configuration file (or $MLSGW_CONFIG)")
        p.add_argument("--json", action="store_true", help="print one JSON object")


def command(cfg: GatewayConfig, args: Any) -> int:
    """Run ``backup`` or ``restore``; returns the exit code."""
    if cfg.postgres_url is not None:
        raise OperatorError(Exit.USAGE, POSTGRES_BACKUP_REFUSAL)
    if args.command == "restore":
        report = restore(args.src, args.data_dir)
        lines = restore_lines(report)
    else:
        require_initialised(cfg)
        config_file = args.config or (
            Path(os.environ["MLSGW_CONFIG"]) if os.environ.get("MLSGW_CONFIG") else None
        )
        report = backup(cfg, args.dest, config_file)
        lines = backup_lines(report)
    print(json.dumps(report) if args.json else "\n".join(lines), flush=True)
    return Exit.OK


__all__ = ["add_parsers", "backup", "backup_lines", "command", "restore", "restore_lines"]
