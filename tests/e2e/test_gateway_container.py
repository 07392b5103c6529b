"""The gateway as its hardened container: built offline, started by `airlock gateway` in
container mode, inspected through Docker, serving a host bundle's git clone through its
published port, and confining a process `docker exec`'d into it (escape attempts).

The upstream is git's http-backend on the gateway network's bridge address on this host
(the only address the container reaches that the tests own); nothing else is contacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import docker.types
import pytest

from airlock.config import load_config
from airlock.host.gateway_container import LABEL, RUNTIME_ROOT
from airlock.host.gateway_image import ensure_gateway_image
from airlock.host.seccomp import gateway_profile_json
from airlock.testing import escape_attempts
from airlock.testing.ports import free_port
from airlock.testing.repos import create_bare_repo, git_env
from airlock.testing.tls import make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream
from tests.e2e.conftest import E2E
from tests.world import LoopThread

pytestmark = E2E

SUBNET = "10.251.14.0/24"
BRIDGE = "10.251.14.1"
TOKEN = "ghs_" + "C0ntainerUpstreamT0ken" + "x" * 14
UID = 10001


@dataclass
class GatewayBox:
    root: Path
    config: Path
    name: str
    port: int
    token_file: Path
    other_secret: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def container(self, client: docker.DockerClient) -> Any:
        return client.containers.get(self.name)


def _config_text(root: Path, name: str, port: int, upstream_url: str, ca: Path) -> str:
    return f"""
[gateway]
mode = "container"
state_dir = "{root}/state"
control_socket = "{root}/run/gateway/control.sock"
git_listen = "127.0.0.1:{port}"
control_uids = [0]
audit_log = "{root}/log/audit.jsonl"
integrity_manifest = "{root}/host/integrity.json"

[gateway.container]
name = "{name}"
network = "{name}"
subnet = "{SUBNET}"
uid = {UID}
host_ports = [{urlsplit(upstream_url).port or 443}]  # the test upstream, on the bridge address

[sandbox]
bundle_dir = "{root}/bundles"

[[upstream]]
host = "github.com"
url = "{upstream_url}"
ca_file = "{ca}"
token_file = "{root}/secrets/token"
"""


def _cleanup(client: docker.DockerClient, name: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={name}"}):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        client.networks.get(name).remove()
    shutil.rmtree(RUNTIME_ROOT / name, ignore_errors=True)


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker.from_env(timeout=600)
    c.ping()
    yield c
    c.close()


@pytest.fixture(scope="module")
def box(client: docker.DockerClient) -> Iterator[GatewayBox]:
    name = f"airlock-gwtest-{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="airlock-gwc-"))
    loop = LoopThread()
    upstream: GitUpstream | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        # The network first: the upstream listens on its bridge address.
        client.networks.create(
            name,
            driver="bridge",
            labels={LABEL: name, "org.airlock.test": "1"},
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=SUBNET)]),
        )
        repos = root / "repos"
        repos.mkdir()
        create_bare_repo(repos, "demo", "hello", files={"README": b"hello from upstream\n"})
        secrets = root / "secrets"
        secrets.mkdir(mode=0o700)
        token_file = secrets / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        other = secrets / "other-secret"  # a host secret the gateway is not given
        other.write_text("not for the gateway\n")
        other.chmod(0o600)
        tls = make_test_ca_and_server_cert(root / "tls", ["localhost"], [BRIDGE])
        upstream = GitUpstream(repos, token_file, tls, host=BRIDGE)
        loop.run(upstream.start())
        port = free_port()
        config = root / "airlock.toml"
        config.write_text(_config_text(root, name, port, upstream.url, tls.ca_cert))
        tag = ensure_gateway_image(
            client, load_config(config), progress=lambda m: print(f"[img] {m}")
        )
        # The tag hashes airlock's sources: name the one built (the checkout may change).
        config.write_text(
            config.read_text().replace(
                "[gateway.container]\n", f'[gateway.container]\nimage = "{tag}"\n'
            )
        )
        log = root / "gateway.log"
        ready = root / "ready"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airlock.cli",
                "gateway",
                "--config",
                str(config),
                "--ready-file",
                str(ready),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),
            env=env,
        )
        deadline = time.monotonic() + 90
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"airlock gateway exited: {log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway container not ready in 90 s: {log.read_text()}")
            time.sleep(0.2)
        yield GatewayBox(root, config, name, port, token_file, other, proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        assert not client.containers.list(all=True, filters={"label": f"{LABEL}={name}"})
        proc = None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        _cleanup(client, name)
        if upstream is not None:
            loop.run(upstream.stop())
        loop.close()
        shutil.rmtree(root, ignore_errors=True)


def inspect_summary(attrs: dict[str, Any]) -> dict[str, Any]:
    hc = attrs["HostConfig"]
    return {
        "User": attrs["Config"]["User"],
        "ReadonlyRootfs": hc["ReadonlyRootfs"],
        "CapDrop": hc["CapDrop"],
        "CapAdd": hc["CapAdd"],
        "Privileged": hc["Privileged"],
        "SecurityOpt": [
            o if not o.startswith("seccomp=") else f"seccomp=<{len(o) - 8} bytes>"
            for o in hc["SecurityOpt"]
        ],
        "Tmpfs": hc["Tmpfs"],
        "Mounts": [
            (m["Source"], m["Destination"], "rw" if m["RW"] else "ro") for m in attrs["Mounts"]
        ],
        "Networks": {n: v["IPAddress"] for n, v in attrs["NetworkSettings"]["Networks"].items()},
        "Ports": hc["PortBindings"],
        "Sysctls": hc.get("Sysctls"),
        "Env": attrs["Config"]["Env"],
        "Labels": attrs["Config"]["Labels"],
    }


def test_inspect_shows_the_confinement(box: GatewayBox, client: docker.DockerClient) -> None:
    attrs = box.container(client).attrs
    s = inspect_summary(attrs)
    print("\n[inspect] " + json.dumps(s, indent=2))
    hc = attrs["HostConfig"]
    assert s["User"] == f"{UID}:{UID}"
    assert hc["ReadonlyRootfs"] is True
    assert hc["CapDrop"] == ["ALL"] and hc["CapAdd"] == ["NET_BIND_SERVICE"]
    assert hc["Privileged"] is False
    assert "no-new-privileges" in hc["SecurityOpt"]
    seccomp = [o.removeprefix("seccomp=") for o in hc["SecurityOpt"] if o.startswith("seccomp=")]
    assert len(seccomp) == 1
    assert json.loads(seccomp[0]) == json.loads(gateway_profile_json())
    assert list(hc["Tmpfs"]) == ["/tmp"]
    targets = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(targets) == {
        "/var/lib/airlock",
        "/run/airlock-control",
        "/var/log/airlock",
        "/run/secrets/airlock",
        "/etc/airlock",
    }
    assert not targets["/run/secrets/airlock"]["RW"] and not targets["/etc/airlock"]["RW"]
    for m in attrs["Mounts"]:
        assert "docker.sock" not in m["Source"] and m["Source"] not in ("/run", "/var/run")
    env = "\n".join(attrs["Config"]["Env"])
    assert TOKEN not in env and "GH_" not in env and "GITHUB_" not in env
    assert TOKEN not in json.dumps(attrs)
    assert attrs["Config"]["Labels"][LABEL] == box.name
    assert list(attrs["NetworkSettings"]["Networks"]) == [box.name]
    assert hc["PortBindings"] == {
        f"{box.port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(box.port)}]
    }
    # The running process itself, read from the host's /proc.
    pid = attrs["State"]["Pid"]
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    print(
        f"[proc] Uid {status['Uid']} CapEff {status['CapEff']} CapBnd {status['CapBnd']} "
        f"NoNewPrivs {status['NoNewPrivs']} Seccomp {status['Seccomp']}"
    )
    assert status["Uid"].split() == [str(UID)] * 4
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapBnd"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE only
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"


def test_a_host_bundle_clones_through_the_published_port(box: GatewayBox, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "airlock.cli",
            "session",
            "create",
            "--config",
            str(box.config),
            "--grant",
            "github.com/demo/hello:read",
            "--out",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    home = tmp_path / "home"
    home.mkdir()
    g = subprocess.run(
        ["git", "clone", "https://github.com/demo/hello", str(tmp_path / "hello")],
        env=git_env(home, GIT_CONFIG_GLOBAL=str(bundle / "gitconfig"), GIT_TERMINAL_PROMPT="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert g.returncode == 0, g.stderr + box.log.read_text()[-2000:]
    assert (tmp_path / "hello" / "README").read_text() == "hello from upstream\n"
    audit = (box.root / "log" / "audit.jsonl").read_text()
    assert "demo/hello" in audit and TOKEN not in audit


ATTEMPTS = {
    "write:/etc/airlock-escape": "the root file system is read-only",
    "write:/opt/airlock": "the venv is read-only",
    "write:/run/secrets/airlock": "the secrets directory is a read-only mount",
    "mount": "no CAP_SYS_ADMIN, seccomp",
    "unshare_user": "seccomp (clone/unshare namespace flags)",
    "unshare_mount": "seccomp",
    "ptrace": "seccomp; the gateway (pid 1) is another process",
    "raw_packet": "no CAP_NET_RAW",
    "raw_inet": "no CAP_NET_RAW",
    "raw_inet6": "no CAP_NET_RAW",
    "bpf_map_create": "seccomp",
    "bpf_prog_load": "seccomp",
    "add_key": "seccomp",
    "keyctl": "seccomp",
    "init_module": "seccomp, no CAP_SYS_MODULE",
    "finit_module": "seccomp, no CAP_SYS_MODULE",
    "docker_socket": "not mounted",
    "secret:/etc/shadow": "root's file, uid 10001",
}


def run_attempts(container: Any, other_secret: Path) -> dict[str, Any]:
    """escape_attempts.py piped to `python3 -` through `docker exec` (the container's user,
    capabilities, seccomp profile and no_new_privs)."""
    script = Path(escape_attempts.__file__).read_bytes()
    args = [
        "--writable", "/var/lib/airlock", "/tmp",
        "--probe-write", "/etc/airlock-escape", "/opt/airlock", "/run/secrets/airlock",
        "--ptrace-pid", "1",
        "--docker-socket", "/var/run/docker.sock",
        "--secret", "/etc/shadow", str(other_secret),
    ]  # fmt: skip
    r = subprocess.run(
        ["docker", "exec", "-i", container.name, "python3", "-", *args],
        input=script,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def test_escape_attempts_are_refused(box: GatewayBox, client: docker.DockerClient) -> None:
    results = run_attempts(box.container(client), box.other_secret)
    ctx = results.pop("_context", results.pop("_process", {}))
    print(f"\n[exec context] {ctx}")
    print(f"{'attempt':34} {'refused':8} {'how':10} detail")
    for k, v in results.items():
        if not k.startswith("_"):
            print(f"{k:34} {v['refused']!s:8} {v['how']:10} {str(v.get('detail'))[:60]}")
    # The controls: what the gateway may write, it can (so the probe really writes).
    assert results["writable:/var/lib/airlock"]["refused"] is False
    assert results["writable:/tmp"]["refused"] is False
    expected = {**ATTEMPTS, f"secret:{box.other_secret}": "not mounted"}
    not_refused = {k: results[k] for k in expected if results[k]["refused"] is not True}
    assert not not_refused, not_refused
    for probe in ("/etc/airlock-escape", "/opt/airlock", "/run/secrets/airlock"):
        assert results[f"write:{probe}"]["how"] == "EROFS", probe  # read-only, not just 0755
    assert results["ptrace"]["how"] in ("EPERM", "SIGSYS")
    assert results["bpf_map_create"]["how"] == "EPERM"
    assert results["keyctl"]["how"] == "EPERM"


def _refused_start(
    client: docker.DockerClient, tmp_path: Path, edit: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    name = f"airlock-gwtest-{uuid.uuid4().hex[:8]}"
    root = tmp_path
    (root / "secrets").mkdir(mode=0o700)
    (root / "secrets" / "token").write_text(TOKEN + "\n")
    (root / "secrets" / "token").chmod(0o600)
    (root / "ca.pem").write_text("")
    text = _config_text(root, name, free_port(), "https://127.0.0.1:9", root / "ca.pem")
    for old, new in edit.items():
        text = text.replace(old, new)
    config = root / "airlock.toml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    try:
        r = subprocess.run(
            [sys.executable, "-m", "airlock.cli", "gateway", "--config", str(config)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        # Nothing of the attempt is left: no container, no network, no copies.
        assert not client.containers.list(all=True, filters={"label": f"{LABEL}={name}"})
        assert not client.networks.list(names=[name])
        assert not (RUNTIME_ROOT / name).exists()
    finally:
        _cleanup(client, name)
    return r


def test_a_shared_socket_directory_is_refused_with_nothing_made(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    (tmp_path / "run" / "gateway").mkdir(parents=True)
    (tmp_path / "run" / "gateway" / "sandboxes").mkdir()
    r = _refused_start(client, tmp_path, {"uid = ": 'image = "airlock/gateway:absent"\nuid = '})
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "holds more than the gateway's socket and lock (sandboxes)" in r.stderr
    assert 'control_socket = "/run/airlock/gateway/control.sock"' in r.stderr


def test_a_missing_image_is_refused_with_nothing_made(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    r = _refused_start(client, tmp_path, {"uid = ": 'image = "airlock/gateway:absent"\nuid = '})
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "airlock/gateway:absent is not here; build it with: airlock image --gateway" in r.stderr
