#!/usr/bin/env python3
"""Escape attempts: run as a confined process, try what confinement should forbid, report.

Standard library only, no airlock imports: it runs under any python3, in a systemd unit's
sandbox, in a container, or as root on the host (where most attempts succeed, which is how
its tests show that each probe really probes).

Each attempt runs in a forked child, so an attempt that the kernel answers with a signal
(seccomp's default action is SIGSYS) is reported, not fatal, and nothing an attempt changes
(a namespace, a mount, a key) outlives it: what it creates it removes at once.

It prints one JSON object, ``{attempt: {"refused": bool, "how": ..., "detail": ...}}``,
and exits 0 when it ran. ``how`` is the errno name (``EPERM``, ``ENOENT``, ...), the signal
(``SIGSYS``) or ``"ok"``. ``refused`` is false only when the attempt did what it tried.
It reports; it does not judge (a reader compares with what the confinement promises).
Keys beginning with ``_`` describe the process that ran it (uid, capabilities, seccomp).

    python3 escape_attempts.py --writable /var/lib/airlock --probe-write /etc/x \
        --ptrace-pid 1 --secret /etc/shadow --docker-socket /var/run/docker.sock
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import platform
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

Result = dict[str, Any]

# Syscall numbers by machine: (bpf, add_key, keyctl, init_module, finit_module).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"bpf": 321, "add_key": 248, "keyctl": 250, "init_module": 175, "finit_module": 313},
    "aarch64": {"bpf": 280, "add_key": 217, "keyctl": 219, "init_module": 105, "finit_module": 273},
}

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
PTRACE_SEIZE = 0x4206
PTRACE_DETACH = 17
ETH_P_ALL = 0x0003
KEY_SPEC_PROCESS_KEYRING = -2
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_MAP_TYPE_ARRAY = 2
BPF_PROG_TYPE_SOCKET_FILTER = 1
CHILD_TIMEOUT = 10.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _ok(detail: str = "") -> Result:
    return {"refused": False, "how": "ok", "detail": detail}


def _refused(err: int, detail: str = "") -> Result:
    return {"refused": True, "how": errno.errorcode.get(err, str(err)), "detail": detail}


def _from_errno(detail: str = "") -> Result:
    return _refused(ctypes.get_errno(), detail)


def _oserror(exc: OSError, detail: str = "") -> Result:
    return _refused(exc.errno or 0, detail or (exc.strerror or ""))


def _nr(name: str) -> int | None:
    return _SYSCALLS.get(platform.machine(), {}).get(name)


def _syscall(name: str, *args: Any) -> int | None:
    """The raw syscall's return value (-1 with errno set), or None on an unknown machine."""
    nr = _nr(name)
    if nr is None:
        return None
    ctypes.set_errno(0)
    return int(_libc.syscall(ctypes.c_long(nr), *args))


def _unknown_machine(name: str) -> Result:
    return {"refused": True, "how": "UNTRIED", "detail": f"no {name} number for this machine"}


# --- the attempts (each runs in a child) ------------------------------------------------


def try_write(path: str) -> Result:
    """Create (then remove) a file at path, or inside it when it is a directory."""
    target = path
    if os.path.isdir(path):
        target = os.path.join(path, f".airlock-escape-probe-{os.getpid()}")
    existed = os.path.lexists(target)
    try:
        flags = os.O_WRONLY | (os.O_APPEND if existed else os.O_CREAT | os.O_EXCL)
        fd = os.open(target, flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        return _oserror(exc, target)
    os.close(fd)
    if not existed:
        os.unlink(target)
    return _ok(f"opened {target} for writing" + (" (existing)" if existed else ", removed"))


def try_mount(scratch: str | None) -> Result:
    """mount(2) a tmpfs on a fresh directory; unmount it at once when it worked."""
    try:
        where = tempfile.mkdtemp(prefix="airlock-mnt-", dir=scratch)
    except OSError:
        where = "/tmp" if scratch is None else scratch
    # A mount that works is undone; a failure says nothing about the directory.
    _libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    ctypes.set_errno(0)
    rc = _libc.mount(b"airlock-probe", where.encode(), b"tmpfs", 0, None)
    if rc != 0:
        result = _from_errno(f"mount tmpfs on {where}")
    else:
        _libc.umount2(where.encode(), 2)  # MNT_DETACH
        result = _ok(f"mounted a tmpfs on {where} (unmounted)")
    if where.rsplit("/", 1)[-1].startswith("airlock-mnt-"):
        try:
            os.rmdir(where)
        except OSError:
            pass
    return result


def try_unshare(flags: int, name: str) -> Result:
    ctypes.set_errno(0)
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        return _from_errno(f"unshare({name})")
    return _ok(f"unshare({name}) made a new namespace")


def try_ptrace(pid: int) -> Result:
    """PTRACE_SEIZE: the same access check as PTRACE_ATTACH, without stopping the target.

    The child exits right after, which detaches it.
    """
    _libc.ptrace.restype = ctypes.c_long
    ctypes.set_errno(0)
    rc = _libc.ptrace(ctypes.c_long(PTRACE_SEIZE), ctypes.c_long(pid), None, None)
    if rc != 0:
        return _from_errno(f"ptrace(PTRACE_SEIZE, {pid})")
    return _ok(f"seized pid {pid} (released on exit)")


def try_socket(family: int, kind: int, proto: int, label: str) -> Result:
    try:
        s = socket.socket(family, kind, proto)
    except OSError as exc:
        return _oserror(exc, label)
    s.close()
    return _ok(f"opened {label}")


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int | None:
    return _syscall("bpf", ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))


def try_bpf_map() -> Result:
    attr = ctypes.create_string_buffer(128)
    ctypes.memmove(attr, (ctypes.c_uint32 * 4)(BPF_MAP_TYPE_ARRAY, 4, 4, 1), 16)
    fd = _bpf(BPF_MAP_CREATE, attr)
    if fd is None:
        return _unknown_machine("bpf")
    if fd < 0:
        return _from_errno("bpf(BPF_MAP_CREATE, array)")
    os.close(fd)
    return _ok("created an array map")


def try_bpf_prog() -> Result:
    # BPF_MOV64_IMM(r0, 0); BPF_EXIT: a socket filter that accepts nothing.
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    fields = (ctypes.c_uint32 * 2)(BPF_PROG_TYPE_SOCKET_FILTER, 2)
    ctypes.memmove(attr, fields, 8)
    ctypes.memmove(ctypes.byref(attr, 8), ctypes.byref(ctypes.c_uint64(ctypes.addressof(insns))), 8)
    addr = ctypes.c_uint64(ctypes.addressof(license_))
    ctypes.memmove(ctypes.byref(attr, 16), ctypes.byref(addr), 8)
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd is None:
        return _unknown_machine("bpf")
    if fd < 0:
        return _from_errno("bpf(BPF_PROG_LOAD, socket filter)")
    os.close(fd)
    return _ok("loaded a socket filter")


def try_add_key() -> Result:
    payload = b"airlock-probe"
    serial = _syscall(
        "add_key",
        ctypes.c_char_p(b"user"),
        ctypes.c_char_p(b"airlock-escape-probe"),
        ctypes.c_char_p(payload),
        ctypes.c_size_t(len(payload)),
        ctypes.c_int(KEY_SPEC_PROCESS_KEYRING),
    )
    if serial is None:
        return _unknown_machine("add_key")
    if serial < 0:
        return _from_errno("add_key(user, process keyring)")
    return _ok(f"added key {serial} to a process keyring (gone on exit)")


def try_keyctl() -> Result:
    # KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3), creating none.
    rc = _syscall("keyctl", ctypes.c_int(0), ctypes.c_int(-3), ctypes.c_int(0))
    if rc is None:
        return _unknown_machine("keyctl")
    if rc < 0:
        return _from_errno("keyctl(KEYCTL_GET_KEYRING_ID, session)")
    return _ok(f"session keyring {rc}")


def _module_result(rc: int | None, name: str) -> Result:
    if rc is None:
        return _unknown_machine(name)
    if rc == 0:  # impossible with a garbage image, but say so
        return _ok(f"{name} loaded a module")
    err = ctypes.get_errno()
    if err in (errno.EPERM, errno.EACCES):
        return _refused(err, f"{name}: not allowed")
    if err == errno.ENOSYS:
        return _refused(err, f"{name}: no module support (kernel or seccomp)")
    # The permission check passed; the (deliberately invalid) image was then rejected.
    return {
        "refused": False,
        "how": errno.errorcode.get(err, str(err)),
        "detail": f"{name}: allowed to load; the invalid image was rejected",
    }


def try_init_module() -> Result:
    image = ctypes.create_string_buffer(64)
    rc = _syscall("init_module", image, ctypes.c_ulong(len(image)), ctypes.c_char_p(b""))
    return _module_result(rc, "init_module")


def try_finit_module() -> Result:
    try:
        fd = os.open("/dev/null", os.O_RDONLY)
    except OSError as exc:
        return _oserror(exc, "open /dev/null")
    rc = _syscall("finit_module", ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(0))
    result = _module_result(rc, "finit_module")
    os.close(fd)
    return result


def try_docker(path: str) -> Result:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(path)
    except OSError as exc:
        s.close()
        return _oserror(exc, f"connect {path}")
    detail = f"connected to {path}"
    try:
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        first = s.recv(64).split(b"\r\n", 1)[0].decode("latin-1")
        detail += f"; /_ping: {first!r}"
    except OSError as exc:
        detail += f"; no answer ({exc})"
    s.close()
    return _ok(detail)


def try_read(path: str) -> Result:
    try:
        with open(path, "rb") as f:
            n = len(f.read(16))
    except OSError as exc:
        return _oserror(exc, path)
    return _ok(f"read {n} bytes of {path}")


# --- running them ------------------------------------------------------------------------


def in_child(fn: Callable[[], Result]) -> Result:
    """Run fn in a forked child; its result comes back over a pipe, a signal is a result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            out = fn()
        except Exception as exc:
            out = {"refused": True, "how": "ERROR", "detail": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return {"refused": True, "how": sig, "detail": f"the attempt was killed by {sig}"}
    if not data:
        return {"refused": True, "how": "TIMEOUT", "detail": f"no answer in {CHILD_TIMEOUT}s"}
    result: Result = json.loads(data)
    return result


def context() -> Result:
    status: dict[str, str] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                status[key] = value.strip()
    except OSError:
        pass
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "cap_eff": status.get("CapEff"),
        "cap_bnd": status.get("CapBnd"),
        "cap_amb": status.get("CapAmb"),
        "no_new_privs": status.get("NoNewPrivs"),
        "seccomp": status.get("Seccomp"),
        "machine": platform.machine(),
    }


def attempts(args: argparse.Namespace) -> dict[str, Callable[[], Result]]:
    scratch = args.writable[0] if args.writable else None
    todo: dict[str, Callable[[], Result]] = {}
    for d in args.writable:
        todo[f"writable:{d}"] = functools.partial(try_write, d)
    for p in args.probe_write:
        todo[f"write:{p}"] = functools.partial(try_write, p)
    todo["mount"] = lambda: try_mount(scratch)
    todo["unshare_user"] = lambda: try_unshare(CLONE_NEWUSER, "CLONE_NEWUSER")
    todo["unshare_mount"] = lambda: try_unshare(CLONE_NEWNS, "CLONE_NEWNS")
    ptrace_pid = args.ptrace_pid if args.ptrace_pid is not None else os.getppid()
    todo["ptrace"] = lambda: try_ptrace(ptrace_pid)
    todo["raw_packet"] = lambda: try_socket(
        socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL), "AF_PACKET SOCK_RAW"
    )
    todo["raw_inet"] = lambda: try_socket(
        socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, "AF_INET SOCK_RAW ICMP"
    )
    todo["raw_inet6"] = lambda: try_socket(
        socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, "AF_INET6 SOCK_RAW ICMPv6"
    )
    todo["bpf_map_create"] = try_bpf_map
    todo["bpf_prog_load"] = try_bpf_prog
    todo["add_key"] = try_add_key
    todo["keyctl"] = try_keyctl
    todo["init_module"] = try_init_module
    todo["finit_module"] = try_finit_module
    todo["docker_socket"] = lambda: try_docker(args.docker_socket)
    for s in args.secret:
        todo[f"secret:{s}"] = functools.partial(try_read, s)
    return todo


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--writable",
        nargs="*",
        default=[],
        metavar="DIR",
        help="directories the process may write (checked as a control)",
    )
    p.add_argument(
        "--probe-write",
        nargs="*",
        default=[],
        metavar="PATH",
        help="paths (files or directories) it should not be able to write",
    )
    p.add_argument(
        "--ptrace-pid",
        type=int,
        default=None,
        help="a process it should not be able to trace (default: its parent)",
    )
    p.add_argument("--docker-socket", default="/var/run/docker.sock")
    p.add_argument(
        "--secret",
        nargs="*",
        default=[],
        metavar="PATH",
        help="files it should not be able to read",
    )
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        metavar="ATTEMPT",
        help="run only these attempts (names as in the output)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report: dict[str, Result] = {"_context": context()}
    for name, fn in attempts(args).items():
        if args.only is not None and name not in args.only:
            continue
        report[name] = in_child(fn)
    json.dump(report, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
