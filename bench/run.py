"""airlock's benchmark: airlock against direct access and against nginx / squid, side by side.

    .venv/bin/python -m bench.run [--quick] [--out bench/results/RESULTS.md] [--publish]

See bench/README.md for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.bare_relay import BareRelay
from bench.common import (
    GiB,
    LoadMonitor,
    MiB,
    busy_processes,
    cpu_model,
    git_commit,
    loadavg,
    log,
    os_name,
    peak_rss_mb,
    ram_gib,
    versions,
)
from bench.egress import EgressBench
from bench.gitbench import GitBench
from bench.latency import (
    LatencyRow,
    Target,
    airlock_target,
    direct_target,
    nginx_target,
    run_once,
)
from bench.proxies import Nginx, ensure_packages
from bench.report import Report, render
from bench.repos import SizeClass
from bench.scale import ScaleRow, run_clones
from bench.sessions import run_section as run_sessions_section
from bench.world import BENCH_CONFIG_SUMMARY, HOST, BenchWorld, Bundle, basic_auth

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "RESULTS.md"
LAST_RESULTS = REPO_ROOT / "bench" / "LAST_RESULTS.md"
SECTIONS = ("git", "latency", "egress", "scale", "sessions")
# The sections that use the shared world (upstream, gateway, nginx); "sessions" has its own.
BASE_SECTIONS = {"git", "latency", "egress", "scale"}
# Not in the default run: `--only sandbox` (it needs root and Docker), `--only replicas`
# (gateways on a shared Redis store, bench/replicas.py), or add them to a list.
EXTRA_SECTIONS = ("sandbox", "replicas")
TINY = "acme/tiny"


@dataclass
class GitClass:
    size_class: SizeClass
    runs: int
    push_sizes: list[int]
    note: str = ""


@dataclass
class Plan:
    quick: bool
    git: list[GitClass] = field(default_factory=list)
    latency_levels: tuple[int, ...] = (1, 16, 64)
    latency_requests: int = 2000
    latency_runs: int = 5
    egress_bytes: int = GiB
    egress_runs: int = 5
    scale_sessions: int = 500
    scale_runs: int = 5

    @staticmethod
    def make(quick: bool) -> Plan:
        s10 = SizeClass("10 MiB", 10 * MiB, "s10m")
        s200 = SizeClass("200 MiB", 200 * MiB, "s200m")
        s1g = SizeClass("1 GiB", GiB, "s1g")
        pushes = [10 * MiB, 200 * MiB]
        if quick:
            return Plan(
                quick=True,
                git=[GitClass(s10, 3, pushes), GitClass(s200, 3, pushes)],
                latency_requests=500,
                latency_runs=3,
                egress_runs=3,
                scale_runs=3,
            )
        return Plan(
            quick=False,
            git=[
                GitClass(s10, 5, pushes),
                GitClass(s200, 5, pushes),
                GitClass(s1g, 3, [*pushes, GiB], "1 GiB class: 3 runs to keep the total time sane"),
            ],
        )


class Bench:
    def __init__(self, plan: Plan, root: Path, sections: set[str]) -> None:
        self.plan = plan
        self.root = root
        self.sections = sections
        self.report = Report()
        (root / "world").mkdir()
        self.world = BenchWorld(root / "world")
        self.nginx: Nginx | None = None
        self.ops: Bundle | None = None
        self.bundles: list[Bundle] = []
        self.load = LoadMonitor()

    # --- set-up -----------------------------------------------------------------------------

    def start(self) -> None:
        self.world.start()
        self.nginx = Nginx(
            self.root / "nginx", self.world.upstream.port, self.world.tls.ca_cert, basic_auth()
        )
        self.nginx.start()
        self.world.make_repo("acme", "tiny")
        grants = [f"{HOST}/{c.size_class.repo}:write=bench-push,ff:bench-ff" for c in self.plan.git]
        self.ops = self.world.session(*grants, f"{HOST}/{TINY}:read")
        if self.sections & {"latency", "scale"}:
            n = max(self.plan.scale_sessions, max(self.plan.latency_levels))
            log(f"creating {n} sessions")
            self.bundles = [self.world.session_retrying(f"{HOST}/{TINY}:read") for _ in range(n)]

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        self.world.stop()

    def section(self, name: str, fn: Callable[[], None]) -> None:
        if name not in self.sections:
            return
        log(f"== {name}")
        self.load.foreign_share()
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc()
            self.report.failures.append(f"{name}: {type(exc).__name__}: {exc}")
        foreign, ours = self.load.foreign_share()
        minutes = (time.monotonic() - t0) / 60
        self.report.notes.append(
            f"{name}: {minutes:.1f} min; CPU used by other processes on the machine meanwhile: "
            f"{foreign * 100:.0f}% of all cores (bench and its children: {ours * 100:.0f}%)"
        )

    # --- sections ---------------------------------------------------------------------------

    def run_git(self) -> None:
        assert self.nginx is not None and self.ops is not None
        gb = GitBench(self.world, self.nginx, self.ops, self.root / "git")
        for c in self.plan.git:
            self.report.git += gb.size_class(c.size_class, c.runs, c.push_sizes, c.note)
            if c.note:
                self.report.notes.append(c.note)

    def run_latency(self) -> None:
        assert self.nginx is not None
        bare = BareRelay(
            self.root / "bare", self.world.upstream.url, self.world.tls.ca_cert, basic_auth()
        )
        bare.start()
        try:
            self._latency(bare)
        finally:
            bare.stop()

    def _latency(self, bare: BareRelay) -> None:
        assert self.nginx is not None
        plan = self.plan
        nginx_url = self.nginx.url(TINY)
        for level in plan.latency_levels:
            row = LatencyRow(
                level,
                plan.latency_requests,
                {"direct": [], "airlock": [], "nginx": [], "bare": []},
            )
            self.world.restart_gateway()
            targets: dict[str, tuple[list[Target], Callable[[], list[int]]]] = {
                "direct": ([direct_target(self.world, TINY) for _ in range(level)], lambda: []),
                "airlock": (
                    [airlock_target(self.world, b, TINY) for b in self.bundles[:level]],
                    lambda: [self.world.gateway_pid],
                ),
                "nginx": (
                    [nginx_target(nginx_url, self.nginx.ca) for _ in range(level)],
                    self.nginx.pids,
                ),
                # The floor: aiohttp's server and client relaying, nothing of airlock's.
                "bare": ([bare.target(TINY) for _ in range(level)], lambda: [bare.pid]),
            }
            order = list(targets)
            for rep in range(plan.latency_runs):
                k = rep % len(order)
                for path in order[k:] + order[:k]:
                    tlist, pids = targets[path]
                    row.runs[path].append(run_once(tlist, plan.latency_requests, pids()))
            log(
                f"  {level} sessions: p50/p99 direct {row.p('direct', 'p50_ms'):.1f}/"
                f"{row.p('direct', 'p99_ms'):.1f} ms, airlock {row.p('airlock', 'p50_ms'):.1f}/"
                f"{row.p('airlock', 'p99_ms'):.1f} ms, nginx {row.p('nginx', 'p50_ms'):.1f}/"
                f"{row.p('nginx', 'p99_ms'):.1f} ms"
            )
            self.report.latency.append(row)

    def run_egress(self) -> None:
        eb = EgressBench(self.root / "egress")
        eb.start()
        try:
            for direction in ("download", "upload"):
                row = eb.row(direction, self.plan.egress_bytes, self.plan.egress_runs)
                med = {k: f"{s.median:.0f} MiB/s" for k, s in row.samples.items()}
                log(f"  egress {direction}: {med}")
                self.report.egress.append(row)
        finally:
            eb.stop()

    def run_scale(self) -> None:
        n = self.plan.scale_sessions
        row = ScaleRow(n, {"direct": [], "airlock": []})
        self.world.restart_gateway()
        row.gw_idle_mb = peak_rss_mb(self.world.gateway_pid)
        work = self.root / "scale"
        for rep in range(self.plan.scale_runs):
            order = ["direct", "airlock"] if rep % 2 == 0 else ["airlock", "direct"]
            for path in order:
                if path == "airlock":
                    r = run_clones(
                        self.world, TINY, self.bundles[:n], n, work, [self.world.gateway_pid]
                    )
                else:
                    r = run_clones(self.world, TINY, None, n, work, [])
                row.runs[path].append(r)
                log(f"  scale {path}: {r.ok}/{n} ok in {r.seconds:.1f} s {r.errors[:2]}")
                for e in r.errors[:3]:
                    self.report.failures.append(f"scale {path}: {e}")
        row.gw_peak_mb = peak_rss_mb(self.world.gateway_pid)
        self.report.scale = row

    def run_sessions(self) -> None:
        self.report.sessions = run_sessions_section(self.root / "sessions", self.plan.quick)


def header(plan: Plan, started: dt.datetime, busy: list[str]) -> list[str]:
    v = versions()
    load = loadavg()
    mode = "quick (--quick)" if plan.quick else "full"
    return [
        f"- **date**: {started.strftime('%Y-%m-%d %H:%M %Z')} (mode: {mode})",
        f"- **commit**: {git_commit()}",
        f"- **machine**: {cpu_model()}, {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM, "
        f"{os_name()}, kernel {v['kernel']}",
        f"- **software**: Python {v['python']}, git {v['git']}, nginx {v['nginx']}, "
        f"squid {v['squid']}, {v['openssl']}",
        f"- **load at start**: loadavg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min, "
        f"includes whatever ran just before); processes busy in a 1 s sample: "
        f"{', '.join(busy) or 'none'}. The notes give, per section, the CPU share other "
        "processes took while it ran",
        "- **how**: every figure is the median of the runs shown; the paths run interleaved "
        "(rotating order) on the same upstream (git http-backend behind aiohttp over HTTPS, "
        "its own process). Ratios are median / median. 1 MiB = 2^20 bytes.",
        f"- **gateway config for the bench**: {BENCH_CONFIG_SUMMARY}",
    ]


def sandbox_section(quick: bool) -> str:
    """bench/sandbox_start.py's report (its own world and gateways), one heading level down."""
    from bench.sandbox_start import run_bench

    return _one_level_down(run_bench(3 if quick else 20))


def replicas_section(quick: bool) -> str:
    """bench/replicas.py's report (its own Redis and gateways), one heading level down."""
    from bench.replicas import run_bench

    return _one_level_down(run_bench(quick))


def _one_level_down(text: str) -> str:
    """A report of its own as a section of this one: every heading one level deeper."""
    return "\n" + "".join(
        "#" + line if line.startswith("#") else line for line in text.splitlines(keepends=True)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 runs, no 1 GiB repository")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    p.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {SECTIONS + EXTRA_SECTIONS} (default: {SECTIONS})",
    )
    p.add_argument("--publish", action="store_true", help=f"also copy the table to {LAST_RESULTS}")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS) - set(EXTRA_SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")

    # SIGTERM ends the run like Ctrl-C: the finally below stops every child process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = bool(sections & BASE_SECTIONS)  # the git world, nginx and squid are needed
    if base:
        ensure_packages()
    plan = Plan.make(args.quick)
    started = dt.datetime.now(dt.UTC)
    busy = busy_processes(exclude={os.getpid()})
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-"))
    os.chmod(root, 0o755)  # squid drops to its own user and must reach its directory
    bench = Bench(plan, root, sections)
    t0 = time.monotonic()
    extra: list[str] = []
    try:
        if base:
            bench.start()
        bench.section("git", bench.run_git)
        bench.section("latency", bench.run_latency)
        bench.section("egress", bench.run_egress)
        bench.section("scale", bench.run_scale)
        bench.section("sessions", bench.run_sessions)
        bench.section("sandbox", lambda: extra.append(sandbox_section(plan.quick)))
        bench.section("replicas", lambda: extra.append(replicas_section(plan.quick)))
    finally:
        if base:
            bench.stop()
        else:
            bench.world.loop.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"scratch kept in {root}")
    report = bench.report
    report.header = header(plan, started, busy)
    report.header.append(f"- **total time**: {(time.monotonic() - t0) / 60:.1f} min")
    text = render(report) + "".join(extra)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"written to {args.out}")
    if args.publish:
        LAST_RESULTS.write_text(text)
        log(f"copied to {LAST_RESULTS}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
