"""GitHub App installation tokens, the pure part: the app's JWT, which token a request needs,
the token request's body and the parsing of GitHub's answer. No I/O here.

A session never gets the App's power. For each repository owner (one App installation per
account) a session gets at most two installation tokens: one with ``contents: read`` for the
repositories it may only read, one with ``contents: write`` for those it may push to, each
limited to exactly those repositories, plus ``metadata: read`` (GitHub adds it to every
token) and ``pull_requests`` at the same level (read, or write to open pull requests through
the API relay). No ``workflows``, ``administration`` or any other permission is ever asked
for, so even a request the gateway wrongly let through would be refused by GitHub itself.
"""

from __future__ import annotations

import base64
import calendar
import json
import re
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from airlock.core.grants import Access, Grant

__all__ = [
    "AppToken",
    "AppTokenError",
    "TokenScope",
    "app_jwt",
    "parse_token_response",
    "scope_for",
    "scopes_for",
    "token_request_body",
]

#: GitHub refuses an App JWT whose lifetime (exp - iat) exceeds ten minutes.
JWT_MAX_LIFETIME = 600
#: ``iat`` is backdated so a gateway clock a little ahead of GitHub's is not refused.
JWT_BACKDATE = 60
#: A token is replaced when less than this much of its hour is left, so no request starts
#: with a token that may expire while a long clone is still running.
REFRESH_MARGIN = 600.0

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_]{20,255}$")


class AppTokenError(Exception):
    """GitHub refused to mint a token, or answered something that is not a token."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def app_jwt(app_id: int, key: rsa.RSAPrivateKey, now: float) -> str:
    """The App's own credential (RS256 JWT, ``iss`` = App id), good for nine minutes."""
    iat = int(now) - JWT_BACKDATE
    claims = {"iat": iat, "exp": iat + JWT_MAX_LIFETIME - 60, "iss": str(app_id)}
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


@dataclass(frozen=True)
class TokenScope:
    """One installation token's reach: these repositories of ``owner`` at ``access``."""

    host: str
    owner: str  # lower-case: GitHub account names are case-insensitive
    access: Access
    repos: tuple[str, ...]  # lower-case, sorted

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.host, self.owner, self.access.value)


def scopes_for(grants: tuple[Grant, ...], host: str) -> dict[tuple[str, str, str], TokenScope]:
    """Every token a session's grants on ``host`` can need, keyed by (host, owner, access).

    A repository granted both ways is only in the write token (write implies read)."""
    best: dict[tuple[str, str], Access] = {}
    for g in grants:
        if g.host != host:
            continue
        k = (g.owner.lower(), g.repo.lower())
        if best.get(k) is not Access.WRITE:
            best[k] = g.access
    grouped: dict[tuple[str, Access], list[str]] = {}
    for (owner, repo), access in best.items():
        grouped.setdefault((owner, access), []).append(repo)
    scopes = [
        TokenScope(host=host, owner=owner, access=access, repos=tuple(sorted(repos)))
        for (owner, access), repos in grouped.items()
    ]
    return {s.key: s for s in scopes}


def scope_for(grants: tuple[Grant, ...], host: str, owner: str, repo: str) -> TokenScope | None:
    """The token a request for ``owner/repo`` is sent with, or None (not granted)."""
    for scope in scopes_for(grants, host).values():
        if scope.owner == owner.lower() and repo.lower() in scope.repos:
            return scope
    return None


def token_request_body(scope: TokenScope) -> dict[str, object]:
    """Body of ``POST /app/installations/{id}/access_tokens`` for one scope."""
    if not scope.repos:
        # GitHub reads an empty list as "every repository of the installation".
        raise ValueError("a token scope needs at least one repository")
    return {
        "repositories": list(scope.repos),
        # pull_requests at the same level: the API relay opens and reads pull requests
        # with this token (gateway/api/); contents and metadata are what git needs.
        "permissions": {
            "contents": scope.access.value,
            "metadata": "read",
            "pull_requests": scope.access.value,
        },
    }


@dataclass(frozen=True)
class AppToken:
    token: str
    expires_at: float  # epoch seconds

    def fresh(self, now: float, margin: float = REFRESH_MARGIN) -> bool:
        return now + margin < self.expires_at

    def __repr__(self) -> str:  # never print the secret by accident
        return f"AppToken(expires_at={self.expires_at})"


def parse_token_response(status: int, body: bytes) -> AppToken:
    """GitHub's answer to the token request; AppTokenError with GitHub's message if refused."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if status != 201:
        message = doc.get("message") if isinstance(doc, dict) else None
        text = message if isinstance(message, str) else body[:200].decode("utf-8", "replace")
        raise AppTokenError(f"HTTP {status}: {text}")
    if not isinstance(doc, dict):
        raise AppTokenError("the token answer is not a JSON object")
    token, expires = doc.get("token"), doc.get("expires_at")
    if not isinstance(token, str) or not _TOKEN_RE.match(token):
        raise AppTokenError("the token answer has no usable token")
    if not isinstance(expires, str):
        raise AppTokenError("the token answer has no expires_at")
    try:
        expires_at = calendar.timegm(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise AppTokenError(f"expires_at {expires[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ") from None
    return AppToken(token=token, expires_at=float(expires_at))
