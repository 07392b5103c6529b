"""A Unix socket that only the right local users can reach.

The review asked for: a 0700 directory owned by us, refusal of group- or world-writable
directories and of symlinked paths, a stale socket removed only when lstat shows it is a
socket, the socket created 0600, and each caller's uid checked with SO_PEERCRED.

All of it is race-free: the directory is reached one component at a time with
``O_NOFOLLOW`` relative to its parent's descriptor, its owner and mode are checked on that
descriptor, and every later step (the lock, the stale socket, the bind) goes through the
descriptor (``*at`` calls, and ``/proc/self/fd/N/name`` for bind). Swapping a directory for
a symlink after the checks changes nothing: the socket lands in the directory checked.

One gateway per socket: an exclusive ``flock`` on ``<socket>.lock`` beside the socket, held
for the gateway's lifetime, is taken before a stale socket is removed, so a second gateway
on the same config refuses to start instead of taking the first one's socket away.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SocketPathError(Exception):
    pass


class GatewayRunning(SocketPathError):
    """Another gateway holds the socket's lock."""


def _open_component(parent: int, name: str, shown: Path, create: bool) -> int:
    """Open directory ``name`` under ``parent`` without following a symlink."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise SocketPathError(f"{shown} is a symlink; refusing to use it") from None
            raise SocketPathError(f"{shown} is not a directory") from None
        raise
    with contextlib.suppress(FileExistsError):  # someone else made it: checked below anyway
        os.mkdir(name, 0o700, dir_fd=parent)
    return _open_component(parent, name, shown, create=False)


def open_socket_dir(sock_path: Path) -> int:
    """A descriptor of the socket's directory, created if missing, after every check;
    SocketPathError if it is unsafe. The caller closes it."""
    if not sock_path.is_absolute():
        raise SocketPathError(f"{sock_path}: the control socket path must be absolute")
    directory = sock_path.parent
    # Every component must be a real directory: a symlink anywhere lets someone else
    # redirect where the socket is created or where clients connect.
    fd = os.open("/", _DIR_FLAGS)
    current = Path("/")
    old = os.umask(0o077)
    try:
        for part in directory.parts[1:]:
            current = current / part
            try:
                child = _open_component(fd, part, current, create=True)
            except SocketPathError as exc:
                raise SocketPathError(f"{exc} for {sock_path}") from None
            os.close(fd)
            fd = child
        _check_dir(fd, directory)
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.umask(old)
    return fd


def _check_dir(fd: int, directory: Path) -> None:
    st = os.fstat(fd)
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
        os.fchmod(fd, 0o700)


def _check_entry(dir_fd: int, sock_path: Path) -> bool:
    """True when a (stale) socket is at the path; SocketPathError if something else is."""
    try:
        sst = os.stat(sock_path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(sst.st_mode):
        raise SocketPathError(f"{sock_path} is a symlink; refusing to use it")
    if not stat.S_ISSOCK(sst.st_mode):
        raise SocketPathError(f"{sock_path} exists and is not a socket; refusing to remove it")
    return True


def prepare_socket_dir(sock_path: Path) -> None:
    """Create or check the socket's directory and what is at the socket's path; raise
    SocketPathError if either is unsafe. Removes nothing (only the lock holder may)."""
    fd = open_socket_dir(sock_path)
    try:
        _check_entry(fd, sock_path)
    finally:
        os.close(fd)


def _lock(dir_fd: int, sock_path: Path) -> int:
    """The exclusive lock on ``<socket>.lock``, or GatewayRunning."""
    name = sock_path.name + ".lock"
    try:
        fd = os.open(
            name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except OSError as exc:
        raise SocketPathError(
            f"{sock_path.parent / name}: cannot open lock ({exc.strerror})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GatewayRunning(
            f"another gateway is running on {sock_path}; stop it first "
            "(a gateway holds the control socket until it exits)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class ControlSocket:
    """One gateway's control socket: its checked directory and the lock (from
    :meth:`acquire`), then the listening socket (from :meth:`bind`), until :meth:`close`."""

    def __init__(self, path: Path, dir_fd: int, lock_fd: int) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self._dir_fd = dir_fd
        self._lock_fd = lock_fd
        self._identity: tuple[int, int] | None = None

    @classmethod
    def acquire(cls, sock_path: Path) -> ControlSocket:
        """Check the directory and take the lock; GatewayRunning if another gateway has it."""
        dir_fd = open_socket_dir(sock_path)
        try:
            lock_fd = _lock(dir_fd, sock_path)
        except BaseException:
            os.close(dir_fd)
            raise
        return cls(sock_path, dir_fd, lock_fd)

    def bind(self) -> socket.socket:
        """A listening socket at the path, mode 0600 from the moment it exists."""
        assert self._dir_fd >= 0 and self.sock is None
        name = self.path.name
        if _check_entry(self._dir_fd, self.path):
            os.unlink(name, dir_fd=self._dir_fd)  # stale: we hold the lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # no window in which the socket is more open than 0600
            try:
                # Through the checked directory's descriptor, never its path again.
                sock.bind(f"/proc/self/fd/{self._dir_fd}/{name}")
            finally:
                os.umask(old)
            os.chmod(name, 0o600, dir_fd=self._dir_fd)
            st = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._identity = (st.st_dev, st.st_ino)
        self.sock = sock
        return sock

    def unlink(self) -> None:
        """Remove the socket file, if it is still the one this gateway bound."""
        if self._dir_fd < 0 or self._identity is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self.path.name, dir_fd=self._dir_fd, follow_symlinks=False)
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path.name, dir_fd=self._dir_fd)

    def close(self) -> None:
        """Close the socket and give up the lock (the socket file stays, as after a crash)."""
        if self.sock is not None:
            self.sock.close()
        for fd in (self._lock_fd, self._dir_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._dir_fd = -1


def bind_unix_socket(sock_path: Path) -> ControlSocket:
    """The control socket at ``sock_path``, bound and locked against a second gateway."""
    control = ControlSocket.acquire(sock_path)
    try:
        control.bind()
    except BaseException:
        control.close()
        raise
    return control


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end, from the kernel (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
