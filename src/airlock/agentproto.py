"""The run agent's wire protocol, standard library only (the fast client imports nothing else).

`airlock run` spends most of its time importing Python packages (Docker's SDK, pydantic,
cryptography, click, rich: about 0.7 s on this machine) before it does any work. The run agent
(host/runagent.py, started by `airlock supervise`) has them imported already and forks a
child per request. The client (airlock/fastpath.py) sends, over a root-only Unix socket:

    request  := u32 length, JSON {"argv": [...], "env": {...}, "cwd": str}
                with its stdin, stdout and stderr attached (SCM_RIGHTS, three descriptors)
    answer   := i32 exit code                  (sent once the command's output is complete)
    client   -> b"INT" when it gets SIGINT/SIGTERM, so the child stops the sandbox

The socket's path is derived from the config file's real path, so each gateway's config has
its own agent.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

__all__ = [
    "AGENT_DIR",
    "MAX_REQUEST",
    "recv_request",
    "send_request",
    "socket_path",
]

AGENT_DIR = Path("/run/airlock-agent")
MAX_REQUEST = 1 << 20
INTERRUPT = b"INT"


def socket_path(config_path: str | os.PathLike[str]) -> Path:
    digest = hashlib.sha256(os.path.realpath(config_path).encode()).hexdigest()[:16]
    return AGENT_DIR / f"{digest}.sock"


def send_request(sock: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    body = json.dumps(request).encode()
    if len(body) > MAX_REQUEST:
        raise ValueError("request too large")
    header = struct.pack("!I", len(body))
    sock.sendmsg([header + body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def recv_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request and the descriptors sent with it (closed again if the request is bad)."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_REQUEST + 4, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    received = list(fds)
    try:
        if len(data) < 4:
            raise ValueError("short request")
        (length,) = struct.unpack("!I", data[:4])
        body = data[4:]
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        request = json.loads(body)
        if not isinstance(request, dict) or len(received) != 3:
            raise ValueError("malformed request")
    except (ValueError, json.JSONDecodeError):
        for fd in received:
            os.close(fd)
        raise
    return request, received
