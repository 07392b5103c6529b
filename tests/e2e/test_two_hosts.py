"""Two "hosts" on one machine: two gateways, each with its own sandbox pool, bundle directory
and supervisor, sharing their sessions through one real redis-server (docs/shared-store.md).

What is shown with real sandboxes on the real Docker engine:
* each host's gateway lists every sandbox's session, with the host that serves it;
* a sandbox session revoked through the *other* host's gateway is refused by its own at once:
  git inside the sandbox is told the session was revoked; the other host's sandbox goes on;
* each supervisor touches its own sandboxes only: one host's reconcile after the other
  host's sandbox was killed leaves that sandbox (and its session) to its own supervisor,
  which then revokes the session.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from airlock.host.supervisor import Supervisor
from airlock.testing.redis_server import RedisServer
from tests.e2e.conftest import E2E, GIT_TIMEOUT, Sandboxes, remove_everything_of
from tests.replicas_world import share_keys
from tests.world import HOST, World

pytestmark = [
    *E2E,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server"),
]
POOLS = {"host-a": "10.216.208.0/20", "host-b": "10.216.224.0/20"}
REPO = "acme/tiny"
LS_REMOTE = f"timeout {GIT_TIMEOUT} git ls-remote https://{HOST}/{REPO}"


@dataclass
class Host:
    name: str
    world: World
    sandboxes: Sandboxes


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, sandbox_image: str
) -> Iterator[dict[str, Host]]:
    root = tmp_path_factory.mktemp("two-hosts")
    redis = RedisServer(root / "redis")
    redis.start()
    out: dict[str, Host] = {}
    try:
        for name, pool in POOLS.items():
            (root / name).mkdir()
            w = World(
                root / name,
                gateway_extra=f'store_url = "{redis.url}"\nhost_name = "{name}"\n',
                config_extra=(
                    f'[sandbox]\nbundle_dir = "/run/airlock-test/{name}"\npool = "{pool}"\n'
                ),
            )
            if out:  # the second host gets the first one's CA, as an operator copies it
                share_keys(out["host-a"].world.state_dir, w.state_dir)
            w.make_repo(*REPO.split("/"))
            w.start()
            out[name] = Host(name, w, Sandboxes(w, docker_client, sandbox_image))
        yield out
    finally:
        for h in out.values():
            h.sandboxes.cleanup()
            remove_everything_of(h.world)
            h.world.stop()
        redis.kill()


def test_each_host_lists_every_sandbox_and_a_revocation_elsewhere_stops_git_at_once(
    hosts: dict[str, Host],
) -> None:
    a, b = hosts["host-a"], hosts["host-b"]
    sa = a.sandboxes.start("sleep 300", [f"{HOST}/{REPO}:read"])
    sb = b.sandboxes.start("sleep 300", [f"{HOST}/{REPO}:read"])
    try:
        for h, box in ((a, sa), (b, sb)):
            code, out = h.sandboxes.exec(box, LS_REMOTE)
            assert code == 0 and "refs/heads/main" in out, out
        for h in (a, b):
            listed = {s["id"]: s for s in h.world.control.list_sessions()}
            assert listed[str(sa.session_id)]["served_by"].startswith("host-a/")
            assert listed[str(sb.session_id)]["served_by"].startswith("host-b/")
        # Host B's operator revokes host A's sandbox.
        b.world.control.revoke(str(sa.session_id), "revoked from host-b")
        code, out = a.sandboxes.exec(sa, LS_REMOTE)  # at once: no wait, no retry
        assert code != 0 and "revoked" in out, out
        code, out = b.sandboxes.exec(sb, LS_REMOTE)
        assert code == 0, out  # (control) the other host's sandbox goes on
    finally:
        a.sandboxes.teardown(sa)
        b.sandboxes.teardown(sb)


def test_each_supervisor_ends_only_its_own_hosts_sandboxes(hosts: dict[str, Host]) -> None:
    a, b = hosts["host-a"], hosts["host-b"]
    sa = a.sandboxes.start("sleep 300", [f"{HOST}/{REPO}:read"], remove=False)
    try:
        a.sandboxes.client.api.kill(sa.container_id)
        a.sandboxes.wait(sa, 30)
        # Host B's supervisor sees the session in the shared store, but not as its own.
        Supervisor(b.sandboxes.new_manager(), say=lambda m: None).reconcile()
        assert a.world.control.show(str(sa.session_id))["state"] == "active"
        assert a.sandboxes.leftovers(sa.id)  # its network and rules are still there
        # Host A's own supervisor ends it.
        Supervisor(a.sandboxes.new_manager(), say=lambda m: None).reconcile()
        assert b.world.control.show(str(sa.session_id))["state"] == "revoked"
    finally:
        a.sandboxes.teardown(sa)
        assert not [x for x in a.sandboxes.leftovers(sa.id) if not x.startswith("container")]
