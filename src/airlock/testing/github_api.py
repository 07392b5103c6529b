"""A test double for the slice of GitHub's REST API that mints App installation tokens.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from airlock.testing.tls import TestTLS, start_https

DOCUMENTATION_URL = "https://docs.github.com/rest"
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
class ApiRequest:
    """One request the double answered, for assertions in tests."""

    method: str
    path: str
    status: int
    message: str  # GitHub's error message, or "" on success
    body: Any  # the parsed JSON request body, or None (none, or not JSON)


@dataclass(frozen=True)
class _Installation:
    installation_id: int
    app_id: int
    account: str
    repositories: tuple[str, ...]
    permissions: dict[str, str]


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Reply:
    status: int
    payload: dict[str, Any] | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)


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
    """GitHub's installation-token API over TLS on ``127.0.0.1`` (an ephemeral port)."""

    def __init__(
        self,
        tls: TestTLS,
        *,
        clock: Callable[[], float] = time.time,
        token_lifetime: float = 3600.0,
    ) -> None:
        self.tls = tls
        self.clock = clock
        self.token_lifetime = token_lifetime
        self.issued: list[IssuedToken] = []
        self.requests: list[ApiRequest] = []
        self._apps: dict[int, rsa.RSAPublicKey] = {}
        self._installations: dict[int, _Installation] = {}
        self._by_token: dict[str, IssuedToken] = {}
        self._host = "127.0.0.1"
        self._port = 0
        self._runner: web.ServerRunner | None = None

    # -- set-up ------------------------------------------------------------------------

    def register_app(self, app_id: int, public_key_pem: bytes) -> None:
        """Register a GitHub App and the RSA public key its JWTs must verify against."""
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError("a GitHub App key is an RSA key")
        self._apps[app_id] = key

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
        try:
            if raw is None:
                raise _ApiError(413, MSG_BODY_TOO_LARGE)
            reply = self._dispatch(request, raw)
        except _ApiError as err:
            reply = _Reply(
                err.status,
                {"message": err.message, "documentation_url": DOCUMENTATION_URL},
                err.message,
            )
        self.requests.append(
            ApiRequest(
                method=request.method,
                path=request.path,
                status=reply.status,
                message=reply.message,
                body=body,
            )
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

    def _dispatch(self, request: web.BaseRequest, raw: bytes) -> _Reply:
        if not request.headers.get("User-Agent", "").strip():
            raise _ApiError(403, MSG_NO_USER_AGENT)
        m = _ACCESS_TOKENS_RE.match(request.path)
        if m is not None and request.method == "POST":
            app_id = self._verify_jwt(request.headers.get("Authorization"))
            return self._mint(app_id, int(m["id"]), raw)
        if request.path == "/installation/token" and request.method == "DELETE":
            return self._revoke(request.headers.get("Authorization"))
        raise _ApiError(404, MSG_NOT_FOUND)

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
