"""Make a private SoftHSM2 token in a directory of one's own (tests, benchmarks, the gateway's ``init``).

:func:`init_softhsm_token` writes ``<dir>/softhsm2.conf`` (``directories.tokendir = <dir>/tokens``, file
object store, ``log.level = ERROR``, ``slots.removable = false``) and runs ``softhsm2-util --init-token
--free`` with ``SOFTHSM2_CONF`` pointing at it, so system token directories are never touched.

The process that then uses the token must have ``SOFTHSM2_CONF`` set to the same file
(:meth:`SoftHsmToken.activate`); :class:`hsm.token.Token` re-initialises the library once if the token is
not visible yet (a library initialised earlier read another configuration).

The PINs are passed to ``softhsm2-util`` on its command line (visible to other local users for the
lifetime of that process): use this for tests and first-time set-up on a machine you control.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .config import MontgomeryKeygen, TokenConfig
from .errors import HsmError

#: Where Debian/Ubuntu (and other distributions) install SoftHSM2's PKCS#11 module.
SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
)
_INSTALL_HINT = "install the Debian package softhsm2 (deploy/bootstrap.sh does)"


@dataclass(frozen=True)
class SoftHsmToken:
    """A token made by :func:`init_softhsm_token`."""

    directory: Path
    conf_path: Path
    token_dir: Path
    label: str
    module_path: str

    def env(self) -> dict[str, str]:
        """Environment entries a process needs to see this token."""
        return {"SOFTHSM2_CONF": str(self.conf_path)}

    def activate(self) -> None:
        """Point this process's SoftHSM at the token's configuration."""
        os.environ.update(self.env())

    def token_config(
        self,
        *,
        pin_env: str | None = None,
        pin_file: str | None = None,
        montgomery_keygen: MontgomeryKeygen = "edwards-oid",
        **tuning: float,
    ) -> TokenConfig:
        """A :class:`TokenConfig` for this token (SoftHSM: X25519/X448 through the Edwards-OID quirk)."""
        return TokenConfig(
            module_path=self.module_path,
            token_label=self.label,
            pin_env=pin_env,
            pin_file=pin_file,
            montgomery_keygen=montgomery_keygen,
            **tuning,  # type: ignore[arg-type]
        )


def find_softhsm_module() -> str:
    """Path of ``libsofthsm2.so``; HsmError (with the install hint) if SoftHSM2 is not installed."""
    for candidate in SOFTHSM_MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise HsmError(f"SoftHSM2 PKCS#11 module not found: {_INSTALL_HINT}")


def softhsm_util() -> str:
    path = shutil.which("softhsm2-util")
    if path is None:
        raise HsmError(f"softhsm2-util not found: {_INSTALL_HINT}")
    return path


def write_conf(directory: Path) -> Path:
    """Write ``softhsm2.conf`` for a token directory under ``directory``; returns its path.

    Several gateway processes share one token folder (``serve --workers``, compose.yaml's replicas), and
    each writes the file at start-up while another may be reading it in ``C_Initialize``: an unchanged
    file is left alone, a changed one (the folder moved) is replaced in one rename, never truncated."""
    token_dir = directory / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    text = (
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    try:
        if conf.read_text() == text:
            return conf
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    staging = directory / f".softhsm2.conf.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        staging.write_text(text)
        os.replace(staging, conf)
    finally:
        staging.unlink(missing_ok=True)
    return conf


def init_softhsm_token(
    directory: str | os.PathLike[str], *, label: str, pin: str, so_pin: str, module_path: str | None = None
) -> SoftHsmToken:
    """Create a token labelled ``label`` in ``directory`` (made if needed); HsmError if that fails."""
    root = Path(directory).resolve()
    module = module_path or find_softhsm_module()
    util = softhsm_util()
    conf = write_conf(root)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    argv = [util, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise HsmError(f"softhsm2-util --init-token failed: {detail[-1] if detail else done.returncode}")
    return SoftHsmToken(root, conf, root / "tokens", label, module)


__all__ = ["SoftHsmToken", "find_softhsm_module", "init_softhsm_token", "write_conf"]
