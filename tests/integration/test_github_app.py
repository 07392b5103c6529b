"""GitHub App credentials end to end: the real gateway mints per-session installation tokens
at a GitHub API double (testing/github_api.py, which checks the JWT, installation, repositories
and permissions as GitHub does), and the git upstream accepts only what each token covers.

The gateway is given no token file here: every successful git request below went upstream
with an installation token minted for that session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from airlock.core.github_app import REFRESH_MARGIN
from airlock.testing.github_api import GitHubApiDouble, IssuedToken
from airlock.testing.upstream import GitUpstream
from tests.world import HOST, World, run_gateway_cli

APP_ID = 4242
ACME = 77  # installation on account "acme": app, lib, secret; contents write
OTHER = 88  # installation on account "other": tool; contents read only


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class AppWorld(World):
    """World whose upstream credential is a GitHub App instead of a token file."""

    def __init__(self, root: Path, *, token_lifetime: float = 3600.0) -> None:
        super().__init__(root)
        self.app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_file = root / "secrets" / "app.pem"
        self.key_file.write_bytes(_pem(self.app_key))
        os.chmod(self.key_file, 0o600)
        self.api = GitHubApiDouble(self.tls, token_lifetime=token_lifetime)
        self.api.register_app(
            APP_ID,
            self.app_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        self.api.add_installation(
            ACME,
            APP_ID,
            "acme",
            ["app", "lib", "secret"],
            {"contents": "write", "metadata": "read", "pull_requests": "write"},
        )
        self.api.add_installation(
            OTHER,
            APP_ID,
            "other",
            ["tool"],
            {"contents": "read", "metadata": "read", "pull_requests": "read"},
        )
        # The upstream knows the token file's token too, but the gateway is never given it.
        self.upstream = GitUpstream(
            self.repos, self.token_file, self.tls, token_check=self.api.check_token
        )

    def upstream_credential(self) -> str:
        return f"""
[upstream.app]
app_id = {APP_ID}
private_key_file = "{self.key_file}"
installations = {{ Acme = {ACME}, other = {OTHER}, nobody-here = 99 }}
api_url = "{self.api.url}"
ca_file = "{self.tls.ca_cert}"
revoke_interval = 1
"""

    def start(self) -> None:
        self.loop.run(self.api.start())
        super().start()

    def stop(self) -> None:
        if self.proc is not None:
            self.stop_gateway()  # first: stopping revokes tokens at the API double
        self.loop.run(self.api.stop())
        super().stop()


def _make_world(root: Path, **kw: Any) -> AppWorld:
    root.mkdir(exist_ok=True)
    w = AppWorld(root, **kw)
    for name in ("app", "lib", "secret"):
        w.make_repo("acme", name)
    w.make_repo("other", "tool")
    w.start()
    return w


@pytest.fixture(scope="module")
def appworld(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppWorld]:
    w = _make_world(tmp_path_factory.mktemp("appworld"))
    yield w
    w.stop()


def _minted(w: World, session_id: str) -> list[dict[str, Any]]:
    return [e for e in w.audit_for(session_id) if e.get("event") == "app_token_minted"]


def _tokens_since(w: AppWorld, n: int) -> list[IssuedToken]:
    return w.api.issued[n:]


def _wait(cond: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_each_access_level_gets_its_own_token_scoped_to_its_repositories(
    appworld: AppWorld, tmp_path: Path
) -> None:
    w = appworld
    n = len(w.api.issued)
    seen = len(w.upstream.requests)
    b = w.session(f"{HOST}/acme/app:write=app-token", f"{HOST}/acme/lib:read")
    assert w.clone(b, "acme/app", tmp_path / "app").returncode == 0
    assert w.clone(b, "acme/lib", tmp_path / "lib").returncode == 0
    work = tmp_path / "app"
    w.git(b, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--allow-empty", "-m", "x",
          cwd=work, check=True)  # fmt: skip
    push = w.git(b, "push", "origin", "HEAD:refs/heads/app-token", cwd=work)
    assert push.returncode == 0, push.stderr

    upstream = w.upstream.requests[seen:]
    assert upstream and {r.token_kind for r in upstream} == {"installation"}
    tokens = _tokens_since(w, n)
    # One token per (owner, access), minted once and reused by every request after.
    assert len(tokens) == 2, tokens
    by_repos = {t.repositories: t for t in tokens}
    assert by_repos.keys() == {frozenset({"app"}), frozenset({"lib"})}
    assert by_repos[frozenset({"app"})].permissions == {
        "contents": "write",
        "metadata": "read",
        "pull_requests": "write",
    }
    assert by_repos[frozenset({"lib"})].permissions == {
        "contents": "read",
        "metadata": "read",
        "pull_requests": "read",
    }
    assert all(t.installation_id == ACME for t in tokens)
    assert len(_minted(w, b.session_id)) == 2

    # What GitHub would do with these tokens if the gateway ever sent one astray.
    read_tok = by_repos[frozenset({"lib"})].token
    write_tok = by_repos[frozenset({"app"})].token
    assert w.api.check_token(read_tok, "acme", "lib", write=True) == "write_denied"
    assert w.api.check_token(read_tok, "acme", "secret", write=False) == "not_found"
    assert w.api.check_token(write_tok, "acme", "lib", write=False) == "not_found"
    assert w.api.check_token(write_tok, "other", "tool", write=False) == "not_found"


def test_two_sessions_never_share_a_token(appworld: AppWorld, tmp_path: Path) -> None:
    w = appworld
    n = len(w.api.issued)
    b1 = w.session(f"{HOST}/acme/app:read")
    b2 = w.session(f"{HOST}/acme/app:read")
    assert w.clone(b1, "acme/app", tmp_path / "one").returncode == 0
    assert w.clone(b2, "acme/app", tmp_path / "two").returncode == 0
    tokens = _tokens_since(w, n)
    assert len(tokens) == 2 and tokens[0].token != tokens[1].token


def test_minted_tokens_never_reach_the_log_or_the_client(
    appworld: AppWorld, tmp_path: Path
) -> None:
    w = appworld
    n = len(w.api.issued)
    b = w.session(f"{HOST}/acme/lib:read")
    r = w.clone(b, "acme/lib", tmp_path / "lib")
    assert r.returncode == 0
    tokens = [t.token for t in _tokens_since(w, n)]
    assert tokens
    texts = [w.audit_log.read_text(), w.gateway_log.read_text(), r.stdout, r.stderr]
    for path in (w.state_dir).rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    for tok in tokens:
        assert not any(tok in t for t in texts)


def test_an_ended_session_has_its_tokens_revoked_at_github(
    appworld: AppWorld, tmp_path: Path
) -> None:
    w = appworld
    n = len(w.api.issued)
    b = w.session(f"{HOST}/acme/app:read")
    keep = w.session(f"{HOST}/acme/app:read")
    assert w.clone(b, "acme/app", tmp_path / "a").returncode == 0
    assert w.clone(keep, "acme/app", tmp_path / "b").returncode == 0
    mine, other = _tokens_since(w, n)
    w.control.revoke(b.session_id, "test")
    assert _wait(lambda: mine.revoked), "the ended session's token was not revoked"
    assert not other.revoked, "another session's token was revoked too"
    assert w.api.check_token(mine.token, "acme", "app", write=False) == "bad_credentials"
    revoked = [e for e in w.audit_for(b.session_id) if e.get("event") == "app_token_revoked"]
    assert revoked and revoked[0]["status"] == 204


def test_an_owner_without_an_installation_fails_closed(appworld: AppWorld, tmp_path: Path) -> None:
    """Grant on an account the App is installed on (per GitHub) but not named in the gateway's
    config: no token, no upstream request, a 502 to git, the reason in the audit log."""
    w = appworld
    w.make_repo("unlisted", "repo")
    w.api.add_installation(
        100, APP_ID, "unlisted", ["repo"], {"contents": "read", "metadata": "read"}
    )
    n = len(w.api.issued)
    upstream_before = len(w.upstream.requests)
    b = w.session(f"{HOST}/unlisted/repo:read")
    r = w.clone(b, "unlisted/repo", tmp_path / "x")
    assert r.returncode != 0
    assert "502" in r.stderr
    assert len(w.api.issued) == n
    assert len(w.upstream.requests) == upstream_before
    reasons = [e.get("reason", "") for e in w.audit_for(b.session_id)]
    assert any("no App installation is configured for owner unlisted" in x for x in reasons)


def test_github_refusing_the_scope_fails_the_request_with_its_message(
    appworld: AppWorld, tmp_path: Path
) -> None:
    """The "other" installation holds contents:read only; a write grant there cannot get a
    token: GitHub's 422 ends the request, and its message is in the audit log."""
    w = appworld
    n = len(w.api.issued)
    b = w.session(f"{HOST}/other/tool:write")
    r = w.clone(b, "other/tool", tmp_path / "tool")
    assert r.returncode != 0
    assert len(w.api.issued) == n
    refused = [e for e in w.audit_for(b.session_id) if e.get("event") == "app_token_refused"]
    assert refused
    assert "The permissions requested are not granted to this installation." in refused[0]["error"]


def test_a_token_near_its_expiry_is_replaced(tmp_path: Path) -> None:
    lifetime = REFRESH_MARGIN + 4  # fresh for 4 s after it is minted
    w = _make_world(tmp_path / "w", token_lifetime=lifetime)
    try:
        b = w.session(f"{HOST}/acme/app:read")
        assert w.clone(b, "acme/app", tmp_path / "a").returncode == 0
        assert len(w.api.issued) == 1
        time.sleep(5)
        fetch = w.git(b, "fetch", "origin", cwd=tmp_path / "a")
        assert fetch.returncode == 0, fetch.stderr
        assert len(w.api.issued) == 2
        # The old one is left to expire: a request may still be using it.
        assert not w.api.issued[0].revoked
    finally:
        w.stop()


def test_stopping_the_gateway_revokes_every_token(tmp_path: Path) -> None:
    w = _make_world(tmp_path / "w")
    try:
        b = w.session(f"{HOST}/acme/app:read", f"{HOST}/acme/lib:write")
        assert w.clone(b, "acme/app", tmp_path / "a").returncode == 0
        assert w.clone(b, "acme/lib", tmp_path / "b").returncode == 0
        assert len(w.api.issued) == 2
        assert w.stop_gateway() == 0
        assert all(t.revoked for t in w.api.issued)
    finally:
        w.stop()


# ------------------------------------------------------------------------ start-up refusals


def _app_config(tmp: Path, key: bytes, mode: int = 0o600, extra: str = "") -> Path:
    key_file = tmp / "app.pem"
    key_file.write_bytes(key)
    os.chmod(key_file, mode)
    cfg = tmp / "airlock.toml"
    cfg.write_text(f"""
[gateway]
state_dir = "{tmp / "state"}"
control_socket = "{tmp / "run" / "control.sock"}"
git_listen = "127.0.0.1:1"

[[upstream]]
host = "github.com"
url = "https://127.0.0.1:9"
{extra}
[upstream.app]
app_id = 1
private_key_file = "{key_file}"
installations = {{ acme = 2 }}
api_url = "https://127.0.0.1:9"
""")
    return cfg


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("loose_mode", "chmod 600"),
        ("ec_key", "GitHub App keys are RSA keys"),
        ("garbage", "not a PEM private key"),
        ("both_credentials", "give exactly one of token_file or [upstream.app]"),
    ],
)
def test_gateway_refuses_a_bad_app_setup(
    tmp_path: Path, rsa_pem: bytes, case: str, expected: str
) -> None:
    key, mode, extra = rsa_pem, 0o600, ""
    if case == "loose_mode":
        mode = 0o644
    elif case == "ec_key":
        key = _pem(ec.generate_private_key(ec.SECP256R1()))
    elif case == "garbage":
        key = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    elif case == "both_credentials":
        tok = tmp_path / "token"
        tok.write_text("ghs_abcdefghijklmnopqrstuvwxyz012345\n")
        os.chmod(tok, 0o600)
        extra = f'token_file = "{tok}"\n'
    r = run_gateway_cli(_app_config(tmp_path, key, mode, extra))
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert "BEGIN" not in r.stderr
    assert not (tmp_path / "state").exists(), "nothing may be created before the checks pass"
