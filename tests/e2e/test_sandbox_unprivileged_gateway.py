"""A sandbox served by a gateway that runs unprivileged (`gateway.user`): git and DNS on the
sandbox's own network still work, and the gateway process holds CAP_NET_BIND_SERVICE only."""

from __future__ import annotations

import subprocess
from pathlib import Path

from airlock.gateway.privileges import CAP_NET_BIND_SERVICE, capabilities
from airlock.testing.repos import git_env
from tests.e2e.conftest import E2E, GIT_TIMEOUT, Sandboxes
from tests.world import HOST, World

pytestmark = E2E
POOL = "10.216.80.0/20"  # this module's sandbox subnets (the other e2e modules use other /20s)
GATEWAY_USER = "airlock-gw-test"
GIT = f"timeout {GIT_TIMEOUT} git"


def test_sandbox_through_an_unprivileged_gateway(sbx_world: World, sandboxes: Sandboxes) -> None:
    assert sbx_world.proc is not None
    status = Path(f"/proc/{sbx_world.proc.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert "0" not in uid_line.split()[1:], uid_line
    assert capabilities(status)["CapEff"] == 1 << CAP_NET_BIND_SERVICE

    repo = sbx_world.make_repo("acme", "unpriv")
    script = f"""
set -e
cd /tmp
{GIT} clone -q https://{HOST}/acme/unpriv w
cd w
git -c user.name=s -c user.email=s@s commit -q --allow-empty -m from-sandbox
{GIT} push -q origin HEAD:refs/heads/from-sandbox
echo GW $(dig +short +time=2 +tries=1 airlock.internal)
"""
    r = sandboxes.run(script, [f"{HOST}/acme/unpriv:write=from-sandbox"])
    assert r.code == 0, r.output
    # DNS answered on port 53 of the sandbox network's gateway address, by the unprivileged
    # gateway (it bound that listener after the drop, when the sandbox was created).
    assert f"GW {r.sandbox.gateway_ip}" in r.output, r.output
    head = subprocess.run(
        ["git", f"--git-dir={repo}", "log", "-1", "--format=%s", "refs/heads/from-sandbox"],
        env=git_env(sbx_world.home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert head == "from-sandbox"
    assert sandboxes.leftovers(r.sandbox.id) == []
