"""Profile the gateway (or the standalone egress proxy) under one benchmark load with py-spy.

    .venv/bin/pip install py-spy     # a tool for this machine, not a project dependency
    .venv/bin/python -m bench.profile latency [--sessions 16] [--requests 4000]
    .venv/bin/python -m bench.profile clone [--size-mib 200]
    .venv/bin/python -m bench.profile push [--size-mib 200]
    .venv/bin/python -m bench.profile egress [--direction upload]

Prints the top functions by own ("self") and inclusive ("total") share of the samples where
the process was busy, and keeps py-spy's collapsed stacks (``--raw FILE``) for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import GiB, MiB, log
from bench.egress import EgressBench
from bench.gitbench import GitBench
from bench.latency import _run, airlock_target
from bench.proxies import Nginx
from bench.repos import SizeClass, build
from bench.world import HOST, BenchWorld, basic_auth

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _py_spy() -> str:
    """py-spy from PATH, or beside this interpreter (the venv's bin)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def _short(frame: str, with_line: bool) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "src/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = f":{m['line']}" if with_line and m["line"] else ""
    return f"{m['func']} ({path}{line})"


def summarize(raw: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[_short(frames[-1], False)] += n
        own_lines[_short(frames[-1], True)] += n
        for f in {_short(x, False) for x in frames}:
            incl[f] += n
    out = [f"{total} busy samples"]
    for title, counter in (("self", own), ("self, by line", own_lines), ("total", incl)):
        out.append(f"\n-- top {top} by {title} --")
        for name, n in counter.most_common(top):
            out.append(f"{100 * n / max(1, total):5.1f}%  {name}")
    return "\n".join(out)


def record(pid: int, seconds: float, raw: Path, load: Callable[[], None], native: bool) -> str:
    argv = [_py_spy(), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250"]
    # --gil: only samples where a thread holds the GIL, i.e. Python is running, not waiting.
    argv += ["-f", "raw", "-o", str(raw), "--nonblocking", "--gil"]
    if native:
        argv.append("--native")
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            load()

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    _, err = spy.communicate(timeout=seconds + 60)
    stop.set()
    worker.join(300)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
    return summarize(raw)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("load", choices=["latency", "clone", "push", "egress"])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--size-mib", type=int, default=200)
    p.add_argument("--direction", choices=["download", "upload"], default="upload")
    p.add_argument("--native", action="store_true", help="include C frames (slower sampling)")
    p.add_argument("--raw", type=Path, default=None, help="keep the collapsed stacks here")
    args = p.parse_args()
    if not Path(_py_spy()).exists():
        raise SystemExit(f"py-spy is not installed: {sys.executable} -m pip install py-spy")
    root = Path(tempfile.mkdtemp(prefix="airlock-profile-"))
    root.chmod(0o755)
    raw = args.raw or root / "stacks.txt"
    try:
        if args.load == "egress":
            eb = EgressBench(root / "egress")
            eb.start()
            try:
                assert eb.proxy is not None

                def transfer() -> None:
                    eb.transfer("airlock", args.direction, GiB // 4)

                summary = record(eb.proxy.pid, args.seconds, raw, transfer, args.native)
            finally:
                eb.stop()
        else:
            (root / "world").mkdir()
            w = BenchWorld(root / "world")
            w.start()
            try:
                summary = _git_load(w, root, args, raw)
            finally:
                w.stop()
        print(summary)
        if args.raw:
            log(f"collapsed stacks in {raw}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _git_load(w: BenchWorld, root: Path, args: argparse.Namespace, raw: Path) -> str:
    w.make_repo("acme", "tiny")
    if args.load == "latency":
        bundles = [w.session_retrying(f"{HOST}/acme/tiny:read") for _ in range(args.sessions)]
        targets = [airlock_target(w, b, "acme/tiny") for b in bundles]
        return record(
            w.gateway_pid,
            args.seconds,
            raw,
            lambda: asyncio.run(_run(targets, args.requests)) and None,
            args.native,
        )
    sc = SizeClass(f"{args.size_mib} MiB", args.size_mib * MiB, "prof")
    built = build(sc, w.repos, root / "git")
    bundle = w.session(f"{HOST}/acme/prof:write=bench-push")
    nginx = Nginx(root / "nginx", w.upstream.port, w.tls.ca_cert, basic_auth())
    gb = GitBench(w, nginx, bundle, root / "git")
    airlock = gb.paths[1]
    if args.load == "clone":

        def load() -> None:
            dest = root / "git" / "clone"
            gb.git(airlock, "clone", "-q", "--no-checkout", w.airlock_url(sc.repo), str(dest))
            shutil.rmtree(dest, ignore_errors=True)

        return record(w.gateway_pid, args.seconds, raw, load, args.native)
    from bench.repos import PushTarget, write_commit

    work = built.local_copy(root / "git" / "push")
    paths = [f"push/blob-{i:02d}.bin" for i in range(20)]
    write_commit(work / ".git", paths, args.size_mib * MiB, seed=4242, message="push")
    target = PushTarget(built.served)

    def push() -> None:
        gb.git(airlock, "push", "-q", w.airlock_url(sc.repo), f"main:{target.ref}", cwd=work)
        target.reset()

    return record(w.gateway_pid, args.seconds, raw, push, args.native)


if __name__ == "__main__":
    main()
