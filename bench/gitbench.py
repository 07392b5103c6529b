"""git over smart HTTP: direct to the upstream, through airlock, through nginx.

Every figure is the wall time of one git command (clone, shallow clone, fetch, push). The
three paths run interleaved, rotating their order on each repetition, so slow drifts in the
machine's load hit all of them alike. The gateway is restarted before each operation of
each size class, so its VmHWM afterwards is that operation's peak.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from airlock.testing.repos import git_env
from bench.common import CpuMeter, GiB, MiB, Samples, log, peak_rss_mb
from bench.proxies import Nginx
from bench.repos import BuiltRepo, PushTarget, SizeClass, build, remove, write_commit
from bench.world import BenchWorld, Bundle, basic_auth

GIT_TIMEOUT = 1800.0
HUNG = -999  # returncode for a git command the bench killed at its timeout


@dataclass
class GitPath:
    name: str
    url: Callable[[str], str]
    config: list[str]
    bundle: Bundle | None
    pids: Callable[[], list[int]]  # the proxy's processes, for CPU seconds ([] for direct)


@dataclass
class GitRow:
    op: str
    size: str
    moved: str  # what the operation transfers, in words
    runs: int
    samples: dict[str, Samples] = field(default_factory=dict)
    gw_idle_mb: float = 0.0  # VmHWM right after the restart
    gw_peak_mb: float = 0.0  # VmHWM after all airlock runs of this row
    note: str = ""


class GitBench:
    def __init__(self, world: BenchWorld, nginx: Nginx, bundle: Bundle, work: Path) -> None:
        self.world = world
        self.nginx = nginx
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.paths = [
            GitPath(
                "direct",
                world.direct_url,
                [
                    "-c",
                    f"http.extraHeader=Authorization: {basic_auth()}",
                    "-c",
                    f"http.sslCAInfo={world.tls.ca_cert}",
                ],
                None,
                lambda: [],
            ),
            GitPath("airlock", world.airlock_url, [], bundle, lambda: [world.gateway_pid]),
            GitPath("nginx", nginx.url, ["-c", f"http.sslCAInfo={nginx.ca}"], None, nginx.pids),
        ]
        # Direct again, with the bundle's trick (an empty sslCAPath: curl loads only the CA
        # file, not the machine's CA directory): airlock beside it is the gateway's own cost.
        empty = self.work / "empty-ca-dir"
        empty.mkdir(exist_ok=True)
        direct = self.paths[0]
        self.paths.append(
            GitPath(
                "direct-cadir",
                direct.url,
                [*direct.config, "-c", f"http.sslCAPath={empty}"],
                None,
                direct.pids,
            )
        )
        self._n = 0

    # --- running git --------------------------------------------------------------------

    def git(
        self,
        path: GitPath | None,
        *args: str,
        cwd: Path | None = None,
        timeout: float = GIT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run git; on timeout kill its whole process group (remote-https, pack-objects...)."""
        extra = {"GIT_CONFIG_GLOBAL": str(path.bundle.gitconfig)} if path and path.bundle else {}
        env = git_env(self.world.home, GIT_TERMINAL_PROMPT="0", **extra)
        argv = ["git", *(path.config if path else []), *args]
        with subprocess.Popen(
            argv,
            cwd=cwd or self.work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                return subprocess.CompletedProcess(argv, HUNG, out, err + "\n[bench: timed out]")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def timed(
        self,
        path: GitPath,
        samples: Samples,
        *args: str,
        cwd: Path | None = None,
        timeout: float = GIT_TIMEOUT,
    ) -> bool:
        meter = CpuMeter(path.pids()).start()
        t0 = time.monotonic()
        r = self.git(path, *args, cwd=cwd, timeout=timeout)
        elapsed = time.monotonic() - t0
        cpu = meter.stop()
        if r.returncode == HUNG:
            samples.hung += 1
            samples.errors.append(f"{path.name}: git {args[0]} hung (killed after {timeout:.0f} s)")
            log(samples.errors[-1])
            return False
        if r.returncode != 0:
            samples.errors.append(
                f"{path.name}: git {args[0]} rc={r.returncode}: {r.stderr.strip()[-300:]}"
            )
            log(samples.errors[-1])
            return False
        samples.values.append(elapsed)
        samples.cpu.append(cpu)
        return True

    def _dest(self, tag: str) -> Path:
        self._n += 1
        return self.work / f"{tag}-{self._n}"

    def _order(self, rep: int) -> list[GitPath]:
        k = rep % len(self.paths)
        return self.paths[k:] + self.paths[:k]

    # --- operations ---------------------------------------------------------------------

    def _row(self, op: str, sc: SizeClass, moved: str, reps: int) -> GitRow:
        row = GitRow(op, sc.label, moved, reps)
        row.samples = {p.name: Samples() for p in self.paths}
        self.world.restart_gateway()
        row.gw_idle_mb = peak_rss_mb(self.world.gateway_pid)
        return row

    def _finish(self, row: GitRow) -> GitRow:
        row.gw_peak_mb = peak_rss_mb(self.world.gateway_pid)
        med = {k: f"{s.median:.2f}s" for k, s in row.samples.items()}
        log(f"  {row.op} {row.size}: {med}; gateway peak {row.gw_peak_mb:.0f} MB")
        return row

    def clone(self, built: BuiltRepo, reps: int, shallow: bool) -> GitRow:
        sc = built.size_class
        op = "shallow clone (--depth 1)" if shallow else "full clone"
        moved = (
            f"~{sc.size // 4 // MiB + 1} MiB" if shallow else f"~{built.pack_bytes() // MiB} MiB"
        )
        row = self._row(op, sc, moved, reps)
        head = self.git(None, "--git-dir", str(built.served), "rev-parse", "main").stdout.strip()
        for rep in range(reps):
            for path in self._order(rep):
                dest = self._dest("clone")
                extra = ["--depth", "1"] if shallow else []
                url = path.url(sc.repo)
                ok = self.timed(
                    path,
                    row.samples[path.name],
                    "clone",
                    "-q",
                    "--no-checkout",
                    *extra,
                    url,
                    str(dest),
                )
                if ok:
                    got = self.git(None, "--git-dir", str(dest / ".git"), "rev-parse", "HEAD")
                    if got.stdout.strip() != head:
                        row.samples[path.name].errors.append(f"{path.name}: wrong HEAD")
                shutil.rmtree(dest, ignore_errors=True)
        return self._finish(row)

    def fetch(self, built: BuiltRepo, reps: int) -> GitRow:
        sc = built.size_class
        row = self._row("incremental fetch", sc, "1 commit, 1 MiB", reps)
        head = self.git(None, "--git-dir", str(built.served), "rev-parse", "main").stdout.strip()
        for rep in range(reps):
            for path in self._order(rep):
                dest = built.local_copy(self._dest("fetch"))
                url = path.url(sc.repo)
                refspec = "+refs/heads/main:refs/remotes/origin/main"
                ok = self.timed(path, row.samples[path.name], "fetch", "-q", url, refspec, cwd=dest)
                if ok:
                    got = self.git(None, "rev-parse", "refs/remotes/origin/main", cwd=dest)
                    if got.stdout.strip() != head:
                        row.samples[path.name].errors.append(f"{path.name}: fetch missed the tip")
                shutil.rmtree(dest, ignore_errors=True)
        return self._finish(row)

    def push(
        self, built: BuiltRepo, size: int, reps: int, seed: int, *, fast_forward: bool = False
    ) -> GitRow:
        """Push a new commit of ``size`` bytes: as a new branch, or (``fast_forward``) as an
        update of an existing branch, which airlock allows only once it has proven the
        fast-forward from the pushed commits (an ``ff:`` grant)."""
        sc = built.size_class
        label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
        work = built.local_copy(self._dest("push"))
        base = self.git(None, "rev-parse", "HEAD", cwd=work).stdout.strip()
        paths = [f"push/{seed}/blob-{i:02d}.bin" for i in range(20)]
        write_commit(work / ".git", paths, size, seed=seed, message=f"push {label}")
        new = self.git(None, "rev-parse", "HEAD", cwd=work).stdout.strip()
        target = PushTarget(built.served, PushTarget.FF_REF if fast_forward else PushTarget.REF)
        what = "fast-forward (proven)" if fast_forward else "of new objects"
        row = self._row(f"push {label} {what}", sc, f"{label} up", reps)
        # nginx stops sending a request body once the upstream's response head arrives (see
        # bench/proxies.py): give its pushes a timeout and stop trying after one hangs.
        nginx_timeout = 30 + size / (20 * MiB)
        for rep in range(reps):
            for path in self._order(rep):
                samples = row.samples[path.name]
                if path.name == "nginx" and samples.hung:
                    continue
                if fast_forward:
                    target.point_at(base)
                url = path.url(sc.repo)
                timeout = nginx_timeout if path.name == "nginx" else GIT_TIMEOUT
                ok = self.timed(
                    path,
                    samples,
                    "push",
                    "-q",
                    url,
                    f"main:{target.ref}",
                    cwd=work,
                    timeout=timeout,
                )
                if ok:
                    got = self.git(None, "--git-dir", str(built.served), "rev-parse", target.ref)
                    if got.stdout.strip() != new:
                        row.samples[path.name].errors.append(f"{path.name}: push not applied")
                target.reset()
        shutil.rmtree(work, ignore_errors=True)
        return self._finish(row)

    # --- a whole size class ---------------------------------------------------------------

    def size_class(
        self, sc: SizeClass, reps: int, push_sizes: list[int], note: str = ""
    ) -> list[GitRow]:
        log(f"git: building {sc.label} repository")
        t0 = time.monotonic()
        built = build(sc, self.world.repos, self.work)
        packs = built.pack_bytes() / MiB
        log(f"git: {sc.label}: packs {packs:.0f} MiB, built in {time.monotonic() - t0:.0f} s")
        rows: list[GitRow] = []
        try:
            rows.append(self.clone(built, reps, shallow=False))
            rows.append(self.clone(built, reps, shallow=True))
            rows.append(self.fetch(built, reps))
            for i, size in enumerate(push_sizes):
                rows.append(self.push(built, size, reps, seed=9000 + i))
            if push_sizes:
                rows.append(self.push(built, max(push_sizes), reps, seed=9100, fast_forward=True))
        finally:
            remove(built)
        for r in rows:
            r.note = note
        return rows
