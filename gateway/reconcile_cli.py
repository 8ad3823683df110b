"""``mls-gateway keys reconcile [--dry-run] [--json] [--grace-s S]``: orphaned keys, from the command line.

Opens the data folder's store and token (beside a running gateway or not) and runs
:class:`gateway.reconciliation.Reconciler`: with a grace above zero (default ``[gateway]
reconcile_grace_s``) a first pass notes the orphans, the command waits the grace, and a second pass
destroys those still orphaned; ``--grace-s 0`` destroys in one pass (for a stopped gateway: a key an
in-flight request made is not referenced yet). ``--dry-run`` lists what one pass would destroy under the
grace (everything orphaned, with ``--grace-s 0``) and destroys nothing. Prints the report (``--json``:
one JSON object); exit code 1 when the references could not all be read (nothing destroyed).
"""

from __future__ import annotations

import json
import sys
import time

from hsm.errors import HsmUnavailable
from mls import MLSError

from .app import close_runtime, open_runtime
from .config import GatewayConfig
from .reconciliation import Reconciler, ReconcileReport, ReferencesUnreadable
from .store import StoreUnavailable


def reconcile_command(
    cfg: GatewayConfig, module_path: str, *, dry_run: bool, as_json: bool, grace_s: float | None
) -> int:
    """Run the reconciliation of ``cfg``'s data folder; prints the report; returns the exit code."""
    grace = cfg.reconcile_grace_s if grace_s is None else grace_s
    rt = open_runtime(cfg, module_path)
    try:
        report = _passes(Reconciler.of(rt, grace), dry_run, grace)
    except (ReferencesUnreadable, HsmUnavailable, StoreUnavailable, MLSError) as e:
        print(f"mls-gateway: reconciliation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        close_runtime(rt)
    _print(report, as_json)
    return 0


def _passes(reconciler: Reconciler, dry_run: bool, grace: float) -> ReconcileReport:
    first = reconciler.run(dry_run=dry_run)
    if dry_run or grace <= 0 or not len(reconciler.tracker):
        return first
    print(f"{first.summary()}; second pass in {grace:g} s", file=sys.stderr, flush=True)
    time.sleep(grace)
    return reconciler.run()


def _print(report: ReconcileReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json()), flush=True)
        return
    print(report.summary())
    verb = "would destroy" if report.dry_run else "destroyed"
    for ref in report.destroyed:
        print(f"{verb} {ref.hex()}")
    for ref in report.failed:
        print(f"failed {ref.hex()}")


__all__ = ["reconcile_command"]
