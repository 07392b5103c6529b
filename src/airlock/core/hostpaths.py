"""Host directories the gateway may be given to write, decided from the path alone.

The gateway's state, socket and log directories are handed to its user (host mode:
``gateway/privileges.py``; a systemd unit: ``host/units.py``) or mounted read-write into its
container (``host/gateway_container.py``): a system directory there, or one many programs
share, would give a compromised gateway the host. Pure: no file system access.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SHARED_DIRS", "SYSTEM_TREES", "handed_over_problem"]


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


#: Never mounted, nor anything inside them, nor a directory that holds one of them.
SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/etc",
        "/usr",
        "/boot",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/sys",
        "/dev",
        "/root",
        "/run/containerd",
        "/run/docker",
        "/var/run/docker",
        "/run/systemd",
        "/var/lib/docker",
        "/var/lib/containerd",
        "/var/lib/systemd",
    )
)
#: Shared by many programs: a directory below one is fine, the directory itself never.
SHARED_DIRS = frozenset(
    Path(p)
    for p in (
        "/",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/cache",
        "/var/spool",
        "/var/tmp",
        "/var/run",
        "/run",
        "/srv",
        "/opt",
        "/home",
        "/tmp",
        "/mnt",
        "/media",
    )
)


def handed_over_problem(path: Path, what: str, example: str) -> str | None:
    """Why ``path`` may not be handed to the gateway (None: it may). ``path`` must already
    be absolute and free of symlinks and ``..`` (resolved, or refused as not normal)."""
    if not path.is_absolute() or os.path.normpath(path) != str(path):
        return f"{what}: {path} is not a normal absolute path (no '..', no '//'); write it out"
    for tree in SYSTEM_TREES:
        if _within(path, tree) or _within(tree, path):
            return (
                f"{what}: {path} is (or holds) the system directory {tree}; the gateway "
                f"would get it to write. Use a directory of the gateway's own, e.g. {example}"
            )
    if path in SHARED_DIRS:
        return (
            f"{what}: {path} is a shared directory, too broad to hand to the "
            f"gateway; use a directory of the gateway's own, e.g. {example}"
        )
    return None
