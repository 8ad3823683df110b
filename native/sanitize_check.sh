#!/bin/sh
# Run the native tests against a copy of the extension built with AddressSanitizer and UBSan.
#
#   native/sanitize_check.sh [extra pytest arguments]
#
# Needs gcc with libasan/libubsan (Debian: gcc) and the project's venv (.venv, or $PYTHON). Nothing in
# the source tree changes: the sanitized extension and a copy of native/*.py go to a temporary
# directory that is put first on PYTHONPATH, so `import native` finds them before the editable install.
# CPython itself is not instrumented, so libasan is preloaded and leak detection is off (CPython keeps
# objects alive until exit by design). Any ASan or UBSan report aborts the run with a non-zero status.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-"$ROOT/.venv/bin/python"}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mls-native-asan.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

echo "== building sanitized extension in $WORK"
cd "$ROOT"
MLS_NATIVE_SANITIZE=1 "$PYTHON" native/build.py "$WORK/build" >"$WORK/build.log" 2>&1 || {
    cat "$WORK/build.log"
    exit 1
}
mkdir -p "$WORK/pkg/native"
cp native/*.py "$WORK/pkg/native/"
find "$WORK/build" -name '_mlsnative*.so' -exec cp {} "$WORK/pkg/native/" \;

LIBASAN=$(gcc -print-file-name=libasan.so)
export LD_PRELOAD="$LIBASAN"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Every Python allocation through malloc, so ASan also guards bytes objects handed to C (pymalloc's
# arenas would hide an overrun into a neighbouring object).
export PYTHONMALLOC=malloc
export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}"
# Run from the temporary directory: `python -c` and `python -m` put the working directory first on
# sys.path, and the repository root would shadow the sanitized copy.
cd "$WORK"

LOADED=$("$PYTHON" -c 'import native._mlsnative as m, native; assert native.available(); print(m.__file__)')
case "$LOADED" in
    "$WORK"/*) echo "== sanitized extension loaded: $LOADED" ;;
    *) echo "sanitized extension not picked up (loaded $LOADED)" >&2; exit 1 ;;
esac

# Canary: a deliberate over-read in our C code (a node count that lies about the presence flags'
# buffer) must be caught, or the run would prove nothing. Note that ASan sees the reads of our own
# code and of libc's memcpy & co., not those inside libcrypto, which is not instrumented.
if "$PYTHON" -c 'from native._mlsnative import ffi, lib
out = ffi.new("uint8_t[]", 4096)
lib.mlsn_tree_hashes(1, 127, bytes(10), b"", 0, ffi.NULL, 0, out, 127 * 32)' >"$WORK/canary.log" 2>&1; then
    echo "canary: a deliberate heap over-read went unnoticed - sanitizer not active" >&2
    exit 1
fi
grep -q "AddressSanitizer: heap-buffer-overflow" "$WORK/canary.log" || {
    cat "$WORK/canary.log" >&2
    exit 1
}
echo "== canary: ASan reports a deliberate over-read"

echo "== running tests/native under ASan + UBSan"
# --import-mode=append: pytest puts the repository root (the parent of the `tests` package) at the end of
# sys.path rather than first, where it would shadow the sanitized copy again. tests/native/conftest.py
# fails the run if the extension the tests load is not the one in $MLS_NATIVE_EXPECTED_DIR.
export MLS_NATIVE_EXPECTED_DIR="$WORK/pkg/native"
"$PYTHON" -m pytest "$ROOT/tests/native" -q -p no:cacheprovider --import-mode=append "$@"
echo "== sanitizer run clean"
