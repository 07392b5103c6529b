"""`airlock doctor` on this host: a healthy set-up passes every check (exit 0); a broken one
(pool over a host route, no gate binary, a token file others can read, no gateway, the
bundle directory a file, a gateway user that cannot read its App key) fails exactly those,
each with what to fix (exit 1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from airlock.host.hostnet import host_networks
from tests.world import World, system_user

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="doctor checks nftables and Docker as root"),
    pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="no Docker engine"),
]


def doctor(config: Path) -> tuple[int, dict[str, tuple[bool, str]], str]:
    r = subprocess.run(
        [sys.executable, "-m", "airlock.cli", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    checks: dict[str, tuple[bool, str]] = {}
    for line in r.stdout.splitlines():
        status, name, detail = line.split(None, 2)
        assert status in ("ok", "FAIL"), line
        checks[name] = (status == "ok", detail)
    return r.returncode, checks, r.stderr


def _free_pool() -> str:
    used = host_networks()
    for third in range(200, 255):
        pool = IPv4Network(f"10.{third}.0.0/16")
        if not any(n.prefixlen > 0 and n.overlaps(pool) for n in used):
            return str(pool)
    pytest.skip("no free 10.x.0.0/16 on this host")


def _a_host_network() -> IPv4Network:
    """A private network this host already uses (an address's subnet or a route)."""
    for net in host_networks():
        if net.is_private and not (net.is_loopback or net.is_link_local) and net.prefixlen >= 8:
            return net if net.prefixlen <= 28 else net.supernet(new_prefix=24)
    pytest.skip("this host has no private network to collide with")


@pytest.fixture(scope="module")
def healthy() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="airlock-doctor-"))
    extra = f'[sandbox]\npool = "{_free_pool()}"\nbundle_dir = "{root}/bundles"\n'
    w = World(root, config_extra=extra)
    w.start()
    yield w
    w.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_a_healthy_setup_passes_every_check(healthy: World) -> None:
    if not os.access("/bin/busybox", os.X_OK):
        pytest.skip("no /bin/busybox (busybox-static) on this host")
    code, checks, stderr = doctor(healthy.config)
    failed = {k: v for k, v in checks.items() if not v[0]}
    assert not failed, failed
    assert code == 0
    for name in ("root", "config", "docker", "nftables", "pool", "gate", "gateway", "token-file"):
        assert name in checks
    assert "bundle-dir" in checks and "docker-init" in checks
    assert "all" in stderr and "checks passed" in stderr


def test_a_broken_setup_fails_each_broken_check(healthy: World, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("ghs_x\n")
    token.chmod(0o644)
    bundles = tmp_path / "bundles"
    bundles.write_text("not a directory\n")
    overlap = _a_host_network()
    text = healthy.config.read_text()
    text = text.replace(f'"{healthy.token_file}"', f'"{token}"')
    text = text.replace(f'"{healthy.socket}"', f'"{tmp_path}/no-gateway.sock"')
    text = text.replace(
        healthy.config_extra,
        f'[sandbox]\npool = "{overlap}"\nbundle_dir = "{bundles}"\n'
        f'gate_binary = "{tmp_path}/no-busybox"\n',
    )
    config = tmp_path / "airlock.toml"
    config.write_text(text)

    code, checks, stderr = doctor(config)
    assert code == 1
    assert checks["root"][0] and checks["config"][0] and checks["docker"][0]
    ok, detail = checks["pool"]
    assert not ok and "overlaps" in detail and "choose another private range" in detail
    ok, detail = checks["gate"]
    assert not ok and f"{tmp_path}/no-busybox" in detail and "busybox-static" in detail
    ok, detail = checks["token-file"]
    assert not ok and "mode 0644" in detail and f"chmod 600 {token}" in detail
    ok, detail = checks["gateway"]
    assert not ok and "not running" in detail
    ok, detail = checks["bundle-dir"]
    assert not ok and "not a directory" in detail
    assert "checks failed" in stderr
    for name in ("pool", "gate", "token-file", "gateway", "bundle-dir"):
        assert name in stderr


def test_a_gateway_user_that_cannot_read_its_app_key(healthy: World, tmp_path: Path) -> None:
    account = system_user("airlock-cli-test")
    key = tmp_path / "app.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")  # never read by doctor
    key.chmod(0o600)  # root's: the gateway's user cannot read it
    text = healthy.config.read_text()
    text = text.replace(
        f'token_file = "{healthy.token_file}"',
        f'[upstream.app]\napp_id = 1\nprivate_key_file = "{key}"\ninstallations = {{ acme = 7 }}\n',
    )
    # [upstream.app] must come last in its [[upstream]]: the sandbox table moves above it.
    text = text.replace(healthy.config_extra, "")
    text = text.replace("[gateway]\n", f'[gateway]\nuser = "{account.pw_name}"\n', 1)
    config = tmp_path / "airlock.toml"
    config.write_text(healthy.config_extra + text)
    code, checks, _ = doctor(config)
    assert code == 1
    ok, detail = checks["app-key"]
    assert not ok and f"chown {account.pw_name} {key}" in detail
