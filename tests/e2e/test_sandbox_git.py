"""Git from inside real sandboxes, through the real gateway, with the plain GitHub URLs.

What is proved here, on the real Docker engine with airlock's own SandboxManager:
* a sandbox clones, fetches and pushes a write-granted repository using the URLs a user types
  (``https://github.com/OWNER/REPO`` and ``git@github.com:OWNER/REPO.git``), and the pushed
  commit lands in the upstream; every request is logged against the sandbox's session,
  container and address;
* a read grant clones but refuses a push (the upstream ref does not move);
* a repository outside the grants gets exactly the answer a missing one gets;
* the upstream token is nowhere the sandbox (or someone inspecting it) can look: not in
  ``docker inspect``, not in its environment, not in any file it can read, not in its logs,
  not on the bundle's host directory, even after it has used the token-backed gateway.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest

from airlock.testing.repos import git_env
from tests.e2e.conftest import E2E, GIT_TIMEOUT, RunResult, Sandboxes
from tests.world import HOST, TOKEN, World

pytestmark = E2E
POOL = "10.216.0.0/20"

WRITE_REPO = "acme/widgets"
READ_REPO = "acme/handbook"
HIDDEN_REPO = "acme/secret-plans"  # exists upstream, never granted
MISSING_REPO = "acme/no-such-repo"  # granted (write), but does not exist upstream
GRANTS = [
    f"{HOST}/{WRITE_REPO}:write=agent/**,ff:main,feature",
    f"{HOST}/{READ_REPO}:read",
    f"{HOST}/{MISSING_REPO}:write",
]
GIT = f"timeout {GIT_TIMEOUT} git"


@pytest.fixture(scope="module")
def repos(sbx_world: World) -> dict[str, Path]:
    return {
        name: sbx_world.make_repo(*name.split("/")) for name in (WRITE_REPO, READ_REPO, HIDDEN_REPO)
    }


def _host_git_env(repo: Path) -> dict[str, str]:
    # The World's home for host-side git (upstream-repos/OWNER/REPO.git -> the World's root).
    return git_env(repo.parents[2] / "home")


def upstream_head(repo: Path, ref: str = "refs/heads/main") -> str:
    return subprocess.run(
        ["git", f"--git-dir={repo}", "rev-parse", ref],
        env=_host_git_env(repo),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def upstream_log(repo: Path) -> str:
    return subprocess.run(
        ["git", f"--git-dir={repo}", "log", "--format=%s", "main"],
        env=_host_git_env(repo),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def requests_of(world: World, session_id: str | None) -> list[dict[str, object]]:
    return [e for e in world.audit_for(str(session_id)) if e.get("event") == "git_request"]


def test_clone_fetch_push_through_plain_github_urls(
    sandboxes: Sandboxes, sbx_world: World, repos: dict[str, Path]
) -> None:
    before = upstream_head(repos[WRITE_REPO])
    script = f"""
    set -e
    git config --global user.name sandbox && git config --global user.email s@sandbox.invalid
    {GIT} ls-remote https://github.com/{WRITE_REPO}
    {GIT} clone -q https://github.com/{WRITE_REPO} /tmp/a
    {GIT} clone -q git@github.com:{WRITE_REPO}.git /tmp/b
    cd /tmp/a
    echo pushed-from-sandbox > note.txt && git add note.txt && git commit -qm "from the sandbox"
    {GIT} push -q origin HEAD:main
    {GIT} push -q https://github.com/{WRITE_REPO} HEAD:refs/heads/feature
    cd /tmp/b
    {GIT} fetch -q origin
    echo "fetched: $(git log --format=%s -1 origin/main)"
    {GIT} pull -q --ff-only
    echo "pulled: $(cat note.txt)"
    echo ALL-OK
    """
    r: RunResult = sandboxes.run(script, GRANTS)
    assert r.code == 0, r.output
    assert "ALL-OK" in r.output, r.output
    assert "fetched: from the sandbox" in r.output
    assert "pulled: pushed-from-sandbox" in r.output
    # The push really reached the upstream, on both refs.
    after = upstream_head(repos[WRITE_REPO])
    assert after != before
    assert "from the sandbox" in upstream_log(repos[WRITE_REPO])
    assert upstream_head(repos[WRITE_REPO], "refs/heads/feature") == after

    sb = r.sandbox
    reqs = requests_of(sbx_world, sb.session_id)
    assert reqs, "no git requests in the audit log"
    assert all(e["status"] == 200 and e["reason"] == "ok" for e in reqs), reqs
    assert {e["source"] for e in reqs} == {str(sb.sandbox_ip)}
    assert {e["container"] for e in reqs} == {sb.container_id}
    services = {(e["service"], e["endpoint"]) for e in reqs}
    assert ("git-receive-pack", "rpc") in services and ("git-upload-pack", "rpc") in services


def test_read_grant_refuses_push(
    sandboxes: Sandboxes, sbx_world: World, repos: dict[str, Path]
) -> None:
    before = upstream_head(repos[READ_REPO])
    script = f"""
    git config --global user.name sandbox && git config --global user.email s@sandbox.invalid
    {GIT} clone -q https://github.com/{READ_REPO} /tmp/r && echo CLONED || exit 3
    cd /tmp/r && git commit -q --allow-empty -m "should not land"
    {GIT} push origin HEAD:main 2>&1; echo "push exit $?"
    {GIT} push origin HEAD:refs/heads/other 2>&1; echo "push exit $?"
    """
    r = sandboxes.run(script, GRANTS)
    assert r.code == 0, r.output
    assert "CLONED" in r.output
    exits = re.findall(r"push exit (\d+)", r.output)
    assert len(exits) == 2 and all(code != "0" for code in exits), r.output
    assert "may not push" in r.output, r.output
    assert upstream_head(repos[READ_REPO]) == before
    assert "should not land" not in upstream_log(repos[READ_REPO])
    reasons = [e.get("reason") for e in requests_of(sbx_world, r.sandbox.session_id)]
    assert "read_only_grant" in reasons, reasons
    assert not any(
        e["service"] == "git-receive-pack" and e["endpoint"] == "rpc"
        for e in requests_of(sbx_world, r.sandbox.session_id)
    ), "a receive-pack body reached the proxy on a read grant"


def test_ungranted_repo_is_refused_like_a_missing_one(
    sandboxes: Sandboxes, sbx_world: World, repos: dict[str, Path]
) -> None:
    script = f"""
    for repo in {HIDDEN_REPO} {MISSING_REPO}; do
        echo "== $repo"
        {GIT} ls-remote https://github.com/$repo 2>&1; echo "exit $?"
        {GIT} clone -q https://github.com/$repo /tmp/x 2>&1; echo "exit $?"
        {GIT} push https://github.com/$repo HEAD:main 2>&1; echo "exit $?"
    done
    """
    r = sandboxes.run(script, GRANTS)
    assert r.code == 0, r.output
    exits = re.findall(r"exit (\d+)", r.output)
    assert len(exits) == 6 and all(code != "0" for code in exits), r.output
    hidden, missing = r.output.split(f"== {MISSING_REPO}")
    # Same wording for both; only the request ids differ.
    scrub = re.compile(r"request id [0-9a-f]+|secret-plans|no-such-repo")
    assert scrub.sub("X", hidden.split(f"== {HIDDEN_REPO}")[1]) == scrub.sub("X", missing)
    assert "repository not found" in hidden
    reasons = {
        (e.get("repo"), e.get("reason")) for e in requests_of(sbx_world, r.sandbox.session_id)
    }
    assert (HIDDEN_REPO, "not_granted") in reasons, reasons
    assert (MISSING_REPO, "upstream_404") in reasons, reasons
    # Nothing in the hidden repo was touched.
    assert "Initial commit" in upstream_log(repos[HIDDEN_REPO])


def test_the_upstream_token_is_nowhere_in_or_around_the_sandbox(
    sandboxes: Sandboxes, sbx_world: World, repos: dict[str, Path]
) -> None:
    token_forms = [
        TOKEN,
        base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode(),
        TOKEN[4:],  # without the ghs_ prefix, in case something strips it
    ]
    sb = sandboxes.start("sleep 300", GRANTS)
    try:
        # Use the gateway first, so the token has been in play for this session.
        code, out = sandboxes.exec(
            sb, f"{GIT} clone -q https://github.com/{WRITE_REPO} /tmp/w && echo CLONED"
        )
        assert code == 0 and "CLONED" in out, out
        inspect = json.dumps(sandboxes.api.inspect_container(sb.container_id))
        network = json.dumps(sandboxes.api.inspect_network(sb.network))
        code, env = sandboxes.exec(sb, "env; cat /proc/1/environ | tr '\\0' '\\n'")
        assert code == 0 and "AIRLOCK_SANDBOX=" in env, env
        # grep inside the sandbox over what it can see, as its own user and as (cap-less)
        # root. Positive control: a planted marker is found by the very same command.
        search = "/run/airlock /etc /home /tmp /proc/1/cmdline"
        plant = "echo GREP-CONTROL-MARKER | tee /tmp/marker.txt > $HOME/marker.txt"
        grep_ctl = f"{plant}; grep -rlsF GREP-CONTROL-MARKER {search}"
        # (grep exits 2 when some file is unreadable, e.g. /etc/shadow; matches still print.)
        code, out = sandboxes.exec(sb, grep_ctl)
        assert code in (0, 2) and "/tmp/marker.txt" in out and "/home/sandbox/marker.txt" in out, (
            out
        )
        found: list[str] = []
        for form in token_forms:
            for user in (None, "0"):
                code, out = sandboxes.exec(sb, f"grep -rlsF -- '{form}' {search}", user=user)
                assert code in (1, 2), f"grep ({code}): {out}"
                if out.strip():
                    found.append(f"{user or 'sandbox'}: {out}")
        logs = sandboxes.logs(sb)
        # The whole container filesystem from the host side (image layers + what it wrote),
        # and the host directory the bundle is mounted from.
        graph = sandboxes.api.inspect_container(sb.container_id)["GraphDriver"]["Data"]
        host_dirs = [graph["MergedDir"], str(sb.bundle_dir)]
        host_grep = subprocess.run(
            ["grep", "-rlsF", "-e", token_forms[0], "-e", token_forms[1], *host_dirs],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert host_grep.returncode in (1, 2), host_grep.stderr
        host_ctl = subprocess.run(
            ["grep", "-rlsF", "GREP-CONTROL-MARKER", *host_dirs],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "home/sandbox/marker.txt" in host_ctl.stdout, host_ctl
    finally:
        sandboxes.teardown(sb)
    for form in token_forms:
        assert form not in inspect
        assert form not in network
        assert form not in env
        assert form not in logs
    assert not found, found
    assert host_grep.stdout == "", host_grep.stdout
    # And the gateway did use the token for this session (so the absence means something).
    assert any(e["reason"] == "ok" for e in requests_of(sbx_world, sb.session_id))
    assert TOKEN not in sbx_world.audit_log.read_text()
