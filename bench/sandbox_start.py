"""How long `airlock run --rm IMAGE true` takes, against `docker run --rm IMAGE true`.

    .venv/bin/python -m bench.sandbox_start [--runs 20] [--out FILE] [--before ae73a69]

Rows, run interleaved in a rotating order, one untimed warm-up each, median of ``--runs``:

- ``docker run --rm IMAGE true`` (the docker CLI);
- ``airlock run --rm ... IMAGE true`` through the real CLI, with a spare network ready
  (``SandboxManager.prepare_spares`` before each run, untimed) and with none (a config with
  ``spare_networks = 0``, no spares present);
- the same CLI at the commit before the start-time work (``--before``, default ae73a69): a git
  worktree of it, its own gateway started from that worktree;
- in-process: what the CLI does (config, pre-check, ``SandboxManager.start``, attach, gate,
  wait, release, teardown), each step timed, with and without a spare.

Then the interpreter and import costs of the CLI (``python -X importtime``). See
bench/README.md, "Sandbox start time". Needs root and a Docker engine; it uses only loopback
and the networks and containers it creates (pool ``POOL``), and removes all of them at the
end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from tests.world import HOST, World

from airlock.config import load_config
from airlock.host import firewall
from airlock.host.containerspec import RunSpec
from airlock.host.images import ensure_sandbox_image
from airlock.host.sandbox import LABEL, LABEL_NAME, SandboxManager
from airlock.testing.ports import free_port
from bench.common import (
    REPO_ROOT,
    LoadMonitor,
    busy_processes,
    cpu_model,
    cpu_seconds,
    die_with_parent,
    git_commit,
    loadavg,
    log,
    median,
    os_name,
    percentile,
    ram_gib,
    stop_process,
)

POOL = "10.216.176.0/20"  # this bench's own address pool (the e2e modules use others)
BEFORE = "ae73a69"  # the commit before the start-time work (spare networks, fewer steps)
TARGET_MS = 300.0  # airlock run's overhead over docker run
GRANT = f"{HOST}/acme/tiny:write"
RUN_TIMEOUT = 60.0  # seconds for one run of any row
MAX_FAILURES = 3  # a row that fails this often is dropped
SETTLE = 0.3  # seconds of pause before every timed run (Docker finishing the last removal)
BENCH_LABEL = "org.airlock.bench.start"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "START_RESULTS.md"

ROW_TITLES = {
    "docker": "`docker run --rm IMAGE true`",
    "agent-spare": "`airlock run --rm` via the run agent (spare ready)",
    "cli-spare": "`airlock run --rm` (spare network ready)",
    "cli-nospare": "`airlock run --rm` (no spare: network + rules made)",
    "cli-before": "`airlock run` at {before} (before; always removes)",
    "inproc-spare": "in-process start → teardown (spare)",
    "inproc-nospare": "in-process start → teardown (no spare)",
}


def child_env(pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _mounted_at(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


class StartWorld(World):
    """tests/world.py's World (upstream in-process, gateway of this checkout) whose gateway
    dies with the bench; its config's [sandbox] is the e2e one with this bench's pool."""

    def gateway_popen(self) -> dict[str, Any]:
        # Its own session: a Ctrl-C meant for the bench must not stop it before the clean-up
        # has used it (revocations, listeners); the bench stops it last.
        return {"cwd": self.root, "preexec_fn": die_with_parent, "start_new_session": True}


class OldGateway:
    """A gateway from the worktree of an older commit, on the same upstream (a World-style
    config, as that commit's tests/world.py wrote it)."""

    def __init__(self, root: Path, src: Path, world: World, sandbox_section: str) -> None:
        self.root = root
        self.src = src
        root.mkdir()
        self.config = root / "airlock.toml"
        self.socket = root / "run" / "control.sock"
        self.log = root / "gateway.stderr"
        self.config.write_text(
            f"""
[gateway]
state_dir = "{root / "state"}"
control_socket = "{self.socket}"
git_listen = "127.0.0.1:{free_port()}"
public_name = "airlock.internal"
control_uids = [{os.geteuid()}]
audit_log = "{root / "audit.log"}"

[[upstream]]
host = "{HOST}"
url = "{world.upstream.url}"
ca_file = "{world.tls.ca_cert}"
token_file = "{world.token_file}"

{sandbox_section}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready = self.root / "gateway.ready"
        argv = [sys.executable, "-m", "airlock.cli", "gateway", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            [*argv, "--ready-file", str(ready)],
            cwd=self.root,
            env=child_env(str(self.src)),
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
            preexec_fn=die_with_parent,
            start_new_session=True,  # as StartWorld's gateway
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"old gateway exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("old gateway did not start in 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self.proc = None


class GatewayGone(Exception):
    """The bench's gateway died: every further run would fail."""


Path_ = tuple["Row", Callable[[], None], Callable[["Row"], float]]  # row, untimed prep, run


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (and what they reaped)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def daemon_pids() -> list[int]:
    """dockerd and containerd: the daemons a container start works in."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() in ("dockerd", "containerd"):
                    pids.append(int(d.name))
    return pids


@dataclass
class Row:
    key: str
    title: str
    values: list[float] = field(default_factory=list)  # seconds
    cpu: list[float] = field(default_factory=list)  # the client's CPU seconds per run
    daemon_cpu: list[float] = field(default_factory=list)  # dockerd + containerd, per run
    errors: list[str] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    dropped: str = ""

    @property
    def median(self) -> float:
        return median(self.values)


class StartBench:
    def __init__(self, runs: int, before: str, root: Path, run_dir: Path) -> None:
        self.runs = runs
        self.before = before
        self.root = root
        self.run_dir = run_dir  # under /run: bundle dirs (tmpfs), holds, spare markers
        self.tag = f"bst{os.getpid()}"
        self.n = 0
        self.client = docker.from_env(timeout=120)
        self.image = ""
        self.world: StartWorld | None = None
        self.old: OldGateway | None = None
        self.worktree: Path | None = None
        self.before_note = ""
        self.cfg_spare = root / "spare.toml"
        self.cfg_nospare = root / "nospare.toml"
        self.prep: SandboxManager | None = None
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.imports: dict[str, Any] = {}
        self.daemons = daemon_pids()
        self.old_ids: set[str] = set()  # sandboxes of the old commit (their rules: no owner)
        self.agent: subprocess.Popen[bytes] | None = None

    # --- set-up and clean-up -------------------------------------------------------------

    def sandbox_section(self, which: str, extra: str = "") -> str:
        # tests/e2e/conftest.py sandbox_config(POOL, extra), with this bench's own bundle_dir.
        bundle = self.run_dir / which / "sandboxes"
        return f'[sandbox]\nbundle_dir = "{bundle}"\npool = "{POOL}"\n{extra}'

    def start(self) -> None:
        self.image = str(ensure_sandbox_image(self.client, progress=lambda m: log(f"image: {m}")))
        log(f"image {self.image}")
        (self.root / "world").mkdir()
        self.world = StartWorld(
            self.root / "world",
            config_extra=self.sandbox_section("new", "spare_networks = 2\n"),
        )
        self.world.start()
        self.world.make_repo("acme", "tiny")
        text = self.world.config.read_text()
        self.cfg_spare.write_text(text)
        self.cfg_nospare.write_text(text.replace("spare_networks = 2", "spare_networks = 0"))
        self.prep = SandboxManager(load_config(self.cfg_spare), client=self.client)
        self.start_agent()
        self.start_before()

    def start_agent(self) -> None:
        """The run agent `airlock supervise` starts (host/runagent.py), for the spare config."""
        from airlock import agentproto

        self.agent = subprocess.Popen(
            [sys.executable, "-m", "airlock.cli", "agent", "--config", str(self.cfg_spare)],
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
        deadline = time.monotonic() + 30
        while not agentproto.socket_path(self.cfg_spare).exists():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the run agent did not start")
            time.sleep(0.05)

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)

    def start_before(self) -> None:
        assert self.world is not None
        wt = self.root / f"worktree-{self.before}"
        try:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(wt), self.before],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.worktree = wt
            sha = subprocess.run(
                ["git", "-C", str(wt), "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            self.old = OldGateway(
                self.root / "old-gateway", wt / "src", self.world, self.sandbox_section("old")
            )
            self.old.start()
            self.before_note = f"{sha} (a worktree; its own gateway; PYTHONPATH=worktree/src)"
        except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            self.before_note = f"not measured: {str(detail).strip()[-500:]}"
            self.failures.append(f"before ({self.before}): {self.before_note}")
            if self.old is not None:
                self.old.stop()
            self.old = None

    def stop(self) -> None:
        """Remove everything this bench made; every step is tried."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("run agent", self.stop_agent),
            ("own sandboxes", self.teardown_own),
            ("containers and networks in the pool", self.sweep),
            ("old sandboxes' rules", self.old_rules),
            ("old gateway", lambda: self.old.stop() if self.old else None),
            ("gateway and upstream", lambda: self.world.stop() if self.world else None),
            ("worktree", self.remove_worktree),
            ("bundle tmpfs", self.remove_run_dir),
        ]
        for what, fn in steps:
            try:
                fn()
            except Exception as exc:
                self.failures.append(f"clean-up, {what}: {type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            self.client.close()

    def teardown_own(self) -> None:
        if self.prep is None:
            return
        errors = []
        for sid in sorted(self.prep.all_sandbox_ids()):
            try:
                self.prep.teardown(sid, "bench finished")
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))

    def _mine(self, labels: dict[str, str]) -> bool:
        return (labels.get(LABEL_NAME) or "").startswith(self.tag) or bool(labels.get(BENCH_LABEL))

    def sweep(self) -> list[str]:
        """Containers named or labelled by this bench, and networks in its pool (the old
        commit's sandboxes included); returns what it found and removed."""
        found: list[str] = []
        api = self.client.api
        for c in api.containers(all=True, filters={"label": [LABEL]}) + api.containers(
            all=True, filters={"label": [BENCH_LABEL]}
        ):
            if self._mine(c.get("Labels") or {}):
                found.append(f"container {c['Id'][:12]}")
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(c["Id"], force=True)
        pool = ipaddress.IPv4Network(POOL)
        for n in api.networks():
            subnets = [
                cfg.get("Subnet") for cfg in (n.get("IPAM") or {}).get("Config") or [] if cfg
            ]
            inside = False
            for s in subnets:
                with contextlib.suppress(ValueError, TypeError):
                    inside = inside or ipaddress.IPv4Network(s).subnet_of(pool)
            if not inside:
                continue
            found.append(f"network {n['Name']}")
            info = api.inspect_network(n["Id"])
            for cid in info.get("Containers") or {}:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(cid, force=True)
            sid = (n.get("Labels") or {}).get(LABEL)
            if sid:
                firewall.remove_rules(sid)
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(n["Id"])
        return found

    def old_rules(self) -> None:
        """Rules of the old commit's sandboxes (they carry no owner): every sandbox id its
        gateway made a session for."""
        if self.old is None:
            return
        with contextlib.suppress(Exception):
            self.record_old_ids()
        known = set(firewall.list_sandbox_rule_names())
        for sid in sorted(self.old_ids & known):
            firewall.remove_rules(sid)

    def record_old_ids(self) -> None:
        from airlock.host.control_client import ControlClient

        assert self.old is not None
        for s in ControlClient(self.old.socket).list_sessions():
            sid = str((s.get("labels") or {}).get("sandbox") or "")
            if sid:
                self.old_ids.add(sid)

    def remove_worktree(self) -> None:
        if self.worktree is None:
            return
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(self.worktree)],
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "prune"], capture_output=True, timeout=60
        )
        self.worktree = None

    def remove_run_dir(self) -> None:
        for which in ("new", "old"):
            d = self.run_dir / which / "sandboxes"
            if d.exists() and _mounted_at(d):
                subprocess.run(["umount", str(d)], check=True, capture_output=True, timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.run_dir.parent.rmdir()  # only when no other run of this bench uses it

    # --- one run of each row ------------------------------------------------------------

    def name(self, what: str) -> str:
        self.n += 1
        return f"{self.tag}-{what}-{self.n}"

    def _timed(self, argv: list[str], env: dict[str, str]) -> float:
        t = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"no exit in {RUN_TIMEOUT:.0f} s") from None
        except KeyboardInterrupt:
            # The CLI got the Ctrl-C too and removes its sandbox: let it finish that.
            try:
                proc.communicate(timeout=15)
            except BaseException:
                proc.kill()
                proc.communicate()
            raise
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {(err or out).strip()[-300:]}")
        return elapsed

    def airlock_argv(self, config: Path, name: str, *, remove: bool = True) -> list[str]:
        rm = ["--rm"] if remove else []
        argv = [sys.executable, "-m", "airlock.cli", "run", "--config", str(config), *rm]
        return [*argv, "--grant", GRANT, "--name", name, self.image, "true"]

    def prepare_spare(self) -> None:
        assert self.prep is not None
        self.prep.prepare_spares(1)
        if not self.prep.spare_ids():
            raise RuntimeError("prepare_spares left no spare")

    def no_spares(self) -> None:
        assert self.prep is not None
        for sid in self.prep.spare_ids():
            self.prep.teardown(sid, "bench: no spares for this row")

    def run_docker(self, row: Row) -> float:
        argv = ["docker", "run", "--rm", "--name", self.name("docker")]
        argv += ["--label", f"{BENCH_LABEL}={self.tag}", self.image, "true"]
        return self._timed(argv, child_env())

    def run_agent_spare(self, row: Row) -> float:
        # The `airlock` entry point (airlock/fastpath.py); it sends `run` to the agent. The
        # agent's child removes the --rm sandbox after telling the exit code.
        argv = self.airlock_argv(self.cfg_spare, self.name("agent"))
        argv[2] = "airlock.fastpath"
        return self._timed(argv, child_env())

    def run_cli_spare(self, row: Row) -> float:
        return self._timed(self.airlock_argv(self.cfg_spare, self.name("spare")), child_env())

    def run_cli_nospare(self, row: Row) -> float:
        return self._timed(self.airlock_argv(self.cfg_nospare, self.name("nospare")), child_env())

    def run_cli_before(self, row: Row) -> float:
        assert self.old is not None and self.worktree is not None
        # That commit's `run` has no --rm: its foreground run always removes everything.
        argv = self.airlock_argv(self.old.config, self.name("before"), remove=False)
        try:
            return self._timed(argv, child_env(str(self.worktree / "src")))
        finally:
            with contextlib.suppress(Exception):
                self.record_old_ids()  # untimed: for the clean-up of rules left by a failure

    def run_inproc(self, row: Row, config: Path, what: str) -> float:
        """What `airlock run --rm` does after its imports (cli/run.py, run_foreground),
        with every step timed; returns the total."""
        steps: dict[str, float] = {}
        t_all = time.perf_counter()
        t = t_all
        cfg = load_config(config)
        manager = SandboxManager(cfg)  # a fresh Docker client and control client, as the CLI
        spec = RunSpec(
            image=self.image, command=["true"], grants=[GRANT], name=self.name(what), remove=True
        )
        steps["cli: config + manager"] = time.perf_counter() - t
        t = time.perf_counter()
        self._precheck(manager, spec, cfg)
        steps["cli: docker client + image pre-check"] = time.perf_counter() - t
        t = time.perf_counter()
        sb = manager.start(spec, open_gate=False)
        steps["start (total)"] = time.perf_counter() - t
        for k, v in sb.timings.items():
            steps[f"start: {k}"] = v
        try:
            with manager.hold(sb.id):
                t = time.perf_counter()
                stream = manager.client.api.attach(
                    sb.container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True
                )
                pump = threading.Thread(target=lambda: [None for _ in stream], daemon=True)
                pump.start()
                steps["attach"] = time.perf_counter() - t
                t = time.perf_counter()
                manager.open_gate(sb)
                steps["gate"] = time.perf_counter() - t
                t = time.perf_counter()
                code = manager.wait(sb)
                steps["wait (command runs, exits)"] = time.perf_counter() - t
                t = time.perf_counter()
                manager.release(sb.id, "sandbox exited")
                steps["release"] = time.perf_counter() - t
                pump.join(10)
        finally:
            t = time.perf_counter()
            manager.teardown(sb.id, "sandbox exited")
            steps["teardown"] = time.perf_counter() - t
        total = time.perf_counter() - t_all
        with contextlib.suppress(Exception):
            manager.client.close()
        if code != 0:
            raise RuntimeError(f"exit code {code}")
        for k, v in steps.items():
            row.steps[k].append(v)
        return total

    @staticmethod
    def _precheck(manager: SandboxManager, spec: RunSpec, cfg: Any) -> None:
        try:
            from airlock.cli.run import _precheck
        except ImportError:  # the CLI's own pre-check moved: at least reach Docker as it does
            manager.client.images.get(spec.image)
        else:
            _precheck(manager, spec, cfg)

    # --- the measurement ----------------------------------------------------------------

    def plan(self) -> list[Path_]:
        def row(key: str) -> Row:
            r = Row(key, ROW_TITLES[key].format(before=self.before))
            self.rows[key] = r
            return r

        none: Callable[[], None] = lambda: None  # noqa: E731
        paths: list[Path_] = [
            (row("docker"), none, self.run_docker),
            (row("agent-spare"), self.prepare_spare, self.run_agent_spare),
            (row("cli-spare"), self.prepare_spare, self.run_cli_spare),
            (row("cli-nospare"), self.no_spares, self.run_cli_nospare),
        ]
        if self.old is not None:
            paths.append((row("cli-before"), none, self.run_cli_before))
        else:
            row("cli-before").dropped = self.before_note
        paths += [
            (
                row("inproc-spare"),
                self.prepare_spare,
                lambda r: self.run_inproc(r, self.cfg_spare, "ispare"),
            ),
            (
                row("inproc-nospare"),
                self.no_spares,
                lambda r: self.run_inproc(r, self.cfg_nospare, "inospare"),
            ),
        ]
        return paths

    def check_gateways(self) -> None:
        assert self.world is not None and self.world.proc is not None
        if self.world.proc.poll() is not None:
            raise GatewayGone(f"the gateway exited ({self.world.proc.returncode}): giving up")
        if self.old is not None and self.old.proc is not None and self.old.proc.poll() is not None:
            self.rows["cli-before"].dropped = f"the {self.before} gateway exited"

    def measure(self) -> None:
        paths = self.plan()
        for rep in range(self.runs + 1):  # rep 0: the warm-up of every row
            k = rep % len(paths)
            for row, prepare, run in paths[k:] + paths[:k]:
                if row.dropped:
                    continue
                try:
                    self.check_gateways()
                    prepare()
                    time.sleep(SETTLE)
                    c0, p0 = children_cpu(), time.process_time()
                    d0 = sum(cpu_seconds(p) for p in self.daemons)
                    value = run(row)
                    cpu = children_cpu() - c0
                    if row.key.startswith("inproc"):
                        cpu += time.process_time() - p0
                    daemon = sum(cpu_seconds(p) for p in self.daemons) - d0
                except GatewayGone:
                    raise
                except Exception as exc:
                    when = f"run {rep}" if rep else "warm-up"
                    row.errors.append(
                        f"{when} ({time.strftime('%H:%M:%S')}): {type(exc).__name__}: {exc}"
                    )
                    log(f"  {row.key}: failed: {row.errors[-1]}")
                    if len(row.errors) >= MAX_FAILURES:
                        row.dropped = f"dropped after {len(row.errors)} failures"
                    continue
                if rep == 0:
                    row.steps.clear()  # the warm-up is not counted
                else:
                    row.values.append(value)
                    row.cpu.append(cpu)
                    row.daemon_cpu.append(daemon)
            log(
                f"run {rep}/{self.runs}"
                + ("" if rep else " (warm-up)")
                + ": "
                + ", ".join(
                    f"{r.key} {r.values[-1] * 1000:.0f} ms" for r, _, _ in paths if r.values
                )
            )

    # --- the CLI's interpreter and imports ------------------------------------------------

    def measure_imports(self, reps: int) -> None:
        py = sys.executable
        env = child_env()
        cmds = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import airlock.cli'": [py, "-c", "import airlock.cli"],
            "python -m airlock.cli --help": [py, "-m", "airlock.cli", "--help"],
            "python -c 'import airlock.cli, airlock.host.sandbox' (what run imports)": [
                py,
                "-c",
                "import airlock.cli, airlock.cli.run, airlock.host.sandbox",
            ],
        }
        envs = {k: env for k in cmds}
        if self.worktree is not None:
            label = f"the same at {self.before} (PYTHONPATH=worktree/src)"
            cmds[label] = [py, "-c", "import airlock.cli, airlock.host.sandbox"]
            envs[label] = child_env(str(self.worktree / "src"))
        wall: dict[str, list[float]] = {k: [] for k in cmds}
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        for rep in range(reps + 1):
            for label, argv in cmds.items():
                t, c = time.perf_counter(), children_cpu()
                subprocess.run(
                    argv, cwd=self.root, env=envs[label], capture_output=True, timeout=60
                )
                if rep:
                    wall[label].append(time.perf_counter() - t)
                    cpu[label].append(children_cpu() - c)
        self.imports["wall"] = {k: (median(v), median(cpu[k])) for k, v in wall.items()}
        # -X importtime of a real `airlock run --rm` (a spare ready): every module it imports.
        self.prepare_spare()
        time.sleep(SETTLE)
        argv = self.airlock_argv(self.cfg_spare, self.name("importtime"))
        argv.insert(1, "-X")
        argv.insert(2, "importtime")
        r = subprocess.run(
            argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
        self.imports["run"] = parse_importtime(r.stderr)
        help_argv = [py, "-X", "importtime", "-m", "airlock.cli", "--help"]
        r = subprocess.run(
            help_argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=60
        )
        self.imports["help"] = parse_importtime(r.stderr)


_IMPORT_RE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def parse_importtime(stderr: str) -> dict[str, Any]:
    """-X importtime's lines: total (sum of the top-level cumulative times), self time per
    top-level package, the heaviest modules by cumulative time."""
    total = 0
    by_pkg: dict[str, int] = defaultdict(int)
    modules: list[tuple[int, int, str]] = []
    for line in stderr.splitlines():
        m = _IMPORT_RE.match(line)
        if not m:
            continue
        own, cum, indent, mod = int(m[1]), int(m[2]), len(m[3]), m[4]
        if indent == 1:
            total += cum
        by_pkg[mod.split(".")[0]] += own
        modules.append((cum, own, mod))
    modules.sort(reverse=True)
    return {"total_us": total, "by_pkg": dict(by_pkg), "modules": modules, "count": len(modules)}


# --- the report ---------------------------------------------------------------------------


def ms(v: float) -> str:
    return "—" if v != v else f"{v * 1000:.0f}"


def render(bench: StartBench, head: list[str], tail: list[str]) -> str:
    out = ["# airlock run: sandbox start time", "", *head, ""]
    docker_med = bench.rows["docker"].median
    out += [
        "## start to exit of `… IMAGE true` (wall ms, median of the runs)",
        "",
        "| row | runs | median | p10 | p90 | min | max | over docker run | target ≤ 300 ms "
        "| client CPU ms | dockerd+containerd CPU ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bench.rows.values():
        if not r.values:
            reason = r.dropped or "; ".join(r.errors[:1]) or "no runs"
            out.append(f"| {r.title} | 0 | {reason} | | | | | | | | |")
            continue
        s = sorted(r.values)
        over, verdict = "—", "—"
        if r.key != "docker":
            o = r.median - docker_med
            over = f"+{ms(o)}" if o >= 0 else ms(o)
            if r.key.startswith(("cli", "agent")):
                verdict = "**pass**" if o * 1000 <= TARGET_MS else "**MISS**"
        out.append(
            f"| {r.title} | {len(s)} | **{ms(r.median)}** | {ms(percentile(s, 10))} | "
            f"{ms(percentile(s, 90))} | {ms(s[0])} | {ms(s[-1])} | {over} | {verdict} | "
            f"{ms(median(r.cpu))} | {ms(median(r.daemon_cpu))} |"
        )
    out += [
        "",
        "Client CPU: user+sys of the command and of the processes it waited for (nft, "
        "mount, docker-init are not among them: they belong to Docker); for the in-process "
        "rows, the bench process itself. dockerd+containerd CPU: those two daemons' CPU "
        "during the run (other people's containers on the machine count too). CPU time "
        "grows much less with the machine's load than wall time.",
        "",
        *breakdown(bench),
        "",
        *imports_section(bench),
    ]
    errs = [f"{r.key}: {e}" for r in bench.rows.values() for e in r.errors]
    if errs or bench.failures:
        out += ["", "## failures", ""] + [f"- {e}" for e in errs + bench.failures]
    out += ["", "## notes", "", *[f"- {n}" for n in tail + bench.notes]]
    return "\n".join(out) + "\n"


def breakdown(bench: StartBench) -> list[str]:
    a, b = bench.rows["inproc-spare"], bench.rows["inproc-nospare"]
    keys: list[str] = []
    for r in (a, b):
        keys += [k for k in r.steps if k not in keys]
    starts = [k for k in keys if k.startswith("start: ")]
    order = [k for k in keys if k.startswith("cli: ")] + ["start (total)", *starts]
    order += [k for k in keys if k not in order]
    out = [
        "## breakdown: in-process, the CLI's steps after its imports (ms, median per step)",
        "",
        "`start: …` are `Sandbox.timings` (inside `SandboxManager.start`; `docker start`, "
        "`inspect` and `rules re-check` are parts of `start+activate`); the others are "
        "timed around the calls `run_foreground` makes.",
        "",
        "| step | spare | no spare |",
        "|---|---|---|",
    ]
    for k in order:
        out.append(f"| {k} | {ms(median(a.steps.get(k, [])))} | {ms(median(b.steps.get(k, [])))} |")
    out.append(f"| **total (median of totals)** | **{ms(a.median)}** | **{ms(b.median)}** |")
    cli_a, cli_b = bench.rows["cli-spare"].median, bench.rows["cli-nospare"].median
    out += [
        "",
        f"CLI minus in-process (interpreter start, imports, exit): spare "
        f"{ms(cli_a - a.median)} ms, no spare {ms(cli_b - b.median)} ms.",
    ]
    return out


def imports_section(bench: StartBench) -> list[str]:
    imp = bench.imports
    if not imp:
        return []
    out = [
        "## the CLI's interpreter start and imports",
        "",
        "| command | wall ms (median) | CPU ms (median) |",
        "|---|---|---|",
    ]
    out += [
        f"| {k if k.startswith('the same') else f'`{k}`'} | {ms(w)} | {ms(c)} |"
        for k, (w, c) in imp["wall"].items()
    ]
    run, hlp = imp.get("run"), imp.get("help")
    if run and run["count"]:
        out += [
            "",
            f"`python -X importtime` of one real `airlock run --rm … IMAGE true`: "
            f"{run['count']} modules, {run['total_us'] / 1000:.0f} ms of imports "
            f"(`--help` alone: {hlp['count'] if hlp else '?'} modules, "
            f"{hlp['total_us'] / 1000 if hlp else float('nan'):.0f} ms). Self time per "
            "top-level package, heaviest first:",
            "",
            "| package | self ms | share |",
            "|---|---|---|",
        ]
        total = sum(run["by_pkg"].values()) or 1
        for pkg, us in sorted(run["by_pkg"].items(), key=lambda kv: -kv[1])[:15]:
            out.append(f"| {pkg} | {us / 1000:.1f} | {us / total * 100:.0f}% |")
        out += [
            "",
            "Heaviest modules by cumulative import time (includes what they import):",
            "",
            "| module | cumulative ms | self ms |",
            "|---|---|---|",
        ]
        for cum, own, mod in run["modules"][:15]:
            out.append(f"| {mod} | {cum / 1000:.1f} | {own / 1000:.1f} |")
    return out


def header(
    bench: StartBench, started: dt.datetime, busy: list[str], load: tuple[float, float, float]
) -> list[str]:
    return [
        f"- **date**: {started.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- **commit**: {git_commit()}; before: {bench.before_note}",
        f"- **machine**: {cpu_model()}, {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM, "
        f"{os_name()}; Docker {bench.client.version().get('Version', '?')}",
        f"- **image**: {bench.image}",
        f"- **load at start**: loadavg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min); "
        f"busy in a 1 s sample: {', '.join(busy) or 'none'}",
        f"- **how**: {bench.runs} runs per row after one untimed warm-up, the rows interleaved "
        f"in a rotating order, {SETTLE} s pause before each run; wall time from the command's "
        "start to its exit (the CLI rows include the Python interpreter and imports). "
        "Spare row: `SandboxManager.prepare_spares(1)` before each run, untimed. "
        f"Pool {POOL}; sandbox command `true` with grant `{GRANT}`.",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sandbox_start", description=__doc__)
    p.add_argument("--runs", type=int, default=20, help="timed runs per row (default 20)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    p.add_argument("--before", default=BEFORE, help=f"the 'before' commit (default {BEFORE})")
    p.add_argument("--import-runs", type=int, default=10, help="runs per import figure")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 200:
        p.error("--runs: 1..200")
    if os.geteuid() != 0:
        p.error("run as root (nftables, tmpfs, Docker)")
    try:
        md = run_bench(args.runs, args.before, args.import_runs)
    except KeyboardInterrupt:
        log("interrupted; everything the bench made is removed")
        return 130
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    log(f"written to {args.out}")
    return 0


def run_bench(runs: int, before: str = BEFORE, import_runs: int = 10) -> str:
    """The whole measurement; returns the markdown report (also for bench.run)."""
    # SIGTERM ends the run like Ctrl-C: the finally below removes everything.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C cleans up too, also when started from a shell that ignores SIGINT.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = dt.datetime.now(dt.UTC)
    busy = busy_processes(exclude={os.getpid()})
    monitor = LoadMonitor()
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-start-"))
    run_dir = Path("/run/airlock-bench-start") / root.name
    bench = StartBench(runs, before, root, run_dir)
    t0 = time.monotonic()
    head: list[str] = []
    load0 = loadavg()
    log(f"load at start: {' '.join(f'{x:.2f}' for x in load0)}; busy: {', '.join(busy)}")
    try:
        bench.start()
        bench.measure()
        bench.measure_imports(import_runs)
    except Exception as exc:
        traceback.print_exc()
        bench.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            head = header(bench, started, busy, load0)
        bench.stop()
        left = []
        with contextlib.suppress(Exception):
            left = bench.sweep()
        if left:
            bench.failures.append(f"left after clean-up (now removed): {', '.join(left)}")
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    foreign, ours = monitor.foreign_share()
    end = loadavg()
    tail = [
        f"load at end: loadavg {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}; over the "
        f"{(time.monotonic() - t0) / 60:.1f} min run, processes outside the bench used "
        f"{foreign * 100:.0f}% of all cores (the bench and its children "
        f"{ours * 100:.0f}%; Docker's daemon counts as outside). 2 cores, shared.",
        "`docker run` runs the image's command directly; `airlock run` adds `--init` "
        "(docker-init as PID 1, its default) and the gate (busybox waiting for the ready "
        "file), a per-sandbox internal network with nftables rules, a gateway listener and "
        "a session with its bundle, and removes all of it before it exits.",
        f"The before row ({before}) has no spare networks, no `--rm` (its foreground run "
        "always removes everything) and no step timings.",
    ]
    if not bench.rows:
        return "# airlock run: sandbox start time\n\n" + "\n".join(
            head + ["", "## failures", ""] + [f"- {f}" for f in bench.failures]
        )
    return render(bench, head, tail)


if __name__ == "__main__":
    sys.exit(main())
