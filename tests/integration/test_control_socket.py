"""The control socket: directory and path hardening, SO_PEERCRED, and the JSON API."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from airlock.gateway.unixsock import SocketPathError, bind_unix_socket, prepare_socket_dir
from airlock.host.control_client import ControlClient, ControlError
from tests.world import HOST, World


def test_refuses_world_writable_directory(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(SocketPathError, match="world-writable"):
        prepare_socket_dir(d / "control.sock")
    assert not (d / "control.sock").exists()


def test_refuses_group_writable_directory(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, 0o770)
    with pytest.raises(SocketPathError):
        prepare_socket_dir(d / "control.sock")


def test_refuses_symlinked_directory(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(SocketPathError, match="symlink"):
        prepare_socket_dir(link / "control.sock")


def test_refuses_symlinked_socket_path(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.sock"
    (d / "control.sock").symlink_to(target)
    with pytest.raises(SocketPathError, match="symlink"):
        prepare_socket_dir(d / "control.sock")


def test_refuses_to_remove_a_non_socket(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    (d / "control.sock").write_text("important")
    with pytest.raises(SocketPathError, match="not a socket"):
        prepare_socket_dir(d / "control.sock")
    assert (d / "control.sock").read_text() == "important"


def test_socket_is_0600_in_a_0700_directory_and_stale_socket_replaced(tmp_path: Path) -> None:
    path = tmp_path / "new" / "control.sock"
    s1 = bind_unix_socket(path)
    s1.close()  # leaves a stale socket file behind, as a crash would
    s2 = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o700
    finally:
        s2.close()


def test_caller_uid_not_allowed_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    w = World(tmp_path_factory.mktemp("uidworld"))
    w.start()
    try:
        assert w.control.health()["status"] == "ok"
        w.stop_gateway()
        text = w.config.read_text().replace(
            f"control_uids = [{os.geteuid()}]", "control_uids = [4242]"
        )
        w.config.write_text(text)
        w.start_gateway()
        with pytest.raises(ControlError, match=f"uid {os.geteuid()} may not use"):
            w.control.health()
        assert any(e["event"] == "control_refused" for e in w.audit())
    finally:
        w.stop()


def test_other_local_users_cannot_even_connect(world: World) -> None:
    # Run a child as 'nobody': the 0700 directory stops it before SO_PEERCRED is asked.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(world.socket))
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_api_validates_input(world: World) -> None:
    c = world.control
    with pytest.raises(ControlError, match="grants"):
        c.call("POST", "/v1/sessions", {"grants": "github.com/a/b:read", "csr": "x"})
    # No grants at all is an egress-only session: refused here only for its bad CSR.
    with pytest.raises(ControlError, match="csr"):
        c.call("POST", "/v1/sessions", {"grants": [], "csr": "x"})
    with pytest.raises(ControlError, match=r"evil: Extra inputs"):
        c.call("POST", "/v1/sessions", {"grants": [f"{HOST}/a/b:read"], "csr": "x", "evil": 1})
    with pytest.raises(ControlError, match="csr"):
        c.call("POST", "/v1/sessions", {"grants": [f"{HOST}/a/b:read"], "csr": "not a csr"})
    with pytest.raises(ControlError, match="access must be"):
        world.session(f"{HOST}/a/b:admin")
    with pytest.raises(ControlError) as e:
        c.show("s-doesnotexist")
    assert e.value.status == 404
    assert len(c.list_sessions()) == c.health()["sessions"]


def test_missing_gateway_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no gateway control socket"):
        ControlClient(tmp_path / "nope.sock").health()
