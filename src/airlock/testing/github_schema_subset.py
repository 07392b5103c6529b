"""Cut the GraphQL schema of the GitHub API double out of GitHub's published schema.

:data:`airlock.testing.github_graphql_schema.SDL` is this module's output for GitHub's public
schema (octokit/graphql-schema's ``schema.graphql``) and :data:`KEPT`, the fields the double
serves: those Debian's gh 2.23.0 asks for in its pull-request, repository, secret and
workflow commands (read from its recorded documents, ``tests/data``), and the ones the
double's resolvers answer. To serve another field, add it to :data:`KEPT` and regenerate::

    python -m airlock.testing.github_schema_subset schema.graphql > sdl.graphql

The cut keeps GitHub's names, types, nullability, arguments and defaults; it keeps every
type a kept field or argument refers to (input objects and enums whole), the fields an
interface requires of the objects that implement it, and in unions only the kept members.
Descriptions and directives go (graphql-core refuses GitHub's deprecated implementations of
non-deprecated interface fields, and no query's meaning depends on them). Fields GitHub
defines twice (its schema has a few) are kept once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from graphql import GraphQLSchema, TypeInfo, TypeInfoVisitor, Visitor, build_ast_schema, parse
from graphql import language as ast
from graphql.language import print_ast, visit

_BUILTIN = frozenset({"String", "Int", "Float", "Boolean", "ID"})

# The fields the double serves (what gh 2.23.0 selects, and what the resolvers answer).
KEPT: dict[str, tuple[str, ...]] = {
    "Actor": ("avatarUrl", "login", "resourcePath", "url"),
    "AddCommentPayload": ("clientMutationId", "commentEdge", "subject", "timelineEdge"),
    "AddLabelsToLabelablePayload": ("clientMutationId", "labelable"),
    "Bot": ("avatarUrl", "databaseId", "id", "login", "resourcePath", "url"),
    "BranchProtectionRule": (
        "allowsDeletions",
        "allowsForcePushes",
        "blocksCreations",
        "dismissesStaleReviews",
        "id",
        "isAdminEnforced",
        "lockBranch",
        "pattern",
        "repository",
        "requireLastPushApproval",
        "requiredApprovingReviewCount",
        "requiredStatusCheckContexts",
        "requiresApprovingReviews",
        "requiresCodeOwnerReviews",
        "requiresCommitSignatures",
        "requiresConversationResolution",
        "requiresLinearHistory",
        "requiresStatusChecks",
        "requiresStrictStatusChecks",
        "restrictsPushes",
        "restrictsReviewDismissals",
    ),
    "BranchProtectionRuleConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "BranchProtectionRuleEdge": ("cursor", "node"),
    "CheckRun": (
        "checkSuite",
        "completedAt",
        "conclusion",
        "detailsUrl",
        "isRequired",
        "name",
        "startedAt",
        "status",
    ),
    "CheckSuite": ("workflowRun",),
    "ClosePullRequestPayload": ("clientMutationId", "pullRequest"),
    "Commit": (
        "abbreviatedOid",
        "authoredDate",
        "authors",
        "committedDate",
        "id",
        "message",
        "messageBody",
        "messageHeadline",
        "oid",
        "statusCheckRollup",
        "url",
    ),
    "ConvertPullRequestToDraftPayload": ("clientMutationId", "pullRequest"),
    "CreateBranchProtectionRulePayload": ("branchProtectionRule", "clientMutationId"),
    "CreatePullRequestPayload": ("clientMutationId", "pullRequest"),
    "CreateRefPayload": ("clientMutationId", "ref"),
    "DeleteBranchProtectionRulePayload": ("clientMutationId",),
    "DeleteRefPayload": ("clientMutationId",),
    "GitActor": ("email", "name", "user"),
    "GitActorConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "GitActorEdge": ("cursor", "node"),
    "GitObject": ("abbreviatedOid", "id", "oid"),
    "IssueComment": (
        "author",
        "authorAssociation",
        "body",
        "bodyText",
        "createdAt",
        "databaseId",
        "id",
        "includesCreatedEdit",
        "isMinimized",
        "minimizedReason",
        "pullRequest",
        "reactionGroups",
        "repository",
        "updatedAt",
        "url",
        "viewerDidAuthor",
    ),
    "IssueCommentConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "IssueCommentEdge": ("cursor", "node"),
    "Label": ("color", "description", "id", "isDefault", "name"),
    "LabelConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "LabelEdge": ("cursor", "node"),
    "MarkPullRequestReadyForReviewPayload": ("clientMutationId", "pullRequest"),
    "MergePullRequestPayload": ("actor", "clientMutationId", "pullRequest"),
    "Milestone": ("description", "dueOn", "number", "title"),
    "Mutation": (
        "addComment",
        "addLabelsToLabelable",
        "closePullRequest",
        "convertPullRequestToDraft",
        "createBranchProtectionRule",
        "createPullRequest",
        "createRef",
        "deleteBranchProtectionRule",
        "deleteRef",
        "markPullRequestReadyForReview",
        "mergePullRequest",
        "removeLabelsFromLabelable",
        "reopenPullRequest",
        "requestReviews",
        "updateBranchProtectionRule",
        "updatePullRequest",
        "updateRef",
    ),
    "Node": ("id",),
    "Organization": (
        "avatarUrl",
        "databaseId",
        "id",
        "login",
        "name",
        "resourcePath",
        "teams",
        "url",
    ),
    "PageInfo": ("endCursor", "hasNextPage", "hasPreviousPage", "startCursor"),
    "Project": ("name",),
    "ProjectCard": ("column", "project"),
    "ProjectCardConnection": ("nodes", "totalCount"),
    "ProjectColumn": ("name",),
    "ProjectV2": ("id", "title"),
    "ProjectV2Item": ("id", "project"),
    "ProjectV2ItemConnection": ("nodes", "pageInfo"),
    "PullRequest": (
        "additions",
        "assignees",
        "author",
        "authorAssociation",
        "baseRef",
        "baseRefName",
        "baseRefOid",
        "baseRepository",
        "body",
        "bodyText",
        "changedFiles",
        "closed",
        "closedAt",
        "comments",
        "commits",
        "createdAt",
        "databaseId",
        "deletions",
        "files",
        "headRef",
        "headRefName",
        "headRefOid",
        "headRepository",
        "headRepositoryOwner",
        "id",
        "isCrossRepository",
        "isDraft",
        "isInMergeQueue",
        "isMergeQueueEnabled",
        "labels",
        "latestReviews",
        "locked",
        "maintainerCanModify",
        "mergeCommit",
        "mergeStateStatus",
        "mergeable",
        "merged",
        "mergedAt",
        "mergedBy",
        "milestone",
        "number",
        "permalink",
        "potentialMergeCommit",
        "projectCards",
        "projectItems",
        "reactionGroups",
        "repository",
        "resourcePath",
        "reviewDecision",
        "reviewRequests",
        "reviews",
        "state",
        "title",
        "updatedAt",
        "url",
        "viewerDidAuthor",
    ),
    "PullRequestChangedFile": ("additions", "changeType", "deletions", "path"),
    "PullRequestChangedFileConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "PullRequestChangedFileEdge": ("cursor", "node"),
    "PullRequestCommit": ("commit", "id", "url"),
    "PullRequestCommitConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "PullRequestCommitEdge": ("cursor", "node"),
    "PullRequestConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "PullRequestEdge": ("cursor", "node"),
    "PullRequestReview": (
        "author",
        "authorAssociation",
        "body",
        "commit",
        "id",
        "reactionGroups",
        "state",
        "submittedAt",
    ),
    "PullRequestReviewConnection": ("nodes", "pageInfo", "totalCount"),
    "Query": (
        "node",
        "nodes",
        "organization",
        "rateLimit",
        "repository",
        "search",
        "user",
        "viewer",
    ),
    "RateLimit": ("cost", "limit", "nodeCount", "remaining", "resetAt", "used"),
    "ReactingUserConnection": ("totalCount",),
    "ReactionGroup": ("content", "users"),
    "Ref": (
        "associatedPullRequests",
        "branchProtectionRule",
        "id",
        "name",
        "prefix",
        "repository",
        "target",
    ),
    "RefConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "RefEdge": ("cursor", "node"),
    "RemoveLabelsFromLabelablePayload": ("clientMutationId", "labelable"),
    "ReopenPullRequestPayload": ("clientMutationId", "pullRequest"),
    "Repository": (
        "assignableUsers",
        "branchProtectionRules",
        "createdAt",
        "databaseId",
        "defaultBranchRef",
        "deleteBranchOnMerge",
        "description",
        "hasIssuesEnabled",
        "hasProjectsEnabled",
        "hasWikiEnabled",
        "id",
        "isArchived",
        "isDisabled",
        "isEmpty",
        "isFork",
        "isInOrganization",
        "isLocked",
        "isMirror",
        "isPrivate",
        "isTemplate",
        "issueOrPullRequest",
        "label",
        "labels",
        "mentionableUsers",
        "mergeCommitAllowed",
        "name",
        "nameWithOwner",
        "owner",
        "parent",
        "pullRequest",
        "pullRequests",
        "pushedAt",
        "rebaseMergeAllowed",
        "ref",
        "refs",
        "squashMergeAllowed",
        "sshUrl",
        "updatedAt",
        "url",
        "viewerCanAdminister",
        "viewerDefaultMergeMethod",
        "viewerPermission",
        "visibility",
    ),
    "RepositoryOwner": ("avatarUrl", "id", "login", "resourcePath", "url"),
    "RequestReviewsPayload": ("clientMutationId", "pullRequest"),
    "ReviewRequest": ("asCodeOwner", "requestedReviewer"),
    "ReviewRequestConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "ReviewRequestEdge": ("cursor", "node"),
    "SearchResultItemConnection": ("edges", "issueCount"),
    "SearchResultItemEdge": ("node",),
    "StatusCheckRollup": ("contexts",),
    "StatusCheckRollupContextConnection": ("nodes", "pageInfo"),
    "StatusContext": ("context", "createdAt", "isRequired", "state", "targetUrl"),
    "Team": ("id", "name", "organization", "slug"),
    "TeamConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "TeamEdge": ("cursor", "node"),
    "UpdateBranchProtectionRulePayload": ("branchProtectionRule", "clientMutationId"),
    "UpdatePullRequestPayload": ("clientMutationId", "pullRequest"),
    "UpdateRefPayload": ("clientMutationId", "ref"),
    "User": ("avatarUrl", "databaseId", "id", "login", "name", "resourcePath", "url"),
    "UserConnection": ("edges", "nodes", "pageInfo", "totalCount"),
    "UserEdge": ("cursor", "node"),
    "Workflow": ("name",),
    "WorkflowRun": ("workflow",),
}


def load(sdl: str) -> ast.DocumentNode:
    """GitHub's schema as a document, each field once."""
    document = parse(sdl, no_location=True)
    for definition in document.definitions:
        fields = getattr(definition, "fields", None)
        if fields:
            seen: set[str] = set()
            unique = []
            for f in fields:
                if f.name.value not in seen:
                    seen.add(f.name.value)
                    unique.append(f)
            # graphql-core's AST nodes are frozen; this is a private copy.
            object.__setattr__(definition, "fields", tuple(unique))
    return document


def used_fields(schema: GraphQLSchema, documents: Iterable[str]) -> dict[str, set[str]]:
    """Type name -> the fields ``documents`` select on it (fragment types included)."""
    used: dict[str, set[str]] = {}

    class Collect(Visitor):
        def __init__(self, info: TypeInfo) -> None:
            super().__init__()
            self.info = info

        def enter_field(self, node: ast.FieldNode, *_: object) -> None:
            parent = self.info.get_parent_type()
            if parent is not None and not node.name.value.startswith("__"):
                used.setdefault(parent.name, set()).add(node.name.value)

        def enter_inline_fragment(self, node: ast.InlineFragmentNode, *_: object) -> None:
            if node.type_condition is not None:
                used.setdefault(node.type_condition.name.value, set())

        def enter_fragment_definition(self, node: ast.FragmentDefinitionNode, *_: object) -> None:
            used.setdefault(node.type_condition.name.value, set())

    for text in documents:
        info = TypeInfo(schema)
        visit(parse(text), TypeInfoVisitor(info, Collect(info)))
    return used


def _named(node: ast.TypeNode) -> str:
    while not isinstance(node, ast.NamedTypeNode):
        assert isinstance(node, ast.NonNullTypeNode | ast.ListTypeNode)
        node = node.type
    return node.name.value


def _value(node: ast.InputValueDefinitionNode) -> ast.InputValueDefinitionNode:
    return ast.InputValueDefinitionNode(
        name=node.name, type=node.type, default_value=node.default_value, directives=()
    )


def _closure(
    definitions: Mapping[str, ast.DefinitionNode], keep: Mapping[str, Iterable[str]]
) -> tuple[dict[str, set[str]], set[str]]:
    """The fields to keep per object/interface type, and the other types kept whole."""
    want = {name: set(fields) for name, fields in keep.items()}
    whole: set[str] = set()
    changed = True
    while changed:
        changed = False

        def need(name: str) -> None:
            nonlocal changed
            if name in _BUILTIN:
                return
            node = definitions[name]
            if isinstance(node, ast.ObjectTypeDefinitionNode | ast.InterfaceTypeDefinitionNode):
                if name not in want:
                    want[name] = set()
                    changed = True
            elif name not in whole:
                whole.add(name)
                changed = True

        for name in list(want):
            node = definitions[name]
            assert isinstance(node, ast.ObjectTypeDefinitionNode | ast.InterfaceTypeDefinitionNode)
            fields = {f.name.value: f for f in node.fields or ()}
            for field_name in sorted(want[name]):
                if field_name not in fields:
                    raise ValueError(f"{name}.{field_name} is not in GitHub's schema")
                f = fields[field_name]
                need(_named(f.type))
                for arg in f.arguments or ():
                    need(_named(arg.type))
            implemented = [definitions[i.name.value] for i in node.interfaces or ()]
            for interface in implemented:
                assert isinstance(interface, ast.InterfaceTypeDefinitionNode)
                for field_name in want.get(interface.name.value, ()):
                    if field_name not in want[name]:
                        want[name].add(field_name)
                        changed = True
            if not want[name]:
                want[name].add("id" if "id" in fields else next(iter(fields)))
                changed = True
        for name in list(whole):
            node = definitions[name]
            if isinstance(node, ast.InputObjectTypeDefinitionNode):
                for input_field in node.fields or ():
                    need(_named(input_field.type))
    return want, whole


def subset(document: ast.DocumentNode, keep: Mapping[str, Iterable[str]]) -> str:
    """The SDL of ``document`` cut down to ``keep`` (see the module docstring)."""
    definitions = {
        d.name.value: d for d in document.definitions if isinstance(d, ast.TypeDefinitionNode)
    }
    want, whole = _closure(definitions, keep)
    out: list[ast.DefinitionNode] = []
    for node in document.definitions:
        if not isinstance(node, ast.TypeDefinitionNode):
            continue
        name = node.name.value
        if isinstance(node, ast.ObjectTypeDefinitionNode | ast.InterfaceTypeDefinitionNode):
            if name not in want:
                continue
            fields = tuple(
                ast.FieldDefinitionNode(
                    name=f.name,
                    arguments=tuple(_value(a) for a in f.arguments or ()),
                    type=f.type,
                    directives=(),
                )
                for f in node.fields or ()
                if f.name.value in want[name]
            )
            interfaces = tuple(i for i in node.interfaces or () if i.name.value in want)
            out.append(
                type(node)(name=node.name, fields=fields, interfaces=interfaces, directives=())
            )
        elif name not in whole:
            continue
        elif isinstance(node, ast.UnionTypeDefinitionNode):
            members = tuple(t for t in node.types or () if t.name.value in want)
            out.append(ast.UnionTypeDefinitionNode(name=node.name, types=members, directives=()))
        elif isinstance(node, ast.EnumTypeDefinitionNode):
            enum_values = tuple(
                ast.EnumValueDefinitionNode(name=v.name, directives=()) for v in node.values or ()
            )
            out.append(
                ast.EnumTypeDefinitionNode(name=node.name, values=enum_values, directives=())
            )
        elif isinstance(node, ast.InputObjectTypeDefinitionNode):
            input_values = tuple(_value(f) for f in node.fields or ())
            out.append(
                ast.InputObjectTypeDefinitionNode(
                    name=node.name, fields=input_values, directives=()
                )
            )
        elif isinstance(node, ast.ScalarTypeDefinitionNode):
            out.append(ast.ScalarTypeDefinitionNode(name=node.name, directives=()))
    return print_ast(ast.DocumentNode(definitions=tuple(out)))


def keep_for(document: ast.DocumentNode, documents: Iterable[str]) -> dict[str, set[str]]:
    """:data:`KEPT` plus whatever ``documents`` (client queries) select."""
    schema = build_ast_schema(document, assume_valid_sdl=True)
    keep = used_fields(schema, documents)
    for name, fields in KEPT.items():
        keep.setdefault(name, set()).update(fields)
    return keep


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(
            "usage: python -m airlock.testing.github_schema_subset GITHUB_SCHEMA [DOCUMENTS.json]",
            file=sys.stderr,
        )
        return 2
    document = load(Path(argv[1]).read_text())
    extra: list[str] = []
    for path in argv[2:]:
        extra += json.loads(Path(path).read_text())
    sys.stdout.write(subset(document, keep_for(document, extra)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
