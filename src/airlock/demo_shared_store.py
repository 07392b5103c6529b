"""The demo's second gateway: one shared store (Redis), two gateways, one revocation.

The demo's gateway keeps its sessions in a Redis server the demo starts (Debian's
redis-server, durable as docs/shared-store.md requires); a second gateway, standing in for
another host, shares that store and the first one's CA. After the sandbox has run, the demo
checks from the host that the second gateway lists the sandbox's session as served by the
first host, and that a session revoked through the second gateway is refused by the first at
once: git on the host, through the first gateway, is told "session revoked".
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from airlock.config import Config
from airlock.gateway.pki import key_pem, make_csr, new_private_key
from airlock.host.bundle import GatewayEndpoint, write_bundle
from airlock.host.control_client import ControlClient
from airlock.testing.ports import free_port
from airlock.testing.repos import git_env

HOST_A, HOST_B = "demo-host-a", "demo-host-b"
# What replicas of one deployment share (the sessions are in Redis; each keeps its own id).
SHARED_KEYS = ("ca.key", "ca.pem", "gateway.key", "gateway.pem", "intercept")


def second_gateway_config(first: Config, root: Path) -> Config:
    """The first gateway's config for another "host": its own state, socket, port, name."""
    gw = first.gateway.model_copy(
        update={
            "state_dir": root / "state-b",
            "control_socket": root / "run-b" / "control.sock",
            "git_listen": f"127.0.0.1:{free_port()}",
            "audit_log": root / "audit-b.log",
            "host_name": HOST_B,
        }
    )
    return first.model_copy(update={"gateway": gw})


def share_keys(first: Config, second: Config) -> None:
    """Before the second gateway starts: the first one's CA and keys, as an operator copies
    them to a new host."""
    src, dst = first.gateway.state_dir, second.gateway.state_dir
    dst.mkdir(mode=0o700, parents=True)
    for name in SHARED_KEYS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        else:
            shutil.copy2(src / name, dst / name)


@dataclass
class SharedStoreChecks:
    listed_elsewhere: bool  # the second gateway lists the sandbox session, served by host A
    served_before: bool  # (control) git through the first gateway works before the revoke
    refused_after: bool  # ... and is refused "revoked" right after the second one revoked


def check_revocation_across_gateways(
    first: Config, second: Config, sandbox_session: str, repo: str, root: Path
) -> SharedStoreChecks:
    a, b = ControlClient(first.gateway.control_socket), ControlClient(second.gateway.control_socket)
    listed = {s["id"]: s for s in b.list_sessions()}
    sandbox = listed.get(sandbox_session, {})
    listed_elsewhere = str(sandbox.get("served_by", "")).startswith(HOST_A + "/")

    key = new_private_key()
    issued = a.create_session(grants=[f"github.com/{repo}:read"], csr=make_csr(key).decode())
    bundle = root / "host-bundle"
    write_bundle(
        bundle,
        issued,
        key_pem(key),
        endpoint=GatewayEndpoint("airlock.internal", "127.0.0.1", first.gateway.git_port),
    )
    home = root / "host-home"
    home.mkdir(exist_ok=True)
    env = git_env(home, GIT_CONFIG_GLOBAL=str(bundle / "gitconfig"), GIT_TERMINAL_PROMPT="0")

    def ls_remote() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "ls-remote", f"https://github.com/{repo}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    served_before = ls_remote().returncode == 0
    b.revoke(issued["session"]["id"], "revoked through the second gateway")
    after = ls_remote()  # at once: no wait, no retry
    refused_after = after.returncode != 0 and "revoked" in after.stderr
    return SharedStoreChecks(listed_elsewhere, served_before, refused_after)
