"""A bundle's git trusts its ca.pem alone: curl is given the bundle's empty CA directory, so
it neither loads the machine's CA directory (60-140 ms of every git command here) nor lets a
certificate from it vouch for the gateway. Real git through the real gateway."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airlock.host.bundle import CA_DIR
from tests.world import HOST, Bundle, World


def _trace(world: World, bundle: Bundle, repo: str, tmp_path: Path) -> tuple[int, str]:
    trace = tmp_path / "curl-trace.txt"
    r = world.git(
        bundle,
        "ls-remote",
        f"https://{HOST}/{repo}",
        env={"GIT_TRACE_CURL": str(trace), "GIT_TRACE_CURL_NO_DATA": "1"},
    )
    return r.returncode, trace.read_text() if trace.exists() else ""


def test_git_through_the_gateway_loads_no_ca_but_the_bundles(world: World, tmp_path: Path) -> None:
    world.make_repo("acme", "cadir")
    bundle = world.session(f"{HOST}/acme/cadir:read")
    ca_dir = bundle.dir / CA_DIR
    assert ca_dir.is_dir() and not any(ca_dir.iterdir())
    assert oct(ca_dir.stat().st_mode & 0o777) == "0o555"
    rc, trace = _trace(world, bundle, "acme/cadir", tmp_path)
    assert rc == 0, trace[-2000:]
    # curl names every CA location it loads; the machine's directory is not among them.
    assert "/etc/ssl/certs" not in trace
    assert f"{bundle.dir.resolve()}/ca.pem" in trace


def test_without_the_ca_dir_curl_loads_the_machines_cas(world: World, tmp_path: Path) -> None:
    """The control, removed: the same bundle with sslCAPath taken out of its gitconfig."""
    if not any(Path("/etc/ssl/certs").glob("*.pem")):
        pytest.skip("this machine has no CA directory for curl to load")
    world.make_repo("acme", "cadir2")
    bundle = world.session(f"{HOST}/acme/cadir2:read")
    gitconfig = bundle.dir / "gitconfig"
    text = gitconfig.read_text()
    assert "sslCAPath" in text
    os.chmod(gitconfig, 0o644)
    gitconfig.write_text("\n".join(ln for ln in text.splitlines() if "sslCAPath" not in ln))
    rc, trace = _trace(world, bundle, "acme/cadir2", tmp_path)
    assert rc == 0, trace[-2000:]
    assert "/etc/ssl/certs" in trace
