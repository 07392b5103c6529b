"""The run agent: `airlock run` without its import time (protocol: airlock/agentproto.py).

One process per config, started by `airlock supervise`, single-threaded so that forking it is
safe: it imports everything `airlock run` needs once, listens on a root-only Unix socket, and
forks a child per request. The child takes the client's stdin/stdout/stderr, environment and
working directory, runs the very same click command (`airlock run ...`, every check and
message as in the full CLI), and sends the exit code as soon as the command's output is
complete and its session revoked; the removal of a `--rm` sandbox (container, network, rules)
happens after that, in the child, with its output going nowhere.

Only root may connect (SO_PEERCRED); the socket directory is 0700 and the socket 0600.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from airlock import agentproto

__all__ = ["serve"]


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path.parent)
    if st.st_uid != 0 or st.st_mode & 0o077:
        raise OSError(f"{path.parent} must be a directory of root's, mode 0700")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(64)
    return sock


def _child(conn: socket.socket, config_path: Path) -> int:
    """In the forked child: run one `airlock run` for the client; the exit code."""
    from airlock.host import sandbox

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    request, fds = agentproto.recv_request(conn)
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(str(request["cwd"]))
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})
    sent = False

    def report(code: int) -> None:
        nonlocal sent
        if sent:
            return
        sent = True
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!i", code))
        # The client is done: what follows (removal) writes nowhere.
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        os.close(devnull)

    def watch_interrupt() -> None:
        try:
            if conn.recv(16).startswith(agentproto.INTERRUPT) and not sent:
                os.kill(os.getpid(), signal.SIGINT)
        except OSError:
            pass

    threading.Thread(target=watch_interrupt, daemon=True).start()
    sandbox.report_exit = report
    argv = [str(a) for a in request["argv"]]
    # Always this agent's config, right after `run` (a `--config` of the client's own comes
    # later and wins, and names the same file: the client found this agent by it; one after
    # IMAGE is the sandbox command's).
    argv[1:1] = ["--config", str(config_path)]
    from airlock.cli import main

    code = 1
    try:
        main.main(args=argv, prog_name="airlock", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    finally:
        report(code)
    return code


def serve(
    config_path: Path,
    *,
    stop: Callable[[], bool] = lambda: False,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Listen until ``stop()``; one forked child per request."""
    # What `airlock run` imports, once, here: the children start with it all loaded.
    import airlock.cli
    import airlock.host.sandbox
    import airlock.host.supervisor

    del airlock
    path = agentproto.socket_path(config_path)
    sock = _listen(path)
    children: set[int] = set()
    ready()
    try:
        while not stop():
            readable, _, _ = select.select([sock], [], [], 0.5)
            for pid in list(children):
                with contextlib.suppress(ChildProcessError):
                    done, _status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        children.discard(pid)
            if not readable:
                continue
            conn, _ = sock.accept()
            try:
                if _peer_uid(conn) != 0:
                    continue  # root only: the request runs as root
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    code = 1
                    try:
                        code = _child(conn, config_path)
                    finally:
                        os._exit(code & 0xFF)
                children.add(pid)
            finally:
                conn.close()
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
