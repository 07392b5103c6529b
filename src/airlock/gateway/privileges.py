"""Dropping root: the gateway re-executes itself as an unprivileged user with one capability.

The gateway binds DNS (port 53) and its git and egress listeners on sandbox bridge addresses
as sandboxes come and go, so it keeps CAP_NET_BIND_SERVICE and nothing else: every other
capability leaves the bounding set too, supplementary groups are cleared and no_new_privs is
set. util-linux's ``setpriv`` makes the switch before the interpreter starts, so no airlock
code runs as root in the gateway process once it is up. Root only prepares what the user must
own: the state directory, the control socket's directory and the audit log.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from airlock.config import Config
from airlock.core.hostpaths import handed_over_problem

__all__ = [
    "DROPPED_ENV",
    "Account",
    "PrivilegeError",
    "capabilities",
    "check_can_run",
    "find_setpriv",
    "lookup",
    "prepare",
    "setpriv_argv",
]

#: Set in the re-executed gateway's environment: it must not try to drop again.
DROPPED_ENV = "AIRLOCK_GATEWAY_DROPPED"
CAP_NET_BIND_SERVICE = 10


class PrivilegeError(Exception):
    """The drop cannot be done safely; the message says what to change."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def lookup(name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(
            f"gateway.user: no user {name!r}; create one, e.g.: "
            f"useradd --system --no-create-home --shell /usr/sbin/nologin {name}"
        ) from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"gateway.user: {name!r} is root; name an unprivileged user")
    return Account(name=name, uid=pw.pw_uid, gid=pw.pw_gid)


def setpriv_argv(setpriv: str, account: Account, argv: list[str]) -> list[str]:
    """The command that runs ``argv`` as ``account`` with CAP_NET_BIND_SERVICE only."""
    cap = "-all,+net_bind_service"
    return [
        setpriv,
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        f"--inh-caps={cap}",
        f"--ambient-caps={cap}",
        f"--bounding-set={cap}",
        "--no-new-privs",
        "--",
        *argv,
    ]


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def prepare(config: Config, account: Account) -> None:
    """As root: give ``account`` the paths the gateway writes, and nothing more."""
    gw = config.gateway
    state = gw.state_dir.resolve()
    socket_dir = gw.control_socket.parent
    bundles = config.sandbox.bundle_dir.resolve()
    for path, what, example in (
        (state, "state_dir", "/var/lib/airlock"),
        (socket_dir.resolve(), "control_socket's directory", "/run/airlock/gateway"),
    ):
        # /etc/ssh or /var/lib would be handed over (lchown'd) with everything in it.
        problem = handed_over_problem(path, what, example)
        if problem is not None:
            raise PrivilegeError(f"gateway.user: {problem}")
    if len(state.parts) < 3 or _within(bundles, state):
        raise PrivilegeError(
            f"gateway.user: state_dir {state} is not a directory of its own (it would hand "
            f"{account.name} more than the gateway's state); use e.g. /var/lib/airlock"
        )
    if not gw.control_socket.is_absolute() or _within(bundles, socket_dir.resolve()):
        raise PrivilegeError(
            f"gateway.user: the control socket's directory {socket_dir} also holds "
            f"sandbox.bundle_dir ({bundles}); give the socket a directory of its own, e.g. "
            'control_socket = "/run/airlock/gateway/control.sock"'
        )
    for d in (state, socket_dir):
        if d.is_symlink():
            raise PrivilegeError(f"gateway.user: {d} is a symlink; refusing to hand it over")
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The state directory's files may come from a gateway that ran as root before.
    for root, dirs, files in os.walk(state):
        for name in [*dirs, *files]:
            os.lchown(Path(root) / name, account.uid, account.gid)
    for d in (state, socket_dir):
        os.chown(d, account.uid, account.gid)
        os.chmod(d, 0o700)
    if gw.audit_log is not None:
        if gw.audit_log.is_symlink():
            raise PrivilegeError(f"gateway.user: audit_log {gw.audit_log} is a symlink")
        fd = os.open(gw.audit_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchown(fd, account.uid, account.gid)
        finally:
            os.close(fd)


def check_can_run(setpriv: str, account: Account, python: str) -> None:
    """The user must be able to start this Python and import airlock (no root-only paths)."""
    probe = setpriv_argv(setpriv, account, [python, "-c", "import airlock.cli"])
    r = subprocess.run(probe, capture_output=True, text=True, timeout=60, cwd="/")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise PrivilegeError(
            f"gateway.user: {account.name} cannot run {python} with airlock ({last}); install "
            "airlock where that user can read it"
        )


def find_setpriv() -> str:
    path = shutil.which("setpriv")
    if path is None:
        raise PrivilegeError("gateway.user needs setpriv (Debian: apt-get install util-linux)")
    return path


def capabilities(status: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb from a /proc/PID/status text, as integers."""
    caps: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            caps[key] = int(value.strip(), 16)
    return caps
