"""The sandbox as a daily tool, through the real CLI: `airlock run` beside a running
`airlock supervise`, the Docker-like lifecycle (exit keeps the container until `rm`), `ps`,
`logs`, and two gateways with their own supervisors on one host that never touch each other's
sandboxes.

Every command here is the real `python -m airlock.cli ...` against a real gateway process
and the real Docker engine and nftables; only loopback and this module's own networks are
contacted.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from airlock import agentproto, fastpath
from airlock.config import load_config
from airlock.host import firewall
from airlock.host.sandbox import LABEL, LABEL_OWNER, SandboxError, SandboxManager
from tests.e2e.conftest import (
    E2E,
    GIT_TIMEOUT,
    TEST_LABEL,
    Sandboxes,
    remove_everything_of,
    sandbox_config,
    wait_until,
)
from tests.world import HOST, World

pytestmark = E2E
POOL = "10.216.128.0/20"
OTHER_POOL = "10.216.144.0/20"  # the second gateway's sandboxes
REPO = "acme/daily"
GRANTS = [f"{HOST}/{REPO}:write"]
LS_REMOTE = f"timeout {GIT_TIMEOUT} git ls-remote https://github.com/{REPO}"
WHOLE = ("containers", "networks", "rules")  # what own_state lists of a sandbox's own


@pytest.fixture(scope="module", autouse=True)
def repo(sbx_world: World) -> Path:
    return sbx_world.make_repo(*REPO.split("/"))


def cli(
    config: Path, *args: str, timeout: float = 120, module: str = "airlock.cli"
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it; ``module="airlock.fastpath"`` is the `airlock` entry point
    (which sends `run` to the run agent when one serves this config)."""
    command, rest = args[0], args[1:]
    return subprocess.run(
        [sys.executable, "-m", module, command, "--config", str(config), *rest],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def supervising(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`airlock supervise` as an operator runs it, beside the test, for the block's length."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airlock.cli",
                "supervise",
                "--config",
                str(config),
                "--interval",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(1.5)  # its first reconcile is done and its events watcher listens
        assert proc.poll() is None, log.read_text()
        # ... and the run agent it started listens.
        assert wait_until(lambda: agentproto.socket_path(config).exists(), 15), log.read_text()
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def own_state(manager: SandboxManager) -> dict[str, Any]:
    """What one gateway's sandboxes are on this host: containers, networks, rules, sessions."""
    api = manager.client.api
    flt = {"label": [f"{LABEL_OWNER}={manager.gateway_id}"]}
    containers = sorted((c["Id"], c["State"]) for c in api.containers(all=True, filters=flt))
    # Spare networks (made ahead of need by supervise, claimed by starts) are not sandboxes.
    spares = manager.spare_ids()
    networks = sorted(
        n["Id"] for n in api.networks(filters=flt) if n["Labels"][LABEL] not in spares
    )
    rules = {}
    proc = subprocess.run(
        ["nft", "-j", "list", "table", "inet", firewall.TABLE], capture_output=True, text=True
    )
    items = json.loads(proc.stdout)["nftables"] if proc.returncode == 0 else []
    for sid in firewall.list_sandbox_rule_names(owner=manager.gateway_id) - spares:
        rules[sid] = sorted(
            json.dumps(i["rule"]["expr"], sort_keys=True)
            for i in items
            if "rule" in i and f"airlock:{sid} " in (i["rule"].get("comment") or "")
        )
    sessions = sorted(
        (s["id"], s["state"], s["last_used"]) for s in manager.control.list_sessions()
    )
    return {"containers": containers, "networks": networks, "rules": rules, "sessions": sessions}


# --- exit codes pass through, with supervise running ---------------------------------------


def test_fifty_foreground_runs_beside_supervise_pass_every_exit_code(
    sbx_world: World, sandboxes: Sandboxes, tmp_path: Path
) -> None:
    codes = [i * 37 % 256 for i in range(50)]  # 0, 37, 74, ... every one different
    got = []
    manager = sandboxes.new_manager()
    with supervising(sbx_world.config, tmp_path / "supervise.log"):
        # Half through the full CLI, half through the `airlock` entry point and the agent.
        for i, code in enumerate(codes):
            r = cli(
                sbx_world.config, "run", "--rm", *[f"--grant={g}" for g in GRANTS],
                sandboxes.image, "sh", "-c", f"echo run-{code}; echo err-{code} >&2; exit {code}",
                module="airlock.fastpath" if i % 2 else "airlock.cli",
            )  # fmt: skip
            got.append(r.returncode)
            assert f"run-{code}" in r.stdout and f"err-{code}" in r.stderr, r
            assert "Traceback" not in r.stderr, r.stderr
        # The agent's children remove --rm sandboxes after telling the exit code.
        assert wait_until(lambda: not any(own_state(manager)[k] for k in WHOLE), 30)
        # The supervisor keeps its spare networks ready (it refills them every second).
        want = load_config(sbx_world.config).sandbox.spare_networks
        assert wait_until(lambda: len(manager.spare_ids()) == want, 15), manager.spare_ids()
    assert got == codes
    left = own_state(manager)
    assert left["containers"] == [] and left["networks"] == [] and left["rules"] == {}, left
    assert [s for s in left["sessions"] if s[1] != "revoked"] == []
    assert manager.bundle_root.is_dir() and list(manager.bundle_root.iterdir()) == []
    assert sbx_world.control.listeners() == []


def test_a_start_claims_a_spare_network_and_its_rules_are_checked(
    sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = sandboxes.new_manager()
    manager.prepare_spares(1)
    spare = sorted(manager.spare_ids())[0]
    # Whoever flushed the spare's rules meanwhile: the start must notice before activation.
    firewall.remove_rules(spare)
    monkeypatch.setattr(manager, "spare_ids", lambda: {spare})
    with pytest.raises(SandboxError, match="firewall rules are missing"):
        manager.start(sandboxes.spec("true", GRANTS))
    assert sandboxes.leftovers(spare) == []
    monkeypatch.undo()
    before = manager.spare_ids()
    manager.prepare_spares(len(before) + 1)
    (spare,) = manager.spare_ids() - before
    monkeypatch.setattr(manager, "spare_ids", lambda: {spare})
    sb = manager.start(sandboxes.spec("echo on-a-spare", GRANTS))
    sandboxes.ids.append(sb.id)
    assert sb.id == spare and "firewall" not in sb.timings and sb.claimed is not None
    assert not sb.claimed.exists() and not (manager.spare_dir / spare).exists()
    assert sandboxes.wait(sb) == 0 and "on-a-spare" in sandboxes.logs(sb)
    sandboxes.teardown(sb)
    assert sandboxes.leftovers(sb.id) == []


# --- the lifecycle: an exited sandbox stays until rm ----------------------------------------


def test_an_exited_detached_sandbox_keeps_its_logs_and_exit_code_until_rm(
    sbx_world: World, sandboxes: Sandboxes
) -> None:
    # No operator supervise here: `run -d` starts one that leaves when nothing is left.
    name = "daily-exited"
    r = cli(
        sbx_world.config, "run", "-d", "--name", name, *[f"--grant={g}" for g in GRANTS],
        sandboxes.image, "sh", "-c", f"{LS_REMOTE} && echo pushed-nothing; exit 7",
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == name, r
    manager = sandboxes.new_manager()
    sid = manager.sandbox_id_of(name)
    assert sid is not None
    sandboxes.ids.append(sid)
    container = manager.container_of(name)
    assert sandboxes.api.wait(container["Id"], timeout=60)["StatusCode"] == 7
    session = str(container["Labels"]["airlock.session"])
    # Revoked the moment it exited, by the supervisor `run -d` started.
    assert wait_until(lambda: sbx_world.control.show(session)["state"] == "revoked", 10)
    assert wait_until(lambda: not (manager.bundle_root / sid).exists(), 10)

    running = json.loads(cli(sbx_world.config, "ps", "--format", "json").stdout)
    assert name not in [row["name"] for row in running]
    everything = json.loads(cli(sbx_world.config, "ps", "-a", "--format", "json").stdout)
    (row,) = [row for row in everything if row["name"] == name]
    assert row["state"] == "exited" and "(7)" in row["status"], row
    assert row["session"] == session and row["container"] == container["Id"]  # full ids
    logs = cli(sbx_world.config, "logs", name)
    assert logs.returncode == 0 and "refs/heads/main" in logs.stdout, logs
    assert "pushed-nothing" in logs.stdout

    assert cli(sbx_world.config, "rm", name).returncode == 0
    assert sandboxes.leftovers(sid) == []
    gone = cli(sbx_world.config, "logs", name)
    assert gone.returncode != 0 and "no sandbox named" in gone.stderr, gone
    assert "Traceback" not in gone.stderr


def test_rm_refuses_a_running_sandbox_without_force(sbx_world: World, sandboxes: Sandboxes) -> None:
    sb = sandboxes.start("sleep 300", GRANTS, name="daily-running")
    r = cli(sbx_world.config, "rm", sb.name)
    assert r.returncode == 1 and "is running" in r.stderr, r
    assert sandboxes.api.inspect_container(sb.container_id)["State"]["Running"]
    t0 = time.monotonic()
    assert cli(sbx_world.config, "rm", "-f", sb.name).returncode == 0
    print(f"rm -f of a running sandbox: {time.monotonic() - t0:.2f} s")
    assert sandboxes.leftovers(sb.id) == []


def test_stop_keeps_the_container_and_revokes_at_once(
    sbx_world: World, sandboxes: Sandboxes
) -> None:
    sb = sandboxes.start("sleep 300", GRANTS, name="daily-stop", remove=False)
    t0 = time.monotonic()
    r = cli(sbx_world.config, "stop", sb.name)
    took = time.monotonic() - t0
    print(f"airlock stop of `sleep 300` (PID 1 without init would ignore SIGTERM): {took:.2f} s")
    assert r.returncode == 0, r
    assert sbx_world.control.show(str(sb.session_id))["state"] == "revoked"
    info = sandboxes.api.inspect_container(sb.container_id)
    assert info["State"]["Status"] == "exited"
    assert cli(sbx_world.config, "rm", sb.name).returncode == 0
    assert sandboxes.leftovers(sb.id) == []


# --- two gateways on one host ------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A second gateway with its own config, state, socket and pool, on the same host and the
    same bundle directory (so only ownership keeps the two apart)."""
    w = World(tmp_path_factory.mktemp("other-world"), config_extra=sandbox_config(OTHER_POOL))
    w.start()
    w.make_repo(*REPO.split("/"))
    yield w
    remove_everything_of(w)
    w.stop()


def test_two_gateways_and_two_supervisors_never_touch_each_other(
    sbx_world: World,
    other_world: World,
    sandboxes: Sandboxes,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    mine = sandboxes.new_manager()
    other = Sandboxes(other_world, docker_client, sandboxes.image)
    theirs = other.manager
    assert mine.gateway_id != theirs.gateway_id
    a = sandboxes.start("sleep 300", GRANTS, name="daily-gw-a")
    b = other.start("sleep 300", GRANTS, name="daily-gw-b")
    try:
        for s, sb in ((sandboxes, a), (other, b)):
            code, out = s.exec(sb, LS_REMOTE)
            assert code == 0 and "refs/heads/main" in out, out
        before = (own_state(mine), own_state(theirs))
        assert before[0]["containers"] and before[1]["containers"]
        with (
            supervising(sbx_world.config, tmp_path / "sup-a.log"),
            supervising(other_world.config, tmp_path / "sup-b.log"),
        ):
            time.sleep(3)  # several reconciles of each, every 1 s
            during = (own_state(mine), own_state(theirs))
            # Each side's CLI sees only its own sandbox.
            ps_a = json.loads(cli(sbx_world.config, "ps", "--format", "json").stdout)
            ps_b = json.loads(cli(other_world.config, "ps", "--format", "json").stdout)
            assert "daily-gw-b" not in [r["name"] for r in ps_a]
            assert [r["name"] for r in ps_b] == ["daily-gw-b"]
            wrong = cli(sbx_world.config, "stop", "daily-gw-b")
            assert wrong.returncode != 0 and "no sandbox named" in wrong.stderr, wrong
            # One gateway's sandbox dies: only its own supervisor acts.
            sandboxes.api.kill(a.container_id, signal="KILL")
            assert wait_until(lambda: sandboxes.leftovers(a.id) == [], 15), sandboxes.leftovers(
                a.id
            )
            time.sleep(2)
            after_b = own_state(theirs)
        assert during == before, "a supervisor changed something while nothing happened"
        assert after_b == before[1], "B's state changed when A's sandbox died"
        code, out = other.exec(b, LS_REMOTE)
        assert code == 0 and "refs/heads/main" in out, out
        assert other_world.control.show(str(b.session_id))["state"] == "active"
    finally:
        other.cleanup()
        sandboxes.teardown(a)
    assert other.leftovers(b.id) == []


def test_a_sandbox_without_the_owner_label_is_not_ours(
    sandboxes: Sandboxes, sbx_world: World
) -> None:
    """The ownership filter is what keeps supervise off others' sandboxes: a sandbox-labelled
    container of another owner is invisible to every command."""
    sb = sandboxes.start("sleep 300", GRANTS, name="daily-owned")
    try:
        manager = sandboxes.new_manager()
        assert sb.id in manager.all_sandbox_ids()
        stranger = SandboxManager(load_config(sbx_world.config), client=sandboxes.client)
        stranger._gateway_id = "0" * 16
        assert sb.id not in stranger.all_sandbox_ids()
        assert stranger.sandbox_id_of(sb.name) is None
        labels = sandboxes.api.inspect_container(sb.container_id)["Config"]["Labels"]
        assert labels[LABEL] == sb.id and labels[LABEL_OWNER] == manager.gateway_id
    finally:
        sandboxes.teardown(sb)


def test_a_run_without_grants_works_and_reaches_no_repository(
    sbx_world: World, sandboxes: Sandboxes
) -> None:
    """An egress-only sandbox (no --grant): it runs, its session exists with no grants, and
    git gets nothing."""
    r = cli(
        sbx_world.config, "run", "--rm", sandboxes.image, "sh", "-c",
        f'echo "grants=[$AIRLOCK_GRANTS]"; {LS_REMOTE} && echo reached || echo refused',
    )  # fmt: skip
    assert r.returncode == 0, r
    assert "grants=[]" in r.stdout and "refused" in r.stdout and "reached" not in r.stdout, r
    assert "refs/heads" not in r.stdout


def test_ps_and_rm_work_while_the_gateway_is_down(sbx_world: World, sandboxes: Sandboxes) -> None:
    sb = sandboxes.start("sleep 300", GRANTS, name="daily-gateway-down", remove=False)
    sbx_world.stop_gateway()
    try:
        ps = cli(sbx_world.config, "ps", "--format", "json")
        assert ps.returncode == 0, ps
        assert "daily-gateway-down" in [row["name"] for row in json.loads(ps.stdout)]
    finally:
        sbx_world.start_gateway()
    assert cli(sbx_world.config, "rm", "-f", sb.name).returncode == 0
    assert sandboxes.leftovers(sb.id) == []


def test_the_entry_point_runs_through_the_agent_with_the_same_answers(
    sbx_world: World, sandboxes: Sandboxes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with supervising(sbx_world.config, tmp_path / "supervise.log"):
        argv = ["run", "--config", str(sbx_world.config), "--rm", sandboxes.image, "true"]
        # In-process, so we know the agent served it (None would mean the full CLI).
        assert fastpath.run_through_agent(argv) == 0
        refused = cli(
            sbx_world.config, "run", "-p", "80:80", sandboxes.image, "true",
            module="airlock.fastpath",
        )  # fmt: skip
        direct = cli(sbx_world.config, "run", "-p", "80:80", sandboxes.image, "true")
        assert refused.returncode == direct.returncode == 125, (refused, direct)
        assert refused.stderr == direct.stderr and "-p" in refused.stderr
        # Interactive runs take the full way (a terminal is the docker CLI's job).
        assert not fastpath._wants_fast_path(["run", "-it", sandboxes.image, "sh"])
        # Only root may use the agent's socket.
        path = agentproto.socket_path(sbx_world.config)
        st = path.stat()
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        probe = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe
    # The supervisor took its agent with it, and the fast path falls back.
    assert wait_until(lambda: not path.exists(), 10)
    assert fastpath.run_through_agent(argv) is None


@pytest.fixture(scope="module")
def crafted_image(
    docker_client: docker.DockerClient, sandbox_image: str, tmp_path_factory: Any
) -> Iterator[str]:
    """An image whose USER reads as uid 1000 to Python's int() but is uid 0 to Docker."""
    d = tmp_path_factory.mktemp("crafted")
    (d / "Dockerfile").write_text(
        f"FROM {sandbox_image}\nUSER root\n"
        "RUN echo 'agent:x:1_000:1000::/tmp:/bin/sh' >> /etc/passwd\nUSER agent\n"
    )
    tag = "airlock-test/crafted-passwd:1"
    docker_client.images.build(path=str(d), tag=tag, rm=True, labels={TEST_LABEL: "1"})
    yield tag
    docker_client.images.remove(tag, force=True)


def test_an_image_whose_user_is_root_to_docker_is_refused(
    sandboxes: Sandboxes, crafted_image: str, docker_client: docker.DockerClient
) -> None:
    # The attack is real: plain Docker runs this image's USER as root.
    out = docker_client.containers.run(crafted_image, ["id", "-u"], remove=True, network="none")
    assert out.strip() == b"0"
    spec = sandboxes.spec("id", GRANTS, remove=True)
    spec.image = crafted_image
    with pytest.raises(SandboxError, match="malformed"):
        sandboxes.new_manager().start(spec)


def test_the_started_process_is_checked_for_the_uid_the_bundle_was_given_to(
    sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch, known_sid_daily: str
) -> None:
    """Whatever the passwd parser says, the process itself decides: a container whose
    process runs as another uid than the one checked (here: the check is told 4242) is never
    activated."""
    manager = sandboxes.new_manager()
    monkeypatch.setattr(manager, "_container_uid", lambda _cid, _user: 4242)
    with pytest.raises(SandboxError, match=r"runs as uid/gid \[10000"):
        manager.start(sandboxes.spec("id", GRANTS, remove=True))
    assert sandboxes.leftovers(known_sid_daily) == []


@pytest.fixture
def known_sid_daily(monkeypatch: pytest.MonkeyPatch, sandboxes: Sandboxes) -> str:
    import types
    import uuid

    import airlock.host.sandbox as sandbox_module

    sid = uuid.uuid4().hex[:10]
    monkeypatch.setattr(sandbox_module, "secrets", types.SimpleNamespace(token_hex=lambda _n: sid))
    monkeypatch.setattr(sandbox_module.SandboxManager, "_claim_spare", lambda *_a: None)
    sandboxes.ids.append(sid)
    return sid
