"""Red team: a config whose paths make `airlock gateway --container` hand the gateway's
container (and, through privileges.prepare, its uid) more of the host than its own files.

The plan's only guard on ``gateway.state_dir`` is "at least three path parts", and
``gateway.audit_log`` directly in ``/var/log`` is accepted on purpose. ``plan`` is pure, so
these tests ask it, and read the bind mounts it would make; nothing is mounted or chowned.
What the shell does with such a plan: ``privileges.prepare`` lchowns every file under the
state directory to the container's uid, then Docker mounts it read-write.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from airlock.config import parse_config
from airlock.host import seccomp
from airlock.host.gateway_container import GatewayContainerError, plan


def _plan(tmp_path: Path, state_dir: str, audit_log: str) -> Any:
    text = f"""
[gateway]
mode = "container"
state_dir = "{state_dir}"
control_socket = "{tmp_path}/run/gateway/control.sock"
audit_log = "{audit_log}"
[gateway.container]
uid = 10001

[sandbox]
bundle_dir = "{tmp_path}/bundles"

[[upstream]]
host = "github.com"
url = "https://github.com"
token_file = "{tmp_path}/token"
"""
    raw = tomllib.loads(text)
    return plan(
        parse_config(raw, tmp_path / "airlock.toml"),
        raw,
        image="airlock/gateway:test",
        subnet="10.251.14.0/24",
        seccomp_profile=seccomp.gateway_profile_json(),
        runtime_root=tmp_path / "rt",
    )


@pytest.mark.parametrize(
    "state_dir",
    # Each has three parts; each holds what is not the gateway's (Docker's own state, the
    # host's SSH keys, containerd's socket, installed programs).
    ["/var/lib", "/etc/ssh", "/run/containerd", "/usr/local"],
)
def test_a_system_directory_as_state_dir_is_refused(tmp_path: Path, state_dir: str) -> None:
    with pytest.raises(GatewayContainerError):
        p = _plan(tmp_path, state_dir, f"{tmp_path}/log/audit.jsonl")
        rw = [m.source for m in p.mounts if not m.read_only]
        pytest.fail(f"planned: {state_dir} mounted read-write (rw mounts {rw})")


def test_an_audit_log_directly_in_var_log_does_not_mount_all_of_var_log(tmp_path: Path) -> None:
    try:
        p = _plan(tmp_path, f"{tmp_path}/state", "/var/log/airlock-audit.jsonl")
    except GatewayContainerError:
        return  # refused: fine
    rw = {m.source for m in p.mounts if not m.read_only}
    assert "/var/log" not in rw, f"the host's whole /var/log is mounted read-write: {rw}"
