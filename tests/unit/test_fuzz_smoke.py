"""The fuzz targets (fuzz/targets/) run, find nothing, and really reach their parsers.

Every target runs a short bounded number of executions over its corpus (two at a time);
each corpus replayed through its target must hold inputs the parser accepts and inputs it
refuses (a harness that only ever reaches the first error path is not fuzzing the parser).
Every parser that faces sandbox input must have a target, and every target a corpus.
The long runs are fuzz/run.py's (``./dev fuzz``), with results in bench/FUZZ_RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
TARGETS = FUZZ / "targets"
CORPUS = FUZZ / "corpus"
RUNS = 2000

#: Parser module -> the targets that feed it (each must import it, directly or via _api.py).
PARSERS: dict[str, tuple[str, ...]] = {
    "airlock.core.pktline": ("pktline", "receivepack", "pushpack"),
    "airlock.core.uploadpack": ("uploadpack",),
    "airlock.core.reportstatus": ("reportstatus",),
    "airlock.core.requestbody": ("requestbody",),
    "airlock.core.gitpath": ("gitpath",),
    "airlock.core.egress": ("egress_request", "tlshello"),
    "airlock.core.tlshello": ("tlshello",),
    "airlock.core.dnspolicy": ("dns_query",),
    "airlock.gateway.dns": ("dns_query",),
    "airlock.core.packfile": ("pushpack",),
    "airlock.core.pushpolicy": ("pushpack",),
    "airlock.core.api_policy": ("api_rest", "api_graphql"),
    "airlock.core.api_graphql": ("api_graphql",),
}


def _targets() -> list[str]:
    return sorted(p.stem for p in TARGETS.glob("*.py") if not p.name.startswith("_"))


def _source(target: str) -> str:
    text = (TARGETS / f"{target}.py").read_text()
    if "from _api import" in text:
        text += (TARGETS / "_api.py").read_text()
    return text


@pytest.mark.parametrize("module", sorted(PARSERS))
def test_every_listed_parser_has_a_target(module: str) -> None:
    path = ROOT / "src" / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{module} is listed but {path} does not exist"
    for target in PARSERS[module]:
        assert (TARGETS / f"{target}.py").is_file(), f"no fuzz target {target} for {module}"
        source = _source(target)
        imported = f"from {module} import" in source or f"import {module}" in source
        assert imported, f"target {target} does not import {module}"
        assert "atheris.instrument_imports()" in source and "def TestOneInput(" in source


def test_every_target_has_a_corpus_and_is_listed() -> None:
    targets = _targets()
    assert targets, "no fuzz targets"
    listed = {t for ts in PARSERS.values() for t in ts}
    for target in targets:
        files = [p for p in (CORPUS / target).glob("*") if p.is_file()]
        assert files, f"fuzz target {target} has no corpus in fuzz/corpus/{target}/"
        assert target in listed, f"fuzz target {target} feeds no parser listed here"


def _fuzz(target: str, scratch: Path) -> tuple[str, int, str]:
    crashes = scratch / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    new = scratch / "new"
    new.mkdir()
    argv = [
        sys.executable,
        str(TARGETS / f"{target}.py"),
        f"-runs={RUNS}",
        "-max_len=2048",
        "-max_total_time=60",
        "-timeout=20",
        "-seed=1",
        f"-artifact_prefix={crashes}/",
        str(new),
        str(CORPUS / target),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return target, done.returncode, done.stdout + done.stderr


def test_every_target_fuzzes_without_a_crash(tmp_path: Path) -> None:
    targets = _targets()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda t: _fuzz(t, tmp_path / t), targets))
    for target, code, log in results:
        crashes = list((tmp_path / target / "crashes").iterdir())
        assert code == 0 and not crashes, f"{target} crashed:\n{log[-4000:]}"
        assert f"Done {RUNS} runs" in log or f"#{RUNS}\t" in log, f"{target}:\n{log[-2000:]}"


def _classify(target: str) -> tuple[str, dict[str, int]]:
    argv = [sys.executable, str(TARGETS / f"{target}.py"), "--classify", str(CORPUS / target)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return target, json.loads(done.stdout.strip().splitlines()[-1])


def test_every_harness_reaches_its_parser() -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_classify, _targets()))
    for target, counts in results:
        assert counts["files"] == counts["accepted"] + counts["refused"] > 0, (target, counts)
        assert counts["accepted"] >= 1, f"{target}: the parser accepts no corpus input {counts}"
        assert counts["refused"] >= 1, f"{target}: the parser refuses no corpus input {counts}"


def test_runner_prints_the_table(tmp_path: Path) -> None:
    argv = [sys.executable, str(FUZZ / "run.py"), "--runs", "300", "--no-merge", "gitpath"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    header = "| target | executions | rate (exec/s) | crashes | corpus (files / bytes) |"
    assert header in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| gitpath"))
    assert row.split("|")[4].strip() == "0"  # no crash
    bad = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), "nosuchtarget"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "unknown target" in bad.stderr and not bad.stdout


def test_merge_adds_inputs_that_reach_new_code_once(tmp_path: Path) -> None:
    seeds = sorted((CORPUS / "gitpath").glob("seed-*"))
    corpus, found = tmp_path / "corpus", tmp_path / "found"
    corpus.mkdir()
    found.mkdir()
    (corpus / "refused").write_bytes(b"\x80/nothing")  # refused early: little coverage
    for i, seed in enumerate(seeds[:3]):
        (found / f"a{i}").write_bytes(seed.read_bytes())
        (found / f"b{i}").write_bytes(seed.read_bytes())  # the same input twice
    argv = [sys.executable, str(TARGETS / "gitpath.py"), "--merge", str(corpus), str(found)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    added = json.loads(done.stdout.strip().splitlines()[-1])["added"]
    kept = sorted(p.name for p in corpus.iterdir())
    assert 1 <= added <= 3 and len(kept) == 1 + added, kept
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1])["added"] == 0
