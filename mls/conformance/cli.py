"""The conformance runner's command line: ``python -m mls.conformance PATH [PATH ...] [--json] [--verbose]``

Runs every recognised MLS test-vector file under the given files or folders and prints the crypto backend
it runs on (``crypto backend: NAME``), one line per file, ``NAME: P passed, F failed, S skipped``, then
``P passed, F failed`` alone on the last line (``--json``: one object, the backend under ``"backend"``).
Exits 1 when any case failed.

The run uses the backend installed in the process (:func:`mls.crypto.backend.get_backend`: the
pure-Python one when run alone); an application passes the one it chose to :func:`main`
(``mls-gateway conformance --backend auto|python|native``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mls.conformance.runner import FileResult, run_file, vector_files
from mls.crypto.backend import CryptoBackend, get_backend, set_backend


def main(argv: list[str] | None = None, backend: CryptoBackend | None = None) -> int:
    """Run the vectors named in ``argv`` on ``backend`` (installed for the run, the previous one restored
    after), or on the backend installed when it is None."""
    ap = argparse.ArgumentParser(prog="python -m mls.conformance", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="vector files or folders")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every failure and skip")
    args = ap.parse_args(argv)
    previous = get_backend()
    if backend is not None:
        set_backend(backend)
    try:
        return _run(args.paths, args.json, args.verbose)
    finally:
        set_backend(previous)


def _run(paths: list[Path], as_json: bool, verbose: bool) -> int:
    backend_name = get_backend().name
    if not as_json:
        print(f"crypto backend: {backend_name}", flush=True)
    results: list[FileResult] = []
    for path, root in vector_files(paths):
        res = run_file(path, root)
        results.append(res)
        if not as_json:
            print(f"{res.name}: {res.passed} passed, {res.failed} failed, {res.skipped} skipped", flush=True)
            details = res.failures + (res.skips if verbose else [])
            for line in details[: None if verbose else 5]:
                print(f"    {line}")
            if not verbose and len(res.failures) > 5:
                print(f"    … {len(res.failures) - 5} more failures (use --verbose)")
    passed = sum(r.passed for r in results)
    failed = sum(r.failed for r in results)
    skipped = sum(r.skipped for r in results)
    if as_json:
        json.dump(
            {
                "backend": backend_name,
                "files": [r.as_json() for r in results],
                "passed": passed,
                "failed": failed,
                "skipped": skipped,
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
