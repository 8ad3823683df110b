"""The tamper-evident audit chain: record hashes, signed checkpoints, the export format and its verifier.

**Chain.** Every audit record carries ``seq`` (1, 2, ... in commit order, per store), ``prev_hash`` (the
previous record's ``hash``; 32 zero bytes for the first) and ``hash`` = SHA-256 of
``b"mlsgw-audit-record/v1\\n"`` followed by the record's canonical encoding: the JSON object of its fields
(:data:`HASHED_FIELDS`, bytes as lowercase hex, ``at`` as Python's shortest round-trip float) with sorted
keys and no whitespace. Both are computed inside the write transaction that inserts the record
(:mod:`gateway.sqlite_audit`; on PostgreSQL by the inserting statement itself from
:func:`hash_template`'s cut, :mod:`gateway.postgres_audit`), so concurrent writers serialise on the store's
write lock (PostgreSQL: its order lock) and the chain has no forks. ``at`` is when the record was made:
on PostgreSQL that is before the lock that orders the chain, so two records committed a few
milliseconds apart may have ``at`` in the other order than ``seq``.

**Checkpoints.** Every ``[audit] checkpoint_records`` records or ``checkpoint_interval_s`` seconds, and at
shutdown, the head is signed in the HSM with the audit key (:mod:`hsm.audit_key`) over
:func:`checkpoint_message` = ``"mlsgw-audit-checkpoint/v1\\n{seq}\\n{head hex}\\n{at_ms}\\n"``. A checkpoint
pins every record up to ``seq``: a record changed, removed, inserted or reordered before it changes the
hash the verifier recomputes at ``seq``; a chain cut after it leaves the checkpoint beyond the last record.

**Purged records** (retention, :mod:`gateway.retention`) keep their link: the row stays with ``seq``,
``at``, ``tenant_id``, ``prev_hash`` and ``hash``; its contents are erased and ``purged_by`` names the
purge's own audit record (operation :data:`PURGE_OPERATION`), whose ``detail`` holds the count, the seq
range and :func:`purge_digest` of the rows it erased. The verifier accepts a purged row's stored hash only
when a purge record accounts for it, so a row cannot be hidden by erasing it.

**Export** (``mls-gateway audit export``): JSON lines, a ``header`` (format, ``from_seq``, ``anchor``: the
``prev_hash`` of the first exported record), then one line per record in seq order and the checkpoints. A
``--tenant`` export keeps the chain whole: records of other tenants appear as ``link`` lines (``seq``,
``prev_hash``, ``hash`` and nothing else), so the export verifies on its own while showing only the
tenant's records. ``--since`` starts the export at a record (its ``anchor`` is then trusted as far as the
next checkpoint pins it), ``--until`` ends it (checkpoints beyond its last record are left out).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

GENESIS = bytes(32)
EXPORT_FORMAT = "mlsgw-audit-export/v1"
PURGE_OPERATION = "retention_purge"
_RECORD_DOMAIN = b"mlsgw-audit-record/v1\n"
_PURGE_DOMAIN = b"mlsgw-audit-purge/v1\n"

#: The fields a record's hash covers (every column but ``hash`` itself and ``purged_by``).
HASHED_FIELDS = (
    "seq",
    "at",
    "request_id",
    "tenant_id",
    "identity_id",
    "token_id",
    "group_id",
    "epoch",
    "key_ref",
    "operation",
    "custody",
    "ok",
    "detail",
    "prev_hash",
)
_BYTES_FIELDS = ("group_id", "key_ref", "prev_hash", "hash")


def _plain(value: Any) -> Any:
    return value.hex() if isinstance(value, (bytes, bytearray, memoryview)) else value


def _hashed(fields: Mapping[str, Any]) -> dict[str, Any]:
    doc = {name: _plain(fields.get(name)) for name in HASHED_FIELDS}
    doc["ok"] = bool(doc["ok"])
    return doc


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def record_hash(fields: Mapping[str, Any]) -> bytes:
    """SHA-256 of the record's canonical encoding (``fields`` as stored: bytes as bytes or hex)."""
    return hashlib.sha256(_RECORD_DOMAIN + _json(_hashed(fields)).encode()).digest()


def hash_template(fields: Mapping[str, Any]) -> tuple[bytes, bytes, bytes]:
    """The bytes :func:`record_hash` hashes, cut around the two values only the chain's head decides:
    ``(a, b, c)`` such that ``record_hash`` of ``fields`` with ``prev_hash`` and ``seq`` set is SHA-256 of
    ``a + prev_hash.hex() + b + str(seq) + c`` — for a database that links a record to the head it
    reads itself, in the statement that inserts it (:mod:`gateway.postgres_audit`). The canonical
    encoding is one JSON object with sorted keys, so the cut is the same text :func:`record_hash`
    builds (tested against it)."""
    doc = _hashed(fields)
    parts: list[str] = []
    text = _RECORD_DOMAIN.decode() + "{"
    for i, name in enumerate(sorted(doc)):
        text += ("," if i else "") + _json(name) + ":"
        if name == "prev_hash":
            parts.append(text + '"')
            text = '"'
        elif name == "seq":
            parts.append(text)
            text = ""
        else:
            text += _json(doc[name])
    a, b = parts
    return a.encode(), b.encode(), (text + "}").encode()


def checkpoint_message(seq: int, head: bytes, at_ms: int) -> bytes:
    """The bytes the audit key signs for a checkpoint at ``seq`` whose record hash is ``head``."""
    return f"mlsgw-audit-checkpoint/v1\n{seq}\n{head.hex()}\n{at_ms}\n".encode()


def purge_digest(purged: Iterable[tuple[int, bytes]]) -> bytes:
    """SHA-256 over the ``(seq, hash)`` of the rows one purge erased, in seq order."""
    h = hashlib.sha256(_PURGE_DOMAIN)
    for seq, digest in sorted(purged):
        h.update(seq.to_bytes(8, "big") + digest)
    return h.digest()


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head: bytes
    at_ms: int
    signature: bytes

    def line(self) -> dict[str, Any]:
        return {
            "type": "checkpoint",
            "seq": self.seq,
            "head": self.head.hex(),
            "at_ms": self.at_ms,
            "signature": self.signature.hex(),
        }


def record_line(row: Mapping[str, Any], *, link_only: bool = False) -> dict[str, Any]:
    """One export line of a stored row: ``record`` (every field, bytes in hex) or ``link`` (chain only)."""
    if link_only:
        return {
            "type": "link",
            "seq": row["seq"],
            "prev_hash": _plain(row["prev_hash"]),
            "hash": _plain(row["hash"]),
        }
    line: dict[str, Any] = {"type": "record"}
    for name in (*HASHED_FIELDS, "hash", "purged_by"):
        line[name] = _plain(row[name])
    line["ok"] = bool(line["ok"])
    return line


class ChainBroken(Exception):
    """Verification failed; ``seq`` names the first bad record (or checkpoint), the message says how."""

    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(f"record seq {seq}: {reason}" if seq is not None else reason)
        self.seq = seq
        self.reason = reason


@dataclass
class Verified:
    """What a verification covered."""

    records: int = 0
    links: int = 0
    purged: int = 0
    legacy: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    last_checkpoint_seq: int = 0
    unpinned: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": True,
            "records": self.records,
            "links": self.links,
            "purged": self.purged,
            "legacy": self.legacy,
            "checkpoints": self.checkpoints,
            "last_seq": self.last_seq,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "records_after_last_checkpoint": self.unpinned,
        }


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


class _Verifier:
    """Walks the export's lines once (:func:`verify`)."""

    def __init__(self, header: Mapping[str, Any], public_key: object) -> None:
        self.head = _bytes(header.get("anchor")) or GENESIS
        self.expected = int(header.get("from_seq") or 1)
        self.public_key = public_key
        self.checkpoints: dict[int, Checkpoint] = {}
        self.purges: dict[int, list[tuple[int, bytes]]] = {}
        self.purge_records: dict[int, Mapping[str, Any] | None] = {}
        self.result = Verified()
        self.chained = False

    def add_checkpoint(self, line: Mapping[str, Any]) -> None:
        cp = Checkpoint(
            int(line["seq"]),
            bytes.fromhex(line["head"]),
            int(line["at_ms"]),
            bytes.fromhex(line["signature"]),
        )
        if not _signature_ok(self.public_key, cp.signature, checkpoint_message(cp.seq, cp.head, cp.at_ms)):
            raise ChainBroken(cp.seq, "checkpoint signature does not verify with the audit public key")
        known = self.checkpoints.get(cp.seq)
        if known is not None and known.head != cp.head:
            raise ChainBroken(cp.seq, "two signed checkpoints at this seq disagree (the chain was rewritten)")
        self.checkpoints[cp.seq] = cp

    def add_record(self, line: Mapping[str, Any]) -> None:
        seq = int(line["seq"])
        if line.get("hash") is None and line["type"] == "record":
            if self.chained:
                raise ChainBroken(seq, "unchained record after the chain started (inserted)")
            self.result.legacy += 1
            self.expected = seq + 1
            return
        if seq != self.expected:
            why = "missing (removed)" if seq > self.expected else "out of order (inserted or reordered)"
            raise ChainBroken(self.expected if seq > self.expected else seq, f"{why}; found seq {seq} here")
        prev, stored = _bytes(line["prev_hash"]), _bytes(line["hash"])
        if prev != self.head:
            raise ChainBroken(seq, "does not link to the previous record (removed, inserted or reordered)")
        assert stored is not None
        self._check_content(seq, line, stored)
        self.chained = True
        self.head = stored
        self.expected = seq + 1
        cp = self.checkpoints.get(seq)
        if cp is not None and cp.head != stored:
            raise ChainBroken(seq, "differs from the signed checkpoint at this seq (changed)")

    def _check_content(self, seq: int, line: Mapping[str, Any], stored: bytes) -> None:
        if line["type"] == "link":
            self.result.links += 1
            return
        purged_by = line.get("purged_by")
        if purged_by is not None:
            self.result.purged += 1
            self.purges.setdefault(int(purged_by), []).append((seq, stored))
            return
        if record_hash(line) != stored:
            raise ChainBroken(seq, "its fields do not match its hash (changed)")
        self.result.records += 1
        if line.get("operation") == PURGE_OPERATION:
            self.purge_records[seq] = line

    def finish(self) -> Verified:
        last = self.expected - 1
        beyond = [s for s in self.checkpoints if s > last]
        if beyond:
            cut = f"records end at seq {last}, a checkpoint covers seq {max(beyond)}"
            raise ChainBroken(last + 1, f"missing: the chain was cut ({cut})")
        for purge_seq, rows in sorted(self.purges.items()):
            self._check_purge(purge_seq, rows)
        self.result.checkpoints = len(self.checkpoints)
        self.result.last_seq = last
        self.result.last_checkpoint_seq = max(self.checkpoints, default=0)
        self.result.unpinned = max(0, last - self.result.last_checkpoint_seq)
        return self.result

    def _check_purge(self, purge_seq: int, rows: list[tuple[int, bytes]]) -> None:
        """The rows claimed erased by purge record ``purge_seq`` are exactly those it erased: within its
        seq range (else the row is named), as many, and with its digest."""
        record = self.purge_records.get(purge_seq)
        first = min(seq for seq, _ in rows)
        if record is None:
            raise ChainBroken(first, f"erased, but seq {purge_seq} is no purge record that accounts for it")
        try:
            detail = json.loads(record.get("detail") or "{}")
        except ValueError:
            detail = {}
        lo, hi = detail.get("audit_seqs") or (0, -1)
        for seq, _ in rows:
            if not lo <= seq <= hi:
                raise ChainBroken(seq, f"erased, but not among the rows purge record seq {purge_seq} erased")
        if len(rows) != detail.get("audit_records") or detail.get("audit_digest") != purge_digest(rows).hex():
            raise ChainBroken(first, f"erased rows do not match what purge record seq {purge_seq} erased")


def _signature_ok(public_key: object, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def load_public_key(pem: bytes) -> object:
    """The audit public key from its PEM (Ed25519 or P-256); ValueError for anything else."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        raise ValueError("the audit public key must be Ed25519 or ECDSA P-256")
    return key


def verify(
    lines: Iterable[Mapping[str, Any]], public_key: object, trusted: Iterable[Mapping[str, Any]] = ()
) -> Verified:
    """Verify an export (its parsed lines, in file order); raises :class:`ChainBroken` at the first bad
    record. Checkpoints are checked first (their signatures), then records in the order they appear.
    ``trusted``: lines of an earlier export kept elsewhere, whose checkpoints are checked too — a chain
    cut together with its own last checkpoints then still fails."""
    items = list(lines)
    if not items or items[0].get("type") != "header" or items[0].get("format") != EXPORT_FORMAT:
        raise ChainBroken(None, f"not an audit export (the first line must be a {EXPORT_FORMAT} header)")
    verifier = _Verifier(items[0], public_key)
    for line in [*items[1:], *trusted]:
        if line.get("type") == "checkpoint":
            verifier.add_checkpoint(line)
    for line in items[1:]:
        kind = line.get("type")
        if kind in ("record", "link"):
            verifier.add_record(line)
        elif kind not in ("checkpoint",):
            raise ChainBroken(None, f"unknown line type {kind!r}")
    return verifier.finish()


__all__ = [
    "EXPORT_FORMAT",
    "GENESIS",
    "HASHED_FIELDS",
    "PURGE_OPERATION",
    "ChainBroken",
    "Checkpoint",
    "Verified",
    "checkpoint_message",
    "hash_template",
    "load_public_key",
    "purge_digest",
    "record_hash",
    "record_line",
    "verify",
]
