"""`airlock rotate bundles --out DIR` against a real gateway: a bundle under a directory
that someone else could rewrite is refused before anything is written (red team F2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.world import HOST, World


@pytest.fixture
def rworld(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.start()
    yield w
    w.stop()


def airlock(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    return subprocess.run(
        [sys.executable, "-m", "airlock.cli", *args, "--config", str(world.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _files(d: Path) -> dict[str, bytes]:
    """The bundle's files (it also holds the empty ca.d/ directory)."""
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def test_an_out_bundle_under_a_directory_others_can_write_is_refused(
    rworld: World, tmp_path: Path
) -> None:
    w = rworld
    w.make_repo("acme", "outdirs")
    b = w.session(f"{HOST}/acme/outdirs:read")
    shared = tmp_path / "shared"
    shared.mkdir()
    moved = shutil.copytree(b.dir, shared / "bundle")
    before = _files(moved)
    shared.chmod(0o777)  # anyone could rename the bundle away and put a symlink there
    r = airlock(w, "rotate", "bundles", "--out", str(moved))
    assert r.returncode == 2, r.stderr
    assert "writable by group or others" in r.stderr and str(shared) in r.stderr
    assert "Traceback" not in r.stderr
    assert _files(moved) == before  # nothing written
    # Only root (or the caller) can write above it: the same bundle is rewritten.
    shared.chmod(0o755)
    r = airlock(w, "rotate", "bundles", "--out", str(moved))
    assert r.returncode == 0, r.stderr
