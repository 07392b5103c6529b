"""The shared state behind the GitHub API double: repositories, pull requests and the rest.

Both faces of the double (REST in :mod:`airlock.testing.github_rest`, GraphQL in
:mod:`airlock.testing.github_graphql`) read and change one :class:`GitHubState`, so a pull
request created over GraphQL is listed over REST and the other way round.

Git is the source of truth for everything git knows. Repositories are the bare repositories
``<repos_root>/<owner>/<name>.git`` that :class:`airlock.testing.upstream.GitUpstream` serves,
found on disk when first asked for (so a repository made after the double started is
there); branches, commits and workflow files are read with git at request time (so a branch
pushed with git becomes PR-able at once), and merging a pull request, ``createRef`` and
``deleteRef`` change the bare repository for real. What git does not know (pull requests,
comments, labels, review requests, secrets, collaborators, workflow dispatches, branch
protection rules, deleted repositories) lives here. Branch protection is enforced where the
double can: a rule that needs approving reviews or status checks blocks merging into its
branch (the double models neither reviews nor checks), and a protected branch cannot be
deleted unless the rule allows it; repository admins (static tokens with every permission)
pass a rule that is not enforced for admins, as on GitHub. git pushes are not checked
against rules (the git upstream does not know them).

Every change is appended to :attr:`GitHubState.mutations` as a :class:`Mutation`, so a test
can prove that a dangerous call reached (or never reached) GitHub.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import hashlib
import re
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.testing.repos import git_env

_LEVELS = {"read": 1, "write": 2, "admin": 3}
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_WORKFLOW_DIR = ".github/workflows"
_GIT_TIMEOUT = 30.0
GITHUB_COMMITTER = {"GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com"}
_BOT_ID_BASE = 41_000_000
# Permissions a static (personal access) token holds unless it is told otherwise.
ALL_PERMISSIONS = (
    "actions",
    "administration",
    "contents",
    "issues",
    "metadata",
    "pull_requests",
    "secrets",
    "workflows",
)


def iso_utc(epoch: float) -> str:
    """GitHub's timestamp format: ``2023-02-27T12:34:56Z``."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def level(name: str | None) -> int:
    """0 for no access, else 1 (read), 2 (write) or 3 (admin)."""
    return _LEVELS.get(name or "", 0)


def valid_name(name: str) -> bool:
    """A repository or owner name GitHub would accept (and no path tricks)."""
    return bool(_NAME_RE.match(name)) and name.strip(".") != ""


# -- who is asking --------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """The identity and grants behind one request's token.

    ``kind`` is ``"installation"`` (an App installation token: ``repositories`` and
    ``permissions`` are exactly what was minted) or ``"static"`` (a personal access token:
    ``repositories`` None means every repository).
    """

    login: str
    user_id: int
    kind: str
    repositories: frozenset[str] | None  # "owner/name", lower case; None: all
    permissions: dict[str, str]

    @property
    def is_bot(self) -> bool:
        return self.kind == "installation"

    @property
    def denied_message(self) -> str:
        """GitHub's 403 message when this kind of token lacks a permission."""
        if self.kind == "installation":
            return "Resource not accessible by integration"
        return "Resource not accessible by personal access token"

    def can_see(self, repo: Repository) -> bool:
        """GitHub hides a repository outside the token's selection (404, not 403)."""
        if self.repositories is not None and repo.full_name.lower() not in self.repositories:
            return False
        # Any permission on a repository includes read access to its metadata.
        return any(level(v) > 0 for v in self.permissions.values())

    def has(self, permission: str, needed: str) -> bool:
        return level(self.permissions.get(permission)) >= level(needed)

    def has_any(self, permissions: Iterable[str], needed: str) -> bool:
        return any(self.has(p, needed) for p in permissions)


# -- what git does not know -------------------------------------------------------------


@dataclass
class Label:
    id: int
    node_id: str
    name: str
    color: str = "ededed"
    description: str = ""
    default: bool = False


@dataclass
class Comment:
    """An issue comment (a pull request's conversation comment)."""

    id: int
    node_id: str
    body: str
    user: str
    created_at: float
    updated_at: float
    issue_number: int


@dataclass
class PullRequest:
    id: int
    node_id: str
    number: int
    title: str
    body: str
    user: str
    head_ref: str
    head_owner: str
    base_ref: str
    created_at: float
    updated_at: float
    draft: bool = False
    maintainer_can_modify: bool = False
    state: str = "open"  # "open" / "closed"
    merged: bool = False
    merged_at: float | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None
    closed_at: float | None = None
    # The head's and base's tips when the PR was last closed (a closed PR's head may be gone).
    head_sha_at_close: str | None = None
    base_sha_at_close: str | None = None
    labels: list[str] = field(default_factory=list)
    requested_reviewers: list[str] = field(default_factory=list)
    requested_teams: list[str] = field(default_factory=list)
    assignees: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``owner:branch``, as GitHub labels a head."""
        return f"{self.head_owner}:{self.head_ref}"


@dataclass
class BranchProtectionRule:
    """A branch protection rule: its ``pattern`` and GitHub's settings by GraphQL name."""

    id: int
    node_id: str
    pattern: str
    settings: dict[str, Any] = field(default_factory=dict)


# What a new rule holds unless its creator says otherwise (GitHub's defaults).
DEFAULT_PROTECTION: dict[str, Any] = {
    "allowsDeletions": False,
    "allowsForcePushes": False,
    "blocksCreations": False,
    "dismissesStaleReviews": False,
    "isAdminEnforced": False,
    "lockBranch": False,
    "requireLastPushApproval": False,
    "requiredApprovingReviewCount": 0,
    "requiredStatusCheckContexts": [],
    "requiresApprovingReviews": False,
    "requiresCodeOwnerReviews": False,
    "requiresCommitSignatures": False,
    "requiresConversationResolution": False,
    "requiresLinearHistory": False,
    "requiresStatusChecks": False,
    "requiresStrictStatusChecks": False,
    "restrictsPushes": False,
    "restrictsReviewDismissals": False,
}


@dataclass
class Secret:
    name: str
    created_at: float
    updated_at: float


@dataclass
class Dispatch:
    workflow_id: int
    ref: str
    inputs: dict[str, Any]


@dataclass
class Repository:
    id: int
    node_id: str
    owner: str
    name: str
    git_dir: Path
    owner_id: int
    owner_type: str = "User"  # or "Organization"
    private: bool = True
    description: str | None = None
    archived: bool = False
    deleted: bool = False
    allow_merge_commit: bool = True
    allow_squash_merge: bool = True
    allow_rebase_merge: bool = True
    delete_branch_on_merge: bool = False
    created_at: float = 0.0
    next_number: int = 1
    pulls: dict[int, PullRequest] = field(default_factory=dict)
    comments: list[Comment] = field(default_factory=list)
    labels: dict[str, Label] = field(default_factory=dict)  # lower-case name -> label
    secrets: dict[str, Secret] = field(default_factory=dict)
    collaborators: dict[str, str] = field(default_factory=dict)  # login -> permission
    invitations: list[dict[str, Any]] = field(default_factory=list)
    workflow_ids: dict[str, int] = field(default_factory=dict)  # path -> id
    dispatches: list[Dispatch] = field(default_factory=list)
    protection_rules: list[BranchProtectionRule] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class Workflow:
    id: int
    node_id: str
    name: str
    path: str
    state: str = "active"


@dataclass(frozen=True)
class Mutation:
    """One state change, in the order the double made them.

    ``kind`` names it (``"pull_request.create"``, ``"pull_request.merge"``,
    ``"repository.delete"``, ``"ref.delete"``, ...), ``repo`` is ``owner/name``, ``api`` is
    ``"rest"`` or ``"graphql"``, ``actor`` the token's login; ``detail`` holds what changed.
    """

    kind: str
    repo: str
    api: str
    actor: str
    detail: dict[str, Any]


class StateError(Exception):
    """A request GitHub refuses: ``status`` and GitHub's message (and its REST ``errors``).

    ``graphql_type`` is the ``type`` GitHub's GraphQL API gives the same refusal; ``headers``
    go with the REST answer.
    """

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        graphql_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = dict(headers or {})
        self.graphql_type = graphql_type or {
            401: "UNAUTHORIZED",
            403: "FORBIDDEN",
            404: "NOT_FOUND",
            405: "UNPROCESSABLE",
            409: "UNPROCESSABLE",
            422: "UNPROCESSABLE",
        }.get(status, "INTERNAL")


def validation_failed(resource: str, field_name: str, code: str = "invalid") -> StateError:
    """GitHub's 422 for an invalid field."""
    return StateError(
        422,
        "Validation Failed",
        [{"resource": resource, "code": code, "field": field_name}],
    )


def validation_message(resource: str, message: str) -> StateError:
    """GitHub's 422 with a custom error (e.g. a duplicate pull request)."""
    return StateError(
        422,
        "Validation Failed",
        [{"resource": resource, "code": "custom", "message": message}],
    )


# -- git -------------------------------------------------------------------------------


class Git:
    """Read and change one bare repository with git's CLI (never the machine's config)."""

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir

    def _run(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        with tempfile.TemporaryDirectory(prefix="airlock-gh-double-") as home:
            return subprocess.run(
                ["git", f"--git-dir={self.git_dir}", *args],
                env=git_env(Path(home), **(env or {})),
                input=stdin,
                capture_output=True,
                check=False,
                timeout=_GIT_TIMEOUT,
            )

    def out(self, *args: str) -> str | None:
        proc = self._run(*args)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode("utf-8", "replace").strip()

    def branch_sha(self, branch: str) -> str | None:
        """The commit ``refs/heads/<branch>`` points at, or None if there is no such branch."""
        if not branch or branch.startswith("-"):
            return None
        return self.out("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")

    def ref_sha(self, ref: str) -> str | None:
        if not ref.startswith("refs/"):
            return None
        return self.out("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")

    def commit_exists(self, sha: str) -> bool:
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
            return False
        return self.out("cat-file", "-e", f"{sha}^{{commit}}") is not None

    def branches(self) -> list[tuple[str, str]]:
        text = self.out("for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/heads/")
        pairs = []
        for line in (text or "").splitlines():
            name, _, sha = line.rpartition(" ")
            if name:
                pairs.append((name, sha))
        return pairs

    def default_branch(self) -> str:
        head = self.out("symbolic-ref", "--quiet", "HEAD")
        return (head or "refs/heads/main").removeprefix("refs/heads/")

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self._run("merge-base", "--is-ancestor", ancestor, descendant).returncode == 0

    def commits_between(self, base: str, head: str) -> list[dict[str, str]]:
        """The commits on ``head`` not on ``base``, oldest first."""
        text = self.out(
            "log",
            "--reverse",
            "--format=%H%x00%T%x00%an%x00%ae%x00%aI%x00%cI%x00%s%x00%b%x1e",
            f"{base}..{head}",
        )
        commits = []
        for record in (text or "").split("\x1e"):
            parts = record.strip("\n").split("\x00")
            if len(parts) < 8:
                continue
            commits.append(
                {
                    "sha": parts[0],
                    "tree": parts[1],
                    "author_name": parts[2],
                    "author_email": parts[3],
                    "authored": parts[4],
                    "committed": parts[5],
                    "headline": parts[6],
                    "body": parts[7].strip(),
                }
            )
        return commits

    def diff(self, base: str, head: str) -> str:
        """``git diff base...head`` (what GitHub shows for a pull request)."""
        return (self.out("diff", "--full-index", f"{base}...{head}") or "") + "\n"

    def diff_stats(self, base: str, head: str) -> list[tuple[str, int, int]]:
        """(path, additions, deletions) between the merge base of ``base`` and ``head``."""
        text = self.out("diff", "--numstat", f"{base}...{head}")
        stats = []
        for line in (text or "").splitlines():
            added, _, rest = line.partition("\t")
            deleted, _, path = rest.partition("\t")
            stats.append(
                (
                    path,
                    int(added) if added.isdigit() else 0,
                    int(deleted) if deleted.isdigit() else 0,
                )
            )
        return stats

    def merge_tree(self, base: str, head: str) -> str | None:
        """The tree of merging ``head`` into ``base``, or None on a conflict."""
        proc = self._run("merge-tree", "--write-tree", base, head)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode().split("\n", 1)[0].strip()

    def commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        # GitHub commits merges, squashes and rebased commits as itself: a replayed commit
        # is a new commit even when its parent and tree are the original's, in the same second.
        proc = self._run(*args, stdin=message.encode(), env=GITHUB_COMMITTER)
        if proc.returncode != 0:
            raise RuntimeError(f"git commit-tree failed: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode().strip()

    def update_ref(self, ref: str, new: str, old: str | None = None) -> bool:
        args = ["update-ref", ref, new]
        if old is not None:
            args.append(old)
        return self._run(*args).returncode == 0

    def delete_ref(self, ref: str, old: str | None = None) -> bool:
        args = ["update-ref", "-d", ref]
        if old is not None:
            args.append(old)
        return self._run(*args).returncode == 0

    def file(self, rev: str, path: str) -> bytes | None:
        if rev.startswith("-") or ":" in rev:
            return None
        proc = self._run("cat-file", "blob", f"{rev}:{path}")
        return proc.stdout if proc.returncode == 0 else None

    def file_sha(self, rev: str, path: str) -> str | None:
        if rev.startswith("-") or ":" in rev:
            return None
        return self.out("rev-parse", "--verify", "--quiet", f"{rev}:{path}")

    def ls_dir(self, rev: str, path: str) -> list[str]:
        if rev.startswith("-"):
            return []
        text = self.out("ls-tree", "--name-only", f"{rev}:{path}")
        return (text or "").splitlines()

    def resolve(self, ref: str) -> str | None:
        """A branch name, ``refs/...`` or commit id, as the API's ``ref`` parameters take it."""
        if not ref or ref.startswith("-"):
            return None
        for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
            sha = self.out("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}")
            if sha:
                return sha
        return None


# -- the state -------------------------------------------------------------------------


def node_id(prefix: str, *numbers: int) -> str:
    """A GitHub-style global node id (``R_kgDO...``, ``PR_kwDO...``)."""
    packed = struct.pack(f">{len(numbers)}Q", *numbers)
    tag = "kgDO" if len(numbers) == 1 else "kwDO"
    return f"{prefix}_{tag}" + base64.urlsafe_b64encode(packed).decode().rstrip("=")


class GitHubState:
    """Everything the double knows beyond git (see the module docstring)."""

    def __init__(
        self,
        repos_root: Path | None,
        *,
        clock: Callable[[], float],
        web_url: str = "https://github.com",
        api_url: str = "https://api.github.com",
    ) -> None:
        self.repos_root = repos_root
        self.clock = clock
        self.web_url = web_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.mutations: list[Mutation] = []
        self.repositories: dict[tuple[str, str], Repository] = {}
        self.users: dict[str, int] = {}  # login -> id
        self.nodes: dict[str, tuple[str, Any, Repository | None]] = {}
        self._next_id = 1000

    # -- ids and users -----------------------------------------------------------------

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def user_id(self, login: str) -> int:
        """A stable id per login (bots included)."""
        key = login.lower()
        if key not in self.users:
            self.users[key] = (
                _BOT_ID_BASE + len(self.users) if login.endswith("[bot]") else self.new_id()
            )
        return self.users[key]

    def user_node_id(self, login: str) -> str:
        """``U_...`` (``BOT_...`` for ``name[bot]``), resolvable by ``node(id:)``."""
        uid = self.user_id(login)
        nid = node_id("BOT" if login.endswith("[bot]") else "U", uid)
        if nid not in self.nodes:
            self.register_node(nid, "Bot" if login.endswith("[bot]") else "User", login, None)
        return nid

    def login_for_node(self, nid: str) -> str | None:
        found = self.nodes.get(nid)
        if found is None or found[0] not in ("User", "Bot"):
            return None
        return str(found[1])

    def register_node(self, nid: str, kind: str, obj: Any, repo: Repository | None) -> None:
        self.nodes[nid] = (kind, obj, repo)

    def record(self, kind: str, repo: Repository, api: str, actor: Actor, **detail: Any) -> None:
        self.mutations.append(Mutation(kind, repo.full_name, api, actor.login, dict(detail)))

    # -- repositories ------------------------------------------------------------------

    def _git_dir(self, owner: str, name: str) -> Path | None:
        """``root/owner/name.git`` on disk, matched case-insensitively like GitHub."""
        if self.repos_root is None or not (valid_name(owner) and valid_name(name)):
            return None
        exact = self.repos_root / owner / f"{name}.git"
        if exact.is_dir():
            return exact
        try:
            owners = [p for p in self.repos_root.iterdir() if p.name.lower() == owner.lower()]
            for owner_dir in owners:
                for repo_dir in owner_dir.iterdir():
                    if repo_dir.name.lower() == f"{name}.git".lower() and repo_dir.is_dir():
                        return repo_dir
        except OSError:
            return None
        return None

    def add_repository(
        self,
        owner: str,
        name: str,
        *,
        private: bool | None = None,
        owner_type: str | None = None,
        description: str | None = None,
    ) -> Repository:
        """Register ``owner/name`` (its bare repository must exist) and return it; settings
        given (not None) change an already registered repository."""
        key = (owner.lower(), name.lower())
        repo = self.repositories.get(key)
        if repo is None or repo.deleted:
            git_dir = self._git_dir(owner, name)
            if git_dir is None:
                raise ValueError(f"no bare repository for {owner}/{name} under {self.repos_root}")
            rid = self.new_id()
            repo = Repository(
                id=rid,
                node_id=node_id("R", rid),
                owner=git_dir.parent.name,
                name=git_dir.name.removesuffix(".git"),
                git_dir=git_dir,
                owner_id=self.user_id(git_dir.parent.name),
                created_at=self.clock(),
            )
            self.repositories[key] = repo
            self.register_node(repo.node_id, "Repository", repo, repo)
        if private is not None:
            repo.private = private
        if owner_type is not None:
            repo.owner_type = owner_type
        if description is not None:
            repo.description = description
        return repo

    def find_repository(self, owner: str, name: str) -> Repository | None:
        """The live repository ``owner/name`` (any case), discovering it on disk if need be."""
        repo = self.repositories.get((owner.lower(), name.lower()))
        if repo is not None:
            return None if repo.deleted else repo
        if self._git_dir(owner, name) is None:
            return None
        # The canonical spelling is the one on disk.
        return self.add_repository(owner, name)

    def git(self, repo: Repository) -> Git:
        return Git(repo.git_dir)

    # -- urls ------------------------------------------------------------------------

    def html_url(self, repo: Repository, *rest: str | int) -> str:
        tail = "".join(f"/{part}" for part in rest)
        return f"{self.web_url}/{repo.full_name}{tail}"

    def api_repo_url(self, repo: Repository, *rest: str | int) -> str:
        tail = "".join(f"/{part}" for part in rest)
        return f"{self.api_url}/repos/{repo.full_name}{tail}"

    # -- workflows ------------------------------------------------------------------

    def workflows(self, repo: Repository) -> list[Workflow]:
        """The workflow files on the default branch, as GitHub lists them."""
        git = self.git(repo)
        branch = git.default_branch()
        found = []
        for entry in git.ls_dir(f"refs/heads/{branch}", _WORKFLOW_DIR):
            if not entry.endswith((".yml", ".yaml")):
                continue
            path = f"{_WORKFLOW_DIR}/{entry}"
            if path not in repo.workflow_ids:
                digest = hashlib.sha256(f"{repo.id}:{path}".encode()).digest()
                repo.workflow_ids[path] = 10_000_000 + int.from_bytes(digest[:3], "big")
            wid = repo.workflow_ids[path]
            content = git.file(f"refs/heads/{branch}", path) or b""
            m = re.search(rb"^name:\s*['\"]?(.*?)['\"]?\s*$", content, re.MULTILINE)
            name = m.group(1).decode("utf-8", "replace") if m else path
            found.append(Workflow(wid, node_id("W", repo.id, wid), name, path))
        return found

    # -- pull requests ---------------------------------------------------------------

    def head_sha(self, repo: Repository, pr: PullRequest) -> str | None:
        if pr.state == "closed" and pr.head_sha_at_close:
            return pr.head_sha_at_close
        head_repo = self.find_repository(pr.head_owner, repo.name) or repo
        return self.git(head_repo).branch_sha(pr.head_ref)

    def base_sha(self, repo: Repository, pr: PullRequest) -> str | None:
        if pr.state == "closed" and pr.base_sha_at_close:
            return pr.base_sha_at_close
        return self.git(repo).branch_sha(pr.base_ref)

    def parse_head(self, repo: Repository, head: str) -> tuple[str, str]:
        """``branch`` or ``owner:branch`` -> (owner, branch); only same-repository heads."""
        owner, sep, branch = head.partition(":")
        if not sep:
            return repo.owner, head
        return owner, branch

    def create_pull(
        self,
        repo: Repository,
        actor: Actor,
        api: str,
        *,
        title: str,
        head: str,
        base: str,
        body: str = "",
        draft: bool = False,
        maintainer_can_modify: bool = True,
    ) -> PullRequest:
        """Open a pull request the way GitHub validates one (head and base must exist)."""
        if not title.strip():
            raise validation_failed("PullRequest", "title", "missing_field")
        head_owner, head_ref = self.parse_head(repo, head)
        git = self.git(repo)
        if head_owner.lower() != repo.owner.lower():
            # Forks are not modelled: a head in another owner's repository does not exist.
            raise validation_failed("PullRequest", "head")
        head_sha = git.branch_sha(head_ref)
        if head_sha is None:
            raise validation_failed("PullRequest", "head")
        base_sha = git.branch_sha(base)
        if base_sha is None:
            raise validation_failed("PullRequest", "base")
        for pr in repo.pulls.values():
            if pr.state == "open" and pr.head_ref == head_ref and pr.base_ref == base:
                raise validation_message(
                    "PullRequest", f"A pull request already exists for {repo.owner}:{head_ref}."
                )
        if head_sha == base_sha or git.is_ancestor(head_sha, base_sha):
            raise validation_message("PullRequest", f"No commits between {base} and {head_ref}")
        now = self.clock()
        number = repo.next_number
        repo.next_number += 1
        pid = self.new_id()
        pr = PullRequest(
            id=pid,
            node_id=node_id("PR", repo.id, pid),
            number=number,
            title=title,
            body=body,
            user=actor.login,
            head_ref=head_ref,
            head_owner=repo.owner,
            base_ref=base,
            created_at=now,
            updated_at=now,
            draft=draft,
            maintainer_can_modify=maintainer_can_modify,
        )
        repo.pulls[number] = pr
        self.register_node(pr.node_id, "PullRequest", pr, repo)
        self.record(
            "pull_request.create",
            repo,
            api,
            actor,
            number=number,
            title=title,
            head=head_ref,
            base=base,
            draft=draft,
        )
        return pr

    def update_pull(
        self,
        repo: Repository,
        pr: PullRequest,
        actor: Actor,
        api: str,
        *,
        title: str | None = None,
        body: str | None = None,
        state: str | None = None,
        base: str | None = None,
        maintainer_can_modify: bool | None = None,
    ) -> PullRequest:
        """Edit or close/reopen a pull request (a merged one can no longer change state)."""
        changes: dict[str, Any] = {}
        if title is not None:
            if not title.strip():
                raise validation_failed("PullRequest", "title", "missing_field")
            pr.title = title
            changes["title"] = title
        if body is not None:
            pr.body = body
            changes["body"] = body
        if base is not None and base != pr.base_ref:
            if self.git(repo).branch_sha(base) is None:
                raise validation_failed("PullRequest", "base")
            pr.base_ref = base
            changes["base"] = base
        if maintainer_can_modify is not None:
            pr.maintainer_can_modify = maintainer_can_modify
            changes["maintainer_can_modify"] = maintainer_can_modify
        if state is not None and state != pr.state:
            if pr.merged:
                raise validation_message("PullRequest", "Cannot change the state of a merged PR")
            if state == "closed":
                self._close(repo, pr)
            elif state == "open":
                if self.git(repo).branch_sha(pr.head_ref) is None:
                    raise validation_failed("PullRequest", "state")
                pr.state = "open"
                pr.closed_at = None
                pr.head_sha_at_close = pr.base_sha_at_close = None
            else:
                raise validation_failed("PullRequest", "state")
            changes["state"] = state
        if changes:
            pr.updated_at = self.clock()
            self.record("pull_request.update", repo, api, actor, number=pr.number, **changes)
        return pr

    def set_draft(
        self, repo: Repository, pr: PullRequest, actor: Actor, api: str, draft: bool
    ) -> None:
        """Mark ready for review (``draft`` False) or convert back to a draft."""
        if pr.state != "open":
            raise validation_message("PullRequest", "Pull request is closed")
        pr.draft = draft
        pr.updated_at = self.clock()
        self.record("pull_request.draft", repo, api, actor, number=pr.number, draft=draft)

    def _close(self, repo: Repository, pr: PullRequest) -> None:
        pr.head_sha_at_close = self.head_sha(repo, pr)
        pr.base_sha_at_close = self.base_sha(repo, pr)
        pr.state = "closed"
        pr.closed_at = self.clock()

    def merge_pull(
        self,
        repo: Repository,
        pr: PullRequest,
        actor: Actor,
        api: str,
        *,
        method: str = "merge",
        title: str | None = None,
        message: str | None = None,
        sha: str | None = None,
    ) -> str:
        """Merge for real: a merge (or squash) commit on the base branch. Returns its id."""
        if pr.state != "open" or pr.merged:
            raise StateError(405, "Pull Request is not mergeable")
        if pr.draft:
            raise StateError(405, "Pull Request is still a draft")
        allowed = {
            "merge": repo.allow_merge_commit,
            "squash": repo.allow_squash_merge,
            "rebase": repo.allow_rebase_merge,
        }
        if method not in allowed:
            raise validation_failed("PullRequest", "merge_method")
        if not allowed[method]:
            raise StateError(
                405, f"{method.capitalize()} merges are not allowed on this repository."
            )
        rule = self.protection_for(repo, pr.base_ref)
        if rule is not None and not self._bypasses(actor, rule):
            needed = int(rule.settings.get("requiredApprovingReviewCount") or 0)
            if rule.settings.get("requiresApprovingReviews") and needed > 0:
                # The double models no reviews: a rule that needs approvals blocks the merge.
                plural = "reviews are" if needed > 1 else "review is"
                raise StateError(
                    405,
                    f"At least {needed} approving {plural} required by reviewers with write "
                    "access.",
                )
            contexts = rule.settings.get("requiredStatusCheckContexts") or []
            if rule.settings.get("requiresStatusChecks") and contexts:
                raise StateError(405, f'Required status check "{contexts[0]}" is expected.')
        git = self.git(repo)
        head = git.branch_sha(pr.head_ref)
        base = git.branch_sha(pr.base_ref)
        if head is None or base is None:
            raise StateError(405, "Pull Request is not mergeable")
        if sha is not None and sha != head:
            raise StateError(409, "Head branch was modified. Review and try the merge again.")
        tree = git.merge_tree(base, head)
        if tree is None:
            raise StateError(405, "Pull Request is not mergeable")
        if method == "merge":
            subject = title or f"Merge pull request #{pr.number} from {pr.label.replace(':', '/')}"
            text = f"{subject}\n\n{message if message is not None else pr.title}\n"
            new = git.commit_tree(tree, [base, head], text)
        elif method == "squash":
            subject = title or f"{pr.title} (#{pr.number})"
            text = f"{subject}\n\n{message}\n" if message else f"{subject}\n"
            new = git.commit_tree(tree, [base], text)
        else:
            # Rebase: replay each commit of the head onto the base, keeping messages.
            new = base
            for commit in git.commits_between(base, head):
                step = git.merge_tree(new, commit["sha"])
                if step is None:
                    raise StateError(405, "Pull Request is not mergeable")
                msg = commit["headline"] + (f"\n\n{commit['body']}" if commit["body"] else "")
                new = git.commit_tree(step, [new], msg + "\n")
        if not git.update_ref(f"refs/heads/{pr.base_ref}", new, base):
            raise StateError(409, "Base branch was modified. Review and try the merge again.")
        pr.head_sha_at_close = head
        pr.base_sha_at_close = new
        pr.state = "closed"
        pr.merged = True
        pr.merged_at = pr.closed_at = pr.updated_at = self.clock()
        pr.merged_by = actor.login
        pr.merge_commit_sha = new
        self.record(
            "pull_request.merge",
            repo,
            api,
            actor,
            number=pr.number,
            method=method,
            sha=new,
            base=pr.base_ref,
        )
        return new

    def add_comment(
        self, repo: Repository, number: int, actor: Actor, api: str, body: str
    ) -> Comment:
        if not body.strip():
            raise validation_failed("IssueComment", "body", "missing_field")
        now = self.clock()
        cid = self.new_id()
        comment = Comment(
            id=cid,
            node_id=node_id("IC", repo.id, cid),
            body=body,
            user=actor.login,
            created_at=now,
            updated_at=now,
            issue_number=number,
        )
        repo.comments.append(comment)
        self.register_node(comment.node_id, "IssueComment", comment, repo)
        self.record("comment.create", repo, api, actor, number=number, id=cid, body=body)
        return comment

    def label(self, repo: Repository, name: str) -> Label:
        """The repository's label ``name``, created (as GitHub does for the REST API) if new."""
        key = name.lower()
        if key not in repo.labels:
            lid = self.new_id()
            repo.labels[key] = Label(lid, node_id("LA", repo.id, lid), name)
            self.register_node(repo.labels[key].node_id, "Label", repo.labels[key], repo)
        return repo.labels[key]

    def add_labels(
        self, repo: Repository, pr: PullRequest, actor: Actor, api: str, names: list[str]
    ) -> None:
        for name in names:
            label = self.label(repo, name)
            if label.name not in pr.labels:
                pr.labels.append(label.name)
        pr.updated_at = self.clock()
        self.record("labels.add", repo, api, actor, number=pr.number, labels=list(names))

    def set_labels(
        self, repo: Repository, pr: PullRequest, actor: Actor, api: str, names: list[str]
    ) -> None:
        """Replace the pull request's labels (GraphQL ``updatePullRequest(labelIds:)``)."""
        pr.labels = [self.label(repo, name).name for name in dict.fromkeys(names)]
        pr.updated_at = self.clock()
        self.record("labels.set", repo, api, actor, number=pr.number, labels=list(pr.labels))

    def request_reviews(
        self,
        repo: Repository,
        pr: PullRequest,
        actor: Actor,
        api: str,
        users: list[str],
        teams: list[str],
    ) -> None:
        """Only collaborators (and the owner) can be asked; the double has no teams."""
        members = {repo.owner.lower(), *(c.lower() for c in repo.collaborators)}
        for user in users:
            if user.lower() == pr.user.lower():
                raise validation_message(
                    "PullRequest",
                    "Review cannot be requested from pull request author.",
                )
        if teams or any(user.lower() not in members for user in users):
            raise validation_message(
                "PullRequest",
                "Reviews may only be requested from collaborators. One or more of the users "
                "or teams you specified is not a collaborator of the "
                f"{repo.full_name} repository.",
            )
        for user in users:
            if user not in pr.requested_reviewers:
                pr.requested_reviewers.append(user)
        for team in teams:
            if team not in pr.requested_teams:
                pr.requested_teams.append(team)
        pr.updated_at = self.clock()
        self.record(
            "review_requests.add", repo, api, actor, number=pr.number, users=users, teams=teams
        )

    def delete_repository(self, repo: Repository, actor: Actor, api: str) -> None:
        """Delete on GitHub's side only: the API answers 404 afterwards; git's copy stays."""
        repo.deleted = True
        self.record("repository.delete", repo, api, actor)

    def add_collaborator(
        self, repo: Repository, actor: Actor, api: str, login: str, permission: str
    ) -> dict[str, Any] | None:
        """Invite ``login`` (GitHub's answer: an invitation), or, for someone who already is a
        collaborator, change their permission (no invitation: None)."""
        if login.lower() in (c.lower() for c in repo.collaborators):
            repo.collaborators[login] = permission
            self.record("collaborator.update", repo, api, actor, login=login, permission=permission)
            return None
        invitation = {
            "id": self.new_id(),
            "login": login,
            "permissions": permission,
            "created_at": self.clock(),
        }
        repo.invitations.append(invitation)
        self.record("collaborator.add", repo, api, actor, login=login, permission=permission)
        return invitation

    def dispatch(
        self,
        repo: Repository,
        actor: Actor,
        api: str,
        workflow: Workflow,
        ref: str,
        inputs: dict[str, Any],
    ) -> None:
        repo.dispatches.append(Dispatch(workflow.id, ref, dict(inputs)))
        self.record(
            "workflow.dispatch",
            repo,
            api,
            actor,
            workflow_id=workflow.id,
            path=workflow.path,
            ref=ref,
            inputs=dict(inputs),
        )

    def create_ref(self, repo: Repository, actor: Actor, api: str, ref: str, sha: str) -> None:
        git = self.git(repo)
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise validation_message("Reference", "Reference name must start with 'refs/'")
        if git.ref_sha(ref) is not None:
            raise validation_message("Reference", "Reference already exists")
        if not git.commit_exists(sha) or not git.update_ref(ref, sha, "0" * len(sha)):
            raise validation_message("Reference", "Object does not exist")
        self.record("ref.create", repo, api, actor, ref=ref, sha=sha)

    def delete_ref(self, repo: Repository, actor: Actor, api: str, ref: str) -> None:
        git = self.git(repo)
        if ref.startswith("refs/heads/"):
            rule = self.protection_for(repo, ref.removeprefix("refs/heads/"))
            if rule is not None and not rule.settings.get("allowsDeletions"):
                raise validation_message("Reference", "Cannot delete this protected branch")
        old = git.ref_sha(ref)
        if old is None or not git.delete_ref(ref, old):
            raise validation_message("Reference", "Reference does not exist")
        self.record("ref.delete", repo, api, actor, ref=ref, sha=old)

    def update_ref(
        self, repo: Repository, actor: Actor, api: str, ref: str, sha: str, force: bool
    ) -> None:
        git = self.git(repo)
        old = git.ref_sha(ref)
        if old is None:
            raise validation_message("Reference", "Reference does not exist")
        if not git.commit_exists(sha):
            raise validation_message("Reference", "Object does not exist")
        if not force and not git.is_ancestor(old, sha):
            raise validation_message("Reference", "Update is not a fast forward")
        if not git.update_ref(ref, sha, old):
            raise validation_message("Reference", "Reference cannot be updated")
        self.record("ref.update", repo, api, actor, ref=ref, sha=sha, old=old, force=force)

    # -- branch protection -----------------------------------------------------------

    def create_protection(
        self, repo: Repository, actor: Actor, api: str, pattern: str, settings: dict[str, Any]
    ) -> BranchProtectionRule:
        if not pattern or any(r.pattern == pattern for r in repo.protection_rules):
            raise validation_message("BranchProtectionRule", "Name already protected: " + pattern)
        rid = self.new_id()
        rule = BranchProtectionRule(
            rid, node_id("BPR", repo.id, rid), pattern, DEFAULT_PROTECTION | dict(settings)
        )
        repo.protection_rules.append(rule)
        self.register_node(rule.node_id, "BranchProtectionRule", rule, repo)
        self.record("branch_protection.create", repo, api, actor, pattern=pattern, **settings)
        return rule

    def protection_for(self, repo: Repository, branch: str) -> BranchProtectionRule | None:
        """The first rule whose pattern (fnmatch-style, like GitHub's) matches ``branch``."""
        for rule in repo.protection_rules:
            if fnmatch.fnmatchcase(branch, rule.pattern):
                return rule
        return None

    @staticmethod
    def _bypasses(actor: Actor, rule: BranchProtectionRule) -> bool:
        """Repository admins may merge past a rule that is not enforced for admins."""
        admin = actor.kind == "static" and actor.has("administration", "admin")
        return admin and not rule.settings.get("isAdminEnforced")

    def add_protection(
        self, owner: str, name: str, pattern: str, **settings: Any
    ) -> BranchProtectionRule:
        """Set-up helper: protect ``pattern`` in ``owner/name`` (recorded as a ``setup``)."""
        repo = self.find_repository(owner, name)
        if repo is None:
            raise ValueError(f"no repository {owner}/{name}")
        setup = Actor("setup", 0, "static", None, {})
        return self.create_protection(repo, setup, "setup", pattern, settings)

    def update_protection(
        self,
        repo: Repository,
        actor: Actor,
        api: str,
        rule: BranchProtectionRule,
        settings: dict[str, Any],
    ) -> None:
        if "pattern" in settings and settings["pattern"] is not None:
            rule.pattern = settings.pop("pattern")
        rule.settings.update({k: v for k, v in settings.items() if v is not None})
        self.record("branch_protection.update", repo, api, actor, pattern=rule.pattern, **settings)

    def delete_protection(
        self, repo: Repository, actor: Actor, api: str, rule: BranchProtectionRule
    ) -> None:
        repo.protection_rules = [r for r in repo.protection_rules if r is not rule]
        self.nodes.pop(rule.node_id, None)
        self.record("branch_protection.delete", repo, api, actor, pattern=rule.pattern)
