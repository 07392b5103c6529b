"""The host side of sandbox networking, against the real Docker engine and the real kernel.

What is proved here:
* the sandbox image builds offline and runs as uid 10000;
* an ``--internal`` bridge network gets the gateway address on its bridge, so a host process
  can listen there before any container exists;
* with airlock's rules the sandbox reaches exactly the gateway's allowed TCP/UDP ports and
  nothing else (other ports, other host addresses); it cannot change its own address;
* without airlock's rules Docker alone would let it reach any port on the host (the control
  that shows the rules are what blocks), and an ``al-`` bridge whose rules were removed is
  cut off entirely (fail closed);
* the gateway address answers only its own bridge (and the host), not containers elsewhere;
* apply_rules is idempotent, verify_rules notices tampering, remove_rules leaves no trace.

Only networks and containers created here are touched; every packet stays on this host.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import docker.types
import pytest

from airlock.host import firewall
from airlock.host.firewall import SandboxRules
from airlock.host.hostnet import host_networks, networks_from_resolv_conf
from airlock.host.images import SANDBOX_UID, ensure_sandbox_image
from airlock.host.netpool import (
    PoolError,
    allocate_subnet,
    check_pool,
    gateway_and_sandbox_addresses,
)

DOCKER_SOCK = Path("/var/run/docker.sock")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not DOCKER_SOCK.exists(),
        reason=f"no Docker engine: {DOCKER_SOCK} is absent (run .ci/setup-system.sh as root)",
    ),
]

TEST_POOL = IPv4Network("10.213.0.0/16")
# Control networks use bridges outside airlock's "al-" namespace. host_networks() reports
# those (they are not airlock's), so they get a pool of their own: were they in TEST_POOL, a
# concurrent test run would rightly find TEST_POOL overlapping a host network.
CONTROL_POOL = IPv4Network("10.214.0.0/16")
CONTROL_PREFIX = "alctl"
TEST_LABEL = "org.airlock.test"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker.from_env(timeout=120)
    c.ping()
    yield c
    c.close()


@pytest.fixture(scope="module")
def image(client: docker.DockerClient) -> str:
    # First run: debootstrap + import (~1-2 min); afterwards the tag exists and this is instant.
    return ensure_sandbox_image(client, progress=lambda msg: print(f"[image] {msg}"))


@dataclass
class SandboxNet:
    name: str
    bridge: str
    subnet: IPv4Network
    gateway_ip: IPv4Address
    sandbox_ip: IPv4Address


NetFactory = Callable[..., SandboxNet]


def _docker_subnets(client: docker.DockerClient) -> set[IPv4Network]:
    taken: set[IPv4Network] = set()
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = IPv4Network(cfg.get("Subnet", ""))
            except ValueError:
                continue  # IPv6 or empty
            taken.add(subnet)
    return taken


@pytest.fixture
def make_net(client: docker.DockerClient) -> Iterator[NetFactory]:
    """Create internal, ICC-off networks on subnets from TEST_POOL; removed afterwards."""
    created: list[Any] = []

    def make(bridge_prefix: str = "al-t") -> SandboxNet:
        if bridge_prefix == CONTROL_PREFIX:
            pool, own_bridges = CONTROL_POOL, CONTROL_PREFIX
        else:
            pool, own_bridges = TEST_POOL, "al-"
        check_pool(pool, host_networks(exclude_ifname_prefix=own_bridges))
        bridge = f"{bridge_prefix}{uuid.uuid4().hex[:6]}"
        # Another test run may grab the same subnet between our look and our create (Docker
        # reserves it before the network shows up in its list): skip that subnet and retry.
        lost: set[IPv4Network] = set()
        for _ in range(20):
            subnet = allocate_subnet(pool, 28, _docker_subnets(client) | lost)
            gw, sbx = gateway_and_sandbox_addresses(subnet)
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(gw))]
            )
            try:
                net = client.networks.create(
                    f"airlock-test-{bridge}",
                    driver="bridge",
                    internal=True,
                    ipam=ipam,
                    options={
                        "com.docker.network.bridge.name": bridge,
                        "com.docker.network.bridge.enable_icc": "false",
                    },
                    labels={TEST_LABEL: "1"},
                )
            except docker.errors.APIError as e:
                if "overlap" in str(e).lower():
                    lost.add(subnet)
                    continue
                raise
            created.append(net)
            return SandboxNet(net.name, bridge, subnet, gw, sbx)
        raise RuntimeError("could not allocate a test subnet")

    yield make
    for net in created:
        try:
            net.remove()
        except docker.errors.NotFound:
            pass


@pytest.fixture
def rules_cleanup() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        firewall.remove_rules(name)


class HostListeners:
    """TCP and UDP servers on the host, in an asyncio loop on a background thread.

    TCP answers a minimal HTTP 200 with ``ok <port>``; UDP echoes ``ok <port>``.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.closers: list[Callable[[], None]] = []

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=10)

    def tcp(self, host: str, port: int = 0) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(reader.readline(), 5)
                body = f"ok {bound}\n".encode()
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
            finally:
                writer.close()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(handle, host, port)

        server: asyncio.Server = self._call(start())
        bound = int(server.sockets[0].getsockname()[1])
        self.closers.append(server.close)
        return bound

    def udp(self, host: str, port: int = 0) -> int:
        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                # The selector transport is not a registered DatagramTransport subclass.
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(f"ok {bound}\n".encode(), addr)

        async def start() -> asyncio.DatagramTransport:
            transport, _ = await self.loop.create_datagram_endpoint(Echo, local_addr=(host, port))
            return transport

        transport: asyncio.DatagramTransport = self._call(start())
        bound = int(transport.get_extra_info("sockname")[1])
        self.closers.append(transport.close)
        return bound

    def close(self) -> None:
        for close in self.closers:
            self.loop.call_soon_threadsafe(close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def listeners() -> Iterator[HostListeners]:
    ls = HostListeners()
    yield ls
    ls.close()


# --- helpers --------------------------------------------------------------------------------

PROBE_FUNCS = r"""
tcp() { if curl -sS --connect-timeout 2 --max-time 4 "http://$1:$2/" >/dev/null 2>&1
        then echo "tcp $1:$2 open"; else echo "tcp $1:$2 blocked"; fi; }
udp() { r=$(echo ping | timeout 3 nc -u -w1 "$1" "$2" 2>/dev/null)
        if [ -n "$r" ]; then echo "udp $1:$2 open"; else echo "udp $1:$2 blocked"; fi; }
"""


def run_in_sandbox(client: docker.DockerClient, image: str, net: SandboxNet, script: str) -> str:
    """Run ``script`` the way airlock runs sandboxes: fixed address, no capabilities, uid 10000."""
    api = client.api
    host_config = api.create_host_config(
        network_mode=net.name, cap_drop=["ALL"], security_opt=["no-new-privileges"]
    )
    networking = api.create_networking_config(
        {net.name: api.create_endpoint_config(ipv4_address=str(net.sandbox_ip))}
    )
    container = api.create_container(
        image,
        command=["bash", "-c", PROBE_FUNCS + script],
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        host_config=host_config,
        networking_config=networking,
        labels={TEST_LABEL: "1"},
    )
    cid = container["Id"]
    try:
        api.start(cid)
        api.wait(cid, timeout=60)
        logs: bytes = api.logs(cid, stdout=True, stderr=True)
        return logs.decode(errors="replace")
    finally:
        api.remove_container(cid, force=True)


def probes(output: str) -> dict[str, str]:
    """'tcp 10.0.0.1:80 open' lines -> {'tcp 10.0.0.1:80': 'open'}."""
    result: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("tcp", "udp") and parts[2] in ("open", "blocked"):
            result[f"{parts[0]} {parts[1]}"] = parts[2]
    return result


def rules_for(name: str, net: SandboxNet, tcp: list[int], udp: list[int]) -> SandboxRules:
    return SandboxRules(
        name=name,
        bridge=net.bridge,
        subnet=net.subnet,
        gateway_ip=net.gateway_ip,
        sandbox_ip=net.sandbox_ip,
        tcp_ports=tcp,
        udp_ports=udp,
    )


def table_text() -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", "airlock"], capture_output=True, text=True, check=False
    ).stdout


def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# --- tests: host addresses and pool ---------------------------------------------------------


def test_pool_is_checked_against_the_real_host() -> None:
    used = host_networks()
    check_pool(TEST_POOL, used)
    resolvers = networks_from_resolv_conf(Path("/etc/resolv.conf").read_text())
    assert all(r in used for r in resolvers)
    for resolver in resolvers:
        # Whatever /16 holds the host's resolver must be refused, naming the resolver.
        pool = IPv4Network(f"{resolver.network_address}/16", strict=False)
        if pool.is_private:
            with pytest.raises(PoolError, match=str(resolver.network_address).replace(".", r"\.")):
                check_pool(pool, used)
    if IPv4Network("10.255.255.53/32") in resolvers:
        with pytest.raises(PoolError, match=r"10\.255\.255\.53"):
            check_pool(IPv4Network("10.255.0.0/16"), used)


def test_internal_network_bridge_carries_the_gateway_address(
    client: docker.DockerClient, make_net: NetFactory, listeners: HostListeners
) -> None:
    net = make_net()
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", net.bridge],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    addrs = [(a["local"], a["prefixlen"]) for link in json.loads(out) for a in link["addr_info"]]
    assert addrs == [(str(net.gateway_ip), net.subnet.prefixlen)]
    # No container is attached yet (the bridge has no carrier), yet the host can listen there:
    # the gateway can be up before the sandbox starts.
    assert listeners.tcp(str(net.gateway_ip)) > 0
    attrs = client.networks.get(net.name).attrs
    assert attrs["Internal"] is True
    assert attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    # The airlock bridge is the pool's own use: host_networks() must not report it.
    assert net.subnet not in host_networks()


# --- tests: firewall rules in the kernel (no container needed) ------------------------------


def test_apply_is_idempotent_and_remove_leaves_no_trace(
    make_net: NetFactory, rules_cleanup: list[str]
) -> None:
    net = make_net()
    name = unique_name()
    rules_cleanup.append(name)
    r = rules_for(name, net, [8443, 3128, 8443], [53])
    assert not firewall.verify_rules(r)

    firewall.apply_rules(r)
    assert firewall.verify_rules(r)
    once = table_text().count(name)
    firewall.apply_rules(r)
    firewall.apply_rules(r)
    assert firewall.verify_rules(r)
    assert table_text().count(name) == once
    assert name in firewall.list_sandbox_rule_names()

    firewall.remove_rules(name)
    text = table_text()
    assert name not in text
    assert f'"{net.bridge}"' not in text
    assert name not in firewall.list_sandbox_rule_names()
    assert not firewall.verify_rules(r)
    firewall.remove_rules(name)  # removing what is gone is a no-op


def test_verify_notices_changed_and_extra_rules(
    make_net: NetFactory, rules_cleanup: list[str]
) -> None:
    net = make_net()
    name = unique_name()
    rules_cleanup.append(name)
    r = rules_for(name, net, [8443], [53])
    firewall.apply_rules(r)
    assert firewall.verify_rules(r)
    # Different ports than installed: not "exactly" the rules.
    assert not firewall.verify_rules(rules_for(name, net, [8443, 22], [53]))

    chain = f"sbx_{name}_in"
    subprocess.run(["nft", "insert", "rule", "inet", "airlock", chain, "accept"], check=True)
    assert not firewall.verify_rules(r)
    firewall.apply_rules(r)  # re-applying repairs it
    assert firewall.verify_rules(r)


def test_a_bridge_cannot_be_claimed_by_two_sandboxes(
    make_net: NetFactory, rules_cleanup: list[str]
) -> None:
    net = make_net()
    first, second = unique_name(), unique_name()
    rules_cleanup.extend([first, second])
    firewall.apply_rules(rules_for(first, net, [8443], []))
    with pytest.raises(firewall.FirewallError, match="already belongs"):
        firewall.apply_rules(rules_for(second, net, [8443], []))
    assert firewall.verify_rules(rules_for(first, net, [8443], []))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "Bad Name"},
        {"bridge": "eth0"},
        {"bridge": "al-*"},
        {"bridge": "al-waytoolongname"},
        {"sandbox_ip": IPv4Address("10.9.9.9")},
        {"sandbox_ip": IPv4Address("10.213.250.1")},
        {"tcp_ports": [0]},
        {"udp_ports": [65536]},
    ],
)
def test_sandbox_rules_refuse_bad_input(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "name": "ok",
        "bridge": "al-ok",
        "subnet": IPv4Network("10.213.250.0/28"),
        "gateway_ip": IPv4Address("10.213.250.1"),
        "sandbox_ip": IPv4Address("10.213.250.2"),
        "tcp_ports": [8443],
        "udp_ports": [53],
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        SandboxRules(**args)


# --- tests: a real sandbox container ---------------------------------------------------------


def test_sandbox_reaches_only_the_gateway_ports(
    client: docker.DockerClient,
    image: str,
    make_net: NetFactory,
    listeners: HostListeners,
    rules_cleanup: list[str],
) -> None:
    net, other = make_net(), make_net()
    gw, other_gw = str(net.gateway_ip), str(other.gateway_ip)
    allowed_tcp, denied_tcp = listeners.tcp(gw), listeners.tcp(gw)
    allowed_udp, denied_udp = listeners.udp(gw), listeners.udp(gw)
    # The same port as the allowed one, on another sandbox's gateway address (also the host).
    listeners.tcp(other_gw, allowed_tcp)

    name = unique_name()
    rules_cleanup.append(name)
    firewall.apply_rules(rules_for(name, net, [allowed_tcp], [allowed_udp]))
    assert firewall.verify_rules(rules_for(name, net, [allowed_tcp], [allowed_udp]))

    out = run_in_sandbox(
        client,
        image,
        net,
        f"""
        echo "uid $(id -u)"
        tcp {gw} {allowed_tcp} & tcp {gw} {denied_tcp} & tcp {other_gw} {allowed_tcp} &
        udp {gw} {allowed_udp} & udp {gw} {denied_udp} &
        wait
        # No CAP_NET_ADMIN: the sandbox cannot take another address on its segment.
        ip addr add {net.subnet.network_address + 3}/{net.subnet.prefixlen} dev eth0 2>/dev/null \
            && echo "addr-change allowed" || echo "addr-change refused"
        """,
    )
    assert f"uid {SANDBOX_UID}" in out, out
    assert probes(out) == {
        f"tcp {gw}:{allowed_tcp}": "open",
        f"tcp {gw}:{denied_tcp}": "blocked",
        f"tcp {other_gw}:{allowed_tcp}": "blocked",
        f"udp {gw}:{allowed_udp}": "open",
        f"udp {gw}:{denied_udp}": "blocked",
    }, out
    assert "addr-change refused" in out, out


def test_without_airlock_rules_docker_alone_lets_the_sandbox_reach_any_host_port(
    client: docker.DockerClient, image: str, make_net: NetFactory, listeners: HostListeners
) -> None:
    # The control experiment: a bridge outside airlock's "al-" namespace, so neither a
    # sandbox chain nor the guard applies. Docker 20.10 installs no INPUT rules for internal
    # networks, so every host port on the gateway address is open. The test above therefore
    # shows our rules at work, not Docker's.
    net = make_net(bridge_prefix=CONTROL_PREFIX)
    gw = str(net.gateway_ip)
    port_a, port_b = listeners.tcp(gw), listeners.tcp(gw)
    out = run_in_sandbox(client, image, net, f"tcp {gw} {port_a} & tcp {gw} {port_b} & wait")
    assert probes(out) == {f"tcp {gw}:{port_a}": "open", f"tcp {gw}:{port_b}": "open"}, out


def test_gateway_address_answers_only_its_own_bridge(
    client: docker.DockerClient,
    image: str,
    make_net: NetFactory,
    listeners: HostListeners,
    rules_cleanup: list[str],
) -> None:
    # A container on some other Docker network routes to the host, and the host would accept
    # a connection to any of its addresses -- including a sandbox's gateway address. The
    # gateway relies on "arrived at my address on bridge X" meaning "came from sandbox X".
    net, outsider = make_net(), make_net(bridge_prefix=CONTROL_PREFIX)
    gw = str(net.gateway_ip)
    port = listeners.tcp(gw)
    before = run_in_sandbox(client, image, outsider, f"tcp {gw} {port}")
    assert probes(before) == {f"tcp {gw}:{port}": "open"}, before

    name = unique_name()
    rules_cleanup.append(name)
    firewall.apply_rules(rules_for(name, net, [port], []))
    after = run_in_sandbox(client, image, outsider, f"tcp {gw} {port}")
    assert probes(after) == {f"tcp {gw}:{port}": "blocked"}, after
    # The host itself (over lo) still reaches the gateway, e.g. for health checks.
    with socket.create_connection((gw, port), timeout=3) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.0 200")


def test_removed_rules_fail_closed(
    client: docker.DockerClient,
    image: str,
    make_net: NetFactory,
    listeners: HostListeners,
    rules_cleanup: list[str],
) -> None:
    net = make_net()
    gw = str(net.gateway_ip)
    allowed, other = listeners.tcp(gw), listeners.tcp(gw)
    name = unique_name()
    rules_cleanup.append(name)
    firewall.apply_rules(rules_for(name, net, [allowed], []))
    firewall.remove_rules(name)
    # The guard rule ("al-*" drop) still matches this bridge: no port is reachable, not even
    # the one that used to be allowed.
    out = run_in_sandbox(client, image, net, f"tcp {gw} {allowed} & tcp {gw} {other} & wait")
    assert probes(out) == {f"tcp {gw}:{allowed}": "blocked", f"tcp {gw}:{other}": "blocked"}, out


def test_image_is_cached_and_reimported_offline(client: docker.DockerClient, image: str) -> None:
    # The tag exists now, so this returns at once without touching debootstrap or the cache.
    assert ensure_sandbox_image(client) == image
    attrs = client.images.get(image).attrs
    assert attrs["Config"]["User"] == f"{SANDBOX_UID}:{SANDBOX_UID}"
    if os.environ.get("AIRLOCK_E2E_REIMPORT") == "1":
        # Slow-ish (a ~350 MB import): opt in to prove `docker image rm` only costs an import.
        messages: list[str] = []
        client.images.remove(image, force=True)
        assert ensure_sandbox_image(client, progress=messages.append) == image
        assert not any("debootstrap" in m for m in messages), messages
