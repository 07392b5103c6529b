"""Gateways on one shared store (Redis), beside one gateway on its own SQLite file.

    .venv/bin/python -m bench.replicas [--quick] [--out bench/REPLICAS_RESULTS.md]
    .venv/bin/python -m bench.run --only replicas

Four figures, each beside what a user would compare it with:

1. ``info/refs`` on a kept-alive connection, one request at a time: straight to the upstream,
   through a gateway on SQLite, through a gateway on the shared store. The shared store
   costs one Redis round trip per request (the request is counted there).
2. The revocation delay: from the revocation's acknowledgement to the first refused request
   on the session's kept-alive connection. One gateway revoking its own session (SQLite)
   against three gateways where another one revokes it (Redis).
3. A session's request budget through three gateways: how many were served of the cap.
4. Redis stopped for 2 s while three gateways serve a steady load: requests served after
   the stop (must be none), and each gateway's time to serve again once Redis answers.

Everything runs on loopback: Debian's ``redis-server`` (airlock/testing/redis_server.py),
git's http-backend as each gateway's upstream, gateway processes as in the tests.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import os
import shutil
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.replicas_world import Client, Replica
from tests.world import TOKEN, World

from airlock.testing.redis_server import RedisServer
from bench.common import CpuMeter, git_commit, log, percentile

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "REPLICAS_RESULTS.md"
BUDGET = 300  # max_requests of the budget figure's session (its own gateway's setting)
CAP = 1_000_000  # max_requests of every other session: the latency runs must not reach it
# The per-session rate limit (1,200/minute by default) is not what is measured here.
LIMITS = '[limits]\nsession_requests = "1000000/minute"\n'
OUTAGE = 2.0  # seconds Redis is stopped


@dataclass
class Latency:
    path: str
    ms: list[float] = field(default_factory=list)
    cpu_ms: float = float("nan")  # gateway CPU per request
    errors: int = 0


@dataclass
class Results:
    latency: list[Latency] = field(default_factory=list)
    revocation: dict[str, list[float]] = field(default_factory=dict)  # ms
    budget: tuple[int, int, int] = (0, 0, 0)  # served, refused with 429, cap
    outage_served: int = 0
    outage_refused: dict[int, int] = field(default_factory=dict)  # status -> count
    recovery_ms: list[float] = field(default_factory=list)


class Direct:
    """The upstream itself, with the credential the gateway would add."""

    def __init__(self, w: World) -> None:
        ctx = ssl.create_default_context(cafile=str(w.tls.ca_cert))
        host, _, port = w.upstream.url.removeprefix("https://").partition(":")
        self.conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
        auth = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        self.headers = {"Git-Protocol": "version=2", "Authorization": f"Basic {auth}"}

    def get(self) -> int:
        path = "/acme/tiny.git/info/refs?service=git-upload-pack"
        self.conn.request("GET", path, headers=self.headers)
        r = self.conn.getresponse()
        r.read()
        return r.status

    def close(self) -> None:
        self.conn.close()


class Setup:
    def __init__(self, root: Path) -> None:
        self.redis = RedisServer(root / "redis")
        self.local: Replica | None = None
        self.shared: list[Replica] = []
        self.budget: Replica | None = None  # one more on the store, whose sessions get BUDGET
        self.root = root

    def start(self) -> None:
        self.redis.start()
        self.local = Replica(
            self.root / "local", "local", None, None, max_requests=CAP, config_extra=LIMITS
        )
        self.local.make_repo("acme", "tiny")
        self.local.start()
        for i in range(4):
            keys = self.shared[0].state_dir if self.shared else None
            cap = CAP if i < 3 else BUDGET
            g = Replica(
                self.root / f"shared{i}",
                f"host-{i}",
                self.redis.url,
                keys,
                max_requests=cap,
                config_extra=LIMITS,
            )
            g.make_repo("acme", "tiny")
            g.start()
            if i < 3:
                self.shared.append(g)
            else:
                self.budget = g

    def stop(self) -> None:
        for g in [self.local, *self.shared, self.budget]:
            if g is not None:
                g.stop()
        self.redis.kill()


def _pid(w: World) -> int:
    assert w.proc is not None
    return w.proc.pid


def measure_latency(s: Setup, n: int) -> list[Latency]:
    assert s.local is not None
    rows = [Latency("direct"), Latency("airlock, SQLite"), Latency("airlock, shared store")]
    direct = Direct(s.local)
    local_bundle = s.local.session("github.com/acme/tiny:read")
    shared_bundle = s.shared[0].session("github.com/acme/tiny:read")
    clients = [direct, Client(s.local, local_bundle), Client(s.shared[0], shared_bundle)]
    pids = [None, _pid(s.local), _pid(s.shared[0])]
    try:
        for c in clients:
            c.get()  # the TLS handshake and the first upstream connection, not counted
        # Interleaved in blocks, so a slow moment of the machine falls on every path.
        block = 50
        cpu = [0.0, 0.0, 0.0]
        for start in range(0, n, block):
            for k, (row, c, pid) in enumerate(zip(rows, clients, pids, strict=True)):
                meter = CpuMeter([pid] if pid else []).start()
                for _ in range(min(block, n - start)):
                    t0 = time.perf_counter()
                    status = c.get()
                    row.ms.append((time.perf_counter() - t0) * 1000)
                    row.errors += status != 200
                cpu[k] += meter.stop()
        for k, row in enumerate(rows):
            if pids[k]:
                row.cpu_ms = cpu[k] * 1000 / len(row.ms)
    finally:
        for c in clients:
            c.close()
    return rows


def _revocation_delay(serving: World, revoking: World) -> float:
    """ms from the acknowledged revocation to the first refused request on the session's
    kept-alive connection to ``serving``."""
    bundle = serving.session("github.com/acme/tiny:read")
    c = Client(serving, bundle)
    try:
        if c.get() != 200:
            raise RuntimeError("a fresh session was refused")
        revoking.control.revoke(bundle.session_id)
        t0 = time.perf_counter()
        deadline = time.monotonic() + 5
        while c.get() == 200:
            if time.monotonic() > deadline:
                raise RuntimeError("still served 5 s after the revocation")
        return (time.perf_counter() - t0) * 1000
    finally:
        c.close()


def measure_revocation(s: Setup, n: int) -> dict[str, list[float]]:
    assert s.local is not None
    local, shared = [], []
    for i in range(n):
        local.append(_revocation_delay(s.local, s.local))
        shared.append(_revocation_delay(s.shared[i % 3], s.shared[(i + 1) % 3]))
    return {
        "one gateway, SQLite (revoked through it)": local,
        "three gateways, shared store (revoked through another)": shared,
    }


def measure_budget(s: Setup) -> tuple[int, int, int]:
    assert s.budget is not None
    bundle = s.budget.session("github.com/acme/tiny:read")
    clients = [Client(g, bundle) for g in s.shared]
    try:
        statuses = [clients[i % 3].get() for i in range(BUDGET + 30)]
    finally:
        for c in clients:
            c.close()
    return statuses.count(200), statuses.count(429), BUDGET


def measure_outage(s: Setup, r: Results) -> None:
    bundles = [g.session("github.com/acme/tiny:read") for g in s.shared]
    log_: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def load(i: int) -> None:
        c = Client(s.shared[i], bundles[i])
        deadline = time.monotonic() + 30
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    status = c.get()
                except (OSError, http.client.HTTPException):
                    c.close()
                    c = Client(s.shared[i], bundles[i])
                    status = -1
                log_.append((sent, i, status))
                time.sleep(0.02)
        finally:
            c.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        s.redis.stop()
        stopped = time.monotonic()
        time.sleep(OUTAGE)
        s.redis.start()
        back = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    down = [e for e in log_ if stopped <= e[0] < back]
    r.outage_served = sum(1 for e in down if e[2] == 200)
    for e in down:
        r.outage_refused[e[2]] = r.outage_refused.get(e[2], 0) + 1
    for i in range(3):
        first = [e[0] for e in log_ if e[1] == i and e[0] >= back and e[2] == 200]
        r.recovery_ms.append((min(first) - back) * 1000 if first else float("nan"))


def _f(x: float, digits: int = 1) -> str:
    return "—" if x != x else f"{x:,.{digits}f}"


def render(r: Results, quick: bool, started: dt.datetime, took: float) -> str:
    out = [
        "# airlock benchmark: gateways on a shared store",
        "",
        f"- **date**: {started.strftime('%Y-%m-%d %H:%M %Z')} "
        f"(mode: {'quick' if quick else 'full'}), commit {git_commit()}",
        f"- **machine**: {os.cpu_count()} cores; everything on loopback (Redis 7, "
        "appendfsync always)",
        f"- **total time**: {took / 60:.1f} min",
        "",
        "## info/refs on a kept-alive connection, one at a time",
        "",
        "| path | requests | p50 ms | p99 ms | gateway CPU ms/request | errors |",
        "|---|---|---|---|---|---|",
    ]
    for row in r.latency:
        ms = sorted(row.ms)
        out.append(
            f"| {row.path} | {len(ms)} | {_f(percentile(ms, 50), 2)} | "
            f"{_f(percentile(ms, 99), 2)} | {_f(row.cpu_ms, 2)} | {row.errors} |"
        )
    out += [
        "",
        "## revocation delay (acknowledged -> next request refused)",
        "",
        "| gateways | sessions | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for name, values in r.revocation.items():
        v = sorted(values)
        out.append(
            f"| {name} | {len(v)} | {_f(percentile(v, 50))} | {_f(percentile(v, 99))} | "
            f"{_f(v[-1] if v else float('nan'))} |"
        )
    served, refused, cap = r.budget
    out += [
        "",
        "## one session's request budget through three gateways",
        "",
        "| cap | requests sent | served | refused (429) | exact |",
        "|---|---|---|---|---|",
        f"| {cap} | {cap + 30} | {served} | {refused} | {'yes' if served == cap else '**no**'} |",
        "",
        f"## Redis stopped for {OUTAGE:.0f} s under load from three gateways",
        "",
        "| requests sent while down | served while down | answers while down | "
        "recovery per gateway, ms |",
        "|---|---|---|---|",
        f"| {sum(r.outage_refused.values())} | {r.outage_served} | "
        + ", ".join(f"{k}: {v}" for k, v in sorted(r.outage_refused.items()))
        + " | "
        + ", ".join(_f(x, 0) for x in r.recovery_ms)
        + " |",
        "",
        "Recovery: from Redis answering again to the gateway's first request served. The "
        "answers while down include requests sent in the first moment of the outage, before "
        "a gateway's listener noticed: they were refused too (Redis counts every request).",
    ]
    return "\n".join(out) + "\n"


def run_bench(quick: bool) -> str:
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-replicas-"))
    s = Setup(root)
    r = Results()
    try:
        log("replicas: starting Redis, one gateway on SQLite, three on the shared store")
        s.start()
        log("replicas: info/refs latency")
        r.latency = measure_latency(s, 300 if quick else 2000)
        log("replicas: revocation delay")
        r.revocation = measure_revocation(s, 30 if quick else 300)
        log("replicas: budget across gateways")
        r.budget = measure_budget(s)
        log("replicas: Redis outage under load")
        measure_outage(s, r)
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)
    return render(r, quick, started, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer requests and sessions")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    text = run_bench(args.quick)
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
