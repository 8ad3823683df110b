"""``mls-gateway keys rotate-kek`` and ``mls-gateway keys keks``: KEK rotation from the command line.

``rotate-kek [--kind all|envelope|custody]`` opens the data folder's store and token (beside a running
gateway or not), makes the next KEK version of each kind current (:meth:`gateway.kek_rotation.KekRotation.
rotate`), re-wraps every blob under it, waits out ``[hsm] kek_retire_grace_s`` (the time running gateways
have to notice the new KEK), re-wraps what they sealed meanwhile and destroys the old KEKs in the token.
``--no-wait`` only rotates: the running gateway re-wraps and destroys in the background. ``--resume``
makes no new version and finishes a pending rotation (after a crash of the command, say). ``keys keks``
lists every KEK version with its state and the blobs naming it. Exit code 1 when the token or the store
is unavailable, or when blobs still name an old KEK at the end (they did not open: see the log).
"""

from __future__ import annotations

import argparse
import json
import sys

from hsm.errors import HsmError
from mls import MLSError

from .app import close_runtime, open_runtime
from .config import GatewayConfig
from .kek_rotation import KINDS, KekRotation, KekRotationError, RotationReport
from .store import StoreUnavailable


def kek_command(cfg: GatewayConfig, module_path: str, args: argparse.Namespace) -> int:
    """Run ``keys rotate-kek`` or ``keys keks`` on ``cfg``'s data folder; returns the exit code."""
    rt = open_runtime(cfg, module_path)
    try:
        rotation = rt.kek_rotation
        assert rotation is not None
        if args.keys_command == "keks":
            _print_keks(rotation, args.json)
            return 0
        report = _rotate(rotation, args)
    except (HsmError, StoreUnavailable, MLSError, KekRotationError) as e:
        print(f"mls-gateway: KEK rotation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        close_runtime(rt)
    print(json.dumps(report.to_json()) if args.json else report.summary(), flush=True)
    return 1 if not args.no_wait and any(report.remaining.values()) else 0


def _rotate(rotation: KekRotation, args: argparse.Namespace) -> RotationReport:
    kinds = KINDS if args.kind == "all" else (args.kind,)
    created = [] if args.resume else rotation.rotate(kinds)
    if args.no_wait:
        report = RotationReport(created=created)
        report.remaining = rotation.remaining()
        return report
    if created:
        print(f"KEK rotation: {', '.join(created)} current; re-wrapping", file=sys.stderr, flush=True)
    report = rotation.run()
    report.created = created
    return report


def _print_keks(rotation: KekRotation, as_json: bool) -> None:
    references = rotation.references()
    rows = [
        {
            "label": r.label,
            "kind": r.kind,
            "version": r.version,
            "state": r.state,
            "created_at": r.created_at,
            "retired_at": r.retired_at,
            "destroyed_at": r.destroyed_at,
            "blobs": references.get((r.kind, r.label), 0),
        }
        for r in rotation.keks()
    ]
    if as_json:
        print(json.dumps({"keks": rows}), flush=True)
        return
    for row in rows:
        print(f"{row['kind']:8} {row['label']:16} {row['state']:9} {row['blobs']} blobs")


__all__ = ["kek_command"]
