"""200 concurrent sessions, each cloning a tiny repository with Debian's git.

All clones start at once (200 git processes; on 2 cores that is bounded, not pretty) and
each has a timeout. Through airlock every clone has a session of its own (its own client
certificate); direct, every clone uses the upstream token.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from airlock.testing.repos import git_env
from bench.common import CpuMeter, median
from bench.world import BenchWorld, Bundle, basic_auth

CLONE_TIMEOUT = 300.0


@dataclass
class ScaleRun:
    ok: int
    failed: int
    seconds: float
    proxy_cpu: float
    errors: list[str] = field(default_factory=list)


@dataclass
class ScaleRow:
    sessions: int
    runs: dict[str, list[ScaleRun]] = field(default_factory=dict)
    gw_idle_mb: float = 0.0
    gw_peak_mb: float = 0.0

    def total_ok(self, path: str) -> int:
        return sum(r.ok for r in self.runs.get(path, []))

    def total_failed(self, path: str) -> int:
        return sum(r.failed for r in self.runs.get(path, []))

    def seconds(self, path: str) -> float:
        return median([r.seconds for r in self.runs.get(path, [])])


def run_clones(
    world: BenchWorld, repo: str, bundles: list[Bundle] | None, n: int, work: Path, pids: list[int]
) -> ScaleRun:
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    meter = CpuMeter(pids).start()
    t0 = time.monotonic()
    for i in range(n):
        if bundles is not None:
            env = git_env(world.home, GIT_CONFIG_GLOBAL=str(bundles[i].gitconfig))
            argv = ["git", "clone", "-q", world.airlock_url(repo), str(work / f"c{i}")]
        else:
            env = git_env(world.home)
            argv = [
                "git",
                "-c",
                f"http.extraHeader=Authorization: {basic_auth()}",
                "-c",
                f"http.sslCAInfo={world.tls.ca_cert}",
                "clone",
                "-q",
                world.direct_url(repo),
                str(work / f"c{i}"),
            ]
        procs.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )
    deadline = t0 + CLONE_TIMEOUT
    ok, errors = 0, []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            errors.append("timeout")
            continue
        if p.returncode == 0:
            ok += 1
        else:
            errors.append(err.decode(errors="replace").strip()[-200:])
    seconds = time.monotonic() - t0
    cpu = meter.stop()
    shutil.rmtree(work, ignore_errors=True)
    return ScaleRun(ok, n - ok, seconds, cpu, errors[:5])
