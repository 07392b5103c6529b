"""The gateway container's seccomp profile: an allowlist of the system calls it really makes.

``profile(names)`` is pure: syscall names in, a Docker seccomp profile out (default: refuse
with EPERM; the names allowed; ``clone`` only without namespace flags and ``clone3`` answered
ENOSYS, as in Docker's default profile, so glibc falls back to ``clone`` whose flags seccomp
can read). The names come from ``deploy/seccomp/gateway.syscalls``, which was derived by
tracing the gateway (docs/gateway-container.md); ``python -m airlock.host.seccomp`` rewrites
the list and the profile from strace logs:

    python -m airlock.host.seccomp --strace DIR_OR_FILE... [--keep-list] [--check]

A name in :data:`FORBIDDEN` is never written, whatever a trace says.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "FORBIDDEN",
    "LIST_PATH",
    "PROFILE_PATH",
    "ProfileError",
    "gateway_profile_json",
    "names_from_strace",
    "profile",
    "read_list",
    "render",
    "traced_tree",
]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "seccomp"
LIST_PATH = DEPLOY / "gateway.syscalls"
PROFILE_PATH = DEPLOY / "gateway.json"

EPERM = 1
ENOSYS = 38
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (Docker's mask).
CLONE_NAMESPACE_FLAGS = 0x7E020000

#: Never allowed: what would let a compromised gateway leave its container or reach the kernel's
#: less-travelled paths. The gateway needs none of them.
FORBIDDEN = frozenset(
    {
        "acct",
        "add_key",
        "bpf",
        "chroot",
        "clock_adjtime",
        "clock_settime",
        "clone3",  # answered ENOSYS separately: its flags are behind a pointer
        "create_module",
        "delete_module",
        "finit_module",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "init_module",
        "ioperm",
        "iopl",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "name_to_handle_at",
        "open_by_handle_at",
        "open_tree",
        "perf_event_open",
        "pivot_root",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
        "quotactl",
        "reboot",
        "request_key",
        "setns",
        "settimeofday",
        "swapoff",
        "swapon",
        "syslog",
        "umount2",
        "unshare",
        "userfaultfd",
        "vhangup",
    }
)

#: Made by the container runtime after it loaded the filter and before it executes the
#: gateway (runc checks that /proc/self/fd is procfs); no trace of the gateway shows them.
RUNTIME = frozenset({"fstatfs"})

#: What the in-container checks (testing/escape_attempts.py, `docker exec`'d under this
#: very profile) need to run and report: its process's groups, a pipe from each forked
#: attempt, waiting for its answer. None grants a privilege or reaches a new kernel interface.
CHECKS = frozenset({"getgroups", "pipe2", "pselect6", "select", "wait4"})

#: The egress tunnel's kernel relay (gateway/kernel_splice.py): made only once a CONNECT
#: tunnel is past its TLS checks, so a trace of a gateway that spliced no tunnel lacks it
#: (and without it every tunnel would quietly stay on the slower protocol path).
TUNNEL = frozenset({"splice", "pipe2"})

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# strace -f / -ff lines: "[pid 12] name(", "12 name(", "name(", "<... name resumed>".
_CALL = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(?:\d+\.\d+\s+)?([a-z_][a-z0-9_]*)\(")
_RESUMED = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(?:\d+\.\d+\s+)?<\.\.\. ([a-z0-9_]+) resumed")


class ProfileError(ValueError):
    """A name that is not a syscall name, or one that is forbidden."""


def profile(names: Iterable[str]) -> dict[str, Any]:
    """The Docker seccomp profile allowing exactly ``names`` (plus ``clone`` without
    namespace flags when ``clone`` is listed)."""
    wanted = sorted(set(names))
    bad = [n for n in wanted if not _NAME.match(n)]
    if bad:
        raise ProfileError(f"not syscall names: {', '.join(bad)}")
    forbidden = [n for n in wanted if n in FORBIDDEN]
    if forbidden:
        raise ProfileError(f"forbidden in the gateway's profile: {', '.join(forbidden)}")
    plain = [n for n in wanted if n != "clone"]
    rules: list[dict[str, Any]] = [{"names": plain, "action": "SCMP_ACT_ALLOW"}]
    if "clone" in wanted:
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {
                        "index": 0,
                        "value": CLONE_NAMESPACE_FLAGS,
                        "valueTwo": 0,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
                "comment": "threads and forks, never new namespaces",
            }
        )
    rules.append(
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "comment": "glibc falls back to clone, whose flags are checked",
        }
    )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X32"]},
        ],
        "syscalls": rules,
    }


def render(names: Iterable[str]) -> str:
    """The profile as committed (stable order, two-space indent, final newline)."""
    return json.dumps(profile(names), indent=2) + "\n"


def read_list(text: str) -> list[str]:
    """Names from a list file: one a line, ``#`` comments."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def names_from_strace(text: str) -> set[str]:
    """Every syscall name in an strace log (``-f``/``-ff``, with or without ``-qq``)."""
    found: set[str] = set()
    for line in text.splitlines():
        m = _CALL.match(line) or _RESUMED.match(line)
        if m:
            found.add(m.group(1))
    return found


_CHILD = re.compile(r"^(?:clone3?|fork|vfork)\(.*\)\s*=\s*(\d+)")
_ROOT_MARK = '"airlock.cli", "gateway"'


def traced_tree(files: dict[int, str], root_mark: str = _ROOT_MARK) -> set[str]:
    """From ``strace -ff`` output (pid -> its log), the syscalls of every process that
    executed a command line containing ``root_mark`` (from that ``execve`` on) and of all
    its threads and children; nothing of any other process."""
    roots: dict[int, str] = {}
    for pid, text in files.items():
        lines = text.splitlines()
        # The last such execve: a gateway started as root re-executes itself through
        # setpriv (gateway.user); the launcher's and setpriv's own calls are not the gateway's.
        for i in range(len(lines) - 1, -1, -1):
            line = lines[i]
            if line.startswith("execve(") and root_mark in line and "= 0" in line:
                roots[pid] = "\n".join(lines[i:])
                break
    seen: set[int] = set()
    todo = list(roots)
    found: set[str] = set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in files:
            continue
        seen.add(pid)
        text = roots.get(pid, files[pid])
        found |= names_from_strace(text)
        for line in text.splitlines():
            m = _CHILD.match(line)
            if m:
                todo.append(int(m.group(1)))
    return found


def gateway_profile_json() -> str:
    """The committed profile's text (what `docker run --security-opt seccomp=` takes)."""
    return PROFILE_PATH.read_text()


def _list_text(names: Iterable[str]) -> str:
    head = (
        "# The gateway's system calls, traced (docs/gateway-container.md); one a line.\n"
        "# Regenerate: python -m airlock.host.seccomp --strace LOGS... (then review the diff).\n"
    )
    return head + "".join(f"{n}\n" for n in sorted(set(names)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m airlock.host.seccomp", description=__doc__)
    p.add_argument("--strace", nargs="*", type=Path, default=[], help="strace logs or dirs")
    p.add_argument(
        "--strace-ff",
        nargs="*",
        type=Path,
        default=[],
        help="directories of `strace -ff -o DIR/t` output: only the gateway processes' calls",
    )
    p.add_argument("--keep-list", action="store_true", help="add to the list, never drop")
    p.add_argument("--check", action="store_true", help="exit 1 if the profile is stale")
    args = p.parse_args(argv)
    current = read_list(LIST_PATH.read_text()) if LIST_PATH.is_file() else []
    if args.check:
        stale = not PROFILE_PATH.is_file() or PROFILE_PATH.read_text() != render(current)
        print("stale" if stale else "up to date")
        return 1 if stale else 0
    traced: set[str] = set()
    for path in args.strace:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            traced |= names_from_strace(f.read_text(errors="replace"))
    for d in args.strace_ff:
        logs = {
            int(f.name.rpartition(".")[2]): f.read_text(errors="replace")
            for f in d.iterdir()
            if f.is_file() and f.name.rpartition(".")[2].isdigit()
        }
        traced |= traced_tree(logs)
    if "clone3" in traced:
        # clone3 is answered ENOSYS (its flags are behind a pointer seccomp cannot read), so
        # glibc creates the same threads with clone, allowed without namespace flags.
        traced.add("clone")
    dropped = sorted(traced & FORBIDDEN)
    names = (traced - FORBIDDEN) | (set(current) if args.keep_list or not traced else set())
    names |= RUNTIME | CHECKS | TUNNEL
    LIST_PATH.parent.mkdir(parents=True, exist_ok=True)
    LIST_PATH.write_text(_list_text(names))
    PROFILE_PATH.write_text(render(names))
    print(f"{len(names)} syscalls -> {PROFILE_PATH}")
    if dropped:
        print(f"traced but forbidden, left out: {', '.join(dropped)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
