"""A test world: git's own http-backend as the upstream, a gateway process, session bundles.

Everything listens on loopback only. Git runs with the machine's CA variables removed
(environment variables would beat the bundle's git config).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from airlock.gateway.pki import key_pem, make_csr, new_private_key
from airlock.host.bundle import GatewayEndpoint, write_bundle
from airlock.host.control_client import ControlClient
from airlock.testing.github_api import GitHubApiDouble
from airlock.testing.ports import free_port
from airlock.testing.repos import create_bare_repo, git_env
from airlock.testing.tls import make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream

T = TypeVar("T")
TOKEN = "ghs_" + "T3stUpstreamT0ken" + "x" * 19  # shaped like an App installation token
HOST = "github.com"


class LoopThread:
    """An asyncio loop in a thread, so servers run while tests call blocking git."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Bundle:
    session_id: str
    dir: Path

    @property
    def gitconfig(self) -> Path:
        return self.dir / "gitconfig"


class World:
    def __init__(self, root: Path, *, config_extra: str = "", gateway_extra: str = "") -> None:
        self.root = root
        self.repos = root / "upstream-repos"
        self.repos.mkdir()
        self.home = root / "home"
        self.home.mkdir()
        self.token_file = root / "secrets" / "token"
        self.token_file.parent.mkdir(mode=0o700)
        self.token_file.write_text(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        self.tls = make_test_ca_and_server_cert(root / "upstream-tls", ["localhost"], ["127.0.0.1"])
        self.state_dir = root / "state"
        self.socket = root / "run" / "control.sock"
        self.audit_log = root / "audit.log"
        self.gateway_log = root / "gateway.stderr"
        self.port = free_port()
        self.config_extra = config_extra
        self.gateway_extra = gateway_extra  # more lines for the [gateway] table
        self.config = root / "airlock.toml"
        self.loop = LoopThread()
        self.upstream = GitUpstream(self.repos, self.token_file, self.tls)
        self.proc: subprocess.Popen[bytes] | None = None
        self._n = 0

    # --- lifecycle ----------------------------------------------------------------------

    def write_config(self) -> None:
        self.config.write_text(
            f"""
[gateway]
state_dir = "{self.state_dir}"
control_socket = "{self.socket}"
git_listen = "127.0.0.1:{self.port}"
public_name = "airlock.internal"
control_uids = [{os.geteuid()}]
audit_log = "{self.audit_log}"
{self.gateway_extra}
[[upstream]]
host = "{HOST}"
url = "{self.upstream.url}"
ca_file = "{self.tls.ca_cert}"
{self.upstream_credential()}
{self.config_extra}
"""
        )

    def upstream_credential(self) -> str:
        """The upstream's credential in the config: the token file (AppWorld: a GitHub App)."""
        return f'token_file = "{self.token_file}"\n'

    def start(self) -> None:
        self.loop.run(self.upstream.start())
        self.write_config()
        self.start_gateway()

    def gateway_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}

    def gateway_popen(self) -> dict[str, Any]:
        """More subprocess.Popen arguments for the gateway (the bench adds its own)."""
        return {}

    def start_gateway(self) -> None:
        ready = self.root / "gateway.ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airlock.cli",
                "gateway",
                "--config",
                str(self.config),
                "--ready-file",
                str(ready),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.gateway_log, "ab"),
            env=self.gateway_env(),
            **self.gateway_popen(),
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.gateway_log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start in 30 s")
            time.sleep(0.05)

    def stop_gateway(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        self.proc = None
        return rc

    def stop(self) -> None:
        if self.proc is not None:
            self.stop_gateway()
        self.loop.run(self.upstream.stop())
        self.loop.close()

    # --- helpers ------------------------------------------------------------------------

    @property
    def control(self) -> ControlClient:
        return ControlClient(self.socket)

    def make_repo(self, owner: str, name: str, **kw: Any) -> Path:
        return create_bare_repo(self.repos, owner, name, **kw)

    def issue(self, *grants: str, **kw: Any) -> tuple[dict[str, Any], bytes]:
        key = new_private_key()
        issued = self.control.create_session(grants=list(grants), csr=make_csr(key).decode(), **kw)
        return issued, key_pem(key)

    def session(self, *grants: str, **kw: Any) -> Bundle:
        issued, key = self.issue(*grants, **kw)
        self._n += 1
        d = self.root / "bundles" / f"b{self._n}"
        write_bundle(
            d, issued, key, endpoint=GatewayEndpoint("airlock.internal", "127.0.0.1", self.port)
        )
        return Bundle(issued["session"]["id"], d)

    def git(
        self,
        bundle: Bundle | None,
        *args: str,
        cwd: Path | None = None,
        check: bool = False,
        env: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        extra = {"GIT_CONFIG_GLOBAL": str(bundle.gitconfig)} if bundle else {}
        e = git_env(self.home, GIT_TERMINAL_PROMPT="0", **extra)
        e.update(env or {})
        return subprocess.run(
            ["git", *args],
            cwd=cwd or self.root,
            env=e,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def clone(
        self, bundle: Bundle, repo: str, dest: Path, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        return self.git(bundle, "clone", *extra, f"https://{HOST}/{repo}", str(dest))

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def audit_for(self, session_id: str) -> list[dict[str, Any]]:
        return [e for e in self.audit() if e.get("session") == session_id]


class ApiWorld(World):
    """A World whose upstream has a GitHub API too: the double over the same bare repositories
    and token file, which the gateway's ``[upstream.api]`` points at (``api_extra``: more
    keys for that table, e.g. ``labels = ["agent"]``)."""

    def __init__(
        self, root: Path, *, config_extra: str = "", gateway_extra: str = "", api_extra: str = ""
    ) -> None:
        super().__init__(root, config_extra=config_extra, gateway_extra=gateway_extra)
        self.api = GitHubApiDouble(self.tls, repos_root=self.repos, token_file=self.token_file)
        self.loop.run(self.api.start())
        self.api_extra = api_extra

    def upstream_credential(self) -> str:
        return (
            super().upstream_credential()
            + f'[upstream.api]\nurl = "{self.api.url}"\n{self.api_extra}\n'
        )

    def stop(self) -> None:
        self.loop.run(self.api.stop())
        super().stop()


def system_user(name: str) -> pwd.struct_passwd:
    """A system user for an unprivileged gateway, created on first use (needs root)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
        return pwd.getpwnam(name)


def unprivileged_world(root: Path, account: pwd.struct_passwd, config_extra: str = "") -> World:
    """A World whose gateway runs as ``account`` (gateway.user). ``root`` must not be under
    pytest's 0700 temporary directories: that user must reach its config."""
    root.chmod(0o755)
    w = World(root, config_extra=config_extra, gateway_extra=f'user = "{account.pw_name}"\n')
    # What an operator does: the gateway's user owns its token file (and may write its ready
    # file here); everything else it needs, the launcher hands over itself.
    for p in (root, w.token_file.parent, w.token_file):
        os.chown(p, account.pw_uid, account.pw_gid)
    return w


def run_gateway_cli(
    config: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`airlock gateway --config CONFIG` to its end (for start-up refusals), without the
    caller's GitHub credential variables unless ``env`` adds some."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "airlock.cli", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        env=e,
        timeout=60,
    )
