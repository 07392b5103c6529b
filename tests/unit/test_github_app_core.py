"""core/github_app.py: the App JWT, token scopes from grants, and GitHub's answer. No network."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from airlock.core.github_app import (
    JWT_MAX_LIFETIME,
    AppToken,
    AppTokenError,
    TokenScope,
    app_jwt,
    parse_token_response,
    scope_for,
    scopes_for,
    token_request_body,
)
from airlock.core.grants import Access, Grant

HOST = "github.com"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _part(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_jwt_is_rs256_signed_by_the_app_key_and_short_lived(key: rsa.RSAPrivateKey) -> None:
    token = app_jwt(4242, key, now=1_700_000_000.7)
    header_b64, payload_b64, sig_b64 = token.split(".")
    assert "=" not in token  # base64url without padding, as JWTs are
    assert json.loads(_part(header_b64)) == {"alg": "RS256", "typ": "JWT"}
    claims = json.loads(_part(payload_b64))
    assert claims["iss"] == "4242"
    # Backdated against clock drift, never in the future, within GitHub's ten minutes.
    assert claims["iat"] <= 1_700_000_000
    assert claims["exp"] > 1_700_000_000
    assert claims["exp"] - claims["iat"] <= JWT_MAX_LIFETIME
    key.public_key().verify(
        _part(sig_b64),
        f"{header_b64}.{payload_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidSignature):
        other.public_key().verify(
            _part(sig_b64),
            f"{header_b64}.{payload_b64}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )


def _g(owner: str, repo: str, access: Access, host: str = HOST) -> Grant:
    return Grant(host=host, owner=owner, repo=repo, access=access)


def test_scopes_split_by_owner_and_access() -> None:
    grants = (
        _g("Acme", "App", Access.WRITE),
        _g("acme", "lib", Access.READ),
        _g("acme", "docs", Access.READ),
        _g("other", "tool", Access.READ),
        _g("acme", "ghe-only", Access.WRITE, host="ghe.example.com"),
    )
    scopes = scopes_for(grants, HOST)
    assert {k: s.repos for k, s in scopes.items()} == {
        (HOST, "acme", "write"): ("app",),
        (HOST, "acme", "read"): ("docs", "lib"),
        (HOST, "other", "read"): ("tool",),
    }
    assert scopes_for(grants, "ghe.example.com")[("ghe.example.com", "acme", "write")].repos == (
        "ghe-only",
    )


def test_a_repository_granted_both_ways_is_only_in_the_write_token() -> None:
    grants = (_g("acme", "app", Access.READ), _g("acme", "APP", Access.WRITE))
    scopes = scopes_for(grants, HOST)
    assert list(scopes) == [(HOST, "acme", "write")]
    scope = scope_for(grants, HOST, "ACME", "app")
    assert scope is not None and scope.access is Access.WRITE


def test_scope_for_an_ungranted_repository_is_none() -> None:
    grants = (_g("acme", "app", Access.WRITE),)
    assert scope_for(grants, HOST, "acme", "other") is None
    assert scope_for(grants, HOST, "evil", "app") is None
    assert scope_for(grants, "ghe.example.com", "acme", "app") is None


def test_token_request_asks_for_contents_and_metadata_only() -> None:
    grants = (_g("acme", "lib", Access.READ), _g("acme", "app", Access.WRITE))
    bodies = [token_request_body(s) for s in scopes_for(grants, HOST).values()]
    assert sorted(json.dumps(b, sort_keys=True) for b in bodies) == sorted(
        [
            json.dumps(
                {
                    "permissions": {
                        "contents": "read",
                        "metadata": "read",
                        "pull_requests": "read",
                    },
                    "repositories": ["lib"],
                },
                sort_keys=True,
            ),
            json.dumps(
                {
                    "permissions": {
                        "contents": "write",
                        "metadata": "read",
                        "pull_requests": "write",
                    },
                    "repositories": ["app"],
                },
                sort_keys=True,
            ),
        ]
    )


def test_an_empty_scope_is_never_requested() -> None:
    """GitHub mints a token for ALL the installation's repositories when the list is empty."""
    empty = TokenScope(host=HOST, owner="acme", access=Access.READ, repos=())
    with pytest.raises(ValueError, match="at least one repository"):
        token_request_body(empty)


names = st.sampled_from(["a", "b", "c", "A", "B"])


@given(
    st.lists(
        st.tuples(names, names, st.sampled_from([Access.READ, Access.WRITE]), st.booleans()),
        max_size=12,
    )
)
def test_every_granted_repository_has_exactly_one_scope_at_its_strongest_access(
    raw: list[tuple[str, str, Access, bool]],
) -> None:
    grants = tuple(
        _g(owner, repo, access, host=HOST if here else "ghe.example.com")
        for owner, repo, access, here in raw
    )
    scopes = scopes_for(grants, HOST).values()
    covered = [(s.owner, r, s.access) for s in scopes for r in s.repos]
    # No repository twice, nothing that is not granted on this host.
    assert len(covered) == len({(o, r) for o, r, _ in covered})
    granted: dict[tuple[str, str], Access] = {}
    for g in grants:
        if g.host == HOST:
            k = (g.owner.lower(), g.repo.lower())
            granted[k] = Access.WRITE if Access.WRITE in (g.access, granted.get(k)) else g.access
    assert {(o, r): a for o, r, a in covered} == granted


def test_parse_token_response_success() -> None:
    body = json.dumps({"token": "ghs_" + "a" * 36, "expires_at": "2026-11-28T04:00:00Z"}).encode()
    t = parse_token_response(201, body)
    assert t.token == "ghs_" + "a" * 36
    assert t.expires_at == 1795838400.0
    assert "ghs_" not in repr(t)
    assert t.fresh(t.expires_at - 601) and not t.fresh(t.expires_at - 599)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (422, b'{"message": "The permissions requested are not granted"}', "HTTP 422: The perm"),
        (401, b"<html>bad gateway</html>", "HTTP 401: <html>"),
        (201, b"[]", "not a JSON object"),
        (201, b'{"expires_at": "2026-11-28T04:00:00Z"}', "no usable token"),
        (201, b'{"token": "ghs_ x", "expires_at": "2026-11-28T04:00:00Z"}', "no usable token"),
        (201, b'{"token": "ghs_' + b"a" * 36 + b'"}', "no expires_at"),
        (201, b'{"token": "ghs_' + b"a" * 36 + b'", "expires_at": "soon"}', "is not YYYY"),
    ],
)
def test_parse_token_response_refusals(status: int, body: bytes, message: str) -> None:
    with pytest.raises(AppTokenError, match=message):
        parse_token_response(status, body)


def test_app_token_repr_hides_the_secret() -> None:
    assert "secret" not in repr(AppToken(token="ghs_secret" + "x" * 30, expires_at=1.0))
