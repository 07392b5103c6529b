"""Every failure of the real CLI is one line that says what to do, with a non-zero exit code
and no traceback, also (above all) for a user who is not root: root-only commands, the
control socket (permission, not in gateway.control_uids, missing, nobody listening), Docker
(permission denied is not "not running"), and the config file (where it was looked for)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.cli.common import SYSTEM_CONFIG
from tests.world import World, system_user

USER = "airlock-cli-test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLI as another user (root)")


@pytest.fixture(scope="module")
def account() -> pwd.struct_passwd:
    return system_user(USER)


@pytest.fixture(scope="module")
def gw() -> Iterator[World]:
    """A real gateway (as root) whose config any user can read; its socket is root's."""
    root = Path(tempfile.mkdtemp(prefix="airlock-cli-"))
    root.chmod(0o755)
    w = World(root)
    w.start()
    yield w
    w.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the test user can read (pytest's tmp_path is root's, 0700)."""
    d = Path(tempfile.mkdtemp(prefix="airlock-cli-scratch-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def airlock(
    *args: str,
    account: pwd.struct_passwd | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """The real CLI, as ``account`` (through setpriv) or as root, in a clean environment."""
    e = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": "/nonexistent"}
    e.update(env or {})
    argv = [sys.executable, "-m", "airlock.cli", *args]
    if account is not None:
        argv = [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            "--",
            *argv,
        ]
    return subprocess.run(
        argv, capture_output=True, text=True, env=e, cwd=cwd or "/", timeout=120, check=False
    )


def one_line(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("airlock: "), line
    for needle in needles:
        assert needle in line, line
    return line


# --- root ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--grant", "github.com/a/b:read", "busybox", "true"],
        ["stop", "agent1"],
        ["rm", "agent1"],
        ["supervise", "--once"],
        ["image"],
    ],
    ids=lambda a: a[0],
)
def test_root_only_commands_say_so_as_another_user(
    account: pwd.struct_passwd, args: list[str]
) -> None:
    r = airlock(*args, account=account)
    one_line(r, 1, f"airlock {args[0]} must run as root", "sudo")


def test_help_of_a_root_only_command_still_works(account: pwd.struct_passwd) -> None:
    r = airlock("run", "--help", account=account)
    assert r.returncode == 0 and "--grant" in r.stdout


# --- the control socket -------------------------------------------------------------------


def test_control_socket_permission_denied(gw: World, account: pwd.struct_passwd) -> None:
    r = airlock("session", "list", "--config", str(gw.config), account=account)
    one_line(
        r,
        1,
        f"permission denied on the control socket {gw.socket} for uid {account.pw_uid}",
        "run as root",
    )


def test_a_uid_not_in_control_uids_is_told_so(gw: World, account: pwd.struct_passwd) -> None:
    """The filesystem lets the user through; the gateway (SO_PEERCRED) refuses it."""
    run_dir = gw.socket.parent
    run_dir.chmod(0o711)
    gw.socket.chmod(0o666)
    try:
        r = airlock("session", "list", "--config", str(gw.config), account=account)
        one_line(
            r, 1, f"uid {account.pw_uid} is not in gateway.control_uids", "restart the gateway"
        )
    finally:
        gw.socket.chmod(0o600)
        run_dir.chmod(0o700)
    assert any(
        e.get("event") == "control_refused" and e.get("uid") == account.pw_uid for e in gw.audit()
    )


def _config_with_socket(gw: World, dest: Path, sock: Path) -> Path:
    text = gw.config.read_text().replace(f'"{gw.socket}"', f'"{sock}"')
    assert str(sock) in text
    dest.write_text(text)
    dest.chmod(0o644)
    return dest


def test_no_socket_means_the_gateway_is_not_running(
    gw: World, account: pwd.struct_passwd, scratch: Path
) -> None:
    config = _config_with_socket(gw, scratch / "airlock.toml", scratch / "control.sock")
    for who in (account, None):
        r = airlock("session", "list", "--config", str(config), account=who)
        one_line(r, 1, f"no gateway control socket at {scratch}/control.sock", "not running")


def test_a_socket_nobody_listens_on_means_the_gateway_is_not_running(
    gw: World, account: pwd.struct_passwd, scratch: Path
) -> None:
    sock_path = scratch / "control.sock"
    config = _config_with_socket(gw, scratch / "airlock.toml", sock_path)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))  # a stale socket: bound, nobody listening
        sock_path.chmod(0o666)
        r = airlock("session", "list", "--config", str(config), account=account)
    one_line(r, 1, f"nothing listens on {sock_path}", "airlock gateway")


def test_the_same_commands_work_as_root(gw: World) -> None:
    r = airlock("session", "list", "--config", str(gw.config))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("SESSION ID")


# --- Docker -------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="no Docker engine")
def test_docker_permission_denied_is_not_not_running(gw: World, account: pwd.struct_passwd) -> None:
    r = airlock("doctor", "--config", str(gw.config), account=account)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.returncode == 1
    docker = [line for line in r.stdout.splitlines() if line.split()[1:2] == ["docker"]]
    assert docker, r.stdout
    assert docker[0].startswith("FAIL")
    assert (
        f"permission denied on the Docker socket /var/run/docker.sock for uid {account.pw_uid}"
        in docker[0]
    )
    assert "not running" not in docker[0]


def test_docker_not_running_is_said_so(gw: World, scratch: Path) -> None:
    r = airlock(
        "doctor",
        "--config",
        str(gw.config),
        env={"DOCKER_HOST": f"unix://{scratch}/docker.sock"},
    )
    docker = [line for line in r.stdout.splitlines() if line.split()[1:2] == ["docker"]]
    assert docker and docker[0].startswith("FAIL"), r.stdout
    assert f"Docker is not running: no socket at {scratch}/docker.sock" in docker[0]


# --- the config file ----------------------------------------------------------------------


def test_no_config_anywhere_names_where_it_looked(
    account: pwd.struct_passwd, scratch: Path
) -> None:
    if SYSTEM_CONFIG.exists():
        pytest.skip(f"{SYSTEM_CONFIG} exists on this machine")
    (scratch / "airlock.toml").write_text("[gateway]\n")  # in the cwd: never read
    (scratch / "airlock.toml").chmod(0o644)
    r = airlock("session", "list", account=account, env={"HOME": str(scratch)}, cwd=scratch)
    one_line(
        r,
        2,
        f"none at {scratch}/.config/airlock/airlock.toml or {SYSTEM_CONFIG}",
        "--config FILE",
    )
    r = airlock("ps", env={"HOME": str(scratch)}, cwd=scratch)  # root: no per-user file
    one_line(r, 2, f"none at {SYSTEM_CONFIG};")


def test_a_missing_config_from_the_environment_is_not_passed_over(
    account: pwd.struct_passwd, scratch: Path
) -> None:
    r = airlock(
        "session", "list", account=account, env={"AIRLOCK_CONFIG": str(scratch / "nope.toml")}
    )
    one_line(r, 2, f"config file {scratch}/nope.toml (from $AIRLOCK_CONFIG) does not exist")


def test_the_users_own_config_is_used_but_never_by_root(
    gw: World, account: pwd.struct_passwd, scratch: Path
) -> None:
    conf_dir = scratch / ".config" / "airlock"
    conf_dir.mkdir(parents=True)
    for d in (scratch / ".config", conf_dir):
        d.chmod(0o755)
    _config_with_socket(gw, conf_dir / "airlock.toml", scratch / "users-own.sock")
    r = airlock("session", "list", account=account, env={"HOME": str(scratch)})
    one_line(r, 1, f"no gateway control socket at {scratch}/users-own.sock")
    if not SYSTEM_CONFIG.exists():
        r = airlock(
            "session",
            "list",
            env={"HOME": str(scratch), "XDG_CONFIG_HOME": str(scratch / ".config")},
        )
        one_line(r, 2, f"none at {SYSTEM_CONFIG};")


def test_a_config_this_user_cannot_read(
    gw: World, account: pwd.struct_passwd, scratch: Path
) -> None:
    config = scratch / "airlock.toml"
    shutil.copy(gw.config, config)
    config.chmod(0o600)
    r = airlock("session", "list", "--config", str(config), account=account)
    one_line(
        r, 2, f"config file {config}: permission denied for uid {account.pw_uid}", "run as root"
    )
