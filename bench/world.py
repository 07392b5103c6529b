"""The bench's world: tests/world.py's World with the upstream in its own process.

Only the limits that would otherwise stop the bench are raised (see ``BENCH_CONFIG``); every
other gateway setting is the shipped default, so the figures are what a user would see.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.world import HOST, TOKEN, Bundle, World

from airlock.host.control_client import ControlError
from bench.common import REPO_ROOT, child_pythonpath, die_with_parent, stop_process, wait_file

# Why each one: the bench is one client address (127.0.0.1) doing tens of thousands of
# requests with a handful of sessions, and moving tens of GB through one session.
BENCH_CONFIG = """
[sessions]
max_requests = 100000000          # default 20000 per session lifetime
max_bytes = 1000000000000000      # default 20 GiB per session lifetime

[limits]
session_requests = "1000000/minute"      # default 1200/minute
session_bytes = "1000000000000000/hour"  # default 8 GiB/hour
max_connections_per_source = 4096        # default 128; 500 sessions share 127.0.0.1
global_inflight = 1024                   # default 256; 500 clones at once (scale)
"""

BENCH_CONFIG_SUMMARY = (
    "sessions.max_requests=1e8 (default 20000), sessions.max_bytes=1e15 (default 20 GiB), "
    "limits.session_requests=1000000/minute (default 1200/minute), "
    "limits.session_bytes=1e15/hour (default 8 GiB/hour), "
    "limits.max_connections_per_source=4096 (default 128: every bench client is 127.0.0.1), "
    "limits.global_inflight=1024 (default 256: the scale section's 500 clones start at once); "
    "everything else (global_requests 2000/s, session_inflight 16, "
    "chunk_size 256 KiB, timeouts) is the shipped default"
)


def basic_auth(token: str = TOKEN) -> str:
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


class BenchWorld(World):
    """World with the upstream as a subprocess; the gateway is World's own subprocess."""

    def __init__(self, root: Path, *, extra: str = "", gateway_extra: str = "") -> None:
        """``extra``: more config tables after BENCH_CONFIG (not ``[sessions]``/``[limits]``);
        ``gateway_extra``: more lines for the ``[gateway]`` table."""
        super().__init__(root, config_extra=BENCH_CONFIG + extra, gateway_extra=gateway_extra)
        self.upstream_proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.start_upstream()
        self.write_config()
        self.start_gateway()

    def start_upstream(self) -> None:
        ready = self.root / "upstream.ready"
        ready.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GH_", "GITHUB_"))}
        env["PYTHONPATH"] = child_pythonpath()
        self.upstream_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.upstream_proc",
                "--repos",
                str(self.repos),
                "--token-file",
                str(self.token_file),
                "--tls-dir",
                str(self.tls.ca_cert.parent),
                "--ready",
                str(ready),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "upstream.stderr", "ab"),
            preexec_fn=die_with_parent,
        )
        self.upstream.port = int(wait_file(ready, 30, self.upstream_proc))

    def gateway_env(self) -> dict[str, str]:
        return {**super().gateway_env(), "PYTHONPATH": child_pythonpath()}

    def gateway_popen(self) -> dict[str, Any]:
        # The gateway dies with the bench, and runs from the repository like the bench.
        return {"cwd": REPO_ROOT, "preexec_fn": die_with_parent}

    def restart_gateway(self) -> int:
        """A fresh gateway process (its VmHWM starts over); returns its pid."""
        if self.proc is not None:
            self.stop_gateway()
        self.start_gateway()
        return self.gateway_pid

    @property
    def gateway_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.stop_gateway()
        stop_process(self.upstream_proc)
        self.upstream_proc = None
        self.loop.close()

    def session_retrying(self, *grants: str, attempts: int = 50) -> Bundle:
        """World.session, waiting out the control API's own rate limit (100/s by default)."""
        for _ in range(attempts - 1):
            try:
                return self.session(*grants)
            except ControlError as exc:
                if exc.status != 429:
                    raise
                time.sleep(0.2)
        return self.session(*grants)

    # --- URLs ------------------------------------------------------------------------

    def direct_url(self, repo: str) -> str:
        return f"{self.upstream.url}/{repo}.git"

    @staticmethod
    def airlock_url(repo: str) -> str:
        return f"https://{HOST}/{repo}"


__all__ = ["HOST", "TOKEN", "BenchWorld", "Bundle", "basic_auth"]
