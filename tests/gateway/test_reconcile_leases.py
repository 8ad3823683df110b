"""Key reconciliation with several processes (gateway.reconciliation under gateway.leases): a key made for a
request still in flight — by any process: the token and the store are shared — is never destroyed by the
reconciling process within the grace; a new holding period of the lease starts its grace afresh; a process
that lost the lease destroys nothing more. Real SoftHSM2 and SQLite (the app of ``serve`` in this
process); the grace's clock is a test clock, so nothing here waits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.reconciliation import Reconciler

from .mailbox_helpers import Local, local_gateway

GRACE_S = 600.0


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    with local_gateway(tmp_path_factory.mktemp("reconcile")) as gw:
        yield gw


def reconciler(local: Local, now: list[float]) -> Reconciler:
    rt = local.runtime
    return Reconciler(
        rt.store, rt.keys, rt.token, rt.service.identities.sessions, grace_s=GRACE_S, clock=lambda: now[0]
    )


def in_flight_key(local: Local) -> bytes:
    """A key made for a request whose transaction has not committed yet (another process's, say)."""
    return local.runtime.keys.new_signature_key(1).key_ref


def still_there(local: Local, ref: bytes) -> bool:
    """Whether the key still exists (an orphan a zero-grace dry run would destroy)."""
    rt = local.runtime
    probe = Reconciler(rt.store, rt.keys, rt.token, rt.service.identities.sessions, grace_s=0)
    return ref in probe.run(dry_run=True).destroyed


def test_an_in_flight_key_survives_until_the_grace_passed_in_one_holding_period(local: Local) -> None:
    now = [1000.0]
    ref = in_flight_key(local)
    holder = reconciler(local, now)
    assert ref not in holder.run().destroyed  # first sighting: never at once
    now[0] += GRACE_S / 2
    assert ref not in holder.run().destroyed  # within the grace: the request may still commit
    # The lease moves: the new holder's grace starts from its own first sighting.
    new_holder = reconciler(local, now)
    now[0] += GRACE_S
    assert ref not in new_holder.run().destroyed
    # A holder that lost its lease stops before destroying anything.
    holder.guard = lambda: False
    assert holder.run().destroyed == []
    assert still_there(local, ref)
    # The holder still holding it, past the grace in every run since: destroyed (it was an orphan).
    holder.guard = lambda: True
    assert ref in holder.run().destroyed
