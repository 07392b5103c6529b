"""Sandbox lifecycle on the real engine: nothing outlives a sandbox, however it ends or fails.

Proved here:
* 20 sandboxes, ended every way there is (``airlock run`` to completion, ``airlock stop``,
  SIGKILL then ``airlock supervise``'s reconcile, SIGKILL then teardown), several running at
  once, leave no container, network, bridge, nftables chain, bundle directory, gateway
  listener or live session;
* a failure injected after each step of a start (network, firewall, listener, session,
  bundle, container, start+activate, gate), or a Ctrl-C in the middle of one, undoes every
  step before it -- and the sandbox's command never runs;
* real failures are refused with a message that says what to do, and leave nothing: a missing
  image, no gateway, an exhausted pool, a pool overlapping the host's own networks (or not
  private), no Docker daemon;
* a sandbox's session serves nothing until the host has verified the container and activated
  it (``not_activated``), and serves it once activated;
* ``airlock supervise``: a killed sandbox's session is revoked and its resources removed (by
  reconcile, and by the Docker events watcher); a running sandbox whose chains were deleted
  is cut off (fail closed) and gets them back, as does one whose chains were tampered with.
And measured (printed, and appended to $AIRLOCK_MEASUREMENTS when set; not asserted): the
start overhead of a sandbox against a plain ``docker run --rm``.

A teardown whose network has an endpoint Docker keeps (a container attached from outside)
still revokes the session, removes the bundle with the session key, and the network.

``Supervisor.reconcile`` acts on every airlock sandbox of the machine; other test runs may
share it, so the reconcile calls here see only this module's sandboxes (``all_sandbox_ids``
filtered to them). What reconcile does with each is unchanged.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
import types
import uuid
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

import airlock.host.sandbox as sandbox_module
from airlock.host import firewall
from airlock.host.hostnet import networks_from_addr_json, networks_from_resolv_conf
from airlock.host.sandbox import (
    LABEL,
    Sandbox,
    SandboxError,
    SandboxManager,
    run_foreground,
)
from airlock.host.supervisor import Supervisor
from tests.e2e.conftest import (
    E2E,
    GIT_TIMEOUT,
    Sandboxes,
    copy_bundle,
    nft_bypass_sandbox,
    wait_until,
)
from tests.world import HOST, World

pytestmark = E2E
POOL = "10.216.48.0/20"
REPO = "acme/widgets"
GRANTS = [f"{HOST}/{REPO}:write"]
LS_REMOTE = f"timeout {GIT_TIMEOUT} git ls-remote https://github.com/{REPO}"


@pytest.fixture(scope="module", autouse=True)
def repo(sbx_world: World) -> Path:
    return sbx_world.make_repo(*REPO.split("/"))


def supervisor_for(sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    """A Supervisor that only acts on this module's sandboxes (see the module docstring):
    reconcile sees only them, and the events watcher tears down only them."""
    manager = sandboxes.new_manager()
    all_ids, teardown = manager.all_sandbox_ids, manager.teardown

    def mine_only(sandbox_id: str, reason: str = "sandbox stopped") -> None:
        if sandbox_id in sandboxes.ids:
            teardown(sandbox_id, reason)

    monkeypatch.setattr(manager, "all_sandbox_ids", lambda: all_ids() & set(sandboxes.ids))
    monkeypatch.setattr(manager, "teardown", mine_only)
    return Supervisor(manager, say=lambda m: print(f"[supervise] {m}"))


def assert_nothing_left(sandboxes: Sandboxes, ids: list[str]) -> None:
    left = {sid: sandboxes.leftovers(sid) for sid in ids}
    assert {sid: what for sid, what in left.items() if what} == {}
    assert not (firewall.list_sandbox_rule_names() & set(ids))
    assert sandboxes.world.control.listeners() == []
    for n in sandboxes.api.networks(filters={"label": [LABEL]}):
        assert n["Labels"][LABEL] not in ids, n["Name"]


def session_state(world: World, session_id: str | None) -> str:
    return str(world.control.show(str(session_id))["state"])


def kill(sandboxes: Sandboxes, sb: Sandbox) -> None:
    sandboxes.api.kill(sb.container_id, signal="KILL")
    sandboxes.api.wait(sb.container_id, timeout=30)


@pytest.fixture
def known_sid(monkeypatch: pytest.MonkeyPatch, sandboxes: Sandboxes) -> str:
    """The id the next sandbox start will use, so a failed start can be checked for leftovers."""
    sid = uuid.uuid4().hex[:10]
    monkeypatch.setattr(sandbox_module, "secrets", types.SimpleNamespace(token_hex=lambda _n: sid))
    sandboxes.ids.append(sid)  # cleaned up at the end of the module, whatever happens
    return sid


# --- many sandboxes, every way of ending -----------------------------------------------------


def test_twenty_sandboxes_ended_every_way_leave_nothing(
    sandboxes: Sandboxes, sbx_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = sandboxes.manager

    def sandbox_ids_with_sessions() -> set[str]:
        return {
            s["labels"]["sandbox"]
            for s in sbx_world.control.list_sessions()
            if s.get("labels", {}).get("sandbox")
        }

    # 5 foreground runs to completion, as `airlock run` does (it tears down on exit).
    before = sandbox_ids_with_sessions()
    for _ in range(5):
        assert run_foreground(m, sandboxes.spec(["true"], GRANTS)) == 0
    foreground_ids = sorted(sandbox_ids_with_sessions() - before)
    assert len(foreground_ids) == 5
    # 15 detached, all running at the same time, then ended three different ways.
    running = [sandboxes.start("sleep 300", GRANTS) for _ in range(15)]
    for sb in running:
        assert session_state(sbx_world, sb.session_id) == "active"
    stopped, killed_reconciled, killed_torn_down = running[:5], running[5:10], running[10:]
    for sb in stopped:
        m.stop(sb.name, timeout=1)  # `airlock stop`
    for sb in killed_reconciled + killed_torn_down:
        kill(sandboxes, sb)  # docker kill --signal KILL
    for sb in killed_torn_down:
        m.teardown(sb.id, "killed")
    for sb in killed_reconciled:  # nobody has cleaned these up yet
        assert session_state(sbx_world, sb.session_id) == "active"
    counts = supervisor_for(sandboxes, monkeypatch).reconcile()
    assert counts["removed"] >= len(killed_reconciled), counts
    for sb in running:
        assert session_state(sbx_world, sb.session_id) == "revoked", sb
    assert_nothing_left(sandboxes, [sb.id for sb in running] + foreground_ids)


# --- a failure at each step of a start ---------------------------------------------------------

STEPS = [
    "_create_network",
    "_apply_firewall",
    "_listen",
    "_create_session",
    "_write_bundle",
    "_create_container",
    "_start_and_activate",
    "open_gate",
]


def _traced_spec(sandboxes: Sandboxes, trace_dir: Path, name: str) -> Any:
    """A sandbox whose command leaves a file on the host if (and only if) it runs."""
    os.chmod(trace_dir, 0o777)
    return sandboxes.spec(f"echo ran > /trace/{name}", GRANTS, volumes=[f"{trace_dir}:/trace"])


def test_the_traced_command_leaves_its_trace_when_nothing_fails(
    sandboxes: Sandboxes, tmp_path: Path
) -> None:
    # Control for the test below: an absent trace there means the command did not run.
    assert run_foreground(sandboxes.manager, _traced_spec(sandboxes, tmp_path, "x")) == 0
    assert (tmp_path / "x").read_text() == "ran\n"


# Every step fails with an error; a Ctrl-C (KeyboardInterrupt) is tried at a few of them.
FAILURES = [pytest.param(step, False, id=f"{step}-error") for step in STEPS] + [
    pytest.param(step, True, id=f"{step}-ctrl-c")
    for step in ("_listen", "_create_container", "_start_and_activate")
]


@pytest.mark.parametrize(("step", "interrupt"), FAILURES)
def test_a_failure_after_any_start_step_leaves_nothing(
    step: str,
    interrupt: bool,
    sandboxes: Sandboxes,
    sbx_world: World,
    known_sid: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    original: Callable[..., Any] = getattr(SandboxManager, step)
    seen: dict[str, Any] = {}
    # Once the gate is open the command runs: a failure there is injected before it opens.
    before = step == "open_gate"

    def fail_after(self: SandboxManager, *args: Any, **kw: Any) -> Any:
        if isinstance(args[0], Sandbox):
            seen["sandbox"] = args[0]
        if not before:
            original(self, *args, **kw)  # the step did its work; now fail
        if interrupt:
            raise KeyboardInterrupt
        raise SandboxError(f"injected failure at {step}")

    monkeypatch.setattr(SandboxManager, step, fail_after)
    with pytest.raises(KeyboardInterrupt if interrupt else SandboxError):
        sandboxes.manager.start(_traced_spec(sandboxes, tmp_path, "trace"))
    assert_nothing_left(sandboxes, [known_sid])
    assert not (tmp_path / "trace").exists(), "the sandbox command ran although the start failed"
    sb = seen.get("sandbox")
    if sb is not None and sb.session_id is not None:
        assert session_state(sbx_world, sb.session_id) == "revoked"


# --- real failures -----------------------------------------------------------------------------


def test_missing_image_is_refused_clearly(sandboxes: Sandboxes, known_sid: str) -> None:
    spec = sandboxes.spec(["true"], GRANTS)
    spec.image = "airlock-test/no-such-image:never"
    with pytest.raises(SandboxError, match=r"not found locally; airlock never pulls"):
        sandboxes.manager.start(spec)
    assert_nothing_left(sandboxes, [known_sid])


def test_no_gateway_is_refused_clearly(
    sandboxes: Sandboxes, known_sid: str, tmp_path: Path
) -> None:
    cfg = sandboxes.manager.config
    missing = tmp_path / "no-gateway" / "control.sock"
    cfg = cfg.model_copy(
        update={"gateway": cfg.gateway.model_copy(update={"control_socket": missing})}
    )
    manager = SandboxManager(cfg, client=sandboxes.client)
    with pytest.raises(SandboxError, match=r"gateway is not available: no gateway control socket"):
        manager.start(sandboxes.spec(["true"], GRANTS))
    assert_nothing_left(sandboxes, [known_sid])


def test_an_exhausted_pool_is_refused_clearly(
    sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = sandboxes.manager.config
    tiny = str(list(IPv4Network(POOL).subnets(new_prefix=28))[-1])  # room for one sandbox
    cfg = cfg.model_copy(
        update={"sandbox": cfg.sandbox.model_copy(update={"pool": tiny, "prefixlen": 28})}
    )
    manager = SandboxManager(cfg, client=sandboxes.client)
    first = manager.start(sandboxes.spec("sleep 300", GRANTS))
    sandboxes.ids.append(first.id)
    try:
        assert first.subnet == IPv4Network(tiny)
        sid = uuid.uuid4().hex[:10]
        monkeypatch.setattr(
            sandbox_module, "secrets", types.SimpleNamespace(token_hex=lambda _n: sid)
        )
        sandboxes.ids.append(sid)
        with pytest.raises(SandboxError, match=rf"sandbox.pool: pool exhausted: .*{tiny}"):
            manager.start(sandboxes.spec("sleep 300", GRANTS))
        assert sandboxes.leftovers(sid) == []
        assert session_state(sandboxes.world, first.session_id) == "active"  # unharmed
    finally:
        manager.teardown(first.id)
    assert_nothing_left(sandboxes, [first.id, sid])


def _pools_overlapping_the_host() -> list[IPv4Network]:
    """Private networks of the host's lasting interfaces (not test or sandbox bridges, which
    concurrent runs create and remove), and a /24 around each private resolver."""
    pools: set[IPv4Network] = set()
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True)
    links = [x for x in json.loads(out.stdout or "[]") if not x["ifname"].startswith(_NOT_HOST)]
    for net in networks_from_addr_json(links):
        if net.is_private and not (net.is_loopback or net.is_link_local) and net.prefixlen <= 28:
            pools.add(net)
    for resolver in networks_from_resolv_conf(Path("/etc/resolv.conf").read_text()):
        if resolver.is_private and not resolver.is_loopback:
            pools.add(IPv4Network(f"{resolver.network_address}/24", strict=False))
    return sorted(pools)


_NOT_HOST = ("lo", "al", "br-", "veth")


def test_a_pool_overlapping_the_host_is_refused(sandboxes: Sandboxes, known_sid: str) -> None:
    pools = _pools_overlapping_the_host()
    if not pools:
        pytest.skip("the host has no private network to overlap")
    for pool, message in [
        *((p, r"overlaps network\(s\) in use on this host") for p in pools),
        # Shared (CGNAT) space: not private; refused before it is compared with anything.
        (IPv4Network("100.64.0.0/24"), r"not private address space"),
    ]:
        cfg = sandboxes.manager.config
        cfg = cfg.model_copy(
            update={"sandbox": cfg.sandbox.model_copy(update={"pool": str(pool), "prefixlen": 28})}
        )
        manager = SandboxManager(cfg, client=sandboxes.client)
        with pytest.raises(SandboxError, match=rf"sandbox.pool: pool {pool} .*{message}"):
            manager.start(sandboxes.spec(["true"], GRANTS))
        assert_nothing_left(sandboxes, [known_sid])


def test_no_docker_daemon_is_refused_clearly(
    sandboxes: Sandboxes, known_sid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/airlock-test.sock")
    manager = SandboxManager(sandboxes.manager.config)  # no client: it connects itself
    with pytest.raises(SandboxError, match=r"Docker is not running: no socket at /nonexistent/"):
        manager.start(sandboxes.spec(["true"], GRANTS))
    monkeypatch.delenv("DOCKER_HOST")
    assert_nothing_left(sandboxes, [known_sid])


# --- activation ---------------------------------------------------------------------------------


def test_a_session_serves_nothing_until_activated(
    sandboxes: Sandboxes, sbx_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the host: a session created to wait for activation, used from where it will be bound.
    bundle = sbx_world.session(f"{HOST}/{REPO}:read", require_activation=True)
    mark = len(sbx_world.audit())
    r = sbx_world.git(bundle, "ls-remote", f"https://{HOST}/{REPO}")
    assert r.returncode != 0 and "error: 403" in r.stderr, r
    assert wait_until(lambda: _reasons(sbx_world, mark, bundle.session_id) == {"not_activated"}, 5)
    sbx_world.control.activate(
        bundle.session_id,
        container_id="0" * 64,
        network="host-test",
        address="127.0.0.1",
        gateway_address="127.0.0.1",
    )
    r = sbx_world.git(bundle, "ls-remote", f"https://{HOST}/{REPO}")
    assert r.returncode == 0 and "refs/heads/main" in r.stdout, r  # control

    # In a sandbox: the container started and was verified, but the host did not activate.
    activations: list[dict[str, Any]] = []

    def record(session_id: str, **binding: Any) -> dict[str, Any]:
        activations.append({"sid": session_id, **binding})
        return {}

    monkeypatch.setattr(sandboxes.manager.control, "activate", record)
    sb = sandboxes.start("sleep 300", GRANTS, open_gate=False)
    monkeypatch.undo()
    try:
        assert session_state(sbx_world, sb.session_id) == "pending"
        mark = len(sbx_world.audit())
        code, out = sandboxes.exec(sb, LS_REMOTE + " 2>&1")
        assert code != 0 and "error: 403" in out, out
        assert wait_until(lambda: _reasons(sbx_world, mark, sb.session_id) == {"not_activated"}, 5)
        # Activated with what the host verified: now it serves.
        (binding,) = activations
        sid = binding.pop("sid")
        sbx_world.control.activate(sid, **binding)
        code, out = sandboxes.exec(sb, LS_REMOTE)
        assert code == 0 and "refs/heads/main" in out, out
    finally:
        sandboxes.teardown(sb)


def _reasons(world: World, mark: int, session_id: str | None) -> set[str]:
    return {
        str(e.get("reason"))
        for e in world.audit()[mark:]
        if e.get("event") == "git_request" and e.get("session") == session_id
    }


# --- supervise ----------------------------------------------------------------------------------


def test_reconcile_revokes_a_killed_sandbox(
    sandboxes: Sandboxes, sbx_world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb = sandboxes.start("sleep 300", GRANTS)
    assert sb.bundle_dir is not None
    stolen = copy_bundle(sb.bundle_dir, tmp_path / "copy", str(tmp_path / "copy"), uid=0)
    code, out = sandboxes.exec(sb, LS_REMOTE)
    assert code == 0, out
    kill(sandboxes, sb)
    # Killed, and nobody has cleaned up yet: the session is still there.
    assert session_state(sbx_world, sb.session_id) == "active"
    counts = supervisor_for(sandboxes, monkeypatch).reconcile()
    assert counts["removed"] >= 1, counts
    show = sbx_world.control.show(str(sb.session_id))
    assert show["state"] == "revoked" and "supervisor" in str(show["revoked_reason"]), show
    assert_nothing_left(sandboxes, [sb.id])
    # And a copy of its bundle is worthless now, also at the gateway's loopback listener.
    r = sbx_world.git(
        None,
        "-c",
        f"http.curloptResolve=airlock.internal:{sbx_world.port}:127.0.0.1",
        "ls-remote",
        f"https://{HOST}/{REPO}",
        env={"GIT_CONFIG_GLOBAL": str(stolen)},
    )
    assert r.returncode != 0 and "refs/heads" not in r.stdout, r


def test_the_events_watcher_revokes_a_killed_sandbox_at_once(
    sandboxes: Sandboxes, sbx_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = sandboxes.start("sleep 300", GRANTS)
    supervisor = supervisor_for(sandboxes, monkeypatch)
    runner = threading.Thread(target=supervisor.run, args=(3600.0,), daemon=True)
    runner.start()
    try:
        time.sleep(1.5)  # the first reconcile is done and the watcher is listening
        assert session_state(sbx_world, sb.session_id) == "active"
        sandboxes.api.kill(sb.container_id, signal="KILL")
        assert wait_until(lambda: session_state(sbx_world, sb.session_id) == "revoked", 10)
        assert wait_until(lambda: sandboxes.leftovers(sb.id) == [], 10), sandboxes.leftovers(sb.id)
    finally:
        supervisor.stop()
        runner.join(5)


def test_reconcile_restores_deleted_or_tampered_rules(
    sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = sandboxes.start("sleep 300", GRANTS)
    supervisor = supervisor_for(sandboxes, monkeypatch)
    rules = sandboxes.manager.rules_for(sb)
    try:
        code, out = sandboxes.exec(sb, LS_REMOTE)
        assert code == 0, out
        firewall.remove_rules(sb.id)
        assert not firewall.verify_rules(rules)
        # Fail closed: without its chains the sandbox reaches not even its gateway.
        code, out = sandboxes.exec(
            sb, "timeout 5 " + LS_REMOTE.removeprefix(f"timeout {GIT_TIMEOUT} ")
        )
        assert code != 0 and "refs/heads" not in out, out
        counts = supervisor.reconcile()
        assert counts["restored"] == 1, counts
        assert firewall.verify_rules(rules)
        code, out = sandboxes.exec(sb, LS_REMOTE)
        assert code == 0 and "refs/heads/main" in out, out

        nft_bypass_sandbox(sb.id)  # tampered: an accept ahead of the sandbox's own rules
        assert not firewall.verify_rules(rules)
        counts = supervisor.reconcile()
        assert counts["restored"] == 1, counts
        assert firewall.verify_rules(rules)
    finally:
        sandboxes.teardown(sb)
    assert_nothing_left(sandboxes, [sb.id])


def test_teardown_removes_the_bundle_even_when_the_network_is_stuck(
    sandboxes: Sandboxes, sbx_world: World, sandbox_image: str
) -> None:
    sb = sandboxes.start("sleep 300", GRANTS)
    api = sandboxes.api
    # Something outside airlock keeps an endpoint on the network (here: a plain container).
    other = api.create_container(
        sandbox_image,
        command=["sleep", "300"],
        host_config=api.create_host_config(network_mode=sb.network),
        labels={"org.airlock.test": "1"},
    )["Id"]
    try:
        api.start(other)
        try:
            sandboxes.manager.teardown(sb.id, "stuck network")
        except Exception as exc:  # what matters is what is left behind
            print(f"teardown raised {type(exc).__name__}: {exc}")
        assert session_state(sbx_world, sb.session_id) == "revoked"
        assert sb.id not in firewall.list_sandbox_rule_names()
        assert sb.bundle_dir is not None
        assert not sb.bundle_dir.exists(), "the session key stayed on the host"
    finally:
        api.remove_container(other, force=True)
        sandboxes.teardown(sb)
    assert_nothing_left(sandboxes, [sb.id])


# --- measurement --------------------------------------------------------------------------------


def test_measure_start_overhead(sandboxes: Sandboxes, sandbox_image: str) -> None:
    runs = 10
    m = sandboxes.manager

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def airlock_run() -> None:
        assert run_foreground(m, sandboxes.spec(["true"], GRANTS)) == 0

    def docker_run() -> None:
        subprocess.run(["docker", "run", "--rm", sandbox_image, "true"], check=True)

    starts: list[float] = []

    def start_only() -> None:
        t0 = time.perf_counter()
        sb = m.start(sandboxes.spec(["true"], GRANTS))
        starts.append(time.perf_counter() - t0)
        m.wait(sb)
        m.teardown(sb.id)

    airlock_run()  # warm caches once, unmeasured
    docker_run()
    airlock = [timed(airlock_run) for _ in range(runs)]
    plain = [timed(docker_run) for _ in range(runs)]
    for _ in range(runs):
        start_only()
    lines = [
        f"sandbox start overhead ({runs} runs each, median seconds, {time.strftime('%Y-%m-%d')}):",
        f"  airlock run (start to exit of `true`, torn down): {statistics.median(airlock):.3f}",
        f"  docker run --rm IMAGE true:                      {statistics.median(plain):.3f}",
        f"  SandboxManager.start alone (to the gate opening): {statistics.median(starts):.3f}",
        f"  overhead of airlock run over docker run:          "
        f"{statistics.median(airlock) - statistics.median(plain):+.3f}",
    ]
    print("\n".join(lines))
    target = os.environ.get("AIRLOCK_MEASUREMENTS")
    if target:
        with open(target, "a") as f:
            f.write("\n".join(lines) + "\n")
    # Sanity, not a timing assertion: the runs really happened and cleaned up.
    assert len(airlock) == len(plain) == len(starts) == runs
    assert sandboxes.world.control.listeners() == []
