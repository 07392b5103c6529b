"""The sandbox network when the gateway is a container on it (``gateway.mode = "container"``).

Against the real Docker engine and the real kernel: an ``--internal`` network with ICC on (as
host/sandbox.py makes it in container mode), a stand-in gateway container at the subnet's
second host address with listeners on allowed and other ports, and a sandbox container at the
third, both run as airlock runs them (no capabilities, a fixed address). With airlock's
``bridged`` rules (host/firewall.py):

* the sandbox reaches the gateway container's allowed TCP and UDP ports, and nothing else:
  not another port of the gateway container, not the host's own address on the bridge;
* the gateway container cannot open a connection to the sandbox, nor reach the host there;
* without the rules Docker alone lets all of that through (the control that shows it is the
  rules), and a bridge whose rules are removed is cut off entirely (fail closed).

Every packet stays on this host, between containers and listeners made here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

from airlock.host import firewall
from airlock.host.firewall import SandboxRules
from airlock.host.hostnet import host_networks
from airlock.host.images import SANDBOX_UID, ensure_sandbox_image
from airlock.host.netpool import allocate_subnet, check_pool
from tests.e2e.conftest import E2E, TEST_LABEL
from tests.e2e.test_host_network import PROBE_FUNCS, HostListeners, probes

pytestmark = E2E

POOL = IPv4Network("10.216.160.0/20")  # this module's subnets; no other module uses them
ALLOWED_TCP = [8443, 3128, 53]
ALLOWED_UDP = [53]
OTHER_TCP = 9999
OTHER_UDP = 5353
SANDBOX_PORT = 7000  # something listening in the sandbox, for the gateway to try

# Listeners in the stand-in gateway (and in the sandbox): TCP answers one HTTP response,
# UDP echoes; they run until the container is removed.
SERVE = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.settimeout(3)
        try: c.recv(1024); c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except OSError: pass
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(512); s.sendto(b"ok\n", addr)
tcp_ports, udp_ports = sys.argv[1].split(","), sys.argv[2].split(",")
for p in tcp_ports:
    if p: threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
for p in udp_ports:
    if p: threading.Thread(target=udp, args=(int(p),), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""


@dataclass
class BridgedNet:
    name: str
    bridge: str
    subnet: IPv4Network
    host_ip: IPv4Address  # Docker's bridge gateway: the host's address on the bridge
    gateway_ip: IPv4Address
    sandbox_ip: IPv4Address


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker.from_env(timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def image(client: docker.DockerClient) -> str:
    return ensure_sandbox_image(client, progress=lambda msg: print(f"[image] {msg}"))


def _make_net(client: docker.DockerClient, prefix: str) -> BridgedNet:
    check_pool(POOL, host_networks(exclude_ifname_prefix=prefix))
    taken = [
        IPv4Network(cfg["Subnet"])
        for n in client.networks.list()
        for cfg in (n.attrs.get("IPAM") or {}).get("Config") or []
        if "." in cfg.get("Subnet", "")
    ]
    subnet = allocate_subnet(POOL, 28, taken)
    bridge = f"{prefix}{uuid.uuid4().hex[:6]}"
    created = client.networks.create(
        f"airlock-test-{bridge}",
        driver="bridge",
        internal=True,
        ipam=docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet[1]))]
        ),
        options={
            "com.docker.network.bridge.name": bridge,
            "com.docker.network.bridge.enable_icc": "true",
        },
        labels={TEST_LABEL: "1"},
    )
    return BridgedNet(created.name, bridge, subnet, subnet[1], subnet[2], subnet[3])


def _remove_net(client: docker.DockerClient, net: BridgedNet) -> None:
    for cid in client.api.inspect_network(net.name).get("Containers") or {}:
        client.api.remove_container(cid, force=True)
    client.api.remove_network(net.name)


def _container(
    client: docker.DockerClient, image: str, net: BridgedNet, address: IPv4Address, argv: list[str]
) -> str:
    api = client.api
    created = api.create_container(
        image,
        command=argv,
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        host_config=api.create_host_config(
            network_mode=net.name,
            cap_drop=["ALL"],
            cap_add=["NET_BIND_SERVICE"],  # the stand-in gateway listens on 53
            security_opt=["no-new-privileges"],
        ),
        networking_config=api.create_networking_config(
            {net.name: api.create_endpoint_config(ipv4_address=str(address))}
        ),
        labels={TEST_LABEL: "1"},
    )
    api.start(created["Id"])
    deadline = time.monotonic() + 20
    while b"listening" not in api.logs(created["Id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return str(created["Id"])


def _exec(client: docker.DockerClient, cid: str, script: str) -> str:
    exec_id = client.api.exec_create(cid, ["bash", "-c", PROBE_FUNCS + script])
    out: bytes = client.api.exec_start(exec_id)
    return out.decode(errors="replace")


def _rules(name: str, net: BridgedNet) -> SandboxRules:
    return SandboxRules(
        name=name,
        bridge=net.bridge,
        subnet=net.subnet,
        gateway_ip=net.gateway_ip,
        sandbox_ip=net.sandbox_ip,
        tcp_ports=ALLOWED_TCP,
        udp_ports=ALLOWED_UDP,
        bridged=True,
    )


def _matrix(client: docker.DockerClient, net: BridgedNet, gw: str, sbx: str) -> dict[str, Any]:
    from_sandbox = probes(
        _exec(
            client,
            sbx,
            "".join(f"tcp {net.gateway_ip} {p}\n" for p in [*ALLOWED_TCP, OTHER_TCP])
            + "".join(f"udp {net.gateway_ip} {p}\n" for p in [*ALLOWED_UDP, OTHER_UDP])
            + f"tcp {net.host_ip} {{host_tcp}}\nudp {net.host_ip} {{host_udp}}\n",
        )
    )
    from_gateway = probes(
        _exec(
            client,
            gw,
            f"tcp {net.sandbox_ip} {SANDBOX_PORT}\ntcp {net.host_ip} {{host_tcp}}\n",
        )
    )
    return {"sandbox": from_sandbox, "gateway": from_gateway}


World = tuple[BridgedNet, str, str, int, int]


@pytest.fixture
def make_world(client: docker.DockerClient, image: str) -> Iterator[Any]:
    """A network (bridge prefix ``al-`` as airlock's, or ``alctl`` outside its guards) with
    the stand-in gateway and the sandbox on it, and listeners on the host's bridge address."""
    nets: list[BridgedNet] = []
    listeners = HostListeners()

    def make(prefix: str = "al-b") -> World:
        net = _make_net(client, prefix)
        nets.append(net)
        host_tcp = listeners.tcp(str(net.host_ip))
        host_udp = listeners.udp(str(net.host_ip))
        serve = ",".join(map(str, [*ALLOWED_TCP, OTHER_TCP]))
        gw = _container(
            client, image, net, net.gateway_ip, ["python3", "-c", SERVE, serve, "53,5353"]
        )
        sbx = _container(client, image, net, net.sandbox_ip, ["python3", "-c", SERVE, "7000", ""])
        return net, gw, sbx, host_tcp, host_udp

    yield make
    listeners.close()
    for net in nets:
        _remove_net(client, net)


def _probe(client: docker.DockerClient, w: World) -> dict[str, dict[str, str]]:
    net, gw, sbx, host_tcp, host_udp = w
    sandbox = (
        "".join(f"tcp {net.gateway_ip} {p}\n" for p in [*ALLOWED_TCP, OTHER_TCP])
        + "".join(f"udp {net.gateway_ip} {p}\n" for p in [*ALLOWED_UDP, OTHER_UDP])
        + f"tcp {net.host_ip} {host_tcp}\nudp {net.host_ip} {host_udp}\n"
    )
    gateway = f"tcp {net.sandbox_ip} {SANDBOX_PORT}\ntcp {net.host_ip} {host_tcp}\n"
    return {
        "sandbox": probes(_exec(client, sbx, sandbox)),
        "gateway": probes(_exec(client, gw, gateway)),
    }


def test_with_bridged_rules_the_sandbox_reaches_only_the_gateway_ports(
    client: docker.DockerClient, make_world: Any
) -> None:
    w: World = make_world()
    net, _, _, host_tcp, host_udp = w
    name = f"t{uuid.uuid4().hex[:10]}"
    rules = _rules(name, net)
    try:
        firewall.apply_rules(rules)
        assert firewall.verify_rules(rules)
        seen = _probe(client, w)
    finally:
        firewall.remove_rules(name)
    gw = net.gateway_ip
    assert seen["sandbox"] == {
        **{f"tcp {gw}:{p}": "open" for p in ALLOWED_TCP},
        f"tcp {gw}:{OTHER_TCP}": "blocked",
        **{f"udp {gw}:{p}": "open" for p in ALLOWED_UDP},
        f"udp {gw}:{OTHER_UDP}": "blocked",
        f"tcp {net.host_ip}:{host_tcp}": "blocked",
        f"udp {net.host_ip}:{host_udp}": "blocked",
    }
    assert seen["gateway"] == {
        f"tcp {net.sandbox_ip}:{SANDBOX_PORT}": "blocked",
        f"tcp {net.host_ip}:{host_tcp}": "blocked",
    }


def test_host_mode_rules_on_a_bridged_network_cut_the_gateway_container_off(
    client: docker.DockerClient, make_world: Any
) -> None:
    """The bridged rules are what lets the sandbox reach a gateway container: the host-mode
    rules for the same addresses (the gateway on the host) drop the bridged traffic."""
    w: World = make_world()
    net = w[0]
    name = f"t{uuid.uuid4().hex[:10]}"
    rules = _rules(name, net)
    host_mode = SandboxRules(**{**rules.__dict__, "bridged": False})
    try:
        firewall.apply_rules(host_mode)
        seen = _probe(client, w)
    finally:
        firewall.remove_rules(name)
    assert set(seen["sandbox"].values()) == {"blocked"}


def test_an_airlock_bridge_without_rules_is_cut_off(
    client: docker.DockerClient, make_world: Any
) -> None:
    """Fail closed: the table's guards drop an ``al-`` bridge that has no sandbox rules."""
    name = f"t{uuid.uuid4().hex[:10]}"
    w: World = make_world()
    # Any sandbox's rules install the table with its guards (this one for another bridge).
    other = SandboxRules(
        name=name,
        bridge="al-zzzzzz",
        subnet=IPv4Network("10.216.175.240/28"),
        gateway_ip=IPv4Address("10.216.175.242"),
        sandbox_ip=IPv4Address("10.216.175.243"),
        tcp_ports=[1],
        udp_ports=[],
        bridged=True,
    )
    try:
        firewall.apply_rules(other)
        seen = _probe(client, w)
    finally:
        firewall.remove_rules(name)
    assert set(seen["sandbox"].values()) == {"blocked"}
    assert set(seen["gateway"].values()) == {"blocked"}


def test_without_airlock_docker_alone_lets_it_all_through(
    client: docker.DockerClient, make_world: Any
) -> None:
    """The control: the same containers on an ICC-on internal network outside airlock's
    bridge names (no rules, no guards) reach every port of each other and of the host."""
    w: World = make_world("alctl")
    net, _, _, host_tcp, _ = w
    seen = _probe(client, w)
    assert seen["sandbox"][f"tcp {net.gateway_ip}:{OTHER_TCP}"] == "open"
    assert seen["sandbox"][f"udp {net.gateway_ip}:{OTHER_UDP}"] == "open"
    assert seen["sandbox"][f"tcp {net.host_ip}:{host_tcp}"] == "open"
    assert seen["gateway"][f"tcp {net.sandbox_ip}:{SANDBOX_PORT}"] == "open"
