"""The gateway's operations (api-v1.md), independent of HTTP.

Each operation runs in a worker thread (HSM and CPU work off the event loop), and returns the JSON
document of its response. Operations that change state do so in **one store transaction** that writes
the new state, the messages produced, the audit records of the key uses and — when the request carried
an ``Idempotency-Key`` — the response itself, so a repeat returns it without doing the work twice.
Group states are sealed with the HSM wrap key and written with compare-and-swap on the epoch.

Private keys that an operation made dead (a consumed KeyPackage's, a replaced leaf key) are destroyed in
the token only after the transaction committed; a key made by an operation that then failed is destroyed
at once.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hsm.audit import AuditEvent, caller
from hsm.envelope import Envelope
from hsm.keystore import Pkcs11KeyStore
from mls.credentials.credential import Credential, CredentialType
from mls.crypto.cipher_suite import cipher_suite
from mls.errors import MLSError
from mls.group.group import (
    ApplicationMessage,
    CommitOptions,
    Group,
    Handshake,
    MemoryPskStore,
    ProposalMessage,
    StagedCommit,
    default_lifetime,
)
from mls.group.join import tree_from_group_info
from mls.group.state import GroupState
from mls.wire.extensions import Extension, ExternalSender, ExternalSenders
from mls.wire.framing import MLSMessage, Sender
from mls.wire.group_info import GroupInfo
from mls.wire.key_package import KeyPackage, create_key_package, key_package_ref
from mls.wire.proposals import Add as AddProposal
from mls.wire.proposals import (
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Update,
)
from mls.wire.welcome import Welcome

from . import audit
from .auth import Principal, new_id, new_token, token_hash
from .errors import Problem, conflict, invalid, not_found, problem_from_exception
from .store import (
    AuditRecord,
    EpochConflict,
    GroupRecord,
    IdempotentResponse,
    Identity,
    KeyPackageRecord,
    Store,
    Tenant,
    Transaction,
)

log = logging.getLogger("mls_gateway")

Json = dict[str, Any]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Idempotency:
    """The ``Idempotency-Key`` of a request: the key, its scope (tenant and route) and the body's hash."""

    scope: str
    key: str
    request_hash: bytes


@dataclass
class Outcome:
    status: int
    body: Json | None


@dataclass
class Work:
    """What one state-changing request writes, gathered before its transaction."""

    writes: list[Callable[[Transaction], None]] = field(default_factory=list)
    dead_keys: list[bytes] = field(default_factory=list)
    new_keys: list[bytes] = field(default_factory=list)


def _json_bytes(body: Json | None) -> bytes:
    return b"" if body is None else json.dumps(body, separators=(",", ":")).encode()


def credential_json(credential: Credential) -> Json:
    if credential.credential_type == CredentialType.basic:
        assert credential.identity is not None
        return {"type": "basic", "identity": b64(credential.identity)}
    return {"type": "x509", "certificates": [b64(c.cert_data) for c in credential.certificates or ()]}


def sender_json(sender: Any) -> Json:
    names = {1: "member", 2: "external", 3: "new_member_proposal", 4: "new_member_commit"}
    out: Json = {"type": names.get(sender.sender_type, str(sender.sender_type))}
    if sender.leaf_index is not None:
        out["leaf_index"] = sender.leaf_index
    if sender.sender_index is not None:
        out["sender_index"] = sender.sender_index
    return out


class GatewayService:
    """The API's operations over a store, a PKCS#11 key store and the wrap-key envelope."""

    def __init__(self, store: Store, keys: Pkcs11KeyStore, envelope: Envelope, *,
                 on_key_use: Callable[[AuditEvent], None] | None = None) -> None:
        self.store = store
        self.keys = keys
        self.envelope = envelope

        def hook(event: AuditEvent) -> None:
            if on_key_use is not None:
                on_key_use(event)
            audit.record_key_use(event)

        keys.set_audit_hook(hook)
        envelope.set_audit_hook(hook)

    # ---- transactions ------------------------------------------------------------------------------
    def replay(self, idem: Idempotency | None) -> Outcome | None:
        """The stored response of an earlier request with this key (409 when its body differed)."""
        if idem is None:
            return None
        with self.store.transaction() as tx:
            prior = tx.get_idempotent(idem.scope, idem.key)
        if prior is None:
            return None
        if prior.request_hash != idem.request_hash:
            raise conflict("this Idempotency-Key was used with a different request body")
        return Outcome(prior.status, json.loads(prior.body) if prior.body else None)

    def commit_work(self, work: Work, outcome: Outcome, idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        """Write everything of one request atomically, then destroy the keys it made dead."""
        try:
            with self.store.transaction() as tx:
                for write in work.writes:
                    write(tx)
                tx.add_audit(audit.take(records))
                if idem is not None:
                    if tx.get_idempotent(idem.scope, idem.key) is not None:
                        raise _Replayed()
                    tx.put_idempotent(idem.scope, idem.key,
                                      IdempotentResponse(idem.request_hash, outcome.status, _json_bytes(outcome.body)))
        except _Replayed:
            self._drop_keys(work.new_keys)
            replayed = self.replay(idem)
            assert replayed is not None
            return replayed
        except EpochConflict as e:
            self._drop_keys(work.new_keys)
            raise conflict(str(e)) from None
        except BaseException:
            self._drop_keys(work.new_keys)
            raise
        self._drop_keys(work.dead_keys)
        return outcome

    def write_audit(self, records: list[AuditRecord]) -> None:
        """Audit records of a failed request, in a transaction of their own."""
        pending = audit.take(records)
        if pending:
            with self.store.transaction() as tx:
                tx.add_audit(pending)

    def _drop_keys(self, refs: Sequence[bytes]) -> None:
        for ref in refs:
            try:
                self.keys.destroy(ref)
            except MLSError:
                log.warning("could not destroy key %s; it will be retried", ref.hex()[:16])

    @contextmanager
    def request(self, principal: Principal | None, request_id: str, **context: str) -> Iterator[list[AuditRecord]]:
        """The audit context of one request: caller context for the HSM hook and a record buffer."""
        ctx = {"request_id": request_id, **context}
        if principal is not None and principal.tenant_id is not None:
            ctx["tenant_id"] = principal.tenant_id
        with caller(**ctx), audit.collecting() as records:
            try:
                yield records
            finally:
                if records:
                    self.write_audit(records)

    # ---- tenants and tokens --------------------------------------------------------------------------
    def bootstrap_admin(self) -> str | None:
        """Create the first admin token if there is none; returns it (to be shown once)."""
        token = new_token()
        with self.store.transaction() as tx:
            if tx.count_admin_tokens() > 0:
                return None
            tx.add_token(new_id("tok"), None, token_hash(token))
        return token

    def authenticate(self, token: str) -> Principal | None:
        with self.store.transaction() as tx:
            record = tx.token_by_hash(token_hash(token))
        if record is None or record.revoked:
            return None
        return Principal(record.token_id, record.tenant_id)

    def create_tenant(self, name: str, idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        tenant = Tenant(new_id("tnt"), name)
        token = new_token()
        token_id = new_id("tok")
        work = Work([lambda tx: tx.add_tenant(tenant), lambda tx: tx.add_token(token_id, tenant.tenant_id, token_hash(token))])
        return self.commit_work(work, Outcome(201, {"tenant_id": tenant.tenant_id, "token": token}), idem, records)

    def list_tenants(self) -> Json:
        with self.store.transaction() as tx:
            tenants = tx.list_tenants()
        return {"tenants": [{"tenant_id": t.tenant_id, "name": t.name} for t in tenants]}

    def create_token(self, tenant_id: str, idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        with self.store.transaction() as tx:
            if tx.get_tenant(tenant_id) is None:
                raise not_found("tenant")
        token, token_id = new_token(), new_id("tok")
        work = Work([lambda tx: tx.add_token(token_id, tenant_id, token_hash(token))])
        return self.commit_work(work, Outcome(201, {"token_id": token_id, "token": token}), idem, records)

    def revoke_token(self, tenant_id: str, token_id: str) -> Outcome:
        with self.store.transaction() as tx:
            if not tx.revoke_token(tenant_id, token_id):
                raise not_found("token")
        return Outcome(204, None)

    # ---- identities ----------------------------------------------------------------------------------
    def identity(self, principal: Principal, identity_id: str) -> Identity:
        assert principal.tenant_id is not None
        with self.store.transaction() as tx:
            found = tx.get_identity(principal.tenant_id, identity_id)
        if found is None:
            raise not_found("identity")
        return found

    def identity_json(self, identity: Identity) -> Json:
        credential = Credential.from_bytes(identity.credential)
        return {
            "identity_id": identity.identity_id, "name": identity.name, "cipher_suite": identity.cipher_suite,
            "credential": credential_json(credential), "signature_public_key": b64(identity.signature_public_key),
            "custody": {"signature": identity.custody_signature, "hpke": identity.custody_hpke},
        }

    def create_identity(self, principal: Principal, name: str, suite: int, credential: Credential | None,
                        idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        assert principal.tenant_id is not None
        sig_custody, hpke_custody = self.keys.custody(suite)
        if sig_custody != "pkcs11":
            raise Problem("unsupported", f"the HSM cannot hold signature keys of cipher suite {suite}")
        credential = credential or Credential.basic(name.encode())
        signer = self.keys.new_signature_key(suite)
        identity = Identity(new_id("idn"), principal.tenant_id, name, suite, credential.to_bytes(), signer.key_ref,
                            signer.public_key, sig_custody, hpke_custody)
        work = Work([lambda tx: tx.add_identity(identity)], new_keys=[signer.key_ref])
        return self.commit_work(work, Outcome(201, self.identity_json(identity)), idem, records)

    def list_identities(self, principal: Principal) -> Json:
        assert principal.tenant_id is not None
        with self.store.transaction() as tx:
            found = tx.list_identities(principal.tenant_id)
        return {"identities": [self.identity_json(i) for i in found]}

    def delete_identity(self, principal: Principal, identity_id: str, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        with self.store.transaction() as tx:
            kps = tx.list_key_packages(identity_id)
            groups = tx.list_groups(identity_id)
        dead = [identity.signature_key_ref]
        dead += [r for kp in kps if not kp.consumed or kp.last_resort for r in (kp.init_key_ref, kp.leaf_key_ref)]
        for g in groups:
            dead += _group_keys(self._load(identity, g.group_id)[1])
        work = Work([lambda tx: tx.delete_identity(identity_id)], dead_keys=dead)
        return self.commit_work(work, Outcome(204, None), None, records)

    # ---- key packages -------------------------------------------------------------------------------
    def create_key_packages(self, principal: Principal, identity_id: str, count: int, last_resort: bool,
                            lifetime_days: int, idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        cs = cipher_suite(identity.cipher_suite)
        signer = self.keys.signer(identity.signature_key_ref)
        credential = Credential.from_bytes(identity.credential)
        work, out = Work(), []
        try:
            for _ in range(count):
                init_key = self.keys.new_hpke_key(cs.suite_id)
                work.new_keys.append(init_key.key_ref)
                leaf_key = self.keys.new_hpke_key(cs.suite_id)
                work.new_keys.append(leaf_key.key_ref)
                kp = create_key_package(cs, signer, init_key=init_key.public_key, encryption_key=leaf_key.public_key,
                                        credential=credential, lifetime=default_lifetime(lifetime_days))
                message = MLSMessage.of(kp).to_bytes()
                record = KeyPackageRecord(key_package_ref(cs, kp), identity_id, message, init_key.key_ref,
                                          leaf_key.key_ref, last_resort, False)
                work.writes.append(functools.partial(_add_key_package, record=record))
                out.append({"ref": b64(record.ref), "key_package": b64(message)})
        except BaseException:
            self._drop_keys(work.new_keys)
            raise
        return self.commit_work(work, Outcome(201, {"key_packages": out}), idem, records)

    def list_key_packages(self, principal: Principal, identity_id: str) -> Json:
        self.identity(principal, identity_id)
        with self.store.transaction() as tx:
            kps = tx.list_key_packages(identity_id)
        return {"key_packages": [{"ref": b64(k.ref), "consumed": k.consumed, "last_resort": k.last_resort} for k in kps]}

    # ---- groups: loading and saving --------------------------------------------------------------------
    def _load(self, identity: Identity, group_id: bytes) -> tuple[GroupRecord, Group]:
        with self.store.transaction() as tx:
            record = tx.get_group(identity.identity_id, group_id)
        if record is None:
            raise not_found("group")
        with self.group_context(identity, group_id, record.epoch):
            return self._open(identity, record)

    def _open(self, identity: Identity, record: GroupRecord) -> tuple[GroupRecord, Group]:
        group_id = record.group_id
        raw = self.envelope.open(record.state, _state_aad(identity.identity_id, group_id))
        group = Group(GroupState.from_bytes(raw, self.keys), self.keys, self._psk_store(identity))
        if record.pending is not None:
            group.pending_commit = _staged_from_bytes(
                self.envelope.open(record.pending, _pending_aad(identity.identity_id, group_id)), self.keys)
        return record, group

    # ---- external PSKs of an identity, sealed at rest -----------------------------------------------
    def _psk_store(self, identity: Identity, extra: Sequence[tuple[bytes, bytes]] = ()) -> MemoryPskStore:
        with self.store.transaction() as tx:
            sealed = tx.list_psks(identity.identity_id)
        known = {pid: self.envelope.open(blob, _psk_aad(identity.identity_id, pid)) for pid, blob in sealed}
        return MemoryPskStore(external={**known, **dict(extra)})

    def _remember_psks(self, work: Work, identity: Identity, psks: list[tuple[bytes, bytes]]) -> None:
        for psk_id, secret in psks:
            sealed = self.envelope.seal(secret, _psk_aad(identity.identity_id, psk_id))
            work.writes.append(functools.partial(_put_psk, identity_id=identity.identity_id, psk_id=psk_id,
                                                 sealed=sealed))

    def _record(self, identity: Identity, group: Group) -> GroupRecord:
        aad = _state_aad(identity.identity_id, group.group_id)
        pending = None
        if group.pending_commit is not None:
            pending = self.envelope.seal(_staged_to_bytes(group.pending_commit),
                                         _pending_aad(identity.identity_id, group.group_id))
        return GroupRecord(identity.identity_id, group.group_id, group.epoch, self.envelope.seal(group.to_bytes(), aad),
                           pending)

    def _save(self, work: Work, identity: Identity, group: Group, expected_epoch: int | None) -> None:
        record = self._record(identity, group)
        work.writes.append(lambda tx: tx.put_group(record, expected_epoch))

    @contextmanager
    def group_context(self, identity: Identity, group_id: bytes, epoch: int | None = None) -> Iterator[None]:
        ctx = {"identity_id": identity.identity_id, "group_id": group_id.hex()}
        if epoch is not None:
            ctx["epoch"] = str(epoch)
        with caller(**ctx):
            yield

    # ---- groups: operations --------------------------------------------------------------------------------
    def create_group(self, principal: Principal, identity_id: str, group_id: bytes | None, extensions: list[Extension],
                     external_senders: list[ExternalSender], idem: Idempotency | None,
                     records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        exts = list(extensions)
        if external_senders:
            exts.append(ExternalSenders(tuple(external_senders)).to_extension())
        signer = self.keys.signer(identity.signature_key_ref)
        with self.group_context(identity, group_id or b"", 0):
            group = Group.create(self.keys, identity.cipher_suite, signer=signer,
                                 credential=Credential.from_bytes(identity.credential), group_id=group_id,
                                 extensions=exts)
        work = Work(new_keys=[group.state.keys.leaf_key.key_ref])
        self._save(work, identity, group, None)
        return self.commit_work(work, Outcome(201, {"group_id": b64(group.group_id), "epoch": 0}), idem, records)

    def list_groups(self, principal: Principal, identity_id: str) -> Json:
        self.identity(principal, identity_id)
        with self.store.transaction() as tx:
            groups = tx.list_groups(identity_id)
        return {"groups": [{"group_id": b64(g.group_id), "epoch": g.epoch} for g in groups]}

    def get_group(self, principal: Principal, identity_id: str, group_id: bytes) -> Json:
        identity = self.identity(principal, identity_id)
        _, group = self._load(identity, group_id)
        s = group.state
        return {
            "group_id": b64(s.group_id), "epoch": s.epoch, "cipher_suite": s.cs.suite_id,
            "own_leaf_index": s.own_leaf, "epoch_authenticator": b64(group.epoch_authenticator),
            "tree_hash": b64(s.tree.tree_hash()), "active": s.active,
            "members": [{"leaf_index": i, "credential": credential_json(leaf.credential),
                         "signature_key": b64(leaf.signature_key)} for i, leaf in s.tree.leaves()],
            "pending_proposals": [{"ref": b64(p.ref), "type": _proposal_name(p.proposal.body),
                                   "sender": sender_json(p.sender)} for p in s.proposals.values()],
            "pending_commit": group.pending_commit is not None,
        }

    def delete_group(self, principal: Principal, identity_id: str, group_id: bytes, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        group = self._load(identity, group_id)[1]
        dead = [r for r in _group_keys(group) if r not in group.state.retained_keys]
        work = Work([lambda tx: _delete_group(tx, identity.identity_id, group_id)], dead_keys=dead)
        return self.commit_work(work, Outcome(204, None), None, records)

    def join(self, principal: Principal, identity_id: str, welcome: bytes, ratchet_tree: bytes | None,
             psks: list[tuple[bytes, bytes]], idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        w = MLSMessage.from_bytes(welcome).body
        if not isinstance(w, Welcome):
            raise invalid("welcome is not an MLSMessage carrying a Welcome")
        kp_record = self._key_package_for(identity, w)
        kp = MLSMessage.from_bytes(kp_record.key_package).body
        assert isinstance(kp, KeyPackage)
        store = self._psk_store(identity, psks)
        with self.group_context(identity, b"", None):
            group = Group.join(self.keys, welcome, key_package=kp, init_key=self.keys.hpke_key(kp_record.init_key_ref),
                               leaf_key=self.keys.hpke_key(kp_record.leaf_key_ref),
                               signer_ref=identity.signature_key_ref, ratchet_tree=ratchet_tree, psks=store,
                               destroy_init_key=False, retain_leaf_key=kp_record.last_resort)
        work = Work([lambda tx: _consume(tx, identity.identity_id, kp_record.ref)],
                    dead_keys=[] if kp_record.last_resort else [kp_record.init_key_ref])
        self._remember_psks(work, identity, psks)
        self._save(work, identity, group, None)
        body = {"group_id": b64(group.group_id), "epoch": group.epoch, "epoch_authenticator": b64(group.epoch_authenticator)}
        return self.commit_work(work, Outcome(201, body), idem, records)

    def _key_package_for(self, identity: Identity, welcome: Any) -> KeyPackageRecord:
        with self.store.transaction() as tx:
            for entry in welcome.secrets:
                record = tx.get_key_package(identity.identity_id, entry.new_member)
                if record is not None:
                    if record.consumed and not record.last_resort:
                        raise conflict("the key package of this Welcome was already consumed")
                    return record
        raise Problem("validation_failed", "the Welcome is for none of this identity's key packages", rule="12.4.3.1")

    def external_join(self, principal: Principal, identity_id: str, group_info: bytes, ratchet_tree: bytes | None,
                      remove_prior: bool, prior_leaf: int | None, psks: list[tuple[bytes, bytes]],
                      idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        if remove_prior and prior_leaf is None:
            prior_leaf = _prior_leaf(identity, group_info, ratchet_tree)
        remove_prior_leaf = prior_leaf if remove_prior or prior_leaf is not None else None
        store = self._psk_store(identity, psks)
        psk_ids = [PreSharedKeyID.external(pid, _nonce(identity.cipher_suite)) for pid, _ in psks]
        with self.group_context(identity, b"", None):
            group, commit = Group.external_join(
                self.keys, group_info, signer=self.keys.signer(identity.signature_key_ref),
                credential=Credential.from_bytes(identity.credential), ratchet_tree=ratchet_tree, psks=store,
                psk_ids=psk_ids, remove_prior=remove_prior_leaf)
        work = Work(new_keys=[group.state.keys.leaf_key.key_ref])
        self._remember_psks(work, identity, psks)
        self._save(work, identity, group, None)
        work.writes.append(lambda tx: tx.add_outgoing(identity.identity_id, group.group_id, group.epoch, "commit", commit))
        body = {"group_id": b64(group.group_id), "epoch": group.epoch, "commit": b64(commit)}
        return self.commit_work(work, Outcome(201, body), idem, records)

    def commit(self, principal: Principal, identity_id: str, group_id: bytes, opts: CommitOptions, pending: bool,
               adds: list[bytes], external_psks: list[tuple[bytes, bytes | None]],
               resumption: list[tuple[bytes, int]], idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        record, group = self._load(identity, group_id)
        opts.add = [_key_package(kp, f"add[{n}]") for n, kp in enumerate(adds)]
        opts.psks = self._psk_ids(identity, group, external_psks, resumption)
        with self.group_context(identity, group_id, group.epoch):
            staged = group.commit(opts)
        work = Work(new_keys=_new_leaf(group, staged))
        self._remember_psks(work, identity, [(pid, sec) for pid, sec in external_psks if sec is not None])
        body: Json = {
            "commit": b64(staged.commit or b""), "welcome": None if staged.welcome is None else b64(staged.welcome),
            "group_info": b64(staged.group_info or b""), "epoch": group.epoch if pending else staged.epoch,
        }
        if not pending:
            work.dead_keys = list(staged.dead_key_refs)
            group.merge_pending_commit(destroy_dead_keys=False)
        self._save(work, identity, group, record.epoch)
        message = staged.commit or b""
        work.writes.append(lambda tx: tx.add_outgoing(identity.identity_id, group_id, record.epoch, "commit", message))
        return self.commit_work(work, Outcome(200, body), idem, records)

    def _psk_ids(self, identity: Identity, group: Group, external: list[tuple[bytes, bytes | None]],
                 resumption: list[tuple[bytes, int]]) -> list[PreSharedKeyID]:
        """PreSharedKeyIDs with fresh nonces; secrets given inline join the group's PSK store."""
        store = group.psks
        assert isinstance(store, MemoryPskStore)
        out = []
        for psk_id, secret in external:
            if secret is not None:
                store.external[psk_id] = secret
            out.append(PreSharedKeyID.external(psk_id, _nonce(identity.cipher_suite)))
        for gid, epoch in resumption:
            out.append(PreSharedKeyID.resumption(ResumptionPSKUsage.application, gid, epoch, _nonce(identity.cipher_suite)))
            if gid != group.group_id:
                psk = self._load(identity, gid)[1].state.resumption_psks.get(epoch)
                if psk is None:
                    raise Problem("validation_failed", "no resumption PSK for that group and epoch", rule="8.6")
                store.resumption[(gid, epoch)] = psk
        return out

    def merge_pending(self, principal: Principal, identity_id: str, group_id: bytes, idem: Idempotency | None,
                      records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        record, group = self._load(identity, group_id)
        if group.pending_commit is None:
            raise conflict("there is no pending commit")
        work = Work(dead_keys=list(group.pending_commit.dead_key_refs))
        group.merge_pending_commit(destroy_dead_keys=False)
        self._save(work, identity, group, record.epoch)
        return self.commit_work(work, Outcome(200, {"epoch": group.epoch}), idem, records)

    def discard_pending(self, principal: Principal, identity_id: str, group_id: bytes, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        record, group = self._load(identity, group_id)
        staged = group.pending_commit
        if staged is None:
            raise conflict("there is no pending commit")
        work = Work(dead_keys=_new_leaf(group, staged))
        group.pending_commit = None
        self._save(work, identity, group, record.epoch)
        return self.commit_work(work, Outcome(204, None), None, records)

    def propose(self, principal: Principal, identity_id: str, group_id: bytes, spec: dict[str, Any],
                handshake: Handshake, idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        record, group = self._load(identity, group_id)
        work = Work()
        with self.group_context(identity, group_id, group.epoch):
            if spec["kind"] == "update":
                message, ref = group.propose_update(handshake)
                work.new_keys = list(group.state.update_keys.values())[-1:]
            else:
                message, ref = group.propose(self._proposal(identity, group, spec), handshake)
        if spec["kind"] == "psk" and spec["secret"] is not None:
            self._remember_psks(work, identity, [(spec["psk_id"], spec["secret"])])
        self._save(work, identity, group, record.epoch)
        work.writes.append(lambda tx: tx.add_outgoing(identity.identity_id, group_id, group.epoch, "proposal", message))
        return self.commit_work(work, Outcome(201, {"proposal": b64(message), "ref": b64(ref)}), idem, records)

    def _proposal(self, identity: Identity, group: Group, spec: dict[str, Any]) -> Proposal:
        kind = spec["kind"]
        if kind == "add":
            return Proposal.of(AddProposal(_key_package(spec["key_package"], "key_package")))
        if kind == "remove":
            return Proposal.of(Remove(spec["leaf_index"]))
        if kind == "psk":
            return Proposal.of(PreSharedKey(self._psk_ids(identity, group, [(spec["psk_id"], spec["secret"])], [])[0]))
        return Proposal.of(GroupContextExtensions(tuple(spec["extensions"])))

    def send(self, principal: Principal, identity_id: str, group_id: bytes, items: list[tuple[bytes, bytes]],
             batch: bool, idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        record, group = self._load(identity, group_id)
        with self.group_context(identity, group_id, group.epoch):
            messages = group.protect_many(items)
        work = Work()
        self._save(work, identity, group, record.epoch)
        epoch = group.epoch
        work.writes.append(lambda tx: _add_outgoing_many(tx, identity.identity_id, group_id, epoch, messages))
        body = {"messages": [b64(m) for m in messages]} if batch else {"message": b64(messages[0])}
        return self.commit_work(work, Outcome(200, body), idem, records)

    def process(self, principal: Principal, identity_id: str, group_id: bytes, messages: list[bytes], batch: bool,
                idem: Idempotency | None, records: list[AuditRecord]) -> Outcome:
        identity = self.identity(principal, identity_id)
        record, group = self._load(identity, group_id)
        results: list[Json] = []
        work = Work()
        with self.group_context(identity, group_id, group.epoch):
            for message in messages:
                results.append(self._process_one(group, message, work, batch))
        self._save(work, identity, group, record.epoch)
        body = {"results": results} if batch else results[0]
        return self.commit_work(work, Outcome(200, body), idem, records)

    def _process_one(self, group: Group, message: bytes, work: Work, batch: bool) -> Json:
        if group.pending_commit is not None:
            problem = conflict("a pending commit must be merged or discarded first")
            if not batch:
                raise problem
            return problem.document()
        try:
            result = group.process(message)
            if isinstance(result, StagedCommit):
                work.dead_keys += result.dead_key_refs
                group.merge(result, destroy_dead_keys=False)
        except MLSError as e:
            if not batch:
                raise
            return problem_from_exception(e).document()
        return _result_json(result, group)

    def group_info(self, principal: Principal, identity_id: str, group_id: bytes, records: list[AuditRecord]) -> Json:
        identity = self.identity(principal, identity_id)
        _, group = self._load(identity, group_id)
        with self.group_context(identity, group_id, group.epoch):
            info = group.group_info(with_ratchet_tree=False)
        self.write_audit(records)
        return {"group_info": b64(info), "ratchet_tree": b64(group.state.tree.encode())}

    def export(self, principal: Principal, identity_id: str, group_id: bytes, label: str, context: bytes,
               length: int) -> Json:
        identity = self.identity(principal, identity_id)
        _, group = self._load(identity, group_id)
        return {"secret": b64(group.export(label, context, length))}


class _Replayed(Exception):
    pass


def _nonce(suite: int) -> bytes:
    return os.urandom(cipher_suite(suite).n_h)


def _group_keys(group: Group) -> list[bytes]:
    """Every private key this membership holds: leaf key, own Update keys, a pending commit's new leaf key."""
    s = group.state
    refs = [s.keys.leaf_key.key_ref, *s.update_keys.values()]
    if group.pending_commit is not None:
        refs += _new_leaf(group, group.pending_commit)
    return refs


def _new_leaf(group: Group, staged: StagedCommit) -> list[bytes]:
    if staged.state is None:
        return []
    ref = staged.state.keys.leaf_key.key_ref
    return [] if ref == group.state.keys.leaf_key.key_ref else [ref]


def _put_psk(tx: Transaction, identity_id: str, psk_id: bytes, sealed: bytes) -> None:
    tx.put_psk(identity_id, psk_id, sealed)


def _psk_aad(identity_id: str, psk_id: bytes) -> bytes:
    return b"mls-gateway psk|" + identity_id.encode() + b"|" + psk_id


def _key_package(data: bytes, field: str) -> KeyPackage:
    kp = MLSMessage.from_bytes(data).body
    if not isinstance(kp, KeyPackage):
        raise invalid(f"{field} is not an MLSMessage carrying a KeyPackage")
    return kp


def _add_key_package(tx: Transaction, record: KeyPackageRecord) -> None:
    tx.add_key_package(record)


def _add_outgoing_many(tx: Transaction, identity_id: str, group_id: bytes, epoch: int, messages: list[bytes]) -> None:
    for m in messages:
        tx.add_outgoing(identity_id, group_id, epoch, "application", m)


def _consume(tx: Transaction, identity_id: str, ref: bytes) -> None:
    if not tx.mark_key_package_consumed(identity_id, ref):
        raise conflict("the key package of this Welcome was already consumed")


def _delete_group(tx: Transaction, identity_id: str, group_id: bytes) -> None:
    if not tx.delete_group(identity_id, group_id):
        raise not_found("group")


def _state_aad(identity_id: str, group_id: bytes) -> bytes:
    return b"mls-gateway group state|" + identity_id.encode() + b"|" + group_id


def _pending_aad(identity_id: str, group_id: bytes) -> bytes:
    return b"mls-gateway pending commit|" + identity_id.encode() + b"|" + group_id


def _result_json(result: Any, group: Group) -> Json:
    if isinstance(result, ApplicationMessage):
        return {"kind": "application", "sender": sender_json(result.sender), "data": b64(result.data),
                "authenticated_data": b64(result.authenticated_data), "epoch": result.epoch}
    if isinstance(result, ProposalMessage):
        body = result.proposal.body
        return {"kind": "proposal", "sender": sender_json(result.sender), "ref": b64(result.ref),
                "proposal_type": _proposal_name(body), "epoch": result.epoch}
    assert isinstance(result, StagedCommit)
    return {"kind": "commit", "sender": sender_json(result.sender), "epoch": group.epoch,
            "removed": result.removed_self, "epoch_authenticator": b64(group.epoch_authenticator)}


def _proposal_name(body: Any) -> str:
    """The API's name of a proposal type (api-v1: add, update, remove, psk, reinit, ...)."""
    names = {AddProposal: "add", Update: "update", Remove: "remove", PreSharedKey: "psk", ReInit: "reinit",
             ExternalInit: "external_init", GroupContextExtensions: "group_context_extensions"}
    return names.get(type(body), type(body).__name__.lower())


def _prior_leaf(identity: Identity, group_info: bytes, ratchet_tree: bytes | None) -> int:
    """The identity's own leaf in the group a resync rejoins: the leaf with its signature key."""
    gi = MLSMessage.from_bytes(group_info).body
    if not isinstance(gi, GroupInfo):
        raise invalid("group_info is not an MLSMessage carrying a GroupInfo")
    tree = tree_from_group_info(cipher_suite(gi.group_context.cipher_suite), gi, ratchet_tree)
    for index, leaf in tree.leaves():
        if leaf.signature_key == identity.signature_public_key:
            return index
    raise Problem("validation_failed", "remove_prior: this identity has no leaf in that group", rule="12.4.3.2")


def _staged_to_bytes(staged: StagedCommit) -> bytes:
    assert staged.state is not None
    return json.dumps({
        "state": staged.state.to_state(), "content": staged.content.hex(),
        "commit": (staged.commit or b"").hex(), "welcome": None if staged.welcome is None else staged.welcome.hex(),
        "group_info": (staged.group_info or b"").hex(), "dead": [r.hex() for r in staged.dead_key_refs],
        "sender_leaf": staged.sender.leaf_index,
    }).encode()


def _staged_from_bytes(data: bytes, keys: Pkcs11KeyStore) -> StagedCommit:
    d = json.loads(data)
    state = GroupState.from_bytes(json.dumps(d["state"]).encode(), keys)
    return StagedCommit(
        state, Sender.member(d["sender_leaf"]), [], bytes.fromhex(d["content"]), bytes.fromhex(d["commit"]),
        None if d["welcome"] is None else bytes.fromhex(d["welcome"]), bytes.fromhex(d["group_info"]),
        None, [bytes.fromhex(r) for r in d["dead"]],
    )


__all__ = ["GatewayService", "Idempotency", "Outcome"]
