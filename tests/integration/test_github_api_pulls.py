"""The GitHub API double serves pull requests to the real gh CLI, and checks what GitHub checks.

Debian's gh 2.23.0 and curl talk to the double over HTTPS on loopback; git pushes to the git
upstream that shares the double's bare repositories. gh reaches ``api.github.com`` (the
github.com layout) through a CONNECT proxy that only knows the two loopback servers, and the
GHE layout directly (``GH_HOST=localhost:PORT``). The dangerous calls (merge, repository
deletion, secrets, workflow dispatch, collaborators, ``deleteRef``, branch protection) must
work against the double and be recorded: that is what lets the gateway's refusal tests prove
that the gateway, not the double, refused them.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from airlock.testing.github_api import GitHubApiDouble, StaticToken
from airlock.testing.github_state import Mutation
from airlock.testing.repos import create_bare_repo, git_env
from airlock.testing.tls import TestTLS, make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream
from tests.github_cli import GH, ConnectProxy, gh_env, run
from tests.world import LoopThread

pytestmark = pytest.mark.skipif(not Path(GH).exists(), reason="needs Debian's gh at /usr/bin/gh")

OWNER = "octo"
TOKEN = "ghp_" + "Pu11sT3stT0ken" + "0" * 22  # the token file's token: every permission
READER = "ghp_" + "ReadOnlyT0ken" + "0" * 23  # a static token that may only read
OTHER = "ghp_" + "OtherRepoT0ken" + "0" * 22  # may use octo/elsewhere only
APP_ID = 4321
INSTALL = 77
WORKFLOW = b"""name: CI
on:
  workflow_dispatch:
  push:
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo hi
"""
MSG_INTEGRATION = "Resource not accessible by integration"
_names = itertools.count(1)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def app_jwt(key: rsa.RSAPrivateKey) -> str:
    """GitHub's recipe, from its documentation: RS256, iat a minute back, ten minutes of life."""
    iat = int(time.time()) - 60
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"iat": iat, "exp": iat + 600, "iss": APP_ID}).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url(sig)}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Pulls:
    """The servers (module-wide) and how to reach them."""

    root: Path
    tls: TestTLS
    repos: Path
    api: GitHubApiDouble
    upstream: GitUpstream
    proxy: ConnectProxy
    loop: LoopThread
    app_key: rsa.RSAPrivateKey

    def new_repo(self, **kw: Any) -> str:
        """A fresh repository (main with a README and a dispatchable workflow)."""
        name = f"hello{next(_names)}"
        create_bare_repo(
            self.repos,
            OWNER,
            name,
            files={"README.md": b"# hello\n", ".github/workflows/ci.yml": WORKFLOW},
        )
        self.api.add_repository(OWNER, name, **kw)
        return name

    def env(self, token: str | None = TOKEN, home: str = "home") -> dict[str, str]:
        return gh_env(
            self.root / home,
            proxy=self.proxy.url,
            ca_file=self.tls.ca_cert,
            token=token,
            git_token=TOKEN,
        )

    def clone_with_branch(self, name: str, branch: str = "agent/x") -> Path:
        """Clone ``octo/<name>`` from https://github.com, commit on ``branch`` and push it."""
        work = self.root / "work" / name
        env = self.env()
        self.git(env, None, "clone", f"https://github.com/{OWNER}/{name}", str(work))
        self.git(env, work, "checkout", "-b", branch)
        (work / f"{branch.replace('/', '-')}.txt").write_text(f"{branch}\n")
        self.git(env, work, "add", ".")
        self.git(env, work, "commit", "-m", f"work on {branch}")
        self.git(env, work, "push", "origin", branch)
        return work

    @staticmethod
    def git(env: dict[str, str], cwd: Path | None, *args: str) -> str:
        p = run(["git", *args], env, cwd=cwd)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def gh(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run([GH, *args], env or self.env(), cwd=cwd or self.root)

    def ok(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        p = self.gh(*args, cwd=cwd, env=env)
        assert p.returncode == 0, f"gh {' '.join(args)}: {p.stdout}\n{p.stderr}"
        return p.stdout

    def curl(
        self,
        method: str,
        path: str,
        token: str | None = TOKEN,
        body: Any = None,
        scheme: str = "token",
    ) -> Reply:
        """One request with curl, straight to the double (no proxy): status, headers, JSON."""
        argv = [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--cacert",
            str(self.tls.ca_cert),
            "-X",
            method,
            "-D",
            "-",
            "-H",
            "Accept: application/vnd.github+json",
        ]
        if token is not None:
            argv += ["-H", f"Authorization: {scheme} {token}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        p = run([*argv, self.api.url + path], git_env(self.root / "curl-home"))
        assert p.returncode == 0, p.stderr
        head, _, text = p.stdout.replace("\r\n", "\n").partition("\n\n")
        status_line, *lines = head.splitlines()
        headers = {}
        for line in lines:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return Reply(int(status_line.split()[1]), headers, json.loads(text) if text else None)

    def graphql(
        self, query: str, token: str | None = TOKEN, path: str = "/graphql", **v: Any
    ) -> Reply:
        return self.curl("POST", path, token, {"query": query, "variables": v})

    def mint(self, permissions: dict[str, str], repositories: list[str]) -> str:
        """An installation token of the test App, narrowed to ``repositories``/``permissions``."""
        reply = self.curl(
            "POST",
            f"/app/installations/{INSTALL}/access_tokens",
            app_jwt(self.app_key),
            {"repositories": repositories, "permissions": permissions},
            scheme="Bearer",
        )
        assert reply.status == 201, reply.body
        return str(reply.body["token"])

    def mutations(self, repo: str, kind: str | None = None) -> list[Mutation]:
        return [
            m
            for m in self.api.mutations
            if m.repo == f"{OWNER}/{repo}" and (kind is None or m.kind == kind)
        ]

    def bare_sha(self, repo: str, ref: str) -> str | None:
        p = run(
            [
                "git",
                f"--git-dir={self.repos / OWNER / f'{repo}.git'}",
                "rev-parse",
                "--verify",
                "--quiet",
                ref,
            ],
            git_env(self.root / "git-home"),
        )
        return p.stdout.strip() or None


@pytest.fixture(scope="module")
def pulls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pulls]:
    root = tmp_path_factory.mktemp("pulls")
    tls = make_test_ca_and_server_cert(
        root / "tls", ["localhost", "github.com", "api.github.com"], ["127.0.0.1"]
    )
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    repos = root / "repos"
    repos.mkdir()
    api = GitHubApiDouble(
        tls,
        repos_root=repos,
        token_file=token_file,
        tokens={
            READER: StaticToken(
                "reader",
                permissions={"metadata": "read", "contents": "read", "pull_requests": "read"},
            ),
            OTHER: StaticToken("outsider", repositories=frozenset({f"{OWNER}/elsewhere"})),
        },
    )
    app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    api.register_app(
        APP_ID,
        app_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        slug="airlock-test",
    )
    upstream = GitUpstream(repos, token_file, tls, token_check=api.check_token)
    loop = LoopThread()
    loop.run(api.start())
    loop.run(upstream.start())
    proxy = ConnectProxy(
        {"api.github.com": int(api.url.rsplit(":", 1)[1]), "github.com": upstream.port}
    )
    loop.run(proxy.start())
    world = Pulls(root, tls, repos, api, upstream, proxy, loop, app_key)
    try:
        yield world
    finally:
        loop.run(proxy.stop())
        loop.run(upstream.stop())
        loop.run(api.stop())
        loop.close()
    # Nothing went anywhere but the two loopback servers.
    assert proxy.refused == []


def install_app(pulls: Pulls, *names: str) -> None:
    """(Re)install the App on ``octo`` for ``names`` with the permissions tests narrow from."""
    pulls.api.add_installation(
        INSTALL,
        APP_ID,
        OWNER,
        list(names),
        {"metadata": "read", "contents": "write", "pull_requests": "write", "issues": "write"},
    )


# -- the gh pull-request flow -----------------------------------------------------------------


def test_gh_creates_views_lists_and_comments_on_a_pull_request(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    work = pulls.clone_with_branch(repo)

    out = pulls.ok(
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
    assert out.strip() == f"https://github.com/{OWNER}/{repo}/pull/1"
    [pr] = pulls.api.pulls(OWNER, repo)
    assert (pr.number, pr.title, pr.body, pr.head_ref, pr.base_ref, pr.state) == (
        1,
        "T",
        "B",
        "agent/x",
        "main",
        "open",
    )
    assert pr.user == "airlock-bot"
    [created] = pulls.mutations(repo, "pull_request.create")
    assert created.api == "graphql" and created.detail["head"] == "agent/x"
    # GraphQL node ids look like GitHub's.
    assert pr.node_id.startswith("PR_kwDO")

    view = pulls.ok("pr", "view", "1", cwd=work)
    assert "title:\tT\n" in view and "state:\tOPEN\n" in view and "author:\tairlock-bot\n" in view
    assert f"url:\thttps://github.com/{OWNER}/{repo}/pull/1\n" in view
    fields = json.loads(
        pulls.ok("pr", "view", "1", "--json", "number,title,state,headRefName", cwd=work)
    )
    assert fields == {"number": 1, "title": "T", "state": "OPEN", "headRefName": "agent/x"}

    listed = pulls.ok("pr", "list", cwd=work)
    assert listed.startswith("1\tT\tagent/x\tOPEN\t")

    comment_url = pulls.ok("pr", "comment", "1", "--body", "C", cwd=work).strip()
    assert comment_url.startswith(f"https://github.com/{OWNER}/{repo}/pull/1#issuecomment-")
    [commented] = pulls.mutations(repo, "comment.create")
    assert commented.detail["body"] == "C"
    # The same state over REST: the PR, and its conversation comment.
    reply = pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls/1")
    assert reply.status == 200
    body = reply.body
    assert body["number"] == 1 and body["state"] == "open" and body["draft"] is False
    assert body["html_url"] == f"https://github.com/{OWNER}/{repo}/pull/1"
    assert body["url"] == f"https://api.github.com/repos/{OWNER}/{repo}/pulls/1"
    assert body["head"]["ref"] == "agent/x" and body["base"]["ref"] == "main"
    assert body["head"]["sha"] == pulls.bare_sha(repo, "refs/heads/agent/x")
    assert body["base"]["sha"] == pulls.bare_sha(repo, "refs/heads/main")
    assert body["user"]["login"] == "airlock-bot" and body["node_id"] == pr.node_id
    assert reply.headers["x-github-request-id"]
    comments = pulls.curl("GET", f"/repos/{OWNER}/{repo}/issues/1/comments").body
    assert [c["body"] for c in comments] == ["C"]
    assert comments[0]["node_id"].startswith("IC_kwDO")


def test_gh_merges_for_real_in_the_bare_repository(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    work = pulls.clone_with_branch(repo)
    old_main = pulls.bare_sha(repo, "refs/heads/main")
    head = pulls.bare_sha(repo, "refs/heads/agent/x")
    pulls.ok(
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

    pulls.ok("pr", "merge", "1", "--merge", cwd=work)

    [merged] = pulls.mutations(repo, "pull_request.merge")
    assert merged.detail["method"] == "merge"
    new_main = pulls.bare_sha(repo, "refs/heads/main")
    assert new_main == merged.detail["sha"] != old_main
    parents = pulls.git(
        pulls.env(),
        None,
        f"--git-dir={pulls.repos / OWNER / f'{repo}.git'}",
        "rev-list",
        "--parents",
        "-n",
        "1",
        "refs/heads/main",
    ).split()
    assert parents == [new_main, old_main, head]
    state = json.loads(pulls.ok("pr", "view", "1", "--json", "state", cwd=work))
    assert state == {"state": "MERGED"}
    # Merging twice is refused the way GitHub refuses it.
    reply = pulls.curl("PUT", f"/repos/{OWNER}/{repo}/pulls/1/merge", body={})
    assert reply.status == 405 and reply.body["message"] == "Pull Request is not mergeable"


def test_a_branch_pushed_with_git_becomes_pr_able(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    create = {"title": "T", "head": "agent/late", "base": "main"}
    before = pulls.curl("POST", f"/repos/{OWNER}/{repo}/pulls", body=create)
    assert before.status == 422
    assert before.body["message"] == "Validation Failed"
    assert before.body["errors"] == [
        {"resource": "PullRequest", "code": "invalid", "field": "head"}
    ]
    pulls.clone_with_branch(repo, "agent/late")
    after = pulls.curl("POST", f"/repos/{OWNER}/{repo}/pulls", body=create)
    assert after.status == 201, after.body
    assert after.body["number"] == 1 and after.body["head"]["ref"] == "agent/late"
    assert after.headers["location"] == f"https://api.github.com/repos/{OWNER}/{repo}/pulls/1"
    duplicate = pulls.curl("POST", f"/repos/{OWNER}/{repo}/pulls", body=create)
    assert duplicate.status == 422
    assert duplicate.body["errors"] == [
        {
            "resource": "PullRequest",
            "code": "custom",
            "message": f"A pull request already exists for {OWNER}:agent/late.",
        }
    ]
    # List filters.
    assert [
        p["number"]
        for p in pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls?head={OWNER}:agent/late").body
    ] == [1]
    assert pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls?head={OWNER}:other").body == []
    assert pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls?state=closed").body == []
    assert [
        p["number"]
        for p in pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls?base=main&state=all").body
    ] == [1]


# -- the dangerous calls work (so a gateway's refusal is the gateway's) ----------------------


def test_gh_deletes_a_repository(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    pulls.ok("repo", "delete", f"{OWNER}/{repo}", "--yes")
    [deleted] = pulls.mutations(repo, "repository.delete")
    assert deleted.api == "rest" and deleted.actor == "airlock-bot"
    gone = pulls.gh("repo", "view", f"{OWNER}/{repo}")
    assert gone.returncode != 0
    assert f"Could not resolve to a Repository with the name '{OWNER}/{repo}'." in gone.stderr
    assert pulls.curl("GET", f"/repos/{OWNER}/{repo}").status == 404


def test_gh_lists_secrets_and_runs_a_workflow(pulls: Pulls) -> None:
    repo = pulls.new_repo(secrets=["DEPLOY_KEY", "NPM_TOKEN"])
    out = pulls.ok("secret", "list", "-R", f"{OWNER}/{repo}")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["DEPLOY_KEY", "NPM_TOKEN"]
    assert any(
        r.path == f"/repos/{OWNER}/{repo}/actions/secrets" and r.status == 200
        for r in pulls.api.requests
    )

    pulls.ok("workflow", "run", "ci.yml", "-R", f"{OWNER}/{repo}")
    [dispatched] = pulls.mutations(repo, "workflow.dispatch")
    assert dispatched.detail["path"] == ".github/workflows/ci.yml"
    assert dispatched.detail["ref"] == "main"
    listed = pulls.curl("GET", f"/repos/{OWNER}/{repo}/actions/workflows").body
    assert [(w["name"], w["path"]) for w in listed["workflows"]] == [
        ("CI", ".github/workflows/ci.yml")
    ]


def test_gh_api_adds_a_collaborator(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    out = pulls.ok("api", "-X", "PUT", f"repos/{OWNER}/{repo}/collaborators/x")
    assert json.loads(out)["invitee"]["login"] == "x"
    [added] = pulls.mutations(repo, "collaborator.add")
    assert added.detail == {"login": "x", "permission": "push"}


def test_gh_api_graphql_deletes_a_ref(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    pulls.clone_with_branch(repo, "doomed")
    assert pulls.bare_sha(repo, "refs/heads/doomed") is not None
    found = json.loads(
        pulls.ok(
            "api",
            "graphql",
            "-F",
            f"owner={OWNER}",
            "-F",
            f"name={repo}",
            "-f",
            "query=query($owner: String!, $name: String!) { repository(owner: $owner, "
            'name: $name) { ref(qualifiedName: "refs/heads/doomed") { id name } } }',
        )
    )
    ref = found["data"]["repository"]["ref"]
    assert ref["name"] == "doomed" and ref["id"].startswith("REF_")
    out = pulls.ok(
        "api",
        "graphql",
        "-f",
        f"id={ref['id']}",
        "-f",
        "query=mutation($id: ID!) { deleteRef(input: {refId: $id}) { clientMutationId } }",
    )
    assert json.loads(out) == {"data": {"deleteRef": {"clientMutationId": None}}}
    assert pulls.bare_sha(repo, "refs/heads/doomed") is None
    [deleted] = pulls.mutations(repo, "ref.delete")
    assert deleted.api == "graphql" and deleted.detail["ref"] == "refs/heads/doomed"


def test_graphql_updates_branch_protection_and_creates_refs(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    rule = pulls.api.state.add_protection(
        OWNER, repo, "main", requiresApprovingReviews=True, requiredApprovingReviewCount=2
    )
    listed = pulls.graphql(
        "query($o: String!, $n: String!) { repository(owner: $o, name: $n) { "
        "id branchProtectionRules(first: 10) { nodes { id pattern requiresApprovingReviews } } "
        "defaultBranchRef { target { oid } } } }",
        o=OWNER,
        n=repo,
    ).body["data"]["repository"]
    assert listed["branchProtectionRules"]["nodes"] == [
        {"id": rule.node_id, "pattern": "main", "requiresApprovingReviews": True}
    ]
    updated = pulls.graphql(
        "mutation($id: ID!) { updateBranchProtectionRule(input: {branchProtectionRuleId: $id, "
        "requiresApprovingReviews: false}) { branchProtectionRule { requiresApprovingReviews } } }",
        id=rule.node_id,
    )
    assert updated.body == {
        "data": {
            "updateBranchProtectionRule": {
                "branchProtectionRule": {"requiresApprovingReviews": False}
            }
        }
    }
    [change] = pulls.mutations(repo, "branch_protection.update")
    assert change.detail["requiresApprovingReviews"] is False
    oid = listed["defaultBranchRef"]["target"]["oid"]
    created = pulls.graphql(
        "mutation($r: ID!, $oid: GitObjectID!) { createRef(input: {repositoryId: $r, "
        'name: "refs/heads/fresh", oid: $oid}) { ref { name target { oid } } } }',
        r=listed["id"],
        oid=oid,
    )
    assert created.body == {
        "data": {"createRef": {"ref": {"name": "fresh", "target": {"oid": oid}}}}
    }
    assert pulls.bare_sha(repo, "refs/heads/fresh") == oid


# -- authentication and permissions, as GitHub answers them -----------------------------------


def test_a_wrong_token_is_bad_credentials(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    bad = "ghp_" + "n0tAT0ken" + "0" * 27
    rest = pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls", bad)
    assert rest.status == 401
    assert rest.body == {
        "message": "Bad credentials",
        "documentation_url": "https://docs.github.com/rest",
    }
    gql = pulls.graphql("{ viewer { login } }", bad)
    assert gql.status == 401 and gql.body["message"] == "Bad credentials"
    p = pulls.gh("pr", "list", "-R", f"{OWNER}/{repo}", env=pulls.env(bad))
    assert p.returncode != 0 and "Bad credentials" in p.stderr
    # No token at all: a private repository does not exist.
    assert pulls.curl("GET", f"/repos/{OWNER}/{repo}", None).status == 404
    assert pulls.graphql("{ viewer { login } }", None).status == 401


def test_a_repository_the_token_cannot_see_is_not_found(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    pulls.clone_with_branch(repo)
    create = {"title": "T", "head": "agent/x", "base": "main"}
    for method, path, body in (
        ("POST", f"/repos/{OWNER}/{repo}/pulls", create),
        ("GET", f"/repos/{OWNER}/{repo}/pulls", None),
        ("GET", f"/repos/{OWNER}/{repo}", None),
        ("DELETE", f"/repos/{OWNER}/{repo}", None),
    ):
        reply = pulls.curl(method, path, OTHER, body)
        assert reply.status == 404, (method, path)
        assert reply.body["message"] == "Not Found"
    gql = pulls.graphql(
        "query($o: String!, $n: String!) { repository(owner: $o, name: $n) { id } }",
        OTHER,
        o=OWNER,
        n=repo,
    )
    assert gql.status == 200
    assert gql.body["data"] == {"repository": None}
    [error] = gql.body["errors"]
    assert error["type"] == "NOT_FOUND" and error["path"] == ["repository"]
    assert error["message"] == f"Could not resolve to a Repository with the name '{OWNER}/{repo}'."
    p = pulls.gh(
        "pr",
        "create",
        "-R",
        f"{OWNER}/{repo}",
        "--title",
        "T",
        "--body",
        "B",
        "--head",
        "agent/x",
        "--base",
        "main",
        env=pulls.env(OTHER),
    )
    assert p.returncode != 0 and "Could not resolve to a Repository" in p.stderr
    assert pulls.api.pulls(OWNER, repo) == []


def test_an_app_token_without_pull_requests_write_cannot_create_a_pr(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    work = pulls.clone_with_branch(repo)
    install_app(pulls, repo)
    read_only = pulls.mint({"contents": "write", "pull_requests": "read"}, [repo])
    create = {"title": "T", "head": "agent/x", "base": "main"}

    reply = pulls.curl("POST", f"/repos/{OWNER}/{repo}/pulls", read_only, create)
    assert reply.status == 403
    assert reply.body == {
        "message": MSG_INTEGRATION,
        "documentation_url": "https://docs.github.com/rest",
    }
    assert reply.headers["x-accepted-github-permissions"] == "pull_requests=write"
    repo_id = pulls.curl("GET", f"/repos/{OWNER}/{repo}", read_only).body["node_id"]
    gql = pulls.graphql(
        'mutation($r: ID!) { createPullRequest(input: {repositoryId: $r, baseRefName: "main", '
        'headRefName: "agent/x", title: "T"}) { pullRequest { number } } }',
        read_only,
        r=repo_id,
    )
    assert gql.body["data"] == {"createPullRequest": None}
    [error] = gql.body["errors"]
    assert (error["type"], error["path"], error["message"]) == (
        "FORBIDDEN",
        ["createPullRequest"],
        MSG_INTEGRATION,
    )
    p = pulls.gh(
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
        env=pulls.env(read_only),
    )
    assert p.returncode != 0 and MSG_INTEGRATION in p.stderr
    assert pulls.api.pulls(OWNER, repo) == []
    # It may still read them; and a token with pull_requests: write may create one, as the bot.
    assert pulls.ok("pr", "list", cwd=work, env=pulls.env(read_only)) == ""
    writer = pulls.mint({"pull_requests": "write"}, [repo])
    out = pulls.ok(
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
        env=pulls.env(writer),
    )
    assert out.strip().endswith("/pull/1")
    [pr] = pulls.api.pulls(OWNER, repo)
    assert pr.user == "airlock-test[bot]"
    # Without pull_requests at all, reading them is refused; merging needs contents: write.
    blind = pulls.mint({"contents": "read"}, [repo])
    assert pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls", blind).status == 403
    merge = pulls.curl("PUT", f"/repos/{OWNER}/{repo}/pulls/1/merge", writer, {})
    assert merge.status == 403 and merge.body["message"] == MSG_INTEGRATION
    # Deleting the repository needs administration: write, which the App does not have.
    delete = pulls.curl("DELETE", f"/repos/{OWNER}/{repo}", writer)
    assert delete.status == 403 and pulls.mutations(repo, "repository.delete") == []
    # /user is not for installation tokens.
    assert pulls.curl("GET", "/user", writer).status == 403


def test_a_head_branch_that_does_not_exist_is_refused(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    work = pulls.clone_with_branch(repo)
    p = pulls.gh(
        "pr",
        "create",
        "--title",
        "T",
        "--body",
        "B",
        "--head",
        "agent/nope",
        "--base",
        "main",
        cwd=work,
    )
    assert p.returncode != 0
    assert "Head sha can't be blank" in p.stderr
    reply = pulls.curl(
        "POST",
        f"/repos/{OWNER}/{repo}/pulls",
        body={"title": "T", "head": "agent/x", "base": "nope"},
    )
    assert reply.status == 422
    assert reply.body["errors"] == [{"resource": "PullRequest", "code": "invalid", "field": "base"}]
    missing = pulls.curl("POST", f"/repos/{OWNER}/{repo}/pulls", body={"head": "agent/x"})
    assert missing.status == 422 and missing.body["errors"][0]["code"] == "missing_field"
    assert pulls.api.pulls(OWNER, repo) == []


def test_a_read_only_token_reads_but_cannot_write(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    work = pulls.clone_with_branch(repo)
    pulls.ok(
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
    reader = pulls.env(READER)
    assert pulls.ok("pr", "list", cwd=work, env=reader).startswith("1\tT\tagent/x\tOPEN")
    p = pulls.gh("pr", "comment", "1", "--body", "C", cwd=work, env=reader)
    assert p.returncode != 0 and "Resource not accessible by personal access token" in p.stderr
    assert pulls.mutations(repo, "comment.create") == []


# -- GitHub Enterprise's layout ----------------------------------------------------------------


def test_the_ghe_layout_serves_the_same_state(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    pulls.clone_with_branch(repo)
    host = "localhost:" + pulls.api.url.rsplit(":", 1)[1]
    env = gh_env(
        pulls.root / "ghe-home",
        proxy=None,
        ca_file=pulls.tls.ca_cert,
        token=TOKEN,
        enterprise_host=host,
    )
    out = pulls.ok(
        "pr",
        "create",
        "-R",
        f"{host}/{OWNER}/{repo}",
        "--title",
        "T",
        "--body",
        "B",
        "--head",
        "agent/x",
        "--base",
        "main",
        env=env,
    )
    assert out.strip().endswith(f"/{OWNER}/{repo}/pull/1")
    assert pulls.ok("pr", "list", "-R", f"{host}/{OWNER}/{repo}", env=env).startswith("1\tT\t")
    listed = json.loads(pulls.ok("api", f"repos/{OWNER}/{repo}/pulls", env=env))
    assert [p["number"] for p in listed] == [1]
    paths = {(r.method, r.path) for r in pulls.api.requests}
    assert ("POST", "/api/graphql") in paths
    assert ("GET", f"/api/v3/repos/{OWNER}/{repo}/pulls") in paths
    # Both layouts, one state: github.com's REST sees the PR gh made over GHE's GraphQL.
    assert pulls.curl("GET", f"/api/v3/repos/{OWNER}/{repo}/pulls/1").body["title"] == "T"
    assert pulls.curl("GET", f"/repos/{OWNER}/{repo}/pulls/1").body["title"] == "T"
    gql = pulls.graphql("{ viewer { login } }", path="/api/graphql")
    assert gql.body == {"data": {"viewer": {"login": "airlock-bot"}}}


def test_graphql_refuses_fields_outside_githubs_schema(pulls: Pulls) -> None:
    reply = pulls.graphql("{ viewer { login passwordHash } }")
    assert reply.status == 200
    assert "data" not in reply.body
    [error] = reply.body["errors"]
    assert error["message"] == "Field 'passwordHash' doesn't exist on type 'User'"
    assert error["extensions"]["code"] == "undefinedField"
    assert pulls.api.graphql.internal_errors == []


def test_gh_edits_labels_and_reviewers_of_a_pull_request(pulls: Pulls) -> None:
    repo = pulls.new_repo(labels=["bug", "docs"], collaborators={"alice": "push"})
    work = pulls.clone_with_branch(repo)
    pulls.ok(
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
        "--label",
        "bug",
        "--reviewer",
        "alice",
        cwd=work,
    )
    [pr] = pulls.api.pulls(OWNER, repo)
    assert pr.labels == ["bug"] and pr.requested_reviewers == ["alice"]
    pulls.ok("pr", "edit", "1", "--add-label", "docs", "--remove-label", "bug", cwd=work)
    assert pr.labels == ["docs"]
    view = pulls.ok("pr", "view", "1", cwd=work)
    assert "labels:\tdocs\n" in view and "reviewers:\talice (Requested)\n" in view
    kinds = [m.kind for m in pulls.mutations(repo)]
    assert kinds[0] == "pull_request.create" and "review_requests.add" in kinds
    # Only collaborators can be asked for a review, as on GitHub.
    stranger = pulls.curl(
        "POST",
        f"/repos/{OWNER}/{repo}/pulls/1/requested_reviewers",
        body={"reviewers": ["mallory"]},
    )
    assert stranger.status == 422
    assert (
        "Reviews may only be requested from collaborators" in stranger.body["errors"][0]["message"]
    )
    added = pulls.curl("POST", f"/repos/{OWNER}/{repo}/issues/1/labels", body={"labels": ["new"]})
    assert added.status == 200 and [label["name"] for label in added.body] == ["docs", "new"]


def test_gh_fills_a_pr_from_the_pushed_branch_and_rebases_it_in(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    work = pulls.clone_with_branch(repo, "agent/fill")
    out = pulls.ok("pr", "create", "--fill", cwd=work)
    assert out.strip() == f"https://github.com/{OWNER}/{repo}/pull/1"
    [pr] = pulls.api.pulls(OWNER, repo)
    assert (pr.title, pr.head_ref) == ("work on agent/fill", "agent/fill")
    head = pulls.bare_sha(repo, "refs/heads/agent/fill")
    old_main = pulls.bare_sha(repo, "refs/heads/main")

    pulls.ok("pr", "merge", "--rebase", "--delete-branch", cwd=work)

    assert pulls.bare_sha(repo, "refs/heads/agent/fill") is None
    new_main = pulls.bare_sha(repo, "refs/heads/main")
    assert new_main not in (head, old_main)
    assert pulls.bare_sha(repo, f"{new_main}^") == old_main  # one commit replayed on main
    kinds = [m.kind for m in pulls.mutations(repo)]
    assert kinds == ["pull_request.create", "pull_request.merge", "ref.delete"]
    assert pulls.mutations(repo, "pull_request.merge")[0].detail["method"] == "rebase"


def test_branch_protection_holds_for_the_app_but_not_an_admin(pulls: Pulls) -> None:
    repo = pulls.new_repo()
    pulls.clone_with_branch(repo)
    pulls.api.state.add_protection(
        OWNER, repo, "main", requiresApprovingReviews=True, requiredApprovingReviewCount=1
    )
    install_app(pulls, repo)
    app = pulls.mint({"contents": "write", "pull_requests": "write"}, [repo])
    created = pulls.curl(
        "POST",
        f"/repos/{OWNER}/{repo}/pulls",
        app,
        {"title": "T", "head": "agent/x", "base": "main"},
    )
    assert created.status == 201
    refused = pulls.curl("PUT", f"/repos/{OWNER}/{repo}/pulls/1/merge", app, {})
    assert refused.status == 405
    assert refused.body["message"] == (
        "At least 1 approving review is required by reviewers with write access."
    )
    main = pulls.bare_sha(repo, "refs/heads/main")
    gone = pulls.curl("DELETE", f"/repos/{OWNER}/{repo}/git/refs/heads/main", app)
    assert gone.status == 422 and pulls.bare_sha(repo, "refs/heads/main") == main
    assert gone.body["errors"][0]["message"] == "Cannot delete this protected branch"
    # The token file's token is an administrator's, and the rule does not bind admins.
    merged = pulls.curl("PUT", f"/repos/{OWNER}/{repo}/pulls/1/merge", TOKEN, {})
    assert merged.status == 200 and merged.body["merged"] is True
    assert pulls.bare_sha(repo, "refs/heads/main") == merged.body["sha"]
