"""Three gateway processes on one shared store (a real redis-server): what issue 16 must show.

Each gateway is a World of its own (its own upstream, state directory and control socket);
they share their sessions through Redis and one CA (the replicas of one deployment: the
second and third copy the first one's keys, as an operator copies them to a new host). A
sandbox's bundle works at any of them. Requests are git's first request (``info/refs``) on
kept-alive TLS connections with the session's client certificate.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airlock.host.control_client import ControlError
from airlock.testing.ports import free_port
from airlock.testing.redis_server import RedisServer
from airlock.testing.repos import git_env
from airlock.testing.tls import make_test_ca_and_server_cert
from tests.integration.test_api_attacks import API, LIMITED
from tests.integration.test_api_attacks import OWNER as API_OWNER
from tests.integration.test_api_attacks import Sandbox as ApiSandbox
from tests.integration.test_api_attacks import new_repo as api_new_repo
from tests.integration.test_egress_proxy import Decoy

# LISTEN: every replica's "sandbox network" address (where Tunnel connects).
from tests.integration.test_session_liveness import DECOY, LISTEN, LOOP, Liveness, Tunnel
from tests.replicas_world import Client, Replica, share_keys
from tests.world import HOST, ApiWorld, LoopThread, World, run_gateway_cli

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (./dev setup installs it)",
)

CAP = 500  # [sessions] max_requests on every replica (the load test stays below it)
API_LISTEN = LIMITED[0]  # the API tests' "sandbox network" address, free while this runs


def replica(root: Path, name: str, store_url: str, keys_from: Path | None, decoy: int) -> Replica:
    """A gateway on the shared store with an egress proxy to the decoy. The egress recheck
    stays at its default (5 s): a revoked session's tunnels must end at once because the
    store says so, not because a recheck came."""
    proxy_port = free_port()
    g = Replica(
        root,
        name,
        store_url,
        keys_from,
        max_requests=CAP,
        config_extra=f"""[egress]
connect_ports = [{decoy}]
[[egress.static]]
name = "{DECOY}"
addresses = ["{LOOP}"]
allow_private = true
[sandbox]
proxy_port = {proxy_port}
""",
        proxy_port=proxy_port,
    )
    return g


@dataclass
class Fleet:
    redis: RedisServer
    decoy_ca: Path
    decoy: Decoy | None = None
    gateways: list[Replica] = field(default_factory=list)

    def liveness(self, g: Replica) -> Liveness:
        """What test_session_liveness.Tunnel needs to open a tunnel through ``g``."""
        assert self.decoy is not None
        return Liveness(g, self.decoy, self.decoy, g.proxy_port, self.decoy_ca)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("replicas")
    tls = make_test_ca_and_server_cert(root / "decoy-tls", [DECOY], [LOOP])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.server_cert, tls.server_key)
    f = Fleet(RedisServer(root / "redis"), tls.ca_cert)
    loop = LoopThread()
    f.decoy = loop.run(Decoy(LOOP, "decoy", server).start())
    f.redis.start()
    try:
        for i in range(3):
            keys = f.gateways[0].state_dir if f.gateways else None
            g = replica(root / f"gw{i}", f"host-{'abc'[i]}", f.redis.url, keys, f.decoy.port)
            g.make_repo("acme", "tiny")
            g.start()
            g.control.add_listener(LISTEN)
            f.gateways.append(g)
        yield f
    finally:
        loop.run(f.decoy.stop())
        loop.close()
        for g in f.gateways:
            g.stop()
        f.redis.kill()


def test_a_session_is_served_by_every_gateway_and_listed_by_each(fleet: Fleet) -> None:
    a, b, c = fleet.gateways
    bundle = a.session("github.com/acme/tiny:read")
    for g in (a, b, c):
        cl = Client(g, bundle)
        assert cl.get() == 200
        cl.close()
        listed = {s["id"]: s for s in g.control.list_sessions()}
        assert listed[bundle.session_id]["served_by"].startswith("host-a/")


def test_session_list_on_any_gateway_shows_every_session_and_its_host(fleet: Fleet) -> None:
    made = {g.name: g.session("github.com/acme/tiny:read").session_id for g in fleet.gateways}
    for g in fleet.gateways:
        r = subprocess.run(
            [sys.executable, "-m", "airlock.cli", "session", "list", "--config", str(g.config)],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "SERVED BY" in r.stdout.splitlines()[0]
        for host, sid in made.items():
            row = next(line for line in r.stdout.splitlines() if line.startswith(sid[:12]))
            assert f" {host}/" in row, row


def test_300_sessions_each_revoked_through_another_gateway_are_refused_at_once(
    fleet: Fleet,
) -> None:
    gws = fleet.gateways
    delays: list[float] = []
    for i in range(300):
        serving, revoking = gws[i % 3], gws[(i + 1) % 3]
        bundle = serving.session("github.com/acme/tiny:read")
        cl = Client(serving, bundle)
        try:
            assert cl.get() == 200
            revoking.control.revoke(bundle.session_id)  # returned: acknowledged
            t0 = time.monotonic()
            # The same kept-alive connection, at once and again until refused.
            while (status := cl.get()) == 200:
                assert time.monotonic() - t0 < 2.0, f"session {i} still served after 2 s"
            delays.append(time.monotonic() - t0)
            assert status == 403
        finally:
            cl.close()
    delays.sort()
    p50, worst = statistics.median(delays), delays[-1]
    print(
        f"\nrevocation delay over 300 sessions: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms"
    )
    assert worst < 1.0


def test_a_session_budget_is_counted_once_across_gateways(fleet: Fleet) -> None:
    gws = fleet.gateways
    bundle = gws[0].session("github.com/acme/tiny:read")
    clients = [Client(g, bundle) for g in gws]
    try:
        statuses = [clients[i % 3].get() for i in range(CAP + 15)]
    finally:
        for cl in clients:
            cl.close()
    assert statuses.count(200) == CAP
    assert statuses[:CAP] == [200] * CAP and set(statuses[CAP:]) == {429}


def test_the_store_stopped_mid_load_serves_nothing_and_recovers(fleet: Fleet) -> None:
    gws = fleet.gateways
    bundle = gws[0].session("github.com/acme/tiny:read")
    log: list[tuple[float, int, int]] = []  # (sent at, gateway, status)
    stop = threading.Event()

    def load(i: int) -> None:
        cl = Client(gws[i], bundle)
        try:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = cl.get()
                except (OSError, http.client.HTTPException):
                    cl.close()
                    cl = Client(gws[i], bundle)
                    status = -1
                log.append((sent, i, status))
                time.sleep(0.05)
        finally:
            cl.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        fleet.redis.stop()
        stopped = time.monotonic()
        time.sleep(2.0)
        fleet.redis.start()
        back = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    served_while_down = [e for e in log if stopped <= e[0] < back and e[2] == 200]
    assert served_while_down == []
    refused = {e[2] for e in log if stopped + 1.0 <= e[0] < back}
    assert refused == {503}, refused
    recovery = []
    for i in range(3):
        first = min(e[0] for e in log if e[1] == i and e[0] >= back and e[2] == 200)
        recovery.append(first - back)
    print(f"\nrecovery after Redis answered again: {[round(r * 1000) for r in recovery]} ms")
    assert max(recovery) < 3.0
    # What the gateways said: an audit line, and the health check while it lasted.
    assert any(e.get("event") == "store_unavailable" for e in gws[1].audit())
    assert any(e.get("event") == "store_available" for e in gws[1].audit())


def _sandbox(f: Fleet, g: Replica, source: str) -> dict[str, Any]:
    """A session bound to ``source`` behind LISTEN, created through ``g``."""
    issued, _ = g.issue(allow_hosts=[DECOY], require_activation=True)
    g.control.activate(
        issued["session"]["id"],
        container_id=os.urandom(32).hex(),
        network="test",
        address=source,
        gateway_address=LISTEN,
    )
    return issued


def test_a_tunnel_ends_within_a_second_of_a_revocation_through_another_gateway(
    fleet: Fleet,
) -> None:
    a, b, _ = fleet.gateways
    took = []
    for n in range(5):
        issued = _sandbox(fleet, a, f"127.0.0.{120 + n}")
        t = Tunnel(fleet.liveness(a), issued["proxy_token"], f"127.0.0.{120 + n}", "/hold")
        try:
            b.control.revoke(issued["session"]["id"])
            took.append(t.closed_within(1.0))
        finally:
            t.close()
    print(f"\ntunnel ended after a revocation elsewhere: max {max(took) * 1e3:.0f} ms")


def test_tunnels_end_at_once_when_the_store_is_unreachable(fleet: Fleet) -> None:
    a = fleet.gateways[0]
    issued = _sandbox(fleet, a, "127.0.0.130")
    t = Tunnel(fleet.liveness(a), issued["proxy_token"], "127.0.0.130", "/hold")
    try:
        fleet.redis.stop()
        t.closed_within(1.5)  # the listener's ping fails within 0.75 s
    finally:
        t.close()
        fleet.redis.start()
    deadline = time.monotonic() + 5
    while a.control.health()["status"] != "ok":
        assert time.monotonic() < deadline, "the gateway did not recover"
        time.sleep(0.05)


def test_no_acknowledged_revocation_is_lost_across_a_store_crash(fleet: Fleet) -> None:
    gws = fleet.gateways
    bundles = [gws[i % 3].session("github.com/acme/tiny:read") for i in range(10)]
    for i, b in enumerate(bundles):
        gws[(i + 1) % 3].control.revoke(b.session_id)
    fleet.redis.kill()  # SIGKILL right after the last acknowledgement
    fleet.redis.start()
    deadline = time.monotonic() + 5
    for i, b in enumerate(bundles):
        cl = Client(gws[(i + 2) % 3], b)
        try:
            while (status := cl.get()) == 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert status == 403, (i, status)
        finally:
            cl.close()


def test_an_unreachable_store_is_a_clear_start_up_error(tmp_path: Path) -> None:
    w = World(tmp_path, gateway_extra='store_url = "redis://:pw-s3cret@127.0.0.1:9/0"\n')
    try:
        w.loop.run(w.upstream.start())
        w.write_config()
        r = run_gateway_cli(w.config)
    finally:
        w.loop.run(w.upstream.stop())
        w.loop.close()
    assert r.returncode != 0
    assert "session store (redis://:***@127.0.0.1:9/0) is unreachable" in r.stderr, r.stderr
    assert "pw-s3cret" not in r.stderr  # the password in the URL is never shown
    assert "Traceback" not in r.stderr
    assert not w.socket.exists()


def test_a_global_rate_limit_is_global_across_gateways(tmp_path: Path) -> None:
    """limits.storage_uri on the same Redis: global_requests counts every gateway's."""
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    limit = 40
    limits = (
        f'[limits]\nstorage_uri = "async+redis://127.0.0.1:{srv.port}/1"\n'
        f'global_requests = "{limit}/minute"\n'
    )
    gws: list[World] = []
    try:
        for i in range(2):
            root = tmp_path / f"gw{i}"
            root.mkdir()
            w = World(root, gateway_extra=f'store_url = "{srv.url}"\n', config_extra=limits)
            w.make_repo("acme", "tiny")
            if gws:  # one deployment: the second replica has the first one's keys
                share_keys(gws[0].state_dir, w.state_dir)
            w.start()
            gws.append(w)
        bundles = [gws[0].session("github.com/acme/tiny:read") for _ in range(4)]
        clients = [Client(gws[i % 2], b) for i, b in enumerate(bundles)]
        try:
            statuses = [clients[i % 4].get() for i in range(limit + 20)]
        finally:
            for cl in clients:
                cl.close()
        assert statuses.count(200) == limit, statuses
        assert set(statuses[limit:]) == {429}
    finally:
        for w in gws:
            w.stop()
        srv.kill()


def test_parallel_creates_through_every_gateway_stay_within_the_pull_request_limit(
    tmp_path: Path,
) -> None:
    """max_pulls = 1 and one create at the same moment through each of three gateways: the
    shared store's hold lets one through. (Each gateway's own lock and count alone would
    let all three: each decides with no pull recorded yet.)"""
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    gws: list[ApiWorld] = []
    ports: list[int] = []
    try:
        for i in range(3):
            root = tmp_path / f"gw{i}"
            root.mkdir()
            ports.append(free_port())
            w = ApiWorld(
                root,
                gateway_extra=f'store_url = "{srv.url}"\ndns_port = {free_port()}\n',
                config_extra=f"[sandbox]\nproxy_port = {ports[-1]}\n",
                api_extra="max_pulls = 1",
            )
            if gws:
                share_keys(gws[0].state_dir, w.state_dir)
            # The same repository and branches at every gateway's upstream.
            api_new_repo(w, "agent/p0", "agent/p1", "agent/p2", name="budget")
            w.start()
            w.control.add_listener(API_LISTEN)
            gws.append(w)
        issued, _ = gws[0].issue(f"{HOST}/{API_OWNER}/budget:write", require_activation=True)
        gws[0].control.activate(
            issued["session"]["id"],
            container_id=os.urandom(32).hex(),
            network="test",
            address="127.0.0.140",
            gateway_address=API_LISTEN,
        )
        sandboxes = [
            ApiSandbox(g, issued, "127.0.0.140", (API_LISTEN, port))
            for g, port in zip(gws, ports, strict=True)
        ]
        tunnels = [sb.tunnel() for sb in sandboxes]
        try:
            bodies = [
                json.dumps({"title": "T", "head": f"agent/p{i}", "base": "main"}).encode()
                for i in range(3)
            ]
            for t, body in zip(tunnels, bodies, strict=True):
                t.send(
                    (
                        f"POST /repos/{API_OWNER}/budget/pulls HTTP/1.1\r\nHost: {API}\r\n"
                        f"User-Agent: a\r\nAuthorization: token {issued['api_token']}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode()
                )  # every head first: each relay now waits for its body
            for t, body in zip(tunnels, bodies, strict=True):
                t.send(body)
            statuses = []
            for t in tunnels:
                resp = t.response()
                statuses.append(resp.status if resp else 0)
        finally:
            for t in tunnels:
                t.close()
        created = sum(len(g.api.pulls(API_OWNER, "budget")) for g in gws)
        assert statuses.count(201) == 1 and created == 1, statuses
        assert sorted(statuses) == [201, 403, 403], statuses
    finally:
        for g in gws:
            g.stop()
        srv.kill()


def test_a_gateway_killed_mid_transfer_loses_no_session_for_the_others(fleet: Fleet) -> None:
    """SIGKILL one gateway while it streams a clone: the clone fails, and every session it
    created (revoked ones included) is served, or refused, by the others as before."""
    a, b, c = fleet.gateways
    if not (a.repos / "acme" / "big.git").exists():
        a.make_repo("acme", "big", files={"blob.bin": os.urandom(48 * 1024 * 1024)})
    bundles = [a.session("github.com/acme/tiny:read", "github.com/acme/big:read") for _ in range(5)]
    revoked = a.session("github.com/acme/tiny:read")
    a.control.revoke(revoked.session_id)
    clone = subprocess.Popen(
        ["git", "clone", "-q", f"https://{HOST}/acme/big", str(a.root / "big-clone")],
        env=git_env(a.home, GIT_CONFIG_GLOBAL=str(bundles[0].gitconfig), GIT_TERMINAL_PROMPT="0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(
            e.get("session") == bundles[0].session_id and e.get("service") == "git-upload-pack"
            for e in a.audit()
        ):  # the clone's first request reached the gateway: the transfer is under way
            assert time.monotonic() < deadline and clone.poll() is None, "the clone never started"
            time.sleep(0.02)
        assert a.proc is not None
        a.proc.kill()  # no shutdown, no last flush
        a.proc.wait(10)
        a.proc = None
        assert clone.wait(60) != 0  # the transfer broke with its gateway
    finally:
        if clone.poll() is None:
            clone.kill()
    try:
        for g in (b, c):
            listed = {s["id"]: s for s in g.control.list_sessions()}
            for bundle in bundles:
                assert listed[bundle.session_id]["state"] == "active"
                cl = Client(g, bundle)
                assert cl.get() == 200
                cl.close()
            cl = Client(g, revoked)
            assert cl.get() == 403 and listed[revoked.session_id]["state"] == "revoked"
            cl.close()
    finally:
        a.start_gateway()  # the fleet as it was, for whatever runs after


def test_a_ca_rotation_is_refused_on_a_shared_store_and_changes_nothing(fleet: Fleet) -> None:
    a = fleet.gateways[0]
    bundle = a.session("github.com/acme/tiny:read")
    before = a.control.show(bundle.session_id)
    with pytest.raises(ControlError, match="not supported yet"):
        a.control.rotation_prepare(5.0)
    assert a.control.rotation()["phase"] == "idle"
    after = a.control.show(bundle.session_id)
    assert after["cert_fingerprint"] == before["cert_fingerprint"]
