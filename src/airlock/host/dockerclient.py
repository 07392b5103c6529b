"""The Docker client, with its failures told apart: permission denied is not "not running".

``docker_client()`` honours ``DOCKER_HOST`` (and the other variables ``docker.from_env``
reads). For a Unix socket it first connects to the socket itself, so the error number says
what is wrong: EACCES (this uid may not use the socket: root, or the socket's group),
ENOENT or ECONNREFUSED (no daemon there). Either way the message is one line that says what
to do, and :class:`DockerUnavailable` carries a ``reason`` for callers that branch on it
(``airlock doctor``).
"""

from __future__ import annotations

import errno
import grp
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

__all__ = [
    "DEFAULT_HOST",
    "DockerUnavailable",
    "docker_client",
    "docker_host",
    "explain_errno",
    "unix_socket_path",
]

DEFAULT_HOST = "unix:///var/run/docker.sock"
START_HINT = "start it (systemctl start docker)"

PERMISSION = "permission"
NOT_RUNNING = "not_running"
ERROR = "error"


class DockerUnavailable(Exception):
    """The Docker daemon cannot be used; the message says what to do.

    ``reason`` is ``"permission"`` (the socket refuses this uid), ``"not_running"`` (no
    daemon answers there) or ``"error"`` (anything else)."""

    def __init__(self, message: str, reason: str = ERROR) -> None:
        super().__init__(message)
        self.reason = reason


def docker_host(env: Mapping[str, str] | None = None) -> str:
    """Where the Docker client connects: ``$DOCKER_HOST``, else the default socket."""
    value = (os.environ if env is None else env).get("DOCKER_HOST", "").strip()
    return value or DEFAULT_HOST


def unix_socket_path(host: str) -> str | None:
    """The socket path of a ``unix://`` (or ``http+unix://``) host; None for tcp:// and ssh://."""
    for scheme in ("unix://", "http+unix://"):
        if host.startswith(scheme):
            return host[len(scheme) :] or None
    return None


def _group_name(path: str) -> str | None:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return None


def explain_errno(
    host: str, code: int | None, *, uid: int, group: str | None = None
) -> DockerUnavailable:
    """The one-line failure for an error number met while connecting to ``host``. Pure."""
    where = unix_socket_path(host) or host
    if code in (errno.EACCES, errno.EPERM):
        via_group = f" or as a member of group {group!r}" if group and group != "root" else ""
        return DockerUnavailable(
            f"permission denied on the Docker socket {where} for uid {uid}: the daemon is "
            f"running but this user may not use it; run as root{via_group}",
            PERMISSION,
        )
    if code == errno.ENOENT:
        return DockerUnavailable(
            f"Docker is not running: no socket at {where}; {START_HINT}, or set DOCKER_HOST",
            NOT_RUNNING,
        )
    if code in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ETIMEDOUT):
        return DockerUnavailable(
            f"Docker is not running: nothing answers at {where}; {START_HINT}, or set DOCKER_HOST",
            NOT_RUNNING,
        )
    detail = os.strerror(code) if code else "no answer"
    return DockerUnavailable(f"cannot reach the Docker daemon at {where}: {detail}", ERROR)


def _probe_unix_socket(host: str, path: str, timeout: float) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        raise explain_errno(host, exc.errno, uid=os.geteuid(), group=_group_name(path)) from None
    finally:
        sock.close()


def _errno_in(exc: BaseException) -> int | None:
    """The first error number in an exception's chain (requests and urllib3 wrap the
    OSError several levels deep, in ``__cause__``, ``__context__``, ``reason`` or ``args``)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno:
            return item.errno
        todo.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return None


def docker_client(timeout: float = 60) -> docker.DockerClient:
    """A client for the Docker daemon that answered a ping; DockerUnavailable otherwise."""
    import docker
    import docker.errors

    host = docker_host()
    path = unix_socket_path(host)
    if path is not None:
        _probe_unix_socket(host, path, min(timeout, 10.0))
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        # requests' ConnectionError is an OSError without an errno; the real one is inside.
        code = _errno_in(exc)
        if code is not None:
            group = _group_name(path) if path else None
            raise explain_errno(host, code, uid=os.geteuid(), group=group) from exc
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DockerUnavailable(f"cannot use the Docker daemon at {host}: {first}"[:400]) from exc
    return client
