#!/usr/bin/env bash
# Installs the ts-mls interop peer's Node dependencies (tests/interop/node_modules) from the pinned
# package-lock.json. Idempotent: runs `npm ci` only when node_modules is missing or was installed from a
# different package.json / package-lock.json / Node version. Exits non-zero with a clear message when
# node or npm is missing or too old.
set -euo pipefail
cd "$(dirname "$0")"
# One install at a time (test processes running in parallel may each call this): a lock on this folder.
exec 9<.
flock 9

need_major=20
need_minor=19  # @noble/* 2.x declare engines "node >= 20.19.0"

if ! command -v node >/dev/null 2>&1; then
    echo "tests/interop/install.sh: 'node' not found on PATH; the ts-mls interop tests need Node.js >= ${need_major}.${need_minor} (e.g. apt-get install nodejs npm)" >&2
    exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "tests/interop/install.sh: 'npm' not found on PATH; the ts-mls interop tests need npm to install ts-mls (e.g. apt-get install npm)" >&2
    exit 1
fi

node_version=$(node --version)
IFS=. read -r major minor _ <<<"${node_version#v}"
if (( major < need_major || (major == need_major && minor < need_minor) )); then
    echo "tests/interop/install.sh: Node.js ${node_version} is too old; the ts-mls interop tests need >= ${need_major}.${need_minor}" >&2
    exit 1
fi

stamp_file=node_modules/.mls-interop-install-stamp
want_stamp=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)" node-${node_version}"

if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$want_stamp" && -f node_modules/ts-mls/package.json ]]; then
    exit 0
fi

echo "tests/interop/install.sh: installing the ts-mls peer's dependencies (npm ci)" >&2
if ! npm ci --no-audit --no-fund >&2; then
    echo "tests/interop/install.sh: 'npm ci' failed in tests/interop (is the npm registry reachable?)" >&2
    exit 1
fi
# A sanity check that the pinned library loads under this Node.
if ! node --input-type=module -e 'import("ts-mls").then(() => process.exit(0), (e) => { console.error(e); process.exit(1); })' >&2; then
    echo "tests/interop/install.sh: ts-mls was installed but does not load under Node ${node_version}" >&2
    exit 1
fi
printf '%s\n' "$want_stamp" >"$stamp_file"
