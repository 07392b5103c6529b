"""What the gateway's GitHub API relay costs, against handing the agent the real token.

    .venv/bin/python -m bench.api_relay [--runs 30] [--out bench/API_RESULTS.md]

Every row is measured two ways, interleaved in one run (one untimed warm-up each, the rows
in a rotating order, the two paths of a row alternating which goes first):

- *airlock*: through the gateway's egress proxy (CONNECT with the session's proxy token from
  a bound source address, TLS terminated with the interception CA, the request decided by
  the API policy and relayed with aiohttp to the upstream API), with the session's GH_TOKEN;
- *direct*: straight to the GitHub API double with the upstream's real token.

Rows: 1. REST ``GET /repos/{o}/{r}`` on a kept-alive connection; 2. the same on a new
connection per request; 3. gh's ``RepositoryInfo`` GraphQL query on a kept-alive connection
(rows 1-3: Python's http.client + ssl, one request per run); 4. ``gh pr view 1 --json
number,title``; 5. ``gh pr create`` from a branch pushed beforehand (untimed), a fresh
session per airlock run, as a sandbox's first pull request (rows 4-5: the real gh, process
wall time). The double, the git upstream and the gateway each run in a process of their own;
everything listens on loopback. See bench/README.md, "GitHub API relay".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime as dt
import http.client
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.github_cli import GH, ConnectProxy, gh_env
from tests.world import HOST, TOKEN

from airlock.host.bundle import GatewayEndpoint, write_api_trust, write_bundle
from airlock.testing.ports import free_port
from airlock.testing.repos import create_bare_repo, git_env
from airlock.testing.tls import TestTLS, make_test_ca_and_server_cert
from bench.common import (
    REPO_ROOT,
    CpuMeter,
    LoadMonitor,
    busy_processes,
    child_pythonpath,
    cpu_model,
    die_with_parent,
    git_commit,
    loadavg,
    log,
    median,
    os_name,
    percentile,
    ram_gib,
    stop_process,
    wait_file,
)
from bench.world import BENCH_CONFIG, BENCH_CONFIG_SUMMARY, BenchWorld

DEFAULT_OUT = REPO_ROOT / "bench" / "API_RESULTS.md"
SOURCE = "127.0.0.1"  # the "sandbox's" address (gh connects from it too)
LISTEN = "127.0.0.91"  # the "sandbox network's" gateway address (the tests use .80)
OWNER, REPO = "octo", "bench"
API_NAME = "api.github.com"
PY_TIMEOUT = 10.0  # one Python request (rows 1-3)
GH_TIMEOUT = 30.0  # one gh command (rows 4-5)
MAX_FAILURES = 3  # a path that fails this often is dropped
DEFAULT_BUDGET = 330.0  # seconds for all timed runs; the loop stops there
MAX_PULLS = 1000  # [upstream.api] max_pulls: the config's maximum (default 10)

# gh 2.23's RepositoryInfo (tests/data/gh_2_23_0_graphql_documents.json), as gh sends it.
REPOSITORY_INFO = (
    "\n\tfragment repo on Repository {\n\t\tid\n\t\tname\n\t\towner { login }\n"
    "\t\thasIssuesEnabled\n\t\tdescription\n\t\thasWikiEnabled\n\t\tviewerPermission\n"
    "\t\tdefaultBranchRef {\n\t\t\tname\n\t\t}\n\t}\n\n"
    "\tquery RepositoryInfo($owner: String!, $name: String!) {\n"
    "\t\trepository(owner: $owner, name: $name) {\n\t\t\t...repo\n\t\t\tparent {\n"
    "\t\t\t\t...repo\n\t\t\t}\n\t\t\tmergeCommitAllowed\n\t\t\trebaseMergeAllowed\n"
    "\t\t\tsquashMergeAllowed\n\t\t}\n\t}"
)

ROWS = {
    "rest": "REST `GET /repos/{o}/{r}`, kept-alive connection",
    "rest-new": "REST `GET /repos/{o}/{r}`, new connection each (CONNECT + TLS)",
    "graphql": "GraphQL `RepositoryInfo` (repository(owner,name)), kept-alive",
    "pr-view": "`gh pr view 1 --json number,title` (process)",
    "pr-create": "`gh pr create` (process; airlock: a session's first)",
}
PATHS = ("airlock", "direct")


# --------------------------------------------------------------------------- the double


async def _serve_double(root: Path) -> None:
    """The GitHub API double in this process (``--serve-double ROOT``): ROOT/tls, ROOT/repos,
    ROOT/token; writes its port to ROOT/double.ready. SIGUSR1 writes every request answered
    so far to ROOT/double.requests.json (with a sequence number) for the bench to count."""
    from airlock.testing.github_api import GitHubApiDouble

    tls = TestTLS(root / "tls" / "ca.pem", root / "tls" / "server.pem", root / "tls" / "server.key")
    api = GitHubApiDouble(tls, repos_root=root / "repos", token_file=root / "secrets" / "token")
    await api.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    dumps = 0

    def dump() -> None:
        nonlocal dumps
        dumps += 1
        rows = [[r.method, r.path, r.api, r.status] for r in api.requests]
        tmp = root / "double.requests.json.tmp"
        tmp.write_text(json.dumps({"seq": dumps, "requests": rows}))
        tmp.replace(root / "double.requests.json")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    (root / "double.ready").write_text(api.url.rsplit(":", 1)[1])
    try:
        await stop.wait()
    finally:
        await api.stop()


# --------------------------------------------------------------------------- the world


class ApiBenchWorld(BenchWorld):
    """bench/world.py's BenchWorld (git upstream in its own process, the real gateway) plus
    the GitHub API double in a process of its own, behind ``[upstream.api]``. The server
    certificate also names api.github.com and github.com, for gh's direct path (a CONNECT
    proxy to the double, as in tests/integration/test_github_api_pulls.py)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.tls = make_test_ca_and_server_cert(
            root / "tls", ["localhost", API_NAME, HOST], ["127.0.0.1"]
        )
        self.upstream.tls = self.tls
        self.proxy_port = free_port()
        self.config_extra = BENCH_CONFIG + f"\n[sandbox]\nproxy_port = {self.proxy_port}\n"
        self.gateway_extra = f"dns_port = {free_port()}\n"
        self.double_proc: subprocess.Popen[bytes] | None = None
        self.double_port = 0
        self._dumps = 0

    def upstream_credential(self) -> str:
        return (
            super().upstream_credential()
            + f'[upstream.api]\nurl = "https://127.0.0.1:{self.double_port}"\n'
            + f"max_pulls = {MAX_PULLS}\n"
        )

    def start(self) -> None:
        self.start_upstream()
        self.start_double()
        self.write_config()
        self.start_gateway()
        self.control.add_listener(LISTEN)

    def start_double(self) -> None:
        ready = self.root / "double.ready"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
        env["PYTHONPATH"] = child_pythonpath()
        self.double_proc = subprocess.Popen(
            [sys.executable, "-m", "bench.api_relay", "--serve-double", str(self.root)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "double.stderr", "ab"),
            preexec_fn=die_with_parent,
        )
        self.double_port = int(wait_file(ready, 30, self.double_proc))

    def double_requests(self) -> list[list[Any]]:
        """Every request the double answered so far: [method, path, api, status]."""
        assert self.double_proc is not None
        self._dumps += 1
        self.double_proc.send_signal(signal.SIGUSR1)
        path = self.root / "double.requests.json"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                if data["seq"] >= self._dumps:
                    return list(data["requests"])
            time.sleep(0.001)
        raise RuntimeError("the double did not write its requests")

    def stop(self) -> None:
        if self.proc is not None:
            self.stop_gateway()
        stop_process(self.double_proc)
        self.double_proc = None
        super().stop()


@dataclass
class Sandbox:
    """One session bound to SOURCE behind LISTEN, and what its tools get."""

    issued: dict[str, Any]
    dir: Path
    proxy_port: int

    @property
    def id(self) -> str:
        return str(self.issued["session"]["id"])

    @property
    def api_token(self) -> str:
        return str(self.issued["api_token"])

    @property
    def proxy_token(self) -> str:
        return str(self.issued["proxy_token"])

    @property
    def proxy(self) -> str:
        return f"http://airlock:{self.proxy_token}@{LISTEN}:{self.proxy_port}"

    @property
    def ca_bundle(self) -> Path:
        return self.dir / "ca-bundle.pem"


def make_sandbox(w: ApiBenchWorld, grant: str) -> Sandbox:
    """As tests/integration/test_api_relay.py's make_sandbox: a session activated for a
    "container" at SOURCE on a network whose gateway address is LISTEN."""
    issued, key = w.issue(grant, require_activation=True)
    w.control.activate(
        issued["session"]["id"],
        container_id=os.urandom(32).hex(),
        network="bench",
        address=SOURCE,
        gateway_address=LISTEN,
    )
    d = w.root / "bundles" / issued["session"]["id"][:12]
    write_bundle(d, issued, key, endpoint=GatewayEndpoint("airlock.internal", LISTEN, w.port))
    write_api_trust(d, issued["api"]["ca_pem"], None)
    return Sandbox(issued, d, w.proxy_port)


# --------------------------------------------------------------------------- clients


class PyClient:
    """http.client + ssl: through a CONNECT tunnel (airlock) or straight to the double."""

    def __init__(self, w: ApiBenchWorld, path: str, sb: Sandbox) -> None:
        self.path = path
        if path == "airlock":
            self.ctx = ssl.create_default_context(cafile=str(sb.ca_bundle))
            self.token = sb.api_token
            basic = base64.b64encode(f"airlock:{sb.proxy_token}".encode()).decode()
            self.proxy_auth = {"Proxy-Authorization": f"Basic {basic}"}
        else:
            self.ctx = ssl.create_default_context(cafile=str(w.tls.ca_cert))
            self.token = TOKEN
        self.w = w
        self.conn: http.client.HTTPSConnection | None = None
        self.reconnects = 0

    def connect(self) -> http.client.HTTPSConnection:
        if self.path == "airlock":
            c = http.client.HTTPSConnection(
                LISTEN,
                self.w.proxy_port,
                timeout=PY_TIMEOUT,
                context=self.ctx,
                source_address=(SOURCE, 0),
            )
            c.set_tunnel(API_NAME, 443, headers=self.proxy_auth)
        else:
            c = http.client.HTTPSConnection(
                "127.0.0.1", self.w.double_port, timeout=PY_TIMEOUT, context=self.ctx
            )
        c.connect()
        return c

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"token {self.token}",
            "Accept": "application/vnd.github+json",
            "User-Agent": "airlock-bench",
        }

    @staticmethod
    def _do(
        c: http.client.HTTPSConnection,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        c.request(method, url, body=body, headers=headers)
        resp = c.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {data[:200]!r}")
        out = json.loads(data)
        if not isinstance(out, dict):
            raise RuntimeError(f"{method} {url}: not a JSON object")
        return out

    def kept(self, method: str, url: str, body: bytes | None = None) -> Callable[[], float]:
        """A timed run on the kept-alive connection (made, and re-made if it was dropped,
        outside the timing)."""
        headers = self.headers()
        if body is not None:
            headers["Content-Type"] = "application/json"

        def run() -> float:
            if self.conn is None:
                self.conn = self.connect()
            t = time.perf_counter()
            try:
                out = self._do(self.conn, method, url, body, headers)
            except (OSError, http.client.HTTPException):
                # Dropped while idle (not expected): reconnect untimed, time a fresh try.
                self.reconnects += 1
                self.conn.close()
                self.conn = self.connect()
                t = time.perf_counter()
                out = self._do(self.conn, method, url, body, headers)
            took = time.perf_counter() - t
            _check_repo(out)
            return took

        return run

    def fresh(self, url: str) -> Callable[[], float]:
        """A timed run on a new connection: TCP (+ CONNECT) + TLS + the request."""
        headers = self.headers()

        def run() -> float:
            t = time.perf_counter()
            c = self.connect()
            try:
                out = self._do(c, "GET", url, None, headers)
            finally:
                c.close()
            took = time.perf_counter() - t
            _check_repo(out)
            return took

        return run

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _check_repo(out: dict[str, Any]) -> None:
    repo = out.get("data", {}).get("repository") if "data" in out else out
    if not isinstance(repo, dict) or repo.get("name") != REPO:
        raise RuntimeError(f"unexpected answer: {json.dumps(out)[:200]}")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------- the bench


@dataclass
class Path_:
    """One path (airlock or direct) of one row: its runs and what they cost."""

    values: list[float] = field(default_factory=list)
    gateway_cpu: list[float] = field(default_factory=list)
    double_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    upstream: list[tuple[str, ...]] = field(default_factory=list)  # requests the double got
    errors: list[str] = field(default_factory=list)
    dropped: bool = False


class ApiBench:
    def __init__(self, runs: int, budget: float, root: Path) -> None:
        self.runs = runs
        self.budget = budget
        self.root = root
        self.w = ApiBenchWorld(root)
        self.rows: dict[str, dict[str, Path_]] = {k: {p: Path_() for p in PATHS} for k in ROWS}
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.done_runs = 0
        self.proxy: ConnectProxy | None = None
        self.clients: dict[str, PyClient] = {}
        self.sandbox: Sandbox | None = None
        self.branch = 0

    # --- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        w = self.w
        create_bare_repo(w.repos, OWNER, REPO, files={"README.md": b"# bench\n"})
        # Every branch a create run needs, made now (untimed): one commit on main each.
        branches = [f"agent/{p}-{i}" for i in range(self.runs + 1) for p in PATHS] + ["seed"]
        self._make_branches(branches)
        # The double reads these from the same place as the git upstream.
        (self.root / "repos").symlink_to(w.repos)
        w.start()
        self.proxy = ConnectProxy({API_NAME: w.double_port, HOST: w.upstream.port})
        w.loop.run(self.proxy.start())
        self.sandbox = make_sandbox(w, f"{HOST}/{OWNER}/{REPO}:write")
        for p in PATHS:
            self.clients[p] = PyClient(w, p, self.sandbox)
        (self.root / "home-direct").mkdir()
        (self.root / "home-airlock").mkdir()
        # The pull request row 4 views: opened once, directly (untimed).
        seed = self.gh(
            "direct",
            "pr",
            "create",
            "-R",
            f"{OWNER}/{REPO}",
            "--head",
            "seed",
            "--base",
            "main",
            "--title",
            "seed",
            "--body",
            "B",
        )
        if seed.returncode != 0 or not seed.stdout.strip().endswith("/pull/1"):
            raise RuntimeError(f"seed pull request: {seed.stdout} {seed.stderr}")

    def _make_branches(self, names: list[str]) -> None:
        git_dir = self.w.repos / OWNER / f"{REPO}.git"
        env = git_env(
            self.root / "git-home",
            GIT_AUTHOR_NAME="b",
            GIT_AUTHOR_EMAIL="b@e",
            GIT_COMMITTER_NAME="b",
            GIT_COMMITTER_EMAIL="b@e",
        )
        (self.root / "git-home").mkdir(exist_ok=True)

        def git(*args: str, stdin: str | None = None) -> str:
            r = subprocess.run(
                ["git", f"--git-dir={git_dir}", *args],
                env=env,
                input=stdin,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            return r.stdout.strip()

        tree = git("rev-parse", "main^{tree}")
        updates = []
        for name in names:
            sha = git("commit-tree", tree, "-p", "main", "-m", f"work on {name}")
            updates.append(f"create refs/heads/{name} {sha}\n")
        git("update-ref", "--stdin", stdin="".join(updates))

    def env(self, path: str, sb: Sandbox | None = None) -> dict[str, str]:
        if path == "airlock":
            sb = sb or self.sandbox
            assert sb is not None
            return gh_env(
                self.root / "home-airlock", proxy=sb.proxy, ca_file=sb.ca_bundle, token=sb.api_token
            )
        assert self.proxy is not None
        return gh_env(
            self.root / "home-direct", proxy=self.proxy.url, ca_file=self.w.tls.ca_cert, token=TOKEN
        )

    def gh(
        self, path: str, *args: str, sb: Sandbox | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GH, *args],
            env=self.env(path, sb),
            cwd=self.root / f"home-{path}",
            capture_output=True,
            text=True,
            timeout=GH_TIMEOUT,
        )

    # --- one run of each row ----------------------------------------------------------------

    def prepare(self, row: str, path: str, rep: int) -> Callable[[], float]:
        """The timed callable of one run (set-up that is not measured happens here)."""
        repo_url = f"/repos/{OWNER}/{REPO}"
        client = self.clients[path]
        if row == "rest":
            return client.kept("GET", repo_url)
        if row == "rest-new":
            return client.fresh(repo_url)
        if row == "graphql":
            body = json.dumps(
                {"query": REPOSITORY_INFO, "variables": {"owner": OWNER, "name": REPO}}
            ).encode()
            return client.kept("POST", "/graphql", body)
        if row == "pr-view":
            return self._gh_run(
                path,
                None,
                ["pr", "view", "1", "-R", f"{OWNER}/{REPO}", "--json", "number,title"],
                '"number":1',
            )
        if row == "pr-create":
            # A fresh session per airlock run (untimed): each create is a session's first,
            # as a sandbox's would be, so the gateway asks the repository's id every time.
            sb = make_sandbox(self.w, f"{HOST}/{OWNER}/{REPO}:write") if path == "airlock" else None
            branch = f"agent/{path}-{rep}"
            argv = [
                "pr",
                "create",
                "-R",
                f"{OWNER}/{REPO}",
                "--head",
                branch,
                "--base",
                "main",
                "--title",
                f"bench {branch}",
                "--body",
                "B",
            ]
            return self._gh_run(path, sb, argv, f"github.com/{OWNER}/{REPO}/pull/")
        raise ValueError(row)

    def _gh_run(
        self, path: str, sb: Sandbox | None, argv: list[str], expect: str
    ) -> Callable[[], float]:
        env = self.env(path, sb)
        cwd = self.root / f"home-{path}"

        def run() -> float:
            t = time.perf_counter()
            p = subprocess.run(
                [GH, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=GH_TIMEOUT
            )
            took = time.perf_counter() - t
            if p.returncode != 0 or expect not in p.stdout.replace(" ", ""):
                raise RuntimeError(
                    f"gh {argv[0]} {argv[1]}: rc {p.returncode}: "
                    f"{(p.stdout + p.stderr).strip()[:300]}"
                )
            return took

        return run

    def measure(self) -> None:
        w = self.w
        assert w.proc is not None and w.double_proc is not None
        gateway, double = w.proc.pid, w.double_proc.pid
        seen = len(w.double_requests())
        t0 = time.monotonic()
        keys = list(ROWS)
        for rep in range(self.runs + 1):
            if rep and time.monotonic() - t0 > self.budget:
                self.notes.append(
                    f"time budget of {self.budget:.0f} s reached after {rep - 1} runs per row "
                    f"(of {self.runs}): the loop stopped there."
                )
                break
            order = keys[rep % len(keys) :] + keys[: rep % len(keys)]
            for row in order:
                paths = PATHS if (rep + keys.index(row)) % 2 == 0 else PATHS[::-1]
                for path in paths:
                    s = self.rows[row][path]
                    if s.dropped:
                        continue
                    try:
                        run = self.prepare(row, path, rep)
                        g, d = CpuMeter([gateway]).start(), CpuMeter([double]).start()
                        c, pc = _children_cpu(), time.process_time()
                        value = run()
                        client = _children_cpu() - c if row.startswith("pr") else 0.0
                        client += time.process_time() - pc if not row.startswith("pr") else 0.0
                        gcpu, dcpu = g.stop(), d.stop()
                        requests = w.double_requests()
                    except Exception as exc:
                        when = f"run {rep}" if rep else "warm-up"
                        s.errors.append(f"{when}: {type(exc).__name__}: {exc}")
                        log(f"  {row}/{path}: failed: {s.errors[-1]}")
                        s.dropped = len(s.errors) >= MAX_FAILURES
                        seen = len(w.double_requests())
                        continue
                    new, seen = requests[seen:], len(requests)
                    if rep:
                        s.values.append(value)
                        s.gateway_cpu.append(gcpu)
                        s.double_cpu.append(dcpu)
                        s.client_cpu.append(client)
                        s.upstream.append(tuple(f"{m} {p_} ({a})" for m, p_, a, _ in new))
            if rep:
                self.done_runs = rep
            log(
                f"run {rep}/{self.runs}"
                + (" (warm-up)" if not rep else "")
                + ": "
                + ", ".join(
                    f"{row} {self.rows[row]['airlock'].values[-1] * 1000:.1f}/"
                    f"{self.rows[row]['direct'].values[-1] * 1000:.1f} ms"
                    for row in keys
                    if self.rows[row]["airlock"].values and self.rows[row]["direct"].values
                )
            )
        for name, py in self.clients.items():
            if py.reconnects:
                self.notes.append(
                    f"{name}: the kept-alive connection was re-made {py.reconnects} times (untimed)"
                )

    def stop(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.w.loop.run(self.proxy.stop())
            if self.proxy.refused:
                self.failures.append(f"the direct CONNECT proxy refused {self.proxy.refused}")
        with contextlib.suppress(Exception):
            self.w.stop()


# --------------------------------------------------------------------------- the report


def ms(v: float) -> str:
    if v != v:
        return "—"
    return f"{v * 1000:.1f}" if abs(v) < 0.1 else f"{v * 1000:.0f}"


def signed(v: float) -> str:
    return "—" if v != v else ("+" if v >= 0 else "-") + ms(abs(v))


def mean(values: list[float]) -> float:
    """For CPU figures: /proc counts in clock ticks (10 ms), so a per-run median is mostly
    0 or 10 ms; the mean over the runs is not."""
    return sum(values) / len(values) if values else float("nan")


def stats(values: list[float]) -> tuple[float, float]:
    s = sorted(values)
    return median(s), percentile(s, 90)


def table(bench: ApiBench) -> list[str]:
    out = [
        "| row | runs | airlock median | airlock p90 | direct median | direct p90 "
        "| overhead median | overhead p90 | gateway CPU / run | upstream requests / run "
        "(airlock / direct) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (key, title) in enumerate(ROWS.items(), 1):
        a, d = bench.rows[key]["airlock"], bench.rows[key]["direct"]
        if not a.values or not d.values:
            why = "; ".join((a.errors + d.errors)[:1]) or "no runs"
            out.append(f"| {i}. {title} | 0 | {why} | | | | | | | |")
            continue
        am, ap = stats(a.values)
        dm, dp = stats(d.values)
        ua = median([len(u) for u in a.upstream])
        ud = median([len(u) for u in d.upstream])
        out.append(
            f"| {i}. {title} | {len(a.values)}/{len(d.values)} | **{ms(am)}** | {ms(ap)} | "
            f"**{ms(dm)}** | {ms(dp)} | **{signed(am - dm)}** | {signed(ap - dp)} | "
            f"{ms(mean(a.gateway_cpu))} | {ua:g} / {ud:g} |"
        )
    return out


def cpu_table(bench: ApiBench) -> list[str]:
    out = [
        "| row | gateway CPU (airlock) | double CPU airlock / direct | client CPU airlock / "
        "direct |",
        "|---|---|---|---|",
    ]
    for i, (key, title) in enumerate(ROWS.items(), 1):
        a, d = bench.rows[key]["airlock"], bench.rows[key]["direct"]
        if not a.values or not d.values:
            continue
        out.append(
            f"| {i}. {title} | {ms(mean(a.gateway_cpu))} | {ms(mean(a.double_cpu))} / "
            f"{ms(mean(d.double_cpu))} | {ms(mean(a.client_cpu))} / "
            f"{ms(mean(d.client_cpu))} |"
        )
    return out


def upstream_section(bench: ApiBench) -> list[str]:
    out = []
    for i, (key, title) in enumerate(ROWS.items(), 1):
        a, d = bench.rows[key]["airlock"], bench.rows[key]["direct"]
        if not a.upstream or not d.upstream:
            continue
        ca: collections.Counter[str] = collections.Counter(x for u in a.upstream for x in u)
        cd: collections.Counter[str] = collections.Counter(x for u in d.upstream for x in u)
        extra = {k: (ca[k] - cd[k]) / len(a.upstream) for k in ca if ca[k] > cd[k]}

        def per_run(c: collections.Counter[str], n: int) -> str:
            return ", ".join(f"{k} x{v / n:g}" for k, v in sorted(c.items())) or "none"

        out.append(
            f"- **{i}. {title}**: direct: {per_run(cd, len(d.upstream))}; airlock: "
            f"{per_run(ca, len(a.upstream))}."
        )
        if extra:
            out.append(
                "  The gateway's own calls, per run: "
                + ", ".join(f"{k} x{v:g}" for k, v in sorted(extra.items()))
                + "."
            )
    return out


def header(
    bench: ApiBench, started: dt.datetime, busy: list[str], load: tuple[float, float, float]
) -> list[str]:
    gh = subprocess.run([GH, "--version"], capture_output=True, text=True, timeout=10)
    return [
        f"- **date**: {started.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- **commit**: {git_commit()}",
        f"- **machine**: {cpu_model()}, {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM, "
        f"{os_name()}; Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, "
        f"{gh.stdout.splitlines()[0] if gh.stdout else 'gh ?'}",
        f"- **load at start**: loadavg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; busy in a 1 s "
        f"sample: {', '.join(busy) or 'none'}",
        f"- **how**: {bench.runs} runs per row and path after one untimed warm-up each, rows "
        "in a rotating order, the two paths of a row alternating which goes first; median "
        "and p90 (nearest rank) in ms; overhead = airlock - direct (of the medians, of the "
        "p90s). Rows 1-3: wall time of one request with Python's http.client + ssl "
        "(kept-alive: on a connection made before, untimed; new: connect + CONNECT + TLS + "
        "request + answer). Rows 4-5: wall time of the gh process, start to exit.",
        "- **gateway**: the real `airlock gateway` process of this checkout, limits raised "
        f"as the other benches do ({BENCH_CONFIG_SUMMARY}); `[upstream.api] max_pulls = "
        f"{MAX_PULLS}` (default 10); no labels, no title prefix.",
    ]


def render(bench: ApiBench, head: list[str], tail: list[str]) -> str:
    out = ["# GitHub API relay: airlock vs. the real token", "", *head, ""]
    out += [
        "## per request / per command (ms)",
        "",
        *table(bench),
        "",
        "*airlock*: through the gateway's egress proxy on "
        f"{LISTEN} (CONNECT with the session's proxy token from {SOURCE}, TLS terminated with "
        "the interception CA, the API policy's decision, aiohttp to the double) with the "
        "session's GH_TOKEN. *direct*: to the double with the upstream's real token (Python: "
        "HTTPS to its port; gh: through a minimal asyncio CONNECT proxy, "
        "tests/github_cli.py's `ConnectProxy`, since gh only speaks to api.github.com:443 - "
        "so gh's direct path also has a tunnel hop, a cheap one). Gateway CPU: utime+stime "
        "of the gateway process during the run (mean over the runs: /proc counts 10 ms ticks).",
        "",
        "## CPU per run (ms, mean over the runs)",
        "",
        *cpu_table(bench),
        "",
        "Client CPU: the bench process for rows 1-3, gh for rows 4-5.",
        "",
        "## what reached the double per run",
        "",
        *upstream_section(bench),
    ]
    errs = [f"{k}/{p}: {e}" for k, r in bench.rows.items() for p, s in r.items() for e in s.errors]
    if errs or bench.failures:
        out += ["", "## failures", ""] + [f"- {e}" for e in errs + bench.failures]
    out += ["", "## notes", "", *[f"- {n}" for n in tail + bench.notes]]
    return "\n".join(out) + "\n"


def run_bench(runs: int, budget: float) -> str:
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = dt.datetime.now(dt.UTC)
    busy = busy_processes(exclude={os.getpid()})
    load0 = loadavg()
    monitor = LoadMonitor()
    root = Path(tempfile.mkdtemp(prefix="airlock-bench-api-"))
    bench = ApiBench(runs, budget, root)
    t0 = time.monotonic()
    head: list[str] = []
    try:
        bench.start()
        bench.measure()
    except Exception as exc:
        traceback.print_exc()
        bench.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            head = header(bench, started, busy, load0)
        bench.stop()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    foreign, ours = monitor.foreign_share()
    end = loadavg()
    tail = [
        f"load at end: loadavg {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}; over the "
        f"{(time.monotonic() - t0) / 60:.1f} min run, processes outside the bench used "
        f"{foreign * 100:.0f}% of all cores (the bench and its children {ours * 100:.0f}%).",
        "The double (aiohttp, the GitHub API double over bare repositories), the git upstream "
        "and the gateway each run in a process of their own; the bench's clients and gh in "
        "this one and its children. Everything on loopback.",
        "Row 5 airlock: a fresh session per run (made untimed), so each create is that "
        "session's first and the gateway looks the repository's node id up every time (it "
        "caches it per session: later creates of the same session skip that call). Each run "
        "opens a new pull request from its own branch (`agent/<path>-<run>`, in the grant's "
        "default branch pattern `agent/**`; one commit on main, made in the bare repository "
        "before the runs).",
    ]
    return render(bench, head, tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.api_relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=30, help="timed runs per row and path (30)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help=f"seconds for all timed runs (default {DEFAULT_BUDGET:.0f})",
    )
    p.add_argument("--serve-double", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_double is not None:
        asyncio.run(_serve_double(args.serve_double))
        return 0
    if not 1 <= args.runs <= 500:
        p.error("--runs: 1..500")
    if not Path(GH).exists():
        p.error(f"needs gh at {GH}")
    try:
        md = run_bench(args.runs, args.budget)
    except KeyboardInterrupt:
        log("interrupted; everything the bench started is stopped")
        return 130
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
