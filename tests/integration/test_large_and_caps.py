"""Big packs stream with bounded gateway memory; body and session caps hold."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airlock.testing.repos import add_large_commit
from tests.world import HOST, World

MB = 1024 * 1024


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def big_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("big"))
    w.start()
    yield w
    w.stop()


@pytest.mark.slow
def test_200mb_pack_clone_and_push_with_flat_gateway_memory(
    big_world: World, tmp_path: Path
) -> None:
    w = big_world
    bare = w.make_repo("acme", "huge")
    add_large_commit(bare, 200 * MB, file_count=40, seed=1)
    pack_bytes = sum(p.stat().st_size for p in (bare / "objects").rglob("*") if p.is_file())
    assert pack_bytes >= 200 * MB
    assert w.proc is not None
    rss_before = _peak_rss_mb(w.proc.pid)
    b = w.session(f"{HOST}/acme/huge:write=agent/**,ff:main")
    work = tmp_path / "huge"
    t0 = time.monotonic()
    r = w.clone(b, "acme/huge", work, "--no-checkout")
    clone_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    rss_clone = _peak_rss_mb(w.proc.pid)
    add_large_commit(work / ".git", 200 * MB, file_count=40, seed=2)
    t0 = time.monotonic()
    r = w.git(b, "push", "origin", "main", cwd=work)
    push_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    rss_push = _peak_rss_mb(w.proc.pid)
    head = w.git(None, "rev-parse", "main", cwd=work, check=True).stdout.strip()
    assert w.git(None, "--git-dir", str(bare), "rev-parse", "main").stdout.strip() == head
    summary = (
        f"200 MB pack: clone {clone_s:.1f} s, push 200 MB {push_s:.1f} s; gateway peak RSS "
        f"{rss_before:.0f} MB at start, {rss_clone:.0f} MB after clone, "
        f"{rss_push:.0f} MB after push"
    )
    print(summary)
    out = os.environ.get("AIRLOCK_MEASUREMENTS")
    if out:
        with open(out, "a") as f:
            f.write(summary + "\n")
    # Streaming: peak memory must not grow with the pack (200 MB moved each way).
    assert rss_push < rss_before + 60, summary


@pytest.fixture(scope="module")
def capped_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(
        tmp_path_factory.mktemp("capped"),
        config_extra="""
[sessions]
max_requests = 6
max_bytes = 3000000

[git]
max_request_body = 1000000
""",
    )
    w.start()
    yield w
    w.stop()


def test_request_cap_refuses_the_next_request(capped_world: World) -> None:
    w = capped_world
    w.make_repo("acme", "capped")
    b = w.session(f"{HOST}/acme/capped:read")
    url = f"https://{HOST}/acme/capped"
    ok = 0
    for _ in range(6):
        if w.git(b, "ls-remote", url).returncode == 0:
            ok += 1
    assert 0 < ok < 6  # each ls-remote makes one or two requests; the cap is six
    assert w.git(b, "ls-remote", url).returncode != 0
    assert w.audit_for(b.session_id)[-1]["reason"] == "request_cap"
    assert w.audit_for(b.session_id)[-1]["status"] == 429
    assert w.control.show(b.session_id)["requests"] == 6


def test_body_cap_refuses_an_oversized_push(capped_world: World, tmp_path: Path) -> None:
    w = capped_world
    bare = w.make_repo("acme", "bodycap")
    b = w.session(f"{HOST}/acme/bodycap:write=agent/**,ff:main")
    work = tmp_path / "w"
    assert w.clone(b, "acme/bodycap", work).returncode == 0
    before = w.git(None, "--git-dir", str(bare), "rev-parse", "main").stdout
    add_large_commit(work / ".git", 2 * MB, file_count=2, seed=3)
    r = w.git(b, "push", "origin", "main", cwd=work)
    assert r.returncode != 0
    assert w.git(None, "--git-dir", str(bare), "rev-parse", "main").stdout == before
    assert any(e.get("reason") == "body_too_large" for e in w.audit_for(b.session_id))


def test_byte_cap_refuses_after_the_budget_is_spent(capped_world: World, tmp_path: Path) -> None:
    w = capped_world
    bare = w.make_repo("acme", "bytecap")
    add_large_commit(bare, 4 * MB, file_count=1, seed=4)
    b = w.session(f"{HOST}/acme/bytecap:read")
    assert w.clone(b, "acme/bytecap", tmp_path / "a", "--no-checkout").returncode == 0
    assert w.control.show(b.session_id)["bytes"] > 3_000_000
    r = w.clone(b, "acme/bytecap", tmp_path / "b", "--no-checkout")
    assert r.returncode != 0
    assert w.audit_for(b.session_id)[-1]["reason"] == "byte_cap"
