"""The test upstream behaves like GitHub's smart-HTTP endpoint, driven by the real git CLI."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import resource
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from airlock.testing.repos import add_large_commit, create_bare_repo, git_env
from airlock.testing.tls import TestTLS, make_test_ca_and_server_cert
from airlock.testing.upstream import GitUpstream, basic_auth_header

TOKEN = "ghs_" + "upstreamTestToken" + "0" * 19


@dataclass
class Git:
    """Runs git against the upstream with only the test CA trusted."""

    upstream: GitUpstream
    tls: TestTLS
    home: Path
    cwd: Path

    async def run(
        self,
        *args: str,
        token: str | None = TOKEN,
        config: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> tuple[int, str]:
        cmd = ["git", "-c", f"http.sslCAInfo={self.tls.ca_cert}"]
        if token is not None:
            cmd += ["-c", f"http.extraHeader=Authorization: {basic_auth_header(token)}"]
        for item in config:
            cmd += ["-c", item]
        # Async so the upstream, on this same event loop, keeps serving while git runs.
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

    async def ok(self, *args: str, config: tuple[str, ...] = (), cwd: Path | None = None) -> str:
        rc, out = await self.run(*args, config=config, cwd=cwd)
        assert rc == 0, out
        return out

    async def clone(
        self, repo: str, dest: str, token: str | None = TOKEN, config: tuple[str, ...] = ()
    ) -> tuple[int, str]:
        url = f"{self.upstream.url}/{repo}"
        return await self.run("clone", "-q", url, str(self.cwd / dest), token=token, config=config)

    def rev_parse(self, repo: Path, rev: str) -> str:
        return subprocess.run(
            ["git", f"--git-dir={repo}", "rev-parse", rev],
            env=git_env(self.home),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()


@pytest.fixture
def tls(tmp_path: Path) -> TestTLS:
    return make_test_ca_and_server_cert(tmp_path / "tls", ["localhost"], ["127.0.0.1"])


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
async def upstream(tmp_path: Path, tls: TestTLS, token_file: Path) -> AsyncIterator[GitUpstream]:
    root = tmp_path / "repos"
    create_bare_repo(root, "acme", "widgets", files={"README.md": b"hello widgets\n"})
    async with GitUpstream(root, token_file, tls) as up:
        yield up


@pytest.fixture
def git(tmp_path: Path, upstream: GitUpstream, tls: TestTLS) -> Git:
    work = tmp_path / "work"
    work.mkdir()
    return Git(upstream, tls, tmp_path / "home", work)


@pytest.fixture
async def http(tls: TestTLS) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


def statuses(upstream: GitUpstream, suffix: str) -> list[int]:
    return [r.status for r in upstream.requests if r.path.endswith(suffix)]


async def test_clone_and_push(git: Git, upstream: GitUpstream) -> None:
    assert upstream.url == f"https://127.0.0.1:{upstream.port}"
    rc, out = await git.clone("acme/widgets.git", "w")
    assert rc == 0, out
    clone = git.cwd / "w"
    assert (clone / "README.md").read_bytes() == b"hello widgets\n"

    (clone / "new.txt").write_text("pushed\n")
    await git.ok("add", "new.txt", cwd=clone)
    await git.ok("commit", "-qm", "add new.txt", cwd=clone)
    await git.ok("push", "-q", "origin", "main", cwd=clone)

    head = git.rev_parse(clone / ".git", "HEAD")
    assert git.rev_parse(upstream.root / "acme" / "widgets.git", "refs/heads/main") == head
    assert statuses(upstream, "/git-receive-pack") == [200]
    assert all(r.authorization_ok for r in upstream.requests)


async def test_clone_without_dot_git_suffix(git: Git) -> None:
    rc, out = await git.clone("acme/widgets", "w")
    assert rc == 0, out


async def test_protocol_v2_header_reaches_upload_pack_but_not_receive_pack(
    git: Git, upstream: GitUpstream
) -> None:
    v2 = ("protocol.version=2",)
    rc, out = await git.clone("acme/widgets.git", "w", config=v2)
    assert rc == 0, out
    fetches = [r for r in upstream.requests if "upload-pack" in r.path + r.query]
    assert fetches and all(r.git_protocol == "version=2" for r in fetches)

    clone = git.cwd / "w"
    await git.ok("commit", "-q", "--allow-empty", "-m", "empty", cwd=clone)
    await git.ok("push", "-q", "origin", "main", cwd=clone, config=v2)
    pushes = [r for r in upstream.requests if "receive-pack" in r.path + r.query]
    # git never speaks v2 for push, so it must not claim to.
    assert pushes and all(r.git_protocol is None for r in pushes)


async def test_wrong_or_missing_token_is_401(
    git: Git, upstream: GitUpstream, http: aiohttp.ClientSession
) -> None:
    rc, _ = await git.clone("acme/widgets.git", "a", token="ghs_wrong")
    assert rc != 0
    rc, _ = await git.clone("acme/widgets.git", "b", token=None)
    assert rc != 0
    assert upstream.requests
    assert all(r.status == 401 and not r.authorization_ok for r in upstream.requests)

    url = f"{upstream.url}/acme/widgets.git/info/refs?service=git-upload-pack"
    async with http.get(url) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="GitHub"'
    # The right token with the wrong user name is not accepted either.
    bad_user = "Basic " + base64.b64encode(f"someone:{TOKEN}".encode()).decode()
    async with http.get(url, headers={"Authorization": bad_user}) as resp:
        assert resp.status == 401


async def test_token_rotation_takes_effect_without_restart(
    git: Git, upstream: GitUpstream, token_file: Path
) -> None:
    rc, out = await git.clone("acme/widgets.git", "a")
    assert rc == 0, out
    new = "ghs_" + "rotated" + "1" * 29
    token_file.write_text(new + "\n")
    rc, _ = await git.clone("acme/widgets.git", "b")
    assert rc != 0
    assert upstream.requests[-1].status == 401
    rc, out = await git.clone("acme/widgets.git", "c", token=new)
    assert rc == 0, out


async def test_missing_repo_is_404(
    git: Git, upstream: GitUpstream, http: aiohttp.ClientSession
) -> None:
    rc, _ = await git.clone("acme/nope.git", "n")
    assert rc != 0
    assert statuses(upstream, "/info/refs") == [404]

    auth = {"Authorization": basic_auth_header(TOKEN)}
    url = f"{upstream.url}/acme/nope.git/info/refs?service=git-upload-pack"
    async with http.get(url, headers=auth) as resp:
        assert resp.status == 404
        assert resp.content_type == "text/plain"
        assert await resp.text() == "Repository not found.\n"


async def test_renamed_repo_redirects(
    git: Git, upstream: GitUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.add_redirect("acme/gadgets", "acme/widgets")
    rc, _ = await git.clone("acme/gadgets.git", "a", config=("http.followRedirects=false",))
    assert rc != 0
    assert statuses(upstream, "/info/refs") == [301]
    # git's default (follow the initial request only) copes, as it does with GitHub.
    rc, out = await git.clone("acme/gadgets.git", "b")
    assert rc == 0, out

    auth = {"Authorization": basic_auth_header(TOKEN)}
    url = f"{upstream.url}/acme/gadgets/info/refs?service=git-upload-pack"
    async with http.get(url, headers=auth, allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"] == (
            f"{upstream.url}/acme/widgets.git/info/refs?service=git-upload-pack"
        )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/acme/widgets.git/HEAD"),
        ("GET", "/acme/widgets.git/objects/info/packs"),
        ("GET", "/acme/widgets.git/info/refs"),
        ("GET", "/acme/widgets.git/info/refs?service=git-upload-archive"),
        ("GET", "/acme/widgets.git/git-upload-pack"),
        ("POST", "/acme/widgets.git/info/refs?service=git-upload-pack"),
        ("GET", "/acme/../acme/widgets.git/info/refs?service=git-upload-pack"),
        ("GET", "/acme/..git/info/refs?service=git-upload-pack"),
        ("GET", "/ac%20me/widgets.git/info/refs?service=git-upload-pack"),
        ("GET", "/acme/widgets.git"),
        ("GET", "/"),
    ],
)
async def test_only_smart_http_endpoints_are_served(
    upstream: GitUpstream, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    auth = {"Authorization": basic_auth_header(TOKEN)}
    # encoded=True: send the path exactly as written, "..", "%20" and all.
    url = URL(upstream.url + path, encoded=True)
    async with http.request(method, url, headers=auth, allow_redirects=False) as resp:
        assert resp.status == 404


async def test_gzip_request_body_is_left_for_http_backend(
    git: Git, upstream: GitUpstream, http: aiohttp.ClientSession
) -> None:
    # git gzips larger upload-pack requests; the server must hand them over still encoded.
    head = git.rev_parse(upstream.root / "acme" / "widgets.git", "main")
    want = f"want {head}\n".encode()
    body = b"%04x%s0000" % (len(want) + 4, want) + b"0009done\n"
    async with http.post(
        f"{upstream.url}/acme/widgets.git/git-upload-pack",
        data=gzip.compress(body),
        headers={
            "Authorization": basic_auth_header(TOKEN),
            "Content-Type": "application/x-git-upload-pack-request",
            "Content-Encoding": "gzip",
        },
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-git-upload-pack-result"
        payload = await resp.read()
    assert payload.startswith(b"0008NAK\n")
    assert b"PACK" in payload


async def test_sha256_repo_clones(git: Git, upstream: GitUpstream) -> None:
    create_bare_repo(upstream.root, "acme", "modern", object_format="sha256")
    rc, out = await git.clone("acme/modern.git", "m")
    assert rc == 0, out
    assert (await git.ok("rev-parse", "--show-object-format", cwd=git.cwd / "m")).strip() == (
        "sha256"
    )
    assert (git.cwd / "m" / "README.md").read_text() == "# acme/modern\n"


async def _push_large(git: Git, upstream: GitUpstream, size: int) -> int:
    """Push a commit of ``size`` random bytes; return the upstream's peak RSS growth (KiB)."""
    rc, out = await git.clone("acme/widgets.git", "w")
    assert rc == 0, out
    clone = git.cwd / "w"
    await asyncio.to_thread(add_large_commit, clone / ".git", size, 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await git.ok("push", "-q", "origin", "main", cwd=clone)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    head = git.rev_parse(clone / ".git", "refs/heads/main")
    assert git.rev_parse(upstream.root / "acme" / "widgets.git", "refs/heads/main") == head
    return grown


async def test_push_of_large_pack_is_streamed(git: Git, upstream: GitUpstream) -> None:
    # Large enough that git sends a chunked body (no Content-Length) in many pieces.
    await _push_large(git, upstream, 24 << 20)
    assert statuses(upstream, "/git-receive-pack")[-1] == 200


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("AIRLOCK_SLOW_TESTS"), reason="set AIRLOCK_SLOW_TESTS=1")
async def test_one_gigabyte_push_in_flat_memory(git: Git, upstream: GitUpstream) -> None:
    grown_kib = await _push_large(git, upstream, 1 << 30)
    assert grown_kib < 100 * 1024, f"upstream grew by {grown_kib} KiB for a 1 GiB push"
