"""Sandboxes served by the gateway's hardened container (``gateway.mode = "container"``).

On the real Docker engine, with airlock's own SandboxManager and the gateway container that
`airlock gateway` starts in container mode:

* the gateway's container joins each sandbox network at the subnet's second host address
  before the sandbox starts, and the sandbox's session is bound to that address;
* a sandbox clones and pushes with the plain GitHub URL through it, its DNS answers come from
  it, and its egress proxy lets an allowlisted host through and refuses another;
* the host's own address on the sandbox bridge answers nothing (the host-mode listener
  address is not there any more); the gateway's container is not "foreign" to `supervise`;
* when the sandbox exits the gateway leaves its network, and removing it leaves nothing.

The upstream and the download decoy listen on the host's address on the gateway's own
network: the only addresses the gateway's container can reach that these tests own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import docker
import pytest

from airlock.config import load_config
from airlock.host import firewall
from airlock.host.gateway_image import ensure_gateway_image
from airlock.host.sandbox import SandboxManager
from airlock.host.supervisor import Supervisor
from airlock.testing.ports import free_port
from tests.e2e.conftest import (
    E2E,
    GIT_TIMEOUT,
    Sandboxes,
    remove_everything_of,
    sandbox_config,
)
from tests.e2e.egress_decoys import DecoyWeb
from tests.e2e.gateway_container_world import ContainerWorld
from tests.world import HOST, World

pytestmark = E2E
POOL = "10.216.176.0/20"  # this module's sandbox subnets; no other module uses them
GATEWAY_SUBNET = "10.251.15.0/24"  # the gateway container's own network
REPO = "acme/boxed"
GIT = f"timeout {GIT_TIMEOUT} git"
DOWNLOAD_NAME = "downloads.boxed.test"
OTHER_NAME = "elsewhere.boxed.test"


@pytest.fixture(scope="module")
def decoy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sbx_world(docker_client: docker.DockerClient, decoy_port: int) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="airlock-e2e-boxed-"))
    host_ip = str(IPv4Network(GATEWAY_SUBNET)[1])
    static = "".join(
        f'[[egress.static]]\nname = "{n}"\naddresses = ["{host_ip}"]\nallow_private = true\n'
        for n in (DOWNLOAD_NAME, OTHER_NAME)
    )
    extra = sandbox_config(POOL) + f"[egress]\nhttp_ports = [{decoy_port}]\n" + static
    for d in ("probe", "world"):
        (root / d).mkdir()
    probe = ContainerWorld(root / "probe", GATEWAY_SUBNET, config_extra=extra)
    probe.write_config()
    probe.loop.close()
    # Built once (debootstrap + wheels, about a minute), before the gateway's 30 s start.
    image = ensure_gateway_image(docker_client, load_config(probe.config), progress=print)
    w = ContainerWorld(
        root / "world", GATEWAY_SUBNET, config_extra=extra, host_ports=(decoy_port,), image=image
    )
    w.start()
    yield w
    remove_everything_of(w)
    w.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def decoy(sbx_world: ContainerWorld, decoy_port: int) -> Iterator[DecoyWeb]:
    d = DecoyWeb(sbx_world.host_ip, decoy_port, "boxed-download")
    yield d
    d.close()


@pytest.fixture(scope="module")
def repo(sbx_world: World) -> Path:
    return sbx_world.make_repo(*REPO.split("/"))


def _gateway_networks(client: docker.DockerClient, world: ContainerWorld) -> dict[str, str]:
    info = client.api.inspect_container(world.container_name)
    return {
        name: str(net.get("IPAddress"))
        for name, net in (info["NetworkSettings"]["Networks"] or {}).items()
    }


def test_a_sandbox_clones_and_pushes_through_the_gateway_container(
    sandboxes: Sandboxes, sbx_world: ContainerWorld, repo: Path
) -> None:
    client = sandboxes.client
    script = (
        "set -e; cd /tmp; "
        f"{GIT} clone -q https://github.com/{REPO} w; cd w; "
        "git -c user.name=a -c user.email=a@example.com commit -q --allow-empty -m boxed; "
        f"{GIT} push -q origin HEAD:refs/heads/agent/boxed; echo pushed; "
        "GW=$(awk '/nameserver/{print $2}' /etc/resolv.conf); echo gw=$GW; "
        "echo dns=$(dig +short +time=2 +tries=1 @$GW airlock.internal)"
    )
    sb = sandboxes.start(script, [f"{HOST}/{REPO}:write=agent/**"])
    try:
        # Before the sandbox could run anything, the gateway's container was on its network
        # at the fixed address (the subnet's .2), and Docker's bridge address is the host's.
        nets = _gateway_networks(client, sbx_world)
        assert nets.get(sb.network) == str(sb.gateway_ip) == str(sb.subnet[2])
        assert str(sb.sandbox_ip) == str(sb.subnet[3])
        # The bridged rules see traffic across the bridge only through br_netfilter, switched
        # on for this bridge itself (not left to Docker or the host-wide default).
        for name in ("nf_call_iptables", "nf_call_ip6tables"):
            assert Path(f"/sys/class/net/{sb.bridge}/bridge/{name}").read_text().strip() == "1"
        code = sandboxes.wait(sb)
        out = sandboxes.logs(sb)
        assert code == 0, out
        assert "pushed" in out
        assert f"gw={sb.gateway_ip}" in out
        assert f"dns={sb.gateway_ip}" in out
        session = next(s for s in sbx_world.control.list_sessions() if s["id"] == sb.session_id)
        binding = session["binding"]
        assert binding["gateway_address"] == str(sb.gateway_ip)
        assert binding["address"] == str(sb.sandbox_ip)
        requests = [
            e for e in sbx_world.audit_for(str(sb.session_id)) if e.get("event") == "git_request"
        ]
        assert requests and all(e.get("source") == str(sb.sandbox_ip) for e in requests)
    finally:
        sandboxes.teardown(sb)
    assert sandboxes.leftovers(sb.id) == []
    assert sb.network not in _gateway_networks(client, sbx_world)


def test_egress_and_the_host_address_on_the_bridge(
    sandboxes: Sandboxes, sbx_world: ContainerWorld, decoy: DecoyWeb, decoy_port: int
) -> None:
    script = (
        f"curl -s -m 5 http://{DOWNLOAD_NAME}:{decoy_port}/hello; echo; "
        f"curl -s -m 5 -o /dev/null -D - http://{OTHER_NAME}:{decoy_port}/hello "
        "| grep -i x-airlock-refused; "
        # The host's address on this bridge (Docker's bridge gateway, the address before the
        # gateway's): in host mode the gateway listened there; now nothing of the host answers.
        "GW=$(awk '/nameserver/{print $2}' /etc/resolv.conf); H=${GW%.*}.$(( ${GW##*.} - 1 )); "
        "for p in 8443 3128 53; do "
        'if timeout 3 bash -c "</dev/tcp/$H/$p" 2>/dev/null; then echo host:$p=open; '
        "else echo host:$p=closed; fi; done"
    )
    result = sandboxes.run(["bash", "-c", script], [], allow_hosts=[DOWNLOAD_NAME])
    assert "boxed-download" in result.output, result.output
    assert "not_allowlisted" in result.output, result.output
    for port in (8443, 3128, 53):
        assert f"host:{port}=closed" in result.output, result.output
    assert any(DOWNLOAD_NAME in r for r in decoy.requests)
    assert not any(OTHER_NAME in r for r in decoy.requests)


def test_supervise_keeps_a_sandbox_with_the_gateway_container_on_its_network(
    sandboxes: Sandboxes, sbx_world: ContainerWorld
) -> None:
    sb = sandboxes.start("sleep 60", [])
    try:
        manager = SandboxManager(load_config(sbx_world.config), client=sandboxes.client)
        said: list[str] = []
        counts = Supervisor(manager, say=said.append).reconcile()
        assert not any("foreign" in s for s in said), said
        state = sandboxes.api.inspect_container(sb.container_id)["State"]
        assert state["Running"], (counts, said)
        # A bridge whose netfilter option was switched off gets it back. (The host-wide
        # option is on here, so switching the bridge's own off opens nothing meanwhile.)
        Path(f"/sys/class/net/{sb.bridge}/bridge/nf_call_iptables").write_text("0")
        assert not firewall.bridge_netfilter_on(sb.bridge)
        Supervisor(manager, say=said.append).reconcile()
        assert firewall.bridge_netfilter_on(sb.bridge), said
        # A gateway container that lost the network (re-created, say) is joined again.
        sandboxes.api.disconnect_container_from_network(
            sbx_world.container_name, sb.network, force=True
        )
        Supervisor(manager, say=said.append).reconcile()
        deadline = time.monotonic() + 10
        while sb.network not in _gateway_networks(sandboxes.client, sbx_world):
            assert time.monotonic() < deadline, said
            time.sleep(0.2)
        assert _gateway_networks(sandboxes.client, sbx_world)[sb.network] == str(sb.gateway_ip)
    finally:
        sandboxes.teardown(sb)
    assert sandboxes.leftovers(sb.id) == []


def test_rotate_token_reaches_the_gateway_container(
    sandboxes: Sandboxes, sbx_world: ContainerWorld, repo: Path, tmp_path: Path
) -> None:
    """`airlock rotate token` swaps the host's token file (which the upstream reads on every
    request) and copies it again into the gateway container's secrets: a sandbox clones with
    the new token at once; had the copy not been refreshed, the upstream would refuse the
    container's old token."""
    import os
    import subprocess
    import sys

    old = sbx_world.token_file.read_text()
    new_file = tmp_path / "new-token"
    new_file.write_text("ghs_" + "R0tatedInC0ntainer" + "y" * 18 + "\n")
    os.chmod(new_file, 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "airlock.cli", "rotate", "token", str(new_file)),
                *("--config", str(sbx_world.config)),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert sbx_world.token_file.read_text() == new_file.read_text()
        result = sandboxes.run(
            f"{GIT} clone -q https://github.com/{REPO} /tmp/r && echo CLONED",
            [f"{HOST}/{REPO}:read"],
        )
        assert result.code == 0 and "CLONED" in result.output, result.output
    finally:
        sbx_world.token_file.write_text(old)
        from airlock.config import load_config as _load
        from airlock.host.gateway_container import refresh_secrets

        refresh_secrets(_load(sbx_world.config))
