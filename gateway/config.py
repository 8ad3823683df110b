"""Gateway configuration: a TOML file and ``MLSGW_*`` environment variables over documented defaults.

Precedence: command-line flags > environment > TOML file > defaults. With nothing configured the gateway
runs on its **embedded defaults**: everything under the data folder (``./data`` unless ``--data-dir`` or
``MLSGW_DATA_DIR`` says otherwise) — a SQLite database ``gateway.sqlite3`` and a SoftHSM2 token in
``softhsm/`` whose user PIN is in ``hsm.pin`` (mode 0600), created by ``mls-gateway init``.

TOML layout (every key optional; an unknown section or key is refused, naming it)::

    [gateway]
    listen = "127.0.0.1:8080"       # MLSGW_LISTEN
    data_dir = "/var/lib/mls-gateway"   # MLSGW_DATA_DIR
    database = "/var/lib/mls-gateway/gateway.sqlite3"   # MLSGW_DATABASE: a file path (SQLite) or a
                                    # postgresql://user@host:port/db URL (PostgreSQL, gateway.postgres_store)
    max_body_bytes = 1048576        # MLSGW_MAX_BODY_BYTES
    worker_threads = 0              # MLSGW_WORKER_THREADS: 0 = by store (SQLite 3; PostgreSQL 8/workers, >=3)
    workers = 1                     # MLSGW_WORKERS: processes serving the listening socket
    state_cache_bytes = 268435456   # MLSGW_STATE_CACHE_BYTES: decoded group states kept (0 disables)
    full_state_every = 64           # MLSGW_FULL_STATE_EVERY: messages between full-state rewrites (>= 1)
    log_level = "INFO"              # MLSGW_LOG_LEVEL
    log_format = "text"             # MLSGW_LOG_FORMAT: "text" or "json" (one JSON object a line)
    idempotency_retention_s = 86400 # MLSGW_IDEMPOTENCY_RETENTION_S: stored responses kept (>= 24 h, api-v1)
    reconcile_interval_s = 600      # MLSGW_RECONCILE_INTERVAL_S: orphan-key reconciliation period (> 0)
    reconcile_grace_s = 600         # MLSGW_RECONCILE_GRACE_S: an orphan is destroyed when seen this long
    # abuse resistance (gateway.request_limits, gateway.quotas); each also MLSGW_<NAME in capitals>
    auth_threads = 1                # token checks on PostgreSQL: a pool of their own
    # tenant_max_concurrency = 2    # worker threads one tenant may hold at once (unset: SQLite 2, PG 4)
    tenant_max_waiting = 256        # requests of one tenant waiting for a worker; more answer 429
    quota_identities = 10000        # identities per tenant
    quota_groups_per_identity = 1000        # memberships per identity
    quota_key_packages_per_identity = 1000  # unconsumed KeyPackages stored per identity
    header_timeout_s = 15           # a connection idle or with half-sent headers this long is closed
    body_timeout_s = 30             # a request body not fully read in this time answers 408
    readiness_write_timeout_s = 0.5 # /readyz: the store's write-lock probe waits at most this
    migrate_on_start = true         # MLSGW_MIGRATE_ON_START: apply pending schema migrations at start-up
    lease_ttl_s = 15                # a background task's lease lapses this long after its last renewal
    lease_clock_margin_s = 2        # clock difference between machines a lease tolerates
    wakeup_poll_s = 0.025           # SQLite: how often other processes' notifications are looked for

    [hsm]
    module_path = "/usr/lib/softhsm/libsofthsm2.so"   # MLSGW_HSM_MODULE
    token_label = "mls-gateway"     # MLSGW_HSM_TOKEN_LABEL
    pin_env = "MLSGW_HSM_PIN"       # or pin_file = "..."  (MLSGW_HSM_PIN_FILE); never the PIN itself
    pool_size = 4                   # MLSGW_HSM_POOL_SIZE
    softhsm_dir = "..."             # embedded SoftHSM token folder (default <data_dir>/softhsm)
    data_key_max_seals = 1048576    # seals per at-rest data key before it rotates (at most 2^32)
    data_key_max_age_s = 3600       # seconds before the at-rest data key rotates (hsm.envelope)
    wrapped_handle_cache = 1024     # unwrapped wrapped-custody keys kept as session objects (LRU)
    kek_poll_s = 5                  # seconds between reads of the current KEKs (gateway.kek_rotation)
    kek_retire_grace_s = 60         # a retired KEK is destroyed no sooner than this after its rotation
    kek_rewrap_batch = 256          # rows re-wrapped per batch by a KEK rotation

    [delivery]                      # the group service (api-delivery.md)
    out_of_order_tolerance = 32     # MLSGW_OUT_OF_ORDER_TOLERANCE: late generations a receiver still reads
    max_forward_distance = 1000     # MLSGW_MAX_FORWARD_DISTANCE: generations a receiver may skip at once
    past_epochs = 2                 # MLSGW_PAST_EPOCHS: past epochs kept to read late application messages
    mailbox_retention_s = 604800    # MLSGW_MAILBOX_RETENTION_S: unacknowledged mailbox/inbox items kept
    webhook_allow_private = false   # MLSGW_WEBHOOK_ALLOW_PRIVATE: allow loopback/private webhook URLs

    [audit]                         # the audit chain (gateway.audit_chain)
    checkpoint_records = 1000       # MLSGW_AUDIT_CHECKPOINT_RECORDS: a checkpoint after this many records
    checkpoint_interval_s = 60      # MLSGW_AUDIT_CHECKPOINT_INTERVAL_S: ... or this long (and at shutdown)
    retention_s = 31536000          # MLSGW_AUDIT_RETENTION_S: audit records kept (per-tenant overrides)

    [retention]                     # gateway.retention
    interval_s = 3600               # MLSGW_RETENTION_INTERVAL_S: seconds between two retention runs
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hsm.config import TokenConfig

#: api-v1.md (Conventions): a response stored for an Idempotency-Key is kept at least 24 h.
MIN_IDEMPOTENCY_RETENTION_S = 24 * 3600.0
#: Worker threads when ``worker_threads`` is 0 (:attr:`GatewayConfig.worker_pool_threads`).
SQLITE_WORKER_THREADS, POSTGRES_WORKER_THREADS = 3, 8


class ConfigError(Exception):
    """The configuration is invalid; the message says which setting."""


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class HsmSettings:
    module_path: str | None = None
    token_label: str = "mls-gateway"
    pin_env: str | None = None
    pin_file: str | None = None
    pool_size: int = 4
    softhsm_dir: str | None = None
    data_key_max_seals: int = 1 << 20
    data_key_max_age_s: float = 3600.0
    wrapped_handle_cache: int = 1024
    kek_poll_s: float = 5.0
    kek_retire_grace_s: float = 60.0
    kek_rewrap_batch: int = 256


@dataclass(frozen=True)
class DeliverySettings:
    """The group service's settings: the default group configuration of hosted members (RFC 9420 §9.2's
    out-of-order window, the forward distance, past epochs kept), retention, webhook address policy."""

    out_of_order_tolerance: int = 32
    max_forward_distance: int = 1000
    past_epochs: int = 2
    mailbox_retention_s: float = 7 * 24 * 3600.0
    webhook_allow_private: bool = False

    def __post_init__(self) -> None:
        if min(self.out_of_order_tolerance, self.max_forward_distance, self.past_epochs) < 0:
            raise ValueError("delivery window sizes must not be negative")
        if not self.mailbox_retention_s > 0:
            raise ValueError("delivery.mailbox_retention_s must be > 0")


@dataclass(frozen=True)
class AuditSettings:
    """The audit chain's checkpoints (gateway.audit_chain) and the default retention of audit records."""

    checkpoint_records: int = 1000
    checkpoint_interval_s: float = 60.0
    retention_s: float = 365 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.checkpoint_records < 1 or not self.checkpoint_interval_s > 0 or not self.retention_s > 0:
            raise ValueError(
                "audit.checkpoint_records must be >= 1, checkpoint_interval_s and retention_s > 0"
            )


@dataclass(frozen=True)
class RetentionSettings:
    """How often the retention task runs (gateway.retention)."""

    interval_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError("retention.interval_s must be > 0")


@dataclass(frozen=True)
class GatewayConfig:
    data_dir: Path = Path("data")
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    #: A SQLite file path, or a ``postgresql://`` URL (:attr:`postgres_url`); ``None``: the data folder's.
    #: Not in the repr: a URL may hold a password (:attr:`database_location` is the printable form).
    database: str | None = field(default=None, repr=False)
    max_body_bytes: int = 1 << 20
    #: Threads of the worker pool (store, HSM and MLS work); 0: by the store (:attr:`worker_pool_threads`).
    worker_threads: int = 0
    #: Gateway processes serving the listening socket (gateway.supervisor; 1: this process serves alone).
    workers: int = 1
    #: Bound of the decoded group-state cache, in sealed-state bytes (gateway.state_cache); 0 disables it.
    state_cache_bytes: int = 256 << 20
    #: Application messages (ratchet writes) a membership's stored full state may fall behind before it is
    #: written again (docs/architecture.md "Forward secrecy at rest"); 1 rewrites it on every message.
    full_state_every: int = 64
    log_level: str = "INFO"
    #: ``text`` (``time level logger message key=value...``) or ``json`` (one object a line; gateway.logs).
    log_format: str = "text"
    #: Seconds an Idempotency-Key's response is kept and replayed; api-v1.md promises at least 24 h.
    idempotency_retention_s: float = MIN_IDEMPOTENCY_RETENTION_S
    #: Seconds between two orphan-key reconciliations (gateway.reconciliation; the first at start-up).
    reconcile_interval_s: float = 600.0
    #: Seconds an unreferenced key must stay unreferenced (two passes apart) before it is destroyed.
    reconcile_grace_s: float = 600.0
    # ---- abuse resistance (issue 17): limits and quotas, see LIMIT_SETTINGS ----
    auth_threads: int = 1
    #: Worker threads one tenant may hold at once; unset (0): by the pool (:attr:`tenant_concurrency`).
    tenant_max_concurrency: int = 0
    tenant_max_waiting: int = 256
    quota_identities: int = 10_000
    quota_groups_per_identity: int = 1000
    quota_key_packages_per_identity: int = 1000
    header_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    readiness_write_timeout_s: float = 0.5
    #: Apply pending schema migrations when the store opens (gateway.schema_migrations); false: refuse to
    #: start until ``mls-gateway migrate`` ran. A database written by a newer gateway is always refused.
    migrate_on_start: bool = True
    # ---- several processes (issue 15): leases and cross-process wake-ups, see LIMIT_SETTINGS ----
    #: Seconds a background task's lease lasts without renewal (gateway.leases; renewed every third).
    lease_ttl_s: float = 15.0
    #: Seconds of clock difference between machines a lease tolerates (gateway.leases).
    lease_clock_margin_s: float = 2.0
    #: Seconds between two looks for other processes' notifications on SQLite (gateway.wakeups).
    wakeup_poll_s: float = 0.025
    hsm: HsmSettings = field(default_factory=HsmSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    @property
    def postgres_url(self) -> str | None:
        """The ``postgresql://`` URL of the database when it is PostgreSQL, else ``None`` (SQLite)."""
        db = self.database
        return db if db is not None and db.startswith(("postgresql://", "postgres://")) else None

    @property
    def worker_pool_threads(self) -> int:
        """``worker_threads``, or 0: SQLite 3 (more only add GIL hand-offs); PostgreSQL 8 for the ``workers``
        processes together, each at least 3 (docs/scaling.md "Stop 32": 2 × 4 beat 2 × 8 by a quarter)."""
        if self.worker_threads:
            return self.worker_threads
        shared = -(-POSTGRES_WORKER_THREADS // self.workers)
        return SQLITE_WORKER_THREADS if self.postgres_url is None else max(SQLITE_WORKER_THREADS, shared)

    @property
    def tenant_concurrency(self) -> int:
        """``tenant_max_concurrency``, or when 0 half the pool rounded up and at least one thread fewer
        (3 → 2, 8 → 4): another tenant's request always finds a thread (docs/api.md, "Concurrency")."""
        threads = self.worker_pool_threads
        return self.tenant_max_concurrency or max(1, min(threads - 1, (threads + 1) // 2))

    @property
    def database_path(self) -> Path:
        """The SQLite database file (a PostgreSQL database has none: ``ValueError``)."""
        if self.postgres_url is not None:
            raise ValueError("the database is PostgreSQL, not a file")
        return Path(self.database) if self.database else self.data_dir / "gateway.sqlite3"

    @property
    def database_location(self) -> str:
        """Where the store is, for reports: the file path, or the URL without its password."""
        url = self.postgres_url
        if url is None:
            return str(self.database_path.resolve())
        scheme, _, rest = url.partition("://")
        userinfo, at, host = rest.rpartition("@")
        return f"{scheme}://{userinfo.partition(':')[0]}{at}{host}"

    @property
    def softhsm_dir(self) -> Path:
        return Path(self.hsm.softhsm_dir) if self.hsm.softhsm_dir else self.data_dir / "softhsm"

    @property
    def embedded_softhsm(self) -> bool:
        """True when no PKCS#11 module is configured: the gateway runs its own SoftHSM token."""
        return self.hsm.module_path is None

    @property
    def pin_file(self) -> Path:
        return Path(self.hsm.pin_file) if self.hsm.pin_file else self.data_dir / "hsm.pin"

    def token_config(self, module_path: str) -> TokenConfig:
        if self.hsm.pin_env:
            return TokenConfig(
                module_path=module_path,
                token_label=self.hsm.token_label,
                pin_env=self.hsm.pin_env,
                pool_size=self.hsm.pool_size,
            )
        return TokenConfig(
            module_path=module_path,
            token_label=self.hsm.token_label,
            pin_file=str(self.pin_file),
            pool_size=self.hsm.pool_size,
        )


_ENV = {
    "MLSGW_DATA_DIR": ("gateway", "data_dir"),
    "MLSGW_LISTEN": ("gateway", "listen"),
    "MLSGW_DATABASE": ("gateway", "database"),
    "MLSGW_MAX_BODY_BYTES": ("gateway", "max_body_bytes"),
    "MLSGW_WORKER_THREADS": ("gateway", "worker_threads"),
    "MLSGW_WORKERS": ("gateway", "workers"),
    "MLSGW_STATE_CACHE_BYTES": ("gateway", "state_cache_bytes"),
    "MLSGW_FULL_STATE_EVERY": ("gateway", "full_state_every"),
    "MLSGW_LOG_LEVEL": ("gateway", "log_level"),
    "MLSGW_LOG_FORMAT": ("gateway", "log_format"),
    "MLSGW_IDEMPOTENCY_RETENTION_S": ("gateway", "idempotency_retention_s"),
    "MLSGW_RECONCILE_INTERVAL_S": ("gateway", "reconcile_interval_s"),
    "MLSGW_RECONCILE_GRACE_S": ("gateway", "reconcile_grace_s"),
    "MLSGW_HSM_MODULE": ("hsm", "module_path"),
    "MLSGW_HSM_TOKEN_LABEL": ("hsm", "token_label"),
    "MLSGW_HSM_PIN_FILE": ("hsm", "pin_file"),
    "MLSGW_HSM_POOL_SIZE": ("hsm", "pool_size"),
    "MLSGW_OUT_OF_ORDER_TOLERANCE": ("delivery", "out_of_order_tolerance"),
    "MLSGW_MAX_FORWARD_DISTANCE": ("delivery", "max_forward_distance"),
    "MLSGW_PAST_EPOCHS": ("delivery", "past_epochs"),
    "MLSGW_MAILBOX_RETENTION_S": ("delivery", "mailbox_retention_s"),
    "MLSGW_WEBHOOK_ALLOW_PRIVATE": ("delivery", "webhook_allow_private"),
    "MLSGW_AUDIT_CHECKPOINT_RECORDS": ("audit", "checkpoint_records"),
    "MLSGW_AUDIT_CHECKPOINT_INTERVAL_S": ("audit", "checkpoint_interval_s"),
    "MLSGW_AUDIT_RETENTION_S": ("audit", "retention_s"),
    "MLSGW_RETENTION_INTERVAL_S": ("retention", "interval_s"),
    "MLSGW_MIGRATE_ON_START": ("gateway", "migrate_on_start"),
}
#: The abuse-resistance settings of ``[gateway]`` (each > 0), read generically: ``MLSGW_<NAME>`` too.
LIMIT_SETTINGS = (
    "auth_threads",
    "tenant_max_concurrency",
    "tenant_max_waiting",
    "quota_identities",
    "quota_groups_per_identity",
    "quota_key_packages_per_identity",
    "header_timeout_s",
    "body_timeout_s",
    "readiness_write_timeout_s",
    "lease_ttl_s",
    "lease_clock_margin_s",
    "wakeup_poll_s",
)
_ENV.update({f"MLSGW_{name.upper()}": ("gateway", name) for name in LIMIT_SETTINGS})
_INTS = {
    "max_body_bytes",
    "worker_threads",
    "workers",
    "pool_size",
    "state_cache_bytes",
    "full_state_every",
    "out_of_order_tolerance",
    "max_forward_distance",
    "past_epochs",
    "checkpoint_records",
}
_BOOLS = {"webhook_allow_private", "migrate_on_start"}


def _merged(toml_path: Path | None, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = {"gateway": {}, "hsm": {}, "delivery": {}, "audit": {}, "retention": {}}
    if toml_path is not None:
        try:
            raw = tomllib.loads(toml_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read {toml_path}: {e}") from None
        unknown = set(raw) - set(data)
        if unknown:
            raise ConfigError(f"unknown sections {sorted(unknown)}")
        if "pin" in raw.get("hsm", {}):
            raise ConfigError("the HSM PIN must come from pin_env or pin_file, never the configuration text")
        for section in data:
            values = raw.get(section, {})
            if not isinstance(values, dict):
                raise ConfigError(f"[{section}] must be a table")
            _reject_unknown(section, values)
            data[section].update(values)
    for var, (section, key) in _ENV.items():
        if var in env:
            data[section][key] = _env_value(key, env[var])
    if "pin" in data["hsm"]:
        raise ConfigError("the HSM PIN must come from pin_env or pin_file, never the configuration text")
    return data


def _known_keys() -> dict[str, set[str]]:
    """The keys each TOML section accepts (the settings' fields; ``[gateway]`` spells two its own way)."""
    sections = {"hsm", "delivery", "audit", "retention"}
    gateway = {f.name for f in fields(GatewayConfig)} - {"listen_host", "listen_port", *sections}
    return {
        "gateway": gateway | {"listen"},
        "hsm": {f.name for f in fields(HsmSettings)} | {"pin"},  # "pin" is refused with its own message
        "delivery": {f.name for f in fields(DeliverySettings)},
        "audit": {f.name for f in fields(AuditSettings)},
        "retention": {f.name for f in fields(RetentionSettings)},
    }


def _reject_unknown(section: str, values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - _known_keys()[section])
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in [{section}]: {', '.join(unknown)}"
        )


def _env_value(key: str, value: str) -> Any:
    if key in _BOOLS:
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    return int(value) if key in _INTS and value.isdigit() else value


def load_config(
    toml_path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> GatewayConfig:
    """The configuration from ``toml_path`` (or ``$MLSGW_CONFIG``), the environment and ``overrides``."""
    env = os.environ if env is None else env
    if toml_path is None and env.get("MLSGW_CONFIG"):
        toml_path = Path(env["MLSGW_CONFIG"])
    data = _merged(toml_path, env)
    g, h = data["gateway"], data["hsm"]
    try:
        hsm = HsmSettings(**h)
        delivery = DeliverySettings(**data["delivery"])
        a = data["audit"]
        audit = AuditSettings(
            checkpoint_records=int(a.get("checkpoint_records", 1000)),
            checkpoint_interval_s=float(a.get("checkpoint_interval_s", 60.0)),
            retention_s=float(a.get("retention_s", 365 * 24 * 3600.0)),
        )
        retention = RetentionSettings(**{k: float(v) for k, v in data["retention"].items()})
        cfg = GatewayConfig(
            data_dir=Path(g.pop("data_dir", "data")),
            database=str(g["database"]) if "database" in g else None,
            max_body_bytes=int(g.get("max_body_bytes", 1 << 20)),
            worker_threads=int(g.get("worker_threads", 0)),
            workers=int(g.get("workers", 1)),
            state_cache_bytes=int(g.get("state_cache_bytes", 256 << 20)),
            full_state_every=int(g.get("full_state_every", 64)),
            log_level=str(g.get("log_level", "INFO")),
            log_format=str(g.get("log_format", "text")),
            idempotency_retention_s=float(g.get("idempotency_retention_s", MIN_IDEMPOTENCY_RETENTION_S)),
            reconcile_interval_s=float(g.get("reconcile_interval_s", 600.0)),
            reconcile_grace_s=float(g.get("reconcile_grace_s", 600.0)),
            hsm=hsm,
            delivery=delivery,
            audit=audit,
            retention=retention,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid setting: {e}") from None
    cfg = _with_limits(cfg, g)
    if "migrate_on_start" in g:
        if not isinstance(g["migrate_on_start"], bool):
            raise ConfigError(f"migrate_on_start must be true or false, got {g['migrate_on_start']!r}")
        cfg = replace(cfg, migrate_on_start=g["migrate_on_start"])
    if "listen" in g:
        host, port = parse_listen(str(g["listen"]))
        cfg = replace(cfg, listen_host=host, listen_port=port)
    for key, value in overrides.items():
        if value is not None:
            cfg = _override(cfg, key, value)
    if cfg.max_body_bytes < 1024 or cfg.worker_threads < 0 or cfg.state_cache_bytes < 0:
        raise ConfigError(
            "max_body_bytes must be >= 1024, worker_threads >= 0 (0: by store) and state_cache_bytes >= 0"
        )
    if cfg.full_state_every < 1:
        raise ConfigError("full_state_every must be >= 1")
    if not 1 <= cfg.workers <= 256:
        raise ConfigError(f"workers must be in 1..256, got {cfg.workers}")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be 'text' or 'json', not {cfg.log_format!r}")
    if not cfg.idempotency_retention_s >= MIN_IDEMPOTENCY_RETENTION_S:
        raise ConfigError("idempotency_retention_s must be >= 86400 (api-v1.md: kept at least 24 h)")
    if not (cfg.reconcile_interval_s > 0 and cfg.reconcile_grace_s >= 0):
        raise ConfigError("reconcile_interval_s must be > 0 and reconcile_grace_s >= 0")
    if not 1 <= cfg.hsm.data_key_max_seals <= 1 << 32 or not cfg.hsm.data_key_max_age_s > 0:
        raise ConfigError("hsm.data_key_max_seals must be in 1..2^32 and hsm.data_key_max_age_s > 0")
    hs = cfg.hsm
    if (
        min(hs.wrapped_handle_cache, hs.kek_rewrap_batch) < 1
        or not hs.kek_poll_s > 0
        or hs.kek_retire_grace_s < 0
        or 0 < hs.kek_retire_grace_s < 3 * hs.kek_poll_s
    ):
        # A retired KEK is destroyed only after every process has had three polls to switch (0: at once,
        # for a single gateway process).
        raise ConfigError(
            "hsm.wrapped_handle_cache and hsm.kek_rewrap_batch must be >= 1, hsm.kek_poll_s > 0 "
            "and hsm.kek_retire_grace_s 0 or at least 3 x hsm.kek_poll_s"
        )
    return cfg


def _with_limits(cfg: GatewayConfig, values: Mapping[str, Any]) -> GatewayConfig:
    """``cfg`` with the :data:`LIMIT_SETTINGS` given in ``values`` (each a number > 0)."""
    limits: dict[str, Any] = {}
    for name in LIMIT_SETTINGS:
        if name not in values:
            continue
        kind = float if name.endswith("_s") else int
        try:
            value = kind(values[name])
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {values[name]!r}") from None
        if isinstance(values[name], bool) or not value > 0:
            raise ConfigError(f"{name} must be > 0, got {values[name]!r}")
        limits[name] = value
    return replace(cfg, **limits)


def _override(cfg: GatewayConfig, key: str, value: Any) -> GatewayConfig:
    if key == "listen":
        host, port = parse_listen(value)
        return replace(cfg, listen_host=host, listen_port=port)
    if key == "data_dir":
        return replace(cfg, data_dir=Path(value))
    if key == "workers":
        return replace(cfg, workers=int(value))
    raise ConfigError(f"unknown override {key}")
