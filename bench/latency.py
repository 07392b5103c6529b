"""info/refs round trips at 1, 16 and 64 concurrent sessions, in-process aiohttp clients.

Each session is one keep-alive connection with its own client certificate (through airlock)
or the upstream's Authorization header (direct). Every session does one untimed warm-up
request (TLS handshake), then its share of the run's requests back to back. The request is
what git sends first: ``GET …/info/refs?service=git-upload-pack`` with ``Git-Protocol:
version=2``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import CpuMeter, median, percentile
from bench.world import BenchWorld, Bundle, basic_auth

HEADERS = {
    "Git-Protocol": "version=2",
    "User-Agent": "git/2.39.5",
    "Accept": "*/*",
    "Pragma": "no-cache",
}
# With Git-Protocol: version=2, http-backend answers with the v2 capability advertisement.
ADVERTISEMENT = b"000eversion 2\n"
REQUEST_TIMEOUT = 30.0
RUN_TIMEOUT = 600.0


@dataclass
class Target:
    url: str
    ssl: ssl.SSLContext
    headers: dict[str, str]
    server_hostname: str | None = None


@dataclass
class LatencyRun:
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    seconds: float
    proxy_cpu: float


@dataclass
class LatencyRow:
    sessions: int
    requests: int  # per run
    runs: dict[str, list[LatencyRun]] = field(default_factory=dict)

    def p(self, path: str, which: str) -> float:
        return median([getattr(r, which) for r in self.runs.get(path, [])])

    def cpu_ms(self, path: str) -> float:
        """Median over the runs of ``path``'s proxy CPU per request, in ms."""
        return median([r.proxy_cpu / max(1, r.requests) * 1000 for r in self.runs.get(path, [])])

    def errors(self, path: str) -> int:
        return sum(r.errors for r in self.runs.get(path, []))


def airlock_target(world: BenchWorld, bundle: Bundle, repo: str) -> Target:
    ctx = ssl.create_default_context(cafile=str(bundle.dir / "ca.pem"))
    ctx.load_cert_chain(bundle.dir / "client.pem", bundle.dir / "client.key")
    url = f"https://127.0.0.1:{world.port}/git/github.com/{repo}/info/refs?service=git-upload-pack"
    return Target(url, ctx, dict(HEADERS), server_hostname="airlock.internal")


def direct_target(world: BenchWorld, repo: str) -> Target:
    ctx = ssl.create_default_context(cafile=str(world.tls.ca_cert))
    url = f"{world.direct_url(repo)}/info/refs?service=git-upload-pack"
    return Target(url, ctx, {**HEADERS, "Authorization": basic_auth()})


def nginx_target(url_base: str, ca: Path) -> Target:
    ctx = ssl.create_default_context(cafile=str(ca))
    return Target(f"{url_base}/info/refs?service=git-upload-pack", ctx, dict(HEADERS))


async def _session(target: Target, n: int, out: list[float], errors: list[str]) -> None:
    connector = aiohttp.TCPConnector(ssl=target.ssl, limit=1)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one() -> bool:
            try:
                async with http.get(
                    target.url, headers=target.headers, server_hostname=target.server_hostname
                ) as r:
                    body = await r.read()
                    if r.status != 200 or not body.startswith(ADVERTISEMENT):
                        errors.append(f"status {r.status}: {body[:80]!r}")
                        return False
                    return True
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return False

        await one()  # warm-up: TLS handshake, not timed
        for _ in range(n):
            t0 = time.perf_counter()
            if await one():
                out.append(time.perf_counter() - t0)


async def _run(targets: list[Target], total: int) -> tuple[list[float], list[str], float]:
    per = max(1, total // len(targets))
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(_session(t, per, latencies, errors) for t in targets)), RUN_TIMEOUT
    )
    return latencies, errors, time.perf_counter() - t0


def run_once(targets: list[Target], total: int, proxy_pids: list[int]) -> LatencyRun:
    meter = CpuMeter(proxy_pids).start()
    latencies, errors, seconds = asyncio.run(_run(targets, total))
    cpu = meter.stop()
    latencies.sort()
    return LatencyRun(
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        requests=len(latencies),
        errors=len(errors),
        seconds=seconds,
        proxy_cpu=cpu,
    )
