"""The decision for one request from a sandbox to GitHub's API: which repository it is about,
whether the session's grants allow it, and what exactly goes upstream.

Pure: the request (method, raw target, body) and the session's context (grants, the pull
requests it created, limits) go in; an explicit :class:`Allow`, :class:`Refuse` or
:class:`NeedRepoIds` comes out. The relay (gateway/api/) executes it: it sends
``Allow.upstream_target`` (relative to the API root) with ``Allow.body`` when set, attaches
the real credential, records created pull requests, and logs ``route`` and ``reason``.

Deny by default. REST requests reach the granted repositories under ``/repos/OWNER/REPO``
through an allowlist of read routes; a write grant adds creating pull requests from a branch
the session may push, and updating, commenting on and requesting review of the pull requests
this session created. Outside repositories only ``GET /user``, ``/rate_limit`` and ``/meta``.
GraphQL documents are decided by :mod:`airlock.core.api_graphql`.

Targets are never normalised: anything a server might read two ways (encoded ``/``, ``\\`` or
``.``, dot or empty segments, control or non-ASCII characters, fragments) is refused, so the
route decided here is the route GitHub serves. Bodies that a decision depends on are sent as
the policy parsed them (re-serialised JSON), never as the bytes received, so no difference
between this parser and GitHub's can smuggle a field past the check.

Statuses: 400 malformed; 403 refused by policy; 404 a repository not granted (the same
answer whether it exists or not); 405 a method the API has no use for, or GraphQL over GET;
413 a body over the cap; 500 only if this module has a bug (decide_api never raises).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airlock.core.grants import Access, Grant, access_for, rules_for
from airlock.core.refrules import BRANCH_PREFIX, InvalidRefRule, RefRule, parse_rules

__all__ = [
    "Allow",
    "ApiContext",
    "ApiDecision",
    "ApiLimits",
    "ApiRequest",
    "CreatePull",
    "NeedRepoIds",
    "PullRef",
    "Refuse",
    "decide_api",
]


@dataclass(frozen=True)
class ApiLimits:
    max_pulls: int = 10  # pull requests a session may create
    require_draft: bool = False  # True: created PRs are forced to draft (rewrite the body)
    title_prefix: str = ""  # added to a created/updated PR title when it lacks it (rewrite)
    labels: tuple[str, ...] = ()  # added by the relay after creation (reported in CreatePull)
    base_branches: tuple[str, ...] = ("**",)  # ref patterns (refrules syntax) a PR base may match


@dataclass(frozen=True)
class PullRef:
    repo: str  # repository key "HOST/owner/repo" lowercased, as Grant.key
    number: int
    node_id: str  # GraphQL id, e.g. "PR_kwDO..."


@dataclass(frozen=True)
class ApiContext:
    host: str  # upstream host the grants use: "github.com" or a GHE host
    grants: tuple[Grant, ...]  # the session's grants (any host; only `host`'s count)
    pulls: tuple[PullRef, ...]  # pull requests this session created
    limits: ApiLimits
    rest_prefix: str = ""  # "" for api.github.com, "/api/v3" for GHE
    graphql_path: str = "/graphql"  # "/graphql" or "/api/graphql"
    # GraphQL node id -> repo key, for the session's granted repos on `host`; None = not
    # looked up yet (the relay looks them up when a decision asks: NeedRepoIds).
    repo_ids: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ApiRequest:
    method: str  # as received, e.g. "GET"
    target: str  # the raw request-target: origin-form path and optional ?query
    body: bytes  # the whole request body (the relay caps its size)
    content_type: str | None = None


@dataclass(frozen=True)
class CreatePull:
    repo: str  # repo key
    owner: str  # as the grant spells it (for building URLs)
    name: str
    head: str  # branch name without refs/heads/
    base: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Allow:
    route: str  # for the audit log: "GET /repos/{owner}/{repo}/pulls", "graphql query X"
    # The target to send upstream, relative to the API root and without rest_prefix:
    # "/repos/octo/hello/pulls?state=open", or "/graphql" for every GraphQL request.
    upstream_target: str
    repo: str | None = None  # repo key the request is about (None: /user, viewer-only, ...)
    body: bytes | None = None  # the body to send instead of the received one; None: unchanged
    creates_pull: CreatePull | None = None  # record after a 2xx, then add labels
    operation: str | None = None  # GraphQL operation name if any


@dataclass(frozen=True)
class Refuse:
    status: int
    reason: str  # short rule for the audit log
    message: str  # for the client: starts with "airlock: ", says what is wrong and what instead
    route: str = ""
    repo: str | None = None


@dataclass(frozen=True)
class NeedRepoIds:
    # Repo keys whose GraphQL node ids the relay must look up, then decide again with
    # ctx.repo_ids filled in.
    repos: tuple[str, ...]


ApiDecision = Allow | Refuse | NeedRepoIds

# --- limits and shared checks (also used by api_graphql) ------------------------------------

MAX_TARGET_LENGTH = 8192
MAX_JSON_BODY = 1024 * 1024  # REST write bodies the policy parses
MAX_JSON_DEPTH = 64  # nesting of any JSON body the policy parses
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD"})

_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
# Branch names the API may name: the characters a ref rule may name (refrules), no wildcards.
_BRANCH = re.compile(r"[A-Za-z0-9._/+@-]{1,255}")
_NUMBER = re.compile(r"[1-9][0-9]{0,9}")
_PERCENT = re.compile(r"%(..)?", re.DOTALL)
# Percent-encodings refused in a path: "/" and "\\" would re-split it, and an unreserved
# character (letters, digits, "-._~") is the same character escaped or not (RFC 3986 6.2.2.2),
# so "%70rotection" would be "protection" to GitHub and something else to the route table.
_SEPARATOR_ESCAPES = frozenset({"2f", "5c", "2e"})
_AMBIGUOUS_ESCAPES = frozenset(
    {"2d", "5f", "7e"}
    | {f"{c:02x}" for c in range(0x30, 0x3A)}
    | {f"{c:02x}" for c in range(0x41, 0x5B)}
    | {f"{c:02x}" for c in range(0x61, 0x7B)}
)


class MalformedJson(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Parsers disagree on which copy wins; refuse rather than guess GitHub's choice.
            raise MalformedJson(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise MalformedJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e999 parses to infinity, which json.dumps would send upstream as "Infinity" (not JSON).
    value = float(text)
    if not math.isfinite(value):
        raise MalformedJson(f"number {text[:32]} is out of range")
    return value


def _depth_ok(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[Any] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((c, depth + 1) for c in children)
    return True


def load_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, bounded nesting."""
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_finite,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJson(str(exc)[:200]) from None
    if not _depth_ok(value, MAX_JSON_DEPTH):
        raise MalformedJson("nested too deeply")
    return value


def dump_json(value: Any) -> bytes:
    # ASCII escapes keep lone surrogates and odd code points unambiguous on the way out.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def malformed(detail: str, route: str = "", repo: str | None = None) -> Refuse:
    return Refuse(400, "malformed", f"airlock: malformed request: {detail}", route, repo)


def ungranted(host: str, owner: str, name: str, route: str = "") -> Refuse:
    # One answer for missing and ungranted repositories: nothing tells the sandbox which.
    return Refuse(
        404,
        "ungranted_repo",
        f"airlock: Not Found: {host}/{owner}/{name} is not granted to this session",
        route,
        f"{host}/{owner.lower()}/{name.lower()}",
    )


def grant_for(ctx: ApiContext, key: str) -> Grant | None:
    """The strongest grant on ctx.host for a repo key (write before read), or None."""
    best: Grant | None = None
    for g in ctx.grants:
        if g.host == ctx.host and g.key == key:
            if g.access is Access.WRITE:
                return g
            best = best or g
    return best


def write_repo_keys(ctx: ApiContext) -> tuple[str, ...]:
    keys: list[str] = []
    for g in ctx.grants:
        if g.host == ctx.host and g.access is Access.WRITE and g.key not in keys:
            keys.append(g.key)
    return tuple(keys)


def valid_branch(name: str) -> bool:
    """A plain branch name as git would accept it, and nothing a server could read twice."""
    if not _BRANCH.fullmatch(name) or name.startswith(("refs/", "-", "/")):
        return False
    if ".." in name or "@{" in name or "//" in name or name == "@":
        return False
    if name.endswith(("/", ".", ".lock")):
        return False
    return not any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))


def _describe(rules: tuple[RefRule, ...]) -> str:
    return ",".join(str(r) for r in rules) if rules else "none"


def base_rules(limits: ApiLimits) -> tuple[RefRule, ...] | None:
    """The allowed base patterns, or None when the configured patterns do not parse."""
    try:
        return parse_rules(",".join(limits.base_branches)) if limits.base_branches else ()
    except InvalidRefRule:
        return None


def check_base(ctx: ApiContext, base: object, route: str, repo: str | None) -> Refuse | None:
    if not isinstance(base, str) or not valid_branch(base):
        return malformed("the base must be a branch name", route, repo)
    rules = base_rules(ctx.limits)
    if rules is None:
        # A broken admin setting closes the door instead of opening it.
        return Refuse(
            403,
            "base_rules_invalid",
            "airlock: the gateway's allowed base branches do not parse; ask the operator",
            route,
            repo,
        )
    if not any(r.matches(BRANCH_PREFIX + base) for r in rules):
        return Refuse(
            403,
            "base_not_allowed",
            f"airlock: pull requests may target only {_describe(rules)}; {base} is outside them",
            route,
            repo,
        )
    return None


def check_head(
    ctx: ApiContext, grant: Grant, head: object, route: str
) -> tuple[str, None] | tuple[None, Refuse]:
    """The head branch of a new pull request: in the same repository, and pushable."""
    if not isinstance(head, str):
        return None, malformed("the head must be a branch name", route, grant.key)
    branch = head
    if ":" in head:
        owner, _, branch = head.partition(":")
        if owner.lower() != grant.owner.lower():
            return None, Refuse(
                403,
                "cross_repo_head",
                f"airlock: pull requests must come from a branch of {grant.owner}/{grant.repo} "
                f"itself, not from {owner}'s fork; push the branch there and use it as head",
                route,
                grant.key,
            )
    if not valid_branch(branch):
        return None, malformed(f"head {head!r} is not a branch name", route, grant.key)
    rules = rules_for(ctx.grants, ctx.host, grant.owner, grant.repo)
    if not any(r.matches(BRANCH_PREFIX + branch) for r in rules):
        return None, Refuse(
            403,
            "head_not_pushable",
            f"airlock: pull requests must come from a branch this session may push "
            f"({_describe(rules)}); {branch} is outside them",
            route,
            grant.key,
        )
    return branch, None


def check_pull_limit(ctx: ApiContext, creating: int, route: str, repo: str | None) -> Refuse | None:
    if len(ctx.pulls) + creating > ctx.limits.max_pulls:
        return Refuse(
            403,
            "pull_limit",
            f"airlock: this session may create at most {ctx.limits.max_pulls} pull requests "
            f"and has created {len(ctx.pulls)}; update one of them instead",
            route,
            repo,
        )
    return None


def prefixed_title(ctx: ApiContext, title: str) -> str:
    prefix = ctx.limits.title_prefix
    return title if not prefix or title.startswith(prefix) else prefix + title


def not_own_pull(ctx: ApiContext, key: str | None, what: str, route: str) -> Refuse:
    """``key`` None: the pull requests of every repository (GraphQL names them by node id)."""
    own = sorted(p.number for p in ctx.pulls if key is None or p.repo == key)
    listed = ", ".join(f"#{n}" for n in own) if own else "none yet"
    return Refuse(
        403,
        "not_own_pull",
        f"airlock: this session may only update, comment on and request review of the pull "
        f"requests it created ({listed}); {what} is not one of them",
        route,
        key,
    )


def needs_write(key: str, route: str) -> Refuse:
    return Refuse(
        403,
        "write_grant_required",
        f"airlock: {route} needs a write grant; this session may only read {key}",
        route,
        key,
    )


# --- entry point ------------------------------------------------------------------------------


def decide_api(request: ApiRequest, ctx: ApiContext) -> ApiDecision:
    """The decision for one API request. Never raises: a bug here refuses (500)."""
    try:
        return _decide(request, ctx)
    except Exception:  # a refusal is the only safe answer to an unforeseen input
        return Refuse(500, "internal_error", "airlock: the gateway could not decide this request")


def _decide(request: ApiRequest, ctx: ApiContext) -> ApiDecision:
    method = request.method
    if not isinstance(method, str) or method not in KNOWN_METHODS:
        return Refuse(
            405,
            "method_not_allowed",
            "airlock: method not allowed; the API answers GET, HEAD, POST, PATCH, PUT, DELETE",
        )
    target = request.target
    bad = _bad_target(target)
    if bad:
        return malformed(bad)
    path, sep, query = target.partition("?")
    if path == ctx.graphql_path:
        from airlock.core.api_graphql import decide_graphql  # imports this module

        if query:
            return malformed("a GraphQL request takes no query string", "graphql")
        return decide_graphql(request, ctx)
    prefix = ctx.rest_prefix
    if prefix:
        if not path.startswith(prefix + "/"):
            return Refuse(
                403,
                "route_not_allowed",
                f"airlock: {method} {path} is not an API route; the REST API is under {prefix}/",
            )
        path = path[len(prefix) :]
    if path == "/":
        return _decide_top(method, path, sep + query) if not request.body else malformed("body")
    segments = path[1:].split("/")
    bad = _bad_segments(segments)
    if bad:
        return malformed(bad)
    if method in READ_METHODS and request.body:
        return malformed(f"{method} takes no body")
    if method not in READ_METHODS and sep:
        # GitHub may read parameters from the query string too: a write's parameters are
        # the checked body's alone (no ?issue=, ?event=APPROVE, ?_method=DELETE).
        return malformed(f"{method} takes its parameters in the body, not the query string")
    suffix = sep + query  # passed through unchanged
    if segments[0] == "repos" and len(segments) >= 3:
        return _decide_repo(request, ctx, segments[1], segments[2], segments[3:], suffix)
    return _decide_top(method, path, suffix)


def _bad_target(target: object) -> str | None:
    if not isinstance(target, str) or not target:
        return "empty request target"
    if len(target) > MAX_TARGET_LENGTH:
        return "request target too long"
    if not target.startswith("/"):
        return "the request target must be a path (origin form)"
    if any(not ("\x21" <= c <= "\x7e") for c in target):
        return "control, space or non-ASCII characters in the request target"
    if "#" in target:
        return "a fragment in the request target"
    if "\\" in target:
        return "a backslash in the request target"
    return None


def _bad_segments(segments: list[str]) -> str | None:
    # An owner or repository name never holds an escape; any "%" there is answered by the
    # uniform 404 (the name regex), so only separators and controls are refused here.
    names = {1, 2} if segments[0] == "repos" else set()
    for index, seg in enumerate(segments):
        if seg in ("", ".", ".."):
            return "empty, '.' or '..' path segment"
        for m in _PERCENT.finditer(seg):
            code = m.group(1)
            if code is None or not re.fullmatch(r"[0-9A-Fa-f]{2}", code):
                return "a bad percent-encoding in the path"
            lowered = code.lower()
            if int(lowered, 16) < 0x20 or lowered == "7f" or lowered in _SEPARATOR_ESCAPES:
                return "an encoded '/', '\\', '.' or control character in the path"
            if lowered in _AMBIGUOUS_ESCAPES and index not in names:
                return "an encoded letter, digit or '-._~' in the path (send it unencoded)"
    return None


# The API root (a static list of URL templates; gh auth status reads it), the caller, limits.
_TOP_ROUTES = {"/": "/", "/user": "/user", "/rate_limit": "/rate_limit", "/meta": "/meta"}


def _decide_top(method: str, path: str, suffix: str) -> ApiDecision:
    route = _TOP_ROUTES.get(path)
    if route is not None and method in READ_METHODS:
        return Allow(route=f"{method} {route}", upstream_target=path + suffix)
    shown = path if len(path) <= 100 else path[:100] + "..."
    return Refuse(
        403,
        "route_not_allowed",
        f"airlock: {method} {shown} is not allowed; this session's API reaches its granted "
        "repositories under /repos/OWNER/REPO, plus GET /user, /rate_limit and /meta",
        f"{method} {shown}",
    )


# --- REST routes under /repos/{owner}/{repo} ---------------------------------------------------

# Route patterns below /repos/{owner}/{repo}. Tokens: a literal; "{number}" an issue or pull
# number (decimal, no leading zero); "{id}" a decimal id; "{x}" any one segment; "{path}" one
# or more segments (file paths, refs with slashes, compare ranges).
_READ_ROUTES: tuple[str, ...] = (
    "",
    "contents",
    "contents/{path}",
    "readme",
    "readme/{path}",
    "commits",
    "commits/{ref}",
    "commits/{ref}/status",
    "commits/{ref}/statuses",
    "commits/{ref}/check-runs",
    "commits/{ref}/check-suites",
    "branches",
    "branches/{branch}",  # {branch} may hold slashes; .../protection is refused below
    "pulls",
    "pulls/comments",
    "pulls/comments/{id}",
    "pulls/{number}",
    "pulls/{number}/files",
    "pulls/{number}/commits",
    "pulls/{number}/comments",
    "pulls/{number}/reviews",
    "pulls/{number}/reviews/{id}",
    "pulls/{number}/reviews/{id}/comments",
    "pulls/{number}/requested_reviewers",
    "issues",
    "issues/comments",
    "issues/comments/{id}",
    "issues/events",
    "issues/events/{id}",
    "issues/{number}",
    "issues/{number}/comments",
    "issues/{number}/events",
    "issues/{number}/labels",
    # not issues/{number}/timeline: its cross-references carry other repositories' issues
    "check-runs/{id}",
    "check-runs/{id}/annotations",
    "check-suites/{id}",
    "check-suites/{id}/check-runs",
    "actions/runs",
    "actions/runs/{id}",
    "actions/runs/{id}/logs",
    "actions/runs/{id}/jobs",
    "actions/runs/{id}/artifacts",
    "actions/runs/{id}/attempts/{number}",
    "actions/runs/{id}/attempts/{number}/jobs",
    "actions/runs/{id}/attempts/{number}/logs",
    "actions/jobs/{id}",
    "actions/jobs/{id}/logs",
    "actions/artifacts",
    "actions/workflows",
    "actions/workflows/{workflow}",
    "actions/workflows/{workflow}/runs",
    "git/refs",
    "git/refs/{path}",
    "git/ref/{path}",
    "git/matching-refs/{path}",
    "git/trees/{sha}",
    "git/blobs/{sha}",
    "git/commits/{sha}",
    "git/tags/{sha}",
    "compare/{path}",
    "tags",
    "releases",
    "releases/latest",
    "releases/tags/{tag}",
    "releases/{id}",
    "releases/{id}/assets",
    "labels",
    "labels/{name}",
    "milestones",
    "milestones/{number}",
    "languages",
    "topics",
    "statuses/{sha}",
    "contributors",
    "assignees",
    "assignees/{user}",
    "tarball",
    "tarball/{path}",
    "zipball",
    "zipball/{path}",
    "license",
    "deployments",
    "deployments/{id}",
    "deployments/{id}/statuses",
)

# Writes a write grant allows. "create" is a new pull request; the others act on a pull
# request this session created ({number}).
_WRITE_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "pulls"),
    ("PATCH", "pulls/{number}"),
    ("POST", "issues/{number}/comments"),
    ("POST", "pulls/{number}/comments"),
    ("POST", "pulls/{number}/comments/{id}/replies"),
    ("POST", "pulls/{number}/reviews"),
    ("POST", "pulls/{number}/requested_reviewers"),
)

# Fields each write may carry (anything else is refused, so a new GitHub parameter is a
# decision, not a surprise).
_CREATE_FIELDS = frozenset({"title", "head", "base", "body", "draft", "maintainer_can_modify"})
_UPDATE_FIELDS = frozenset({"title", "body", "state", "base", "maintainer_can_modify"})
_REVIEW_FIELDS = frozenset({"body", "event", "commit_id", "comments"})
_REVIEWER_FIELDS = frozenset({"reviewers", "team_reviewers"})


def _match(pattern: str, segments: list[str]) -> dict[str, str] | None:
    parts = pattern.split("/") if pattern else []
    found: dict[str, str] = {}
    for i, part in enumerate(parts):
        if part == "{path}" or part == "{branch}":
            rest = segments[i:]
            if not rest:
                return None
            found[part] = "/".join(rest)
            return found if i == len(parts) - 1 else None
        if i >= len(segments):
            return None
        seg = segments[i]
        if part.startswith("{"):
            if part == "{number}" and not _NUMBER.fullmatch(seg):
                return None
            if part == "{id}" and not _NUMBER.fullmatch(seg):
                return None
            found[part] = seg
        elif part != seg:
            return None
    return found if len(parts) == len(segments) else None


def _find(patterns: tuple[str, ...], segments: list[str]) -> tuple[str, dict[str, str]] | None:
    for pattern in patterns:
        found = _match(pattern, segments)
        if found is not None:
            return pattern, found
    return None


def _template(pattern: str) -> str:
    return "/repos/{owner}/{repo}" + ("/" + pattern if pattern else "")


def _decide_repo(
    request: ApiRequest, ctx: ApiContext, owner: str, name: str, rest: list[str], suffix: str
) -> ApiDecision:
    method = request.method
    if not _NAME.fullmatch(owner) or not _NAME.fullmatch(name):
        return ungranted(ctx.host, owner, name)
    access = access_for(tuple(g for g in ctx.grants if g.host == ctx.host), ctx.host, owner, name)
    if access is None:
        return ungranted(ctx.host, owner, name)
    key = f"{ctx.host}/{owner.lower()}/{name.lower()}"
    upstream = "/".join(["/repos", owner.lower(), name.lower(), *rest]) + suffix
    if method in READ_METHODS:
        found = _find(_READ_ROUTES, rest)
        if found is None or (found[0] == "branches/{branch}" and "protection" in rest[1:]):
            return _route_refused(method, rest, key)
        compared = found[1].get("{path}", "").lower() if found[0] == "compare/{path}" else ""
        if ":" in compared or "%3a" in compared:
            # "base...user:branch" compares with a fork: another repository of the network
            return _route_refused(method, rest, key)
        return Allow(route=f"{method} {_template(found[0])}", upstream_target=upstream, repo=key)
    for write_method, pattern in _WRITE_ROUTES:
        if write_method != method:
            continue
        found_write = _match(pattern, rest)
        if found_write is None:
            continue
        route = f"{method} {_template(pattern)}"
        if access is not Access.WRITE:
            return needs_write(key, route)
        grant = grant_for(ctx, key)
        assert grant is not None  # access_for found it
        return _decide_write(request, ctx, grant, pattern, found_write, route, upstream)
    return _route_refused(method, rest, key)


def _route_refused(method: str, rest: list[str], key: str) -> Refuse:
    shown = "/".join(rest)
    shown = shown if len(shown) <= 100 else shown[:100] + "..."
    route = f"{method} /repos/{{owner}}/{{repo}}/{shown}".rstrip("/")
    if method in READ_METHODS:
        instead = (
            "readable here are the repository, its contents, commits, branches, pulls, "
            "issues, checks, actions runs and jobs, git data, releases and labels; settings, "
            "secrets, hooks, keys and collaborators are not exposed"
        )
    else:
        instead = (
            "with a write grant a session may create pull requests (POST .../pulls) and "
            "update, comment on and request review of the pull requests it created; push "
            "commits with git"
        )
    return Refuse(
        403, "route_not_allowed", f"airlock: {route} is not allowed: {instead}", route, key
    )


def _json_object(body: bytes, route: str, key: str) -> dict[str, Any] | Refuse:
    if len(body) > MAX_JSON_BODY:
        return Refuse(413, "body_too_large", "airlock: request body too large", route, key)
    try:
        value = load_json(body)
    except MalformedJson as exc:
        return malformed(f"the body is not strict JSON ({exc})", route, key)
    if not isinstance(value, dict):
        return malformed("the body must be a JSON object", route, key)
    return value


def _unknown_fields(
    fields: dict[str, Any], allowed: frozenset[str], route: str, key: str
) -> Refuse | None:
    extra = sorted(set(fields) - allowed)
    if not extra:
        return None
    return Refuse(
        403,
        f"field_not_allowed:{extra[0]}",
        f"airlock: {route} may not set {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}",
        route,
        key,
    )


def _decide_write(
    request: ApiRequest,
    ctx: ApiContext,
    grant: Grant,
    pattern: str,
    found: dict[str, str],
    route: str,
    upstream: str,
) -> ApiDecision:
    key = grant.key
    fields = _json_object(request.body, route, key)
    if isinstance(fields, Refuse):
        return fields
    if pattern == "pulls":
        return _decide_create(ctx, grant, fields, route, upstream)
    number = int(found["{number}"])
    if not any(p.repo == key and p.number == number for p in ctx.pulls):
        return not_own_pull(ctx, key, f"#{number}", route)
    if pattern == "pulls/{number}":
        refused = _unknown_fields(fields, _UPDATE_FIELDS, route, key)
        if refused:
            return refused
        if "state" in fields and fields["state"] not in ("open", "closed"):
            return malformed("state must be 'open' or 'closed'", route, key)
        if "base" in fields:
            refused = check_base(ctx, fields["base"], route, key)
            if refused:
                return refused
        if "title" in fields:
            if not isinstance(fields["title"], str):
                return malformed("the title must be a string", route, key)
            fields["title"] = prefixed_title(ctx, fields["title"])
    elif pattern == "pulls/{number}/reviews":
        refused = _unknown_fields(fields, _REVIEW_FIELDS, route, key)
        if refused:
            return refused
        if fields.get("event", "COMMENT") != "COMMENT":
            return Refuse(
                403,
                "review_event_not_allowed",
                "airlock: a session may only comment in reviews (event COMMENT or none), "
                "never approve or request changes",
                route,
                key,
            )
    elif pattern == "pulls/{number}/requested_reviewers":
        refused = _unknown_fields(fields, _REVIEWER_FIELDS, route, key)
        if refused:
            return refused
    # Send what was checked: the parsed body, re-serialised.
    return Allow(route=route, upstream_target=upstream, repo=key, body=dump_json(fields))


def _decide_create(
    ctx: ApiContext, grant: Grant, fields: dict[str, Any], route: str, upstream: str
) -> ApiDecision:
    key = grant.key
    if "issue" in fields:
        return Refuse(
            403,
            "field_not_allowed:issue",
            "airlock: a pull request may not be made from an existing issue; give a title",
            route,
            key,
        )
    if "head_repo" in fields:
        return Refuse(
            403,
            "cross_repo_head",
            "airlock: pull requests must come from a branch of the repository itself "
            "(no head_repo)",
            route,
            key,
        )
    refused = _unknown_fields(fields, _CREATE_FIELDS, route, key)
    if refused:
        return refused
    title = fields.get("title")
    if not isinstance(title, str) or not title:
        return malformed("a pull request needs a title (string)", route, key)
    for flag in ("draft", "maintainer_can_modify"):
        if flag in fields and not isinstance(fields[flag], bool):
            return malformed(f"{flag} must be true or false", route, key)
    if "body" in fields and not isinstance(fields["body"], str | None):
        return malformed("the body must be a string", route, key)
    branch, refused = check_head(ctx, grant, fields.get("head"), route)
    if refused:
        return refused
    assert branch is not None
    base = fields.get("base")
    refused = check_base(ctx, base, route, key)
    if refused:
        return refused
    assert isinstance(base, str)
    refused = check_pull_limit(ctx, 1, route, key)
    if refused:
        return refused
    fields["title"] = prefixed_title(ctx, title)
    if ctx.limits.require_draft:
        fields["draft"] = True
    created = CreatePull(
        repo=key,
        owner=grant.owner,
        name=grant.repo,
        head=branch,
        base=base,
        labels=ctx.limits.labels,
    )
    return Allow(
        route=route,
        upstream_target=upstream,
        repo=key,
        body=dump_json(fields),
        creates_pull=created,
    )
