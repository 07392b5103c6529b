"""A Unix socket that only the right local users can reach.

The review asked for: a 0700 directory owned by us, refusal of group- or world-writable
directories and of symlinked paths, a stale socket removed only when lstat shows it is a
socket, the socket created 0600, and each caller's uid checked with SO_PEERCRED.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path


class SocketPathError(Exception):
    pass


def _check_no_symlinks(path: Path) -> None:
    # Every component must be a real directory: a symlink anywhere lets someone else
    # redirect where the socket is created or where clients connect.
    current = Path(path.anchor)
    for part in path.parts[1:]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise SocketPathError(f"{current} is a symlink; refusing to use it for {path}")


def prepare_socket_dir(sock_path: Path) -> None:
    """Create or check the socket's directory; raise SocketPathError if it is unsafe."""
    if not sock_path.is_absolute():
        raise SocketPathError(f"{sock_path}: the control socket path must be absolute")
    _check_no_symlinks(sock_path)
    directory = sock_path.parent
    if not directory.exists():
        old = os.umask(0o077)
        try:
            directory.mkdir(mode=0o700, parents=True)
        finally:
            os.umask(old)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"{directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise SocketPathError(
            f"{directory} is owned by uid {st.st_uid}, not by the gateway (uid {os.geteuid()})"
        )
    if st.st_mode & 0o022:
        raise SocketPathError(
            f"{directory} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 700 {directory}"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)
    try:
        sst = os.lstat(sock_path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(sst.st_mode):
        raise SocketPathError(f"{sock_path} exists and is not a socket; refusing to remove it")
    os.unlink(sock_path)


def bind_unix_socket(sock_path: Path) -> socket.socket:
    """A listening socket at ``sock_path``, mode 0600 from the moment it exists."""
    prepare_socket_dir(sock_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no window in which the socket is more open than 0600
    try:
        sock.bind(str(sock_path))
    finally:
        os.umask(old)
    os.chmod(sock_path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end, from the kernel (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
