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
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

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


def main(test_one_input: Callable[[bytes], None], check: Callable[[bytes], bool]) -> None:
    """Entry point of a target script."""
    if len(sys.argv) >= 2 and sys.argv[1] == "--classify":
        sys.exit(_classify(check, sys.argv[2:]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
