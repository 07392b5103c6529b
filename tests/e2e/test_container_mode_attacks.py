"""Red team, container mode: a sandbox (uid 10000, no capabilities) tries to reach anything
of the gateway's container but its three ports on its own network, or anything else at all.

One module-wide gateway container (``airlock gateway`` in container mode, the real image)
serves two sandboxes, A and B. From inside A, with the tools an attacker has there (Python,
unprivileged sockets, no CAP_NET_RAW/NET_ADMIN):

* the host's address on A's bridge, on every port the gateway or Docker might use;
* the gateway container's other addresses: its own network's (where the host-side git
  listener for ``session create --out`` bundles listens), its address on B's network;
* B itself;
* A's gateway address on ports that are not the gateway's;
* loose source routing (IP_OPTIONS LSRR, which needs no capability): a packet whose IP
  destination *is* A's gateway address, on an allowed port, so it passes the host's rules,
  but that names another address of the gateway's container as the final hop;
* IPv6 (link-local to the gateway container);
* the egress proxy asked to CONNECT to the gateway's own other listeners or to B.

The gateway container's forwarding and source-route sysctls are read too. Only addresses this
module creates are contacted.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import docker
import pytest

from airlock.config import load_config
from airlock.host.gateway_image import ensure_gateway_image
from airlock.host.sandbox import Sandbox
from tests.e2e.conftest import E2E, Sandboxes, remove_everything_of, sandbox_config
from tests.e2e.gateway_container_world import ContainerWorld

pytestmark = E2E
POOL = "10.216.192.0/20"  # this module's sandbox subnets; no other module uses them
GATEWAY_SUBNET = "10.251.16.0/24"  # the gateway container's own network

# Runs inside sandbox A as its user. argv[1]: JSON {"tcp": [[host, port], ...],
# "udp_dns": [[host, port], ...], "lsrr": [[first_hop, final, port], ...],
# "proxy": [proxy_url, [target, ...]]}. Prints one JSON object: what each attempt got.
PROBE = r"""
import json, socket, sys, base64, os
spec = json.loads(sys.argv[1])
out = {"tcp": {}, "udp_dns": {}, "lsrr": {}, "proxy": {}, "ipv6": {}}
def tcp(host, port, opts=None, timeout=3.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if opts is not None:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opts)
        s.connect((host, port))
        return "open"
    except OSError as e:
        return type(e).__name__ + ":" + str(e.errno)
    finally:
        s.close()
for host, port in spec["tcp"]:
    out["tcp"][f"{host}:{port}"] = tcp(host, port)
QUERY = bytes.fromhex("abcd01000001000000000000") + b"\x07airlock\x08internal\x00\x00\x01\x00\x01"
for host, port in spec["udp_dns"]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(QUERY, (host, port))
        data, _ = s.recvfrom(2048)
        out["udp_dns"][f"{host}:{port}"] = "answered"
    except OSError as e:
        out["udp_dns"][f"{host}:{port}"] = type(e).__name__
    finally:
        s.close()
for first, final, port in spec["lsrr"]:
    # NOP, LSRR (131), length 7, pointer 4, the first hop; the kernel puts the connect()
    # destination last. No capability is needed to set IP options.
    opts = bytes([1, 131, 7, 4]) + socket.inet_aton(first)
    out["lsrr"][f"{first}->{final}:{port}"] = tcp(final, port, opts)
proxy, targets = spec["proxy"]
ph, pp = proxy
from urllib.parse import urlsplit
u = urlsplit(os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy") or "")
auth = base64.b64encode(f"{u.username}:{u.password}".encode())
for target in targets:
    s = socket.create_connection((ph, pp), timeout=5)
    try:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode()
                  + b"Proxy-Authorization: Basic " + auth + b"\r\n\r\n")
        line = s.recv(200).split(b"\r\n")[0].decode(errors="replace")
    except OSError as e:
        line = type(e).__name__
    finally:
        s.close()
    out["proxy"][target] = line
try:
    out["ipv6"]["disable_ipv6"] = open("/proc/sys/net/ipv6/conf/all/disable_ipv6").read().strip()
except OSError as e:
    out["ipv6"]["disable_ipv6"] = type(e).__name__
try:
    out["ipv6"]["addresses"] = open("/proc/net/if_inet6").read().split("\n")
except OSError as e:
    out["ipv6"]["addresses"] = type(e).__name__
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s6.settimeout(3)
try:
    s6.connect(("ff02::1", spec["v6_port"], 0, socket.if_nametoindex("eth0")))
    out["ipv6"]["connect"] = "open"
except OSError as e:
    out["ipv6"]["connect"] = type(e).__name__ + ":" + str(e.errno)
finally:
    s6.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sbx_world(docker_client: docker.DockerClient) -> Iterator[ContainerWorld]:
    root = Path(tempfile.mkdtemp(prefix="airlock-e2e-redteam-"))
    w = ContainerWorld(root, GATEWAY_SUBNET, config_extra=sandbox_config(POOL))
    w.write_config()
    tag = ensure_gateway_image(docker_client, load_config(w.config), progress=print)
    # Pinned: others edit the source meanwhile, which changes the default tag.
    w.gateway_extra += f'image = "{tag}"\n'
    w.start()
    yield w
    remove_everything_of(w)
    w.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(sandboxes: Sandboxes) -> Iterator[tuple[Sandbox, Sandbox]]:
    a = sandboxes.start("sleep 300", [])
    b = sandboxes.start("sleep 300", [])
    yield a, b
    for sb in (a, b):
        sandboxes.teardown(sb)


@pytest.fixture
def host_service() -> Iterator[int]:
    """A service of the host's on every address (as sshd or a metrics endpoint may be)."""
    srv = socket.create_server(("0.0.0.0", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host-service\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(2)
    srv.close()


def _gateway_exec(client: docker.DockerClient, name: str, code: str) -> str:
    api = client.api
    exec_id = api.exec_create(name, ["python3", "-c", code])
    out: bytes = api.exec_start(exec_id)
    return out.decode(errors="replace")


def _probe(sandboxes: Sandboxes, sb: Sandbox, spec: dict[str, Any]) -> dict[str, Any]:
    script = f"python3 -c {_sh(PROBE)} {_sh(json.dumps(spec))}"
    code, out = sandboxes.exec(sb, script)
    assert code == 0, out
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _sh(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def test_a_sandbox_reaches_its_gateway_ports_and_nothing_else(
    sandboxes: Sandboxes,
    sbx_world: ContainerWorld,
    pair: tuple[Sandbox, Sandbox],
    host_service: int,
) -> None:
    a, b = pair
    cfg = load_config(sbx_world.config)
    git, dns, proxy = cfg.gateway.git_port, cfg.gateway.dns_port, cfg.sandbox.proxy_port
    gw_own = str(IPv4Network(GATEWAY_SUBNET)[2])  # the host-side listener's address
    host_on_a = str(a.subnet[1])
    common = sorted({22, 53, 80, 443, 2375, 2376, 3128, 8080, 8443, 9109, git, proxy})
    tcp = [[host_on_a, p] for p in common]
    tcp += [[gw_own, git], [sbx_world.host_ip, 22], [sbx_world.host_ip, git]]
    # A host service on every address: what the host's rules alone keep from the sandbox.
    tcp += [[host_on_a, host_service], [sbx_world.host_ip, host_service]]
    tcp += [[str(b.gateway_ip), p] for p in (git, proxy)]
    tcp += [[str(b.sandbox_ip), 22], [str(a.subnet[4]), git]]
    tcp += [[str(a.gateway_ip), p] for p in (22, 80, 9109, 2375)]
    controls = [[str(a.gateway_ip), git], [str(a.gateway_ip), proxy]]
    spec = {
        "tcp": tcp + controls,
        "udp_dns": [
            [str(a.gateway_ip), dns],
            [str(b.gateway_ip), dns],
            [host_on_a, dns],
            [gw_own, dns],
        ],
        "lsrr": [
            [str(a.gateway_ip), gw_own, git],
            [str(a.gateway_ip), str(b.gateway_ip), git],
            [str(a.gateway_ip), str(b.sandbox_ip), git],
            [str(a.gateway_ip), sbx_world.host_ip, git],
        ],
        "proxy": [
            [str(a.gateway_ip), proxy],
            [
                f"{gw_own}:{git}",
                f"127.0.0.1:{git}",
                f"{b.gateway_ip}:{git}",
                f"{sbx_world.host_ip}:22",
                f"{host_on_a}:{git}",
                f"localhost:{git}",
            ],
        ],
        "v6_port": git,
    }
    got = _probe(sandboxes, a, spec)
    print(json.dumps(got, indent=1))
    # The controls: the gateway's own ports on A's network answer.
    for host, port in controls:
        assert got["tcp"][f"{host}:{port}"] == "open", got
    assert got["udp_dns"][f"{a.gateway_ip}:{dns}"] == "answered", got
    # Everything else is unreachable.
    for host, port in tcp:
        assert got["tcp"][f"{host}:{port}"] != "open", (host, port, got["tcp"])
    for key, verdict in got["udp_dns"].items():
        if key != f"{a.gateway_ip}:{dns}":
            assert verdict != "answered", (key, got["udp_dns"])
    for key, verdict in got["lsrr"].items():
        assert verdict != "open", (key, got["lsrr"])
    for target, line in got["proxy"].items():
        assert " 200" not in line, (target, got["proxy"])
    assert got["ipv6"]["connect"] != "open", got["ipv6"]


def test_the_gateway_container_neither_forwards_nor_accepts_source_routes(
    docker_client: docker.DockerClient, sbx_world: ContainerWorld, pair: tuple[Sandbox, Sandbox]
) -> None:
    code = (
        "import glob\n"
        "for p in ['/proc/sys/net/ipv4/ip_forward', *sorted(glob.glob("
        "'/proc/sys/net/ipv4/conf/*/accept_source_route')), *sorted(glob.glob("
        "'/proc/sys/net/ipv4/conf/*/forwarding'))]:\n"
        "    print(p, open(p).read().strip())\n"
    )
    out = _gateway_exec(docker_client, sbx_world.container_name, code)
    print(out)
    values = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert values["/proc/sys/net/ipv4/ip_forward"] == "0", out
    assert values["/proc/sys/net/ipv4/conf/all/accept_source_route"] == "0", out


def test_the_gateway_container_reaches_no_host_service_but_its_upstreams(
    docker_client: docker.DockerClient,
    sbx_world: ContainerWorld,
    pair: tuple[Sandbox, Sandbox],
    host_service: int,
) -> None:
    """A compromised gateway (code running as its uid in its container) opens connections
    to a host service on a wildcard address: through its own network's bridge address, and
    through the host's address on a sandbox bridge, reached over its egress network. And to
    a sandbox, which may only be answered."""
    a, _ = pair
    targets = {
        "host-on-gateway-net": (sbx_world.host_ip, host_service),
        "host-on-sandbox-bridge": (str(a.subnet[1]), host_service),
        "sandbox-a": (str(a.sandbox_ip), 22),
        "upstream": (sbx_world.host_ip, sbx_world.upstream.port),  # the control
    }
    # epoll, not poll: the container's seccomp profile has the gateway's calls only.
    code = (
        "import socket, json, select, errno\n"
        "out = {}\n"
        f"for k, (h, p) in {targets!r}.items():\n"
        "    s = socket.socket(); s.setblocking(False)\n"
        "    r = s.connect_ex((h, p))\n"
        "    if r == errno.EINPROGRESS:\n"
        "        ep = select.epoll(); ep.register(s.fileno(), select.EPOLLOUT)\n"
        "        r = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ep.poll(3) else -1\n"
        "        ep.close()\n"
        "    out[k] = 'open' if r == 0 else ('timeout' if r == -1 else errno.errorcode[r])\n"
        "    s.close()\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(_gateway_exec(docker_client, sbx_world.container_name, code).splitlines()[-1])
    print(got)
    assert got["upstream"].startswith("open"), got
    assert not got["sandbox-a"].startswith("open"), got
    assert not got["host-on-sandbox-bridge"].startswith("open"), got
    assert not got["host-on-gateway-net"].startswith("open"), got
