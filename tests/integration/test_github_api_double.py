"""The GitHub API double checks what GitHub checks, and the upstream honours its tokens.

Everything goes over real HTTPS on loopback: aiohttp for the REST API, Debian's git for the
smart-HTTP upstream. The JWT signer below is written from GitHub's documentation, on purpose
independent of the gateway's own signer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from airlock.testing.github_api import ApiRequest, GitHubApiDouble
from airlock.testing.repos import create_bare_repo, git_env
from airlock.testing.tls import TestTLS, make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream, basic_auth_header

APP_ID = 1234
OTHER_APP_ID = 5678
INSTALL = 11  # APP_ID on "acme": widgets, gadgets, secret; contents write
OTHER_INSTALL = 22  # OTHER_APP_ID on "globex": tool
START = 1_700_000_000.0
FILE_TOKEN = "ghs_" + "fileToken" + "0" * 27
TOKEN_RE = re.compile(r"^ghs_[A-Za-z0-9]{36}$")

MSG_UNDECODABLE = "A JSON web token could not be decoded"
MSG_IAT = "'Issued at' claim ('iat') must be an Integer representing a time in the past"
MSG_EXP = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time "
    "at which the assertion expires"
)
MSG_TOO_FAR = "'Expiration time' claim ('exp') is too far in the future"
MSG_REPOS = (
    "There is at least one repository that does not exist or is not accessible "
    "to the parent installation."
)
MSG_PERMS = "The permissions requested are not granted to this installation."
MSG_UA = (
    "Request forbidden by administrative rules. "
    "Please make sure your request has a User-Agent header"
)


# -- a JWT signer from the documentation --------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_jwt(
    key: rsa.RSAPrivateKey, claims: dict[str, Any], header: dict[str, Any] | None = None
) -> str:
    head = b64url(json.dumps(header or {"alg": "RS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url(sig)}"


def claims(now: float, iss: int | str = APP_ID, **override: Any) -> dict[str, Any]:
    """GitHub's recipe: iat a minute in the past, exp within ten minutes of iat."""
    iat = int(now) - 60
    values: dict[str, Any] = {"iat": iat, "exp": iat + 600, "iss": iss}
    values.update(override)
    return values


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Clock:
    """The double's "now", moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def tls(tmp_path: Path) -> TestTLS:
    return make_test_ca_and_server_cert(tmp_path / "tls", ["localhost"], ["127.0.0.1"])


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
async def api(
    tls: TestTLS, clock: Clock, app_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> AsyncIterator[GitHubApiDouble]:
    double = GitHubApiDouble(tls, clock=clock)
    double.register_app(APP_ID, public_pem(app_key))
    double.register_app(OTHER_APP_ID, public_pem(other_key))
    double.add_installation(
        INSTALL,
        APP_ID,
        "acme",
        ["widgets", "gadgets", "secret"],
        {"contents": "write", "metadata": "read", "issues": "read"},
    )
    double.add_installation(
        OTHER_INSTALL, OTHER_APP_ID, "globex", ["tool"], {"contents": "read", "metadata": "read"}
    )
    async with double:
        yield double


@pytest.fixture
async def http(tls: TestTLS) -> AsyncIterator[aiohttp.ClientSession]:
    # Only the test CA is trusted, whatever the environment says.
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), headers={"User-Agent": "airlock-tests"}
    ) as session:
        yield session


@dataclass
class Api:
    """A client for the double, as a GitHub App would use it."""

    double: GitHubApiDouble
    http: aiohttp.ClientSession
    key: rsa.RSAPrivateKey
    clock: Clock

    def jwt(self, **override: Any) -> str:
        return sign_jwt(self.key, claims(self.clock.now, **override))

    async def mint(
        self,
        installation: int = INSTALL,
        body: Any = None,
        *,
        authorization: str | None = None,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/vnd.github+json"}
        headers["Authorization"] = authorization or f"Bearer {self.jwt()}"
        url = f"{self.double.url}/app/installations/{installation}/access_tokens"
        payload = data if data is not None else (None if body is None else json.dumps(body))
        async with self.http.post(url, data=payload, headers=headers) as resp:
            return resp.status, await resp.json()

    async def token(self, body: Any = None) -> str:
        status, reply = await self.mint(body=body)
        assert status == 201, reply
        token = reply["token"]
        assert isinstance(token, str)
        return token

    async def revoke(self, authorization: str | None) -> tuple[int, str]:
        headers = {} if authorization is None else {"Authorization": authorization}
        async with self.http.delete(
            f"{self.double.url}/installation/token", headers=headers
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text)["message"] if text else ""


@pytest.fixture
def client(
    api: GitHubApiDouble, http: aiohttp.ClientSession, app_key: rsa.RSAPrivateKey, clock: Clock
) -> Api:
    return Api(api, http, app_key, clock)


async def assert_refused(
    client: Api, status: int, message: str, *, installation: int = INSTALL, **kwargs: Any
) -> None:
    got_status, reply = await client.mint(installation, **kwargs)
    assert (got_status, reply["message"]) == (status, message)
    assert reply["documentation_url"] == "https://docs.github.com/rest"
    assert not client.double.issued
    last = client.double.requests[-1]
    assert (last.status, last.message) == (status, message)


# -- minting: success ---------------------------------------------------------------------


async def test_mint_success_shape_and_records(client: Api, api: GitHubApiDouble) -> None:
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", api.url)
    status, reply = await client.mint()
    assert status == 201
    assert TOKEN_RE.match(reply["token"])
    # START + 1 h, in UTC.
    assert reply["expires_at"] == "2023-11-14T23:13:20Z"
    assert reply["permissions"] == {"contents": "write", "metadata": "read", "issues": "read"}
    assert reply["repository_selection"] == "selected"
    assert reply["repositories"] == [
        {"name": "widgets", "full_name": "acme/widgets"},
        {"name": "gadgets", "full_name": "acme/gadgets"},
        {"name": "secret", "full_name": "acme/secret"},
    ]
    [issued] = api.issued
    assert issued.token == reply["token"]
    assert issued.installation_id == INSTALL
    assert issued.account == "acme"
    assert issued.repositories == frozenset({"widgets", "gadgets", "secret"})
    assert issued.expires_at == START + 3600
    assert not issued.revoked
    assert api.requests == [
        ApiRequest(
            method="POST",
            path=f"/app/installations/{INSTALL}/access_tokens",
            status=201,
            message="",
            body=None,
        )
    ]


async def test_every_token_is_new(client: Api, api: GitHubApiDouble) -> None:
    tokens = [await client.token() for _ in range(3)]
    assert len(set(tokens)) == 3
    assert [t.token for t in api.issued] == tokens


async def test_iss_may_be_a_string(client: Api) -> None:
    status, reply = await client.mint(authorization=f"Bearer {client.jwt(iss=str(APP_ID))}")
    assert status == 201, reply


async def test_token_lifetime_is_configurable(
    tls: TestTLS, http: aiohttp.ClientSession, app_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    double = GitHubApiDouble(tls, clock=clock, token_lifetime=60)
    double.register_app(APP_ID, public_pem(app_key))
    double.add_installation(INSTALL, APP_ID, "acme", ["widgets"], {"contents": "read"})
    async with double:
        status, reply = await Api(double, http, app_key, clock).mint()
    assert status == 201, reply
    assert reply["expires_at"] == "2023-11-14T22:14:20Z"
    assert double.issued[0].expires_at == START + 60


# -- minting: the JWT ---------------------------------------------------------------------


async def test_missing_user_agent_is_403(api: GitHubApiDouble, tls: TestTLS) -> None:
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx), skip_auto_headers=["User-Agent"]
        ) as bare,
        bare.post(f"{api.url}/app/installations/{INSTALL}/access_tokens") as resp,
    ):
        assert resp.status == 403
        assert (await resp.json())["message"] == MSG_UA
    assert api.requests[-1].status == 403
    assert api.requests[-1].message == MSG_UA


async def test_missing_authorization_is_401(client: Api) -> None:
    url = f"{client.double.url}/app/installations/{INSTALL}/access_tokens"
    async with client.http.post(url) as resp:
        assert resp.status == 401
        assert (await resp.json())["message"] == MSG_UNDECODABLE
    assert not client.double.issued


async def test_jwt_with_token_scheme_is_401(client: Api) -> None:
    # GitHub: a JWT must be sent with the Bearer scheme.
    await assert_refused(client, 401, MSG_UNDECODABLE, authorization=f"token {client.jwt()}")


@pytest.mark.parametrize(
    "credential",
    [
        "not-a-jwt",
        "only.two",
        "a.b.c.d",
        "!!!.???.***",
        # base64url of '{"alg":"RS256"}' with padding, which JWTs never carry.
        "eyJhbGciOiJSUzI1NiJ9.e30=.AA",
        # header is not JSON
        b64url(b"not json") + "." + b64url(b"{}") + ".AA",
        # header is JSON but not an object
        b64url(b'["RS256"]') + "." + b64url(b"{}") + ".AA",
        # payload is not JSON
        b64url(b'{"alg":"RS256"}') + "." + b64url(b"{") + ".AA",
        # payload is not UTF-8
        b64url(b'{"alg":"RS256"}') + "." + b64url(b"\xff\xfe") + ".AA",
    ],
    ids=[
        "no-dots",
        "two-parts",
        "four-parts",
        "not-base64",
        "padded",
        "header-not-json",
        "header-not-object",
        "payload-not-json",
        "payload-not-utf8",
    ],
)
async def test_undecodable_jwt_is_401(client: Api, credential: str) -> None:
    await assert_refused(client, 401, MSG_UNDECODABLE, authorization=f"Bearer {credential}")


@pytest.mark.parametrize("alg", ["HS256", "none", "RS512", None])
async def test_jwt_alg_other_than_rs256_is_401(client: Api, alg: str | None) -> None:
    # Correctly RS256-signed, but the header claims another algorithm (or none).
    header = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    jwt = sign_jwt(client.key, claims(client.clock.now), header)
    await assert_refused(client, 401, MSG_UNDECODABLE, authorization=f"Bearer {jwt}")


async def test_jwt_signed_by_another_key_is_401(client: Api, other_key: rsa.RSAPrivateKey) -> None:
    jwt = sign_jwt(other_key, claims(client.clock.now))
    await assert_refused(client, 401, MSG_UNDECODABLE, authorization=f"Bearer {jwt}")


async def test_jwt_with_altered_claims_is_401(client: Api) -> None:
    # Same App, a longer life than was signed for.
    head, _, sig = client.jwt().split(".")
    forged = b64url(json.dumps(claims(client.clock.now, exp=int(START) + 590)).encode())
    await assert_refused(
        client, 401, MSG_UNDECODABLE, authorization=f"Bearer {head}.{forged}.{sig}"
    )


async def test_jwt_without_signature_is_401(client: Api) -> None:
    head, body, _ = client.jwt().split(".")
    await assert_refused(client, 401, MSG_UNDECODABLE, authorization=f"Bearer {head}.{body}.")


async def test_unknown_app_is_401(client: Api) -> None:
    jwt = client.jwt(iss=999)
    await assert_refused(client, 401, "Integration not found", authorization=f"Bearer {jwt}")


async def test_missing_iss_is_401(client: Api) -> None:
    values = claims(client.clock.now)
    del values["iss"]
    jwt = sign_jwt(client.key, values)
    await assert_refused(
        client,
        401,
        "Missing 'issuer' claim ('iss') in assertion",
        authorization=f"Bearer {jwt}",
    )


@pytest.mark.parametrize("iss", ["acme", "12a", 12.5, True, None])
async def test_non_integer_iss_is_401(client: Api, iss: Any) -> None:
    jwt = sign_jwt(client.key, claims(client.clock.now, iss=iss))
    await assert_refused(
        client, 401, "'Issuer' claim ('iss') must be an Integer", authorization=f"Bearer {jwt}"
    )


async def test_iat_more_than_a_minute_ahead_is_401(client: Api) -> None:
    now = int(client.clock.now)
    ok = client.jwt(iat=now + 60, exp=now + 600)
    status, reply = await client.mint(authorization=f"Bearer {ok}")
    assert status == 201, reply  # the minute of clock drift GitHub allows
    early = client.jwt(iat=now + 61, exp=now + 600)
    status, reply = await client.mint(authorization=f"Bearer {early}")
    assert (status, reply["message"]) == (401, MSG_IAT)
    assert len(client.double.issued) == 1


@pytest.mark.parametrize("iat", [None, "1700000000", 1_699_999_940.5])
async def test_iat_missing_or_not_an_integer_is_401(client: Api, iat: Any) -> None:
    values = claims(client.clock.now)
    if iat is None:
        del values["iat"]
    else:
        values["iat"] = iat
    jwt = sign_jwt(client.key, values)
    await assert_refused(client, 401, MSG_IAT, authorization=f"Bearer {jwt}")


async def test_expired_jwt_is_401(client: Api) -> None:
    now = int(client.clock.now)
    status, reply = await client.mint(
        authorization=f"Bearer {client.jwt(iat=now - 599, exp=now + 1)}"
    )
    assert status == 201, reply
    jwt = client.jwt(iat=now - 600, exp=now)
    status, reply = await client.mint(authorization=f"Bearer {jwt}")
    assert (status, reply["message"]) == (401, MSG_EXP)


async def test_jwt_expires_with_the_clock(client: Api) -> None:
    jwt = client.jwt()  # exp = START + 540
    client.clock.now += 540
    await assert_refused(client, 401, MSG_EXP, authorization=f"Bearer {jwt}")


@pytest.mark.parametrize("exp", [None, "1700000540", 1_700_000_540.5])
async def test_exp_missing_or_not_an_integer_is_401(client: Api, exp: Any) -> None:
    values = claims(client.clock.now)
    if exp is None:
        del values["exp"]
    else:
        values["exp"] = exp
    jwt = sign_jwt(client.key, values)
    await assert_refused(client, 401, MSG_EXP, authorization=f"Bearer {jwt}")


async def test_jwt_living_over_ten_minutes_is_401(client: Api) -> None:
    now = int(client.clock.now)
    status, reply = await client.mint(
        authorization=f"Bearer {client.jwt(iat=now - 60, exp=now + 540)}"
    )
    assert status == 201, reply
    # A common mistake: iat backdated a minute, exp ten minutes from now (601 s of life).
    jwt = client.jwt(iat=now - 60, exp=now + 541)
    status, reply = await client.mint(authorization=f"Bearer {jwt}")
    assert (status, reply["message"]) == (401, MSG_TOO_FAR)


async def test_exp_over_ten_minutes_ahead_is_401(client: Api) -> None:
    # 600 s of life, but starting in the (tolerated) future: exp is too far from now.
    now = int(client.clock.now)
    jwt = client.jwt(iat=now + 30, exp=now + 630)
    await assert_refused(client, 401, MSG_TOO_FAR, authorization=f"Bearer {jwt}")


# -- minting: the installation and the requested scope ------------------------------------


async def test_unknown_installation_is_404(client: Api) -> None:
    await assert_refused(client, 404, "Not Found", installation=999)


async def test_another_apps_installation_is_404(client: Api, other_key: rsa.RSAPrivateKey) -> None:
    await assert_refused(client, 404, "Not Found", installation=OTHER_INSTALL)
    # ...which its own App may use.
    jwt = sign_jwt(other_key, claims(client.clock.now, iss=OTHER_APP_ID))
    status, reply = await client.mint(OTHER_INSTALL, authorization=f"Bearer {jwt}")
    assert status == 201, reply
    assert reply["repositories"] == [{"name": "tool", "full_name": "globex/tool"}]


async def test_body_not_json_is_400(client: Api) -> None:
    await assert_refused(client, 400, "Problems parsing JSON", data=b'{"repositories": [')
    assert client.double.requests[-1].body is None


@pytest.mark.parametrize(
    "body",
    [
        ["widgets"],
        "widgets",
        {"repositories": "widgets"},
        {"repositories": ["widgets", 7]},
        {"repositories": None},
        {"permissions": ["contents"]},
        {"permissions": {"contents": "execute"}},
        {"permissions": {"contents": 1}},
        {"repository_ids": [1]},
        {"repositories": [f"r{i}" for i in range(501)]},
    ],
    ids=[
        "array",
        "string",
        "repositories-string",
        "repositories-non-string",
        "repositories-null",
        "permissions-array",
        "permissions-bad-level",
        "permissions-non-string",
        "repository-ids",
        "over-500-repositories",
    ],
)
async def test_body_of_wrong_shape_is_422(client: Api, body: Any) -> None:
    await assert_refused(client, 422, "Invalid request.", body=body)
    assert client.double.requests[-1].body == body


@pytest.mark.parametrize(
    "repositories",
    [["nope"], ["widgets", "nope"], ["acme/widgets"], ["Widgets"], ["tool"]],
)
async def test_repository_outside_installation_is_422(client: Api, repositories: list[str]) -> None:
    await assert_refused(client, 422, MSG_REPOS, body={"repositories": repositories})


@pytest.mark.parametrize(
    "permissions",
    [
        {"administration": "read"},
        {"contents": "admin"},
        {"issues": "write"},
        {"contents": "read", "pull_requests": "read"},
    ],
)
async def test_permission_not_granted_is_422(client: Api, permissions: dict[str, str]) -> None:
    await assert_refused(client, 422, MSG_PERMS, body={"permissions": permissions})


async def test_token_scoped_to_requested_repositories_and_permissions(
    client: Api, api: GitHubApiDouble
) -> None:
    body = {
        "repositories": ["gadgets", "widgets", "gadgets"],
        "permissions": {"contents": "read", "metadata": "read"},
    }
    status, reply = await client.mint(body=body)
    assert status == 201, reply
    assert reply["repositories"] == [
        {"name": "gadgets", "full_name": "acme/gadgets"},
        {"name": "widgets", "full_name": "acme/widgets"},
    ]
    assert reply["permissions"] == {"contents": "read", "metadata": "read"}
    [issued] = api.issued
    assert issued.repositories == frozenset({"gadgets", "widgets"})
    assert issued.permissions == {"contents": "read", "metadata": "read"}
    assert api.requests[-1].body == body
    assert api.check_token(issued.token, "acme", "widgets", write=False) is None
    assert api.check_token(issued.token, "acme", "secret", write=False) == "not_found"
    assert api.check_token(issued.token, "acme", "widgets", write=True) == "write_denied"


async def test_metadata_read_is_always_included(client: Api, api: GitHubApiDouble) -> None:
    status, reply = await client.mint(body={"permissions": {"contents": "write"}})
    assert status == 201, reply
    assert reply["permissions"] == {"contents": "write", "metadata": "read"}
    assert api.issued[0].permissions == {"contents": "write", "metadata": "read"}


@pytest.mark.parametrize(
    "body", [None, {}, {"repositories": []}, {"permissions": {}}], ids=["none", "{}", "[]", "{}p"]
)
async def test_unscoped_request_gets_the_whole_installation(
    client: Api, api: GitHubApiDouble, body: Any
) -> None:
    # Including an empty list of repositories: GitHub then grants them all, so a client
    # must never send one when it means "none".
    status, reply = await client.mint(body=body)
    assert status == 201, reply
    [issued] = api.issued
    assert issued.repositories == frozenset({"widgets", "gadgets", "secret"})
    assert issued.permissions == {"contents": "write", "metadata": "read", "issues": "read"}


# -- check_token, revocation, expiry ------------------------------------------------------


async def test_check_token_reasons(client: Api, api: GitHubApiDouble) -> None:
    read = await client.token({"repositories": ["widgets"], "permissions": {"contents": "read"}})
    write = await client.token({"repositories": ["widgets"], "permissions": {"contents": "write"}})
    meta = await client.token({"repositories": ["widgets"], "permissions": {"metadata": "read"}})

    assert api.check_token(read, "acme", "widgets", write=False) is None
    assert api.check_token(read, "acme", "widgets", write=True) == "write_denied"
    assert api.check_token(write, "acme", "widgets", write=True) is None
    assert api.check_token(read, "acme", "gadgets", write=False) == "not_found"
    assert api.check_token(read, "globex", "widgets", write=False) == "not_found"
    # Without contents access a private repository is invisible, as on GitHub.
    assert api.check_token(meta, "acme", "widgets", write=False) == "not_found"
    assert api.check_token("ghs_" + "x" * 36, "acme", "widgets", write=False) == "bad_credentials"
    assert api.check_token("", "acme", "widgets", write=False) == "bad_credentials"


async def test_revoke_token(client: Api, api: GitHubApiDouble) -> None:
    token = await client.token()
    other = await client.token()
    assert await client.revoke(f"token {token}") == (204, "")
    assert api.issued[0].revoked
    assert api.check_token(token, "acme", "widgets", write=False) == "bad_credentials"
    assert await client.revoke(f"token {token}") == (401, "Bad credentials")
    # Only that token.
    assert not api.issued[1].revoked
    assert api.check_token(other, "acme", "widgets", write=False) is None
    assert [(r.method, r.path, r.status) for r in api.requests[-2:]] == [
        ("DELETE", "/installation/token", 204),
        ("DELETE", "/installation/token", 401),
    ]


async def test_revoke_accepts_bearer_scheme(client: Api, api: GitHubApiDouble) -> None:
    token = await client.token()
    assert await client.revoke(f"Bearer {token}") == (204, "")
    assert api.check_token(token, "acme", "widgets", write=False) == "bad_credentials"


@pytest.mark.parametrize(
    "authorization",
    ["token ghs_" + "y" * 36, "Basic Zm9vOmJhcg==", "token", "JWT"],
)
async def test_revoke_with_bad_credentials_is_401(
    client: Api, api: GitHubApiDouble, authorization: str
) -> None:
    token = await client.token()
    assert await client.revoke(authorization) == (401, "Bad credentials")
    assert api.check_token(token, "acme", "widgets", write=False) is None


async def test_revoke_with_the_app_jwt_is_401(client: Api, api: GitHubApiDouble) -> None:
    token = await client.token()
    assert await client.revoke(f"Bearer {client.jwt()}") == (401, "Bad credentials")
    assert not api.issued[0].revoked
    assert api.check_token(token, "acme", "widgets", write=False) is None


async def test_revoke_without_credentials_is_401(client: Api) -> None:
    assert await client.revoke(None) == (401, "Requires authentication")


async def test_token_expires_with_the_clock(client: Api, api: GitHubApiDouble) -> None:
    token = await client.token()
    client.clock.now = START + 3599
    assert api.check_token(token, "acme", "widgets", write=True) is None
    client.clock.now = START + 3600
    assert api.check_token(token, "acme", "widgets", write=False) == "bad_credentials"
    assert await client.revoke(f"token {token}") == (401, "Bad credentials")


# -- everything else ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/app/installations/{INSTALL}/access_tokens"),
        ("POST", f"/app/installations/{INSTALL}/access_tokens/"),
        ("POST", "/app/installations/abc/access_tokens"),
        ("GET", "/installation/token"),
        ("GET", "/app"),
        ("GET", "/"),
    ],
)
async def test_other_endpoints_are_404(
    client: Api, api: GitHubApiDouble, method: str, path: str
) -> None:
    headers = {"Authorization": f"Bearer {client.jwt()}"}
    async with client.http.request(method, api.url + path, headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["message"] == "Not Found"
    assert not api.issued
    assert (api.requests[-1].method, api.requests[-1].status) == (method, 404)


def test_registration_rejects_bad_input(tls: TestTLS, app_key: rsa.RSAPrivateKey) -> None:
    double = GitHubApiDouble(tls)
    with pytest.raises(ValueError, match="not registered"):
        double.add_installation(1, APP_ID, "acme", ["widgets"], {"contents": "read"})
    double.register_app(APP_ID, public_pem(app_key))
    with pytest.raises(ValueError, match="level"):
        double.add_installation(1, APP_ID, "acme", ["widgets"], {"contents": "all"})
    with pytest.raises(ValueError, match="repository name"):
        double.add_installation(1, APP_ID, "acme", ["acme/widgets"], {"contents": "read"})


# -- the git upstream with installation tokens ---------------------------------------------


@dataclass
class Git:
    """The real git client against the upstream, trusting only the test CA."""

    upstream: GitUpstream
    tls: TestTLS
    home: Path
    cwd: Path

    async def run(self, *args: str, token: str | None, cwd: Path | None = None) -> tuple[int, str]:
        cmd = ["git", "-c", f"http.sslCAInfo={self.tls.ca_cert}"]
        if token is not None:
            cmd += ["-c", f"http.extraHeader=Authorization: {basic_auth_header(token)}"]
        # git_env drops GIT_SSL_CAINFO, SSL_CERT_FILE, proxies, ... from this environment.
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            *args,
            cwd=cwd or self.cwd,
            env=git_env(self.home),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def clone(self, repo: str, dest: str, token: str) -> tuple[int, str]:
        url = self.upstream.repo_url("acme", repo)
        return await self.run("clone", "-q", url, str(self.cwd / dest), token=token)

    async def commit(self, clone: Path) -> str:
        rc, out = await self.run(
            "commit", "-q", "--allow-empty", "-m", "change", token=None, cwd=clone
        )
        assert rc == 0, out
        return rev_parse(clone / ".git", "HEAD", self.home)


def rev_parse(git_dir: Path, rev: str, home: Path) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-parse", rev],
        env=git_env(home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
async def upstream(
    tmp_path: Path, tls: TestTLS, api: GitHubApiDouble
) -> AsyncIterator[GitUpstream]:
    root = tmp_path / "repos"
    for name in ("widgets", "gadgets", "secret"):
        create_bare_repo(root, "acme", name)
    token_file = tmp_path / "token"
    token_file.write_text(FILE_TOKEN + "\n")
    async with GitUpstream(root, token_file, tls, token_check=api.check_token) as up:
        yield up


@pytest.fixture
def git(tmp_path: Path, upstream: GitUpstream, tls: TestTLS) -> Git:
    work = tmp_path / "work"
    work.mkdir()
    return Git(upstream, tls, tmp_path / "home", work)


def statuses(upstream: GitUpstream) -> list[tuple[str, int]]:
    return [(r.path + ("?" + r.query if r.query else ""), r.status) for r in upstream.requests]


async def read_token(client: Api, repo: str = "widgets") -> str:
    return await client.token({"repositories": [repo], "permissions": {"contents": "read"}})


async def test_git_clone_of_the_scoped_repository(
    client: Api, git: Git, upstream: GitUpstream
) -> None:
    token = await read_token(client)
    rc, out = await git.clone("widgets", "w", token)
    assert rc == 0, out
    assert (git.cwd / "w" / "README.md").read_text() == "# acme/widgets\n"
    assert upstream.requests
    assert all(
        r.status == 200 and r.authorization_ok and r.token_kind == "installation"
        for r in upstream.requests
    )


async def test_git_clone_of_another_repository_is_not_found(
    client: Api, git: Git, upstream: GitUpstream
) -> None:
    token = await read_token(client)
    rc, out = await git.clone("gadgets", "g", token)
    assert rc != 0
    assert "Repository not found." in out
    assert statuses(upstream) == [("/acme/gadgets.git/info/refs?service=git-upload-pack", 404)]
    # The token was good; the repository is what it may not see.
    assert upstream.requests[0].token_kind == "installation"


async def test_git_push_with_a_read_token_is_403(
    client: Api, git: Git, upstream: GitUpstream
) -> None:
    token = await read_token(client)
    rc, out = await git.clone("widgets", "w", token)
    assert rc == 0, out
    before = rev_parse(upstream.root / "acme" / "widgets.git", "main", git.home)
    await git.commit(git.cwd / "w")
    rc, out = await git.run("push", "-q", "origin", "main", token=token, cwd=git.cwd / "w")
    assert rc != 0
    assert "Write access to repository not granted." in out
    assert statuses(upstream)[-1] == ("/acme/widgets.git/info/refs?service=git-receive-pack", 403)
    assert rev_parse(upstream.root / "acme" / "widgets.git", "main", git.home) == before


async def test_receive_pack_post_with_a_read_token_is_403(
    client: Api, upstream: GitUpstream, http: aiohttp.ClientSession
) -> None:
    token = await read_token(client)
    async with http.post(
        f"{upstream.repo_url('acme', 'widgets')}/git-receive-pack",
        data=b"0000",
        headers={
            "Authorization": basic_auth_header(token),
            "Content-Type": "application/x-git-receive-pack-request",
        },
    ) as resp:
        assert resp.status == 403
        assert await resp.text() == "Write access to repository not granted.\n"
    # ...while upload-pack, a read, reaches git.
    async with http.post(
        f"{upstream.repo_url('acme', 'widgets')}/git-upload-pack",
        data=b"0000",
        headers={
            "Authorization": basic_auth_header(token),
            "Content-Type": "application/x-git-upload-pack-request",
        },
    ) as resp:
        assert resp.status == 200


async def test_git_push_with_a_write_token(client: Api, git: Git, upstream: GitUpstream) -> None:
    token = await client.token({"repositories": ["widgets"], "permissions": {"contents": "write"}})
    rc, out = await git.clone("widgets", "w", token)
    assert rc == 0, out
    head = await git.commit(git.cwd / "w")
    rc, out = await git.run("push", "-q", "origin", "main", token=token, cwd=git.cwd / "w")
    assert rc == 0, out
    assert rev_parse(upstream.root / "acme" / "widgets.git", "main", git.home) == head
    assert statuses(upstream)[-1] == ("/acme/widgets.git/git-receive-pack", 200)


async def test_git_with_a_revoked_token_is_401(
    client: Api, git: Git, upstream: GitUpstream
) -> None:
    token = await read_token(client)
    assert await client.revoke(f"token {token}") == (204, "")
    rc, _ = await git.clone("widgets", "w", token)
    assert rc != 0
    assert upstream.requests
    assert all(r.status == 401 and not r.authorization_ok for r in upstream.requests)
    assert all(r.token_kind is None for r in upstream.requests)


async def test_git_with_an_expired_token_is_401(
    client: Api, git: Git, upstream: GitUpstream
) -> None:
    token = await read_token(client)
    client.clock.now += 3600
    rc, _ = await git.clone("widgets", "w", token)
    assert rc != 0
    assert {r.status for r in upstream.requests} == {401}


async def test_installation_token_needs_the_x_access_token_user(
    client: Api, upstream: GitUpstream, http: aiohttp.ClientSession
) -> None:
    token = await read_token(client)
    url = f"{upstream.repo_url('acme', 'widgets')}/info/refs?service=git-upload-pack"
    good = {"Authorization": basic_auth_header(token)}
    async with http.get(url, headers=good) as resp:
        assert resp.status == 200
    bad_user = "Basic " + base64.b64encode(f"someone:{token}".encode()).decode()
    async with http.get(url, headers={"Authorization": bad_user}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="GitHub"'


async def test_token_file_still_works_alongside(git: Git, upstream: GitUpstream) -> None:
    rc, out = await git.clone("secret", "s", FILE_TOKEN)
    assert rc == 0, out
    assert upstream.requests
    assert all(r.token_kind == "file" and r.authorization_ok for r in upstream.requests)


async def test_without_token_check_installation_tokens_are_401(
    client: Api, tmp_path: Path, tls: TestTLS, http: aiohttp.ClientSession
) -> None:
    token = await read_token(client)
    root = tmp_path / "plain"
    create_bare_repo(root, "acme", "widgets")
    token_file = tmp_path / "plain-token"
    token_file.write_text(FILE_TOKEN)
    async with GitUpstream(root, token_file, tls) as plain:
        url = f"{plain.repo_url('acme', 'widgets')}/info/refs?service=git-upload-pack"
        async with http.get(url, headers={"Authorization": basic_auth_header(token)}) as resp:
            assert resp.status == 401
        async with http.get(url, headers={"Authorization": basic_auth_header(FILE_TOKEN)}) as r:
            assert r.status == 200
    assert [r.token_kind for r in plain.requests] == [None, "file"]


async def test_redirect_follows_the_token_to_the_new_name(
    client: Api, upstream: GitUpstream, http: aiohttp.ClientSession
) -> None:
    # "acme/old" was renamed to "acme/widgets"; the token is scoped to the repository.
    upstream.add_redirect("acme/old", "acme/widgets")
    url = f"{upstream.url}/acme/old.git/info/refs?service=git-upload-pack"
    scoped = {"Authorization": basic_auth_header(await read_token(client, "widgets"))}
    async with http.get(url, headers=scoped, allow_redirects=False) as resp:
        assert resp.status == 301
    elsewhere = {"Authorization": basic_auth_header(await read_token(client, "gadgets"))}
    async with http.get(url, headers=elsewhere, allow_redirects=False) as resp:
        assert resp.status == 404
        assert await resp.text() == "Repository not found.\n"


async def test_unknown_token_check_reason_fails_closed(
    tmp_path: Path, tls: TestTLS, http: aiohttp.ClientSession
) -> None:
    root = tmp_path / "odd"
    create_bare_repo(root, "acme", "widgets")
    token_file = tmp_path / "odd-token"
    token_file.write_text(FILE_TOKEN)

    def confused(token: str, owner: str, repo: str, write: bool) -> str | None:
        return "maybe"

    async with GitUpstream(root, token_file, tls, token_check=confused) as up:
        url = f"{up.repo_url('acme', 'widgets')}/info/refs?service=git-upload-pack"
        auth = {"Authorization": basic_auth_header("ghs_" + "z" * 36)}
        async with http.get(url, headers=auth) as resp:
            assert resp.status == 500
