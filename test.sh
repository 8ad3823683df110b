#!/usr/bin/env bash
# Installs everything, then runs the whole test suite: lint (ruff), types (mypy), pytest.
set -euo pipefail
cd "$(dirname "$0")"
./deploy/bootstrap.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
