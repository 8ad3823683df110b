#!/usr/bin/env bash
# Installs everything the project needs on a Debian machine, idempotently:
#   1. Debian packages (softhsm2, OpenSSL headers, a C compiler, Python venv/headers, Node.js for peers,
#      Prometheus and promtool for tests/deploy: the tests run their own; Debian also enables prometheus.service;
#      systemd for systemd-analyze, which scores the shipped unit; PostgreSQL 15, whose server binaries the
#      tests and benchmarks run throw-away clusters with — Debian also enables postgresql.service, unused here;
#      yq, with which tests/deploy reads the compose files as YAML, anchors and merge keys resolved),
#   2. a virtual environment in .venv with the project (and its C extension) installed editable, with dev tools.
# Re-running it is cheap: apt is only called for missing packages, pip only when the inputs changed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root (or sudo) to run: $*"; exit 1; fi
}

# ---- 1. Debian packages -------------------------------------------------------------------------------
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in softhsm2 opensc libssl-dev gcc libc6-dev pkg-config ca-certificates curl jq prometheus systemd \
    postgresql-15 yq; do
  have_pkg "$pkg" || need+=("$pkg")
done
PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then
  need+=(python3 python3-venv python3-dev)
else
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
  "$PYTHON" -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
    2>/dev/null || need+=(python3-dev)
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  need+=(nodejs npm)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
  log "Python >= 3.11 is required"; exit 1; }

# ---- 2. virtual environment ---------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp_inputs=$(shopt -s nullglob; for f in pyproject.toml setup.py native/csrc/*.c native/csrc/*.h native/build.py; do
  if [ -f "$f" ]; then sha256sum "$f"; fi; done | sha256sum | cut -c1-16)
stamp=".venv/.installed-$stamp_inputs"
if [ ! -f "$stamp" ]; then
  log "installing the project and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -e '.[dev]' > .venv/pip-install.log 2>&1 || {
    tail -n 60 .venv/pip-install.log >&2; log "pip install failed (full log: .venv/pip-install.log)"; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# ---- 3. Node packages of the interop peer (ts-mls) ----------------------------------------------------
bash tests/interop/install.sh

log "ready: $(.venv/bin/python --version), crypto backend: $(.venv/bin/python -c 'from gateway.app import gateway_crypto_backend; print(gateway_crypto_backend().name)')"
