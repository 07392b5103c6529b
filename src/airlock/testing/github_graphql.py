"""The GitHub API double's GraphQL endpoint: a subset of GitHub's schema over the shared state.

The schema (:data:`airlock.testing.github_graphql_schema.SDL`) is a subset of GitHub's public
GraphQL schema, copied with the same type, field and argument names, types and nullability
(descriptions dropped). A document asking for anything outside it fails validation, exactly
as an unknown field fails on GitHub, so a client's query either means the same thing here as
on github.com or is refused.

Documents are executed with graphql-core over :class:`GitHubState`. What is checked, as
GitHub checks it:

* ``repository(owner:, name:)`` outside the token's repositories, deleted, or missing:
  ``null`` with a ``NOT_FOUND`` error "Could not resolve to a Repository with the name
  'o/r'."; ``node(id:)`` for an id the token cannot see: ``NOT_FOUND``.
* Fields and mutations that need a permission the token lacks: ``FORBIDDEN`` "Resource not
  accessible by integration" (``pullRequests`` needs ``pull_requests: read``;
  ``createPullRequest``/``updatePullRequest``/``closePullRequest``/``requestReviews`` need
  ``pull_requests: write``; ``addComment`` ``issues`` or ``pull_requests: write``;
  ``mergePullRequest``/``createRef``/``deleteRef`` ``contents: write``; branch protection
  ``administration: write``).
* Refusals of the payload (no such head branch, a duplicate pull request, ...):
  ``UNPROCESSABLE`` with GitHub's message.

Errors have GitHub's shape: ``{"type", "path", "locations", "message"}`` next to ``data``.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphql import (
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    build_schema,
    execute_sync,
    get_named_type,
    parse,
    validate,
)
from graphql.error import GraphQLSyntaxError
from graphql.language import OperationDefinitionNode, OperationType

from airlock.testing.github_graphql_schema import SDL
from airlock.testing.github_state import (
    Actor,
    BranchProtectionRule,
    Comment,
    GitHubState,
    PullRequest,
    Repository,
    StateError,
    iso_utc,
)

log = logging.getLogger(__name__)

READ = "read"
WRITE = "write"
_WRITERS = ("push", "maintain", "admin")
_UNDEFINED_FIELD = re.compile(r"^Cannot query field '(\w+)' on type '(\w+)'\.")
MSG_INTERNAL = "Something went wrong while executing your query. Please try again later."


class GraphQLFault(Exception):
    """A refusal GitHub reports in ``errors`` with a ``type`` (NOT_FOUND, FORBIDDEN, ...)."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message


def _not_found_repo(owner: str, name: str) -> GraphQLFault:
    return GraphQLFault(
        "NOT_FOUND", f"Could not resolve to a Repository with the name '{owner}/{name}'."
    )


def _not_found_node(nid: str) -> GraphQLFault:
    return GraphQLFault("NOT_FOUND", f"Could not resolve to a node with the global id of '{nid}'")


def _from_state_error(err: StateError) -> GraphQLFault:
    """GitHub's GraphQL wording for a refusal the REST API words as ``err``."""
    message = err.message
    if err.errors:
        parts = []
        for e in err.errors:
            if "message" in e:
                parts.append(str(e["message"]))
            elif e.get("field") == "head":
                parts.append("Head sha can't be blank, Head ref must be a branch")
            elif e.get("field") == "base":
                parts.append("Base ref must be a branch")
            else:
                parts.append(f"{e.get('field', 'input')} is {e.get('code', 'invalid')}")
        message = ", ".join(parts)
    return GraphQLFault(err.graphql_type, message)


# -- connections ------------------------------------------------------------------------


def _cursor(index: int) -> str:
    return base64.b64encode(f"cursor:v2:{index}".encode()).decode()


def _index(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        return int(base64.b64decode(cursor).decode().rsplit(":", 1)[1])
    except (ValueError, IndexError) as exc:
        raise GraphQLFault(
            "INVALID_CURSOR_ARGUMENTS", f"`{cursor}` does not appear to be a valid cursor."
        ) from exc


def connection(items: list[Any], args: dict[str, Any]) -> dict[str, Any]:
    """A GitHub connection over ``items`` honouring first/last/after/before (max 100)."""
    first, last = args.get("first"), args.get("last")
    for name, value in (("first", first), ("last", last)):
        if value is not None and not 0 <= value <= 100:
            if value > 100:
                raise GraphQLFault(
                    "EXCESSIVE_PAGINATION",
                    f"Requesting {value} records on the connection exceeds the `{name}` "
                    "limit of 100 records.",
                )
            raise GraphQLFault("INVALID_ARGUMENTS", f"`{name}` must be a non-negative integer")
    indexed = list(enumerate(items))
    after, before = _index(args.get("after")), _index(args.get("before"))
    if after is not None:
        indexed = [(i, x) for i, x in indexed if i > after]
    if before is not None:
        indexed = [(i, x) for i, x in indexed if i < before]
    total_window = len(indexed)
    if first is not None:
        indexed = indexed[:first]
    if last is not None:
        indexed = indexed[-last:] if last else []
    edges = [{"cursor": _cursor(i), "node": x} for i, x in indexed]
    return {
        "nodes": [x for _, x in indexed],
        "edges": edges,
        "totalCount": len(items),
        "pageInfo": {
            "hasNextPage": first is not None and total_window > len(indexed),
            "hasPreviousPage": last is not None and total_window > len(indexed),
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


def _empty_connection() -> dict[str, Any]:
    return connection([], {})


# -- resolution ---------------------------------------------------------------------------

_MISSING = object()


def _field_resolver(source: Any, info: Info, **args: Any) -> Any:
    """Objects are dicts; a callable value is called with the field's arguments.

    A field the double has no value for resolves to null when GitHub's type is nullable, or
    to the empty value of its non-null type (an empty list or connection, false, 0); any
    other non-null field without a value is a bug in the double and fails loudly.
    """
    value = source.get(info.field_name, _MISSING) if isinstance(source, dict) else _MISSING
    if value is _MISSING:
        value = (
            getattr(source, info.field_name, _MISSING) if not isinstance(source, dict) else _MISSING
        )
    if callable(value):
        return value(info, **args)
    if value is not _MISSING:
        return value
    rtype = info.return_type
    if not isinstance(rtype, GraphQLNonNull):
        return None
    inner = rtype.of_type
    if isinstance(inner, GraphQLList):
        return []
    named = get_named_type(inner)
    if isinstance(named, GraphQLObjectType) and named.name.endswith("Connection"):
        return _empty_connection()
    if named.name == "Boolean":
        return False
    if named.name == "Int":
        return 0
    raise RuntimeError(
        f"the GitHub double has no value for {info.parent_type.name}.{info.field_name}"
    )


class _StrictRoot(dict[str, Any]):
    """The root object: a root field without a resolver fails instead of answering null."""

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            raise GraphQLFault("INTERNAL", f"The GitHub double does not implement '{key}'.")
        return self[key]


@dataclass
class _Context:
    actor: Actor | None


if TYPE_CHECKING:
    Info = GraphQLResolveInfo[_Context]
else:
    Info = GraphQLResolveInfo


def _ref_node_id(repo: Repository, qualified: str) -> str:
    raw = f"{repo.id}:{qualified}".encode()
    return "REF_kwDO" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_ref_node_id(nid: str) -> tuple[int, str] | None:
    if not nid.startswith("REF_kwDO"):
        return None
    tail = nid.removeprefix("REF_kwDO")
    try:
        rid, _, ref = (
            base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4)).decode().partition(":")
        )
        return int(rid), ref
    except (ValueError, UnicodeDecodeError):
        return None


class GitHubGraphQL:
    """Runs GraphQL documents for one actor over the shared state (see the module docstring)."""

    def __init__(self, state: GitHubState, sdl: str = SDL) -> None:
        self.state = state
        self.schema: GraphQLSchema = build_schema(sdl)
        # Python exceptions from resolvers (bugs in the double), for a test to look at.
        self.internal_errors: list[str] = []

    # -- entry point ---------------------------------------------------------------------

    def execute(self, actor: Actor | None, payload: Any) -> dict[str, Any]:
        """Run one request body (``{"query", "variables", "operationName"}``)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return {
                "errors": [{"message": "A query attribute must be specified and must be a string."}]
            }
        variables = payload.get("variables") or {}
        if not isinstance(variables, dict):
            return {"errors": [{"message": "Variables are invalid JSON."}]}
        try:
            document = parse(payload["query"])
        except GraphQLSyntaxError as err:
            return {"errors": [self._format(err)]}
        problems = validate(self.schema, document)
        if problems:
            return {"errors": [self._format(e) for e in problems]}
        operation = payload.get("operationName")
        ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        is_mutation = any(
            op.operation == OperationType.MUTATION
            and (operation is None or (op.name is not None and op.name.value == operation))
            for op in ops
        )
        root = _StrictRoot(self._mutation_root() if is_mutation else self._query_root())
        result = execute_sync(
            self.schema,
            document,
            root_value=root,
            context_value=_Context(actor),
            variable_values=variables,
            operation_name=operation if isinstance(operation, str) else None,
            field_resolver=_field_resolver,
        )
        out: dict[str, Any] = {}
        if result.errors:
            if result.data is None and all(e.path is None for e in result.errors):
                return {"errors": [self._format(e) for e in result.errors]}
            out["data"] = result.data
            out["errors"] = [self._format(e) for e in result.errors]
        else:
            out["data"] = result.data
        return out

    def _format(self, err: GraphQLError) -> dict[str, Any]:
        original = err.original_error
        entry: dict[str, Any] = {}
        if isinstance(original, GraphQLFault):
            entry["type"] = original.type
        if err.path is not None:
            entry["path"] = list(err.path)
        if err.locations:
            entry["locations"] = [{"line": loc.line, "column": loc.column} for loc in err.locations]
        if original is not None and not isinstance(original, GraphQLFault):
            self.internal_errors.append(f"{type(original).__name__}: {original}")
            log.error("GitHub double resolver failed", exc_info=original)
            entry["message"] = MSG_INTERNAL
        else:
            entry["message"] = err.message
            undefined = _UNDEFINED_FIELD.match(err.message)
            if undefined is not None and original is None:
                # GitHub's wording and extensions for a field its schema does not have.
                field_name, type_name = undefined.groups()
                entry["extensions"] = {
                    "code": "undefinedField",
                    "typeName": type_name,
                    "fieldName": field_name,
                }
                entry["message"] = f"Field '{field_name}' doesn't exist on type '{type_name}'"
        return entry

    # -- access ----------------------------------------------------------------------------

    @staticmethod
    def _actor(info: Info) -> Actor:
        actor = info.context.actor
        if actor is None:
            raise GraphQLFault("FORBIDDEN", "This endpoint requires you to be authenticated.")
        assert isinstance(actor, Actor)
        return actor

    def _visible(self, info: Info, repo: Repository | None) -> bool:
        actor = info.context.actor
        if repo is None or repo.deleted:
            return False
        return not repo.private or (actor is not None and actor.can_see(repo))

    def _check_read(self, info: Info, repo: Repository, permissions: Iterable[str]) -> None:
        """Reading needs one of ``permissions`` at ``read`` (anyone may read a public repo)."""
        if not repo.private:
            return
        actor = self._actor(info)
        if not actor.can_see(repo) or not actor.has_any(tuple(permissions), READ):
            raise GraphQLFault("FORBIDDEN", actor.denied_message)

    def _require(self, info: Info, repo: Repository, permissions: Iterable[str]) -> Actor:
        """Changing needs one of ``permissions`` at ``write``; the actor who may."""
        actor = self._actor(info)
        if not actor.can_see(repo) or not actor.has_any(tuple(permissions), WRITE):
            raise GraphQLFault("FORBIDDEN", actor.denied_message)
        return actor

    def _node_target(
        self, info: Info, nid: str, kind: str | None = None
    ) -> tuple[str, Any, Repository | None]:
        ref = _parse_ref_node_id(nid)
        if ref is not None:
            rid, qualified = ref
            for repo in self.state.repositories.values():
                if repo.id == rid and self._visible(info, repo):
                    if self.state.git(repo).ref_sha(qualified) is None:
                        break
                    if kind in (None, "Ref"):
                        return "Ref", qualified, repo
            raise _not_found_node(nid)
        found = self.state.nodes.get(nid)
        if found is None:
            raise _not_found_node(nid)
        node_kind, _, owner_repo = found
        if owner_repo is not None and not self._visible(info, owner_repo):
            raise _not_found_node(nid)
        if kind is not None and node_kind != kind:
            raise _not_found_node(nid)
        return found

    # -- roots -------------------------------------------------------------------------------

    def _query_root(self) -> dict[str, Any]:
        return {
            "repository": self._q_repository,
            "viewer": lambda info: self.user_obj(self._actor(info).login),
            "user": lambda info, login: (
                self.user_obj(login) if self.state.users.get(login.lower()) is not None else None
            ),
            "rateLimit": lambda info, dryRun=False: {
                "cost": 1,
                "limit": 5000,
                "remaining": 4999,
                "used": 1,
                "nodeCount": 0,
                "resetAt": iso_utc(self.state.clock() + 3600),
            },
            "id": "Q_kgDOAA",
            "search": self._q_search,
            "organization": self._q_organization,
            "node": lambda info, id: self._node_obj(info, id),
            "nodes": lambda info, ids: [self._node_obj(info, i) for i in ids],
        }

    def _q_search(self, info: Info, query: str, type: str, **a: Any) -> dict[str, Any]:
        """GitHub's issue search, for pull requests only: ``repo:``, ``is:``/``state:``,
        ``author:``, ``head:``, ``base:``, ``label:``, ``draft:`` and ``review-requested:``
        qualifiers (the ones gh builds); free text matches titles. Anything else matches
        nothing rather than everything."""
        if type != "ISSUE":
            return {**connection([], a), "issueCount": 0, "repositoryCount": 0}
        actor = info.context.actor
        terms = query.split()
        pulls: list[tuple[Repository, PullRequest]] = []
        for repo in self.state.repositories.values():
            if not self._visible(info, repo):
                continue
            if repo.private and (actor is None or not actor.has("pull_requests", READ)):
                continue
            pulls += [(repo, pr) for pr in repo.pulls.values()]
        viewer = actor.login if actor else ""

        def matches(repo: Repository, pr: PullRequest, term: str) -> bool:
            key, sep, value = term.partition(":")
            value = value.strip('"')
            if not sep:
                return term.lower() in pr.title.lower()
            if value == "@me":
                value = viewer
            checks: dict[str, Callable[[], bool]] = {
                "repo": lambda: repo.full_name.lower() == value.lower(),
                "is": lambda: (
                    value in ("pr", "pull-request")
                    or (value == "open" and pr.state == "open")
                    or (value == "closed" and pr.state == "closed")
                    or (value == "merged" and pr.merged)
                    or (value == "draft" and pr.draft)
                ),
                "type": lambda: value in ("pr", "pull-request"),
                "state": lambda: pr.state == value,
                "author": lambda: pr.user.lower() == value.lower(),
                "head": lambda: pr.head_ref == value,
                "base": lambda: pr.base_ref == value,
                "label": lambda: value in pr.labels,
                "draft": lambda: pr.draft == (value == "true"),
                "review-requested": lambda: value in pr.requested_reviewers,
                "assignee": lambda: value in pr.assignees,
                "sort": lambda: True,
                "in": lambda: True,
                "archived": lambda: value == "false",
            }
            check = checks.get(key.lstrip("-"))
            if check is None:
                return False
            return check() != key.startswith("-")

        found = [(repo, pr) for repo, pr in pulls if all(matches(repo, pr, t) for t in terms)]
        found.sort(key=lambda rp: rp[1].created_at, reverse=True)
        result = connection([self.pr_obj(repo, pr) for repo, pr in found], a)
        return {**result, "issueCount": len(found), "repositoryCount": 0}

    def _q_organization(self, info: Info, login: str) -> dict[str, Any]:
        """An owner of a repository registered as an ``Organization``; it has no teams."""
        for repo in self.state.repositories.values():
            if repo.owner.lower() == login.lower() and repo.owner_type == "Organization":
                org = self.owner_obj(repo)
                org["teams"] = lambda info, **a: connection([], a)
                return org
        raise GraphQLFault(
            "NOT_FOUND", f"Could not resolve to an Organization with the login of '{login}'."
        )

    def _q_repository(
        self, info: Info, owner: str, name: str, followRenames: bool = True
    ) -> dict[str, Any]:
        repo = self.state.find_repository(owner, name)
        if repo is None or not self._visible(info, repo):
            raise _not_found_repo(owner, name)
        return self.repo_obj(repo)

    def _node_obj(self, info: Info, nid: str) -> dict[str, Any]:
        kind, obj, repo = self._node_target(info, nid)
        if kind == "Repository":
            return self.repo_obj(obj)
        assert repo is not None
        if kind == "PullRequest":
            self._check_read(info, repo, ("pull_requests",))
            return self.pr_obj(repo, obj)
        if kind == "IssueComment":
            self._check_read(info, repo, ("issues", "pull_requests"))
            return self.comment_obj(repo, obj)
        if kind == "Ref":
            return self.ref_obj(repo, obj)
        if kind == "BranchProtectionRule":
            self._check_read(info, repo, ("administration",))
            return self.protection_obj(repo, obj)
        if kind == "Label":
            return self.label_obj(obj)
        raise _not_found_node(nid)

    # -- object builders ---------------------------------------------------------------------

    def user_obj(self, login: str) -> dict[str, Any]:
        bot = login.endswith("[bot]")
        uid = self.state.user_id(login)
        nid = self.state.user_node_id(login)
        return {
            "__typename": "Bot" if bot else "User",
            "id": nid,
            "databaseId": uid,
            "login": login,
            "name": None if bot else login,
            "url": f"{self.state.web_url}/{login.removesuffix('[bot]')}",
            "avatarUrl": lambda info, size=None: (
                f"https://avatars.githubusercontent.com/u/{uid}?v=4"
            ),
            "resourcePath": f"/{login}",
        }

    def owner_obj(self, repo: Repository) -> dict[str, Any]:
        obj = self.user_obj(repo.owner)
        if repo.owner_type == "Organization":
            obj["__typename"] = "Organization"
        return obj

    def label_obj(self, label: Any) -> dict[str, Any]:
        return {
            "__typename": "Label",
            "id": label.node_id,
            "name": label.name,
            "color": label.color,
            "description": label.description or None,
            "isDefault": label.default,
        }

    def ref_obj(self, repo: Repository, qualified: str) -> dict[str, Any]:
        git = self.state.git(repo)
        sha = git.ref_sha(qualified)
        prefix = "refs/heads/" if qualified.startswith("refs/heads/") else "refs/tags/"
        return {
            "__typename": "Ref",
            "id": _ref_node_id(repo, qualified),
            "name": qualified.removeprefix(prefix),
            "prefix": prefix,
            "target": self.commit_obj(repo, sha) if sha else None,
            "repository": lambda info: self.repo_obj(repo),
            "associatedPullRequests": lambda info, **a: connection(
                [
                    self.pr_obj(repo, p)
                    for p in sorted(repo.pulls.values(), key=lambda p: p.number)
                    if f"refs/heads/{p.head_ref}" == qualified
                    and (not a.get("states") or self._pr_state(p) in a["states"])
                ],
                a,
            ),
            "branchProtectionRule": lambda info: self._rule_for(repo, qualified),
        }

    def _rule_for(self, repo: Repository, qualified: str) -> dict[str, Any] | None:
        rule = self.state.protection_for(repo, qualified.removeprefix("refs/heads/"))
        return None if rule is None else self.protection_obj(repo, rule)

    def commit_obj(
        self, repo: Repository, sha: str, detail: dict[str, str] | None = None
    ) -> dict[str, Any]:
        def info_for() -> dict[str, str]:
            if detail is not None:
                return detail
            commits = self.state.git(repo).commits_between(f"{sha}^@", sha) or [
                {
                    "headline": "",
                    "body": "",
                    "authored": "",
                    "committed": "",
                    "author_name": "",
                    "author_email": "",
                }
            ]
            return commits[-1]

        return {
            "__typename": "Commit",
            "id": f"C_kwDO{sha[:24]}",
            "oid": sha,
            "abbreviatedOid": sha[:7],
            "url": self.state.html_url(repo, "commit", sha),
            "messageHeadline": lambda info: info_for()["headline"],
            "messageBody": lambda info: info_for()["body"],
            "message": lambda info: (
                info_for()["headline"] + ("\n\n" + info_for()["body"] if info_for()["body"] else "")
            ),
            "committedDate": lambda info: info_for()["committed"],
            "authoredDate": lambda info: info_for()["authored"],
            "authors": lambda info, **a: connection(
                [
                    {
                        "name": info_for()["author_name"],
                        "email": info_for()["author_email"],
                        "user": None,
                    }
                ],
                a,
            ),
            "statusCheckRollup": None,
        }

    def repo_obj(self, repo: Repository) -> dict[str, Any]:
        state = self.state
        git = state.git(repo)

        def viewer_permission(info: Info) -> str | None:
            actor = info.context.actor
            if actor is None or not actor.can_see(repo):
                return "READ" if not repo.private else None
            if actor.has("administration", WRITE):
                return "ADMIN"
            if actor.has("contents", WRITE):
                return "WRITE"
            if actor.has_any(("issues", "pull_requests"), WRITE):
                return "TRIAGE"
            return "READ"

        def pull_requests(info: Info, **a: Any) -> dict[str, Any]:
            self._check_read(info, repo, ("pull_requests",))
            pulls = sorted(repo.pulls.values(), key=lambda p: p.number)
            order = a.get("orderBy")
            if order and order.get("field") == "CREATED_AT" and order.get("direction") == "DESC":
                pulls.reverse()
            elif order and order.get("field") == "UPDATED_AT":
                pulls.sort(
                    key=lambda p: (p.updated_at, p.number), reverse=order.get("direction") == "DESC"
                )
            if a.get("states"):
                pulls = [p for p in pulls if self._pr_state(p) in a["states"]]
            if a.get("headRefName") is not None:
                pulls = [p for p in pulls if p.head_ref == a["headRefName"]]
            if a.get("baseRefName") is not None:
                pulls = [p for p in pulls if p.base_ref == a["baseRefName"]]
            if a.get("labels"):
                pulls = [p for p in pulls if set(a["labels"]) & set(p.labels)]
            return connection([self.pr_obj(repo, p) for p in pulls], a)

        def pull_request(info: Info, number: int) -> dict[str, Any]:
            self._check_read(info, repo, ("pull_requests",))
            pr = repo.pulls.get(number)
            if pr is None:
                raise GraphQLFault(
                    "NOT_FOUND",
                    f"Could not resolve to a PullRequest with the number of {number}.",
                )
            return self.pr_obj(repo, pr)

        def ref(info: Info, qualifiedName: str) -> dict[str, Any] | None:
            self._check_read(info, repo, ("contents",))
            qualified = (
                qualifiedName
                if qualifiedName.startswith("refs/")
                else f"refs/heads/{qualifiedName}"
            )
            if git.ref_sha(qualified) is None:
                return None
            return self.ref_obj(repo, qualified)

        def refs(info: Info, refPrefix: str, **a: Any) -> dict[str, Any]:
            self._check_read(info, repo, ("contents",))
            names = (
                [f"refs/heads/{n}" for n, _ in git.branches()] if refPrefix == "refs/heads/" else []
            )
            query = a.get("query")
            if query:
                names = [n for n in names if query in n.removeprefix(refPrefix)]
            return connection([self.ref_obj(repo, n) for n in names], a)

        def default_branch_ref(info: Info) -> dict[str, Any] | None:
            name = git.default_branch()
            if git.branch_sha(name) is None:
                return None
            return self.ref_obj(repo, f"refs/heads/{name}")

        def labels(info: Info, **a: Any) -> dict[str, Any]:
            items = sorted(repo.labels.values(), key=lambda label: label.name.lower())
            if a.get("query"):
                items = [x for x in items if a["query"].lower() in x.name.lower()]
            return connection([self.label_obj(x) for x in items], a)

        def label(info: Info, name: str) -> dict[str, Any] | None:
            found = repo.labels.get(name.lower())
            return self.label_obj(found) if found else None

        def rules(info: Info, **a: Any) -> dict[str, Any]:
            self._check_read(info, repo, ("administration",))
            return connection([self.protection_obj(repo, r) for r in repo.protection_rules], a)

        def assignable(info: Info, **a: Any) -> dict[str, Any]:
            writers = [repo.owner] + [
                login for login, perm in repo.collaborators.items() if perm in _WRITERS
            ]
            query = (a.get("query") or "").lower()
            return connection([self.user_obj(u) for u in writers if query in u.lower()], a)

        def mentionable(info: Info, **a: Any) -> dict[str, Any]:
            people = [repo.owner, *repo.collaborators]
            query = (a.get("query") or "").lower()
            return connection([self.user_obj(u) for u in people if query in u.lower()], a)

        created = iso_utc(repo.created_at)
        return {
            "__typename": "Repository",
            "assignableUsers": assignable,
            "mentionableUsers": mentionable,
            "id": repo.node_id,
            "databaseId": repo.id,
            "name": repo.name,
            "nameWithOwner": repo.full_name,
            "owner": self.owner_obj(repo),
            "description": repo.description,
            "url": state.html_url(repo),
            "sshUrl": f"git@{state.web_url.split('//', 1)[-1]}:{repo.full_name}.git",
            "isPrivate": repo.private,
            "visibility": "PRIVATE" if repo.private else "PUBLIC",
            "isArchived": repo.archived,
            "isFork": False,
            "isEmpty": lambda info: not git.branches(),
            "isDisabled": False,
            "isLocked": False,
            "isMirror": False,
            "isTemplate": False,
            "isInOrganization": repo.owner_type == "Organization",
            "createdAt": created,
            "updatedAt": created,
            "pushedAt": created,
            "parent": None,
            "mergeCommitAllowed": repo.allow_merge_commit,
            "squashMergeAllowed": repo.allow_squash_merge,
            "rebaseMergeAllowed": repo.allow_rebase_merge,
            "deleteBranchOnMerge": repo.delete_branch_on_merge,
            "hasIssuesEnabled": True,
            "hasWikiEnabled": False,
            "hasProjectsEnabled": False,
            "viewerPermission": viewer_permission,
            "viewerCanAdminister": lambda info: viewer_permission(info) == "ADMIN",
            "viewerDefaultMergeMethod": "MERGE",
            "defaultBranchRef": default_branch_ref,
            "pullRequests": pull_requests,
            "pullRequest": pull_request,
            "issueOrPullRequest": lambda info, number: pull_request(info, number),
            "ref": ref,
            "refs": refs,
            "labels": labels,
            "label": label,
            "branchProtectionRules": rules,
        }

    @staticmethod
    def _pr_state(pr: PullRequest) -> str:
        if pr.merged:
            return "MERGED"
        return "OPEN" if pr.state == "open" else "CLOSED"

    def pr_obj(self, repo: Repository, pr: PullRequest) -> dict[str, Any]:
        state = self.state
        git = state.git(repo)

        def shas() -> tuple[str | None, str | None]:
            return state.base_sha(repo, pr), state.head_sha(repo, pr)

        def commits(info: Info, **a: Any) -> dict[str, Any]:
            base, head = shas()
            listed = git.commits_between(base, head) if base and head else []
            return connection(
                [
                    {
                        "__typename": "PullRequestCommit",
                        "id": f"PURC_kwDO{c['sha'][:20]}",
                        "commit": self.commit_obj(repo, c["sha"], c),
                        "url": state.html_url(repo, "pull", pr.number, "commits", c["sha"]),
                    }
                    for c in listed
                ],
                a,
            )

        def files(info: Info, **a: Any) -> dict[str, Any]:
            base, head = shas()
            listed = git.diff_stats(base, head) if base and head else []
            return connection(
                [
                    {"path": p, "additions": ad, "deletions": de, "changeType": "MODIFIED"}
                    for p, ad, de in listed
                ],
                a,
            )

        def diffstat(index: int) -> int:
            base, head = shas()
            listed = git.diff_stats(base, head) if base and head else []
            return sum(int(row[index]) for row in listed)

        def mergeable(info: Info) -> str:
            base, head = shas()
            if pr.state != "open" or not base or not head:
                return "UNKNOWN"
            return "MERGEABLE" if git.merge_tree(base, head) is not None else "CONFLICTING"

        def merge_state(info: Info) -> str:
            if pr.draft:
                return "DRAFT"
            value = mergeable(info)
            return {"MERGEABLE": "CLEAN", "CONFLICTING": "DIRTY"}.get(value, "UNKNOWN")

        def comments(info: Info, **a: Any) -> dict[str, Any]:
            listed = [c for c in repo.comments if c.issue_number == pr.number]
            return connection([self.comment_obj(repo, c) for c in listed], a)

        def review_requests(info: Info, **a: Any) -> dict[str, Any]:
            listed: list[dict[str, Any]] = [
                {"requestedReviewer": self.user_obj(u), "asCodeOwner": False}
                for u in pr.requested_reviewers
            ]
            listed += [
                {
                    "requestedReviewer": {
                        "__typename": "Team",
                        "id": f"T_kwDO{state.user_id('team:' + t)}",
                        "name": t,
                        "slug": t,
                        "organization": self.owner_obj(repo),
                    },
                    "asCodeOwner": False,
                }
                for t in pr.requested_teams
            ]
            return connection(listed, a)

        def labels(info: Info, **a: Any) -> dict[str, Any]:
            return connection([self.label_obj(state.label(repo, n)) for n in pr.labels], a)

        def assignees(info: Info, **a: Any) -> dict[str, Any]:
            return connection([self.user_obj(u) for u in pr.assignees], a)

        def head_ref(info: Info) -> dict[str, Any] | None:
            qualified = f"refs/heads/{pr.head_ref}"
            return self.ref_obj(repo, qualified) if git.ref_sha(qualified) else None

        def base_ref(info: Info) -> dict[str, Any] | None:
            qualified = f"refs/heads/{pr.base_ref}"
            return self.ref_obj(repo, qualified) if git.ref_sha(qualified) else None

        number_url = state.html_url(repo, "pull", pr.number)
        return {
            "__typename": "PullRequest",
            "id": pr.node_id,
            "databaseId": pr.id,
            "number": pr.number,
            "title": pr.title,
            "body": pr.body,
            "bodyText": pr.body,
            "url": number_url,
            "resourcePath": f"/{repo.full_name}/pull/{pr.number}",
            "permalink": number_url,
            "state": self._pr_state(pr),
            "closed": pr.state == "closed",
            "merged": pr.merged,
            "isDraft": pr.draft,
            "locked": False,
            "author": self.user_obj(pr.user),
            "authorAssociation": "OWNER" if pr.user == repo.owner else "CONTRIBUTOR",
            "createdAt": iso_utc(pr.created_at),
            "updatedAt": iso_utc(pr.updated_at),
            "closedAt": iso_utc(pr.closed_at) if pr.closed_at is not None else None,
            "mergedAt": iso_utc(pr.merged_at) if pr.merged_at is not None else None,
            "mergedBy": self.user_obj(pr.merged_by) if pr.merged_by else None,
            "mergeCommit": lambda info: (
                self.commit_obj(repo, pr.merge_commit_sha) if pr.merge_commit_sha else None
            ),
            "potentialMergeCommit": None,
            "maintainerCanModify": pr.maintainer_can_modify,
            "headRefName": pr.head_ref,
            "headRefOid": lambda info: shas()[1] or "0" * 40,
            "baseRefName": pr.base_ref,
            "baseRefOid": lambda info: shas()[0] or "0" * 40,
            "headRef": head_ref,
            "baseRef": base_ref,
            "headRepository": lambda info: self.repo_obj(repo),
            "headRepositoryOwner": lambda info: self.owner_obj(repo),
            "baseRepository": lambda info: self.repo_obj(repo),
            "repository": lambda info: self.repo_obj(repo),
            "isCrossRepository": False,
            "mergeable": mergeable,
            "mergeStateStatus": merge_state,
            "additions": lambda info: diffstat(1),
            "deletions": lambda info: diffstat(2),
            "changedFiles": lambda info: len(git.diff_stats(*shas()) if all(shas()) else []),  # type: ignore[arg-type]
            "commits": commits,
            "files": files,
            "comments": comments,
            "reviewRequests": review_requests,
            "labels": labels,
            "assignees": assignees,
            "milestone": None,
            "reviewDecision": None,
            "isInMergeQueue": False,
            "isMergeQueueEnabled": False,
            "reactionGroups": [],
            "viewerDidAuthor": lambda info: (
                info.context.actor is not None and info.context.actor.login == pr.user
            ),
        }

    def comment_obj(self, repo: Repository, comment: Comment) -> dict[str, Any]:
        return {
            "__typename": "IssueComment",
            "id": comment.node_id,
            "databaseId": comment.id,
            "body": comment.body,
            "bodyText": comment.body,
            "author": self.user_obj(comment.user),
            "authorAssociation": "OWNER" if comment.user == repo.owner else "CONTRIBUTOR",
            "createdAt": iso_utc(comment.created_at),
            "updatedAt": iso_utc(comment.updated_at),
            "includesCreatedEdit": False,
            "isMinimized": False,
            "minimizedReason": None,
            "reactionGroups": [],
            "url": self.state.html_url(repo, "pull", comment.issue_number)
            + f"#issuecomment-{comment.id}",
            "viewerDidAuthor": lambda info: (
                info.context.actor is not None and info.context.actor.login == comment.user
            ),
            "pullRequest": lambda info: self.pr_obj(repo, repo.pulls[comment.issue_number]),
            "repository": lambda info: self.repo_obj(repo),
        }

    def protection_obj(self, repo: Repository, rule: BranchProtectionRule) -> dict[str, Any]:
        obj: dict[str, Any] = {"__typename": "BranchProtectionRule", "id": rule.node_id}
        obj.update(rule.settings)
        obj["pattern"] = rule.pattern
        obj["repository"] = lambda info: self.repo_obj(repo)
        return obj

    # -- mutations ---------------------------------------------------------------------------

    def _mutation_root(self) -> dict[str, Any]:
        return {
            "createPullRequest": self._m_create_pull,
            "updatePullRequest": self._m_update_pull,
            "closePullRequest": lambda info, input: self._m_set_state(info, input, "closed"),
            "reopenPullRequest": lambda info, input: self._m_set_state(info, input, "open"),
            "mergePullRequest": self._m_merge,
            "addComment": self._m_add_comment,
            "requestReviews": self._m_request_reviews,
            "addLabelsToLabelable": self._m_add_labels,
            "removeLabelsFromLabelable": self._m_remove_labels,
            "createRef": self._m_create_ref,
            "deleteRef": self._m_delete_ref,
            "updateRef": self._m_update_ref,
            "createBranchProtectionRule": self._m_create_rule,
            "updateBranchProtectionRule": self._m_update_rule,
            "deleteBranchProtectionRule": self._m_delete_rule,
            "markPullRequestReadyForReview": lambda info, input: self._m_draft(info, input, False),
            "convertPullRequestToDraft": lambda info, input: self._m_draft(info, input, True),
        }

    def _m_draft(self, info: Info, input: dict[str, Any], draft: bool) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["pullRequestId"])
        actor = self._require(info, repo, ("pull_requests",))
        self._guard(lambda: self.state.set_draft(repo, pr, actor, "graphql", draft))
        return self._payload(input, pullRequest=self.pr_obj(repo, pr))

    @staticmethod
    def _payload(input: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {"clientMutationId": input.get("clientMutationId"), **fields}

    def _pull_by_id(self, info: Info, nid: str) -> tuple[Repository, PullRequest]:
        _, pr, repo = self._node_target(info, nid, "PullRequest")
        assert repo is not None
        return repo, pr

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except StateError as err:
            raise _from_state_error(err) from err

    def _m_create_pull(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        _, repo, _ = self._node_target(info, input["repositoryId"], "Repository")
        actor = self._require(info, repo, ("pull_requests",))
        pr = self._guard(
            lambda: self.state.create_pull(
                repo,
                actor,
                "graphql",
                title=input["title"],
                head=input["headRefName"],
                base=input["baseRefName"],
                body=input.get("body") or "",
                draft=bool(input.get("draft")),
                maintainer_can_modify=input.get("maintainerCanModify") is not False,
            )
        )
        return self._payload(input, pullRequest=self.pr_obj(repo, pr))

    def _m_update_pull(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["pullRequestId"])
        actor = self._require(info, repo, ("pull_requests",))
        state = input.get("state")
        self._guard(
            lambda: self.state.update_pull(
                repo,
                pr,
                actor,
                "graphql",
                title=input.get("title"),
                body=input.get("body"),
                base=input.get("baseRefName"),
                state=state.lower() if state else None,
                maintainer_can_modify=input.get("maintainerCanModify"),
            )
        )
        if input.get("labelIds") is not None:
            names = [self._node_target(info, lid, "Label")[1].name for lid in input["labelIds"]]
            self.state.set_labels(repo, pr, actor, "graphql", names)
        if input.get("assigneeIds") is not None:
            pr.assignees = [self._login_of(info, uid) for uid in input["assigneeIds"]]
            self.state.record(
                "assignees.set",
                repo,
                "graphql",
                actor,
                number=pr.number,
                assignees=list(pr.assignees),
            )
        return self._payload(input, pullRequest=self.pr_obj(repo, pr))

    def _login_of(self, info: Info, nid: str) -> str:
        login = self.state.login_for_node(nid)
        if login is None:
            raise _not_found_node(nid)
        return login

    def _m_set_state(self, info: Info, input: dict[str, Any], state: str) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["pullRequestId"])
        actor = self._require(info, repo, ("pull_requests",))
        self._guard(lambda: self.state.update_pull(repo, pr, actor, "graphql", state=state))
        return self._payload(input, pullRequest=self.pr_obj(repo, pr))

    def _m_merge(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["pullRequestId"])
        actor = self._require(info, repo, ("contents",))
        method = (input.get("mergeMethod") or "MERGE").lower()
        self._guard(
            lambda: self.state.merge_pull(
                repo,
                pr,
                actor,
                "graphql",
                method=method,
                title=input.get("commitHeadline"),
                message=input.get("commitBody"),
                sha=input.get("expectedHeadOid"),
            )
        )
        return self._payload(
            input, pullRequest=self.pr_obj(repo, pr), actor=self.user_obj(actor.login)
        )

    def _m_add_comment(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["subjectId"])
        actor = self._require(info, repo, ("issues", "pull_requests"))
        comment = self._guard(
            lambda: self.state.add_comment(repo, pr.number, actor, "graphql", input["body"])
        )
        node = self.comment_obj(repo, comment)
        return self._payload(
            input,
            commentEdge={"cursor": _cursor(len(repo.comments)), "node": node},
            subject=self.pr_obj(repo, pr),
            timelineEdge={"cursor": _cursor(len(repo.comments)), "node": node},
        )

    def _m_request_reviews(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["pullRequestId"])
        actor = self._require(info, repo, ("pull_requests",))
        users = [self._login_of(info, uid) for uid in input.get("userIds") or []]
        if input.get("teamIds"):
            raise GraphQLFault("NOT_FOUND", "Could not resolve to a Team: the double has no teams.")
        if not input.get("union"):
            pr.requested_reviewers = []
        self._guard(lambda: self.state.request_reviews(repo, pr, actor, "graphql", users, []))
        return self._payload(input, pullRequest=self.pr_obj(repo, pr))

    def _m_add_labels(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["labelableId"])
        actor = self._require(info, repo, ("issues", "pull_requests"))
        names = [self._node_target(info, lid, "Label")[1].name for lid in input["labelIds"]]
        self.state.add_labels(repo, pr, actor, "graphql", names)
        return self._payload(input, labelable=self.pr_obj(repo, pr))

    def _m_remove_labels(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        repo, pr = self._pull_by_id(info, input["labelableId"])
        actor = self._require(info, repo, ("issues", "pull_requests"))
        gone = {self._node_target(info, lid, "Label")[1].name for lid in input["labelIds"]}
        self.state.set_labels(repo, pr, actor, "graphql", [n for n in pr.labels if n not in gone])
        return self._payload(input, labelable=self.pr_obj(repo, pr))

    def _m_create_ref(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        _, repo, _ = self._node_target(info, input["repositoryId"], "Repository")
        actor = self._require(info, repo, ("contents",))
        self._guard(
            lambda: self.state.create_ref(repo, actor, "graphql", input["name"], input["oid"])
        )
        return self._payload(input, ref=self.ref_obj(repo, input["name"]))

    def _m_delete_ref(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        _, qualified, repo = self._node_target(info, input["refId"], "Ref")
        assert repo is not None
        actor = self._require(info, repo, ("contents",))
        self._guard(lambda: self.state.delete_ref(repo, actor, "graphql", qualified))
        return self._payload(input)

    def _m_update_ref(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        _, qualified, repo = self._node_target(info, input["refId"], "Ref")
        assert repo is not None
        actor = self._require(info, repo, ("contents",))
        self._guard(
            lambda: self.state.update_ref(
                repo, actor, "graphql", qualified, input["oid"], bool(input.get("force"))
            )
        )
        return self._payload(input, ref=self.ref_obj(repo, qualified))

    def _m_create_rule(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        _, repo, _ = self._node_target(info, input["repositoryId"], "Repository")
        actor = self._require(info, repo, ("administration",))
        settings = {
            k: v
            for k, v in input.items()
            if k not in ("repositoryId", "clientMutationId", "pattern")
        }
        rule = self._guard(
            lambda: self.state.create_protection(repo, actor, "graphql", input["pattern"], settings)
        )
        return self._payload(input, branchProtectionRule=self.protection_obj(repo, rule))

    def _m_update_rule(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        _, rule, repo = self._node_target(
            info, input["branchProtectionRuleId"], "BranchProtectionRule"
        )
        assert repo is not None
        actor = self._require(info, repo, ("administration",))
        settings = {
            k: v
            for k, v in input.items()
            if k not in ("branchProtectionRuleId", "clientMutationId")
        }
        self.state.update_protection(repo, actor, "graphql", rule, settings)
        return self._payload(input, branchProtectionRule=self.protection_obj(repo, rule))

    def _m_delete_rule(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        _, rule, repo = self._node_target(
            info, input["branchProtectionRuleId"], "BranchProtectionRule"
        )
        assert repo is not None
        actor = self._require(info, repo, ("administration",))
        self.state.delete_protection(repo, actor, "graphql", rule)
        return self._payload(input)
