"""What a sandbox cannot reach, and what a stolen or spoofed identity cannot do, on the real engine.

Every "cannot reach" below has a positive control in the same test: the target answers when
asked from somewhere else (the host, a container on an ordinary Docker network), and where the
block is airlock's own doing, the very same probe from the very same sandbox succeeds once
that sandbox's nftables chains are neutralised (an ``accept`` at their head; the guards and
every other sandbox untouched) -- so no test here can pass because a probe is broken.

Proved here:
* host services: a decoy listening on every host address (the sandbox's own gateway address
  on a port that is not one of the gateway's, another sandbox's gateway address, every IPv4
  address of the host's lasting interfaces, an address on an interface made for the test)
  answers the host and an ordinary container, but not the sandbox, directly or through its
  proxy settings -- until the sandbox's own chains are bypassed, when all of them answer;
* another sandbox: neither its container (TCP service, UDP listener) nor its gateway address
  (git and DNS ports) is reachable from a sibling sandbox, while the sibling's own gateway is;
* another Docker network: a container on a routed network answers the host, not the sandbox;
* no control socket, no Docker socket, no Unix socket of airlock inside the sandbox;
* IPv6: the sandbox has no IPv6 address, cannot switch IPv6 on, and cannot open IPv6
  connections to the gateway's link-local or the host's global address; and a container on
  the sandbox's segment that does have IPv6 is dropped by airlock's rules (control: bypassing
  them lets it through);
* the sandbox command's very first instruction already runs behind the rules (control: the
  same first instruction reaches the decoy when the rules are bypassed before the gate opens);
* spoofing, with an attacker far stronger than sandbox code (root, NET_RAW and NET_ADMIN, on a
  sandbox's own segment, holding copies of two sessions' keys):
  - from any address other than the sandbox's, nothing reaches the gateway (no request in the
    audit log), and with the rules bypassed, the gateway itself refuses the session
    (``wrong_source``): two independent layers;
  - taking the other sandbox's address gets it nowhere: no connection to either gateway
    with either session, no request in the audit log;
  - forged UDP with the other sandbox's source address never reaches the gateway's DNS
    (which would have answered *to the victim*, a reflection), while the same forgery with
    this segment's own sandbox address does get answered (control: the forging works, and the
    answer arrives at a listener we control);
* a stolen session certificate (a copy of the bundle) is refused from another sandbox
  (``wrong_source``), from the host via that sandbox's gateway address or via loopback
  (``wrong_source``), and after its sandbox stopped (``revoked``), while the same bundle works
  from its own sandbox (control).

Layers, as checked by hand by running these tests with the probing sandbox's chains bypassed:
host services, the other sandbox's gateway address, and the forged UDP reflection are stopped
by airlock's rules alone (the tests fail without them). The other sandbox's container and the
container on another network are also stopped by Docker's own isolation of ``--internal``
networks, and the sandbox's own IPv6 by Docker disabling it in the container: those tests
still pass without airlock's rules (defence in depth; the IPv6 rules are proved separately by
the attacker container that has IPv6 on).

Not proved, and why (see ``test_reconcile_notices_a_foreign_container_on_a_sandbox_network``):
a container that someone *with Docker access* attaches to a sandbox's network, taking that
sandbox's address and holding its key, is served as that sandbox (tried by hand: the audit log
attributes its requests to the sandbox's container, and the real sandbox loses its
connections as the bridge's ARP entry moves). Sandbox code cannot do this (no Docker socket,
no capabilities); the design relies on "no other container on the segment", which is checked
once at activation but not afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from airlock.host import firewall
from airlock.host.sandbox import Sandbox
from airlock.host.supervisor import Supervisor
from tests.e2e.conftest import (
    E2E,
    TEST_LABEL,
    Decoy,
    PlainNetwork,
    Sandboxes,
    container_ip,
    copy_bundle,
    create_plain_network,
    nft_bypass_sandbox,
    probe_key,
    probe_results,
    probe_script,
    run_plain_container,
    wait_until,
)
from tests.world import HOST, World

pytestmark = E2E
POOL = "10.216.32.0/20"
PLAIN_POOL = IPv4Network("10.218.0.0/24")  # ordinary Docker networks made here, outside airlock
REPO = "acme/widgets"
GRANTS = [f"{HOST}/{REPO}:write"]
HTTP_PORT, UDP_PORT = 8000, 5353

# Both sandboxes of the pair run this: an HTTP service answering $MARKER and a UDP listener
# that prints every datagram it receives (peer address and port).
VICTIM = r"""
cd /tmp && echo "$MARKER" > index.html
python3 -m http.server 8000 >/dev/null 2>&1 &
exec python3 -u -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    data, peer = s.recvfrom(4096)
    print("GOT", peer[0], peer[1], len(data), flush=True)
'
"""

# Forges one DNS query for airlock.internal in a raw IPv4/UDP packet (needs NET_RAW):
# argv = source address, source port, destination address, destination port.
SPOOF = r"""
import socket, struct, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
qname = b"".join(bytes([len(p)]) + p for p in b"airlock.internal".split(b".")) + b"\0"
query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
udp = struct.pack("!HHHH", sport, dport, 8 + len(query), 0) + query
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    s.sendto(ip + udp, (dst, 0))
print("sent", src, dst)
"""


def http_get(address: str, port: int, timeout: float = 3) -> str:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return ""
    return data.decode(errors="replace")


def serves(address: str, port: int, marker: str) -> bool:
    return marker in http_get(address, port)


def send_udp(address: str, port: int, payload: bytes = b"hello") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, (address, port))


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    data: list[dict[str, Any]] = json.loads(out or "[]")
    return data


# Loopback, sandbox and test bridges (al-, altest, aldcy, alctl: these come and go with
# concurrent test runs), other Docker networks' bridges and container veths.
_NOT_HOST = ("lo", "al", "br-", "veth")


def host_addresses(family: str, scope: str = "global") -> list[str]:
    """This host's own addresses on its lasting interfaces (e.g. eth0, docker0)."""
    found = []
    for link in _ip_json(f"-{family}", "addr", "show"):
        if str(link.get("ifname", "")).startswith(_NOT_HOST):
            continue
        for a in link.get("addr_info", []):
            if a.get("scope") == scope and "tentative" not in a:
                found.append(str(a["local"]))
    return found


def link_local_of(ifname: str) -> str | None:
    for link in _ip_json("-6", "addr", "show", "dev", ifname):
        for a in link.get("addr_info", []):
            if a.get("scope") == "link":
                return str(a["local"])
    return None


def git_requests_since(world: World, mark: int) -> list[dict[str, Any]]:
    return [e for e in world.audit()[mark:] if e.get("event") == "git_request"]


def refusals_of(world: World, mark: int, session_id: str | None) -> set[tuple[str, str]]:
    """(source, reason) of the git requests on ``session_id`` logged after ``mark``."""
    return {
        (e["source"], e["reason"])
        for e in git_requests_since(world, mark)
        if e["session"] == session_id
    }


def ls_remote_cmd(config: str, *extra: str, timeout: int = 20) -> str:
    """git ls-remote of REPO with only the given gitconfig (no system config)."""
    return (
        f"GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL={config} timeout {timeout} "
        f"git {' '.join(extra)} ls-remote https://github.com/{REPO}"
    )


def restore_rules(sandboxes: Sandboxes, sb: Sandbox) -> None:
    rules = sandboxes.manager.rules_for(sb)
    firewall.apply_rules(rules)
    assert firewall.verify_rules(rules)


# --- fixtures ------------------------------------------------------------------------------


@dataclass
class Pair:
    a: Sandbox
    b: Sandbox
    marker_a: str
    marker_b: str
    stolen: Path  # host directory mounted read-only at /stolen in sandbox B


@pytest.fixture(scope="module")
def pair(
    sandboxes: Sandboxes, sbx_world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Two running sandboxes, A and B, on the same gateway; B has /stolen for stolen bundles."""
    sbx_world.make_repo(*REPO.split("/"))
    stolen = tmp_path_factory.mktemp("stolen")
    os.chmod(stolen, 0o755)
    ma, mb = f"VICTIM-A-{uuid.uuid4().hex[:8]}", f"VICTIM-B-{uuid.uuid4().hex[:8]}"
    a = sandboxes.start(VICTIM, GRANTS, env={"MARKER": ma})
    try:
        b = sandboxes.start(VICTIM, GRANTS, env={"MARKER": mb}, volumes=[f"{stolen}:/stolen:ro"])
    except BaseException:
        sandboxes.teardown(a)
        raise
    try:
        for sb, marker in ((a, ma), (b, mb)):
            assert wait_until(partial(serves, str(sb.sandbox_ip), HTTP_PORT, marker), 20), (
                f"the service in {sb.name} did not come up: {sandboxes.logs(sb)}"
            )
        yield Pair(a, b, ma, mb, stolen)
    finally:
        sandboxes.teardown(a)
        sandboxes.teardown(b)


@pytest.fixture(scope="module")
def dummy_address() -> Iterator[str]:
    """A host address on an interface of its own, made for this module (an extra decoy address).

    A dummy interface where the kernel has the module, else an empty bridge (same effect: a
    local address on a link nothing is attached to).
    """
    name = f"aldcy{uuid.uuid4().hex[:6]}"
    address = f"10.218.99.{random.randint(2, 250)}"
    made = subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True)
    if made.returncode != 0:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield address
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


@pytest.fixture(scope="module")
def plain_net(docker_client: docker.DockerClient) -> Iterator[PlainNetwork]:
    net = create_plain_network(docker_client, PLAIN_POOL)
    yield net
    for c in docker_client.api.containers(all=True, filters={"network": [net.name]}):
        docker_client.api.remove_container(c["Id"], force=True)
    docker_client.api.remove_network(net.name)


@pytest.fixture(scope="module")
def network_decoy(
    docker_client: docker.DockerClient, sandbox_image: str, plain_net: PlainNetwork
) -> Iterator[tuple[str, str]]:
    """(address, marker) of an HTTP service in a container on an ordinary Docker network."""
    marker = f"NETDECOY-{uuid.uuid4().hex[:8]}"
    cid, _ = run_plain_container(
        docker_client,
        sandbox_image,
        plain_net.name,
        ["sh", "-c", f"cd /tmp && echo {marker} > index.html && exec python3 -m http.server 8000"],
        detach=True,
    )
    try:
        address = container_ip(docker_client, cid, plain_net.name)
        yield address, marker
    finally:
        docker_client.api.remove_container(cid, force=True)


@dataclass
class Attacker:
    client: docker.DockerClient
    cid: str

    def sh(self, script: str) -> tuple[int, str]:
        return self.run(["/bin/sh", "-c", script])

    def run(self, argv: list[str]) -> tuple[int, str]:
        api = self.client.api
        exec_id = api.exec_create(self.cid, argv, user="0")
        out: bytes = api.exec_start(exec_id)
        return int(api.exec_inspect(exec_id)["ExitCode"] or 0), out.decode(errors="replace")


@pytest.fixture
def attacker(
    pair: Pair, docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path
) -> Iterator[Attacker]:
    """Root with NET_RAW and NET_ADMIN (and IPv6 on) on B's own segment, at a spare address,
    holding copies of A's and B's bundles. Made straight through the Docker API, which sandbox
    code has no access to: a deliberately stronger attacker than anything inside a sandbox."""
    b = pair.b
    bundles = tmp_path / "bundles"
    for name, sb in (("a", pair.a), ("b", b)):
        assert sb.bundle_dir is not None
        copy_bundle(sb.bundle_dir, bundles / name, f"/bundles/{name}", uid=0)
    api = docker_client.api
    host_config = api.create_host_config(
        network_mode=b.network,
        cap_add=["NET_RAW", "NET_ADMIN"],
        binds={str(bundles): {"bind": "/bundles", "mode": "ro"}},
        # As a sandbox's hosts file: the gateway's name and the upstream host (git's host form).
        extra_hosts={"airlock.internal": str(b.gateway_ip), HOST: str(b.gateway_ip)},
        sysctls={"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0"},
    )
    networking = api.create_networking_config(
        {b.network: api.create_endpoint_config(ipv4_address=str(b.subnet[3]))}
    )
    cid = api.create_container(
        sandbox_image,
        command=["sleep", "600"],
        user="0:0",
        host_config=host_config,
        networking_config=networking,
        labels={TEST_LABEL: "1"},
    )["Id"]
    try:
        api.start(cid)
        yield Attacker(docker_client, cid)
    finally:
        api.remove_container(cid, force=True)


# --- host services -------------------------------------------------------------------------


def test_sandbox_reaches_no_host_service(
    pair: Pair,
    sandboxes: Sandboxes,
    decoy: Decoy,
    dummy_address: str,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    plain_net: PlainNetwork,
) -> None:
    b = pair.b
    own_gateway, other_gateway = str(b.gateway_ip), str(pair.a.gateway_ip)
    host_ips = [*host_addresses("4"), dummy_address]
    assert host_ips, "no host address found to aim a decoy at"
    targets = [own_gateway, other_gateway, *host_ips]
    probes = probe_script([(t, decoy.port, decoy.marker) for t in targets])

    # Controls: the decoy answers on every target from the host ...
    for t in targets:
        assert decoy.reachable_from_host(t), f"decoy not reachable from the host at {t}"
    # ... and on every host address from an ordinary container (Docker alone lets it through).
    _, out = run_plain_container(
        docker_client,
        sandbox_image,
        plain_net.name,
        ["bash", "-c", probe_script([(t, decoy.port, decoy.marker) for t in host_ips])],
        detach=False,
    )
    assert probe_results(out) == {probe_key(t, decoy.port): "open" for t in host_ips}, out

    hits_before = len(decoy.hits)
    _, out = sandboxes.exec(b, probes)
    assert probe_results(out) == {probe_key(t, decoy.port): "blocked" for t in targets}, out
    assert decoy.hits[hits_before:] == []
    # Through the sandbox's own proxy settings (no --noproxy) it gets no further: the egress
    # proxy, if it answers at all, refuses (-f turns that refusal into an exit code).
    code, out = sandboxes.exec(b, f"curl -fsS --max-time 4 http://{host_ips[0]}:{decoy.port}/ 2>&1")
    assert code != 0 and decoy.marker not in out, out
    assert decoy.hits[hits_before:] == []

    # Control: with only this sandbox's chains neutralised, the very same probes get through.
    # So the probes work, and what blocked them was airlock's rules (not Docker, not routing).
    nft_bypass_sandbox(b.id)
    try:
        _, out = sandboxes.exec(b, probes)
        assert probe_results(out) == {probe_key(t, decoy.port): "open" for t in targets}, out
        assert str(b.sandbox_ip) in decoy.hits
    finally:
        restore_rules(sandboxes, b)
    _, out = sandboxes.exec(b, probes)
    assert probe_results(out) == {probe_key(t, decoy.port): "blocked" for t in targets}, out


# --- other sandboxes and networks -------------------------------------------------------------


def test_sandbox_reaches_no_other_sandbox(
    pair: Pair, sandboxes: Sandboxes, sbx_world: World
) -> None:
    a, b = pair.a, pair.b
    git_port, dns_port = sbx_world.port, 53
    # Controls: A's service answers the host; A's own gateway serves A; B's serves B.
    assert pair.marker_a in http_get(str(a.sandbox_ip), HTTP_PORT)
    code, out = sandboxes.exec(a, ls_remote_cmd("/run/airlock/gitconfig"))
    assert code == 0 and "refs/heads/main" in out, out
    send_udp(str(a.sandbox_ip), UDP_PORT)
    assert wait_until(lambda: f"GOT {a.gateway_ip} " in sandboxes.logs(a), 5), sandboxes.logs(a)

    targets = [
        (str(a.sandbox_ip), HTTP_PORT, pair.marker_a),
        (str(a.gateway_ip), git_port, ""),
        (str(a.gateway_ip), dns_port, ""),
        (str(b.gateway_ip), git_port, ""),  # control: its own gateway
    ]
    code, out = sandboxes.exec(
        b, probe_script(targets) + f"\necho ping | nc -u -w1 {a.sandbox_ip} {UDP_PORT}; true"
    )
    assert probe_results(out) == {
        probe_key(str(a.sandbox_ip), HTTP_PORT): "blocked",
        probe_key(str(a.gateway_ip), git_port): "blocked",
        probe_key(str(a.gateway_ip), dns_port): "blocked",
        probe_key(str(b.gateway_ip), git_port): "open",
    }, out
    time.sleep(1)
    assert f"GOT {b.sandbox_ip}" not in sandboxes.logs(a)
    # A's session is not reachable by name from B either: B's DNS names only B's gateway.
    code, out = sandboxes.exec(b, "getent hosts airlock.internal")
    assert code == 0 and out.split()[0] == str(b.gateway_ip), out


def test_sandbox_reaches_no_container_on_another_network(
    pair: Pair, sandboxes: Sandboxes, network_decoy: tuple[str, str]
) -> None:
    address, marker = network_decoy
    # Control: the container's service is up and routable from the host.
    assert wait_until(lambda: marker in http_get(address, HTTP_PORT), 20)
    _, out = sandboxes.exec(pair.b, probe_script([(address, HTTP_PORT, marker)]))
    assert probe_results(out) == {probe_key(address, HTTP_PORT): "blocked"}, out


# --- sockets and IPv6 -------------------------------------------------------------------------


def test_no_control_socket_or_other_airlock_socket_inside(
    pair: Pair, sandboxes: Sandboxes, sbx_world: World
) -> None:
    control = sbx_world.socket
    assert control.is_socket()  # control: it exists, on the host
    script = f"""
    for p in '{control}' '{control.parent}' /var/run/docker.sock /run/docker.sock \
             /run/airlock/control.sock /run/airlock-test; do
        test -e "$p" && echo "VISIBLE $p"
    done
    echo "== sockets"
    find / \\( -path /proc -o -path /sys \\) -prune -o -type s -print 2>/dev/null
    echo "== unix"
    cat /proc/net/unix
    echo "== mounts"
    cat /proc/self/mountinfo
    """
    for user in (None, "0"):
        _, out = sandboxes.exec(pair.b, script, user=user)
        assert "VISIBLE" not in out, out
        sockets = out.split("== sockets")[1].split("== unix")[0].split()
        assert sockets == [], out
        unix, mounts = out.split("== unix")[1].split("== mounts")
        for needle in ("control.sock", "docker.sock", str(sbx_world.root)):
            assert needle not in unix, unix
            assert needle not in mounts, mounts


def test_no_ipv6(pair: Pair, sandboxes: Sandboxes, decoy: Decoy) -> None:
    b = pair.b
    gw_ll = link_local_of(b.bridge)
    host_v6 = host_addresses("6")
    targets: list[tuple[str, str | None]] = [(g, None) for g in host_v6]
    if gw_ll is not None:
        targets.append((gw_ll, b.bridge))
    if not targets:
        pytest.skip("the host has no IPv6 address to aim at")
    # Controls: the decoy answers on each of these IPv6 addresses from the host.
    for address, scope in targets:
        assert decoy.reachable_from_host(address, scope), address
    hits_before = len(decoy.hits)
    _, out = sandboxes.exec(b, "ip -6 addr show; cat /proc/sys/net/ipv6/conf/all/disable_ipv6")
    assert "inet6" not in out, out
    inside = [f"{a}%eth0" if scope else a for a, scope in targets]
    _, out = sandboxes.exec(b, probe_script([(a, decoy.port, decoy.marker) for a in inside]))
    assert probe_results(out) == {probe_key(a, decoy.port): "blocked" for a in inside}, out
    # Nor can it switch IPv6 on, as itself or as (capability-less) root.
    for user in (None, "0"):
        _, out = sandboxes.exec(
            b,
            "sysctl -w net.ipv6.conf.all.disable_ipv6=0 2>&1 || "
            "echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>&1; ip -6 addr show",
            user=user,
        )
        assert "inet6" not in out, out
    assert decoy.hits[hits_before:] == []


# --- the first instruction ----------------------------------------------------------------------


def test_the_first_instruction_already_runs_behind_the_rules(
    sandboxes: Sandboxes, decoy: Decoy, dummy_address: str
) -> None:
    target = f"http://{dummy_address}:{decoy.port}/"
    assert decoy.reachable_from_host(dummy_address)  # control
    hits_before = len(decoy.hits)
    for command in (
        # As typed, through the sandbox's proxy settings (-f: a refusal by the egress proxy
        # is an HTTP error page, which curl would otherwise count as success) ...
        ["curl", "-f", "--max-time", "3", target],
        # ... and straight at it.
        ["curl", "--noproxy", "*", "--max-time", "3", target],
    ):
        r = sandboxes.run(command, GRANTS)
        assert r.code != 0, r.output
        assert decoy.marker not in r.output
    assert decoy.hits[hits_before:] == []

    # Control: the same command as the first instruction, with this sandbox's chains bypassed
    # before its gate opens, does reach the decoy. (The gate is what holds the command until
    # the container is verified and its session active.)
    sb = sandboxes.start(
        ["curl", "--noproxy", "*", "--max-time", "3", target], GRANTS, open_gate=False
    )
    try:
        nft_bypass_sandbox(sb.id)
        sandboxes.manager.open_gate(sb)
        code = sandboxes.wait(sb, 30)
        assert code == 0 and decoy.marker in sandboxes.logs(sb), sandboxes.logs(sb)
        assert str(sb.sandbox_ip) in decoy.hits
    finally:
        sandboxes.teardown(sb)


# --- spoofing ----------------------------------------------------------------------------------


def test_an_attacker_on_a_sandbox_segment_cannot_impersonate_another_sandbox(
    pair: Pair, attacker: Attacker, sandboxes: Sandboxes, sbx_world: World, decoy: Decoy
) -> None:
    a, b = pair.a, pair.b
    own = str(b.subnet[3])
    port = sbx_world.port
    mark = len(sbx_world.audit())

    # 1. From its own spare address, with B's credentials: dropped before the gateway.
    code, out = attacker.sh(ls_remote_cmd("/bundles/b/gitconfig", timeout=6))
    assert code != 0 and "refs/heads" not in out, out
    assert not any(e["source"] == own for e in git_requests_since(sbx_world, mark))

    # Control for 1, and the second layer: with B's chains bypassed the connection gets
    # through, and the gateway refuses B's session from the wrong address.
    nft_bypass_sandbox(b.id)
    try:
        code, out = attacker.sh(ls_remote_cmd("/bundles/b/gitconfig", timeout=6))
    finally:
        restore_rules(sandboxes, b)
    assert code != 0 and "refs/heads" not in out, out

    def from_own() -> set[tuple[str, str]]:
        return {
            (e["session"], e["reason"])
            for e in git_requests_since(sbx_world, mark)
            if e["source"] == own
        }

    expected = {(str(b.session_id), "wrong_source")}
    assert wait_until(lambda: from_own() == expected, 5), from_own()
    mark = len(sbx_world.audit())

    # 2. IPv6 switched on, on the sandbox segment: the rules drop it (control: bypass).
    gw_ll = link_local_of(b.bridge)
    assert gw_ll is not None
    v6_probe = probe_script([(f"{gw_ll}%eth0", decoy.port, decoy.marker)])
    assert wait_until(lambda: "inet6 fe80" in attacker.sh("ip -6 addr show dev eth0")[1], 10)
    assert wait_until(lambda: "tentative" not in attacker.sh("ip -6 addr show dev eth0")[1], 10)
    _, out = attacker.run(["bash", "-c", v6_probe])
    assert set(probe_results(out).values()) == {"blocked"}, out
    nft_bypass_sandbox(b.id)
    try:
        _, out = attacker.run(["bash", "-c", v6_probe])
    finally:
        restore_rules(sandboxes, b)
    assert set(probe_results(out).values()) == {"open"}, out

    # 3. Become A: A's address as its only IPv4 address on B's segment, then try both
    #    sessions against both gateways. Nothing gets through; nothing reaches the audit log.
    code, out = attacker.sh(
        f"ip -4 addr flush dev eth0 && ip addr add {a.sandbox_ip}/32 dev eth0 && "
        f"ip route add {b.subnet} dev eth0 src {a.sandbox_ip} && "
        f"ip route add default via {b.gateway_ip} dev eth0 src {a.sandbox_ip} && ip -4 addr"
    )
    assert code == 0 and str(a.sandbox_ip) in out, out
    attempts = []
    for bundle in ("a", "b"):
        for gateway in (b.gateway_ip, a.gateway_ip):
            resolve = (
                f"-c http.curloptResolve=airlock.internal:{port}:{gateway} "
                f"-c http.curloptResolve={HOST}:{port}:{gateway}"
            )
            cmd = ls_remote_cmd(f"/bundles/{bundle}/gitconfig", resolve, timeout=6)
            attempts.append(f'({cmd} >/dev/null 2>&1; echo "RESULT {bundle}@{gateway} $?") &')
    _, out = attacker.sh("\n".join([*attempts, "wait"]))
    results = [line.split() for line in out.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 4 and all(r[2] != "0" for r in results), out
    assert not any(
        e["source"] in (str(a.sandbox_ip), own) for e in git_requests_since(sbx_world, mark)
    ), git_requests_since(sbx_world, mark)

    # 4. Forged UDP: DNS queries "from" A (port 5353, where A listens) to both gateways' DNS.
    #    Had they passed, the gateway would have answered to A: a reflection A would log.
    #    Control: the same forgery "from" B, which the rules let through (it is B's address on
    #    B's segment), is answered, and B's listener logs it.
    for src in (str(a.sandbox_ip), str(b.sandbox_ip)):
        for dst in (str(b.gateway_ip), str(a.gateway_ip)):
            code, out = attacker.run(["python3", "-c", SPOOF, src, str(UDP_PORT), dst, "53"])
            assert code == 0 and "sent" in out, out
    assert wait_until(lambda: f"GOT {b.gateway_ip} 53 " in sandboxes.logs(b), 5), sandboxes.logs(b)
    time.sleep(1)
    logs_a = sandboxes.logs(a)
    assert f"GOT {a.gateway_ip} 53 " not in logs_a and f"GOT {b.gateway_ip} 53 " not in logs_a
    # B's forgery to A's gateway is dropped too (wrong destination for B's segment).
    assert f"GOT {a.gateway_ip} 53 " not in sandboxes.logs(b)


def test_a_stolen_session_certificate_is_refused(
    pair: Pair, sandboxes: Sandboxes, sbx_world: World, tmp_path: Path
) -> None:
    # Each theft steals from a sandbox of its own: the gateway logs repeated denials of one
    # kind on one session as a count, so only a distinct (reason, session) gets its own line.
    b = pair.b
    port = sbx_world.port
    victims = [sandboxes.start("sleep 300", GRANTS) for _ in range(3)]
    in_b, at_gateway, at_loopback = victims
    try:
        for v in victims:  # Controls: each bundle works, from its own sandbox.
            code, out = sandboxes.exec(v, ls_remote_cmd("/run/airlock/gitconfig"))
            assert code == 0 and "refs/heads/main" in out, out
        mark = len(sbx_world.audit())
        # From sandbox B, with the victim's certificate and key (a copy of its bundle).
        assert in_b.bundle_dir is not None
        copy_bundle(in_b.bundle_dir, pair.stolen / in_b.id, f"/stolen/{in_b.id}")
        code, out = sandboxes.exec(b, ls_remote_cmd(f"/stolen/{in_b.id}/gitconfig") + " 2>&1")
        assert code != 0 and "refs/heads" not in out and "error: 403" in out, out
        # From the host: at the victim's gateway address, and at the loopback listener.
        for victim, address in (
            (at_gateway, str(at_gateway.gateway_ip)),
            (at_loopback, "127.0.0.1"),
        ):
            assert victim.bundle_dir is not None
            copied = copy_bundle(
                victim.bundle_dir, tmp_path / victim.id, str(tmp_path / victim.id), uid=0
            )
            r = sbx_world.git(
                None,
                "-c",
                f"http.curloptResolve=airlock.internal:{port}:{address}",
                "-c",
                f"http.curloptResolve={HOST}:{port}:{address}",
                "ls-remote",
                f"https://{HOST}/{REPO}",
                env={"GIT_CONFIG_GLOBAL": str(copied)},
                timeout=30,
            )
            assert r.returncode != 0 and "refs/heads" not in r.stdout, r
            assert "error: 403" in r.stderr, r.stderr
        expected = {
            in_b.session_id: {(str(b.sandbox_ip), "wrong_source")},
            at_gateway.session_id: {(str(at_gateway.gateway_ip), "wrong_source")},
            at_loopback.session_id: {("127.0.0.1", "wrong_source")},
        }

        def refusals() -> dict[str | None, set[tuple[str, str]]]:
            return {sid: refusals_of(sbx_world, mark, sid) for sid in expected}

        # The gateway writes its audit line after answering: give it a moment.
        assert wait_until(lambda: refusals() == expected, 5), refusals()

        # After its sandbox stopped, the bundle is worthless even where it was fine before.
        sandboxes.manager.stop(in_b.name, timeout=1)
        mark = len(sbx_world.audit())
        code, out = sandboxes.exec(b, ls_remote_cmd(f"/stolen/{in_b.id}/gitconfig") + " 2>&1")
        assert code != 0 and "refs/heads" not in out and "error: 403" in out, out
        revoked = {(str(b.sandbox_ip), "revoked")}
        assert wait_until(lambda: refusals_of(sbx_world, mark, in_b.session_id) == revoked, 5), (
            refusals_of(sbx_world, mark, in_b.session_id)
        )
    finally:
        for v in victims:
            sandboxes.teardown(v)


def test_reconcile_notices_a_foreign_container_on_a_sandbox_network(
    sandboxes: Sandboxes,
    sbx_world: World,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sb = sandboxes.start("sleep 300", GRANTS)
    api = docker_client.api
    foreign = api.create_container(
        sandbox_image,
        command=["sleep", "300"],
        host_config=api.create_host_config(network_mode=sb.network),
        networking_config=api.create_networking_config(
            {sb.network: api.create_endpoint_config(ipv4_address=str(sb.subnet[3]))}
        ),
        labels={TEST_LABEL: "1"},
    )["Id"]
    try:
        api.start(foreign)
        manager = sandboxes.new_manager()
        # Only this sandbox: reconcile acts on every airlock sandbox of the machine.
        monkeypatch.setattr(manager, "all_sandbox_ids", lambda: {sb.id})
        Supervisor(manager, say=lambda _m: None).reconcile()
        state = sbx_world.control.show(str(sb.session_id))["state"]
        assert state == "revoked"
        with contextlib.suppress(docker.errors.NotFound):  # the sandbox's network is gone too
            attached = api.inspect_network(sb.network).get("Containers") or {}
            assert foreign not in attached
    finally:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(foreign, force=True)
        sandboxes.teardown(sb)
