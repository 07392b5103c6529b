"""Host-wide lock files in a directory only root can reach.

/run/lock is world-writable: a local user could pre-create a lock file there and hold it
(every `airlock run` and rule change would hang), or plant a symlink that root's open
truncates. Airlock's host-wide locks (the sandbox pool, the nftables table) live in
``/run/airlock-locks`` instead (root's, 0700, checked on each use) and are opened without
following symlinks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR = Path("/run/airlock-locks")


class LockDirError(OSError):
    pass


def _lock_dir() -> Path:
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(LOCK_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise LockDirError(f"{LOCK_DIR} must be a directory owned by uid {os.geteuid()}, 0700")
    return LOCK_DIR


@contextlib.contextmanager
def host_lock(name: str) -> Iterator[None]:
    """An exclusive flock on ``LOCK_DIR/name`` for the block."""
    fd = os.open(_lock_dir() / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
