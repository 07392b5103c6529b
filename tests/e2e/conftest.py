"""Fixtures for sandboxes on the real Docker engine, driven through airlock's own SandboxManager.

Each test module gets one World (a git http-backend upstream and a real gateway process) whose
config adds a ``[sandbox]`` section with the module's own address ``POOL`` (a module-level
constant), so test files can run in parallel without competing for subnets. Everything a test
starts is torn down in finalizers, and everything the tests create directly (decoy networks and
containers) carries the ``org.airlock.test`` label.

Only loopback, this host's own addresses and networks/containers created here are ever
contacted; decoys are servers the tests start themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

from airlock.config import load_config
from airlock.host import firewall
from airlock.host.containerspec import RunSpec
from airlock.host.images import SANDBOX_UID, ensure_sandbox_image
from airlock.host.sandbox import LABEL, Sandbox, SandboxManager
from tests.world import World, system_user, unprivileged_world

DOCKER_SOCK = Path("/var/run/docker.sock")
E2E = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not DOCKER_SOCK.exists(),
        reason=f"no Docker engine: {DOCKER_SOCK} is absent (run .ci/setup-system.sh as root)",
    ),
]
BUNDLE_DIR = Path("/run/airlock-test/sandboxes")
TEST_LABEL = "org.airlock.test"
GIT_TIMEOUT = 20  # seconds for one git command inside a sandbox (dropped SYNs otherwise hang)


def sandbox_config(pool: str, extra: str = "") -> str:
    return f'[sandbox]\nbundle_dir = "{BUNDLE_DIR}"\npool = "{pool}"\n{extra}'


# --- Docker and the image --------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    if not DOCKER_SOCK.exists():
        pytest.skip(f"no Docker engine: {DOCKER_SOCK} is absent")
    c = docker.from_env(timeout=120)
    c.ping()
    yield c
    c.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client: docker.DockerClient) -> str:
    # First run: debootstrap + import (~1-2 min); afterwards the tag exists and this is instant.
    return str(ensure_sandbox_image(docker_client, progress=lambda m: print(f"[image] {m}")))


# --- the world and the sandboxes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sbx_world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    pool = getattr(request.module, "POOL", "10.213.0.0/16")
    extra = getattr(request.module, "SANDBOX_EXTRA", "")
    user = getattr(request.module, "GATEWAY_USER", None)  # the gateway runs as this user
    if user is None:
        w = World(tmp_path_factory.mktemp("world"), config_extra=sandbox_config(pool, extra))
        root = None
    else:
        root = Path(tempfile.mkdtemp(prefix="airlock-e2e-unpriv-"))
        w = unprivileged_world(root, system_user(user), sandbox_config(pool, extra))
    w.start()
    yield w
    remove_everything_of(w)
    w.stop()
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def remove_everything_of(world: World) -> None:
    """What a module's gateway still owns on this host (spare networks a supervisor made,
    sandboxes a test left): removed through the manager while the gateway still answers."""
    with contextlib.suppress(Exception):
        manager = SandboxManager(load_config(world.config))
        for sid in manager.all_sandbox_ids() | manager.spare_ids():
            with contextlib.suppress(Exception):
                manager.teardown(sid, "test module finished")


@dataclass
class RunResult:
    code: int
    output: str
    sandbox: Sandbox


@dataclass
class Sandboxes:
    """Starts sandboxes through SandboxManager and remembers every id so nothing outlives a test."""

    world: World
    client: docker.DockerClient
    image: str
    manager: SandboxManager = field(init=False)
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.manager = self.new_manager()

    def new_manager(self, **kw: Any) -> SandboxManager:
        return SandboxManager(load_config(self.world.config), client=self.client, **kw)

    @property
    def api(self) -> Any:
        return self.client.api

    def spec(
        self,
        command: str | list[str],
        grants: Iterable[str] = (),
        **kw: Any,
    ) -> RunSpec:
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        # As `airlock run --rm`: whoever sees the container exit removes all of it, so a test
        # can ask "is anything left?" (the keep-the-container lifecycle has its own tests).
        kw.setdefault("remove", True)
        return RunSpec(image=self.image, command=argv, grants=list(grants), **kw)

    def start(
        self,
        command: str | list[str],
        grants: Iterable[str] = (),
        *,
        open_gate: bool = True,
        **kw: Any,
    ) -> Sandbox:
        spec = self.spec(command, grants, **kw)
        sb = self.manager.start(spec, open_gate=open_gate)
        self.ids.append(sb.id)
        return sb

    def wait(self, sb: Sandbox, timeout: float = 120) -> int:
        result = self.api.wait(sb.container_id, timeout=timeout)
        return int(result.get("StatusCode", 1))

    def logs(self, sb: Sandbox) -> str:
        data: bytes = self.api.logs(sb.container_id, stdout=True, stderr=True)
        return data.decode(errors="replace")

    def run(
        self,
        command: str | list[str],
        grants: Iterable[str] = (),
        *,
        timeout: float = 120,
        **kw: Any,
    ) -> RunResult:
        """Run ``command`` as a sandbox's command (from its first instruction); tear it down."""
        sb = self.start(command, grants, **kw)
        try:
            code = self.wait(sb, timeout)
            return RunResult(code, self.logs(sb), sb)
        finally:
            self.teardown(sb)

    def exec(self, sb: Sandbox, script: str, *, user: str | None = None) -> tuple[int, str]:
        """Run ``script`` inside a running sandbox (same namespaces, user, capabilities)."""
        exec_id = self.api.exec_create(
            sb.container_id, ["/bin/sh", "-c", script], user=user or f"{SANDBOX_UID}"
        )
        out: bytes = self.api.exec_start(exec_id)
        code = self.api.exec_inspect(exec_id)["ExitCode"]
        return int(code if code is not None else -1), out.decode(errors="replace")

    def teardown(self, sb: Sandbox | str) -> None:
        sid = sb if isinstance(sb, str) else sb.id
        self.manager.teardown(sid, "test finished")

    def cleanup(self) -> None:
        for sid in self.ids:
            with contextlib.suppress(Exception):
                self.manager.teardown(sid, "test cleanup")

    # --- what is left of a sandbox ------------------------------------------------------------

    def leftovers(self, sid: str) -> list[str]:
        """Everything that still exists for sandbox ``sid``, described; empty when clean."""
        found: list[str] = []
        flt = {"label": [f"{LABEL}={sid}"]}
        for c in self.api.containers(all=True, filters=flt):
            found.append(f"container {c['Id'][:12]} ({c.get('State')})")
        for n in self.api.networks(filters=flt):
            found.append(f"network {n['Name']}")
        if sid in firewall.list_sandbox_rule_names():
            found.append(f"nft chains sbx_{sid}_*")
        bundle = self.manager.bundle_root / sid
        if bundle.exists():
            found.append(f"bundle dir {bundle}")
        if self.manager.hold_path(sid).exists():
            found.append(f"hold lock {self.manager.hold_path(sid)}")
        if Path(f"/sys/class/net/al-{sid}").exists():
            found.append(f"bridge al-{sid}")
        for s in self.world.control.list_sessions():
            if s.get("labels", {}).get("sandbox") == sid and s["state"] != "revoked":
                found.append(f"session {s['id']} ({s['state']})")
        return found


@pytest.fixture(scope="module")
def sandboxes(
    sbx_world: World, docker_client: docker.DockerClient, sandbox_image: str
) -> Iterator[Sandboxes]:
    s = Sandboxes(sbx_world, docker_client, sandbox_image)
    yield s
    s.cleanup()


# --- things the tests create directly ----------------------------------------------------------


def docker_subnets(client: docker.DockerClient) -> set[IPv4Network]:
    taken: set[IPv4Network] = set()
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, KeyError):
                taken.add(IPv4Network(cfg["Subnet"]))
    return taken


@dataclass
class PlainNetwork:
    """A normal (routed, non-internal) Docker network outside airlock, for decoys and controls."""

    name: str
    bridge: str
    subnet: IPv4Network


def create_plain_network(client: docker.DockerClient, pool: IPv4Network) -> PlainNetwork:
    tag = uuid.uuid4().hex[:6]
    # Not "al-": the bridge must be outside airlock's namespace and its guard rules.
    bridge = f"altest{tag}"
    taken = docker_subnets(client)
    for subnet in pool.subnets(new_prefix=28):
        if any(subnet.overlaps(t) for t in taken):
            continue
        try:
            client.networks.create(
                f"airlock-test-{tag}",
                driver="bridge",
                ipam=docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]
                ),
                options={"com.docker.network.bridge.name": bridge},
                labels={TEST_LABEL: "1"},
            )
        except docker.errors.APIError as exc:
            if "overlap" in str(exc).lower():
                continue
            raise
        return PlainNetwork(f"airlock-test-{tag}", bridge, subnet)
    raise RuntimeError(f"no free /28 in {pool} for a test network")


def run_plain_container(
    client: docker.DockerClient,
    image: str,
    network: str,
    command: list[str],
    *,
    detach: bool,
    **host_config: Any,
) -> tuple[str, str]:
    """A container created straight through the Docker API (not a sandbox). Returns (id, logs);
    logs are empty for a detached one. The caller removes detached containers."""
    api = client.api
    hc = api.create_host_config(network_mode=network, **host_config)
    created = api.create_container(
        image,
        command=command,
        host_config=hc,
        labels={TEST_LABEL: "1"},
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
    )
    cid = str(created["Id"])
    if detach:
        api.start(cid)
        return cid, ""
    try:
        api.start(cid)
        api.wait(cid, timeout=60)
        logs: bytes = api.logs(cid, stdout=True, stderr=True)
        return cid, logs.decode(errors="replace")
    finally:
        api.remove_container(cid, force=True)


def container_ip(client: docker.DockerClient, cid: str, network: str) -> str:
    info = client.api.inspect_container(cid)
    return str(info["NetworkSettings"]["Networks"][network]["IPAddress"])


# --- decoys --------------------------------------------------------------------------------


class _DualStackServer(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Decoy:
    """A TCP service on every host address (IPv4 and IPv6, port chosen by the kernel).

    Answers any request with an HTTP 200 whose body holds ``marker``, and records the peer of
    every connection, so a test can check both that a probe got nothing and that nothing
    arrived here.
    """

    def __init__(self) -> None:
        self.marker = f"DECOY-{uuid.uuid4().hex[:10]}"
        self.hits: list[str] = []
        decoy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                peer = str(self.client_address[0]).removeprefix("::ffff:")
                decoy.hits.append(peer)
                self.request.settimeout(3)
                with contextlib.suppress(OSError):
                    self.request.recv(4096)
                body = f"{decoy.marker}\n".encode()
                self.request.sendall(
                    b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )

        self.server = _DualStackServer(("::", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reachable_from_host(self, address: str, scope: str | None = None) -> bool:
        """Positive control: the decoy answers on ``address`` when asked from the host."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        target: tuple[Any, ...] = (address, self.port)
        if scope is not None:
            target = (address, self.port, 0, socket.if_nametoindex(scope))
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(3)
                s.connect(target)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        except OSError:
            return False
        return self.marker.encode() in data

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def decoy() -> Iterator[Decoy]:
    d = Decoy()
    yield d
    d.close()


# Shell helpers for probes inside a sandbox. Every probe bypasses the HTTP(S)_PROXY the
# sandbox is given (the egress proxy is a separate path), so it tests the network itself.
# ``tcp ADDR PORT MARKER`` says "open" only when the answer holds MARKER: a probe cannot be
# fooled by some other service answering on that port.
PROBES = r"""
tcp() { if curl --noproxy '*' -gsS --connect-timeout 2 --max-time 4 "http://$1:$2/" 2>/dev/null \
          | grep -q "$3"; then echo "tcp $1 $2 open"; else echo "tcp $1 $2 blocked"; fi; }
conn() { if timeout 4 nc -z -w 2 "$1" "$2" 2>/dev/null
         then echo "tcp $1 $2 open"; else echo "tcp $1 $2 blocked"; fi; }
"""


def url_host(address: str) -> str:
    """An address as the host part of a URL: IPv6 in brackets, a zone as %25ZONE."""
    return f"[{address.replace('%', '%25')}]" if ":" in address else address


def probe_key(address: str, port: int) -> str:
    return f"{url_host(address)} {port}"


def probe_script(targets: Iterable[tuple[str, int, str]]) -> str:
    """Probe every (address, port, marker) at once; see :func:`probe_results`.

    With a marker, "open" means an HTTP answer holding it; with "" (for non-HTTP services
    such as the gateway's TLS port), "open" means a TCP connection was accepted.
    """
    lines = [PROBES]
    for addr, port, marker in targets:
        if marker:
            lines.append(f"tcp '{url_host(addr)}' {port} '{marker}' &")
        else:
            lines.append(f"conn '{addr}' {port} &")
    lines.append("wait")
    return "\n".join(lines)


def probe_results(output: str) -> dict[str, str]:
    """'tcp ADDR PORT open' lines -> {probe_key(ADDR, PORT): 'open'}."""
    result: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "tcp" and parts[3] in ("open", "blocked"):
            result[f"{parts[1]} {parts[2]}"] = parts[3]
    return result


# --- host helpers --------------------------------------------------------------------------


def copy_bundle(src: Path, dst: Path, mount_point: str, uid: int = SANDBOX_UID) -> Path:
    """Copy a session bundle; its gitconfig is rewritten to find its files at ``mount_point``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("ca.pem", "client.pem", "client.key", "gitconfig"):
        shutil.copy2(src / name, dst / name)
    text = (dst / "gitconfig").read_text().replace("/run/airlock/", mount_point.rstrip("/") + "/")
    (dst / "gitconfig").write_text(text)
    for p in [dst, *dst.iterdir()]:
        os.chown(p, uid, uid)
    os.chmod(dst, 0o755)
    return dst / "gitconfig"


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def nft_bypass_sandbox(sid: str) -> None:
    """Neutralise one sandbox's own chains (an ``accept`` at their head), leaving the guards
    and every other sandbox alone: the control experiment for "the rules are what blocks"."""
    for suffix in ("pre", "in", "fwd"):
        subprocess.run(
            ["nft", "insert", "rule", "inet", "airlock", f"sbx_{sid}_{suffix}", "accept"],
            check=True,
            capture_output=True,
        )
