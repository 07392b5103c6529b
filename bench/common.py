"""Small helpers shared by the benchmark modules: /proc readings, statistics, machine facts."""

from __future__ import annotations

import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set size, in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(p) for p in text)
    except OSError:
        pass
    return out


def tree_pids(pid: int) -> list[int]:
    """A process and its direct children (nginx master + workers)."""
    return [pid, *children(pid)]


class CpuMeter:
    """CPU seconds used by a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self._before: dict[int, float] = {}

    def start(self) -> CpuMeter:
        self._before = {p: cpu_seconds(p) for p in self.pids}
        return self

    def stop(self) -> float:
        return sum(cpu_seconds(p) - self._before.get(p, 0.0) for p in self.pids)


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


@dataclass
class Samples:
    """Repeated measurements of one figure, with the resources the proxy used."""

    values: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hung: int = 0  # runs killed at their timeout

    @property
    def median(self) -> float:
        return median(self.values)

    @property
    def cpu_median(self) -> float:
        return median(self.cpu)


# --------------------------------------------------------------------------- network


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited ({proc.returncode}) before listening") from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                ) from None
            time.sleep(0.05)


def wait_file(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {path.name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def child_pythonpath() -> str:
    """PYTHONPATH for the bench's Python children: the repository (for bench.*), plus
    BENCH_PYTHONPATH (e.g. a ``pip install --target`` directory for an experiment)."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("BENCH_PYTHONPATH")]))


def die_with_parent() -> None:
    """preexec_fn for long-lived children: SIGTERM them if the bench itself dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM one process we started, then SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --------------------------------------------------------------------------- machine


def _cmd(*argv: str) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (r.stdout or r.stderr).strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def ram_gib() -> float:
    return _meminfo_kb("MemTotal") / 1024 / 1024


def _meminfo_kb(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return 0.0


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def git_commit() -> str:
    sha = _cmd("git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD")
    dirty = _cmd("git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no")
    return sha + (" (+ uncommitted changes)" if dirty and dirty != "?" else "")


def versions() -> dict[str, str]:
    nginx = _cmd("nginx", "-v").removeprefix("nginx version: ")
    squid = (_cmd("squid", "-v").splitlines() or ["?"])[0].removeprefix("Squid Cache: ")
    return {
        "python": platform.python_version(),
        "git": _cmd("git", "--version").removeprefix("git version "),
        "nginx": nginx,
        "squid": squid,
        "openssl": _ssl_version(),
        "kernel": platform.release(),
    }


def _ssl_version() -> str:
    import ssl

    return ssl.OPENSSL_VERSION


def loadavg() -> tuple[float, float, float]:
    a, b, c = Path("/proc/loadavg").read_text().split()[:3]
    return float(a), float(b), float(c)


def busy_processes(exclude: set[int], limit: int = 5) -> list[str]:
    """Other processes using CPU right now (a 1 s sample), to note the machine's load."""

    def snapshot() -> dict[int, tuple[str, float]]:
        snap: dict[int, tuple[str, float]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            pid = int(d.name)
            try:
                comm = (d / "comm").read_text().strip()
            except OSError:
                continue
            snap[pid] = (comm, cpu_seconds(pid))
        return snap

    a = snapshot()
    time.sleep(1.0)
    b = snapshot()
    used = []
    for pid, (comm, cpu) in b.items():
        if pid in exclude or pid not in a:
            continue
        delta = cpu - a[pid][1]
        if delta >= 0.02:
            used.append((delta, f"{comm} ({delta * 100:.0f}% CPU)"))
    used.sort(reverse=True)
    return [text for _, text in used[:limit]]


# --------------------------------------------------------------------------- machine load


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (user+nice+system+irq+softirq+steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def tree_cpu_total(pid: int) -> float:
    """CPU of a process tree, including the reaped children each process waited for."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(x) for x in f[11:15]) / _CLK_TCK  # utime stime cutime cstime
        stack.extend(children(p))
    return total


class LoadMonitor:
    """How much CPU other people's processes took while the bench ran (2 cores shared)."""

    def __init__(self) -> None:
        self.ncpu = os.cpu_count() or 1
        self._t = time.monotonic()
        self._busy = system_busy_seconds()
        self._ours = tree_cpu_total(os.getpid())

    def foreign_share(self) -> tuple[float, float]:
        """(share of all cores used by processes outside the bench, bench's share) since the
        previous call, each in 0..1."""
        t, busy, ours = time.monotonic(), system_busy_seconds(), tree_cpu_total(os.getpid())
        wall = max(1e-6, (t - self._t) * self.ncpu)
        foreign = max(0.0, (busy - self._busy) - (ours - self._ours)) / wall
        share = (ours - self._ours) / wall
        self._t, self._busy, self._ours = t, busy, ours
        return foreign, share
