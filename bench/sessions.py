"""The gateway's cost against the number of sessions in its store: 10, 1,000 and 10,000.

Sessions are never removed from the store (ended ones stay, so their tokens are answered
"session ended"), so a long-running gateway holds many; nothing on a request's path may cost
more for that. At each level N the store holds N sessions and this measures, on a gateway
process of its own (its own world: upstream, gateway, a TLS sink, all on 127.0.0.1):

- ``info/refs`` p50/p99 for one session on a keep-alive connection (bench/latency.py's
  ``run_once``/``airlock_target``);
- ``POST /v1/sessions`` p50/p99 through the real control API (the CSRs made beforehand, so
  the client's key generation is not timed; paced below the control API's 100/s limit);
- CONNECT tunnel set-up through the gateway's egress proxy on a sandbox listener (connect,
  ``CONNECT`` with the session's proxy token, ``200``, TLS handshake with the sink inside):
  every new proxy connection authenticates (server.py ``_authenticate_proxy``);
- the gateway's RSS (``VmRSS``) after the ``info/refs`` runs, and again with ``TUNNELS`` idle
  tunnels open (after their TLS handshakes): memory per idle session is
  (RSS at 10,000 - RSS at 10) / 9,990, memory per open tunnel (RSS with - RSS before) / TUNNELS.

The filler sessions are written to the store's SQLite file while the gateway is stopped (a
copy of a real session with its own id, token digests and binding to an address of its own,
10.0.0.0/8; creating 10,000 through the control API would take minutes at its rate limit),
then the gateway is started and loads them as after any restart. The levels are visited in a
rotating order, ``rounds`` times, each visit on a freshly started gateway (the fillers and the
sessions the last visit created are removed first), so a change in the machine's load hits
all levels alike. Figures are medians over the visits (latency: of each visit's p50/p99).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import secrets
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from airlock.core.session import Binding, Session, SessionState, hash_proxy_token, new_session_id
from airlock.gateway.pki import make_csr, new_private_key
from airlock.host.control_client import ControlClient, ControlError
from airlock.testing.ports import free_port
from airlock.testing.tls import make_test_ca_and_server_cert
from bench.common import (
    REPO_ROOT,
    CpuMeter,
    child_pythonpath,
    die_with_parent,
    log,
    median,
    percentile,
    stop_process,
    wait_file,
)
from bench.latency import LatencyRun, airlock_target, run_once
from bench.world import HOST, BenchWorld, Bundle

LEVELS = (10, 1000, 10000)
FLAT_RATIO = 1.10  # p50 at every N within 10 % of the others: max / min
TUNNELS = 200
CREATES = 200  # per level, spread over the rounds
CREATE_RATE = 80.0  # per second: below the control API's own limit (100/s)
LISTEN = "127.0.0.150"  # the "sandbox network's" gateway address (a sandbox listener)
SOURCE = "127.0.0.151"  # the "sandbox's" own address, the tunnel session's binding
SINK_NAME = "sink.sessions.bench.test"
TINY = "acme/tiny"
IO_TIMEOUT = 10.0
SECTION_BUDGET = 900.0  # seconds: the visits stop when this has gone by


@dataclass
class Visit:
    """One visit to one level, on a freshly started gateway."""

    info_refs: LatencyRun
    create_ms: list[float]
    tunnel_ms: list[float]
    rss_kib: float
    rss_tunnels_kib: float
    tunnels: int
    create_cpu_ms: float  # the gateway's CPU per create
    tunnel_cpu_ms: float  # the gateway's CPU per tunnel set-up
    errors: list[str] = field(default_factory=list)


@dataclass
class Level:
    sessions: int
    visits: list[Visit] = field(default_factory=list)

    def info_refs(self, which: str) -> float:
        return median([getattr(v.info_refs, which) for v in self.visits])

    def create(self, q: float) -> float:
        return percentile(sorted(ms for v in self.visits for ms in v.create_ms), q)

    def tunnel(self, q: float) -> float:
        return percentile(sorted(ms for v in self.visits for ms in v.tunnel_ms), q)

    @property
    def rss_kib(self) -> float:
        return median([v.rss_kib for v in self.visits])

    @property
    def per_tunnel_kib(self) -> float:
        return median(
            [(v.rss_tunnels_kib - v.rss_kib) / v.tunnels for v in self.visits if v.tunnels]
        )

    def cpu_ms(self, which: str) -> float:
        """The gateway's CPU per create (``create_cpu_ms``) or tunnel (``tunnel_cpu_ms``)."""
        return median([getattr(v, which) for v in self.visits])

    @property
    def errors(self) -> list[str]:
        return [e for v in self.visits for e in v.errors]

    @property
    def gateway_cpu_ms(self) -> float:
        """Gateway CPU per info/refs request."""
        return median(
            [v.info_refs.proxy_cpu / max(1, v.info_refs.requests) * 1000 for v in self.visits]
        )


@dataclass
class SessionsResult:
    levels: list[Level]
    info_refs_requests: int
    tunnels: int

    def level(self, n: int) -> Level | None:
        return next((lv for lv in self.levels if lv.sessions == n and lv.visits), None)

    @property
    def per_session_kib(self) -> float:
        lo, hi = self.level(min(LEVELS)), self.level(max(LEVELS))
        if lo is None or hi is None:
            return float("nan")
        return (hi.rss_kib - lo.rss_kib) / (hi.sessions - lo.sessions)

    @property
    def per_tunnel_kib(self) -> float:
        return median([lv.per_tunnel_kib for lv in self.levels if lv.visits])

    def spread(self, values: list[float]) -> float:
        """max / min of the per-level figures (nan if one is missing)."""
        if len(values) < len(LEVELS) or any(math.isnan(v) for v in values) or min(values) <= 0:
            return float("nan")
        return max(values) / min(values)


def rss_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return float("nan")


def _extra(sink_port: int, proxy_port: int) -> str:
    return f"""
[egress]
connect_ports = [{sink_port}]
max_tunnels_per_session = {TUNNELS + 56}   # default 64: one session holds all {TUNNELS}
session_tunnels = "100000/minute"          # default 600/minute: {TUNNELS} per visit, many visits

[[egress.static]]
name = "{SINK_NAME}"
addresses = ["127.0.0.1"]
allow_private = true

[sandbox]
proxy_port = {proxy_port}
"""


class SessionsBench:
    def __init__(self, root: Path, rounds: int, info_refs_requests: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.rounds = rounds
        self.requests = info_refs_requests
        self.tls = make_test_ca_and_server_cert(root / "sink-tls", [SINK_NAME], ["127.0.0.1"])
        self.sink_ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        self.sink: subprocess.Popen[bytes] | None = None
        self.sink_port = 0
        self.proxy_port = free_port()
        self.world: BenchWorld | None = None
        self.probe: Bundle | None = None
        self.proxy_token = ""
        self.base: set[str] = set()  # the sessions every level keeps (probe, tunnel session)
        self.fillers: list[tuple[str, str]] = []  # (id, body) rows, made once

    # --- set-up -----------------------------------------------------------------------------

    def start(self) -> None:
        ready = self.root / "sink.ready"
        self.sink = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.tls_sink",
                "--ready",
                str(ready),
                "--cert",
                str(self.tls.server_cert),
                "--key",
                str(self.tls.server_key),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": child_pythonpath()},
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "sink.stderr", "ab"),
            preexec_fn=die_with_parent,
        )
        self.sink_port = int(wait_file(ready, 30, self.sink))
        (self.root / "world").mkdir()
        w = BenchWorld(
            self.root / "world",
            extra=_extra(self.sink_port, self.proxy_port),
            gateway_extra=f"dns_port = {free_port()}\n",
        )
        self.world = w
        w.start()
        w.make_repo("acme", "tiny")
        w.control.add_listener(LISTEN)
        self.probe = w.session(f"{HOST}/{TINY}:read")
        issued, _key = w.issue(allow_hosts=[SINK_NAME], require_activation=True)
        tunnel_id = issued["session"]["id"]
        w.control.activate(
            tunnel_id,
            container_id=secrets.token_hex(32),
            network="bench-sessions",
            address=SOURCE,
            gateway_address=LISTEN,
        )
        self.proxy_token = issued["proxy_token"]
        self.base = {self.probe.session_id, tunnel_id}
        template = w.control.show(self.probe.session_id)
        self.fillers = _fillers(template, max(LEVELS) - len(self.base))

    def stop(self) -> None:
        if self.world is not None:
            self.world.stop()
        stop_process(self.sink)

    # --- one visit --------------------------------------------------------------------------

    def _fill(self, n: int) -> None:
        """With the gateway stopped: the store holds the base sessions and ``n - base``
        fillers, nothing else."""
        assert self.world is not None
        db = sqlite3.connect(self.world.state_dir / "sessions.sqlite3", isolation_level=None)
        try:
            db.execute("BEGIN")
            ids = [r[0] for r in db.execute("SELECT id FROM sessions")]
            db.executemany(
                "DELETE FROM sessions WHERE id = ?", [(i,) for i in ids if i not in self.base]
            )
            db.executemany(
                "INSERT INTO sessions (id, body) VALUES (?, ?)",
                self.fillers[: max(0, n - len(self.base))],
            )
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def visit(self, n: int, creates: int) -> Visit:
        w = self.world
        assert w is not None and self.probe is not None
        w.stop_gateway()
        self._fill(n)
        w.start_gateway()
        pid = w.gateway_pid
        health = w.control.health()
        if health.get("sessions") != n:
            raise RuntimeError(f"the gateway holds {health.get('sessions')} sessions, not {n}")
        errors: list[str] = []
        target = airlock_target(w, self.probe, TINY)
        refs = run_once([target], self.requests, [pid])
        if refs.errors:
            errors.append(f"info/refs at {n}: {refs.errors} errors")
        rss = rss_kib(pid)
        meter = CpuMeter([pid]).start()
        tunnel_ms, socks, tunnel_errors = self._tunnels(TUNNELS)
        tunnel_cpu = meter.stop() * 1000 / max(1, len(tunnel_ms))
        errors += tunnel_errors[:3]
        try:
            time.sleep(1.0)  # the tunnels settle (their first recheck is 5 s away)
            rss_tunnels = rss_kib(pid)
        finally:
            for s in socks:
                s.close()
        csrs = [make_csr(new_private_key()).decode() for _ in range(creates)]
        meter = CpuMeter([pid]).start()
        create_ms, create_errors = self._creates(w.control, csrs)
        create_cpu = meter.stop() * 1000 / max(1, len(create_ms))
        errors += create_errors[:3]
        return Visit(
            refs,
            create_ms,
            tunnel_ms,
            rss,
            rss_tunnels,
            len(socks),
            create_cpu,
            tunnel_cpu,
            errors,
        )

    def _tunnels(self, count: int) -> tuple[list[float], list[ssl.SSLSocket], list[str]]:
        """Open ``count`` idle tunnels (after the TLS handshake); each one's set-up in ms."""
        times: list[float] = []
        socks: list[ssl.SSLSocket] = []
        errors: list[str] = []
        deadline = time.monotonic() + 120
        target = f"{SINK_NAME}:{self.sink_port}"
        cred = _basic(self.proxy_token)
        request = (
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {cred}\r\n\r\n"
        ).encode()
        for _ in range(count):
            if time.monotonic() > deadline:
                errors.append("tunnels: 120 s budget used up")
                break
            t0 = time.perf_counter()
            try:
                raw = socket.create_connection(
                    (LISTEN, self.proxy_port), timeout=IO_TIMEOUT, source_address=(SOURCE, 0)
                )
                try:
                    raw.sendall(request)
                    _read_head(raw)
                    tls = self.sink_ctx.wrap_socket(raw, server_hostname=SINK_NAME)
                except BaseException:
                    raw.close()
                    raise
            except (OSError, ConnectionError) as exc:
                errors.append(f"tunnel: {type(exc).__name__}: {exc}")
                continue
            times.append((time.perf_counter() - t0) * 1000)
            socks.append(tls)
        return times, socks, errors

    def _creates(self, control: ControlClient, csrs: list[str]) -> tuple[list[float], list[str]]:
        grants = [f"{HOST}/{TINY}:read"]
        times: list[float] = []
        errors: list[str] = []
        gap = 1.0 / CREATE_RATE
        deadline = time.monotonic() + 60
        for csr in csrs:
            if time.monotonic() > deadline:
                errors.append("creates: 60 s budget used up")
                break
            t0 = time.perf_counter()
            try:
                control.create_session(grants=grants, csr=csr)
            except (ControlError, OSError) as exc:
                errors.append(f"create: {exc}")
                continue
            took = time.perf_counter() - t0
            times.append(took * 1000)
            time.sleep(max(0.0, gap - took))
        return times, errors

    # --- the section ------------------------------------------------------------------------

    def run(self) -> SessionsResult:
        levels = [Level(n) for n in LEVELS]
        per_visit = math.ceil(CREATES / self.rounds)
        t_end = time.monotonic() + SECTION_BUDGET
        for r in range(self.rounds):
            k = r % len(levels)
            for lv in levels[k:] + levels[:k]:
                if time.monotonic() > t_end:
                    log(f"  sessions: {SECTION_BUDGET:.0f} s budget used up")
                    break
                v = self.visit(lv.sessions, per_visit)
                lv.visits.append(v)
                log(
                    f"  {lv.sessions} sessions: info/refs p50 {v.info_refs.p50_ms:.2f} ms, "
                    f"create p50 {percentile(sorted(v.create_ms), 50):.2f} ms, "
                    f"tunnel p50 {percentile(sorted(v.tunnel_ms), 50):.2f} ms, "
                    f"RSS {v.rss_kib / 1024:.1f} MiB (+{v.tunnels} tunnels "
                    f"{(v.rss_tunnels_kib - v.rss_kib) / 1024:.1f} MiB) {v.errors[:2]}"
                )
        return SessionsResult(levels, self.requests, TUNNELS)


def _basic(token: str) -> str:
    return base64.b64encode(f"airlock:{token}".encode()).decode()


def _read_head(sock: socket.socket) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed during CONNECT: {head[:200]!r}")
        head += chunk
        if len(head) > 16384:
            raise ConnectionError("CONNECT response head too large")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise ConnectionError(f"CONNECT refused: {status!r}")


def _fillers(template: dict[str, object], count: int) -> list[tuple[str, str]]:
    """``count`` sessions like ``template`` (a real one, its certificate included), each with
    its own id, token digests, certificate fingerprint and binding (an address in 10/8)."""
    base = Session.from_json(dict(template))
    rows = []
    for i in range(count):
        s = dataclasses.replace(
            base,
            id=new_session_id(),
            state=SessionState.ACTIVE,
            binding=Binding(
                container_id=secrets.token_hex(32),
                network=f"bench-{i}",
                address=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                gateway_address="10.255.255.254",
            ),
            cert_fingerprint=secrets.token_hex(32),
            proxy_token_sha256=hash_proxy_token(secrets.token_urlsafe(24)),
            git_secret_sha256=hash_proxy_token(secrets.token_urlsafe(32)),
            api_token_sha256=hash_proxy_token(secrets.token_urlsafe(30)),
        )
        rows.append((s.id, json.dumps(s.to_json())))
    return rows


def run_section(root: Path, quick: bool) -> SessionsResult:
    bench = SessionsBench(root, rounds=3 if quick else 5, info_refs_requests=500 if quick else 1000)
    try:
        bench.start()
        return bench.run()
    finally:
        bench.stop()
