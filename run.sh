#!/usr/bin/env bash
# Installs everything, then runs the gateway on its embedded defaults: a SQLite database and a SoftHSM2
# token in ./data (override with MLSGW_DATA_DIR), listening on 127.0.0.1:8080 (MLSGW_LISTEN).
# On the first start it prints the admin token once. Stop it with Ctrl-C (or SIGTERM).
set -euo pipefail
cd "$(dirname "$0")"
./deploy/bootstrap.sh
exec .venv/bin/mls-gateway serve --data-dir "${MLSGW_DATA_DIR:-data}" --listen "${MLSGW_LISTEN:-127.0.0.1:8080}" "$@"
