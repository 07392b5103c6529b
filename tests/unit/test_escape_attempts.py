"""escape_attempts.py probes for real: as root, unconfined, what root can do is reported done.

An attempt reported refused only proves something if the same probe, where the action is
allowed, reports it done. These tests run the script as root on the host (the attempts
undo what they do at once) and as an unprivileged user (the refusals it then reports).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import airlock.testing.escape_attempts as ea

SCRIPT = Path(ea.__file__)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def run(*args: str, user: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(SCRIPT), *args]
    if user is not None:
        # The venv's interpreter lives under a directory nobody may read: use the system one.
        python = shutil.which("python3.11", path="/usr/bin") or "/usr/bin/python3"
        cmd = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            python,
            str(SCRIPT),
            *args,
        ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@root_only
def test_root_unconfined_can_do_what_root_can(tmp_path: Path, sleeper: int) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run(
        "--writable",
        str(tmp_path),
        "--probe-write",
        str(elsewhere),
        "--ptrace-pid",
        str(sleeper),
        "--secret",
        str(secret),
        "/etc/shadow",
    )
    done = {k for k, v in r.items() if not k.startswith("_") and not v["refused"]}
    expected = {
        f"writable:{tmp_path}",
        f"write:{elsewhere}",
        "mount",
        "unshare_user",
        "unshare_mount",
        "ptrace",
        "raw_packet",
        "raw_inet",
        "raw_inet6",
        "bpf_map_create",
        "bpf_prog_load",
        "add_key",
        "keyctl",
        f"secret:{secret}",
        "secret:/etc/shadow",
    }
    assert expected <= done, {k: r[k] for k in expected - done}
    if Path("/var/run/docker.sock").exists():
        assert r["docker_socket"]["refused"] is False, r["docker_socket"]
    # Module loading: root passes the permission check (the garbage image is then
    # rejected), unless the kernel has no modules at all (ENOSYS).
    for name in ("init_module", "finit_module"):
        assert r[name]["how"] != "EPERM", r[name]
    # Nothing it did stays: no file, no mount.
    assert sorted(p.name for p in elsewhere.iterdir()) == []
    assert "airlock-probe" not in Path("/proc/self/mounts").read_text()
    assert r["_context"]["euid"] == 0


@root_only
def test_unprivileged_user_is_refused_what_it_lacks(tmp_path: Path) -> None:
    r = run(
        "--probe-write",
        "/etc",
        "--ptrace-pid",
        "1",
        "--secret",
        "/etc/shadow",
        "--docker-socket",
        "/var/run/docker.sock",
        user="65534",
    )
    for name in (
        "write:/etc",
        "mount",
        "unshare_mount",
        "ptrace",
        "raw_packet",
        "raw_inet",
        "bpf_map_create",
        "secret:/etc/shadow",
    ):
        assert r[name]["refused"] is True, (name, r[name])
        assert r[name]["how"] in {"EPERM", "EACCES"}, (name, r[name])
    assert r["_context"]["uid"] != 0


def test_a_signal_is_a_result() -> None:
    def die() -> ea.Result:
        os.kill(os.getpid(), 31)  # SIGSYS, as seccomp's default action
        return ea._ok()

    r = ea.in_child(die)
    assert r == {"refused": True, "how": "SIGSYS", "detail": "the attempt was killed by SIGSYS"}


def test_an_exception_is_a_result() -> None:
    def boom() -> ea.Result:
        raise ValueError("x")

    r = ea.in_child(boom)
    assert r["refused"] is True and r["how"] == "ERROR"


def test_only_selects_attempts_and_context_is_given() -> None:
    r = run("--only", "keyctl")
    assert set(r) == {"_context", "keyctl"}
    assert {"uid", "cap_eff", "seccomp", "no_new_privs"} <= set(r["_context"])


def test_script_is_stdlib_only() -> None:
    text = SCRIPT.read_text()
    assert "airlock" not in "".join(
        line for line in text.splitlines() if line.startswith(("import ", "from "))
    )
