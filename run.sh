#!/usr/bin/env bash
# Installs everything, then runs the project's main job.
# Until the gateway service lands, the main job is the RFC 9420 conformance run over the shared test vectors.
set -euo pipefail
cd "$(dirname "$0")"
./deploy/bootstrap.sh
VECTORS=${MLS_TEST_VECTORS:-../shared/mls-test-vectors}
exec .venv/bin/python -m mls.conformance "$VECTORS" "$@"
