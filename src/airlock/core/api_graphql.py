"""The decision for one GraphQL request: parse the document (never execute or validate it
against a schema), check every operation in it, and say what goes upstream.

The document is read the way GitHub executes it: fields by NAME (an alias changes nothing),
every fragment spread and inline fragment expanded where it is used, and every field taken as
present (``@skip``/``@include`` hide nothing). Cycles, unknown or unused fragments, duplicate
names and missing variables are refused rather than guessed at.

What a document may do:

- query root: ``repository(owner:, name:)`` naming a granted repository on the host;
  ``viewer`` with only login, id, name, databaseId; ``rateLimit``; ``__typename``; and
  ``node(id:)`` naming a pull request this session created (``gh pr checks``), nothing else.
- mutation root: ``createPullRequest`` (a branch this session may push into an allowed base,
  within the pull-request limit, title prefix and draft rewritten; one per document), and on
  the pull requests this session created ``updatePullRequest``, ``closePullRequest``,
  ``reopenPullRequest``, ``markPullRequestReadyForReview`` (not when drafts are required),
  ``addComment``, ``addPullRequestReview`` (event COMMENT or pending only) and
  ``requestReviews``. A document holding a mutation holds that one operation only.
- below the root, in queries and mutation payloads alike, GitHub's graph leads out of a
  repository. Three lists keep a document inside the granted ones:

  ``LOOKUP_FIELDS`` look objects up by argument (``repository(name:)`` on an owner,
  ``node(id:)``): refused whenever they carry arguments. Without arguments the same names are
  plain edges (``PullRequest.repository``, ``Team.organization``, connection ``nodes``).

  ``DENIED_FIELDS`` are collections or lookups that reach across repositories, users and
  organisations (``repositories``, ``forks``, ``search``, ``starredRepositories``, ...):
  refused wherever they appear.

  ``OUTWARD_FIELDS`` lead to objects that may lie outside the granted repository: actors
  (authors, owners, assignees, reviewers, teams), other repositories (parent, head
  repository of a fork) and other repositories' issues (cross references, linked issues).
  Below them only ``OUTSIDE_FIELDS`` may be selected: identity (login, name, id, url, ...),
  a repository's basic metadata and connection plumbing, so ``author { login }`` works and
  ``author { ... on User { pullRequests { ... } } }`` does not.

  The lists were derived from GitHub's public schema (octokit/graphql-schema), by the type
  each field name returns, and checked against the documents ``gh`` sends. They are names,
  not types: a name that is harmless on one type and leads out on another is treated as
  leading out. They reduce, not replace, what the upstream credential can see: a credential
  scoped to the session's repositories (a GitHub App installation token) is the real bound.

The body sent upstream is always the canonical form of what was checked: the document
printed from its syntax tree and the variables re-serialised, with the rewrites applied; the
canonical body is decided a second time and must come out unchanged (a fixed point), so
what GitHub runs is exactly what was checked.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from graphql import GraphQLError, Visitor, parse, print_ast, visit
from graphql.language import (
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FloatValueNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    NameNode,
    NullValueNode,
    ObjectFieldNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
)
from graphql.language.lexer import Lexer
from graphql.language.source import Source
from graphql.language.token_kind import TokenKind

from airlock.core.api_policy import (
    Allow,
    ApiContext,
    ApiDecision,
    ApiRequest,
    CreatePull,
    MalformedJson,
    NeedRepoIds,
    Refuse,
    check_base,
    check_head,
    check_pull_limit,
    dump_json,
    grant_for,
    load_json,
    malformed,
    needs_write,
    not_own_pull,
    prefixed_title,
    ungranted,
    write_repo_keys,
)
from airlock.core.grants import Access

__all__ = [
    "DENIED_FIELDS",
    "LOOKUP_FIELDS",
    "OUTSIDE_FIELDS",
    "OUTWARD_FIELDS",
    "decide_graphql",
]

MAX_BODY = 256 * 1024
MAX_TOKENS = 20_000
MAX_SYNTAX_DEPTH = 64  # brackets of any kind, checked by the lexer before the recursive parser
MAX_FIELD_DEPTH = 30  # fields nested in one another, after fragment expansion
MAX_FIELD_VISITS = 20_000  # fields checked after fragment expansion (fragment fan-out)
UPSTREAM_TARGET = "/graphql"  # relative to the API root; the relay maps it to graphql_path

QUERY_ROOT_FIELDS = frozenset({"repository", "viewer", "rateLimit", "__typename"})
VIEWER_FIELDS = frozenset({"login", "id", "name", "databaseId", "__typename"})
MUTATION_ROOT_FIELDS = frozenset(
    {
        "createPullRequest",
        "updatePullRequest",
        "closePullRequest",  # gh pr close; the same as updatePullRequest(state: CLOSED)
        "reopenPullRequest",
        "markPullRequestReadyForReview",  # unless limits.require_draft
        "addComment",
        "addPullRequestReview",  # event COMMENT (or pending) only, as REST
        "requestReviews",
        "__typename",
    }
)
REPOSITORY_ARGUMENTS = frozenset({"owner", "name", "followRenames"})

# Refused with arguments: they look an object up by name, number, slug or id, anywhere.
LOOKUP_FIELDS = frozenset(
    {
        "repository",  # RepositoryOwner.repository(name:), User, Organization
        "organization",  # Query/Enterprise.organization(login:)
        "user",
        "enterprise",
        "node",  # Query.node(id:); Edge.node without arguments is plumbing
        "nodes",  # Query.nodes(ids:); Connection.nodes without arguments is plumbing
        "team",  # Organization.team(slug:)
    }
)

# Refused everywhere below the root: collections and lookups across repositories, users,
# organisations and enterprises, never needed to work on one repository.
DENIED_FIELDS = frozenset(
    {
        "repositoryOwner",
        "repositories",
        "repositoriesContributedTo",
        "starredRepositories",
        "topRepositories",
        "watching",
        "forks",
        "organizations",
        "enterprises",
        "search",
        "resource",
        "topic",
        "gist",
        "gists",
        "pinnedItems",
        "pinnableItems",
        "itemShowcase",
        "contributionsCollection",
        "sponsoring",
        "sponsors",
        "sponsorshipsAsMaintainer",
        "sponsorshipsAsSponsor",
        "sponsorables",
        "followers",
        "following",
        "projectsV2",
        "projects",
        "recentProjects",
        "projectV2",
        "repositoryDiscussions",
        "repositoryDiscussionComments",
        "issueComments",  # User.issueComments: comments across every repository
        "commitComments",
        "gistComments",
        "savedReplies",
        "packages",
        "enterpriseOwners",
        "membersWithRole",
        "pendingMembers",
        "outsideCollaborators",
        "securityAdvisory",
        "securityAdvisories",
        "securityVulnerabilities",
        "marketplaceListing",
        "marketplaceListings",
        # in-repository, but administration or security data the REST policy withholds too
        "deployKeys",
        "vulnerabilityAlerts",
        # views onto the caller (the upstream credential's user) and their lists
        "hovercard",
        "lists",
        "__schema",
        "__type",
    }
)

# Edges that may leave the granted repository; below them only OUTSIDE_FIELDS. Derived from
# GitHub's public schema (octokit/graphql-schema, 2026-07): every field name that on some type
# returns (directly, or as a connection's nodes) a User, Organization, Team, Bot, Mannequin,
# Enterprise, Repository, Gist, Project, App, invitation, sponsorship, listing or advisory,
# or an interface or union that may be one (Actor, RepositoryOwner, Assignee, Claimable, ...);
# plus the edges to other repositories' issues and pull requests (cross references, linked,
# tracked and sub-issues, a commit's pull requests, a project card's content). Not "target":
# on every type a sandbox can reach it is a ref's commit or a cross reference's own issue.
OUTWARD_FIELDS = frozenset(
    {
        "actor",
        "admin",
        "admins",
        "advisory",
        "affiliatedUsersWithTwoFactorDisabled",
        "allowPrivateRepositoryForkingSettingOrganizations",
        "ancestors",
        "answerChosenBy",
        "app",
        "assignableUsers",
        "assignee",
        "assignees",
        "associatedPullRequests",
        "author",
        "baseRepository",
        "blockedUser",
        "canonical",
        "childTeams",
        "claimant",
        "closable",
        "closedByPullRequestsReferences",
        "closer",
        "closingIssuesReferences",
        "collaborators",
        "commitRepository",
        "content",
        "creator",
        "defaultRepositoryPermissionSettingOrganizations",
        "deletedBy",
        "deletedCommentAuthor",
        "disabler",
        "dismisser",
        "duplicate",
        "editor",
        "enabledBy",
        "enabler",
        "enqueuer",
        "enterprise",
        "enterpriseAdministratorInvitation",
        "enterpriseAdministratorInvitationByToken",
        "enterpriseOwners",
        "enterprises",
        "failedInvitations",
        "featureable",
        "fiscalHost",
        "followers",
        "following",
        "forks",
        "fromRepository",
        "gist",
        "gists",
        "headRepository",
        "headRepositoryOwner",
        "invitation",
        "invitations",
        "invitee",
        "inviter",
        "inviterActor",
        "item",
        "items",
        "maintainer",
        "mannequins",
        "marketplaceListing",
        "marketplaceListings",
        "matchingPullRequests",
        "members",
        "membersCanChangeRepositoryVisibilitySettingOrganizations",
        "membersCanCreateRepositoriesSettingOrganizations",
        "membersCanDeleteIssuesSettingOrganizations",
        "membersCanDeleteRepositoriesSettingOrganizations",
        "membersCanInviteCollaboratorsSettingOrganizations",
        "membersCanUpdateProtectedBranchesSettingOrganizations",
        "membersCanViewDependencyInsightsSettingOrganizations",
        "membersWithRole",
        "mentionableUsers",
        "mentions",
        "mergedBy",
        "onBehalfOf",
        "organization",
        "organizationInvitation",
        "organizationProjectsSettingOrganizations",
        "organizations",
        "outsideCollaborators",
        "owner",
        "parent",
        "parentTeam",
        "parentTeamWas",
        "participants",
        "pendingAdminInvitations",
        "pendingCollaboratorInvitations",
        "pendingMemberInvitations",
        "pendingMembers",
        "pinnableItems",
        "pinnedBy",
        "pinnedItems",
        "project",
        "projectV2",
        "projects",
        "projectsV2",
        "pusher",
        "reactors",
        "recentProjects",
        "relevantOrganizations",
        "relevantTeams",
        "removedUser",
        "repositories",
        "repositoriesContributedTo",
        "repository",
        "repositoryDeployKeySettingOrganizations",
        "repositoryOwner",
        "repositoryProjectsSettingOrganizations",
        "requestedReviewer",
        "requestedReviewersEdge",
        "requestedTeam",
        "resolvedBy",
        "resource",
        "revertPullRequest",
        "reviewer",
        "reviewers",
        "samlIdentityProviderSettingOrganizations",
        "search",
        "securityAdvisories",
        "securityAdvisory",
        "signer",
        "source",
        "sponsor",
        "sponsorEntity",
        "sponsorable",
        "sponsorables",
        "sponsoring",
        "sponsors",
        "sponsorsListing",
        "sponsorship",
        "sponsorshipForViewerAsSponsor",
        "sponsorshipForViewerAsSponsorable",
        "sponsorships",
        "sponsorshipsAsMaintainer",
        "sponsorshipsAsSponsor",
        "stargazers",
        "starrable",
        "starredRepositories",
        "subIssue",
        "subIssues",
        "subject",
        "subscribable",
        "supportEntitlements",
        "team",
        "teams",
        "templateRepository",
        "topRepositories",
        "trackedInIssues",
        "trackedIssues",
        "twoFactorRequiredSettingOrganizations",
        "uploadedBy",
        "user",
        "users",
        "viewer",
        "watchers",
        "watching",
    }
)

# More that one outward edge shows: a project board's title (gh pr edit lists them).
OUTWARD_EXTRAS: dict[str, frozenset[str]] = {"project": frozenset({"title"})}

# What may be selected below an outward edge: who or what it is, not what it holds.
OUTSIDE_FIELDS = frozenset(
    {
        "__typename",
        "id",
        "databaseId",
        "login",
        "name",
        "slug",
        "combinedSlug",
        "email",
        "nameWithOwner",
        "number",
        "url",
        "resourcePath",
        "avatarUrl",
        "isBot",
        "date",  # a commit author's (GitActor) date
        # a repository's basic metadata (gh reads a fork's parent this way)
        "description",
        "isPrivate",
        "isFork",
        "isArchived",
        "isInOrganization",
        "visibility",
        "hasIssuesEnabled",
        "hasWikiEnabled",
        "viewerPermission",
        "defaultBranchRef",
        "owner",
        "organization",
        "user",  # a commit author's account
        # connection plumbing
        "totalCount",
        "nodes",
        "edges",
        "node",
        "cursor",
        "pageInfo",
        "hasNextPage",
        "hasPreviousPage",
        "startCursor",
        "endCursor",
    }
)

_CREATE_INPUT = frozenset(
    {
        "repositoryId",
        "baseRefName",
        "headRefName",
        "title",
        "body",
        "draft",
        "maintainerCanModify",
        "clientMutationId",
    }
)
_UPDATE_INPUT = frozenset(
    {
        "pullRequestId",
        "title",
        "body",
        "state",
        "baseRefName",
        "maintainerCanModify",
        "clientMutationId",
    }
)
_COMMENT_INPUT = frozenset({"subjectId", "body", "clientMutationId"})
_REVIEW_INPUT = frozenset(
    {"pullRequestId", "body", "event", "commitOID", "comments", "threads", "clientMutationId"}
)
_BARE_PULL_INPUT = frozenset({"pullRequestId", "clientMutationId"})
_OWN_PULL_INPUTS = {
    "requestReviews": frozenset(
        {"pullRequestId", "userIds", "teamIds", "union", "clientMutationId"}
    ),
    "closePullRequest": _BARE_PULL_INPUT,
    "reopenPullRequest": _BARE_PULL_INPUT,
    "markPullRequestReadyForReview": _BARE_PULL_INPUT,
}
_ENVELOPE = frozenset({"query", "variables", "operationName"})
_REPO_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class _Refused(Exception):
    """Unwinds the walk with the first refusal."""

    def __init__(self, refuse: Refuse) -> None:
        super().__init__(refuse.reason)
        self.refuse = refuse


class _Missing:
    """A variable that is neither given nor defaulted."""


_MISSING = _Missing()


@dataclass
class _Rewrite:
    """Fields of one mutation input to set: in a variable, or in an object literal."""

    values: dict[str, Any]
    variable: str | None = None  # the input is $variable
    literal: ObjectValueNode | None = None  # the input is this object literal
    # literal fields whose value is a variable: rewrite the variable, keep the document valid
    literal_variables: dict[str, str] = field(default_factory=dict)


@dataclass
class _Walk:
    ctx: ApiContext
    fragments: dict[str, FragmentDefinitionNode]
    route: str = "graphql"
    visits: int = 0
    used_fragments: set[str] = field(default_factory=set)
    repos: list[str] = field(default_factory=list)
    creates: list[CreatePull] = field(default_factory=list)
    create_count: int = 0
    need_ids: bool = False
    rewrites: list[_Rewrite] = field(default_factory=list)
    # per operation
    variables: dict[str, Any] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()

    def refuse(self, status: int, reason: str, message: str, repo: str | None = None) -> NoReturn:
        raise _Refused(Refuse(status, reason, message, self.route, repo))

    def bad(self, detail: str) -> NoReturn:
        raise _Refused(malformed(detail, self.route))

    # -- selections ---------------------------------------------------------------------------

    def fields(
        self, selection_set: SelectionSetNode | None, stack: tuple[str, ...]
    ) -> Iterator[tuple[FieldNode, tuple[str, ...]]]:
        """The fields of a selection set with every fragment expanded, each with the fragment
        path it came through (for cycle detection across nested fields)."""
        if selection_set is None:
            return
        for selection in selection_set.selections:
            self.visits += 1
            if self.visits > MAX_FIELD_VISITS:
                self.bad(f"more than {MAX_FIELD_VISITS} fields after expanding fragments")
            if isinstance(selection, FieldNode):
                yield selection, stack
            elif isinstance(selection, InlineFragmentNode):
                yield from self.fields(selection.selection_set, stack)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None:
                    self.bad(f"unknown fragment {name}")
                if name in stack:
                    self.bad(f"fragment {name} spreads itself")
                self.used_fragments.add(name)
                yield from self.fields(fragment.selection_set, (*stack, name))
            else:  # pragma: no cover - the parser makes no other selection
                self.bad("unknown selection")

    def nested(
        self,
        parent: FieldNode,
        depth: int,
        outside: frozenset[str] | None,
        stack: tuple[str, ...],
    ) -> None:
        for child, child_stack in self.fields(parent.selection_set, stack):
            self.check_field(child, depth + 1, outside, child_stack)

    def check_field(
        self,
        node: FieldNode,
        depth: int,
        outside: frozenset[str] | None,  # below an outward edge: the names allowed there
        stack: tuple[str, ...],
    ) -> None:
        if depth > MAX_FIELD_DEPTH:
            self.bad(f"fields nested more than {MAX_FIELD_DEPTH} deep")
        name = node.name.value  # the field's name: an alias changes nothing
        if name in DENIED_FIELDS or (name in LOOKUP_FIELDS and node.arguments):
            self.refuse(
                403,
                f"field_not_allowed:{name}",
                f"airlock: the field {name} reaches beyond the granted repositories; query "
                "within repository(owner:, name:) of a granted repository",
            )
        if outside is not None and name not in outside:
            self.refuse(
                403,
                f"outside_field_not_allowed:{name}",
                f"airlock: {name} is not readable on users, teams, other repositories and "
                "their issues; select only who they are (login, name, id, url, ...)",
            )
        if name in OUTWARD_FIELDS:
            # a new outward edge: its own allowance (not the enclosing edge's extras)
            outside = OUTSIDE_FIELDS | OUTWARD_EXTRAS.get(name, frozenset())
        self.nested(node, depth, outside, stack)

    # -- values ----------------------------------------------------------------------------

    def value(self, node: ValueNode) -> Any:
        """An argument's value with variables substituted (untyped, like
        graphql.utilities.value_from_ast_untyped), refusing what upstream would read
        differently: missing or undeclared variables, duplicate object fields."""
        if isinstance(node, VariableNode):
            name = node.name.value
            if name not in self.declared:
                self.bad(f"variable ${name} is not declared by its operation")
            value = self.variables.get(name, _MISSING)
            if value is _MISSING:
                self.bad(f"variable ${name} is missing")
            return value
        if isinstance(node, ObjectValueNode):
            out: dict[str, Any] = {}
            for f in node.fields:
                if f.name.value in out:
                    self.bad(f"field {f.name.value} twice in one input object")
                out[f.name.value] = self.value(f.value)
            return out
        if isinstance(node, ListValueNode):
            return [self.value(v) for v in node.values]
        if isinstance(node, StringValueNode | EnumValueNode):
            return node.value
        if isinstance(node, BooleanValueNode):
            return node.value
        if isinstance(node, NullValueNode):
            return None
        if isinstance(node, IntValueNode | FloatValueNode):
            if len(node.value) > 40:
                self.bad("a number literal too long")
            return int(node.value) if isinstance(node, IntValueNode) else float(node.value)
        self.bad("unknown value")

    def arguments(
        self, node: FieldNode, allowed: frozenset[str]
    ) -> dict[str, tuple[Any, ValueNode]]:
        out: dict[str, tuple[Any, ValueNode]] = {}
        for arg in node.arguments or ():
            arg_name = arg.name.value
            if arg_name in out:
                self.bad(f"argument {arg_name} twice on {node.name.value}")
            if arg_name not in allowed:
                self.bad(f"{node.name.value} takes no argument {arg_name} here")
            out[arg_name] = (self.value(arg.value), arg.value)
        return out

    # -- roots -------------------------------------------------------------------------------

    def query_root(self, node: FieldNode, stack: tuple[str, ...]) -> None:
        name = node.name.value
        if name == "__typename":
            return
        if name == "viewer":
            if node.arguments:
                self.bad("viewer takes no arguments")
            for child, _ in self.fields(node.selection_set, stack):
                if child.name.value not in VIEWER_FIELDS or child.selection_set is not None:
                    self.refuse(
                        403,
                        f"viewer_field_not_allowed:{child.name.value}",
                        f"airlock: viewer may be asked only for {', '.join(sorted(VIEWER_FIELDS))}",
                    )
            return
        if name == "rateLimit":
            self.arguments(node, frozenset({"dryRun"}))
            self.nested(node, 1, None, stack)
            return
        if name == "node":
            # gh pr checks reads the session's own pull request by its node id; no other
            args = self.arguments(node, frozenset({"id"}))
            node_id = args.get("id", (None, None))[0]
            own = next((p for p in self.ctx.pulls if p.node_id == node_id), None)
            if own is None or grant_for(self.ctx, own.repo) is None:
                self.refuse(
                    403,
                    "root_field_not_allowed:node",
                    "airlock: node(id:) may name only the pull requests this session created; "
                    "query repository(owner:, name:) of a granted repository instead",
                )
            self.nested(node, 1, None, stack)
            self.note_repo(own.repo)
            return
        if name == "repository":
            args = self.arguments(node, REPOSITORY_ARGUMENTS)
            owner = args.get("owner", (None, None))[0]
            repo = args.get("name", (None, None))[0]
            if not isinstance(owner, str) or not isinstance(repo, str):
                self.bad("repository needs owner and name (strings)")
            key = self.granted_key(owner, repo)
            self.nested(node, 1, None, stack)
            self.note_repo(key)
            return
        self.refuse(
            403,
            f"root_field_not_allowed:{name}",
            f"airlock: the query field {name} is not allowed; a query may ask for "
            "repository(owner:, name:) of a granted repository, viewer { login }, rateLimit, "
            "and node(id:) of a pull request this session created",
        )

    def granted_key(self, owner: str, repo: str) -> str:
        host = self.ctx.host
        if not _REPO_NAME.fullmatch(owner) or not _REPO_NAME.fullmatch(repo):
            raise _Refused(ungranted(host, owner[:100], repo[:100], self.route))
        key = f"{host}/{owner.lower()}/{repo.lower()}"
        if grant_for(self.ctx, key) is None:
            raise _Refused(ungranted(host, owner, repo, self.route))
        return key

    def note_repo(self, key: str) -> None:
        if key not in self.repos:
            self.repos.append(key)

    def mutation_root(self, node: FieldNode, stack: tuple[str, ...]) -> None:
        name = node.name.value
        if name == "__typename":
            return
        if name not in MUTATION_ROOT_FIELDS:
            self.refuse(
                403,
                f"mutation_not_allowed:{name}",
                f"airlock: the mutation {name} is not allowed; a session may createPullRequest "
                "from a branch it may push, and update, close, reopen, comment on, review "
                "(comments only) and request review of the pull requests it created",
            )
        args = self.arguments(node, frozenset({"input"}))
        if "input" not in args or not isinstance(args["input"][0], dict):
            self.bad(f"{name} needs an input object")
        value, value_node = args["input"]
        if name == "createPullRequest":
            self.create_pull(value, value_node)
        elif name == "updatePullRequest":
            self.update_pull(value, value_node)
        elif name == "addComment":
            self.own_pull_input(value, _COMMENT_INPUT, "subjectId", name)
        elif name == "addPullRequestReview":
            self.own_pull_input(value, _REVIEW_INPUT, "pullRequestId", name)
            if value.get("event", "COMMENT") != "COMMENT":
                self.refuse(
                    403,
                    "review_event_not_allowed",
                    "airlock: a session may only comment in reviews (event COMMENT or none), "
                    "never approve or request changes",
                )
        elif name == "markPullRequestReadyForReview" and self.ctx.limits.require_draft:
            self.refuse(
                403,
                "draft_required",
                "airlock: this session's pull requests stay drafts; a person marks them ready",
            )
        else:
            self.own_pull_input(value, _OWN_PULL_INPUTS[name], "pullRequestId", name)
        self.nested(node, 1, None, stack)

    def input_fields(self, value: dict[str, Any], allowed: frozenset[str], name: str) -> None:
        extra = sorted(set(value) - allowed)
        if "headRepositoryId" in extra:
            self.refuse(
                403,
                "cross_repo_head",
                "airlock: pull requests must come from a branch of the repository itself "
                "(no headRepositoryId)",
            )
        if extra:
            self.refuse(
                403,
                f"field_not_allowed:{extra[0]}",
                f"airlock: {name} may not set {', '.join(extra)}; allowed: "
                f"{', '.join(sorted(allowed))}",
            )

    def own_pull_input(
        self, value: dict[str, Any], allowed: frozenset[str], id_field: str, name: str
    ) -> str:
        self.input_fields(value, allowed, name)
        node_id = value.get(id_field)
        if not isinstance(node_id, str):
            self.bad(f"{name} needs {id_field}")
        own = next((p for p in self.ctx.pulls if p.node_id == node_id), None)
        if own is None:
            raise _Refused(not_own_pull(self.ctx, None, f"{id_field} {node_id[:80]}", self.route))
        grant = grant_for(self.ctx, own.repo)
        if grant is None or grant.access is not Access.WRITE:
            raise _Refused(needs_write(own.repo, self.route))
        self.note_repo(own.repo)
        return own.repo

    def update_pull(self, value: dict[str, Any], value_node: ValueNode) -> None:
        key = self.own_pull_input(value, _UPDATE_INPUT, "pullRequestId", "updatePullRequest")
        if "state" in value and value["state"] not in ("OPEN", "CLOSED"):
            self.bad("state must be OPEN or CLOSED")
        if "baseRefName" in value:
            refused = check_base(self.ctx, value["baseRefName"], self.route, key)
            if refused:
                raise _Refused(refused)
        if "title" in value:
            title = value["title"]
            if not isinstance(title, str):
                self.bad("the title must be a string")
            if prefixed_title(self.ctx, title) != title:
                self.rewrite(value_node, {"title": prefixed_title(self.ctx, title)})

    def create_pull(self, value: dict[str, Any], value_node: ValueNode) -> None:
        self.input_fields(value, _CREATE_INPUT, "createPullRequest")
        self.create_count += 1
        title = value.get("title")
        if not isinstance(title, str) or not title:
            self.bad("createPullRequest needs a title (string)")
        refused = check_base(self.ctx, value.get("baseRefName"), self.route, None)
        if refused:
            raise _Refused(refused)
        refused = check_pull_limit(self.ctx, self.create_count, self.route, None)
        if refused:
            raise _Refused(refused)
        repo_id = value.get("repositoryId")
        if not isinstance(repo_id, str):
            self.bad("createPullRequest needs a repositoryId")
        if self.ctx.repo_ids is None:
            if not write_repo_keys(self.ctx):
                self.refuse(
                    403,
                    "write_grant_required",
                    "airlock: creating a pull request needs a write grant; this session has none",
                )
            self.need_ids = True  # decided once the relay has looked the ids up
            return
        key = self.ctx.repo_ids.get(repo_id)
        grant = grant_for(self.ctx, key) if key else None
        if key is None or grant is None:
            self.refuse(
                404,
                "ungranted_repo",
                f"airlock: Not Found: repository {repo_id[:80]} is not granted to this session",
            )
        if grant.access is not Access.WRITE:
            raise _Refused(needs_write(key, self.route))
        branch, refused = check_head(self.ctx, grant, value.get("headRefName"), self.route)
        if refused:
            raise _Refused(refused)
        assert branch is not None
        changes: dict[str, Any] = {}
        if prefixed_title(self.ctx, title) != title:
            changes["title"] = prefixed_title(self.ctx, title)
        if self.ctx.limits.require_draft and value.get("draft") is not True:
            changes["draft"] = True
        if changes:
            self.rewrite(value_node, changes)
        self.note_repo(key)
        self.creates.append(
            CreatePull(
                repo=key,
                owner=grant.owner,
                name=grant.repo,
                head=branch,
                base=value["baseRefName"],
                labels=self.ctx.limits.labels,
            )
        )

    def rewrite(self, value_node: ValueNode, changes: dict[str, Any]) -> None:
        if isinstance(value_node, VariableNode):
            # The whole effective value (given, or the default), so a default is not lost.
            current = self.variables.get(value_node.name.value)
            assert isinstance(current, dict)  # the input was checked to be an object
            full = {**current, **changes}
            self.rewrites.append(_Rewrite(full, variable=value_node.name.value))
        elif isinstance(value_node, ObjectValueNode):
            by_variable = {
                f.name.value: f.value.name.value
                for f in value_node.fields
                if f.name.value in changes and isinstance(f.value, VariableNode)
            }
            self.rewrites.append(
                _Rewrite(changes, literal=value_node, literal_variables=by_variable)
            )
        else:  # pragma: no cover - inputs were checked to be objects
            self.bad("unexpected input")


def _lex_check(query: str) -> str | None:
    """Bound tokens and bracket nesting without recursion, before the recursive parser."""
    lexer = Lexer(Source(query))
    depth = 0
    tokens = 0
    while True:
        token = lexer.advance()
        if token.kind is TokenKind.EOF:
            return None
        tokens += 1
        if tokens > MAX_TOKENS:
            return f"more than {MAX_TOKENS} tokens"
        if token.kind in (TokenKind.BRACE_L, TokenKind.BRACKET_L, TokenKind.PAREN_L):
            depth += 1
            if depth > MAX_SYNTAX_DEPTH:
                return f"nested more than {MAX_SYNTAX_DEPTH} deep"
        elif token.kind in (TokenKind.BRACE_R, TokenKind.BRACKET_R, TokenKind.PAREN_R):
            depth -= 1


def _parse_document(query: str) -> DocumentNode | str:
    try:
        problem = _lex_check(query)
        if problem:
            return problem
        return parse(
            query, no_location=True, max_tokens=MAX_TOKENS, allow_empty_selection_sets=False
        )
    except GraphQLError as exc:
        return f"not a GraphQL document ({exc.message[:200]})"
    except RecursionError:
        return "nested too deeply"


def decide_graphql(request: ApiRequest, ctx: ApiContext) -> ApiDecision:
    if request.method != "POST":
        return Refuse(
            405,
            "graphql_method",
            "airlock: send GraphQL requests as POST with a JSON body",
            "graphql",
        )
    first = _decide_body(request.body, ctx)
    if not isinstance(first, Allow):
        return first
    # The canonical body must decide to itself: what goes upstream is what was checked,
    # and no rewrite (a variable shared by two fields) changed a value another check read.
    assert first.body is not None
    second = _decide_body(first.body, ctx)
    if second != first:
        return Refuse(
            403,
            "rewrite_conflict",
            "airlock: the title prefix or draft rewrite would change other values of this "
            "request; give the pull request's title in its own variable",
            first.route,
            first.repo,
        )
    return first


def _decide_body(body: bytes, ctx: ApiContext) -> ApiDecision:
    if len(body) > MAX_BODY:
        return Refuse(
            413, "body_too_large", f"airlock: GraphQL body over {MAX_BODY} bytes", "graphql"
        )
    try:
        envelope = load_json(body)
    except MalformedJson as exc:
        return malformed(f"the body is not strict JSON ({exc})", "graphql")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("query"), str):
        return malformed('expected a JSON object {"query": "...", "variables": {...}}', "graphql")
    extra = sorted(set(envelope) - _ENVELOPE)
    if extra:
        return malformed(f"unexpected keys {', '.join(extra)[:200]}", "graphql")
    variables = envelope.get("variables")
    if variables is not None and not isinstance(variables, dict):
        return malformed("variables must be an object or null", "graphql")
    operation_name = envelope.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return malformed("operationName must be a string or null", "graphql")
    document = _parse_document(envelope["query"])
    if isinstance(document, str):
        return malformed(document, "graphql")
    try:
        return _decide_document(document, envelope, variables or {}, operation_name, ctx)
    except _Refused as exc:
        return exc.refuse


def _decide_document(
    document: DocumentNode,
    envelope: dict[str, Any],
    variables: dict[str, Any],
    operation_name: str | None,
    ctx: ApiContext,
) -> ApiDecision:
    operations: list[OperationDefinitionNode] = []
    fragments: dict[str, FragmentDefinitionNode] = {}
    walk = _Walk(ctx, fragments)
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            operations.append(definition)
        elif isinstance(definition, FragmentDefinitionNode):
            if definition.name.value in fragments:
                walk.bad(f"fragment {definition.name.value} defined twice")
            fragments[definition.name.value] = definition
        else:
            walk.bad("only operations and fragments belong in a request")
    if not operations:
        walk.bad("no operation")
    names = [op.name.value if op.name else None for op in operations]
    if len(operations) > 1 and None in names:
        walk.bad("an anonymous operation must be the only one")
    if len(set(names)) != len(names):
        walk.bad("two operations with one name")
    if operation_name is not None:
        if operation_name not in names:
            walk.bad(f"no operation named {operation_name[:100]}")
        executed = operations[names.index(operation_name)]
    elif len(operations) == 1:
        executed = operations[0]
    else:
        walk.bad("several operations and no operationName")
    kinds = {op.operation for op in operations}
    if OperationType.SUBSCRIPTION in kinds:
        walk.refuse(403, "subscription_not_allowed", "airlock: subscriptions are not allowed")
    if OperationType.MUTATION in kinds and len(operations) > 1:
        walk.bad("a document with a mutation must hold that one operation only")

    executed_name = executed.name.value if executed.name else None
    if executed.operation is OperationType.MUTATION:
        root_names: list[str] = []
        for f, _ in walk.fields(executed.selection_set, ()):
            if f.name.value not in root_names:
                root_names.append(f.name.value)
        walk.visits = 0
        walk.route = "graphql mutation " + ",".join(root_names)
    else:
        walk.route = f"graphql query {executed_name or 'anonymous'}"

    for op in operations:
        walk.variables, walk.declared = _operation_variables(walk, op, variables)
        for root, stack in walk.fields(op.selection_set, ()):
            if op.operation is OperationType.MUTATION:
                walk.mutation_root(root, stack)
            else:
                walk.query_root(root, stack)
    unused = sorted(set(fragments) - walk.used_fragments)
    if unused:
        walk.bad(f"fragment {unused[0]} is never used")
    if walk.create_count > 1:
        walk.refuse(
            403,
            "one_pull_per_request",
            "airlock: create one pull request per request",
        )
    if walk.need_ids:
        return NeedRepoIds(write_repo_keys(ctx))
    body = _canonical_body(document, envelope, variables, walk.rewrites)
    return Allow(
        route=walk.route,
        upstream_target=UPSTREAM_TARGET,
        repo=walk.repos[0] if len(walk.repos) == 1 else None,
        body=body,
        creates_pull=walk.creates[0] if walk.creates else None,
        operation=executed_name,
    )


def _operation_variables(
    walk: _Walk, op: OperationDefinitionNode, given: dict[str, Any]
) -> tuple[dict[str, Any], frozenset[str]]:
    """The values an operation's variables take: given ones, else their defaults."""
    values: dict[str, Any] = {}
    declared: set[str] = set()
    for definition in op.variable_definitions or ():
        name = definition.variable.name.value
        if name in declared:
            walk.bad(f"variable ${name} declared twice")
        declared.add(name)
        if name in given:
            values[name] = given[name]
        elif definition.default_value is not None:
            walk.declared = frozenset()  # a default is a constant: it names no variable
            values[name] = walk.value(definition.default_value)
    return values, frozenset(declared)


class _ApplyLiteralRewrites(Visitor):
    def __init__(self, by_node: dict[int, dict[str, Any]]) -> None:
        super().__init__()
        self.by_node = by_node

    def enter_object_value(self, node: ObjectValueNode, *_: Any) -> ObjectValueNode | None:
        changes = self.by_node.get(id(node))
        if changes is None:
            return None
        kept = [f for f in node.fields if f.name.value not in changes]
        added = [
            ObjectFieldNode(name=NameNode(value=k), value=_literal(v)) for k, v in changes.items()
        ]
        return ObjectValueNode(fields=tuple(kept + added))


def _literal(value: Any) -> ValueNode:
    if isinstance(value, bool):
        return BooleanValueNode(value=value)
    if isinstance(value, str):
        return StringValueNode(value=value)
    raise TypeError(f"no literal for {type(value).__name__}")  # pragma: no cover


def _canonical_body(
    document: DocumentNode,
    envelope: dict[str, Any],
    variables: dict[str, Any],
    rewrites: list[_Rewrite],
) -> bytes:
    variables_out = copy.deepcopy(variables)
    literal_changes: dict[int, dict[str, Any]] = {}
    for rw in rewrites:
        if rw.variable is not None:
            variables_out[rw.variable] = rw.values
        elif rw.literal is not None:
            inline = {k: v for k, v in rw.values.items() if k not in rw.literal_variables}
            for k, variable in rw.literal_variables.items():
                variables_out[variable] = rw.values[k]
            if inline:
                literal_changes.setdefault(id(rw.literal), {}).update(inline)
    if literal_changes:
        document = visit(document, _ApplyLiteralRewrites(literal_changes))
    out: dict[str, Any] = {"query": print_ast(document)}
    if "variables" in envelope or variables_out:
        out["variables"] = variables_out
    if "operationName" in envelope:
        out["operationName"] = envelope["operationName"]
    return dump_json(out)
