"""A test double for GitHub's API: App installation tokens, and (over git's bare repositories)
pull requests, comments and the calls a sandbox must never make.

It serves, over TLS on loopback, the two endpoints a GitHub App needs to hand out short-lived
repository credentials, and checks what GitHub checks:

* ``POST /app/installations/{installation_id}/access_tokens`` with ``Authorization: Bearer
  <JWT>``: an RS256 JWT signed with the App's private key (``iss`` = App id, ``iat``/``exp``
  within GitHub's limits), for an installation of that App, optionally narrowed to some of
  the installation's repositories and permissions. Answers 201 with a ``ghs_`` token.
* ``DELETE /installation/token`` with ``Authorization: token ghs_...``: revokes that token.

:meth:`GitHubApiDouble.check_token` then says whether a minted token may read or write a
repository; :class:`airlock.testing.upstream.GitUpstream` takes it as ``token_check`` so git
over HTTPS honours the tokens the way github.com does.

Given ``repos_root`` (the directory :class:`~airlock.testing.upstream.GitUpstream` serves), it
also serves GitHub's REST API (:mod:`airlock.testing.github_rest`) and GraphQL API
(:mod:`airlock.testing.github_graphql`) for those repositories, over one shared
:class:`~airlock.testing.github_state.GitHubState`, in both layouts at once: github.com's (REST
at ``/``, GraphQL at ``POST /graphql``) and GitHub Enterprise's (REST under ``/api/v3/``,
GraphQL at ``POST /api/graphql``). Tokens accepted there: the installation tokens it minted
(their repositories and permissions, exactly), the token in ``token_file`` (re-read each
request; every permission on every repository, like the upstream's token file), and any
:class:`StaticToken` in ``tokens``. Every answer carries ``X-GitHub-Request-Id``.

Interface for tests::

    api = GitHubApiDouble(tls, repos_root=upstream.root, token_file=upstream.token_file)
    # or GitHubApiDouble.for_upstream(upstream); more tokens: tokens={"ghp_...": StaticToken(
    #     "reader", repositories=frozenset({"octo/hello"}), permissions={"contents": "read"})}
    await api.start()                      # api.url: https://127.0.0.1:PORT (both layouts)
    api.add_repository("octo", "hello", secrets=["DEPLOY_KEY"], labels=["bug"],
                       collaborators={"alice": "push"})  # optional: found on disk anyway
    api.state.add_protection("octo", "hello", "main", requiresApprovingReviews=True)
    ...
    api.pulls("octo", "hello")             # its pull requests (github_state.PullRequest)
    api.mutations                          # every state change (github_state.Mutation):
    #   kind "pull_request.create" / ".update" / ".merge" / ".draft", "comment.create",
    #   "labels.add" / ".set", "review_requests.add", "repository.delete",
    #   "collaborator.add" / ".update", "secret.put", "workflow.dispatch", "ref.create" /
    #   ".update" / ".delete", "branch_protection.create" / ".update" / ".delete"
    api.requests                           # every request answered (ApiRequest: method, path,
    #   status, message, body, query, api "app"/"rest"/"graphql", actor login, request_id)
    api.repository("octo", "hello")        # None once deleted through the API

Workflows are the ``.github/workflows/*.yml`` files on the default branch (dispatchable if
they name ``workflow_dispatch``); merges, ``createRef``/``updateRef``/``deleteRef`` and REST
``git/refs`` change the bare repository. A deleted repository is gone from the API only; git
still serves its bare repository.

Where GitHub's behaviour is lenient in ways that cannot matter to a client that follows the
documentation, the double is stricter (e.g. it requires integer ``iat``/``exp``, unpadded
base64url, exact repository-name case). It never grants more than GitHub would.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from airlock.testing.github_graphql import GitHubGraphQL
from airlock.testing.github_graphql_schema import SDL
from airlock.testing.github_rest import GitHubRest, RestRequest
from airlock.testing.github_state import (
    ALL_PERMISSIONS,
    Actor,
    GitHubState,
    Mutation,
    PullRequest,
    Repository,
    Secret,
    StateError,
)
from airlock.testing.tls import TestTLS, start_https
from airlock.testing.upstream import GitUpstream

DOCUMENTATION_URL = "https://docs.github.com/rest"
GRAPHQL_DOCUMENTATION_URL = "https://docs.github.com/graphql"
MSG_GRAPHQL_AUTH = "This endpoint requires you to be authenticated."
GHE_REST_PREFIX = "/api/v3"
GRAPHQL_PATHS = ("/graphql", "/api/graphql")
TOKEN_PREFIX = "ghs_"  # noqa: S105 -- the public prefix of installation tokens, not a secret
TOKEN_RANDOM_LENGTH = 36
# GitHub: the JWT may live at most 10 minutes; "iat" may be up to a minute ahead (clock drift).
JWT_MAX_LIFETIME = 600
JWT_IAT_LEEWAY = 60
# GitHub: "You can list up to 500 repositories."
MAX_REPOSITORIES = 500

# GitHub's own error messages, verbatim.
MSG_NO_USER_AGENT = (
    "Request forbidden by administrative rules. "
    "Please make sure your request has a User-Agent header"
)
MSG_JWT_UNDECODABLE = "A JSON web token could not be decoded"
MSG_INTEGRATION_NOT_FOUND = "Integration not found"
MSG_ISS_MISSING = "Missing 'issuer' claim ('iss') in assertion"
MSG_ISS_NOT_INTEGER = "'Issuer' claim ('iss') must be an Integer"
MSG_IAT_INVALID = "'Issued at' claim ('iat') must be an Integer representing a time in the past"
MSG_EXP_INVALID = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time "
    "at which the assertion expires"
)
MSG_EXP_TOO_FAR = "'Expiration time' claim ('exp') is too far in the future"
MSG_NOT_FOUND = "Not Found"
MSG_BAD_JSON = "Problems parsing JSON"
MSG_INVALID_REQUEST = "Invalid request."
MSG_REPO_NOT_ACCESSIBLE = (
    "There is at least one repository that does not exist or is not accessible "
    "to the parent installation."
)
MSG_PERMISSIONS_NOT_GRANTED = "The permissions requested are not granted to this installation."
MSG_BAD_CREDENTIALS = "Bad credentials"
MSG_REQUIRES_AUTHENTICATION = "Requires authentication"
MSG_BODY_TOO_LARGE = "Request body too large"

# What check_token answers (None means allowed).
BAD_CREDENTIALS = "bad_credentials"
NOT_FOUND = "not_found"
WRITE_DENIED = "write_denied"

_LEVELS = {"read": 1, "write": 2, "admin": 3}
_TOKEN_ALPHABET = string.ascii_letters + string.digits
_ACCESS_TOKENS_RE = re.compile(r"^/app/installations/(?P<id>[0-9]{1,19})/access_tokens$")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclass
class IssuedToken:
    """An installation access token the double has minted."""

    token: str  # "ghs_" + 36 [A-Za-z0-9]
    installation_id: int
    account: str  # the installation's account (owner login)
    repositories: frozenset[str]  # repository names (no owner) this token may use
    permissions: dict[str, str]  # e.g. {"contents": "read", "metadata": "read"}
    expires_at: float  # epoch seconds
    revoked: bool = False


@dataclass(frozen=True)
class StaticToken:
    """A personal access token the API accepts besides installation tokens.

    ``repositories`` ("owner/name") None means every repository; ``permissions`` None means
    every permission at ``admin`` (what the upstream's token file may do).
    """

    login: str = "airlock-bot"
    repositories: frozenset[str] | None = None
    permissions: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ApiRequest:
    """One request the double answered, for assertions in tests."""

    method: str
    path: str
    status: int
    message: str  # GitHub's error message, or "" on success
    body: Any  # the parsed JSON request body, or None (none, or not JSON)
    # Not compared (records compare by the five fields above):
    query: str = field(default="", compare=False)  # the query string
    # "app" (the token endpoints), "rest" or "graphql"
    api: str = field(default="app", compare=False)
    actor: str | None = field(default=None, compare=False)  # the token's login, if any
    request_id: str = field(default="", compare=False)  # the X-GitHub-Request-Id sent


@dataclass(frozen=True)
class _Installation:
    installation_id: int
    app_id: int
    account: str
    repositories: tuple[str, ...]
    permissions: dict[str, str]


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        documentation_url: str = DOCUMENTATION_URL,
        api: str = "app",
        actor: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.documentation_url = documentation_url
        self.api = api
        self.actor = actor
        self.headers = dict(headers or {})


@dataclass
class _Reply:
    status: int
    payload: Any = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    api: str = "app"
    actor: str | None = None
    text: str | None = None  # a non-JSON body (e.g. a diff)
    content_type: str = "application/json"


def _b64url_decode(part: str) -> bytes:
    """Decode one JWT segment: base64url without padding (RFC 7515), nothing else."""
    if not _B64URL_RE.match(part) or len(part) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("bad base64url") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(data: bytes) -> Any:
    """Strict JSON: UTF-8 only, and no NaN/Infinity (Python's json accepts those)."""
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


def _json_object(data: bytes) -> dict[str, Any]:
    value = _loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _issuer(claims: dict[str, Any]) -> int:
    if "iss" not in claims:
        raise _ApiError(401, MSG_ISS_MISSING)
    iss = claims["iss"]
    if _is_int(iss):
        return int(iss)
    if isinstance(iss, str) and iss.isascii() and iss.isdigit() and len(iss) <= 19:
        return int(iss)
    raise _ApiError(401, MSG_ISS_NOT_INTEGER)


def _iso_utc(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_token() -> str:
    return TOKEN_PREFIX + "".join(
        secrets.choice(_TOKEN_ALPHABET) for _ in range(TOKEN_RANDOM_LENGTH)
    )


class GitHubApiDouble:
    """GitHub's API over TLS on ``127.0.0.1`` (an ephemeral port); see the module docstring.

    ``repos_root``: the bare repositories (``<root>/<owner>/<name>.git``) the REST and GraphQL
    API serve (without it, only the token endpoints exist). ``token_file``: a file holding a
    token with every permission on every repository (re-read per request). ``tokens``: more
    static tokens. ``web_url``/``api_url``: the hosts in ``html_url``/``url`` fields.
    ``graphql_sdl``: another schema (a subset of GitHub's) for the GraphQL endpoint.
    """

    def __init__(
        self,
        tls: TestTLS,
        *,
        clock: Callable[[], float] = time.time,
        token_lifetime: float = 3600.0,
        repos_root: Path | None = None,
        token_file: Path | None = None,
        tokens: Mapping[str, StaticToken] | None = None,
        web_url: str = "https://github.com",
        api_url: str = "https://api.github.com",
        graphql_sdl: str = SDL,
    ) -> None:
        self.tls = tls
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.issued: list[IssuedToken] = []
        self.requests: list[ApiRequest] = []
        self.token_file = token_file
        self.tokens: dict[str, StaticToken] = dict(tokens or {})
        self.state = GitHubState(repos_root, clock=clock, web_url=web_url, api_url=api_url)
        self.rest = GitHubRest(self.state)
        self.graphql = GitHubGraphQL(self.state, graphql_sdl)
        self._app_slugs: dict[int, str] = {}
        self._apps: dict[int, rsa.RSAPublicKey] = {}
        self._installations: dict[int, _Installation] = {}
        self._by_token: dict[str, IssuedToken] = {}
        self._host = "127.0.0.1"
        self._port = 0
        self._runner: web.ServerRunner | None = None

    # -- set-up ------------------------------------------------------------------------

    def register_app(self, app_id: int, public_key_pem: bytes, slug: str | None = None) -> None:
        """Register a GitHub App and the RSA public key its JWTs must verify against.

        Its installation tokens act as ``<slug>[bot]`` (default slug ``app-<app_id>``)."""
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError("a GitHub App key is an RSA key")
        self._apps[app_id] = key
        self._app_slugs[app_id] = slug or f"app-{app_id}"

    def add_token(self, token: str, token_info: StaticToken | None = None) -> None:
        """Accept ``token`` (a personal access token) on the REST and GraphQL API."""
        self.tokens[token] = token_info or StaticToken()

    # -- the world the API serves --------------------------------------------------------

    def add_repository(
        self,
        owner: str,
        name: str,
        *,
        private: bool = True,
        owner_type: str = "User",
        secrets: list[str] | None = None,
        labels: list[str] | None = None,
        collaborators: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> Repository:
        """Register ``owner/name`` (its bare repository must exist under ``repos_root``) with
        these settings, Actions secrets, labels and collaborators (login -> "pull", "triage",
        "push", "maintain" or "admin"); repositories are otherwise found on disk (private,
        owned by a user, nothing else)."""
        repo = self.state.add_repository(
            owner, name, private=private, owner_type=owner_type, description=description
        )
        now = self.clock()
        for secret in secrets or []:
            repo.secrets[secret] = Secret(secret, now, now)
        for label in labels or []:
            self.state.label(repo, label)
        for login, permission in (collaborators or {}).items():
            repo.collaborators[login] = permission
            self.state.user_id(login)
        return repo

    @classmethod
    def for_upstream(cls, upstream: GitUpstream, **kw: Any) -> GitHubApiDouble:
        """The API over ``upstream``'s repositories, accepting its token file, on its TLS."""
        kw.setdefault("repos_root", upstream.root)
        kw.setdefault("token_file", upstream.token_file)
        return cls(upstream.tls, **kw)

    def repository(self, owner: str, name: str) -> Repository | None:
        """The live repository ``owner/name`` (None if missing or deleted through the API)."""
        return self.state.find_repository(owner, name)

    def pulls(self, owner: str, name: str) -> list[PullRequest]:
        """The pull requests of ``owner/name`` (any state), by number."""
        key = (owner.lower(), name.lower())
        repo = self.state.repositories.get(key)
        return [] if repo is None else [repo.pulls[n] for n in sorted(repo.pulls)]

    @property
    def mutations(self) -> list[Mutation]:
        """Every state change made through the API, in order."""
        return self.state.mutations

    def add_installation(
        self,
        installation_id: int,
        app_id: int,
        account: str,
        repositories: list[str],
        permissions: dict[str, str],
    ) -> None:
        """Install ``app_id`` on ``account`` with access to ``repositories`` (names only)."""
        if app_id not in self._apps:
            raise ValueError(f"app {app_id} is not registered")
        for name, level in permissions.items():
            if level not in _LEVELS:
                raise ValueError(f"permission {name}: level {level!r} is not read/write/admin")
        for repo in repositories:
            if not _REPO_NAME_RE.match(repo):
                raise ValueError(f"{repo!r} is not a repository name (no owner, no '/')")
        self._installations[installation_id] = _Installation(
            installation_id=installation_id,
            app_id=app_id,
            account=account,
            repositories=tuple(dict.fromkeys(repositories)),
            permissions=dict(permissions),
        )

    # -- what git hosting asks ---------------------------------------------------------

    def _live(self, token: str) -> IssuedToken | None:
        issued = self._by_token.get(token)
        if issued is None or issued.revoked or self.clock() >= issued.expires_at:
            return None
        return issued

    def check_token(self, token: str, owner: str, repo: str, write: bool) -> str | None:
        """May ``token`` read (or, with ``write``, push to) ``owner/repo``?

        None when allowed; else ``"bad_credentials"`` (unknown, revoked or expired token),
        ``"not_found"`` (another account, a repository outside the token's selection, or no
        ``contents`` permission at all: GitHub hides what a token cannot read), or
        ``"write_denied"`` (``write`` and ``contents`` below ``write``).
        """
        issued = self._live(token)
        if issued is None:
            return BAD_CREDENTIALS
        if owner != issued.account or repo not in issued.repositories:
            return NOT_FOUND
        level = _LEVELS.get(issued.permissions.get("contents", ""), 0)
        if level == 0:
            return NOT_FOUND
        if write and level < _LEVELS["write"]:
            return WRITE_DENIED
        return None

    def _actor(self, token: str) -> Actor | None:
        """The identity behind ``token`` on the REST/GraphQL API, or None (bad credentials)."""
        if self.token_file is not None:
            try:
                file_token = self.token_file.read_text().strip()
            except OSError:
                file_token = ""
            if file_token and secrets.compare_digest(token, file_token):
                return self._static_actor(StaticToken())
        static = self.tokens.get(token)
        if static is not None:
            return self._static_actor(static)
        issued = self._live(token)
        if issued is None:
            return None
        app_id = self._installations[issued.installation_id].app_id
        login = f"{self._app_slugs.get(app_id, f'app-{app_id}')}[bot]"
        return Actor(
            login=login,
            user_id=self.state.user_id(login),
            kind="installation",
            repositories=frozenset(f"{issued.account}/{r}".lower() for r in issued.repositories),
            permissions=dict(issued.permissions),
        )

    def _static_actor(self, static: StaticToken) -> Actor:
        permissions = (
            dict(static.permissions)
            if static.permissions is not None
            else dict.fromkeys(ALL_PERMISSIONS, "admin")
        )
        repos = None
        if static.repositories is not None:
            repos = frozenset(r.lower() for r in static.repositories)
        return Actor(
            login=static.login,
            user_id=self.state.user_id(static.login),
            kind="static",
            repositories=repos,
            permissions=permissions,
        )

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        server = web.Server(self._handle, access_log=None)
        self._runner, self._port = await start_https(server, self._host, self._port, self.tls)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> GitHubApiDouble:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- request handling --------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body: Any = None
        raw: bytes | None
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = None
        if raw is not None and raw.strip():
            try:
                body = _loads(raw)
            except ValueError:
                body = None
        request_id = f"{secrets.token_hex(2).upper()}:{secrets.token_hex(3).upper()}:" + (
            f"{secrets.token_hex(3).upper()}:{secrets.token_hex(4).upper()}"
        )
        try:
            if raw is None:
                raise _ApiError(413, MSG_BODY_TOO_LARGE)
            reply = self._dispatch(request, raw, body)
        except _ApiError as err:
            payload: dict[str, Any] = {"message": err.message}
            if err.errors:
                payload["errors"] = err.errors
            payload["documentation_url"] = err.documentation_url
            reply = _Reply(
                err.status, payload, err.message, err.headers, api=err.api, actor=err.actor
            )
        reply.headers.setdefault("X-GitHub-Request-Id", request_id)
        reply.headers.setdefault("X-GitHub-Media-Type", "github.v3; format=json")
        self.requests.append(
            ApiRequest(
                method=request.method,
                path=request.path,
                status=reply.status,
                message=reply.message,
                body=body,
                query=request.query_string,
                api=reply.api,
                actor=reply.actor,
                request_id=request_id,
            )
        )
        if reply.text is not None:
            return web.Response(
                status=reply.status,
                text=reply.text,
                content_type=reply.content_type,
                charset="utf-8",
                headers=reply.headers,
            )
        if reply.payload is None:
            return web.Response(status=reply.status, headers=reply.headers)
        return web.Response(
            status=reply.status,
            text=json.dumps(reply.payload),
            content_type="application/json",
            charset="utf-8",
            headers=reply.headers,
        )

    def _dispatch(self, request: web.BaseRequest, raw: bytes, body: Any) -> _Reply:
        if not request.headers.get("User-Agent", "").strip():
            raise _ApiError(403, MSG_NO_USER_AGENT)
        path = request.path
        if path == GHE_REST_PREFIX or path.startswith(GHE_REST_PREFIX + "/"):
            path = path[len(GHE_REST_PREFIX) :] or "/"
        m = _ACCESS_TOKENS_RE.match(path)
        if m is not None and request.method == "POST":
            app_id = self._verify_jwt(request.headers.get("Authorization"))
            return self._mint(app_id, int(m["id"]), raw)
        if path == "/installation/token" and request.method == "DELETE":
            return self._revoke(request.headers.get("Authorization"))
        if self.state.repos_root is None:
            raise _ApiError(404, MSG_NOT_FOUND)
        if request.path in GRAPHQL_PATHS:
            return self._graphql(request, raw, body)
        try:
            actor = self._authenticate(request.headers.get("Authorization"), DOCUMENTATION_URL)
        except _ApiError as err:
            err.api = "rest"
            raise
        try:
            answer = self.rest.handle(
                RestRequest(
                    request.method,
                    path,
                    request.query,
                    body,
                    actor,
                    request.headers.get("Accept", ""),
                )
            )
        except StateError as err:
            raise _ApiError(
                err.status,
                err.message,
                err.errors,
                api="rest",
                actor=actor.login if actor else None,
                headers=err.headers,
            ) from err
        headers = dict(answer.headers)
        headers.update(self._rate_headers("core"))
        return _Reply(
            answer.status,
            answer.payload,
            headers=headers,
            api="rest",
            actor=actor.login if actor else None,
            text=answer.text,
            content_type=answer.content_type,
        )

    def _authenticate(self, authorization: str | None, docs: str) -> Actor | None:
        """The token's identity; None without a token; 401 "Bad credentials" for a bad one."""
        if authorization is None:
            return None
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        token = credential
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode("utf-8")
            except (binascii.Error, ValueError) as exc:
                raise _ApiError(401, MSG_BAD_CREDENTIALS, documentation_url=docs) from exc
            token = decoded.partition(":")[2]
        elif scheme.lower() not in ("token", "bearer"):
            raise _ApiError(401, MSG_BAD_CREDENTIALS, documentation_url=docs)
        actor = self._actor(token) if token else None
        if actor is None:
            raise _ApiError(401, MSG_BAD_CREDENTIALS, documentation_url=docs)
        return actor

    def _rate_headers(self, resource: str) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Used": "1",
            "X-RateLimit-Reset": str(int(self.clock()) + 3600),
            "X-RateLimit-Resource": resource,
        }

    def _graphql(self, request: web.BaseRequest, raw: bytes, body: Any) -> _Reply:
        docs = GRAPHQL_DOCUMENTATION_URL
        try:
            actor = self._authenticate(request.headers.get("Authorization"), docs)
        except _ApiError as err:
            err.api = "graphql"
            raise
        if actor is None:
            raise _ApiError(401, MSG_GRAPHQL_AUTH, documentation_url=docs, api="graphql")
        if request.method != "POST":
            raise _ApiError(404, MSG_NOT_FOUND, documentation_url=docs, api="graphql")
        if body is None and raw.strip():
            raise _ApiError(400, MSG_BAD_JSON, documentation_url=docs, api="graphql")
        result = self.graphql.execute(actor, body)
        return _Reply(
            200, result, headers=self._rate_headers("graphql"), api="graphql", actor=actor.login
        )

    def _verify_jwt(self, authorization: str | None) -> int:
        """Check the App's JWT like GitHub does; return the App id it authenticates."""
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        # A JWT is only ever accepted with the Bearer scheme.
        if scheme.lower() != "bearer" or not credential:
            raise _ApiError(401, MSG_JWT_UNDECODABLE)
        parts = credential.split(".")
        if len(parts) != 3:
            raise _ApiError(401, MSG_JWT_UNDECODABLE)
        try:
            header = _json_object(_b64url_decode(parts[0]))
            claims = _json_object(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError as exc:
            raise _ApiError(401, MSG_JWT_UNDECODABLE) from exc
        if header.get("alg") != "RS256":
            raise _ApiError(401, MSG_JWT_UNDECODABLE)

        app_id = _issuer(claims)
        key = self._apps.get(app_id)
        if key is None:
            raise _ApiError(401, MSG_INTEGRATION_NOT_FOUND)
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        try:
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise _ApiError(401, MSG_JWT_UNDECODABLE) from exc

        now = self.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or isinstance(iat, bool) or iat > now + JWT_IAT_LEEWAY:
            raise _ApiError(401, MSG_IAT_INVALID)
        if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now:
            raise _ApiError(401, MSG_EXP_INVALID)
        # At most 10 minutes of life, and no more than 10 minutes ahead of now.
        if exp - iat > JWT_MAX_LIFETIME or exp > now + JWT_MAX_LIFETIME:
            raise _ApiError(401, MSG_EXP_TOO_FAR)
        return app_id

    def _mint(self, app_id: int, installation_id: int, raw: bytes) -> _Reply:
        installation = self._installations.get(installation_id)
        if installation is None or installation.app_id != app_id:
            raise _ApiError(404, MSG_NOT_FOUND)

        request: dict[str, Any] = {}
        if raw.strip():
            try:
                parsed = _loads(raw)
            except ValueError as exc:
                raise _ApiError(400, MSG_BAD_JSON) from exc
            if not isinstance(parsed, dict):
                raise _ApiError(422, MSG_INVALID_REQUEST)
            request = parsed
        if "repository_ids" in request:
            # The double has no repository ids; fail loudly rather than ignore the scoping.
            raise _ApiError(422, MSG_INVALID_REQUEST)

        repositories = self._requested_repositories(installation, request)
        permissions = self._requested_permissions(installation, request)

        now = self.clock()
        issued = IssuedToken(
            token=_new_token(),
            installation_id=installation_id,
            account=installation.account,
            repositories=frozenset(repositories),
            permissions=permissions,
            expires_at=now + self.token_lifetime,
        )
        self.issued.append(issued)
        self._by_token[issued.token] = issued
        return _Reply(
            201,
            {
                "token": issued.token,
                "expires_at": _iso_utc(issued.expires_at),
                "permissions": dict(permissions),
                "repository_selection": "selected",
                "repositories": [
                    {"name": name, "full_name": f"{installation.account}/{name}"}
                    for name in repositories
                ],
            },
        )

    @staticmethod
    def _requested_repositories(installation: _Installation, request: dict[str, Any]) -> list[str]:
        requested = request.get("repositories")
        if "repositories" not in request:
            return list(installation.repositories)
        if not isinstance(requested, list) or not all(isinstance(r, str) for r in requested):
            raise _ApiError(422, MSG_INVALID_REQUEST)
        if len(requested) > MAX_REPOSITORIES:
            raise _ApiError(422, MSG_INVALID_REQUEST)
        if not requested:
            # GitHub treats an empty list like no list: every repository of the installation.
            return list(installation.repositories)
        names = list(dict.fromkeys(requested))
        if any(name not in installation.repositories for name in names):
            raise _ApiError(422, MSG_REPO_NOT_ACCESSIBLE)
        return names

    @staticmethod
    def _requested_permissions(
        installation: _Installation, request: dict[str, Any]
    ) -> dict[str, str]:
        if "permissions" not in request:
            return dict(installation.permissions)
        requested = request["permissions"]
        if not isinstance(requested, dict) or not all(
            isinstance(level, str) and level in _LEVELS for level in requested.values()
        ):
            raise _ApiError(422, MSG_INVALID_REQUEST)
        if not requested:
            return dict(installation.permissions)
        for name, level in requested.items():
            held = installation.permissions.get(name)
            if held is None or _LEVELS[held] < _LEVELS[level]:
                raise _ApiError(422, MSG_PERMISSIONS_NOT_GRANTED)
        granted = dict(requested)
        # GitHub always includes read access to repository metadata when the App has it.
        if "metadata" in installation.permissions and "metadata" not in granted:
            granted["metadata"] = "read"
        return granted

    def _revoke(self, authorization: str | None) -> _Reply:
        if not authorization:
            raise _ApiError(401, MSG_REQUIRES_AUTHENTICATION)
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            raise _ApiError(401, MSG_BAD_CREDENTIALS)
        issued = self._live(credential.strip())
        if issued is None:
            raise _ApiError(401, MSG_BAD_CREDENTIALS)
        issued.revoked = True
        return _Reply(204)
