"""The GitHub API decision for REST requests: paths, routes, grants, pull requests."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.core.api_policy import (
    Allow,
    ApiContext,
    ApiDecision,
    ApiLimits,
    ApiRequest,
    CreatePull,
    NeedRepoIds,
    PullRef,
    Refuse,
    decide_api,
)
from airlock.core.grants import Access, Grant
from airlock.core.refrules import parse_rules

HOST = "github.com"
WRITE = Grant(HOST, "Octo", "Hello", Access.WRITE, parse_rules("agent/**"))
READ = Grant(HOST, "octo", "docs", Access.READ)
OTHER_HOST = Grant("ghe.example.com", "octo", "secret", Access.WRITE, parse_rules("**"))
OWN = PullRef("github.com/octo/hello", 7, "PR_kwDOmine")
OTHERS = 8  # a pull request in octo/hello this session did not create


def make_ctx(**changes: Any) -> ApiContext:
    ctx = ApiContext(
        host=HOST,
        grants=(WRITE, READ, OTHER_HOST),
        pulls=(OWN,),
        limits=ApiLimits(base_branches=("main", "release/*")),
        repo_ids={"R_kgDOHello": "github.com/octo/hello", "R_kgDODocs": "github.com/octo/docs"},
    )
    return replace(ctx, **changes)


def decide(method: str, target: str, body: Any = b"", ctx: ApiContext | None = None) -> ApiDecision:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decide_api(ApiRequest(method, target, raw, "application/json"), ctx or make_ctx())


def allowed(decision: ApiDecision) -> Allow:
    assert isinstance(decision, Allow), decision
    return decision


def refused(decision: ApiDecision, status: int, reason: str | None = None) -> Refuse:
    assert isinstance(decision, Refuse), decision
    assert decision.status == status, decision
    if reason is not None:
        assert decision.reason == reason, decision
    assert decision.message.startswith("airlock: "), decision
    return decision


# --- reads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "route"),
    [
        ("/repos/octo/hello", "GET /repos/{owner}/{repo}"),
        ("/repos/octo/hello/pulls?state=open", "GET /repos/{owner}/{repo}/pulls"),
        ("/repos/octo/hello/pulls/8/files", "GET /repos/{owner}/{repo}/pulls/{number}/files"),
        ("/repos/octo/hello/contents/src/a%20b.py", "GET /repos/{owner}/{repo}/contents/{path}"),
        (
            "/repos/octo/hello/commits/abc/check-runs",
            "GET /repos/{owner}/{repo}/commits/{ref}/check-runs",
        ),
        ("/repos/octo/hello/branches/agent/x", "GET /repos/{owner}/{repo}/branches/{branch}"),
        (
            "/repos/octo/hello/issues/3/comments",
            "GET /repos/{owner}/{repo}/issues/{number}/comments",
        ),
        (
            "/repos/octo/hello/actions/runs/5/logs",
            "GET /repos/{owner}/{repo}/actions/runs/{id}/logs",
        ),
        (
            "/repos/octo/hello/actions/workflows/ci.yml",
            "GET /repos/{owner}/{repo}/actions/workflows/{workflow}",
        ),
        ("/repos/octo/hello/git/ref/heads/main", "GET /repos/{owner}/{repo}/git/ref/{path}"),
        ("/repos/octo/hello/compare/main...agent/x", "GET /repos/{owner}/{repo}/compare/{path}"),
        ("/repos/octo/hello/tarball/main", "GET /repos/{owner}/{repo}/tarball/{path}"),
        ("/repos/octo/docs/readme", "GET /repos/{owner}/{repo}/readme"),
    ],
)
def test_read_routes_on_granted_repositories_are_allowed(target: str, route: str) -> None:
    decision = allowed(decide("GET", target))
    assert decision.route == route
    assert decision.body is None


def test_owner_and_repo_match_grants_case_insensitively_and_go_upstream_lowercased() -> None:
    decision = allowed(decide("GET", "/repos/OCTO/hello/pulls?state=open&Per_Page=5"))
    assert decision.upstream_target == "/repos/octo/hello/pulls?state=open&Per_Page=5"
    assert decision.repo == "github.com/octo/hello"


def test_head_is_a_read() -> None:
    assert allowed(decide("HEAD", "/repos/octo/hello/readme")).route.startswith("HEAD ")


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/hello/actions/secrets?per_page=100",  # gh secret list
        "/repos/octo/hello/actions/secrets/public-key",
        "/repos/octo/hello/actions/variables",
        "/repos/octo/hello/environments",
        "/repos/octo/hello/hooks",
        "/repos/octo/hello/keys",
        "/repos/octo/hello/collaborators",
        "/repos/octo/hello/collaborators/bob/permission",
        "/repos/octo/hello/invitations",
        "/repos/octo/hello/dependabot/alerts",
        "/repos/octo/hello/codespaces",
        "/repos/octo/hello/actions/permissions",
        "/repos/octo/hello/actions/runners",
        "/repos/octo/hello/rulesets",
        "/repos/octo/hello/branches/main/protection",
        "/repos/octo/hello/branches/agent/x/protection/required_status_checks",
        "/repos/octo/hello/pages",
        "/repos/octo/hello/traffic/views",
        "/repos/octo/hello/actions/artifacts/1/zip",
        "/repos/octo/hello/pulls/07",  # no leading zeros: one spelling per pull request
        "/repos/octo/hello/issues/7/timeline",  # cross-references show other repositories
        "/repos/octo/hello/commits/abc/pulls",  # pull requests of forks and upstreams
        "/repos/octo/hello/compare/main...mallory:secret",  # a fork's branch
        "/repos/octo/hello/compare/main...mallory%3Asecret",
    ],
)
def test_reads_outside_the_allowlist_are_refused(target: str) -> None:
    refused(decide("GET", target), 403, "route_not_allowed")


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/nothere",
        "/repos/someone/hello/pulls",
        "/repos/octo/secret",
        "/repos/o~/x",
        "/repos/%6fcto/hello",  # an escaped name is no name: the same 404
    ],
)
def test_ungranted_repositories_get_one_404_whether_or_not_they_exist(target: str) -> None:
    refusal = refused(decide("GET", target), 404, "ungranted_repo")
    assert "is not granted to this session" in refusal.message


def test_ungranted_message_is_identical_for_missing_and_existing_repositories() -> None:
    # octo/secret is granted on another host: on this host it is as unknown as octo/nope.
    a = refused(decide("GET", "/repos/octo/secret"), 404)
    b = refused(decide("GET", "/repos/octo/nope"), 404)
    assert a.message.replace("secret", "X") == b.message.replace("nope", "X")


def test_only_grants_for_the_context_host_count() -> None:
    refused(decide("GET", "/repos/octo/secret/pulls"), 404, "ungranted_repo")
    ghe = make_ctx(host="ghe.example.com", rest_prefix="/api/v3", graphql_path="/api/graphql")
    decision = allowed(decide("GET", "/api/v3/repos/octo/secret/pulls", ctx=ghe))
    assert decision.upstream_target == "/repos/octo/secret/pulls"  # without the prefix
    refused(decide("GET", "/api/v3/repos/octo/hello", ctx=ghe), 404, "ungranted_repo")


def test_enterprise_targets_must_carry_the_rest_prefix() -> None:
    ghe = make_ctx(host="ghe.example.com", rest_prefix="/api/v3", graphql_path="/api/graphql")
    refused(decide("GET", "/repos/octo/secret", ctx=ghe), 403, "route_not_allowed")
    refused(decide("GET", "/api/v30/repos/octo/secret", ctx=ghe), 403, "route_not_allowed")


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/hello/contents/a%2fb",
        "/repos/octo/hello/contents/a%2Fb",
        "/repos/octo/hello/contents/a%5cb",
        "/repos/octo/hello/contents/%2e%2e/x",
        "/repos/octo/hello/contents/../../../user",
        "/repos/octo/hello/./pulls",
        "/repos/octo/hello//pulls",
        "/repos/octo/hello/pulls/",
        "/repos/octo/hello\\pulls",
        "/repos/octo/hello/pulls#frag",
        "/repos/octo/hello/pulls\x00",
        "/repos/octo/hello/pulls%00",
        "/repos/octo/hello/contents/%zz",
        "/repos/octo/hello/contents/%2",
        "/repos/octo/hello/branches/main/%70rotection",  # "protection", escaped
        "/repos/octo/hello/branches/main/protectio%6E",
        "/repos/octo/hello/actions/s%65crets",
        "/repos/octo/hello/pulls%2D7",
        "/repos/octo/hello/contents/caf\u00e9",
        "/repos/octo/hello/pulls ",
        "http://api.github.com/repos/octo/hello",
        "repos/octo/hello",
        "",
    ],
)
def test_ambiguous_targets_are_refused_not_normalised(target: str) -> None:
    refused(decide("GET", target), 400, "malformed")


@pytest.mark.parametrize("target", ["/", "/user", "/rate_limit", "/meta"])
def test_the_few_top_level_reads(target: str) -> None:
    decision = allowed(decide("GET", target))
    assert decision.repo is None
    assert decision.upstream_target == target


@pytest.mark.parametrize(
    "target",
    [
        "/user/repos",
        "/users/octo",
        "/search/code?q=secret",
        "/orgs/octo/repos",
        "/repositories/123",
        "/installation/repositories",
        "/app",
        "/repos",
        "/repos/octo",
        "/gists",
        "/user/",
    ],
)
def test_other_top_level_routes_are_refused(target: str) -> None:
    decision = decide("GET", target)
    assert isinstance(decision, Refuse) and decision.status in (400, 403), decision


def test_graphql_over_get_is_refused() -> None:
    refused(decide("GET", "/graphql?query={viewer{login}}"), 400)
    refused(decide("GET", "/graphql"), 405, "graphql_method")


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "get", "PROPFIND", ""])
def test_unknown_methods_get_405(method: str) -> None:
    refused(decide(method, "/repos/octo/hello"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/hello/pulls/7/reviews?event=APPROVE",
        "/repos/octo/hello/pulls?issue=3",
        "/repos/octo/hello/issues/7/comments?_method=DELETE",
        "/repos/octo/hello/pulls?",
    ],
)
def test_writes_take_no_query_string(target: str) -> None:
    refused(decide("POST", target, {"title": "t", "head": "agent/x", "base": "main"}), 400)


def test_a_read_with_a_body_is_refused() -> None:
    refused(decide("GET", "/repos/octo/hello", b"x"), 400, "malformed")


# --- writes ---------------------------------------------------------------------------------

PULL = {"title": "Fix it", "head": "agent/fix", "base": "main", "body": "why"}


def test_creating_a_pull_request_from_a_pushable_branch() -> None:
    decision = allowed(decide("POST", "/repos/octo/hello/pulls", PULL))
    assert decision.creates_pull == CreatePull(
        repo="github.com/octo/hello",
        owner="Octo",
        name="Hello",
        head="agent/fix",
        base="main",
        labels=(),
    )
    assert decision.body is not None and json.loads(decision.body) == PULL
    assert decision.route == "POST /repos/{owner}/{repo}/pulls"


def test_head_may_name_the_repository_owner() -> None:
    decision = allowed(
        decide("POST", "/repos/octo/hello/pulls", {**PULL, "head": "OCTO:agent/fix"})
    )
    assert decision.creates_pull is not None and decision.creates_pull.head == "agent/fix"


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        ("main", "head_not_pushable"),
        ("agent", "head_not_pushable"),
        ("feature/agent/x", "head_not_pushable"),
        ("mallory:agent/fix", "cross_repo_head"),
        ("refs/heads/agent/x", "malformed"),
        ("agent/../main", "malformed"),
        ("agent/x.lock", "malformed"),
        ("agent/x y", "malformed"),
    ],
)
def test_head_must_be_a_branch_this_session_may_push(head: str, reason: str) -> None:
    decision = decide("POST", "/repos/octo/hello/pulls", {**PULL, "head": head})
    refusal = refused(decision, 400 if reason == "malformed" else 403, reason)
    if reason == "head_not_pushable":
        assert "agent/**" in refusal.message


def test_a_fork_head_repository_is_refused() -> None:
    refused(
        decide("POST", "/repos/octo/hello/pulls", {**PULL, "head_repo": "x/y"}),
        403,
        "cross_repo_head",
    )


@pytest.mark.parametrize("base", ["develop", "release", "release/1/x"])
def test_base_must_match_the_allowed_bases(base: str) -> None:
    refused(
        decide("POST", "/repos/octo/hello/pulls", {**PULL, "base": base}), 403, "base_not_allowed"
    )
    allowed(decide("POST", "/repos/octo/hello/pulls", {**PULL, "base": "release/1"}))


def test_broken_base_patterns_close_the_door() -> None:
    ctx = make_ctx(limits=ApiLimits(base_branches=("ma..in",)))
    refused(decide("POST", "/repos/octo/hello/pulls", PULL, ctx), 403, "base_rules_invalid")


def test_pull_request_limit_counts_every_repository() -> None:
    pulls = (OWN, PullRef("github.com/octo/docs", 1, "PR_x"))
    ctx = make_ctx(pulls=pulls, limits=ApiLimits(max_pulls=2))
    refused(decide("POST", "/repos/octo/hello/pulls", PULL, ctx), 403, "pull_limit")
    allowed(decide("POST", "/repos/octo/hello/pulls", PULL, replace(ctx, pulls=(OWN,))))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"head": "agent/x", "base": "main"}, 400),  # no title
        ({**PULL, "title": 5}, 400),
        ({**PULL, "issue": 3}, 403),
        ({**PULL, "draft": "yes"}, 400),
        ({**PULL, "maintainer_can_modify": 1}, 400),
        ({**PULL, "labels": ["x"]}, 403),
        ([PULL], 400),
    ],
)
def test_create_fields_are_checked(body: Any, status: int) -> None:
    refused(decide("POST", "/repos/octo/hello/pulls", body), status)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"title":"a","head":"agent/x","base":"main","head":"mallory:main"}',  # duplicate key
        b'{"title":"a","head":"agent/x","base":"main","draft":NaN}',
        b"\xff\xfe{}",
        b"",
        b"[" * 10000 + b"]" * 10000,
    ],
)
def test_create_bodies_must_be_strict_json(raw: bytes) -> None:
    refused(decide("POST", "/repos/octo/hello/pulls", raw), 400, "malformed")


def test_title_prefix_and_draft_are_rewritten() -> None:
    ctx = make_ctx(limits=ApiLimits(title_prefix="[agent] ", require_draft=True, labels=("bot",)))
    decision = allowed(decide("POST", "/repos/octo/hello/pulls", {**PULL, "draft": False}, ctx))
    assert decision.body is not None
    sent = json.loads(decision.body)
    assert sent["title"] == "[agent] Fix it"
    assert sent["draft"] is True
    assert decision.creates_pull is not None and decision.creates_pull.labels == ("bot",)
    again = allowed(decide("POST", "/repos/octo/hello/pulls", {**PULL, "title": "[agent] x"}, ctx))
    assert again.body is not None and json.loads(again.body)["title"] == "[agent] x"


def test_read_grants_may_not_write() -> None:
    refusal = refused(decide("POST", "/repos/octo/docs/pulls", PULL), 403, "write_grant_required")
    assert "needs a write grant" in refusal.message


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("PATCH", "/repos/octo/hello/pulls/7", {"title": "t", "state": "closed", "base": "main"}),
        ("POST", "/repos/octo/hello/issues/7/comments", {"body": "hi"}),
        ("POST", "/repos/octo/hello/pulls/7/comments", {"body": "hi", "path": "a", "line": 1}),
        ("POST", "/repos/octo/hello/pulls/7/reviews", {"body": "lgtm?", "event": "COMMENT"}),
        ("POST", "/repos/octo/hello/pulls/7/reviews", {"body": "pending"}),
        ("POST", "/repos/octo/hello/pulls/7/requested_reviewers", {"reviewers": ["bob"]}),
    ],
)
def test_own_pull_requests_may_be_updated_and_commented_on(
    method: str, target: str, body: Any
) -> None:
    decision = allowed(decide(method, target, body))
    assert decision.repo == "github.com/octo/hello"
    assert decision.creates_pull is None
    others = target.replace("/7", f"/{OTHERS}")
    refusal = refused(decide(method, others, body), 403, "not_own_pull")
    assert "#7" in refusal.message and f"#{OTHERS}" in refusal.message


def test_own_pull_numbers_are_per_repository() -> None:
    ctx = make_ctx(pulls=(PullRef("github.com/octo/docs", 7, "PR_d"),))
    refused(
        decide("POST", "/repos/octo/hello/issues/7/comments", {"body": "x"}, ctx),
        403,
        "not_own_pull",
    )


@pytest.mark.parametrize("event", ["APPROVE", "REQUEST_CHANGES", "approve", None])
def test_reviews_may_only_comment(event: str | None) -> None:
    decision = decide("POST", "/repos/octo/hello/pulls/7/reviews", {"event": event})
    refused(decision, 403, "review_event_not_allowed")


def test_updating_own_pull_request_checks_fields() -> None:
    target = "/repos/octo/hello/pulls/7"
    refused(decide("PATCH", target, {"base": "develop"}), 403, "base_not_allowed")
    refused(decide("PATCH", target, {"state": "merged"}), 400)
    refused(decide("PATCH", target, {"head": "agent/y"}), 403, "field_not_allowed:head")
    ctx = make_ctx(limits=ApiLimits(title_prefix="[agent] "))
    decision = allowed(decide("PATCH", target, {"title": "New"}, ctx))
    assert decision.body is not None and json.loads(decision.body) == {"title": "[agent] New"}


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/repos/octo/hello/pulls/7/merge"),
        ("DELETE", "/repos/octo/hello"),  # gh repo delete
        ("PATCH", "/repos/octo/hello"),
        ("PUT", "/repos/octo/hello/collaborators/mallory"),
        ("POST", "/repos/octo/hello/actions/workflows/0/dispatches"),  # gh workflow run
        ("POST", "/repos/octo/hello/git/refs"),
        ("PATCH", "/repos/octo/hello/git/refs/heads/main"),
        ("DELETE", "/repos/octo/hello/git/refs/heads/agent/x"),
        ("PUT", "/repos/octo/hello/contents/README.md"),
        ("POST", "/repos/octo/hello/labels"),
        ("POST", "/repos/octo/hello/forks"),
        ("POST", "/repos/octo/hello/transfer"),
        ("POST", "/repos/octo/hello/issues"),
        ("PATCH", "/repos/octo/hello/issues/7"),
        ("DELETE", "/repos/octo/hello/pulls/7/requested_reviewers"),
        ("POST", "/repos/octo/hello/pulls/7/reviews/1/events"),
        ("PUT", "/repos/octo/hello/actions/secrets/X"),
        ("POST", "/repos/octo/hello/merges"),
        ("POST", "/user/repos"),
    ],
)
def test_other_writes_are_refused(method: str, target: str) -> None:
    refused(decide(method, target, {"x": 1}), 403)


# --- gh's own REST calls ----------------------------------------------------------------------


def test_gh_repo_delete_secret_list_and_workflow_run_are_refused() -> None:
    # verbatim from gh 2.23.0 (see test_api_graphql.GH_REQUESTS)
    refused(decide("DELETE", "/repos/octo/hello"), 403, "route_not_allowed")
    refused(
        decide("GET", "/repos/octo/hello/actions/secrets?per_page=100"), 403, "route_not_allowed"
    )
    allowed(decide("GET", "/repos/octo/hello/actions/workflows/ci.yml"))  # gh's look-up first
    refused(
        decide(
            "POST",
            "/repos/octo/hello/actions/workflows/0/dispatches",
            b'{"inputs":{},"ref":"main"}',
        ),
        403,
        "route_not_allowed",
    )


# --- never raises -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
SEGMENT = st.sampled_from(
    [
        "repos",
        "octo",
        "OCTO",
        "hello",
        "docs",
        "pulls",
        "7",
        "8",
        "issues",
        "comments",
        "reviews",
        "..",
        ".",
        "",
        "%2f",
        "%2e",
        "%",
        "x",
    ]
)


def _never_internal(decision: ApiDecision) -> None:
    assert isinstance(decision, Allow | Refuse | NeedRepoIds)
    if isinstance(decision, Refuse):
        assert decision.reason != "internal_error", decision
        assert decision.message.startswith("airlock: ")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"])
    | st.text(max_size=5),
    target=st.text(max_size=60) | st.lists(SEGMENT, max_size=7).map(lambda s: "/" + "/".join(s)),
    body=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()),
)
def test_arbitrary_requests_only_ever_get_a_decision(method: str, target: str, body: bytes) -> None:
    _never_internal(decide_api(ApiRequest(method, target, body), make_ctx()))


@settings(max_examples=300)
@given(
    fields=st.dictionaries(
        st.sampled_from(sorted({*PULL, "draft", "issue", "x"})), JSON, max_size=6
    )
)
def test_arbitrary_create_bodies_only_ever_get_a_decision(fields: dict[str, Any]) -> None:
    decision = decide("POST", "/repos/octo/hello/pulls", fields)
    _never_internal(decision)
    if isinstance(decision, Allow):
        head = fields["head"]
        assert head.split(":")[-1].startswith("agent/")
        assert ":" not in head or head.split(":")[0].lower() == "octo"
