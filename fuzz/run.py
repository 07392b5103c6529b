"""Run the fuzz targets (fuzz/targets/*.py), one subprocess each, one after the other.

    .venv/bin/python fuzz/run.py [--runs N] [--max-seconds S] [--no-merge] [TARGET ...]

Each target runs for N executions (or S seconds, whichever comes first) over its corpus in
fuzz/corpus/<target>/; what libFuzzer finds goes to a scratch directory, and afterwards the
entries that reach code the corpus does not are merged back into the corpus (the target's
``--merge``), keeping what was added within MAX_FILES files and MAX_BYTES bytes. Crash
inputs land in fuzz/crashes/<target>/. A table (target, executions, rate, crashes, corpus
size) is printed, and with --markdown also written to a file. Runs on one core: nothing runs
in parallel.
Exit status 1 when any target crashed or failed to run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
TARGETS = FUZZ / "targets"
CORPUS = FUZZ / "corpus"
CRASHES = FUZZ / "crashes"

#: Largest input libFuzzer generates per target (real inputs of each kind fit).
MAX_LEN: dict[str, int] = {
    "api_graphql": 8192,
    "api_rest": 2048,
    "dns_query": 600,
    "egress_request": 2048,
    "gitpath": 512,
    "pktline": 4096,
    "pushpack": 8192,
    "receivepack": 2048,
    "reportstatus": 4096,
    "requestbody": 4096,
    "tlshello": 4096,
    "uploadpack": 4096,
}
#: The parser each target feeds (for the results table).
PARSERS: dict[str, str] = {
    "api_graphql": "core/api_graphql.py via decide_api (GraphQL body)",
    "api_rest": "core/api_policy.py decide_api (REST path + body)",
    "dns_query": "core/dnspolicy.py answer + gateway/dns.py handle",
    "egress_request": "core/egress.py proxy head (h11), targets, Proxy-Authorization, DoH",
    "gitpath": "core/gitpath.py parse_git_request + host_form_target",
    "pktline": "core/pktline.py PktLineReader, section_end, encode_pkt",
    "pushpack": "core/packfile.py + core/pushpolicy.py (push body, pack, decision)",
    "receivepack": "core/pktline.py ReceivePackCommandParser",
    "reportstatus": "core/reportstatus.py ReportStatusReader + AdvertisementFilter",
    "requestbody": "core/requestbody.py decode_body (identity, gzip)",
    "tlshello": "core/tlshello.py HelloGuard + core/egress.py extract_sni",
    "uploadpack": "core/uploadpack.py v0/v1/v2 request + Git-Protocol",
}
#: libFuzzer's artifacts that are findings (a "slow-unit-" is reported, not counted).
_FINDINGS = ("crash-", "timeout-", "oom-", "leak-")
#: Bounds on what each corpus keeps beyond its seeds and regression inputs (files, bytes):
#: the repository stays small.
MAX_FILES = 25
MAX_BYTES = 256 * 1024
_KEEP_PREFIXES = ("seed-", "regression-")
MAX_RESTARTS = 5  # never dropped when a corpus is trimmed


@dataclass
class Result:
    target: str
    executions: int = 0
    seconds: float = 0.0
    crashes: int = 0
    slow_units: int = 0
    corpus_files: int = 0
    corpus_bytes: int = 0
    error: str = ""

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def all_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS.glob("*.py") if not p.name.startswith("_"))


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def _executions(log: str) -> int:
    stat = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if stat:
        return int(stat[-1])
    done = re.findall(r"^Done (\d+) runs", log, re.MULTILINE)
    if done:
        return int(done[-1])
    progress = re.findall(r"^#(\d+)\s", log, re.MULTILINE)
    return int(progress[-1]) if progress else 0


def _libfuzzer(target: str, args: list[str], timeout: float) -> tuple[int, str]:
    argv = [sys.executable, str(TARGETS / f"{target}.py"), *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr if isinstance(exc.stderr, str) else ""
        return -1, out + f"\n(run.py: killed after {timeout:.0f} s)"
    return done.returncode, done.stdout + done.stderr


def _trim(corpus: Path) -> None:
    """Keep what the fuzzer added within MAX_FILES / MAX_BYTES (the smallest entries; seeds
    and regression inputs always stay; libFuzzer's merge kept only coverage-adding ones)."""
    files = _files(corpus)
    kept = [p for p in files if p.name.startswith(_KEEP_PREFIXES)]
    rest = sorted((p for p in files if p not in kept), key=lambda p: (p.stat().st_size, p.name))
    count = 0
    size = 0
    for path in rest:
        if count < MAX_FILES and size + path.stat().st_size <= MAX_BYTES:
            count += 1
            size += path.stat().st_size
        else:
            path.unlink()


def run_target(target: str, runs: int, max_seconds: float | None, merge: bool) -> Result:
    """Fuzz one target. A crash stops libFuzzer; while executions and time are left the
    target is started again (at most MAX_RESTARTS times), so one finding does not end it."""
    result = Result(target)
    corpus = CORPUS / target
    crashes = CRASHES / target
    crashes.mkdir(parents=True, exist_ok=True)
    if not _files(corpus):
        result.error = f"no corpus in {corpus}"
        return result
    before = {p.name for p in _files(crashes) if p.name.startswith(_FINDINGS)}
    slow_before = {p.name for p in _files(crashes) if p.name.startswith("slow-unit-")}
    max_len = MAX_LEN.get(target, 4096)
    with tempfile.TemporaryDirectory(prefix=f"airlock-fuzz-{target}-") as scratch:
        for _attempt in range(1 + MAX_RESTARTS):
            left_runs = runs - result.executions
            left_seconds = None if max_seconds is None else max_seconds - result.seconds
            if left_runs < 1 or (left_seconds is not None and left_seconds < 5):
                break
            args = [
                f"-runs={left_runs}",
                f"-max_len={max_len}",
                f"-artifact_prefix={crashes}/",
                "-print_final_stats=1",
                "-timeout=30",
                "-rss_limit_mb=2048",
            ]
            if left_seconds is not None:
                args.append(f"-max_total_time={int(left_seconds)}")
            limit = (left_seconds or 3600) + 120
            started = time.monotonic()
            code, log = _libfuzzer(target, [*args, scratch, str(corpus)], limit)
            result.seconds += time.monotonic() - started
            result.executions += _executions(log)
            now = {p.name for p in _files(crashes)}
            crashed = len({n for n in now if n.startswith(_FINDINGS)} - before)
            result.slow_units = len({n for n in now if n.startswith("slow-unit-")} - slow_before)
            if crashed > result.crashes:
                result.crashes = crashed
                with (crashes / "crashes.log").open("a") as out:
                    out.write(log[-20000:] + "\n")
                continue
            if code != 0:
                tail = " | ".join(log.strip().splitlines()[-3:])
                result.error = f"exit {code}: {tail[-300:]}"
            break
        if merge and _files(Path(scratch)):
            # Not libFuzzer's -merge=1: it sees no atheris coverage (see targets/_harness.py).
            code, log = _libfuzzer(target, ["--merge", str(corpus), scratch], 1800)
            if code != 0:
                result.error = result.error or f"merge exit {code}: {log.strip()[-200:]}"
            _trim(corpus)
    files = _files(corpus)
    result.corpus_files = len(files)
    result.corpus_bytes = sum(p.stat().st_size for p in files)
    return result


def table(results: list[Result], parsers: bool = False) -> str:
    head = "| target | executions | rate (exec/s) | crashes | corpus (files / bytes) |"
    rule = "|---|---:|---:|---:|---:|"
    if parsers:
        head, rule = "| parser " + head, "|---" + rule
    lines = [head, rule]
    for r in results:
        note = f" (error: {r.error})" if r.error else ""
        slow = f" ({r.slow_units} slow)" if r.slow_units else ""
        row = (
            f"| {r.target}{note} | {r.executions:,} | {r.rate:,.0f} | {r.crashes}{slow} "
            f"| {r.corpus_files} / {r.corpus_bytes:,} |"
        )
        lines.append(f"| {PARSERS.get(r.target, '?')} {row}" if parsers else row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run airlock's fuzz targets (atheris).")
    parser.add_argument("--runs", type=int, default=10_000, help="executions per target")
    parser.add_argument("--max-seconds", type=float, default=None, help="time cap per target")
    parser.add_argument(
        "--seconds-for",
        action="append",
        default=[],
        metavar="TARGET=S",
        help="time cap for one target (overrides --max-seconds; repeatable)",
    )
    parser.add_argument("--no-merge", action="store_true", help="leave the corpus unchanged")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("targets", nargs="*", metavar="TARGET")
    args = parser.parse_args(argv)
    known = all_targets()
    seconds_for: dict[str, float] = {}
    for item in args.seconds_for:
        name, eq, value = item.partition("=")
        if not eq or not value.replace(".", "", 1).isdigit() or float(value) < 1:
            print(f"run.py: --seconds-for {item!r}: expected TARGET=SECONDS", file=sys.stderr)
            return 2
        seconds_for[name] = float(value)
    unknown = [t for t in [*args.targets, *seconds_for] if t not in known]
    if unknown or args.runs < 1 or (args.max_seconds is not None and args.max_seconds < 1):
        what = f"unknown target(s) {', '.join(unknown)}" if unknown else "bad --runs/--max-seconds"
        print(f"run.py: {what}; targets: {', '.join(known)}", file=sys.stderr)
        return 2
    results: list[Result] = []
    started = datetime.datetime.now(datetime.UTC)
    for target in args.targets or known:
        seconds = seconds_for.get(target, args.max_seconds)
        result = run_target(target, args.runs, seconds, not args.no_merge)
        results.append(result)
        print(
            f"{target}: {result.executions:,} executions, {result.rate:,.0f}/s, "
            f"{result.crashes} crash(es), corpus {result.corpus_files} files"
            + (f", {result.error}" if result.error else ""),
            flush=True,
        )
    text = table(results)
    print(text)
    if args.markdown is not None:
        niceness = os.nice(0)
        command = (f"nice -n {niceness} " if niceness else "") + ".venv/bin/python fuzz/run.py "
        command += shlex.join(sys.argv[1:])
        args.markdown.write_text(
            "# Fuzzing results (atheris / libFuzzer)\n\n"
            f"Date: {started:%Y-%m-%d %H:%M} UTC, {sum(r.seconds for r in results) / 60:.0f} "
            "minutes, one core (targets one after another).\n\n"
            f"Command: `{command}`\n\n{table(results, parsers=True)}\n"
        )
    crashed = [r.target for r in results if r.crashes or r.error]
    if crashed:
        print(f"run.py: crashes or errors in {', '.join(crashed)}; see {CRASHES}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
