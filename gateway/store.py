"""The gateway's durable state: records and the store interface.

A :class:`Store` hands out transactions (:meth:`Store.transaction`); everything one request changes — a
group's new epoch state, audit records, the idempotency record of the request — is written in one transaction,
so a crash leaves either all of it or none. Group states are written with compare-and-swap on the record's
version (:meth:`Transaction.put_group`), which every write of the record increments (the epoch is not a
version of the state: application messages change the state within an epoch): two writers of one loaded
version cannot both win. Reads that change nothing
use :meth:`Store.read_transaction`, which takes no write lock.

Group states and software-custody keys arrive here already sealed (envelope encryption under the HSM's
wrap key); the store never sees them in the clear.

:class:`Store` and :class:`Transaction` are the whole interface the operations use
(:mod:`gateway.sqlite_store` implements them over SQLite, :mod:`gateway.postgres_store` over PostgreSQL for
several gateway processes, with the same SQL): a PostgreSQL transaction is one ``BEGIN ... COMMIT`` on a
pooled connection, ``put_group``'s compare-and-swap is an ``UPDATE ... WHERE version = expected`` whose row
count decides (no process-local lock is relied upon), and ``StoreUnavailable`` / ``EpochConflict`` keep
their meaning. The group service's log (one accepted commit per epoch, api-delivery.md) adds its append
and read methods to :class:`Transaction`, so an append joins the transaction of the state it belongs to
(see :mod:`gateway.group_session`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from .delivery_store import LogTransaction
from .quotas import QuotaTransaction
from .sqlite_audit import AuditTransaction
from .sqlite_credentials import CredentialTransaction
from .sqlite_directory import DirectoryTransaction
from .sqlite_leases import LeaseTransaction
from .sqlite_mailboxes import MailboxTransaction
from .sqlite_tenants import TenantAdminTransaction
from .sqlite_webhooks import WebhookTransaction


class StoreUnavailable(Exception):
    """The database cannot be reached or written (disk full, locked too long, I/O error): HTTP 503 with
    Retry-After, and background tasks try again later."""


class StoreFault(StoreUnavailable):
    """The database refused a statement for a reason that retrying will not change — a constraint, a
    malformed statement or value, a write in a read-only transaction: a defect (or tampering), never the
    client's to retry. The HTTP API answers 500 ``internal_error`` (logged), not 503. It is a
    :class:`StoreUnavailable` for every caller that only needs "the store did not do it" (the transaction
    rolled back; background tasks log it and try again later). Its text names the error class, never the
    database's message (which may quote the statement's values)."""


class EpochConflict(Exception):
    """A compare-and-swap on a group record failed: someone else wrote the group first (HTTP 409)."""


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    name: str
    #: How new keys of the tenant's identities are held (``hsm.keystore.CustodyMode``): ``wrapped`` (the
    #: default for tenants created through the API) or ``token`` (every tenant of an older database).
    custody_mode: str = "token"


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    #: ``None`` for admin tokens.
    tenant_id: str | None
    revoked: bool
    #: The client (device) this token belongs to; ``None`` for tenant and admin tokens.
    client_id: str | None = None


@dataclass(frozen=True)
class Identity:
    identity_id: str
    tenant_id: str
    name: str
    cipher_suite: int
    credential: bytes
    signature_key_ref: bytes
    signature_public_key: bytes
    custody_signature: str
    custody_hpke: str
    #: Join automatically from a Welcome the group's log routes to one of its KeyPackages (api-delivery.md).
    auto_join: bool = True


@dataclass(frozen=True)
class KeyPackageRecord:
    ref: bytes
    identity_id: str
    key_package: bytes
    init_key_ref: bytes
    leaf_key_ref: bytes
    last_resort: bool
    consumed: bool


@dataclass(frozen=True)
class GroupRecord:
    identity_id: str
    group_id: bytes
    epoch: int
    #: The sealed GroupState.
    state: bytes
    #: The sealed pending commit, if one is staged.
    pending: bytes | None
    #: Incremented by every write of the record (1 when inserted): the version a decoded state is of.
    version: int = 0
    #: The last entry of the group's log applied to this membership (0: none; api-delivery.md).
    applied_seq: int = 0
    #: The sealed ratchet state written after the full state (application messages), applied onto it
    #: when loaded; ``None`` when the full state is current (:mod:`gateway.sealed_state`).
    ratchet: bytes | None = None
    #: The version of the full state alone (``version`` minus the ratchet writes since it was written;
    #: docs/architecture.md "Forward secrecy at rest"); ``None`` when the store does not say.
    full_version: int | None = None


@dataclass(frozen=True)
class AuditRecord:
    request_id: str
    tenant_id: str | None
    identity_id: str | None
    group_id: bytes | None
    epoch: int | None
    key_ref: bytes
    operation: str
    custody: str
    ok: bool
    #: The caller's token (``Principal.token_id``), when a request made the key use.
    token_id: str | None = None
    #: A JSON object of further facts (a retention purge's counts, gateway.retention), or ``None``.
    detail: str | None = None


@dataclass(frozen=True)
class IdempotentResponse:
    """A stored response: its ``body`` is sealed under the wrap-key envelope (it may hold secrets)."""

    request_hash: bytes
    status: int
    body: bytes


#: How many reads of one kind (a batch's messages' places in the log) are worth asking ahead with
#: :meth:`Transaction.prefetch` (:class:`gateway.postgres_rows.SnapshotMemo` keeps 64 answers).
PREFETCHED = 16


class Transaction(
    LogTransaction,
    DirectoryTransaction,
    WebhookTransaction,
    MailboxTransaction,
    TenantAdminTransaction,
    CredentialTransaction,
    AuditTransaction,
    QuotaTransaction,
    LeaseTransaction,
    Protocol,
):
    """One atomic unit of reads and writes: all of it commits, or none of it."""

    def prefetch(self, *reads: Callable[[], object]) -> None:
        """A hint: these reads (getters of this transaction) follow — a store with round trips asks for
        them together (:meth:`gateway.sqlite_store.SqliteTransaction.prefetch`)."""
        ...

    # tenants and tokens
    def add_tenant(self, tenant: Tenant) -> None: ...
    def list_tenants(self) -> list[Tenant]: ...
    def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    def add_token(
        self, token_id: str, tenant_id: str | None, token_hash: bytes, client_id: str | None = None
    ) -> None: ...
    def token_by_hash(self, token_hash: bytes) -> TokenRecord | None: ...
    def revoke_token(self, tenant_id: str, token_id: str) -> bool: ...
    def count_admin_tokens(self) -> int: ...

    # identities and key packages
    def add_identity(self, identity: Identity) -> None: ...
    def get_identity(self, tenant_id: str, identity_id: str) -> Identity | None: ...
    def list_identities(self, tenant_id: str) -> list[Identity]: ...
    def delete_identity(self, identity_id: str) -> None:
        """Delete the identity, its records (cascade) and the idempotency records of its requests."""
        ...

    def add_key_package(self, record: KeyPackageRecord) -> None: ...
    def get_key_package(self, identity_id: str, ref: bytes) -> KeyPackageRecord | None: ...
    def list_key_packages(self, identity_id: str) -> list[KeyPackageRecord]: ...
    def mark_key_package_consumed(self, identity_id: str, ref: bytes) -> bool: ...

    # groups
    def get_group(self, identity_id: str, group_id: bytes) -> GroupRecord | None: ...
    def list_groups(self, identity_id: str) -> list[GroupRecord]: ...
    def get_group_version(self, identity_id: str, group_id: bytes) -> int | None:
        """The stored record's version (``None`` when there is no such membership), without its state."""
        ...

    def put_group(self, record: GroupRecord, expected_version: int | None) -> int:
        """Insert (``expected_version is None``) or update only if the stored version is still
        ``expected_version``; returns the new version; raises :class:`EpochConflict` otherwise."""
        ...

    def put_group_ratchet(
        self, identity_id: str, group_id: bytes, applied_seq: int, sealed: bytes, expected_version: int
    ) -> int:
        """Store a membership's ratchet state (sealed as of ``expected_version + 1``) in place of the
        secret trees of its full state, only if the stored version is still ``expected_version``; the
        record's version and ``applied_seq`` move on, its state and epoch stay. Returns the new version;
        raises :class:`EpochConflict` otherwise. :meth:`put_group` removes it."""
        ...

    def delete_group(self, identity_id: str, group_id: bytes) -> bool: ...

    # keys at rest (software custody), audit, idempotency
    def put_software_key(self, key_ref: bytes, sealed: bytes) -> None: ...
    def get_software_key(self, key_ref: bytes) -> bytes | None: ...
    def delete_software_key(self, key_ref: bytes) -> None: ...
    def list_software_key_refs(self) -> list[bytes]:
        """The references of every software key at rest (orphan reconciliation)."""
        ...

    # wrapped-custody keys at rest: blobs wrapped in the token under its KEK (``hsm.wrapped_keys``)
    def put_wrapped_key(self, key_ref: bytes, blob: bytes, kek_id: bytes) -> None: ...
    def get_wrapped_key(self, key_ref: bytes) -> bytes | None: ...
    def delete_wrapped_key(self, key_ref: bytes) -> None: ...
    def list_wrapped_key_refs(self) -> list[bytes]:
        """The references of every wrapped key at rest (orphan reconciliation)."""
        ...

    def put_psk(self, identity_id: str, psk_id: bytes, sealed: bytes) -> None:
        """Remember an external PSK of an identity (sealed), for the commits and joins that use it."""
        ...

    def list_psks(self, identity_id: str) -> list[tuple[bytes, bytes]]: ...
    def add_audit(self, records: list[AuditRecord]) -> None: ...
    def counts(self) -> dict[str, int]:
        """Numbers for the metrics: ``identities`` and ``groups``."""
        ...

    def get_idempotent(self, scope: str, key: str, not_before: float) -> IdempotentResponse | None:
        """The stored response of ``(scope, key)`` if it was stored at ``not_before`` or later."""
        ...

    def put_idempotent(
        self, scope: str, key: str, response: IdempotentResponse, identity_id: str | None
    ) -> None:
        """Store a response (replacing an expired one of the same key), as of the identity it concerns."""
        ...

    def purge_idempotent(self, older_than: float) -> int:
        """Delete the responses stored before ``older_than``; returns how many."""
        ...


class Store(Protocol):
    """Where the gateway's state lives; hands out :class:`Transaction` s (one per context)."""

    def transaction(self, group: bytes | None = None) -> AbstractContextManager[Transaction]:
        """A transaction that may write (it takes the write lock up front). ``group``: it writes the
        ratchet state and log of that one group only (a message sent or received), which a store may run
        in parallel with other groups' (PostgreSQL: :mod:`gateway.postgres_durability`)."""
        ...

    def read_transaction(self) -> AbstractContextManager[Transaction]:
        """A transaction that only reads (one consistent snapshot, no write lock); writing in it fails."""
        ...

    def serialise_appends(self, tenant_id: str, group: bytes) -> AbstractContextManager[None]:
        """Held around a hosted member's operation that may append to the tenant's group's log (its
        reads, its MLS work, its write and its retries): across processes, what the in-process log lock
        (:func:`gateway.dispatch.log_lock`) is within one (SQLite: :mod:`gateway.sqlite_append_locks`;
        PostgreSQL: nothing — the group's advisory lock serialises its writes and a lost race runs again
        on the new head). :class:`StoreUnavailable` when it cannot be had within the busy timeout."""
        ...

    #: Whether :meth:`lookup` reads a local file and never waits for another party (SQLite: a reader in WAL
    #: mode waits for no writer) — the event loop may then run it itself instead of handing it to a thread.
    lookup_is_local: bool

    def lookup(self) -> AbstractContextManager[Transaction]:
        """One ``SELECT`` on its own, the cheapest read a store has (PostgreSQL: no transaction around
        it and no wait for the durability of what it sees — one round trip instead of three; inside a read
        transaction it reads within that). Only for a read whose answer cannot show anyone a commit that a
        crash could still take back: a bearer token's record (:meth:`gateway.tenants.Tenants.authenticate`
        — a token is known to its creator alone until its creation is durable and answered; a revocation
        not yet durable refuses a request that would succeed after a crash, never the reverse of an
        acknowledged one)."""
        ...

    def sync(self) -> None:
        """Return once every transaction committed so far is durable (before answering with what another
        request wrote, e.g. a replayed response)."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        ...

    def write_probe(self, timeout_s: float) -> str | None:
        """``None`` if a write transaction could start within ``timeout_s`` (nothing is written), else why
        not (``GET /readyz``, :mod:`gateway.readiness`)."""
        ...

    def close(self) -> None: ...
