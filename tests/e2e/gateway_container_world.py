"""A World whose gateway is the hardened container (``gateway.mode = "container"``).

The gateway's container cannot reach the host's loopback, so the upstream (git's own
http-backend behind TLS) listens on the host's address on the gateway's own network (that
network's bridge gateway, ``.1`` of ``[gateway.container] subnet``). ``airlock gateway`` in
container mode makes the network and the container, so the upstream starts after it. Paths
the container mounts (state, control socket, audit log) are directories of their own: none of
them holds the world's other files (its token file, the upstream's keys).
"""

from __future__ import annotations

import uuid
from ipaddress import IPv4Network
from pathlib import Path

import docker
import docker.errors

from airlock.testing.ports import free_port
from airlock.testing.tls import make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream
from tests.world import World


class ContainerWorld(World):
    def __init__(
        self,
        root: Path,
        gateway_subnet: str,
        *,
        config_extra: str = "",
        host_ports: tuple[int, ...] = (),
        image: str | None = None,
    ) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        upstream_port = free_port()
        self.container_name = f"airlock-test-gw-{self.suffix}"
        self.network_name = f"airlock-test-gwnet-{self.suffix}"
        self.gateway_subnet = IPv4Network(gateway_subnet)
        self.host_ip = str(self.gateway_subnet[1])
        super().__init__(
            root,
            config_extra=config_extra,
            gateway_extra=(
                'mode = "container"\n'
                "[gateway.container]\n"
                f'name = "{self.container_name}"\n'
                f'network = "{self.network_name}"\n'
                f'subnet = "{self.gateway_subnet}"\n'
                # The upstream (and the tests' decoys) on the host's address of its network:
                # the only host ports the gateway's container may reach.
                f"host_ports = {[upstream_port, *host_ports]}\n"
                # The image built for this run (its tag is a hash of the sources: pinned, a
                # source edit meanwhile cannot make it "missing" under a running test).
                + (f'image = "{image}"\n' if image else "")
            ),
        )
        # A directory each, mounted into the gateway's container (and nothing else of ours).
        self.socket = root / "run" / "gateway" / "control.sock"
        self.audit_log = root / "log" / "audit.log"
        self.audit_log.parent.mkdir()
        self.tls = make_test_ca_and_server_cert(
            root / "upstream-tls-bridge", ["localhost"], ["127.0.0.1", self.host_ip]
        )
        self.upstream = GitUpstream(
            self.repos, self.token_file, self.tls, host=self.host_ip, port=upstream_port
        )

    def write_config(self) -> None:
        # The [gateway.container] table must come last in [gateway]: keys after it would
        # land in it. World puts gateway_extra last, which is where it is.
        super().write_config()

    def start(self) -> None:
        self.write_config()
        self.start_gateway()  # makes the gateway's network: the upstream's address exists now
        self.loop.run(self.upstream.start())

    def stop(self) -> None:
        super().stop()
        client = docker.from_env(timeout=60)
        try:
            for name in (self.container_name,):
                try:
                    client.api.remove_container(name, force=True)
                except docker.errors.NotFound:
                    pass
            try:
                client.api.remove_network(self.network_name)
            except docker.errors.NotFound:
                pass
        finally:
            client.close()
