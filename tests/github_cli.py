"""Running the real ``gh`` (and git, curl) against the GitHub API double, on loopback only.

gh addresses github.com as ``https://api.github.com/`` and any other host as GitHub
Enterprise (``https://HOST/api/v3/``, ``https://HOST/api/graphql``), always on port 443, and
takes the host of a repository from its git remote without the port. So the tests give gh an
HTTPS proxy (:class:`ConnectProxy`, ``HTTPS_PROXY``) that tunnels ``CONNECT api.github.com:443``
and ``github.com:443`` to the double and the git upstream on their loopback ports and refuses
every other destination; the double's certificate names those hosts, issued by the test CA
gh trusts through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.testing.repos import git_env
from airlock.testing.upstream import TOKEN_USER

GH = "/usr/bin/gh"
_HEADER_LIMIT = 16 * 1024
_IDLE = 60.0


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy on ``127.0.0.1`` that only reaches ``routes`` (host -> port)."""

    routes: dict[str, int]
    connects: list[str] = field(default_factory=list)  # "host:port" of every CONNECT asked
    refused: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if len(head) > _HEADER_LIMIT:
            return
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.split(" ", 1)[0]
        self.connects.append(target)
        host, _, port = target.rpartition(":")
        upstream_port = self.routes.get(host.lower())
        if method != "CONNECT" or port != "443" or upstream_port is None:
            self.refused.append(target)
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", upstream_port), 10
        )
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await asyncio.wait_for(src.read(65536), _IDLE):
                    dst.write(data)
                    await dst.drain()
            except (OSError, TimeoutError):
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.write_eof()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()


def gh_env(
    home: Path,
    *,
    proxy: str | None,
    ca_file: Path,
    token: str | None = None,
    git_token: str | None = None,
    enterprise_host: str | None = None,
) -> dict[str, str]:
    """The environment for gh/git/curl: nothing from the machine's GitHub, git, TLS or proxy
    settings; gh's config in ``home``; ``token`` as GH_TOKEN (github.com) or, with
    ``enterprise_host``, as GH_ENTERPRISE_TOKEN with GH_HOST; git authenticated to the
    upstream with ``git_token``."""
    extra = {
        "GH_CONFIG_DIR": str(home / "gh-config"),
        "GH_PROMPT_DISABLED": "1",
        "GH_NO_UPDATE_NOTIFIER": "1",
        "GH_NO_EXTENSION_UPDATE_NOTIFIER": "1",
        "GH_PAGER": "cat",
        "PAGER": "cat",
        "NO_COLOR": "1",
        "GH_SPINNER_DISABLED": "1",
        "SSL_CERT_FILE": str(ca_file),
        "GIT_SSL_CAINFO": str(ca_file),
        "CURL_CA_BUNDLE": str(ca_file),
    }
    if proxy is not None:
        extra["HTTPS_PROXY"] = extra["https_proxy"] = proxy
    if token is not None:
        if enterprise_host is None:
            extra["GH_TOKEN"] = token
        else:
            extra["GH_ENTERPRISE_TOKEN"] = token
    if enterprise_host is not None:
        extra["GH_HOST"] = enterprise_host
    if git_token is not None:
        basic = base64.b64encode(f"{TOKEN_USER}:{git_token}".encode()).decode()
        extra.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.extraHeader",
            GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        )
    env = git_env(home, **extra)
    for name in ("GITHUB_TOKEN", "GH_TOKEN", "GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN"):
        if name not in extra:
            env.pop(name, None)
    return env


def run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end (bounded by ``timeout``), capturing text output."""
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def bound_sandbox_env(
    world: Any,
    grants: list[str],
    root: Path,
    *,
    listen: str,
    proxy_port: int,
    source: str = "127.0.0.1",
    enterprise_host: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """A session bound to ``source`` behind the listener ``listen`` (a sandbox, as the host
    side makes one), and the environment its tools get: the bundle's gitconfig for git
    (its own trust, never a CA variable), the proxy, GH_TOKEN and the API's CA bundle."""
    from airlock.host.bundle import GatewayEndpoint, write_api_trust, write_bundle

    issued, key = world.issue(*grants, require_activation=True)
    world.control.activate(
        issued["session"]["id"],
        container_id=os.urandom(32).hex(),
        network="test",
        address=source,
        gateway_address=listen,
    )
    d = root / f"bundle-{issued['session']['id'][:10]}"
    write_bundle(d, issued, key, endpoint=GatewayEndpoint("airlock.internal", listen, world.port))
    write_api_trust(d, issued["api"]["ca_pem"], None)
    env = gh_env(
        root / f"home-{issued['session']['id'][:10]}",
        proxy=f"http://airlock:{issued['proxy_token']}@{listen}:{proxy_port}",
        ca_file=d / "ca-bundle.pem",
        token=issued["api_token"],
        enterprise_host=enterprise_host,
    )
    env.pop("GIT_SSL_CAINFO", None)
    env["GIT_CONFIG_GLOBAL"] = str(d / "gitconfig")
    return issued, env


def clone_and_push(env: dict[str, str], url: str, work: Path, branch: str) -> None:
    """Clone ``url`` into ``work``, commit on a new ``branch`` and push it."""
    for args in (
        ["clone", "-q", url, str(work)],
        ["-C", str(work), "checkout", "-q", "-b", branch],
        ["-C", str(work), "commit", "-q", "--allow-empty", "-m", f"work on {branch}"],
        ["-C", str(work), "push", "-q", "origin", branch],
    ):
        p = run(["git", "-c", "user.name=a", "-c", "user.email=a@example.com", *args], env)
        assert p.returncode == 0, p.stderr
