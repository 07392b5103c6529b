"""The gate: what holds a sandbox's command until its session is active.

A static busybox from the host (Debian's busybox-static) is bind-mounted read-only into every
sandbox and runs a few lines of shell that wait for ``/run/airlock/ready`` (written by the
host after activation) and then ``exec`` the real command. Bringing the shell along means any
image can be gated, also one without ``/bin/sh`` or with an unusual one, and the sandbox's
first instruction still runs bound to its session.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

__all__ = ["GATE_PATH", "GATE_SCRIPT", "GateError", "check_gate_binary", "gate_command"]

#: Where the gate binary appears inside the sandbox.
GATE_PATH = "/.airlock-gate/busybox"
# Polled every 10 ms (busybox's own sleep, one fork each): the host opens the gate
# milliseconds after the container starts, and a 50 ms poll was a visible part of a short
# `airlock run`. Gives up after 30 s.
GATE_SCRIPT = (
    "i=0; while [ ! -e /run/airlock/ready ]; do i=$((i+1)); "
    'if [ "$i" -gt 3000 ]; then echo "airlock: sandbox was not activated" >&2; exit 125; fi; '
    'sleep 0.01; done; exec "$@"'
)
_PT_INTERP = 3


class GateError(Exception):
    pass


def is_static_elf(header: bytes) -> bool:
    """True for a 64-bit little-endian ELF executable without an interpreter (PT_INTERP):
    it runs in an image that has no libc and no dynamic loader."""
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", header, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
    if phentsize < 4 or phoff + phentsize * phnum > len(header):
        return False
    types = [struct.unpack_from("<I", header, phoff + i * phentsize)[0] for i in range(phnum)]
    return _PT_INTERP not in types


def check_gate_binary(path: Path) -> None:
    hint = "install Debian's busybox-static (apt-get install busybox-static)"
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            header = f.read(4096)
    except OSError as exc:
        raise GateError(f"sandbox.gate_binary {path}: {exc.strerror}; {hint}") from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        raise GateError(f"sandbox.gate_binary {path}: not an executable file; {hint}")
    if st.st_mode & 0o022:
        raise GateError(f"sandbox.gate_binary {path}: writable by group or others")
    if not is_static_elf(header):
        raise GateError(
            f"sandbox.gate_binary {path}: not a statically linked executable (it must run in "
            f"images without a libc); {hint}"
        )


def gate_command(command: list[str]) -> list[str]:
    """The container command: the gate, then ``command`` (entrypoint + cmd) once ready."""
    return [GATE_PATH, "sh", "-c", GATE_SCRIPT, "airlock-gate", *command]
