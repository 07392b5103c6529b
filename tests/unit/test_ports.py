"""free_port picks ports that our own outgoing connections cannot take first."""

from __future__ import annotations

import contextlib
import socket

import pytest

from airlock.testing import ports
from airlock.testing.ports import _ephemeral_low, free_port


def test_ports_lie_below_the_ephemeral_range_and_bind() -> None:
    low = _ephemeral_low()
    for _ in range(20):
        port = free_port()
        assert 10_000 <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_no_port_is_handed_out_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # A window of three ports, all bound: nothing in it may come back.
    base = free_port()
    held: list[socket.socket] = []
    try:
        for port in range(base + 1, base + 4):
            s = socket.socket()
            held.append(s)
            with contextlib.suppress(OSError):  # taken by someone else: just as unusable
                s.bind(("127.0.0.1", port))
        monkeypatch.setattr(ports, "_LOWEST", base + 1)
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: base + 4)
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_port()
    finally:
        for s in held:
            s.close()
