"""What every fuzz target shares: run under atheris (libFuzzer), or replay a corpus.

A target module defines ``check(data) -> bool``: it feeds ``data`` to the real airlock parser,
raises (an AssertionError, or the parser's own undocumented exception) when an invariant
breaks, and returns whether the parser ACCEPTED the input (False: refused, with one of its
documented errors). Its ``TestOneInput(data)`` (what libFuzzer calls) is ``check`` with the
result dropped.

``python fuzz/targets/<name>.py --classify DIR...`` replays every file of the directories
through ``check`` and prints ``{"files": n, "accepted": a, "refused": r}`` as JSON (the smoke
test uses it to show that a harness really reaches its parser); any other arguments go to
libFuzzer (``-runs=N``, ``-max_total_time=S``, corpus directories...).

``--merge CORPUS DIR...`` adds to CORPUS the files of the DIRs that reach code the corpus
does not (line-to-line arcs in airlock and dnslib, traced with sys.settrace; smallest files
first) and prints how many. libFuzzer's own ``-merge=1`` sees no coverage from atheris here
(it reports 0 new features for any input), so run.py merges with this.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import atheris

__all__ = ["chunks", "main"]


def chunks(data: bytes, selector: int) -> list[bytes]:
    """``data`` cut into pieces of ``1 + selector % 61`` bytes, or whole when the selector's top
    bit is set: the same stream fed in a fuzzer-chosen chunking."""
    if selector & 0x80 or not data:
        return [data]
    size = 1 + selector % 61
    return [data[i : i + size] for i in range(0, len(data), size)]


def _classify(check: Callable[[bytes], bool], dirs: list[str]) -> int:
    counts = {"files": 0, "accepted": 0, "refused": 0}
    for name in dirs:
        for path in sorted(Path(name).iterdir()):
            if not path.is_file():
                continue
            counts["files"] += 1
            counts["accepted" if check(path.read_bytes()) else "refused"] += 1
    print(json.dumps(counts))
    return 0


def _roots() -> tuple[str, ...]:
    roots = []
    for name in ("airlock", "dnslib"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots += [str(Path(p)) for p in spec.submodule_search_locations]
    return tuple(roots)


def _arcs(check: Callable[[bytes], bool], data: bytes, roots: tuple[str, ...]) -> set[Any]:
    """The (file, line, next line) arcs ``check(data)`` runs in the parsers' code."""
    arcs: set[tuple[str, int, int]] = set()

    def call(frame: FrameType, event: str, arg: object) -> Any:
        filename = frame.f_code.co_filename
        if not filename.startswith(roots):
            return None
        last = [-frame.f_lineno]

        def line(frame: FrameType, event: str, arg: object) -> Any:
            if event == "line":
                arcs.add((filename, last[0], frame.f_lineno))
                last[0] = frame.f_lineno
            return line

        return line

    sys.settrace(call)
    try:
        check(data)
    except Exception:  # a crash input has coverage too; the fuzzer reports the crash
        pass
    finally:
        sys.settrace(None)
    return arcs


def _merge(check: Callable[[bytes], bool], corpus: Path, dirs: list[str]) -> int:
    roots = _roots()
    covered: set[Any] = set()
    for path in sorted(corpus.iterdir()):
        if path.is_file():
            covered |= _arcs(check, path.read_bytes(), roots)
    have = {hashlib.sha1(p.read_bytes()).hexdigest() for p in corpus.iterdir() if p.is_file()}
    candidates = sorted(
        (p for d in dirs for p in Path(d).iterdir() if p.is_file()),
        key=lambda p: (p.stat().st_size, p.name),
    )
    added = 0
    for path in candidates:
        data = path.read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if digest in have:
            continue
        new = _arcs(check, data, roots) - covered
        if new:
            shutil.copyfile(path, corpus / f"fuzz-{digest}")
            covered |= new
            have.add(digest)
            added += 1
    print(json.dumps({"added": added, "arcs": len(covered)}))
    return 0


def main(test_one_input: Callable[[bytes], None], check: Callable[[bytes], bool]) -> None:
    """Entry point of a target script."""
    if len(sys.argv) >= 2 and sys.argv[1] == "--classify":
        sys.exit(_classify(check, sys.argv[2:]))
    if len(sys.argv) >= 3 and sys.argv[1] == "--merge":
        sys.exit(_merge(check, Path(sys.argv[2]), sys.argv[3:]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
