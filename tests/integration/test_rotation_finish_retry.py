"""The end of a CA rotation's overlap when the gateway cannot write its state (a full or
broken state directory): the old CA is refused at the handshake all the same, and the state
is written once it can be (gateway/server.py ``_overlap_ended``)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_rotation import info_refs, mixed, raw_context, snapshot
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


def wait_for_event(world: World, name: str, limit: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + limit
    while True:
        found = [e for e in world.audit() if e["event"] == name]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {name} event"
        time.sleep(0.2)


def test_the_old_ca_is_refused_when_the_overlaps_end_cannot_be_written(
    rworld: World, tmp_path: Path
) -> None:
    w = rworld
    w.make_repo("acme", "retry")
    b = w.session(f"{HOST}/acme/retry:read")
    old = snapshot(b, tmp_path / "old")
    r = airlock(w, "rotate", "ca", "--overlap", "2s", "--settle", "0", "--out", str(b.dir))
    assert r.returncode == 0, r.stderr
    # The state file cannot be written: its temporary name is taken by a directory (EISDIR,
    # for root too).
    blocker = w.state_dir / "rotation.json.tmp"
    blocker.mkdir()
    try:
        failed = wait_for_event(w, "ca_rotation_finish_failed")
        assert failed["attempt"] == 1 and failed["retry_in"] == 1.0
        assert json.loads((w.state_dir / "rotation.json").read_text())["phase"] == "overlap"
        # The old certificate (signed by the old CA) is refused at the handshake already.
        both = mixed(old, b, tmp_path / "mixed")
        fresh = http.client.HTTPSConnection(
            "127.0.0.1", w.port, context=raw_context(both), timeout=10
        )
        fresh._context.check_hostname = False  # type: ignore[attr-defined]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            info_refs(fresh, "acme/retry")
        fresh.close()
        # The rewritten bundle works.
        ok = http.client.HTTPSConnection("127.0.0.1", w.port, context=raw_context(b), timeout=10)
        ok._context.check_hostname = False  # type: ignore[attr-defined]
        assert info_refs(ok, "acme/retry") == 200
        ok.close()
    finally:
        shutil.rmtree(blocker)
    # Once the directory can be written, a retry writes the end of the overlap.
    wait_for_event(w, "ca_rotation_finished")
    assert json.loads((w.state_dir / "rotation.json").read_text())["phase"] == "idle"
