"""Adversarial review of the API policy (core/api_policy.py, core/api_graphql.py).

Every test here is an attack by a sandbox that has read the code. The ones that are refused
guard the control that refuses them (each fails if that control is removed); the ones that
currently get through are marked ``xfail(strict=True, reason="HOLE: ...")``: the day the
hole is closed they pass, and strict xfail makes the suite say so.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest

from airlock.core.api_policy import (
    Allow,
    ApiContext,
    ApiDecision,
    ApiLimits,
    ApiRequest,
    NeedRepoIds,
    PullRef,
    Refuse,
    decide_api,
)
from airlock.core.gitpath import RequestRefused, host_form_target, parse_git_request
from airlock.core.grants import Access, Grant
from airlock.core.refrules import parse_rules

HOST = "github.com"
HELLO = Grant(HOST, "octo", "hello", Access.WRITE, parse_rules("agent/**"))
OTHER_WRITE = Grant(HOST, "octo", "other", Access.WRITE, parse_rules("agent/**"))
DOCS = Grant(HOST, "octo", "docs", Access.READ)
OWN = PullRef("github.com/octo/hello", 7, "PR_kwDOmine")
OWN_ID = "PR_kwDOmine"
HELLO_ID = "R_kgDOHello"


def ctx(**changes: Any) -> ApiContext:
    base: dict[str, Any] = {
        "host": HOST,
        "grants": (HELLO, OTHER_WRITE, DOCS),
        "pulls": (OWN,),
        "limits": ApiLimits(base_branches=("main",)),
        "repo_ids": {HELLO_ID: "github.com/octo/hello", "R_kgDOOther": "github.com/octo/other"},
    }
    base.update(changes)
    return ApiContext(**base)


def decide(
    method: str, target: str, body: Any = b"", context: ApiContext | None = None
) -> ApiDecision:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decide_api(ApiRequest(method, target, raw, "application/json"), context or ctx())


def gql(
    query: str,
    variables: dict[str, Any] | None = None,
    context: ApiContext | None = None,
    **kw: Any,
) -> ApiDecision:
    envelope: dict[str, Any] = {"query": query, **kw}
    if variables is not None:
        envelope["variables"] = variables
    return decide("POST", "/graphql", envelope, context)


def refused(decision: ApiDecision, status: int, reason: str | None = None) -> Refuse:
    assert isinstance(decision, Refuse), decision
    assert decision.status == status, decision
    if reason is not None:
        assert decision.reason.startswith(reason), decision
    assert decision.message.startswith("airlock: "), decision
    return decision


def allowed(decision: ApiDecision) -> Allow:
    assert isinstance(decision, Allow), decision
    return decision


# ============================================================================ REST: methods


@pytest.mark.parametrize("method", ["get", "Get", "patch", "OPTIONS", "TRACE", "CONNECT", "MERGE"])
def test_odd_methods_are_refused_before_any_route(method: str) -> None:
    # GitHub (and Rack) may read a lowercase method as the uppercase one; the policy's
    # method check is exact, so a write cannot pose as an unknown method and slip past.
    refused(decide(method, "/repos/octo/hello/pulls/7", {"state": "closed"}), 405)


def test_head_is_a_read_and_takes_no_write_route() -> None:
    refused(decide("HEAD", "/repos/octo/hello/pulls/7/merge"), 403, "route_not_allowed")
    refused(decide("HEAD", "/repos/octo/hello/pulls", {"title": "x"}), 400, "malformed")


# ============================================================================ REST: paths


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/hello%2fpulls",  # an encoded slash re-splits the path
        "/repos/octo/hello/pulls%2F7",
        "/repos/octo/hello/%2e%2e/secret",  # encoded dot segments
        "/repos/octo/hello/contents/%2E%2E/%2E%2E/secret",
        "/repos/octo/hello/contents/a%5c..%5c..",  # encoded backslash
        "/repos/octo/hello/contents/a%00b",  # encoded control
        "/repos/octo/hello/contents/a%7f",
        "/repos/octo/hello/contents/a%",  # broken escapes
        "/repos/octo/hello/contents/a%g1",
        "/repos/octo/hello/../secret/pulls",  # dot segments
        "/repos/octo/hello/./pulls",
        "//repos/octo/hello",  # empty segments: a normaliser squeezes them
        "/repos//octo/hello",
        "/repos/octo/hello/pulls/",  # trailing slash (Rails strips it)
        "/repos/octo/hello\\..\\secret",  # backslash
        "/repos/octo/hello#frag",
        "/repos/octo/hell\u00f6",  # non-ASCII
        "/repos/octo/hello/contents/a b",  # space
        "/repos/octo/hello/contents/\t",
        "https://api.github.com/repos/octo/hello",  # absolute form
        "api.github.com/repos/octo/hello",
        "*",
        "",
        "/" + "a" * 9000,
    ],
)
def test_ambiguous_targets_are_malformed(target: str) -> None:
    refused(decide("GET", target), 400, "malformed")


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo;x=1/hello",  # ;params in the owner or name
        "/repos/octo/hello;x=1",
        "/repos/%6fcto/hello",  # an escaped owner name
        "/repos/octo/hell%6f",
        "/repos/octo/secret",  # simply another repository
        "/repos/octo/hello.git",
        "/repos/octo/hello..",
        "/repos/octo/" + "h" * 101,
    ],
)
def test_owner_and_repository_are_matched_literally_or_not_at_all(target: str) -> None:
    refused(decide("GET", target), 404, "ungranted_repo")


def test_owner_and_repository_case_reach_the_same_repository_upstream() -> None:
    # The grant matches case-insensitively; what goes upstream is the lowercased key, never
    # the client's spelling (so no "OCTO" lookup can land elsewhere).
    decision = allowed(decide("GET", "/repos/OCTO/HeLLo/pulls?state=open"))
    assert decision.upstream_target == "/repos/octo/hello/pulls?state=open"
    assert decision.repo == "github.com/octo/hello"


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/hello/pulls?_method=DELETE",
        "/repos/octo/hello/pulls/7/reviews?event=APPROVE",
        "/repos/octo/hello/pulls?head=other:agent/x",
        "/repos/octo/hello/pulls/7?state=closed",
        "/repos/octo/hello/pulls?",  # even an empty query
    ],
)
def test_writes_take_no_query_string(target: str) -> None:
    method = "PATCH" if target.startswith("/repos/octo/hello/pulls/7?") else "POST"
    body = {"title": "t", "head": "agent/x", "base": "main", "body": "b"}
    if "reviews" in target:
        body = {"body": "b"}
    if method == "PATCH":
        body = {"title": "t"}
    refused(decide(method, target, body), 400, "malformed")


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/hello/branches/main/protection",
        "/repos/octo/hello/branches/main/protection/required_status_checks",
        "/repos/octo/hello/hooks",
        "/repos/octo/hello/keys",
        "/repos/octo/hello/collaborators",
        "/repos/octo/hello/actions/secrets",
        "/repos/octo/hello/actions/runners/registration-token",
        "/repos/octo/hello/environments",
        "/repositories/1",
        "/user/repos",
        "/orgs/octo/repos",
        "/search/code?q=secret",
        "/gists",
        "/user/installations",
        "/installation/repositories",
        "/notifications",
        "/users/octo/repos",
        "/repos/octo/hello/forks",
        "/repos/octo/hello/pulls/7/merge",  # GET is fine on GitHub, but not listed here
    ],
)
def test_reads_outside_the_allowlist_are_refused(target: str) -> None:
    refused(decide("GET", target), 403, "route_not_allowed")


@pytest.mark.parametrize("spelling", ["protectio%6E", "%70rotection", "protect%69on"])
def test_branch_protection_spelled_with_escapes_is_refused(spelling: str) -> None:
    target = f"/repos/octo/hello/branches/main/{spelling}"
    assert unquote(target) == "/repos/octo/hello/branches/main/protection"
    # An escaped unreserved character is an ambiguous spelling: refused as malformed.
    refused(decide("GET", target), 400)


# ============================================================================ REST: writes


def test_a_pull_request_of_another_repository_with_the_same_number_is_not_own() -> None:
    # The session's #7 is in octo/hello; octo/other (write-granted too) has its own #7.
    refused(decide("PATCH", "/repos/octo/other/pulls/7", {"title": "x"}), 403, "not_own_pull")
    refused(decide("POST", "/repos/octo/other/issues/7/comments", {"body": "x"}), 403)
    refused(decide("PATCH", "/repos/octo/hello/pulls/8", {"title": "x"}), 403, "not_own_pull")
    allowed(decide("PATCH", "/repos/octo/hello/pulls/7", {"title": "x"}))  # (control)


@pytest.mark.parametrize("number", ["07", "7.0", "+7", "0x7", "7%20", "00007"])
def test_pull_numbers_are_plain_decimals(number: str) -> None:
    refused(decide("PATCH", f"/repos/octo/hello/pulls/{number}", {"title": "x"}), 403)


@pytest.mark.parametrize(
    "body",
    [
        {"event": "APPROVE"},
        {"event": "REQUEST_CHANGES", "body": "no"},
        {"event": "approve"},
        {"event": None},
        {"event": ["COMMENT", "APPROVE"]},
        {"body": "x", "Event": "APPROVE"},  # a key GitHub might read case-insensitively
        {"body": "x", "event ": "APPROVE"},
    ],
)
def test_reviews_only_comment(body: dict[str, Any]) -> None:
    decision = decide("POST", "/repos/octo/hello/pulls/7/reviews", body)
    assert isinstance(decision, Refuse) and decision.status == 403, decision


def test_review_event_duplicated_in_the_body_is_malformed() -> None:
    body = b'{"body":"x","event":"COMMENT","event":"APPROVE"}'
    refused(decide("POST", "/repos/octo/hello/pulls/7/reviews", body), 400, "malformed")
    body = b'{"body":"x","event":"APPROVE","event":"COMMENT"}'
    refused(decide("POST", "/repos/octo/hello/pulls/7/reviews", body), 400, "malformed")


@pytest.mark.parametrize(
    "body",
    [
        b'{"title":"t","draft":NaN}',
        b'{"title":"t","draft":Infinity}',
        b'\xef\xbb\xbf{"title":"t"}',  # UTF-8 BOM
        '{"title":"t"}'.encode("utf-16"),
        '{"title":"t"}'.encode("utf-32-le"),
        b'{"title":"t"',
        b'{"title":"t"} {"state":"closed"}',  # two documents
        b'{"title":"t"}\x00',
        b"[" * 100 + b"]" * 100,
        b'{"a":' * 70 + b"1" + b"}" * 70,
        b'{"title":"\xff"}',  # not UTF-8
        b'{"title": 1' + b"0" * 5000 + b"}",  # an int Python refuses to parse
        b"",
        b"null",
        b'"closed"',
    ],
)
def test_write_bodies_must_be_one_strict_json_object(body: bytes) -> None:
    decision = decide("PATCH", "/repos/octo/hello/pulls/7", body)
    refused(decision, 400, "malformed")


def test_the_checked_body_is_what_goes_upstream() -> None:
    # Whitespace, escapes and key order of the client's bytes are not what is sent: the
    # parsed object is, re-serialised (so a parser difference has nothing to work with).
    raw = b'{ "title" : "\\u0074itle",\n "state":"closed" }'
    decision = allowed(decide("PATCH", "/repos/octo/hello/pulls/7", raw))
    assert decision.body == b'{"title":"title","state":"closed"}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"state": "merged"}, "malformed"),
        ({"state": "CLOSED"}, "malformed"),
        ({"base": "prod"}, "base_not_allowed"),
        ({"base": "refs/heads/main"}, "malformed"),
        ({"base": "main:x"}, "malformed"),
        ({"head": "agent/y"}, "field_not_allowed"),
        ({"merged": True}, "field_not_allowed"),
        ({"assignees": ["x"]}, "field_not_allowed"),
        ({"title": ["x"]}, "malformed"),
    ],
)
def test_updating_an_own_pull_request_is_held_to_its_fields(
    body: dict[str, Any], reason: str
) -> None:
    decision = decide("PATCH", "/repos/octo/hello/pulls/7", body)
    assert isinstance(decision, Refuse) and decision.reason.startswith(reason), decision


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        ("evil:agent/x", "cross_repo_head"),  # a fork of another owner
        ("EVIL:agent/x", "cross_repo_head"),
        ("refs/heads/agent/x", "malformed"),
        ("heads/agent/x", "head_not_pushable"),
        ("main", "head_not_pushable"),
        ("Agent/x", "head_not_pushable"),  # refs are case-sensitive; the rule is agent/**
        ("agent/../main", "malformed"),
        ("agent/x.lock", "malformed"),
        ("agent/x@{1}", "malformed"),
        ("-agent/x", "malformed"),
        ("agent//x", "malformed"),
        ("octo:octo:agent/x", "malformed"),
        (["agent/x"], "malformed"),
    ],
)
def test_a_new_pull_request_comes_from_a_pushable_branch_of_the_repository(
    head: Any, reason: str
) -> None:
    body = {"title": "t", "head": head, "base": "main"}
    decision = decide("POST", "/repos/octo/hello/pulls", body)
    assert isinstance(decision, Refuse) and decision.reason.startswith(reason), decision


@pytest.mark.parametrize(
    "extra", [{"head_repo": "evil/hello"}, {"issue": 8}, {"labels": ["x"]}, {"base_repo": "x"}]
)
def test_a_new_pull_request_takes_no_other_source(extra: dict[str, Any]) -> None:
    body = {"title": "t", "head": "agent/x", "base": "main", **extra}
    refused(decide("POST", "/repos/octo/hello/pulls", body), 403)


def test_a_read_grant_creates_nothing() -> None:
    body = {"title": "t", "head": "agent/x", "base": "main"}
    refused(decide("POST", "/repos/octo/docs/pulls", body), 403, "write_grant_required")


def test_the_pull_request_limit_holds_for_rest() -> None:
    full = ctx(limits=ApiLimits(max_pulls=1, base_branches=("main",)))  # has created #7
    body = {"title": "t", "head": "agent/x", "base": "main"}
    refused(decide("POST", "/repos/octo/hello/pulls", body, full), 403, "pull_limit")


def test_the_pull_request_limit_holds_for_graphql() -> None:
    full = ctx(limits=ApiLimits(max_pulls=1, base_branches=("main",)))
    doc = (
        "mutation C($i: CreatePullRequestInput!) "
        "{ createPullRequest(input: $i) { clientMutationId } }"
    )
    create = {
        "repositoryId": HELLO_ID,
        "headRefName": "agent/x",
        "baseRefName": "main",
        "title": "t",
    }
    refused(gql(doc, {"i": create}, full), 403, "pull_limit")


# ============================================================================ GraphQL: envelope


@pytest.mark.parametrize(
    "body",
    [
        b'[{"query":"{ viewer { login } }"},{"query":"mutation { deleteRef(input:{refId:\\"x\\"})'
        b' { clientMutationId } }"}]',  # batching
        b'{"query":"{ viewer { login } }","extensions":{"persistedQuery":{"version":1,'
        b'"sha256Hash":"abc"}}}',  # persisted queries
        b'{"id":"abc","variables":{}}',
        b'{"query":"{ viewer { login } }","query":"mutation { deleteRef(input:{refId:\\"x\\"}) '
        b'{ clientMutationId } }"}',  # duplicate key: which one runs?
        b'{"query":"{ viewer { login } }","variables":[]}',
        b'{"query":"{ viewer { login } }","operationName":1}',
        b'{"query":["{ viewer { login } }"]}',
        b'\xef\xbb\xbf{"query":"{ viewer { login } }"}',
    ],
)
def test_graphql_envelopes_other_than_one_plain_document_are_malformed(body: bytes) -> None:
    refused(decide("POST", "/graphql", body), 400, "malformed")


def test_graphql_over_get_or_with_a_query_string_is_refused() -> None:
    refused(decide("GET", "/graphql?query=%7Bviewer%7Blogin%7D%7D"), 400, "malformed")
    refused(decide("GET", "/graphql"), 405)
    refused(decide("POST", "/graphql?query=mutation", {"query": "{ viewer { login } }"}), 400)
    # and the REST path /graphql/ is no way around it
    refused(decide("POST", "/graphql/", {"query": "{ viewer { login } }"}), 400)


# ============================================================================ GraphQL: operations

DELETE_REF = 'deleteRef(input: {refId: "REF_main"}) { clientMutationId }'
MERGE = f'mergePullRequest(input: {{pullRequestId: "{OWN_ID}"}}) {{ clientMutationId }}'


def test_operation_name_naming_a_benign_query_does_not_hide_a_mutation() -> None:
    doc = f"query A {{ viewer {{ login }} }} mutation B {{ {DELETE_REF} }}"
    refused(gql(doc, operationName="A"), 400, "malformed")


def test_operation_name_naming_a_benign_query_does_not_hide_another_query() -> None:
    doc = (
        'query A { viewer { login } } query B { repository(owner: "octo", name: "secret") '
        '{ object(expression: "HEAD:.env") { ... on Blob { text } } } }'
    )
    refused(gql(doc, operationName="A"), 404, "ungranted_repo")


@pytest.mark.parametrize(
    "doc",
    [
        f"mutation {{ fine: {DELETE_REF} }}",  # an alias renames nothing
        f"mutation {{ createPullRequest: {MERGE} }}",
        f"mutation {{ ...M }} fragment M on Mutation {{ {DELETE_REF} }}",
        f"mutation {{ ... on Mutation {{ {DELETE_REF} }} }}",
        f"mutation {{ ... @skip(if: true) {{ {DELETE_REF} }} }}",
        "mutation { " + MERGE.replace("{ client", "@skip(if: true) { client") + " }",
        f"mutation {{ __typename {MERGE} }}",
    ],
)
def test_hidden_mutations_are_refused(doc: str) -> None:
    refused(gql(doc), 403, "mutation_not_allowed")


def test_a_mutation_fragment_spread_into_a_query_is_still_refused() -> None:
    doc = f"query {{ ...M }} fragment M on Mutation {{ {DELETE_REF} }}"
    refused(gql(doc), 403, "root_field_not_allowed")


@pytest.mark.parametrize(
    "doc",
    [
        "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
        "{ ...A } fragment A on Query { viewer { login } ...A }",
        "{ viewer { login } } fragment Unused on Query { viewer { login } }",
        "{ ...Nope }",
        "{ ...A } fragment A on Query { __typename } fragment A on Query { __typename }",
        "query A { viewer { login } } query A { viewer { login } }",
        "{ viewer { login } } { viewer { login } }",
        "subscription { viewer { login } }",
    ],
)
def test_ill_formed_documents_are_refused(doc: str) -> None:
    decision = gql(doc)
    assert isinstance(decision, Refuse) and decision.status in (400, 403), decision


def test_fragment_fan_out_is_bounded() -> None:
    # 15 fragments, each spreading the next twice: 2**15 expansions of one field from a
    # document of a few hundred bytes (a "billion laughs" for the checker).
    frags = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(15))
    doc = "{ ...F0 } " + frags + " fragment F15 on Query { rateLimit { cost } }"
    refused(gql(doc), 400, "malformed")


# ============================================================================ GraphQL: reaching out

SECRET_BLOB = '{ object(expression: "HEAD:.env") { ... on Blob { text } } }'


@pytest.mark.parametrize(
    "doc",
    [
        # the owner's other repositories
        f'{{ repository(owner: "octo", name: "hello") {{ owner {{ repository(name: "secret") '
        f"{SECRET_BLOB} }} }} }}",
        '{ repository(owner: "octo", name: "hello") { owner { repositories(first: 9) '
        "{ nodes { name } } } } }",
        # a repository named by variables, the literal in the document a decoy
        'query($o: String! = "octo", $n: String! = "hello") '
        f"{{ repository(owner: $o, name: $n) {SECRET_BLOB} }}",
        # node ids of anything
        '{ node(id: "R_kgDOSecret") { id } }',
        '{ nodes(ids: ["R_kgDOSecret"]) { id } }',
        '{ repository(owner: "octo", name: "hello") { id n: node(id: "R_x") { id } } }',
        # search, viewer's repositories, introspection
        '{ search(query: "org:octo", type: REPOSITORY, first: 5) { nodes { __typename } } }',
        "{ viewer { repositories(first: 5) { nodes { name } } } }",
        "{ viewer { login ... on User { pullRequests(first: 5) { nodes { body } } } } }",
        "{ viewer { ...V } } fragment V on User { issues(first: 5) { nodes { body } } }",
        "{ __schema { types { name } } }",
        '{ repository(owner: "octo", name: "hello") { __schema { types { name } } } }',
        '{ repositoryOwner(login: "octo") { login } }',
        '{ organization(login: "octo") { login } }',
        '{ user(login: "octo") { login } }',
        '{ resource(url: "https://github.com/octo/secret") { __typename } }',
        # fork parents and authors: identity only
        '{ repository(owner: "octo", name: "hello") { parent ' + SECRET_BLOB + " } }",
        '{ repository(owner: "octo", name: "hello") { pullRequest(number: 8) { author '
        "{ ... on User { pullRequests(first: 5) { nodes { body } } } } } } }",
        '{ repository(owner: "octo", name: "hello") { pullRequest(number: 8) { headRepository '
        '{ object(expression: "HEAD:.env") { id } } } } }',
    ],
)
def test_documents_that_reach_out_of_the_granted_repositories_are_refused(doc: str) -> None:
    decision = gql(doc, {"o": "octo", "n": "secret"} if "$o" in doc else None)
    assert isinstance(decision, Refuse) and decision.status in (403, 404), decision


def test_the_node_root_names_only_own_pull_requests() -> None:
    refused(gql('{ node(id: "PR_kwDOothers") { id } }'), 403, "root_field_not_allowed:node")
    refused(
        gql("query($id: ID!) { node(id: $id) { id } }", {"id": "PR_kwDOothers"}),
        403,
        "root_field_not_allowed:node",
    )
    allowed(gql(f'{{ node(id: "{OWN_ID}") {{ id }} }}'))  # (control)


@pytest.mark.parametrize(
    "mutation",
    [
        f'addPullRequestReview(input: {{pullRequestId: "{OWN_ID}", event: APPROVE}})',
        f'addPullRequestReview(input: {{pullRequestId: "{OWN_ID}", event: REQUEST_CHANGES}})',
        'updatePullRequest(input: {pullRequestId: "PR_kwDOothers", title: "x"})',
        'addComment(input: {subjectId: "I_kwDOissue", body: "x"})',
        'closePullRequest(input: {pullRequestId: "PR_kwDOothers"})',
        f'updatePullRequest(input: {{pullRequestId: "{OWN_ID}", baseRefName: "prod"}})',
        f'updatePullRequest(input: {{pullRequestId: "{OWN_ID}", state: MERGED}})',
        f'updatePullRequest(input: {{pullRequestId: "{OWN_ID}", labelIds: ["L"]}})',
        'createPullRequest(input: {repositoryId: "R_kgDOHello", headRepositoryId: "R_evil", '
        'headRefName: "agent/x", baseRefName: "main", title: "t"})',
        'createPullRequest(input: {repositoryId: "R_kgDOHello", headRefName: "evil:agent/x", '
        'baseRefName: "main", title: "t"})',
        'createPullRequest(input: {repositoryId: "R_kgDOSecret", headRefName: "agent/x", '
        'baseRefName: "main", title: "t"})',
        'createPullRequest(input: {repositoryId: "R_kgDOHello", headRefName: "main", '
        'baseRefName: "main", title: "t"})',
    ],
)
def test_mutations_on_what_is_not_the_sessions_own_are_refused(mutation: str) -> None:
    decision = gql(f"mutation {{ {mutation} {{ clientMutationId }} }}")
    assert isinstance(decision, Refuse) and decision.status in (400, 403, 404), decision


def test_review_event_in_a_variable_is_read_like_a_literal() -> None:
    doc = (
        "mutation($e: PullRequestReviewEvent) { addPullRequestReview(input: "
        f'{{pullRequestId: "{OWN_ID}", event: $e}}) {{ clientMutationId }} }}'
    )
    refused(gql(doc, {"e": "APPROVE"}), 403, "review_event_not_allowed")
    # and a default counts as given
    doc_default = doc.replace("PullRequestReviewEvent)", "PullRequestReviewEvent = APPROVE)")
    refused(gql(doc_default), 403, "review_event_not_allowed")


def test_an_undeclared_variable_is_not_taken_from_the_envelope() -> None:
    doc = f'{{ repository(owner: "octo", name: $n) {SECRET_BLOB} }}'
    refused(gql(doc, {"n": "hello"}), 400, "malformed")


def test_two_creates_in_one_document_are_refused() -> None:
    one = (
        'createPullRequest(input: {repositoryId: "R_kgDOHello", headRefName: "agent/x", '
        'baseRefName: "main", title: "t"}) { clientMutationId }'
    )
    decision = gql(f"mutation {{ a: {one} b: {one} }}")
    refused(decision, 403, "one_pull_per_request")


def test_create_asks_for_repository_ids_before_deciding() -> None:
    doc = (
        'mutation { createPullRequest(input: {repositoryId: "R_kgDOSecret", headRefName: '
        '"agent/x", baseRefName: "main", title: "t"}) { clientMutationId } }'
    )
    assert isinstance(gql(doc, context=ctx(repo_ids=None)), NeedRepoIds)


# --- holes: edges out of the granted repositories that the lists miss ------------------------

VIEWER_PULLS = (
    f'{{ node(id: "{OWN_ID}") {{ ... on PullRequest {{ hovercard {{ contexts {{ '
    "... on ViewerHovercardContext { viewer { pullRequests(first: 50) { nodes { title body "
    "baseRef { target { ... on Commit { tree { entries { name object { ... on Blob { text } "
    "} } } } } } } } } } } } } } }"
)


def test_viewer_through_a_hovercard_is_held_to_identity() -> None:
    decision = gql(VIEWER_PULLS)
    assert isinstance(decision, Refuse), decision


@pytest.mark.parametrize(
    "inner",
    [
        "pullRequests(first: 20) { nodes { title body files(first: 50) { nodes { path } } } }",
        "issues(first: 20) { nodes { title body } }",
        "lists(first: 5) { nodes { items(first: 20) { nodes { ... on Repository { nameWithOwner "
        'object(expression: "HEAD:.env") { ... on Blob { text } } } } } } }',
    ],
)
def test_mentioned_users_are_held_to_identity(inner: str) -> None:
    doc = (
        '{ repository(owner: "octo", name: "hello") { latestRelease { mentions(first: 10) '
        f"{{ nodes {{ login {inner} }} }} }} }} }}"
    )
    decision = gql(doc)
    assert isinstance(decision, Refuse), decision


def test_a_commits_organization_is_held_to_identity() -> None:
    doc = (
        '{ repository(owner: "octo", name: "hello") { object(expression: "HEAD") { ... on Commit '
        "{ onBehalfOf { login samlIdentityProvider { externalIdentities(first: 50) { nodes "
        "{ samlIdentity { nameId emails { value } } } } } } } } } }"
    )
    assert isinstance(gql(doc), Refuse)


def test_a_reviews_teams_are_held_to_identity() -> None:
    doc = (
        '{ repository(owner: "octo", name: "hello") { pullRequest(number: 8) { reviews(first: 5) '
        "{ nodes { onBehalfOf(first: 5) { nodes { slug discussions(first: 20) { nodes { title "
        "body } } } } } } } } }"
    )
    assert isinstance(gql(doc), Refuse)


# ============================================================================ host-form git


@pytest.mark.parametrize(
    "host_header",
    ["GITHUB.COM", "github.com.", "evil.example", "airlock.internal", "github.com:x", "", None],
)
def test_host_form_names_only_a_configured_upstream_spelled_exactly(
    host_header: str | None,
) -> None:
    target = "/octo/hello.git/info/refs?service=git-receive-pack"
    upstreams = frozenset({"github.com", "ghe.example.com"})
    rewritten = host_form_target(target, host_header, upstreams)
    assert rewritten == target  # unchanged: no /git/<host>/ prefix was invented
    with pytest.raises(RequestRefused):
        parse_git_request("GET", rewritten, None, upstreams)


def test_host_form_does_not_smuggle_a_second_host_into_the_path() -> None:
    upstreams = frozenset({"github.com", "ghe.example.com"})
    for target in (
        "//ghe.example.com/octo/hello/info/refs?service=git-upload-pack",
        "/../ghe.example.com/octo/hello/info/refs?service=git-upload-pack",
        "/%2e%2e/git/ghe.example.com/octo/hello/info/refs?service=git-upload-pack",
    ):
        rewritten = host_form_target(target, "github.com:443", upstreams)
        assert rewritten.startswith("/git/github.com/")
        with pytest.raises(RequestRefused):
            parse_git_request("GET", rewritten, None, upstreams)
