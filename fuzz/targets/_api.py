"""The session context both API targets decide against, and the invariants of a decision."""

from __future__ import annotations

import json
from dataclasses import replace

import airlock.core.api_graphql  # noqa: F401  (api_policy imports it lazily: instrument it)
from airlock.core.api_policy import (
    Allow,
    ApiContext,
    ApiDecision,
    ApiLimits,
    ApiRequest,
    NeedRepoIds,
    PullRef,
    Refuse,
    _decide,
    decide_api,
)
from airlock.core.grants import Access, Grant
from airlock.core.refrules import parse_rules

HOST = "github.com"
_GRANTS = (
    Grant(HOST, "Octo", "Hello", Access.WRITE, parse_rules("agent/**")),
    Grant(HOST, "octo", "docs", Access.READ),
    Grant("ghe.example.com", "octo", "secret", Access.WRITE, parse_rules("**")),
)
_BASE = ApiContext(
    host=HOST,
    grants=_GRANTS,
    pulls=(PullRef("github.com/octo/hello", 7, "PR_kwDOmine"),),
    limits=ApiLimits(base_branches=("main", "release/*"), title_prefix="[agent] "),
    repo_ids={"R_kgDOHello": "github.com/octo/hello", "R_kgDODocs": "github.com/octo/docs"},
)
CONTEXTS = (
    _BASE,
    replace(_BASE, repo_ids=None),
    replace(_BASE, limits=ApiLimits(require_draft=True, max_pulls=1)),
    replace(
        _BASE,
        host="ghe.example.com",
        rest_prefix="/api/v3",
        graphql_path="/api/graphql",
        pulls=(),
        repo_ids={"R_secret": "ghe.example.com/octo/secret"},
    ),
)
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS", "get")
_STATUSES = frozenset({400, 403, 404, 405, 413})


def _not_json(name: str) -> None:
    raise AssertionError(f"an allowed body holds {name}, which is not JSON")


def decide(request: ApiRequest, ctx: ApiContext) -> ApiDecision:
    """decide_api, with the checks every decision must pass.

    The inner ``_decide`` is called first so an unforeseen exception (which decide_api turns
    into a 500 "internal_error" refusal) surfaces with its traceback.
    """
    inner = _decide(request, ctx)
    decision = decide_api(request, ctx)
    assert decision == inner  # and deterministic: decide_api decided again
    keys = {g.key for g in ctx.grants if g.host == ctx.host}
    if isinstance(decision, Refuse):
        assert decision.status in _STATUSES, decision
        assert decision.reason and decision.message.startswith("airlock: "), decision
    elif isinstance(decision, NeedRepoIds):
        assert ctx.repo_ids is None and decision.repos and set(decision.repos) <= keys
    else:
        assert isinstance(decision, Allow), decision
        assert decision.upstream_target.startswith("/")
        assert decision.repo is None or decision.repo in keys, decision
        if decision.body is not None:
            json.loads(decision.body, parse_constant=_not_json)  # strict: no NaN / Infinity
        if decision.creates_pull is not None:
            assert decision.creates_pull.repo in keys
            assert request.method == "POST"
    return decision
