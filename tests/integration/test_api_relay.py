"""The GitHub API through the gateway: real gh and curl, the real gateway process, the double.

A "sandbox" here is a session bound to a loopback source address behind a listener on
LISTEN (what a sandbox network's gateway address is to a container). gh reaches
``api.github.com`` only through the gateway's egress proxy, which terminates TLS with the
interception CA and relays what the session's grants allow to the GitHub API double on
loopback, with the upstream token in place of the session's ``GH_TOKEN``. Every refusal is
also checked against the double: nothing it would have done happened.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airlock.host.bundle import GatewayEndpoint, write_api_trust, write_bundle
from airlock.testing.ports import free_port
from tests.github_cli import GH, clone_and_push, gh_env, run
from tests.world import HOST, TOKEN, ApiWorld, Bundle

pytestmark = pytest.mark.skipif(not Path(GH).exists(), reason="needs Debian's gh at /usr/bin/gh")

LOOP = "127.0.0.1"
LISTEN = "127.0.0.80"  # the "sandbox network's" gateway address
OTHER_SOURCE = "127.0.0.81"  # another "sandbox"
OWNER = "octo"
PROXY_PORT = free_port()  # the egress proxy's port on LISTEN
REQUEST_ID = re.compile(r"\(request (e-[0-9a-f]{16}-\d+)\)")


@dataclass
class Sandbox:
    """One bound session and what its tools get: a bundle, the env gh and curl use."""

    w: ApiWorld
    issued: dict[str, Any]
    bundle: Bundle
    source: str
    home: Path

    @property
    def session_id(self) -> str:
        return str(self.issued["session"]["id"])

    @property
    def api_token(self) -> str:
        return str(self.issued["api_token"])

    @property
    def proxy(self) -> str:
        return f"http://airlock:{self.issued['proxy_token']}@{LISTEN}:{PROXY_PORT}"

    def env(self, token: str | None = None) -> dict[str, str]:
        env = gh_env(
            self.home,
            proxy=self.proxy,
            ca_file=self.bundle.dir / "ca-bundle.pem",
            token=token or self.api_token,
        )
        # As in a sandbox: git's own trust is its config's, never a CA variable.
        env.pop("GIT_SSL_CAINFO", None)
        env["GIT_CONFIG_GLOBAL"] = str(self.bundle.gitconfig)
        return env

    def gh(
        self, *args: str, cwd: Path | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return run([GH, *args], self.env(**kw), cwd=cwd or self.home)

    def curl(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """curl through the proxy from this sandbox's source address; (status, JSON)."""
        argv = [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--interface",
            self.source,
            "-X",
            method,
            "-H",
            f"Authorization: token {token or self.api_token}",
            "-w",
            "\n%{http_code}",
        ]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        p = run([*argv, f"https://api.github.com{path}"], self.env())
        text, _, status = p.stdout.rpartition("\n")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = text
        return int(status or 0), data


def make_sandbox(w: ApiWorld, root: Path, source: str, *grants: str) -> Sandbox:
    issued, key = w.issue(*grants, require_activation=True)
    w.control.activate(
        issued["session"]["id"],
        container_id=os.urandom(32).hex(),
        network="test",
        address=source,
        gateway_address=LISTEN,
    )
    d = root / f"bundle-{issued['session']['id'][:8]}"
    write_bundle(d, issued, key, endpoint=GatewayEndpoint("airlock.internal", LISTEN, w.port))
    write_api_trust(d, issued["api"]["ca_pem"], None)
    home = root / f"home-{issued['session']['id'][:8]}"
    home.mkdir()
    return Sandbox(w, issued, Bundle(issued["session"]["id"], d), source, home)


@pytest.fixture(scope="module")
def aw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    w = ApiWorld(
        tmp_path_factory.mktemp("api-relay"),
        gateway_extra=f"dns_port = {free_port()}\n",
        api_extra='labels = ["agent"]',
        config_extra=f"[sandbox]\nproxy_port = {PROXY_PORT}\n",
    )
    w.start()
    w.control.add_listener(LISTEN)
    try:
        yield w
    finally:
        w.stop()


_n = iter(range(1, 10_000))


WORKFLOW = b"""name: CI
on:
  workflow_dispatch:
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo hi
"""


def new_repo(w: ApiWorld) -> str:
    """A repository with main, a README and a dispatchable workflow (so GitHub would run it)."""
    name = f"hello{next(_n)}"
    w.make_repo(
        OWNER, name, files={"README.md": b"# hello\n", ".github/workflows/ci.yml": WORKFLOW}
    )
    return name


def pushed_clone(sb: Sandbox, repo: str, branch: str = "agent/x") -> Path:
    """Clone through the gateway (the remote still says github.com), push ``branch``."""
    work = sb.home / repo
    clone_and_push(sb.env(), f"https://{HOST}/{OWNER}/{repo}", work, branch)
    return work


def api_lines(w: ApiWorld, session_id: str) -> list[dict[str, Any]]:
    return [e for e in w.audit_for(session_id) if e.get("event") == "api"]


def mutations_of(w: ApiWorld, repo: str) -> list[Any]:
    return [m for m in w.api.mutations if m.repo == f"{OWNER}/{repo}"]


# ------------------------------------------------------------------------------ gh works


def test_gh_opens_views_lists_and_comments_with_no_real_token(aw: ApiWorld, tmp_path: Path) -> None:
    repo = new_repo(aw)
    sb = make_sandbox(aw, tmp_path, LOOP, f"{HOST}/{OWNER}/{repo}:write")
    work = pushed_clone(sb, repo)
    remote = run(["git", "-C", str(work), "remote", "-v"], sb.env()).stdout
    assert f"https://{HOST}:{aw.port}/{OWNER}/{repo}" in remote  # what gh reads

    p = sb.gh(
        "pr",
        "create",
        "--title",
        "T",
        "--body",
        "B",
        "--head",
        "agent/x",
        "--base",
        "main",
        cwd=work,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"https://github.com/{OWNER}/{repo}/pull/1"
    [pr] = aw.api.pulls(OWNER, repo)
    assert (pr.title, pr.head_ref, pr.base_ref) == ("T", "agent/x", "main")
    assert pr.labels == ["agent"]  # added by the gateway

    view = sb.gh("pr", "view", "1", cwd=work)
    assert view.returncode == 0, view.stderr
    assert "title:\tT\n" in view.stdout
    listed = sb.gh("pr", "list", cwd=work)
    assert listed.returncode == 0 and listed.stdout.startswith("1\tT\tagent/x\tOPEN"), listed
    comment = sb.gh("pr", "comment", "1", "--body", "C", cwd=work)
    assert comment.returncode == 0, comment.stderr
    [commented] = [m for m in mutations_of(aw, repo) if m.kind == "comment.create"]
    assert commented.detail["body"] == "C"

    # The session remembers its pull request; the upstream saw only the upstream's token.
    shown = aw.control.show(sb.session_id)
    assert any(p.startswith(f"{HOST}/{OWNER}/{repo}#1 ") for p in shown["pulls"]), shown
    answered = [r for r in aw.api.requests if r.api in ("rest", "graphql")]
    assert answered and all(r.status != 401 and r.actor for r in answered), answered
    lines = api_lines(aw, sb.session_id)
    assert lines and all(line["decision"] == "allowed" for line in lines), lines
    assert any(line.get("pull") == f"{HOST}/{OWNER}/{repo}#1" for line in lines)
    text = aw.audit_log.read_text()
    assert sb.api_token not in text and TOKEN not in text


# ------------------------------------------------------------------------------ refusals


def _refused(p: subprocess.CompletedProcess[str], needle: str = "airlock:") -> None:
    assert p.returncode != 0, p.stdout
    assert needle in p.stderr, p.stderr


def test_a_pull_request_from_a_branch_it_may_not_push_is_refused(
    aw: ApiWorld, tmp_path: Path
) -> None:
    repo = new_repo(aw)
    sb = make_sandbox(aw, tmp_path, LOOP, f"{HOST}/{OWNER}/{repo}:write")
    work = pushed_clone(sb, repo)
    # main exists upstream, so GitHub would open it: only the gateway stands in the way.
    p = sb.gh(
        "pr",
        "create",
        "--title",
        "T",
        "--body",
        "B",
        "--head",
        "main",
        "--base",
        "agent/x",
        cwd=work,
    )
    _refused(p)
    assert aw.api.pulls(OWNER, repo) == []


def test_a_pull_request_on_an_ungranted_repository_is_not_found(
    aw: ApiWorld, tmp_path: Path
) -> None:
    granted, other = new_repo(aw), new_repo(aw)
    sb = make_sandbox(aw, tmp_path, LOOP, f"{HOST}/{OWNER}/{granted}:write")
    body = {"title": "T", "head": "agent/x", "base": "main"}
    status, data = sb.curl("POST", f"/repos/{OWNER}/{other}/pulls", body)
    missing_status, missing = sb.curl("POST", f"/repos/{OWNER}/no-such-repo/pulls", body)
    assert status == missing_status == 404
    strip = re.compile(r"\(request [^)]*\)|" + re.escape(other) + "|no-such-repo")
    assert strip.sub("", data["message"]) == strip.sub("", missing["message"])
    assert data["message"].startswith("airlock:")
    assert aw.api.pulls(OWNER, other) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["pr", "merge", "1", "--merge"],
        ["repo", "delete", "{repo}", "--yes"],
        ["api", "-X", "PUT", "repos/{repo}/collaborators/x"],
        ["secret", "list"],
        ["workflow", "run", "ci.yml"],
    ],
    ids=["merge", "repo-delete", "collaborator", "secret-list", "workflow-run"],
)
def test_dangerous_gh_commands_are_refused_and_change_nothing(
    aw: ApiWorld, tmp_path: Path, argv: list[str]
) -> None:
    repo = new_repo(aw)
    sb = make_sandbox(aw, tmp_path, LOOP, f"{HOST}/{OWNER}/{repo}:write")
    work = pushed_clone(sb, repo)
    opened = sb.gh(
        "pr",
        "create",
        "--title",
        "T",
        "--body",
        "B",
        "--head",
        "agent/x",
        "--base",
        "main",
        cwd=work,
    )
    assert opened.returncode == 0, opened.stderr
    before = len(mutations_of(aw, repo))
    p = sb.gh(*[a.replace("{repo}", f"{OWNER}/{repo}") for a in argv], cwd=work)
    _refused(p)
    assert len(mutations_of(aw, repo)) == before, mutations_of(aw, repo)[before:]
    assert aw.api.pulls(OWNER, repo)[0].state == "open"


def test_graphql_delete_ref_and_hidden_mutations_are_refused(aw: ApiWorld, tmp_path: Path) -> None:
    repo = new_repo(aw)
    sb = make_sandbox(aw, tmp_path, LOOP, f"{HOST}/{OWNER}/{repo}:write")
    pushed_clone(sb, repo)
    documents = [
        'mutation { deleteRef(input: {refId: "REF_x"}) { clientMutationId } }',
        'mutation { fine: deleteRef(input: {refId: "REF_x"}) { clientMutationId } }',
        "mutation { ...M } fragment M on Mutation "
        '{ deleteRef(input: {refId: "REF_x"}) { clientMutationId } }',
    ]
    before = len(aw.api.mutations)
    for doc in documents:
        p = sb.gh("api", "graphql", "-f", f"query={doc}")
        _refused(p)
    assert len(aw.api.mutations) == before


# ------------------------------------------------------------------------------ the token


def test_the_api_token_works_from_its_own_sandbox_only(aw: ApiWorld, tmp_path: Path) -> None:
    repo = new_repo(aw)
    mine = make_sandbox(aw, tmp_path, LOOP, f"{HOST}/{OWNER}/{repo}:read")
    other = make_sandbox(aw, tmp_path, OTHER_SOURCE, f"{HOST}/{OWNER}/{repo}:read")
    status, _ = mine.curl("GET", f"/repos/{OWNER}/{repo}")
    assert status == 200  # (control) the token works where it belongs
    # Another live sandbox presenting it, over its own authenticated proxy connection:
    status, data = other.curl("GET", f"/repos/{OWNER}/{repo}", token=mine.api_token)
    assert status == 401 and data["message"].startswith("airlock: Bad credentials"), data
    # The host: not a sandbox address, so the proxy does not even take the CONNECT.
    p = run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--proxy",
            f"http://{LISTEN}:{PROXY_PORT}",
            "--proxy-user",
            f"airlock:{mine.issued['proxy_token']}",
            "--interface",
            "127.0.0.82",
            "-H",
            f"Authorization: token {mine.api_token}",
            f"https://api.github.com/repos/{OWNER}/{repo}",
        ],
        mine.env(),
    )
    assert p.stdout.strip() in ("000", "407"), p


def test_no_token_and_a_wrong_token_are_told_apart(aw: ApiWorld, tmp_path: Path) -> None:
    repo = new_repo(aw)
    sb = make_sandbox(aw, tmp_path, LOOP, f"{HOST}/{OWNER}/{repo}:read")
    status, data = sb.curl("GET", f"/repos/{OWNER}/{repo}", token="airlock_api_" + "x" * 40)
    assert status == 401 and "Bad credentials" in data["message"]
    [line] = [e for e in api_lines(aw, sb.session_id) if e["status"] == 401]
    assert line["rule"] == "wrong_api_token" and REQUEST_ID.search(data["message"])
