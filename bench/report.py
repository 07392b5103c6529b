"""The markdown report: machine, date, commit, then one table per benchmark with targets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.common import MiB, Samples, median
from bench.egress import EgressRow
from bench.gitbench import GitRow
from bench.latency import LatencyRow
from bench.scale import ScaleRow
from bench.sessions import FLAT_RATIO, SessionsResult

RSS_LIMIT_MB = 100.0
CLONE_RATIO = 1.05
P99_OVERHEAD_MS = 5.0
CPU_PER_REQUEST_MS = 0.25
SQUID_RATIO = 0.9


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    git: list[GitRow] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    egress: list[EgressRow] = field(default_factory=list)
    scale: ScaleRow | None = None
    sessions: SessionsResult | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, bool]] = field(default_factory=list)


def _num(v: float, digits: int = 2) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _secs(v: float) -> str:
    """Seconds: 3 decimals below 1 s, where a few ms decide a ratio."""
    return _num(v, 3 if v < 1 else 2)


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return float("nan")
    return a / b


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "—"
    return "**pass**" if ok else "**MISS**"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def git_table(report: Report) -> list[str]:
    head = [
        "operation",
        "repo packs",
        "moves",
        "runs",
        "direct s",
        "airlock s",
        "airlock xdirect",
        "nginx s",
        "nginx xdirect",
        "target",
        "result",
        "direct, empty CA dir s",
        "airlock x that",
        "gateway RSS MB (idle→peak)",
        "gateway CPU s/op",
        "nginx CPU s/op",
    ]
    rows = []
    for r in report.git:
        d, a, n = (r.samples[k].median for k in ("direct", "airlock", "nginx"))
        cadir = r.samples.get("direct-cadir")
        dc = cadir.median if cadir is not None else float("nan")
        ra, rn = _ratio(a, d), _ratio(n, d)
        if r.op.startswith("push"):
            target = f"RSS ≤ {RSS_LIMIT_MB:.0f} MB"
            ok: bool | None = r.gw_peak_mb <= RSS_LIMIT_MB
            report.verdicts.append((f"push memory {r.op} ({r.size} repo)", bool(ok)))
        else:
            target = f"≤ {CLONE_RATIO}x direct, ≤ nginx"
            ok = None if math.isnan(ra) else (ra <= CLONE_RATIO and a <= n)
            if ok is not None:
                report.verdicts.append((f"{r.op} ({r.size})", ok))
        errors = sum(len(s.errors) - s.hung for s in r.samples.values())
        runs = str(r.runs) + (f" ({errors} failed)" if errors else "")
        ng = r.samples["nginx"]
        nginx_s = _secs(n)
        if ng.hung:
            tried = len(ng.values) + len(ng.errors)
            nginx_s = f"hung {ng.hung}/{tried}" + (f", ok: {_secs(n)}" if ng.values else "")
        rows.append(
            [
                r.op,
                r.size,
                r.moved,
                runs,
                _secs(d),
                _secs(a),
                _num(ra),
                nginx_s,
                _num(rn),
                target,
                _verdict(ok),
                _secs(dc),
                _num(_ratio(a, dc)),
                f"{r.gw_idle_mb:.0f}→{r.gw_peak_mb:.0f}",
                _num(r.samples["airlock"].cpu_median),
                _num(r.samples["nginx"].cpu_median),
            ]
        )
    return _table(head, rows)


def latency_table(report: Report) -> list[str]:
    head = [
        "sessions",
        "requests/run",
        "runs",
        "direct p50 ms",
        "direct p99 ms",
        "airlock p50 ms",
        "airlock p99 ms",
        "p99 overhead ms",
        "nginx p50 / p99 ms",
        "target",
        "result",
        "gateway CPU ms/request",
        "CPU target",
        "CPU result",
        "bare relay p50 / p99 ms",
        "bare relay CPU ms/request",
        "errors (direct/airlock/nginx/bare)",
    ]
    rows = []
    for r in report.latency:
        dp50, dp99 = r.p("direct", "p50_ms"), r.p("direct", "p99_ms")
        ap50, ap99 = r.p("airlock", "p50_ms"), r.p("airlock", "p99_ms")
        over = ap99 - dp99
        ok: bool | None = None
        target = "—"
        if r.sessions == 16:
            target = f"p99 overhead ≤ {P99_OVERHEAD_MS:.0f} ms"
            ok = not math.isnan(over) and over <= P99_OVERHEAD_MS
            report.verdicts.append(("info/refs p99 overhead at 16 sessions", ok))
        runs = r.runs.get("airlock", [])
        cpu_ms = r.cpu_ms("airlock")
        bare_runs = r.runs.get("bare", [])
        bare_cpu = r.cpu_ms("bare")
        cpu_ok: bool | None = None
        cpu_target = "—"
        if r.sessions == 16:
            cpu_target = f"≤ {CPU_PER_REQUEST_MS} ms"
            cpu_ok = not math.isnan(cpu_ms) and cpu_ms <= CPU_PER_REQUEST_MS
            report.verdicts.append(("gateway CPU per info/refs request at 16 sessions", cpu_ok))
        nginx = "—"
        if r.runs.get("nginx"):
            nginx = f"{_num(r.p('nginx', 'p50_ms'), 1)} / {_num(r.p('nginx', 'p99_ms'), 1)}"
        bare = "—"
        if bare_runs:
            bare = f"{_num(r.p('bare', 'p50_ms'), 1)} / {_num(r.p('bare', 'p99_ms'), 1)}"
        rows.append(
            [
                str(r.sessions),
                str(r.requests),
                str(len(runs)),
                _num(dp50, 1),
                _num(dp99, 1),
                _num(ap50, 1),
                _num(ap99, 1),
                _num(over, 1),
                nginx,
                target,
                _verdict(ok),
                _num(cpu_ms),
                cpu_target,
                _verdict(cpu_ok),
                bare,
                _num(bare_cpu),
                f"{r.errors('direct')}/{r.errors('airlock')}/{r.errors('nginx')}"
                f"/{r.errors('bare')}",
            ]
        )
    return _table(head, rows)


def egress_table(report: Report) -> list[str]:
    head = [
        "direction",
        "bytes",
        "runs",
        "direct MiB/s",
        "airlock MiB/s",
        "airlock xdirect",
        "squid MiB/s",
        "airlock xsquid",
        "floor relay MiB/s",
        "floor xdirect",
        "target",
        "result",
        "airlock CPU s/GiB",
        "squid CPU s/GiB",
        "floor CPU s/GiB",
        "peak RSS MB airlock / squid",
    ]
    rows = []
    for r in report.egress:
        floor = r.samples.get("floor", Samples())
        d, a, s = (r.samples[k].median for k in ("direct", "airlock", "squid"))
        ras, rad = _ratio(a, s), _ratio(a, d)
        ok = not math.isnan(ras) and ras >= SQUID_RATIO and rad >= SQUID_RATIO  # nan fails
        report.verdicts.append((f"CONNECT throughput {r.direction}", ok))
        gib = r.nbytes / 1024**3
        errors = sum(len(x.errors) for x in r.samples.values())
        rows.append(
            [
                r.direction,
                f"{r.nbytes / MiB:.0f} MiB",
                str(r.runs) + (f" ({errors} failed)" if errors else ""),
                _num(d, 0),
                _num(a, 0),
                _num(_ratio(a, d)),
                _num(s, 0),
                _num(ras),
                _num(floor.median, 0),
                _num(_ratio(floor.median, d)),
                f"≥ {SQUID_RATIO}x squid and direct",
                _verdict(ok),
                _num(r.samples["airlock"].cpu_median / gib),
                _num(r.samples["squid"].cpu_median / gib),
                _num(floor.cpu_median / gib),
                f"{r.proxy_peak_mb.get('airlock', 0):.0f} / {r.proxy_peak_mb.get('squid', 0):.0f}",
            ]
        )
    return _table(head, rows)


def scale_table(report: Report) -> list[str]:
    r = report.scale
    assert r is not None
    head = [
        "path",
        "concurrent sessions",
        "runs",
        "clones ok",
        "clones failed",
        "total time s (median)",
        "gateway RSS MB (idle→peak)",
        "gateway CPU s/run",
        "target",
        "result",
    ]
    rows = []
    for path in ("direct", "airlock"):
        runs = r.runs.get(path, [])
        failed = r.total_failed(path)
        ok: bool | None = None
        target = "—"
        rss = "—"
        cpu = "—"
        if path == "airlock":
            target = "zero errors"
            ok = failed == 0 and bool(runs)
            report.verdicts.append((f"{r.sessions} concurrent sessions, zero errors", ok))
            rss = f"{r.gw_idle_mb:.0f}→{r.gw_peak_mb:.0f}"
            cpu = _num(median([x.proxy_cpu for x in runs]))
        rows.append(
            [
                path,
                str(r.sessions),
                str(len(runs)),
                str(r.total_ok(path)),
                str(failed),
                _num(r.seconds(path)),
                rss,
                cpu,
                target,
                _verdict(ok),
            ]
        )
    return _table(head, rows)


def sessions_table(report: Report) -> list[str]:
    res = report.sessions
    assert res is not None
    head = [
        "sessions in store",
        "visits",
        "info/refs p50 ms",
        "info/refs p99 ms",
        "gateway CPU ms/request",
        "create p50 ms",
        "create p99 ms",
        "creates",
        "gateway CPU ms/create",
        f"CONNECT set-up p50 ms ({res.tunnels}/visit)",
        "CONNECT set-up p99 ms",
        "gateway CPU ms/CONNECT",
        "gateway RSS MiB",
        "errors",
    ]
    rows = []
    for lv in res.levels:
        rows.append(
            [
                f"{lv.sessions:,}",
                str(len(lv.visits)),
                _num(lv.info_refs("p50_ms")),
                _num(lv.info_refs("p99_ms")),
                _num(lv.gateway_cpu_ms),
                _num(lv.create(50)),
                _num(lv.create(99)),
                str(sum(len(v.create_ms) for v in lv.visits)),
                _num(lv.cpu_ms("create_cpu_ms")),
                _num(lv.tunnel(50)),
                _num(lv.tunnel(99)),
                _num(lv.cpu_ms("tunnel_cpu_ms")),
                _num(lv.rss_kib / 1024, 1),
                str(len(lv.errors)),
            ]
        )
    out = _table(head, rows)
    flat = [
        ("info/refs p50", [lv.info_refs("p50_ms") for lv in res.levels]),
        ("session create p50", [lv.create(50) for lv in res.levels]),
        ("CONNECT set-up p50", [lv.tunnel(50) for lv in res.levels]),
    ]
    target = f"max/min across N ≤ {FLAT_RATIO:.2f}"
    vrows = []
    for name, values in flat:
        spread = res.spread(values)
        ok = not math.isnan(spread) and spread <= FLAT_RATIO
        report.verdicts.append((f"{name} within 10% across 10 / 1,000 / 10,000 sessions", ok))
        vrows.append([f"{name} flat in N", _num(spread, 3), target, _verdict(ok)])
    cpu = [
        ("gateway CPU per info/refs", [lv.gateway_cpu_ms for lv in res.levels]),
        ("gateway CPU per create", [lv.cpu_ms("create_cpu_ms") for lv in res.levels]),
        ("gateway CPU per CONNECT", [lv.cpu_ms("tunnel_cpu_ms") for lv in res.levels]),
    ]
    for name, values in cpu:
        vrows.append([f"{name}, max/min across N", _num(res.spread(values), 3), "reported", "—"])
    vrows.append(
        [
            "gateway memory per idle session",
            f"{_num(res.per_session_kib, 1)} KiB",
            "reported",
            "—",
        ]
    )
    vrows.append(
        [
            "gateway memory per open CONNECT tunnel",
            f"{_num(res.per_tunnel_kib, 1)} KiB",
            "reported",
            "—",
        ]
    )
    out += ["", *_table(["figure", "value", "target", "result"], vrows)]
    return out


def render(report: Report) -> str:
    out = ["# airlock benchmark results", ""]
    out += report.header
    sections = [
        ("git over smart HTTP (seconds per command, median)", report.git, git_table),
        ("info/refs latency (in-process clients, keep-alive)", report.latency, latency_table),
        ("egress: CONNECT tunnel throughput", report.egress, egress_table),
    ]
    for title, data, fn in sections:
        if data:
            out += ["", f"## {title}", ""]
            out += fn(report)
    if report.scale is not None:
        out += ["", "## scale: concurrent sessions, each cloning a tiny repository", ""]
        out += scale_table(report)
    if report.sessions is not None:
        out += ["", "## sessions: gateway cost against the number of sessions in its store", ""]
        out += sessions_table(report)
    if report.verdicts:
        passed = sum(1 for _, ok in report.verdicts if ok)
        out += ["", f"## targets: {passed} of {len(report.verdicts)} met", ""]
        missed = [name for name, ok in report.verdicts if not ok]
        out += [f"- missed: {name}" for name in missed] or ["- all met"]
    if report.failures:
        out += ["", "## failures", ""]
        out += [f"- {f}" for f in report.failures]
    if report.notes:
        out += ["", "## notes", ""]
        out += [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"
