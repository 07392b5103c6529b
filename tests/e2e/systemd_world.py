"""Run inside the systemd test container (tests/e2e/test_systemd_units.py), as root.

``setup``: a TLS CA, a bare repository, the upstream token (as the credential's source,
root's, 0600) and /etc/airlock/airlock.toml for a gateway that runs as a system user
under airlock-gateway.service, its token a systemd credential.
``upstream``: git's http-backend behind the GitHub-like front (testing/upstream.py) on
127.0.0.1:UPSTREAM_PORT, until SIGTERM (run as a transient unit).
``clone BUNDLE DEST``: git clone through the gateway with a session bundle.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from airlock.testing.repos import create_bare_repo, git_env
from airlock.testing.tls import TestTLS, make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream

ROOT = Path("/srv/airlock-test")
TLS_DIR = ROOT / "tls"
REPOS = ROOT / "repos"
TOKEN = "ghs_" + "SystemdUnitT0ken" + "x" * 20
TOKEN_SOURCE = Path("/etc/airlock/credentials/github-token")
OTHER_SECRET = Path("/etc/airlock/other-secret")  # a host secret the gateway must not read
CONFIG = Path("/etc/airlock/airlock.toml")
UPSTREAM_PORT = 9443
GIT_PORT = 8443
USER = "airlock-gw"

CONFIG_TEXT = f"""
[gateway]
state_dir = "/var/lib/airlock"
control_socket = "/run/airlock/gateway/control.sock"
git_listen = "127.0.0.1:{GIT_PORT}"
user = "{USER}"
audit_log = "/var/log/airlock/audit.jsonl"
control_uids = [0]

[sandbox]
bundle_dir = "/run/airlock/sandboxes"
pool = "10.231.0.0/16"  # apart from the default pool other tests on this host may use
spare_networks = 0  # the supervisor talks to the host's Docker: no networks made in advance

[[upstream]]
host = "github.com"
url = "https://127.0.0.1:{UPSTREAM_PORT}"
ca_file = "{TLS_DIR}/ca.pem"
token_file = "/run/credentials/airlock-gateway.service/github-token"
"""


def tls() -> TestTLS:
    return TestTLS(TLS_DIR / "ca.pem", TLS_DIR / "server.pem", TLS_DIR / "server.key")


def setup() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(ROOT, 0o755)
    make_test_ca_and_server_cert(TLS_DIR, ["localhost"], ["127.0.0.1"])
    os.chmod(TLS_DIR, 0o755)
    os.chmod(TLS_DIR / "ca.pem", 0o644)
    create_bare_repo(REPOS, "acme", "hello")
    for path, text in ((TOKEN_SOURCE, TOKEN + "\n"), (OTHER_SECRET, "supervise-secret\n")):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o600)
    CONFIG.write_text(CONFIG_TEXT)
    os.chmod(CONFIG, 0o644)


async def _serve() -> None:
    up = GitUpstream(REPOS, TOKEN_SOURCE, tls(), port=UPSTREAM_PORT)
    await up.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await up.stop()


def clone(bundle: str, dest: str) -> int:
    env = git_env(Path("/srv/airlock-test/home"), GIT_TERMINAL_PROMPT="0")
    env["GIT_CONFIG_GLOBAL"] = str(Path(bundle) / "gitconfig")
    Path("/srv/airlock-test/home").mkdir(exist_ok=True)
    r = subprocess.run(
        ["git", "clone", "https://github.com/acme/hello", dest],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "setup":
        setup()
    elif what == "upstream":
        asyncio.run(_serve())
    elif what == "clone":
        sys.exit(clone(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(f"unknown: {what}")
