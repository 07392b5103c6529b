"""`airlock image`: the default sandbox image gives Python users a working pip (a venv at
/opt/venv, theirs, first on PATH) and names no host of its own. Built once (about two
minutes) if it is not there yet; run with no network at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from airlock.host.images import SANDBOX_UID, VENV, sandbox_image_tag
from airlock.host.images import debian_mirror as host_mirror

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and docker import need root"),
    pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="no Docker engine"),
]

INSIDE = f"""
set -e
test "$(command -v pip)" = {VENV}/bin/pip
test "$(command -v python3)" = {VENV}/bin/python3
test "$(stat -c %u {VENV})" = {SANDBOX_UID}
mkdir -p /tmp/p/hello
printf 'from setuptools import setup\\nsetup(name="hello", version="1.0", packages=["hello"])\\n' \
    > /tmp/p/setup.py
echo 'X = 42' > /tmp/p/hello/__init__.py
pip install -q --no-index --no-build-isolation /tmp/p 2>/dev/null
python3 -c 'import hello; print(hello.X)'
! grep -v '^#' /etc/apt/sources.list | grep -q .
test ! -e /var/log/bootstrap.log
! ls /var/cache/apt/*.bin 2>/dev/null
! ls /var/lib/apt/lists/ | grep -q _
if [ -n "$MIRROR_HOST" ]; then ! grep -rIsl "$MIRROR_HOST" /etc /var /home /opt/venv/pyvenv.cfg; fi
echo done
"""


def test_the_default_image_has_pip_and_names_no_host() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "airlock.cli", "image"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    tag = r.stdout.strip()
    assert tag == sandbox_image_tag()
    mirror_host = urlsplit(host_mirror()).hostname or ""
    argv = ["docker", "run", "--rm", "--network", "none", "-e", f"MIRROR_HOST={mirror_host}"]
    run = subprocess.run(
        [*argv, tag, "sh", "-c", INSIDE],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split() == ["42", "done"]
    saved = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Env}}", tag],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mirror = host_mirror()
    if mirror:
        assert mirror not in saved
    assert f"PATH={VENV}/bin:" in saved
