"""The control socket's directory, attacked: symlinks, a swap after the checks, loose
modes, another owner, and a second gateway taking the socket away."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from airlock.gateway import unixsock
from airlock.gateway.unixsock import GatewayRunning, SocketPathError, bind_unix_socket


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def test_symlinked_parent_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SocketPathError, match="symlink"):
        bind_unix_socket(tmp_path / "link" / "control.sock")
    assert list(real.iterdir()) == []


def test_symlink_higher_up_the_path_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "run").mkdir(parents=True, mode=0o700)
    (tmp_path / "up").symlink_to(real)
    with pytest.raises(SocketPathError, match="symlink"):
        bind_unix_socket(tmp_path / "up" / "run" / "control.sock")
    assert list((real / "run").iterdir()) == []


def test_parent_swapped_for_a_symlink_after_the_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the directory checks and the bind, the directory is renamed away and a
    symlink to an attacker's directory put in its place: the socket must still be created
    in the directory that was checked, never through the symlink."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    attacker = tmp_path / "attacker"
    attacker.mkdir(mode=0o777)
    moved = tmp_path / "checked-dir"
    real_lock = unixsock._lock

    def swap_then_lock(dir_fd: int, sock_path: Path) -> int:
        os.rename(run, moved)
        run.symlink_to(attacker)
        return real_lock(dir_fd, sock_path)

    monkeypatch.setattr(unixsock, "_lock", swap_then_lock)
    control = bind_unix_socket(run / "control.sock")
    try:
        assert list(attacker.iterdir()) == []
        assert stat.S_ISSOCK(os.lstat(moved / "control.sock").st_mode)
        assert stat.S_IMODE(os.lstat(moved / "control.sock").st_mode) == 0o600
        assert _connectable(moved / "control.sock")
    finally:
        control.close()


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o707, 0o777])
def test_group_or_world_writable_parent_is_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(SocketPathError, match="writable"):
        bind_unix_socket(d / "control.sock")
    assert list(d.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_parent_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(SocketPathError, match="owned by uid 65534"):
        bind_unix_socket(d / "control.sock")
    assert list(d.iterdir()) == []


def test_a_second_bind_cannot_take_the_socket_away(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    first = bind_unix_socket(path)
    try:
        inode = os.lstat(path).st_ino
        with pytest.raises(GatewayRunning, match=f"another gateway is running on {path}"):
            bind_unix_socket(path)
        assert os.lstat(path).st_ino == inode and _connectable(path)
    finally:
        first.close()
    # Once the first is gone (a stale socket stays, as after a crash), a new one may start.
    second = bind_unix_socket(path)
    try:
        assert _connectable(path)
    finally:
        second.unlink()
        second.close()
    assert not path.exists()
