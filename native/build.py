"""cffi FFI builder for ``native._mlsnative`` (API mode, out of line), compiled at install time.

``setup.py`` names this file in ``cffi_modules``, so ``pip install .`` and ``pip install -e .`` build the
extension. The C sources live in ``native/csrc``: one header per bound module, read both by the C
compiler and (preprocessor lines dropped) by ``ffibuilder.cdef``, so the two never disagree.

Environment:

* ``MLS_NATIVE_SANITIZE=1`` adds AddressSanitizer and UBSan (see ``native/sanitize_check.sh``).
* ``MLS_NATIVE_OPENSSL=/prefix`` takes OpenSSL 3 headers and libcrypto from ``/prefix/include`` and
  ``/prefix/lib`` instead of the system ones.

Run directly (``python native/build.py [outdir]``) to build a copy of the extension into ``outdir``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"

#: The bound modules, in dependency order; each has ``csrc/mlsn_<name>.h`` and ``csrc/mlsn_<name>.c``.
MODULES = ("common", "kdf", "aead", "secret_tree", "tree_hash")


def _cdef_text(header: Path) -> str:
    """A header without its preprocessor lines: what cffi's cdef parser accepts."""
    return "\n".join(line for line in header.read_text().splitlines() if not line.lstrip().startswith("#"))


def _source_path(path: Path, absolute: bool) -> str:
    # setuptools wants source paths relative to the project root (its working directory);
    # ffibuilder.compile() runs the compiler inside its output directory, so it needs absolute ones.
    return str(path) if absolute else os.path.relpath(path, Path.cwd())


def make_builder(absolute_sources: bool = False) -> FFI:
    builder = FFI()
    for name in MODULES:
        builder.cdef(_cdef_text(CSRC / f"mlsn_{name}.h"))

    compile_args = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-D_POSIX_C_SOURCE=200809L"]
    link_args: list[str] = []
    include_dirs = [str(CSRC)]
    library_dirs: list[str] = []
    if os.environ.get("MLS_NATIVE_SANITIZE") == "1":
        sanitize = [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined",
        ]
        compile_args = [*compile_args, "-g", *sanitize]
        link_args += sanitize
    prefix = os.environ.get("MLS_NATIVE_OPENSSL")
    if prefix:
        include_dirs.append(os.path.join(prefix, "include"))
        library_dirs.append(os.path.join(prefix, "lib"))

    builder.set_source(
        "native._mlsnative",
        "\n".join(f'#include "mlsn_{name}.h"' for name in MODULES),
        sources=[_source_path(CSRC / f"mlsn_{name}.c", absolute_sources) for name in MODULES],
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        libraries=["crypto"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else str(HERE.parent)
    make_builder(absolute_sources=True).compile(tmpdir=out, verbose=True)
