"""The demo's two hosts: one shared store (Redis), two gateways, one revocation.

Beside the sandbox's gateway (its own SQLite store: the demo rotates its CA, which a shared
store does not support yet), two more gateways stand in for two hosts: they keep their
sessions in a Redis server the demo starts (Debian's redis-server, durable as
docs/shared-store.md requires) and share one CA. The demo checks from the host that a session
created on the first is listed by the second as served by the first host, and that once it
is revoked through the second, git through the first is refused at once ("session revoked").
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


def host_config(base: Config, root: Path, host: str, store_url: str) -> Config:
    """The demo's gateway config for one more "host" on the shared store: its own state,
    socket, port and name."""
    gw = base.gateway.model_copy(
        update={
            "state_dir": root / f"state-{host}",
            "control_socket": root / f"run-{host}" / "control.sock",
            "git_listen": f"127.0.0.1:{free_port()}",
            "audit_log": root / f"audit-{host}.log",
            "host_name": host,
            "store_url": store_url,
        }
    )
    return base.model_copy(update={"gateway": gw})


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
    listed_elsewhere: bool  # the second gateway lists the first's session, served by host A
    served_before: bool  # (control) git through the first gateway works before the revoke
    refused_after: bool  # ... and is refused "revoked" right after the second one revoked


def check_revocation_across_gateways(
    first: Config, second: Config, repo: str, root: Path
) -> SharedStoreChecks:
    a, b = ControlClient(first.gateway.control_socket), ControlClient(second.gateway.control_socket)
    key = new_private_key()
    issued = a.create_session(grants=[f"github.com/{repo}:read"], csr=make_csr(key).decode())
    listed = {s["id"]: s for s in b.list_sessions()}
    mine = listed.get(issued["session"]["id"], {})
    listed_elsewhere = str(mine.get("served_by", "")).startswith(HOST_A + "/")
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
