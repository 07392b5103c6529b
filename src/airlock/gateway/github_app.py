"""GitHub App credentials: installation tokens minted per session, owner and access level.

The App's private key stays in the gateway. For a request of session S on ``owner/repo`` the
gateway uses a token minted for S alone, limited to the repositories S may use at that access
level (core/github_app.py decides the scope). Tokens are minted on first use, replaced when
less than ``REFRESH_MARGIN`` of their hour is left, and revoked at GitHub
(``DELETE /installation/token``) once their session has ended or the gateway stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from airlock.config import GitHubAppConfig
from airlock.core.github_app import (
    AppToken,
    AppTokenError,
    TokenScope,
    app_jwt,
    parse_token_response,
    scope_for,
    token_request_body,
)
from airlock.core.session import Session
from airlock.gateway.credentials import CredentialError, SecretFile

__all__ = ["AppCredential"]

API_VERSION = "2022-11-28"
#: A token request that takes longer than this fails the git request (502), not the gateway.
API_TIMEOUT = 20.0
USER_AGENT = "airlock-gateway"
MAX_ANSWER_BYTES = 64 * 1024  # a token answer is well under 1 KiB


def _parse_app_key(pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("GitHub App keys are RSA keys")
    return key


@dataclass(frozen=True)
class _Held:
    scope: TokenScope
    token: AppToken


class AppCredential:
    """An upstream's GitHub App: tokens per (session, owner, access)."""

    def __init__(
        self,
        host: str,
        config: GitHubAppConfig,
        log: Callable[..., None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.config = config
        self.log = log
        self.clock = clock
        self._key = SecretFile(config.private_key_file, "App private key", _parse_app_key)
        self._held: dict[tuple[str, str, str, str], _Held] = {}  # (session, host, owner, access)
        self._minting: dict[tuple[str, str, str, str], asyncio.Lock] = {}
        self._client: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------------- the App's key

    def check(self) -> None:
        """Load the private key now (start-up): a bad key stops the gateway, not a request."""
        self._private_key()

    def _private_key(self) -> rsa.RSAPrivateKey:
        return self._key.get()

    # ---------------------------------------------------------------- tokens

    async def token(self, session: Session, owner: str, repo: str) -> str:
        scope = scope_for(session.grants, self.host, owner, repo)
        if scope is None:  # the proxy checks grants first; this is the second lock
            raise CredentialError(f"no grant covers {owner}/{repo}")
        key = (session.id, *scope.key)
        held = self._held.get(key)
        if held is not None and held.scope == scope and held.token.fresh(self.clock()):
            return held.token.token
        lock = self._minting.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent first requests of a session mint one token, not many
            held = self._held.get(key)
            if held is not None and held.scope == scope and held.token.fresh(self.clock()):
                return held.token.token
            fresh = await self._mint(session.id, scope)
            # A replaced token is not revoked: a request may still be using it, and it
            # expires within REFRESH_MARGIN anyway.
            self._held[key] = _Held(scope, fresh)
            return fresh.token

    async def _mint(self, session_id: str, scope: TokenScope) -> AppToken:
        installation = self.config.installations.get(scope.owner)
        if installation is None:
            raise CredentialError(f"no App installation is configured for owner {scope.owner}")
        jwt = app_jwt(self.config.app_id, self._private_key(), self.clock())
        url = f"{self.config.api_url}/app/installations/{installation}/access_tokens"
        try:
            async with self._http().post(
                url,
                json=token_request_body(scope),
                headers={"Authorization": f"Bearer {jwt}", **self._headers()},
            ) as resp:
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16 * 1024):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise AppTokenError(
                            f"HTTP {resp.status}: answer over {MAX_ANSWER_BYTES} bytes"
                        )
                token = parse_token_response(resp.status, bytes(body))
        except AppTokenError as exc:
            self.log(
                "app_token_refused",
                session=session_id,
                owner=scope.owner,
                access=scope.access.value,
                installation=installation,
                error=str(exc),
            )
            raise CredentialError(f"GitHub refused an installation token: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CredentialError(f"GitHub API unreachable: {type(exc).__name__}") from None
        self.log(
            "app_token_minted",
            session=session_id,
            owner=scope.owner,
            access=scope.access.value,
            repositories=len(scope.repos),
            installation=installation,
            expires_at=token.expires_at,
        )
        return token

    async def _revoke(self, token: AppToken, session_id: str, why: str) -> None:
        """DELETE the token at GitHub; a failure is logged (the token still expires in 1 h)."""
        if token.expires_at <= self.clock():
            return
        status: int | str
        try:
            async with self._http().delete(
                f"{self.config.api_url}/installation/token",
                headers={"Authorization": f"token {token.token}", **self._headers()},
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status = type(exc).__name__
        self.log("app_token_revoked", session=session_id, reason=why, status=status)

    def _headers(self) -> dict[str, str]:
        return {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }

    def _http(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            ca = self.config.ca_file
            ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=16),
                timeout=aiohttp.ClientTimeout(total=API_TIMEOUT),
                trust_env=False,  # the App's JWT never goes through an env-configured proxy
            )
        return self._client

    # ---------------------------------------------------------------- lifecycle

    def secrets(self) -> list[str]:
        return [h.token.token for h in self._held.values()]

    async def sweep(self, live: set[str]) -> None:
        ended = [k for k in self._held if k[0] not in live]
        for k in ended:
            held = self._held.pop(k)
            self._minting.pop(k, None)
            await self._revoke(held.token, k[0], "session_ended")

    async def close(self) -> None:
        """Revoke every token (bounded: the gateway is stopping), then drop the client."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sweep(set()), API_TIMEOUT)
        if self._client is not None:
            await self._client.close()
