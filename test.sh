#!/usr/bin/env bash
# Installs everything, then runs the whole test suite: lint and format (ruff), types (mypy), pytest.
set -euo pipefail
cd "$(dirname "$0")"
./deploy/bootstrap.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# One test process per CPU, each test file whole in one of them (tests/conftest.py: work_unit); ./test.sh -n 0
# runs everything in this process.
exec .venv/bin/python -m pytest -n auto "$@"
