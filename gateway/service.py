"""The gateway's operations (api-v1.md), independent of HTTP, wired together over one store and token.

:class:`GatewayService` builds one object per resource — :class:`~gateway.tenants.Tenants`,
:class:`~gateway.identities.Identities`, :class:`~gateway.key_packages.KeyPackages`,
:class:`~gateway.groups.Groups`, :class:`~gateway.group_operations.GroupOperations` — around the shared
plumbing: :class:`~gateway.persistence.Persistence` (one transaction per request, idempotent replay,
keys destroyed after commit), :class:`~gateway.sealed_state.StateSealer` (state at rest under the wrap
key) and :class:`~gateway.group_session.GroupSessions` (one unit of work per group operation). The
HTTP handlers (:mod:`gateway.api`) call those objects in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable

from hsm.audit import AuditEvent
from hsm.envelope import Envelope
from hsm.keystore import Pkcs11KeyStore

from . import audit
from .auth import Principal
from .clients import Clients
from .credential_policy import CredentialPolicies
from .delivery_metrics import DeliveryMetrics
from .delivery_store import HostedWork
from .group_log import Appended, GroupLog
from .group_operations import GroupOperations
from .group_session import GroupSessions
from .groups import Groups
from .hosted_delivery import HostedDelivery
from .hosted_submission import HostedSubmission
from .identities import Identities
from .key_directory import KeyDirectory
from .key_packages import KeyPackages
from .log_operations import LogOperations
from .persistence import Persistence
from .sealed_state import StateSealer
from .store import Store
from .tenant_deletion import TenantDeletion
from .tenants import Tenants
from .wakeups import Wakeups


class GatewayService:
    """The API's operations over a store, a PKCS#11 key store and the wrap-key envelope."""

    def __init__(
        self,
        store: Store,
        keys: Pkcs11KeyStore,
        envelope: Envelope,
        *,
        on_key_use: Callable[[AuditEvent], None] | None = None,
    ) -> None:
        def hook(event: AuditEvent) -> None:
            if on_key_use is not None:
                on_key_use(event)
            audit.record_key_use(event)

        keys.set_audit_hook(hook)
        envelope.set_audit_hook(hook)
        self.persistence = Persistence(store, keys, envelope)
        #: Wakes long-polls and WebSockets when a mailbox or an inbox got something (api-delivery.md).
        self.wakeups = Wakeups()
        sessions = GroupSessions(store, StateSealer(envelope, keys), self.persistence)
        self.credential_policies = CredentialPolicies(store)
        sessions.leaf_policy = self.credential_policies.leaf_policy
        self.tenants = Tenants(store, self.persistence)
        self.identities = Identities(store, keys, sessions)
        sessions.membership_quota = lambda tx, iid, gid: self.identities.quotas.check_new_membership(
            tx, iid, gid
        )
        self.tenant_deletion = TenantDeletion(store, self.persistence, self.identities)
        self.tenant_deletion.on_deleted = self.credential_policies.forget_tenant
        self.key_packages = KeyPackages(store, keys, self.identities, self.persistence)
        self.key_packages.leaf_policy = self.credential_policies.leaf_policy
        self.groups = Groups(store, keys, self.identities, sessions)
        self.clients = Clients(store, self.persistence)
        self.key_directory = KeyDirectory(
            store, self.clients, self.identities, self.key_packages, self.persistence
        )
        self.key_directory.tenant_policy = self.credential_policies.leaf_policy
        self._wire_group_service(store, sessions)

    def _wire_group_service(self, store: Store, sessions: GroupSessions) -> None:
        """The group service (api-delivery.md): the logs, hosted delivery, hosted submissions."""
        #: Set by the app: advances hosted memberships in the background (gateway.hosted_worker).
        self.schedule_hosted: Callable[[list[HostedWork]], None] = lambda work: None
        #: Set by the app: the delivery metrics.
        self.delivery_metrics: DeliveryMetrics | None = None
        self.group_log = GroupLog()
        self.hosted = HostedDelivery(store, sessions, self.wakeups.notify)
        self.hosted.joiner = self.groups.join_session
        self.groups.hosted = self.hosted
        submission = HostedSubmission(store, self.group_log, self.hosted, self.after_append)
        self.groups.submission = submission
        self.group_operations = GroupOperations(self.identities, self.persistence, submission)
        self.log_operations = LogOperations(store, self.group_log, self.persistence, self.after_append)
        self.log_operations.on_commit_rejected = self.commit_rejected
        self.group_operations.on_commit_rejected = self.commit_rejected
        self.group_operations.on_lost_race = self.lost_race

    def commit_rejected(self, reason: str) -> None:
        """Count a commit the log refused (api-delivery.md metrics: commits rejected by reason)."""
        if self.delivery_metrics is not None:
            self.delivery_metrics.commits.labels(reason).inc()

    def lost_race(self, operation: str) -> None:
        """Count a hosted operation that lost a race and runs again."""
        if self.delivery_metrics is not None:
            self.delivery_metrics.lost_races.labels(operation).inc()

    def after_append(self, appended: Appended) -> None:
        """After an append committed: wake the clients' readers, advance the hosted members, count."""
        self.wakeups.notify(appended.clients)
        self.schedule_hosted(appended.hosted)
        if self.delivery_metrics is not None:
            for kind in appended.kinds:
                self.delivery_metrics.log_appends.labels(kind).inc()
            if "commit" in appended.kinds:
                self.delivery_metrics.commits.labels("accepted").inc()

    def bootstrap_admin(self) -> str | None:
        """Create the first admin token if there is none; returns it (to be shown once)."""
        return self.tenants.bootstrap_admin()

    def authenticate(self, token: str) -> Principal | None:
        """Who holds this bearer token (``None`` for an unknown or revoked one)."""
        return self.tenants.authenticate(token)


__all__ = ["GatewayService"]
