"""Loopback ports for tests, benchmarks and the demo to listen on.

``bind(("127.0.0.1", 0))`` hands out a port from the kernel's ephemeral range, and every
outgoing connection draws its local port from that same range. Between choosing such a port
and the gateway's own bind, a git client's connection to the upstream can take it: CI saw
"address already in use" that way. A port below the ephemeral range is only ever taken by an
explicit bind, so the gap between choosing and binding is safe from our own clients.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _free_now(host: str, port: int) -> bool:
    """Whether both TCP and UDP can bind ``port`` (the DNS listener takes both)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, below the ephemeral range and not handed out before."""
    high = _ephemeral_low() - 1
    if high <= _LOWEST:
        raise RuntimeError(f"the ephemeral port range starts at {high + 1}: no room below it")
    rng = random.SystemRandom()
    for _ in range(1_000):
        port = rng.randint(_LOWEST, high)
        if port not in _handed_out and _free_now(host, port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port on {host} between {_LOWEST} and {high}")
