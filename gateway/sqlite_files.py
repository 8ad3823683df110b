"""The SQLite store's files readable and writable by their owner alone.

SQLite creates a new database file with mode 0644 (less the umask) and gives its ``-wal`` and ``-shm``
files the database file's own mode (``findCreateFileMode`` in its Unix VFS). The data folder is 0700, so
nobody else could reach them there; but the files hold sealed state, the audit chain and stored
responses, and a folder's mode is easily widened, the files copied or a backup staged elsewhere: they are
kept 0600 on their own (docs/architecture.md "Secrets at rest").
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("mls_gateway")

#: Owner read and write only.
OWNER_ONLY = stat.S_IRUSR | stat.S_IWUSR


def make_owner_only(database: str | Path) -> None:
    """Before SQLite opens ``database``: create it empty with mode 0600 if it does not exist (SQLite then
    makes its WAL and shared-memory files 0600 too), and narrow the database file and those two to 0600
    where an earlier version left them wider (by path: an existing file is never opened here). A file that
    cannot be created or changed is left to SQLite, which reports what is wrong with it when it opens
    it."""
    path = Path(database)
    # Only ever a new file: closing a descriptor of a file drops every POSIX lock this process holds on
    # it — an open SQLite connection's included, letting another process write under it.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & ~OWNER_ONLY:
                os.chmod(file, OWNER_ONLY)
                log.warning("%s was mode %o: made 0600 (the store's files are its owner's alone)", file, mode)


__all__ = ["OWNER_ONLY", "make_owner_only"]
