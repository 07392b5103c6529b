"""The GitHub API double's REST routes: pull requests, comments, and the dangerous calls.

:class:`GitHubRest` answers one authenticated request over :class:`GitHubState`, checking
what GitHub checks, in GitHub's order:

1. the token (the caller, :class:`airlock.testing.github_api.GitHubApiDouble`, has turned it
   into an :class:`Actor` or answered 401 "Bad credentials");
2. whether the repository is visible to the token: 404 "Not Found" if it does not exist, was
   deleted, or lies outside the token's repositories (GitHub never says "forbidden" for a
   repository you cannot see);
3. the permission the route needs (GitHub's documented fine-grained permission, e.g.
   ``pull_requests: write`` to open a pull request, ``administration: write`` to delete a
   repository): 403 "Resource not accessible by integration" (App installation tokens) or
   "... by personal access token";
4. the resource (a pull request number): 404;
5. the payload: 422 "Validation Failed" with GitHub's ``errors``.

Paths are github.com's (``/repos/...``); the double strips GHE's ``/api/v3`` prefix before
calling :meth:`GitHubRest.handle`. Everything returned is shaped like GitHub's JSON (only the
fields a client can rely on, with GitHub's names and types).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from airlock.testing.github_state import (
    Actor,
    Comment,
    GitHubState,
    Label,
    PullRequest,
    Repository,
    Secret,
    StateError,
    Workflow,
    iso_utc,
    validation_failed,
)

READ = "read"
WRITE = "write"
MSG_NOT_FOUND = "Not Found"
MSG_REQUIRES_AUTHENTICATION = "Requires authentication"
_PER_PAGE_DEFAULT = 30
_PER_PAGE_MAX = 100
_MERGE_METHODS = ("merge", "squash", "rebase")
_COLLABORATOR_PERMISSIONS = ("pull", "triage", "push", "maintain", "admin")


@dataclass
class RestRequest:
    """One REST request: ``path`` without GHE's ``/api/v3``; ``body`` parsed JSON or None."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    actor: Actor | None
    accept: str = ""


@dataclass
class RestReply:
    """``payload`` is JSON, or ``text`` a non-JSON body (a diff) of ``content_type``."""

    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    content_type: str = "application/json"


Handler = Callable[[RestRequest, re.Match[str]], RestReply]

_SEG = r"[^/]+"
_REPO = rf"^/repos/(?P<owner>{_SEG})/(?P<repo>{_SEG})"


def _route(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.replace("{repo}", _REPO) + "$")


class GitHubRest:
    """GitHub's REST API over a :class:`GitHubState` (see the module docstring)."""

    def __init__(self, state: GitHubState) -> None:
        self.state = state
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "^/user", self._get_user),
            ("GET", "^/users/(?P<login>[^/]+)", self._get_named_user),
            ("GET", "^/rate_limit", self._rate_limit),
            ("GET", "{repo}", self._get_repo),
            ("DELETE", "{repo}", self._delete_repo),
            ("GET", "{repo}/pulls", self._list_pulls),
            ("POST", "{repo}/pulls", self._create_pull),
            ("GET", "{repo}/pulls/(?P<number>[0-9]+)", self._get_pull),
            ("PATCH", "{repo}/pulls/(?P<number>[0-9]+)", self._update_pull),
            ("GET", "{repo}/pulls/(?P<number>[0-9]+)/commits", self._pull_commits),
            ("GET", "{repo}/pulls/(?P<number>[0-9]+)/files", self._pull_files),
            ("GET", "{repo}/pulls/(?P<number>[0-9]+)/merge", self._is_merged),
            ("PUT", "{repo}/pulls/(?P<number>[0-9]+)/merge", self._merge_pull),
            (
                "POST",
                "{repo}/pulls/(?P<number>[0-9]+)/requested_reviewers",
                self._request_reviewers,
            ),
            ("GET", "{repo}/issues/(?P<number>[0-9]+)/comments", self._list_comments),
            ("POST", "{repo}/issues/(?P<number>[0-9]+)/comments", self._create_comment),
            ("GET", "{repo}/issues/(?P<number>[0-9]+)/labels", self._list_labels),
            ("POST", "{repo}/issues/(?P<number>[0-9]+)/labels", self._add_labels),
            ("GET", "{repo}/collaborators", self._list_collaborators),
            ("PUT", "{repo}/collaborators/(?P<login>[^/]+)", self._add_collaborator),
            ("GET", "{repo}/actions/secrets", self._list_secrets),
            ("GET", "{repo}/actions/secrets/public-key", self._secrets_public_key),
            ("PUT", "{repo}/actions/secrets/(?P<name>[^/]+)", self._put_secret),
            ("GET", "{repo}/actions/workflows", self._list_workflows),
            ("GET", "{repo}/actions/workflows/(?P<wid>[^/]+)", self._get_workflow),
            (
                "POST",
                "{repo}/actions/workflows/(?P<wid>[^/]+)/dispatches",
                self._dispatch_workflow,
            ),
            ("GET", "{repo}/branches", self._list_branches),
            ("GET", "{repo}/branches/(?P<branch>.+)", self._get_branch),
            ("GET", "{repo}/contents/(?P<path>.*)", self._get_contents),
            ("GET", "{repo}/readme", self._get_readme),
            ("GET", "{repo}/git/ref/(?P<ref>.+)", self._get_ref),
            ("POST", "{repo}/git/refs", self._create_ref),
            ("DELETE", "{repo}/git/refs/(?P<ref>.+)", self._delete_ref),
        ]
        self._routes = [(method, _route(pattern), handler) for method, pattern, handler in routes]
        self._public_key = base64.b64encode(secrets.token_bytes(32)).decode()
        self._public_key_id = str(secrets.randbelow(10**18))

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, request: RestRequest) -> RestReply:
        """Route ``request``; raises :class:`StateError` for GitHub's refusals."""
        path_matched = False
        for method, pattern, handler in self._routes:
            m = pattern.match(request.path)
            if m is None:
                continue
            path_matched = True
            if method == request.method:
                return handler(request, m)
        if path_matched:
            # GitHub answers an unknown method on a known path with 404 too.
            raise StateError(404, MSG_NOT_FOUND)
        raise StateError(404, MSG_NOT_FOUND)

    # -- the checks ----------------------------------------------------------------------

    def _repo(
        self,
        request: RestRequest,
        m: re.Match[str],
        permissions: tuple[str, ...],
        needed: str,
    ) -> Repository:
        """Visibility (404), then permission (403): what GitHub checks before anything else."""
        repo = self.state.find_repository(unquote(m["owner"]), unquote(m["repo"]))
        actor = request.actor
        if repo is None:
            raise StateError(404, MSG_NOT_FOUND)
        visible = (actor is not None and actor.can_see(repo)) or not repo.private
        if not visible:
            raise StateError(404, MSG_NOT_FOUND)
        if needed == READ and not repo.private:
            return repo
        if actor is None:
            raise StateError(401, MSG_REQUIRES_AUTHENTICATION)
        if not actor.can_see(repo) or not actor.has_any(permissions, needed):
            # GitHub names what would have been enough, for App and fine-grained tokens.
            accepted = "; ".join(f"{p}={needed}" for p in permissions)
            raise StateError(
                403, actor.denied_message, headers={"X-Accepted-GitHub-Permissions": accepted}
            )
        return repo

    def _actor(self, request: RestRequest) -> Actor:
        if request.actor is None:
            raise StateError(401, MSG_REQUIRES_AUTHENTICATION)
        return request.actor

    @staticmethod
    def _pull(repo: Repository, m: re.Match[str]) -> PullRequest:
        pr = repo.pulls.get(int(m["number"]))
        if pr is None:
            raise StateError(404, MSG_NOT_FOUND)
        return pr

    @staticmethod
    def _body(request: RestRequest) -> dict[str, Any]:
        if request.body is None:
            return {}
        if not isinstance(request.body, dict):
            raise StateError(400, "Problems parsing JSON")
        return request.body

    @staticmethod
    def _string(body: dict[str, Any], key: str, resource: str, required: bool) -> str | None:
        value = body.get(key)
        if value is None:
            if required:
                raise validation_failed(resource, key, "missing_field")
            return None
        if not isinstance(value, str):
            raise StateError(
                422,
                f"Invalid request.\n\nFor 'properties/{key}', {json.dumps(value)} is not a string.",
            )
        return value

    @staticmethod
    def _bool(body: dict[str, Any], key: str) -> bool | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise StateError(
                422,
                f"Invalid request.\n\nFor 'properties/{key}', {json.dumps(value)} "
                "is not a boolean.",
            )
        return value

    def _page(self, request: RestRequest, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """``per_page``/``page`` slicing with GitHub's ``Link`` header."""
        try:
            per_page = min(max(int(request.query.get("per_page", _PER_PAGE_DEFAULT)), 1), 100)
            page = max(int(request.query.get("page", 1)), 1)
        except ValueError:
            per_page, page = _PER_PAGE_DEFAULT, 1
        start = (page - 1) * per_page
        chunk = items[start : start + per_page]
        headers: dict[str, str] = {}
        last = max((len(items) + per_page - 1) // per_page, 1)
        if page < last:
            base = f"{self.state.api_url}{request.path}?per_page={per_page}"
            headers["Link"] = (
                f'<{base}&page={page + 1}>; rel="next", <{base}&page={last}>; rel="last"'
            )
        return chunk, headers

    # -- JSON shapes -----------------------------------------------------------------------

    def user_json(self, login: str) -> dict[str, Any]:
        uid = self.state.user_id(login)
        bot = login.endswith("[bot]")
        return {
            "login": login,
            "id": uid,
            "node_id": self.state.user_node_id(login),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
            "gravatar_id": "",
            "url": f"{self.state.api_url}/users/{login}",
            "html_url": f"{self.state.web_url}/{login.removesuffix('[bot]')}",
            "type": "Bot" if bot else "User",
            "site_admin": False,
        }

    def repo_json(self, repo: Repository, actor: Actor | None = None) -> dict[str, Any]:
        git = self.state.git(repo)
        created = iso_utc(repo.created_at)
        out: dict[str, Any] = {
            "id": repo.id,
            "node_id": repo.node_id,
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": self.user_json(repo.owner) | {"type": repo.owner_type},
            "html_url": self.state.html_url(repo),
            "description": repo.description,
            "fork": False,
            "url": self.state.api_repo_url(repo),
            "pulls_url": self.state.api_repo_url(repo, "pulls{/number}"),
            "clone_url": self.state.html_url(repo) + ".git",
            "created_at": created,
            "updated_at": created,
            "pushed_at": created,
            "archived": repo.archived,
            "disabled": False,
            "visibility": "private" if repo.private else "public",
            "default_branch": git.default_branch(),
            "allow_merge_commit": repo.allow_merge_commit,
            "allow_squash_merge": repo.allow_squash_merge,
            "allow_rebase_merge": repo.allow_rebase_merge,
            "delete_branch_on_merge": repo.delete_branch_on_merge,
        }
        if actor is not None and actor.can_see(repo):
            contents = actor.permissions.get("contents")
            admin = actor.has("administration", WRITE)
            out["permissions"] = {
                "admin": admin,
                "maintain": admin,
                "push": contents in ("write", "admin"),
                "triage": actor.has_any(("issues", "pull_requests"), WRITE),
                "pull": True,
            }
        return out

    def label_json(self, repo: Repository, label: Label) -> dict[str, Any]:
        return {
            "id": label.id,
            "node_id": label.node_id,
            "url": self.state.api_repo_url(repo, "labels", label.name),
            "name": label.name,
            "color": label.color,
            "default": label.default,
            "description": label.description or None,
        }

    def _branch_end(
        self, repo: Repository, ref: str, sha: str | None, owner: str
    ) -> dict[str, Any]:
        return {
            "label": f"{owner}:{ref}",
            "ref": ref,
            "sha": sha,
            "user": self.user_json(owner),
            "repo": self.repo_json(repo),
        }

    def pull_json(self, repo: Repository, pr: PullRequest, full: bool = True) -> dict[str, Any]:
        state = self.state
        head_sha = state.head_sha(repo, pr)
        base_sha = state.base_sha(repo, pr)
        url = state.api_repo_url(repo, "pulls", pr.number)
        html = state.html_url(repo, "pull", pr.number)
        out: dict[str, Any] = {
            "url": url,
            "id": pr.id,
            "node_id": pr.node_id,
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": state.api_repo_url(repo, "issues", pr.number),
            "commits_url": f"{url}/commits",
            "review_comments_url": f"{url}/comments",
            "comments_url": state.api_repo_url(repo, "issues", pr.number, "comments"),
            "statuses_url": state.api_repo_url(repo, "statuses", head_sha or ""),
            "number": pr.number,
            "state": pr.state,
            "locked": False,
            "title": pr.title,
            "user": self.user_json(pr.user),
            "body": pr.body or None,
            "labels": [self.label_json(repo, state.label(repo, name)) for name in pr.labels],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": iso_utc(pr.created_at),
            "updated_at": iso_utc(pr.updated_at),
            "closed_at": iso_utc(pr.closed_at) if pr.closed_at is not None else None,
            "merged_at": iso_utc(pr.merged_at) if pr.merged_at is not None else None,
            "merge_commit_sha": pr.merge_commit_sha,
            "assignee": self.user_json(pr.assignees[0]) if pr.assignees else None,
            "assignees": [self.user_json(a) for a in pr.assignees],
            "requested_reviewers": [self.user_json(u) for u in pr.requested_reviewers],
            "requested_teams": [
                {"name": t, "slug": t, "id": state.user_id(f"team:{t}")} for t in pr.requested_teams
            ],
            "head": self._branch_end(repo, pr.head_ref, head_sha, pr.head_owner),
            "base": self._branch_end(repo, pr.base_ref, base_sha, repo.owner),
            "author_association": "OWNER" if pr.user == repo.owner else "CONTRIBUTOR",
            "auto_merge": None,
            "draft": pr.draft,
        }
        if full:
            git = state.git(repo)
            commits = git.commits_between(base_sha, head_sha) if head_sha and base_sha else []
            files = git.diff_stats(base_sha, head_sha) if head_sha and base_sha else []
            mergeable: bool | None = None
            if pr.state == "open" and head_sha and base_sha:
                mergeable = git.merge_tree(base_sha, head_sha) is not None
            out.update(
                {
                    "merged": pr.merged,
                    "mergeable": mergeable,
                    "rebaseable": mergeable,
                    "mergeable_state": "clean" if mergeable else "unknown",
                    "merged_by": self.user_json(pr.merged_by) if pr.merged_by else None,
                    "comments": sum(1 for c in repo.comments if c.issue_number == pr.number),
                    "review_comments": 0,
                    "maintainer_can_modify": pr.maintainer_can_modify,
                    "commits": len(commits),
                    "additions": sum(a for _, a, _ in files),
                    "deletions": sum(d for _, _, d in files),
                    "changed_files": len(files),
                }
            )
        return out

    def comment_json(self, repo: Repository, comment: Comment) -> dict[str, Any]:
        return {
            "id": comment.id,
            "node_id": comment.node_id,
            "url": self.state.api_repo_url(repo, "issues", "comments", comment.id),
            "html_url": self.state.html_url(repo, "pull", comment.issue_number)
            + f"#issuecomment-{comment.id}",
            "issue_url": self.state.api_repo_url(repo, "issues", comment.issue_number),
            "body": comment.body,
            "user": self.user_json(comment.user),
            "created_at": iso_utc(comment.created_at),
            "updated_at": iso_utc(comment.updated_at),
            "author_association": "OWNER" if comment.user == repo.owner else "CONTRIBUTOR",
        }

    def workflow_json(self, repo: Repository, wf: Workflow) -> dict[str, Any]:
        created = iso_utc(repo.created_at)
        return {
            "id": wf.id,
            "node_id": wf.node_id,
            "name": wf.name,
            "path": wf.path,
            "state": wf.state,
            "created_at": created,
            "updated_at": created,
            "url": self.state.api_repo_url(repo, "actions", "workflows", wf.id),
            "html_url": self.state.html_url(repo, "blob", repo.git_dir.name, wf.path),
            "badge_url": self.state.html_url(repo, "workflows", wf.name, "badge.svg"),
        }

    # -- users and limits ------------------------------------------------------------------

    def _get_user(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        actor = self._actor(request)
        if actor.is_bot:
            # An installation token is not a user: GitHub refuses /user for it.
            raise StateError(403, actor.denied_message)
        return RestReply(200, self.user_json(actor.login) | {"name": actor.login})

    def _get_named_user(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        """Users the double knows of (owners, collaborators, authors, token holders)."""
        login = unquote(m["login"])
        if login.lower() not in self.state.users:
            raise StateError(404, MSG_NOT_FOUND)
        return RestReply(200, self.user_json(login))

    def _rate_limit(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        reset = int(self.state.clock()) + 3600
        bucket = {"limit": 5000, "used": 0, "remaining": 5000, "reset": reset}
        return RestReply(
            200,
            {
                "resources": {"core": bucket, "graphql": bucket, "search": bucket},
                "rate": bucket,
            },
        )

    # -- repositories ----------------------------------------------------------------------

    def _get_repo(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("metadata",), READ)
        return RestReply(200, self.repo_json(repo, request.actor))

    def _delete_repo(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("administration",), WRITE)
        self.state.delete_repository(repo, self._actor(request), "rest")
        return RestReply(204)

    def _list_collaborators(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("metadata",), READ)
        people = [repo.owner, *repo.collaborators]
        items, headers = self._page(request, [self.user_json(p) for p in people])
        return RestReply(200, items, headers)

    def _add_collaborator(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("administration",), WRITE)
        body = self._body(request)
        permission = self._string(body, "permission", "Repository", False) or "push"
        if permission not in _COLLABORATOR_PERMISSIONS:
            raise validation_failed("Repository", "permission")
        login = unquote(m["login"])
        invitation = self.state.add_collaborator(
            repo, self._actor(request), "rest", login, permission
        )
        if invitation is None:
            return RestReply(204)
        return RestReply(
            201,
            {
                "id": invitation["id"],
                "repository": self.repo_json(repo),
                "invitee": self.user_json(login),
                "inviter": self.user_json(self._actor(request).login),
                "permissions": "write" if permission == "push" else permission,
                "created_at": iso_utc(invitation["created_at"]),
                "url": self.state.api_repo_url(repo, "invitations", invitation["id"]),
                "html_url": self.state.html_url(repo, "invitations"),
            },
        )

    # -- pull requests ---------------------------------------------------------------------

    def _list_pulls(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), READ)
        q = request.query
        state = q.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise validation_failed("PullRequest", "state")
        pulls = sorted(repo.pulls.values(), key=lambda p: p.number, reverse=True)
        if q.get("direction") == "asc":
            pulls.reverse()
        if state != "all":
            pulls = [p for p in pulls if p.state == state]
        if "head" in q:
            owner, _, branch = q["head"].partition(":")
            pulls = [
                p
                for p in pulls
                if p.head_owner.lower() == owner.lower() and (not branch or p.head_ref == branch)
            ]
        if "base" in q:
            pulls = [p for p in pulls if p.base_ref == q["base"]]
        items, headers = self._page(request, pulls)
        return RestReply(200, [self.pull_json(repo, p, full=False) for p in items], headers)

    def _create_pull(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), WRITE)
        body = self._body(request)
        if "issue" in body:
            # Converting an issue is not modelled; the double has no issues.
            raise validation_failed("PullRequest", "issue")
        head = self._string(body, "head", "PullRequest", True)
        base = self._string(body, "base", "PullRequest", True)
        title = self._string(body, "title", "PullRequest", True)
        assert head is not None and base is not None and title is not None
        pr = self.state.create_pull(
            repo,
            self._actor(request),
            "rest",
            title=title,
            head=head,
            base=base,
            body=self._string(body, "body", "PullRequest", False) or "",
            draft=bool(self._bool(body, "draft")),
            maintainer_can_modify=self._bool(body, "maintainer_can_modify") is not False,
        )
        headers = {"Location": self.state.api_repo_url(repo, "pulls", pr.number)}
        return RestReply(201, self.pull_json(repo, pr), headers)

    def _get_pull(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), READ)
        pr = self._pull(repo, m)
        if "diff" in request.accept or "patch" in request.accept:
            head, base = self.state.head_sha(repo, pr), self.state.base_sha(repo, pr)
            text = self.state.git(repo).diff(base, head) if head and base else ""
            kind = "diff" if "diff" in request.accept else "patch"
            return RestReply(200, text=text, content_type=f"application/vnd.github.{kind}")
        return RestReply(200, self.pull_json(repo, pr))

    def _update_pull(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), WRITE)
        pr = self._pull(repo, m)
        body = self._body(request)
        state = self._string(body, "state", "PullRequest", False)
        if state is not None and state not in ("open", "closed"):
            raise validation_failed("PullRequest", "state")
        self.state.update_pull(
            repo,
            pr,
            self._actor(request),
            "rest",
            title=self._string(body, "title", "PullRequest", False),
            body=self._string(body, "body", "PullRequest", False),
            state=state,
            base=self._string(body, "base", "PullRequest", False),
            maintainer_can_modify=self._bool(body, "maintainer_can_modify"),
        )
        return RestReply(200, self.pull_json(repo, pr))

    def _pull_commits(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), READ)
        pr = self._pull(repo, m)
        head, base = self.state.head_sha(repo, pr), self.state.base_sha(repo, pr)
        commits = self.state.git(repo).commits_between(base, head) if head and base else []
        items, headers = self._page(request, commits)
        return RestReply(
            200,
            [
                {
                    "sha": c["sha"],
                    "node_id": f"C_{c['sha'][:20]}",
                    "commit": {
                        "author": {
                            "name": c["author_name"],
                            "email": c["author_email"],
                            "date": c["authored"],
                        },
                        "message": c["headline"] + (f"\n\n{c['body']}" if c["body"] else ""),
                        "tree": {"sha": c["tree"]},
                    },
                    "url": self.state.api_repo_url(repo, "commits", c["sha"]),
                }
                for c in items
            ],
            headers,
        )

    def _pull_files(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), READ)
        pr = self._pull(repo, m)
        head, base = self.state.head_sha(repo, pr), self.state.base_sha(repo, pr)
        files = self.state.git(repo).diff_stats(base, head) if head and base else []
        items, headers = self._page(request, files)
        return RestReply(
            200,
            [
                {
                    "filename": path,
                    "status": "modified",
                    "additions": added,
                    "deletions": deleted,
                    "changes": added + deleted,
                }
                for path, added, deleted in items
            ],
            headers,
        )

    def _is_merged(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), READ)
        pr = self._pull(repo, m)
        if not pr.merged:
            raise StateError(404, MSG_NOT_FOUND)
        return RestReply(204)

    def _merge_pull(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), WRITE)
        pr = self._pull(repo, m)
        body = self._body(request)
        method = self._string(body, "merge_method", "PullRequest", False) or "merge"
        if method not in _MERGE_METHODS:
            raise validation_failed("PullRequest", "merge_method")
        sha = self.state.merge_pull(
            repo,
            pr,
            self._actor(request),
            "rest",
            method=method,
            title=self._string(body, "commit_title", "PullRequest", False),
            message=self._string(body, "commit_message", "PullRequest", False),
            sha=self._string(body, "sha", "PullRequest", False),
        )
        return RestReply(
            200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}
        )

    def _request_reviewers(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("pull_requests",), WRITE)
        pr = self._pull(repo, m)
        body = self._body(request)
        users = body.get("reviewers", [])
        teams = body.get("team_reviewers", [])
        for value in (users, teams):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise validation_failed("PullRequest", "reviewers")
        self.state.request_reviews(repo, pr, self._actor(request), "rest", users, teams)
        return RestReply(201, self.pull_json(repo, pr, full=False))

    # -- comments and labels ---------------------------------------------------------------

    def _issue(self, repo: Repository, m: re.Match[str]) -> PullRequest:
        # Only pull requests exist here; an issue number without one is not found.
        return self._pull(repo, m)

    def _list_comments(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("issues", "pull_requests"), READ)
        pr = self._issue(repo, m)
        comments = [c for c in repo.comments if c.issue_number == pr.number]
        items, headers = self._page(request, comments)
        return RestReply(200, [self.comment_json(repo, c) for c in items], headers)

    def _create_comment(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("issues", "pull_requests"), WRITE)
        pr = self._issue(repo, m)
        body = self._string(self._body(request), "body", "IssueComment", True)
        assert body is not None
        comment = self.state.add_comment(repo, pr.number, self._actor(request), "rest", body)
        headers = {"Location": self.comment_json(repo, comment)["url"]}
        return RestReply(201, self.comment_json(repo, comment), headers)

    def _list_labels(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("issues", "pull_requests"), READ)
        pr = self._issue(repo, m)
        return RestReply(200, [self.label_json(repo, self.state.label(repo, n)) for n in pr.labels])

    def _add_labels(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("issues", "pull_requests"), WRITE)
        pr = self._issue(repo, m)
        body = request.body
        names = body.get("labels") if isinstance(body, dict) else body
        if isinstance(names, list) and all(isinstance(n, dict) for n in names):
            names = [n.get("name") for n in names]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise validation_failed("Label", "labels")
        self.state.add_labels(repo, pr, self._actor(request), "rest", names)
        return RestReply(200, [self.label_json(repo, self.state.label(repo, n)) for n in pr.labels])

    # -- actions -----------------------------------------------------------------------------

    def _list_secrets(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("secrets",), READ)
        listed = [
            {
                "name": s.name,
                "created_at": iso_utc(s.created_at),
                "updated_at": iso_utc(s.updated_at),
            }
            for s in sorted(repo.secrets.values(), key=lambda s: s.name)
        ]
        items, headers = self._page(request, listed)
        return RestReply(200, {"total_count": len(listed), "secrets": items}, headers)

    def _secrets_public_key(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        self._repo(request, m, ("secrets",), READ)
        return RestReply(200, {"key_id": self._public_key_id, "key": self._public_key})

    def _put_secret(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("secrets",), WRITE)
        body = self._body(request)
        name = unquote(m["name"]).upper()
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) or name.startswith("GITHUB_"):
            raise validation_failed("Secret", "name")
        encrypted = self._string(body, "encrypted_value", "Secret", True)
        if self._string(body, "key_id", "Secret", True) != self._public_key_id:
            raise validation_failed("Secret", "key_id")
        now = self.state.clock()
        existed = name in repo.secrets
        created = repo.secrets[name].created_at if existed else now
        repo.secrets[name] = Secret(name, created, now)
        self.state.record(
            "secret.put",
            repo,
            "rest",
            self._actor(request),
            name=name,
            encrypted_value=encrypted,
        )
        return RestReply(204 if existed else 201, None if existed else {})

    def _workflow(self, repo: Repository, wid: str) -> Workflow:
        wid = unquote(wid)
        for wf in self.state.workflows(repo):
            if str(wf.id) == wid or wf.path.rsplit("/", 1)[-1] == wid:
                return wf
        raise StateError(404, MSG_NOT_FOUND)

    def _list_workflows(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("actions",), READ)
        listed = [self.workflow_json(repo, wf) for wf in self.state.workflows(repo)]
        items, headers = self._page(request, listed)
        return RestReply(200, {"total_count": len(listed), "workflows": items}, headers)

    def _get_workflow(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("actions",), READ)
        return RestReply(200, self.workflow_json(repo, self._workflow(repo, m["wid"])))

    def _dispatch_workflow(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("actions",), WRITE)
        wf = self._workflow(repo, m["wid"])
        body = self._body(request)
        ref = self._string(body, "ref", "Workflow", True)
        assert ref is not None
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise validation_failed("Workflow", "inputs")
        git = self.state.git(repo)
        sha = git.resolve(ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else ref)
        if sha is None:
            raise StateError(422, f"No ref found for: {ref}")
        content = git.file(sha, wf.path) or b""
        if not re.search(rb"(^|[\s\[,{])workflow_dispatch\b", content):
            raise StateError(422, "Workflow does not have 'workflow_dispatch' trigger")
        self.state.dispatch(repo, self._actor(request), "rest", wf, ref, inputs)
        return RestReply(204)

    # -- git data ----------------------------------------------------------------------------

    def _branch_json(self, repo: Repository, name: str, sha: str) -> dict[str, Any]:
        return {
            "name": name,
            "commit": {"sha": sha, "url": self.state.api_repo_url(repo, "commits", sha)},
            "protected": False,
        }

    def _list_branches(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), READ)
        listed = [self._branch_json(repo, n, s) for n, s in self.state.git(repo).branches()]
        items, headers = self._page(request, listed)
        return RestReply(200, items, headers)

    def _get_branch(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), READ)
        name = unquote(m["branch"])
        sha = self.state.git(repo).branch_sha(name)
        if sha is None:
            raise StateError(404, "Branch not found")
        return RestReply(200, self._branch_json(repo, name, sha))

    def _get_contents(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), READ)
        return self._contents(repo, unquote(m["path"]).strip("/"), request.query.get("ref"))

    def _get_readme(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), READ)
        git = self.state.git(repo)
        ref = request.query.get("ref") or git.default_branch()
        sha = git.resolve(ref)
        for entry in git.ls_dir(sha, "") if sha else []:
            if entry.lower().split(".", 1)[0] == "readme":
                return self._contents(repo, entry, ref)
        raise StateError(404, MSG_NOT_FOUND)

    def _contents(self, repo: Repository, path: str, ref: str | None) -> RestReply:
        git = self.state.git(repo)
        ref = ref or git.default_branch()
        sha = git.resolve(ref)
        data = git.file(sha, path) if sha else None
        if sha is None or data is None:
            raise StateError(404, MSG_NOT_FOUND)
        return RestReply(
            200,
            {
                "type": "file",
                "encoding": "base64",
                "size": len(data),
                "name": path.rsplit("/", 1)[-1],
                "path": path,
                "content": base64.encodebytes(data).decode(),
                "sha": git.file_sha(sha, path),
                "url": self.state.api_repo_url(repo, "contents", path) + f"?ref={ref}",
            },
        )

    def _ref_json(self, repo: Repository, ref: str, sha: str) -> dict[str, Any]:
        return {
            "ref": ref,
            "node_id": f"REF_{ref}",
            "url": self.state.api_repo_url(repo, "git", ref),
            "object": {"type": "commit", "sha": sha},
        }

    def _get_ref(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), READ)
        ref = "refs/" + unquote(m["ref"])
        sha = self.state.git(repo).ref_sha(ref)
        if sha is None:
            raise StateError(404, MSG_NOT_FOUND)
        return RestReply(200, self._ref_json(repo, ref, sha))

    def _create_ref(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), WRITE)
        body = self._body(request)
        ref = self._string(body, "ref", "Reference", True)
        sha = self._string(body, "sha", "Reference", True)
        assert ref is not None and sha is not None
        self.state.create_ref(repo, self._actor(request), "rest", ref, sha)
        return RestReply(201, self._ref_json(repo, ref, sha))

    def _delete_ref(self, request: RestRequest, m: re.Match[str]) -> RestReply:
        repo = self._repo(request, m, ("contents",), WRITE)
        ref = "refs/" + unquote(m["ref"])
        self.state.delete_ref(repo, self._actor(request), "rest", ref)
        return RestReply(204)
