"""host/dockerclient.py: permission denied on the Docker socket is not "Docker is not
running", and the message says which; DOCKER_HOST is honoured."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.host.dockerclient import (
    DEFAULT_HOST,
    DockerUnavailable,
    docker_client,
    docker_host,
    explain_errno,
    unix_socket_path,
)


def test_docker_host_and_its_socket() -> None:
    assert docker_host({}) == DEFAULT_HOST
    assert docker_host({"DOCKER_HOST": "tcp://127.0.0.1:2375"}) == "tcp://127.0.0.1:2375"
    assert unix_socket_path("unix:///run/d.sock") == "/run/d.sock"
    assert unix_socket_path("http+unix:///run/d.sock") == "/run/d.sock"
    assert unix_socket_path("tcp://127.0.0.1:2375") is None
    assert unix_socket_path("ssh://u@h") is None


def test_each_errno_has_its_own_message() -> None:
    denied = explain_errno(DEFAULT_HOST, errno.EACCES, uid=1000, group="docker")
    assert denied.reason == "permission"
    assert "permission denied on the Docker socket /var/run/docker.sock for uid 1000" in str(denied)
    assert "not running" not in str(denied) and "group 'docker'" in str(denied)
    gone = explain_errno(DEFAULT_HOST, errno.ENOENT, uid=0)
    assert gone.reason == "not_running" and "no socket at /var/run/docker.sock" in str(gone)
    refused = explain_errno("tcp://127.0.0.1:1", errno.ECONNREFUSED, uid=0)
    assert refused.reason == "not_running" and "nothing answers at tcp://127.0.0.1:1" in str(
        refused
    )
    other = explain_errno(DEFAULT_HOST, errno.EIO, uid=0)
    assert other.reason == "error"
    for exc in (denied, gone, refused, other):
        assert "\n" not in str(exc)


def test_no_socket_is_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    with pytest.raises(DockerUnavailable) as info:
        docker_client()
    assert info.value.reason == "not_running"
    assert f"no socket at {tmp_path}/docker.sock" in str(info.value)


def test_a_socket_nobody_listens_on_is_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # bound, never listening: ECONNREFUSED
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        with pytest.raises(DockerUnavailable) as info:
            docker_client()
    assert info.value.reason == "not_running"
    assert f"nothing answers at {path}" in str(info.value)


def test_a_tcp_port_nobody_listens_on_is_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # reserved, not listening: the connection is refused
        port = s.getsockname()[1]
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
        with pytest.raises(DockerUnavailable) as info:
            docker_client(timeout=5)
    assert info.value.reason == "not_running"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a check as another uid")
def test_a_socket_this_uid_may_not_open_is_permission_denied(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        path.chmod(0o600)
        code = (
            "from airlock.host.dockerclient import docker_client, DockerUnavailable\n"
            "try:\n    docker_client()\nexcept DockerUnavailable as e:\n"
            "    print(e.reason); print(e)\n"
        )
        r = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            env={"DOCKER_HOST": f"unix://{path}", "PATH": os.environ["PATH"]},
            timeout=60,
        )
    reason, message = r.stdout.splitlines()
    assert reason == "permission", r.stderr
    assert f"permission denied on the Docker socket {path} for uid 65534" in message
