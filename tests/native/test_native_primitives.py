"""Hash, HMAC and HKDF: the native backend gives the Python backend's bytes (RFC 9420 §5.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_testlib import HASHES, NH, payloads

import native
from mls.crypto import backend as crypto_backend
from mls.errors import CryptoError, UnsupportedError

hashes = st.sampled_from(HASHES)


@settings(max_examples=150, deadline=None)
@given(alg=hashes, data=payloads(8192))
def test_hash_matches(nb: Any, pb: Any, alg: str, data: bytes) -> None:
    assert nb.hash(alg, data) == pb.hash(alg, data)


@settings(max_examples=150, deadline=None)
@given(alg=hashes, key=st.binary(max_size=300), data=payloads(4096))
def test_hmac_matches(nb: Any, pb: Any, alg: str, key: bytes, data: bytes) -> None:
    # Key lengths span empty, shorter than, equal to and longer than the hash block (hashed first).
    assert nb.hmac(alg, key, data) == pb.hmac(alg, key, data)


@settings(max_examples=150, deadline=None)
@given(alg=hashes, salt=st.binary(max_size=100), ikm=st.binary(max_size=200))
def test_hkdf_extract_matches(nb: Any, pb: Any, alg: str, salt: bytes, ikm: bytes) -> None:
    assert nb.hkdf_extract(alg, salt, ikm) == pb.hkdf_extract(alg, salt, ikm)


@settings(max_examples=200, deadline=None)
@given(alg=hashes, prk=st.binary(max_size=80), info=st.binary(max_size=300), data=st.data())
def test_hkdf_expand_matches(
    nb: Any, pb: Any, alg: str, prk: bytes, info: bytes, data: st.DataObject
) -> None:
    length = data.draw(st.integers(1, 255 * NH[alg]), label="length")
    assert nb.hkdf_expand(alg, prk, info, length) == pb.hkdf_expand(alg, prk, info, length)


def test_hkdf_expand_block_boundaries(nb: Any, pb: Any) -> None:
    for alg in HASHES:
        nh = NH[alg]
        for length in (1, nh - 1, nh, nh + 1, 2 * nh, 255 * nh):
            assert nb.hkdf_expand(alg, b"k" * nh, b"info", length) == pb.hkdf_expand(
                alg, b"k" * nh, b"info", length
            )


def test_crypto_basics_vectors_through_native(nb: Any, shared_dir: Any) -> None:
    """RFC 9420 crypto-basics vectors (ExpandWithLabel, DeriveSecret, RefHash) with the native backend."""
    import json

    from mls.crypto.cipher_suite import cipher_suite

    cases = json.loads((shared_dir / "mls-test-vectors" / "crypto-basics.json").read_text())
    previous = crypto_backend.get_backend()
    crypto_backend.set_backend(nb)
    try:
        for case in cases:
            suite = cipher_suite(int(case["cipher_suite"]))
            e = case["expand_with_label"]
            out = suite.expand_with_label(
                bytes.fromhex(e["secret"]), e["label"], bytes.fromhex(e["context"]), e["length"]
            )
            assert out.hex() == e["out"]
            d = case["derive_secret"]
            assert suite.derive_secret(bytes.fromhex(d["secret"]), d["label"]).hex() == d["out"]
            t = case["derive_tree_secret"]
            got = suite.derive_tree_secret(
                bytes.fromhex(t["secret"]), t["label"], t["generation"], t["length"]
            )
            assert got.hex() == t["out"]
            r = case["ref_hash"]
            assert suite.ref_hash(r["label"], bytes.fromhex(r["value"])).hex() == r["out"]
    finally:
        crypto_backend.set_backend(previous)


@pytest.mark.parametrize("method", ["hash", "hmac", "hkdf_extract", "hkdf_expand"])
def test_unknown_hash_is_unsupported(nb: Any, method: str) -> None:
    args: dict[str, tuple[Any, ...]] = {
        "hash": (b"x",),
        "hmac": (b"k", b"x"),
        "hkdf_extract": (b"s", b"i"),
        "hkdf_expand": (b"p" * 32, b"i", 32),
    }
    for alg in ("md5", "sha1", "SHA256", "", None):
        with pytest.raises(UnsupportedError):
            getattr(nb, method)(alg, *args[method])


def test_hkdf_expand_length_limits(nb: Any) -> None:
    for bad in (0, -1, 255 * 32 + 1, 2**64):
        with pytest.raises(CryptoError):
            nb.hkdf_expand("sha256", b"p" * 32, b"", bad)


def test_bytes_like_inputs(nb: Any, pb: Any) -> None:
    assert nb.hash("sha256", bytearray(b"abc")) == pb.hash("sha256", b"abc")
    assert nb.hmac("sha256", memoryview(b"k"), bytearray(b"abc")) == pb.hmac("sha256", b"k", b"abc")


def test_backend_choice(nb: Any, pb: Any) -> None:
    assert nb.name == "native"
    assert native.choose_backend("native", pb).name == "native"
    assert native.choose_backend("auto", pb).name == "native"
    assert native.choose_backend("python", pb) is pb
    with pytest.raises(UnsupportedError):
        native.choose_backend("rust", pb)


def test_backend_choice_reads_the_environment(pb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLS_CRYPTO_BACKEND", raising=False)
    assert native.choose_backend(None, pb).name == "native"
    monkeypatch.setenv("MLS_CRYPTO_BACKEND", "python")
    assert native.choose_backend(None, pb) is pb
    assert native.choose_backend("native", pb).name == "native"  # an explicit choice wins
    monkeypatch.setenv("MLS_CRYPTO_BACKEND", "NATIVE")
    assert native.choose_backend(None, pb).name == "native"
    monkeypatch.setenv("MLS_CRYPTO_BACKEND", "fast")
    with pytest.raises(UnsupportedError):
        native.choose_backend(None, pb)


def _python(code: str, env: dict[str, str] | None = None, cwd: Path | None = None, *options: str) -> str:
    """Run ``code`` in a fresh interpreter (without ``$MLS_CRYPTO_BACKEND`` unless ``env`` sets it)."""
    env = {k: v for k, v in os.environ.items() if k != "MLS_CRYPTO_BACKEND"} | (env or {})
    out = subprocess.run(
        [sys.executable, *options, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=cwd
    )
    return out.stdout.strip()


def test_mls_alone_runs_on_python_and_never_imports_native() -> None:
    code = "import sys, mls, mls.crypto.backend as b\nprint(b.get_backend().name, 'native' in sys.modules)"
    assert _python(code, env={"MLS_CRYPTO_BACKEND": "native"}) == "python False"


def test_import_order_does_not_hide_native_backend() -> None:
    # An application may import native before or after mls; the backend it installs is the one in use.
    install = "b.set_backend(native.choose_backend(None, b.PythonBackend()))\nprint(b.get_backend().name)"
    assert (
        _python("import native.backend\nimport mls.crypto.backend as b\nimport native\n" + install)
        == "native"
    )
    assert _python("import mls.crypto.backend as b\nimport native\n" + install) == "native"


def test_choice_without_the_extension(tmp_path: Path) -> None:
    """A copy of the package without the compiled extension: ``auto`` falls back to the Python backend,
    ``native`` fails loudly."""
    copy = tmp_path / "native"
    copy.mkdir()
    for source in Path(native.__file__).parent.glob("*.py"):
        shutil.copy(source, copy / source.name)
    code = "\n".join(
        [
            "import native, mls.crypto.backend as b",
            "from mls.errors import UnsupportedError",
            f"print(native.__file__.startswith({str(tmp_path)!r}), native.available(),",
            "      native.choose_backend('auto', b.PythonBackend()).name)",
            "try:",
            "    native.choose_backend('native', b.PythonBackend())",
            "except UnsupportedError:",
            "    print('refused')",
        ]
    )
    # Run from tmp_path (``python -c`` puts the working directory first on sys.path), with the installed
    # packages but without site's .pth hooks: an editable install's finder would find the real extension.
    paths = sysconfig.get_paths()
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), paths["purelib"], paths["platlib"]]
        )
    }
    assert _python(code, env, tmp_path, "-S").splitlines() == ["True False python", "refused"]


def test_available_and_version() -> None:
    import native
    from native.backend import OPENSSL_VERSION

    assert native.available() is True
    assert OPENSSL_VERSION.startswith("OpenSSL 3.")
