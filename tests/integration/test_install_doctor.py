"""`airlock install --root` writes the units, the user and the manifest, or refuses clearly;
`airlock doctor` checks what the manifest recorded (unit files, image ids, the lock file).

Processes and files only: install runs with ``--root`` (a staging tree) and
``--no-reload``; the units are started under a real systemd in
tests/e2e/test_systemd_units.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.config import load_config
from airlock.host import integrity
from airlock.host.dockerclient import docker_client

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install writes as root")

CRED = "/run/credentials/airlock-gateway.service/github-token"
AIRLOCK = Path("/opt/airlock/bin/airlock")  # inside the staging tree (--root)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "airlock.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def write_config(path: Path, extra_gateway: str = "", manifest: Path | None = None) -> Path:
    m = f'integrity_manifest = "{manifest}"\n' if manifest else ""
    path.write_text(
        f"""
[gateway]
state_dir = "/var/lib/airlock"
control_socket = "/run/airlock/gateway/control.sock"
user = "airlock-gw"
audit_log = "/var/log/airlock/audit.jsonl"
{m}{extra_gateway}
[[upstream]]
host = "github.com"
url = "https://github.example.com"
token_file = "{CRED}"
"""
    )
    return path


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # A minimal account database of its own (no copy of this host's).
    for name, text, mode in (
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("group", "root:x:0:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o600),
        ("gshadow", "root:*::\n", 0o600),
    ):
        (root / "etc" / name).write_text(text)
        (root / "etc" / name).chmod(mode)
    if Path("/etc/login.defs").exists():
        shutil.copy2("/etc/login.defs", root / "etc/login.defs")
    cred = root / "etc/airlock/credentials/github-token"
    cred.parent.mkdir(parents=True, mode=0o700)
    cred.write_text("ghs_x\n")
    cred.chmod(0o600)
    exe = root / str(AIRLOCK).lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return root


def test_install_writes_units_user_dirs_and_manifest(tmp_path: Path, staging: Path) -> None:
    if shutil.which("useradd") is None:
        pytest.skip("no useradd")
    config = write_config(tmp_path / "airlock.toml")
    r = cli("install", "--config", str(config), "--root", str(staging), "--no-reload",
            "--airlock", str(AIRLOCK))  # fmt: skip
    assert r.returncode == 0, r.stderr
    units = staging / "etc/systemd/system"
    names = sorted(p.name for p in units.iterdir())
    assert names == ["airlock-gateway.service", "airlock-supervise.service", "airlock.target"]
    for p in units.iterdir():
        assert p.stat().st_mode & 0o777 == 0o644
    gateway = (units / "airlock-gateway.service").read_text()
    assert f"ExecStart={AIRLOCK} gateway --config {config}" in gateway
    # The user was made in the staging tree, not on this host.
    passwd = (staging / "etc/passwd").read_text()
    assert any(line.startswith("airlock-gw:") for line in passwd.splitlines())
    uid = next(int(x.split(":")[2]) for x in passwd.splitlines() if x.startswith("airlock-gw:"))
    audit = staging / "var/log/airlock/audit.jsonl"
    assert audit.stat().st_uid == uid and audit.stat().st_mode & 0o777 == 0o600
    manifest = json.loads((staging / "var/lib/airlock-host/integrity.json").read_text())
    recorded = {e["path"]: e["sha256"] for e in manifest["entries"] if e["kind"] == "unit"}
    assert recorded["/etc/systemd/system/airlock-gateway.service"] == integrity.sha256_bytes(
        gateway.encode()
    )
    # Installing again changes nothing and needs no new user.
    r = cli("install", "--config", str(config), "--root", str(staging), "--no-reload",
            "--airlock", str(AIRLOCK))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (staging / "etc/passwd").read_text() == passwd


def test_dry_run_prints_and_writes_nothing(tmp_path: Path, staging: Path) -> None:
    config = write_config(tmp_path / "airlock.toml")
    before = sorted(str(p) for p in staging.rglob("*"))
    r = cli("install", "--config", str(config), "--root", str(staging), "--dry-run",
            "--airlock", str(AIRLOCK))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "would write" in r.stdout and "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in r.stdout
    assert "would run: useradd" in r.stdout
    assert sorted(str(p) for p in staging.rglob("*")) == before


@pytest.mark.parametrize(
    "extra, args, message",
    [
        ('mode = "container"', [], "container"),
        ("", ["--airlock", "/root/x/airlock"], "ProtectHome"),
        ("", ["--credential", "nope"], "NAME=PATH"),
        ("", ["--credential", "other=/x"], "--credential other"),
        ("", ["--airlock", "/nonexistent/airlock"], "does not exist"),
    ],
)
def test_bad_input_is_refused_clearly_and_writes_nothing(
    tmp_path: Path, staging: Path, extra: str, args: list[str], message: str
) -> None:
    config = write_config(tmp_path / "airlock.toml", extra_gateway=extra)
    if "--airlock" not in args:
        args = [*args, "--airlock", str(AIRLOCK)]
    r = cli("install", "--config", str(config), "--root", str(staging), "--no-reload", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert not (staging / "etc/systemd").exists()


def test_a_missing_credential_source_is_named(tmp_path: Path, staging: Path) -> None:
    (staging / "etc/airlock/credentials/github-token").unlink()
    config = write_config(tmp_path / "airlock.toml")
    r = cli("install", "--config", str(config), "--root", str(staging), "--no-reload",
            "--airlock", str(AIRLOCK))  # fmt: skip
    assert r.returncode == 2 and "/etc/airlock/credentials/github-token" in r.stderr
    assert not (staging / "etc/systemd").exists()


def doctor_lines(config: Path) -> dict[str, tuple[str, str]]:
    r = cli("doctor", "--config", str(config))
    found = {}
    for line in r.stdout.splitlines():
        status, name, detail = line.split(None, 2)
        found[name] = (status, detail)
    return found


@pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="no Docker engine")
def test_doctor_checks_recorded_units_and_images(tmp_path: Path) -> None:
    manifest = tmp_path / "host" / "integrity.json"
    config = write_config(tmp_path / "airlock.toml", manifest=manifest)
    cfg = load_config(config)
    unit = tmp_path / "units" / "airlock-gateway.service"
    unit.parent.mkdir()
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    integrity.record_units(manifest, [(str(unit), unit.read_bytes())])
    client = docker_client(timeout=60)
    image = next((i for i in client.images.list() if i.tags), None)
    if image is None:
        pytest.skip("no tagged image to record")
    integrity.record_image(cfg, "sandbox", image.tags[0], image.id)
    integrity.record_image(cfg, "gateway", "airlock-test/never-built:1", "sha256:" + "0" * 64)

    found = doctor_lines(config)
    assert found["unit:airlock-gateway.service"][0] == "ok"
    assert found["image:sandbox"][0] == "ok"
    assert found["image:gateway"][0] == "FAIL" and "rebuild" in found["image:gateway"][1]
    assert found["lock-file"][0] == "ok"
    # A tag pointed at other content, and an edited unit, are named with what to do.
    integrity.record_image(cfg, "sandbox", image.tags[0], "sha256:" + "1" * 64)
    unit.write_text("[Service]\nExecStart=/bin/true\nExecStartPre=/tmp/evil\n")
    found = doctor_lines(config)
    assert found["image:sandbox"][0] == "FAIL" and "other content" in found["image:sandbox"][1]
    status, detail = found["unit:airlock-gateway.service"]
    assert status == "FAIL" and "airlock install" in detail
    # A manifest where the gateway can write is refused outright.
    bad = write_config(tmp_path / "bad.toml", manifest=Path("/var/lib/airlock/integrity.json"))
    assert doctor_lines(bad)["integrity"][0] == "FAIL"


def test_a_symlinked_state_dir_is_not_followed_when_handed_over(
    tmp_path: Path, staging: Path
) -> None:
    """In the staging tree, the state directory (one install makes itself: not under
    /var/lib, so no StateDirectory=) is an absolute symlink to a directory outside it:
    install refuses (exit 2) and the link's target keeps its owner and mode."""
    if shutil.which("useradd") is None:
        pytest.skip("no useradd")
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    (staging / "srv").mkdir(parents=True)
    (staging / "srv/airlock-state").symlink_to(target)
    config = write_config(tmp_path / "airlock.toml")
    config.write_text(config.read_text().replace('"/var/lib/airlock"', '"/srv/airlock-state"', 1))
    r = cli("install", "--config", str(config), "--root", str(staging), "--no-reload",
            "--airlock", str(AIRLOCK))  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "symlink" in r.stderr
    st = target.stat()
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o755
