"""``python -m mls.conformance PATH [PATH ...] [--json] [--verbose]``

Runs every recognised MLS test-vector file under the given files or folders and prints one line per file,
``NAME: P passed, F failed, S skipped``, then ``P passed, F failed`` alone on the last line. Exits 1 when
any case failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mls.conformance import FileResult, run_file, vector_files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mls.conformance", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="vector files or folders")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every failure and skip")
    args = ap.parse_args(argv)

    results: list[FileResult] = []
    for path, root in vector_files(args.paths):
        res = run_file(path, root)
        results.append(res)
        if not args.json:
            print(f"{res.name}: {res.passed} passed, {res.failed} failed, {res.skipped} skipped", flush=True)
            details = res.failures + (res.skips if args.verbose else [])
            for line in details[: None if args.verbose else 5]:
                print(f"    {line}")
            if not args.verbose and len(res.failures) > 5:
                print(f"    … {len(res.failures) - 5} more failures (use --verbose)")
    passed = sum(r.passed for r in results)
    failed = sum(r.failed for r in results)
    skipped = sum(r.skipped for r in results)
    if args.json:
        json.dump(
            {"files": [r.as_json() for r in results], "passed": passed, "failed": failed, "skipped": skipped},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
