"""The API relay with a GitHub App: the session's own installation token goes upstream.

The gateway mints, per session and owner, an installation token limited to the session's
repositories, with ``contents`` and ``pull_requests`` at the grant's level and nothing
else; the double (which minted it) checks that token on every API call, so a pull request
opens only because that token may open it. The token file's token is never used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from airlock.testing.github_api import GitHubApiDouble
from airlock.testing.ports import free_port
from airlock.testing.upstream import GitUpstream
from tests.github_cli import GH, bound_sandbox_env, clone_and_push, run
from tests.world import HOST, World

pytestmark = pytest.mark.skipif(not Path(GH).exists(), reason="needs Debian's gh at /usr/bin/gh")

APP_ID = 9191
INSTALL = 616
LISTEN = "127.0.0.84"
PROXY_PORT = free_port()
OWNER = "octo"


class AppApiWorld(World):
    def __init__(self, root: Path) -> None:
        super().__init__(root, gateway_extra=f"dns_port = {free_port()}\n")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_file = root / "secrets" / "app.pem"
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(self.key_file, 0o600)
        self.api = GitHubApiDouble(self.tls, repos_root=self.repos)
        self.api.register_app(
            APP_ID,
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            slug="airlock-test",
        )
        self.upstream = GitUpstream(
            self.repos, self.token_file, self.tls, token_check=self.api.check_token
        )
        self.config_extra = f"[sandbox]\nproxy_port = {PROXY_PORT}\n"

    def upstream_credential(self) -> str:
        return f"""
[upstream.app]
app_id = {APP_ID}
private_key_file = "{self.key_file}"
installations = {{ {OWNER} = {INSTALL} }}
api_url = "{self.api.url}"
ca_file = "{self.tls.ca_cert}"
[upstream.api]
url = "{self.api.url}"
"""

    def start(self) -> None:
        self.loop.run(self.api.start())
        super().start()

    def stop(self) -> None:
        if self.proc is not None:
            self.stop_gateway()
        self.loop.run(self.api.stop())
        super().stop()


@pytest.fixture(scope="module")
def appw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppApiWorld]:
    w = AppApiWorld(tmp_path_factory.mktemp("api-app"))
    for name in ("app", "other"):
        w.make_repo(OWNER, name, files={"README.md": b"# hi\n"})
    w.api.add_installation(
        INSTALL,
        APP_ID,
        OWNER,
        ["app", "other"],
        {"metadata": "read", "contents": "write", "pull_requests": "write", "issues": "write"},
    )
    w.start()
    w.control.add_listener(LISTEN)
    try:
        yield w
    finally:
        w.stop()


def test_a_pull_request_opens_with_the_sessions_own_installation_token(
    appw: AppApiWorld, tmp_path: Path
) -> None:
    w = appw
    _, env = bound_sandbox_env(
        w, [f"{HOST}/{OWNER}/app:write"], tmp_path, listen=LISTEN, proxy_port=PROXY_PORT
    )
    work = tmp_path / "app"
    clone_and_push(env, f"https://{HOST}/{OWNER}/app", work, "agent/app")
    created = run(
        [
            GH,
            "pr",
            "create",
            "--title",
            "A",
            "--body",
            "B",
            "--head",
            "agent/app",
            "--base",
            "main",
        ],
        env,
        cwd=work,
    )
    assert created.returncode == 0, created.stderr
    [pr] = w.api.pulls(OWNER, "app")
    assert pr.user == "airlock-test[bot]"  # the App's installation token opened it
    # The one token the gateway minted for this session: its repository, its levels.
    mine = [t for t in w.api.issued if t.repositories == frozenset({"app"})]
    assert mine, w.api.issued
    assert all(
        t.permissions == {"contents": "write", "metadata": "read", "pull_requests": "write"}
        for t in mine
    ), [t.permissions for t in mine]
    # So even a request the gateway let through could not touch another repository.
    assert all(t.repositories == frozenset({"app"}) for t in w.api.issued)
