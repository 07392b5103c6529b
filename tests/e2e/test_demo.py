"""`airlock demo`, the README's first command, passes all its checks on the real engine."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from airlock.demo import run_demo

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="no Docker daemon"),
]


def test_demo_passes_every_check() -> None:
    buf = io.StringIO()
    ok = run_demo(Console(file=buf, width=120))
    report = buf.getvalue()
    assert ok, report
    assert "all checks passed" in report
    passed = [line for line in report.splitlines() if line.rstrip(" │|").endswith(" pass")]
    assert len(passed) == 23, report  # every check of the report, each passed
