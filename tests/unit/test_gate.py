"""host/gate.py: which binaries can hold a sandbox's command, and the command it builds."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from airlock.host.gate import (
    GATE_PATH,
    GATE_SCRIPT,
    GateError,
    check_gate_binary,
    gate_command,
    is_static_elf,
)


def _elf(p_types: list[int], phoff: int = 64, entsize: int = 56) -> bytes:
    """A 64-bit little-endian ELF header followed by program headers of these types."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = bytearray(ident + bytes(48))
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, entsize, len(p_types))
    body = bytearray(header) + bytes(max(0, phoff - len(header)))
    for t in p_types:
        body += struct.pack("<I", t) + bytes(entsize - 4)
    return bytes(body)


def test_static_and_dynamic_executables() -> None:
    assert is_static_elf(_elf([1, 1, 4, 7]))  # LOAD, LOAD, NOTE, TLS
    assert not is_static_elf(_elf([6, 3, 1, 1]))  # PHDR, INTERP: needs a dynamic loader


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"#!/bin/sh\necho hi\n" + bytes(64),
        _elf([1])[:40],  # truncated header
        _elf([1, 1], phoff=4000)[:4096],  # program headers beyond what was read
        b"\x7fELF" + bytes([1, 1]) + bytes(58),  # 32-bit
    ],
)
def test_anything_else_is_not_a_static_executable(data: bytes) -> None:
    assert not is_static_elf(data)


def test_this_machines_python_is_refused_as_a_gate(tmp_path: Path) -> None:
    """A dynamically linked binary would not start in an image without a libc."""
    python = Path(os.path.realpath(sys.executable))
    with open(python, "rb") as f:
        assert not is_static_elf(f.read(4096))
    with pytest.raises(GateError, match="not a statically linked executable"):
        check_gate_binary(python)


def test_gate_binary_file_checks(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="busybox-static"):
        check_gate_binary(tmp_path / "missing")
    f = tmp_path / "gate"
    f.write_bytes(_elf([1, 1]))
    f.chmod(0o644)
    with pytest.raises(GateError, match="not an executable file"):
        check_gate_binary(f)
    f.chmod(0o777)
    with pytest.raises(GateError, match="writable by group or others"):
        check_gate_binary(f)
    f.chmod(0o755)
    check_gate_binary(f)


def test_gate_command_runs_the_entrypoint_and_command_after_the_script() -> None:
    argv = gate_command(["/entry", "--flag", "cmd", "arg with space"])
    assert argv[:4] == [GATE_PATH, "sh", "-c", GATE_SCRIPT]
    assert argv[4] == "airlock-gate"  # $0; "$@" is exactly the rest
    assert argv[5:] == ["/entry", "--flag", "cmd", "arg with space"]
    assert 'exec "$@"' in GATE_SCRIPT and "/run/airlock/ready" in GATE_SCRIPT
