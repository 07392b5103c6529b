"""A GitHub-like git smart-HTTP server for tests and ``airlock demo``.

It fronts git's own ``git http-backend`` (CGI) with the bits of GitHub behaviour that
airlock cares about: App-installation-token Basic auth, "Repository not found." 404s,
301s for renamed repositories, and only the smart-HTTP endpoints. Request and response
bodies are streamed in both directions, so multi-GB packs pass in flat memory.

Two kinds of token are accepted. The one in ``token_file`` may do anything. With a
``token_check`` (e.g. :meth:`airlock.testing.github_api.GitHubApiDouble.check_token`), other
tokens are per-repository installation tokens, refused the way GitHub refuses them: 401 for
bad credentials, "Repository not found." 404 outside the token's repositories, and 403
"Write access to repository not granted." for a push without ``contents: write``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aiohttp import web

from airlock.testing.tls import TestTLS, start_https

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# The fixed Basic-auth user name GitHub expects with an installation token (not a secret).
TOKEN_USER = "x-access-token"  # noqa: S105
_MAX_CGI_HEADER_BYTES = 64 * 1024
_STDERR_TAIL = 8 * 1024
_HTTP_BACKEND = Path("/usr/lib/git-core/git-http-backend")

_NAME = r"[A-Za-z0-9._-]+"
_PATH_RE = re.compile(
    rf"^/(?P<owner>{_NAME})/(?P<repo>{_NAME})"
    r"(?P<rest>/info/refs|/git-upload-pack|/git-receive-pack)$"
)
_REALM = 'Basic realm="GitHub"'
_WRITE_DENIED = "Write access to repository not granted.\n"
# token_check's answers (None means allowed); see GitHubApiDouble.check_token.
_BAD_CREDENTIALS = "bad_credentials"
_NOT_FOUND = "not_found"
_WRITE_DENIED_REASON = "write_denied"
_SERVICES = frozenset({"git-upload-pack", "git-receive-pack"})
# Never forwarded from CGI output: aiohttp frames the response body itself.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


@dataclass(frozen=True)
class UpstreamRequest:
    """What reached the upstream, for assertions in tests."""

    method: str
    path: str
    query: str
    git_protocol: str | None
    authorization_ok: bool
    status: int
    # Which credential authenticated the request: "file" (the token file's token),
    # "installation" (a token ``token_check`` knows, even if it then refused this repo or a
    # push), or None. ``authorization_ok`` is ``token_kind is not None``. An installation
    # token is only examined for requests that reach the auth step (valid smart-HTTP paths).
    token_kind: str | None = None


TokenCheck = Callable[[str, str, str, bool], str | None]
"""``(token, owner, repo, write) -> None`` when allowed, else a reason (see module doc)."""


@dataclass
class _Auth:
    """How a request authenticated, filled in as routing learns more."""

    kind: str | None  # "file" / "installation" once accepted, else None
    installation_token: str | None  # a candidate for token_check, if one was presented


@dataclass(frozen=True)
class _Target:
    owner: str
    repo: str  # without ".git"
    rest: str  # "info/refs", "git-upload-pack" or "git-receive-pack"


def basic_auth_header(token: str) -> str:
    """The ``Authorization`` value git sends for a GitHub App installation token."""
    creds = base64.b64encode(f"{TOKEN_USER}:{token}".encode()).decode("ascii")
    return f"Basic {creds}"


def _valid_name(name: str) -> bool:
    # The regex already limits the alphabet; dot-only names would escape the root.
    return ".." not in name and name.strip(".") != ""


def _text(status: int, body: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain", headers=headers)


class GitUpstream:
    """Smart-HTTP git server over TLS, serving bare repos at ``root/<owner>/<repo>.git``."""

    def __init__(
        self,
        root: Path,
        token_file: Path,
        tls: TestTLS,
        host: str = "127.0.0.1",
        port: int = 0,
        token_check: TokenCheck | None = None,
    ) -> None:
        self.root = root
        self.token_file = token_file
        self.tls = tls
        self.host = host
        self.port = port
        self.token_check = token_check
        self.requests: list[UpstreamRequest] = []
        self._redirects: dict[tuple[str, str], tuple[str, str]] = {}
        self._forced: dict[tuple[str, str], int] = {}
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def repo_url(self, owner: str, repo: str) -> str:
        return f"{self.url}/{owner}/{repo}.git"

    def add_redirect(self, old: str, new: str) -> None:
        """Answer requests for ``old`` ("owner/name") with a 301 to ``new``, like a rename."""
        old_owner, _, old_repo = old.removesuffix(".git").partition("/")
        new_owner, _, new_repo = new.removesuffix(".git").partition("/")
        self._redirects[(old_owner, old_repo)] = (new_owner, new_repo)

    def force_status(self, repo: str, status: int | None) -> None:
        """Answer every request for ``repo`` ("owner/name") with ``status`` (after the token
        is accepted), like a GitHub that refuses (401/403) or fails (5xx); None: normal."""
        owner, _, name = repo.removesuffix(".git").partition("/")
        if status is None:
            self._forced.pop((owner, name), None)
        else:
            self._forced[(owner, name)] = status

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        server = web.Server(
            self._handle,
            # Stop git promptly when a client goes away mid-transfer.
            handler_cancellation=True,
            # Pass gzip request bodies through untouched: http-backend inflates them itself,
            # exactly as on GitHub; decoding here would make git inflate plain data.
            auto_decompress=False,
            access_log=None,
        )
        self._runner, self.port = await start_https(server, self.host, self.port, self.tls)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> GitUpstream:
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

    def _authorized(self, header: str | None) -> bool:
        try:
            # Re-read every time so a test can rotate the token under a running server.
            token = self.token_file.read_text().strip()
        except OSError:
            return False
        if not token or header is None:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            presented = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{TOKEN_USER}:{token}".encode()
        return hmac.compare_digest(presented, expected)

    def _installation_candidate(self, header: str | None) -> str | None:
        """The password of ``x-access-token`` Basic auth, to be judged by ``token_check``."""
        if self.token_check is None or header is None:
            return None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            presented = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, sep, password = presented.partition(":")
        if not sep or user != TOKEN_USER or not password:
            return None
        return password

    def _check(self, token: str, owner: str, repo: str, write: bool) -> str | None:
        assert self.token_check is not None
        return self.token_check(token, owner, repo, write)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        git_protocol = request.headers.get("Git-Protocol")
        header = request.headers.get("Authorization")
        if self._authorized(header):
            auth = _Auth(kind="file", installation_token=None)
        else:
            auth = _Auth(kind=None, installation_token=self._installation_candidate(header))

        def record(status: int) -> None:
            self.requests.append(
                UpstreamRequest(
                    method=request.method,
                    path=request.path,
                    query=request.query_string,
                    git_protocol=git_protocol,
                    authorization_ok=auth.kind is not None,
                    status=status,
                    token_kind=auth.kind,
                )
            )

        routed = await self._route(request, auth)
        if isinstance(routed, web.Response):
            record(routed.status)
            return routed
        return await self._run_backend(request, routed, record)

    async def _route(self, request: web.BaseRequest, auth: _Auth) -> web.Response | _Target:
        """Return an early response (error/redirect), or the repo to hand over to git."""
        not_found = _text(404, "Not Found\n")
        m = _PATH_RE.match(request.path)
        if m is None:
            return not_found
        # GitHub accepts the repo with or without ".git"; both map to the bare repo.
        owner, repo, rest = m["owner"], m["repo"].removesuffix(".git"), m["rest"]
        if not (_valid_name(owner) and _valid_name(repo)):
            return not_found
        if rest == "/info/refs":
            if request.method != "GET" or request.query.get("service") not in _SERVICES:
                return not_found
        elif request.method != "POST":
            return not_found

        # Pushing is git-receive-pack: its advertisement and the pack upload itself.
        write = rest == "/git-receive-pack" or (
            rest == "/info/refs" and request.query.get("service") == "git-receive-pack"
        )
        reason: str | None = None
        token = auth.installation_token
        if auth.kind is None and token is not None:
            reason = self._check(token, owner, repo, write)
            if reason != _BAD_CREDENTIALS:
                auth.kind = "installation"

        # Authentication comes before anything that reveals whether a repo exists.
        if auth.kind is None:
            return _text(401, "Invalid username or token.\n", **{"WWW-Authenticate": _REALM})
        repo_not_found = _text(404, "Repository not found.\n")
        forced = self._forced.get((owner, repo))
        if forced is not None:
            return _text(forced, f"Forced by the test: {forced}.\n")

        target = self._redirects.get((owner, repo))
        if target is not None:
            # GitHub scopes tokens to repositories, not names: access follows a rename, so
            # the redirect is given to tokens that can see the new name, and only to them.
            if token is not None and auth.kind == "installation":
                if self._check(token, target[0], target[1], write) in (
                    _BAD_CREDENTIALS,
                    _NOT_FOUND,
                ):
                    return repo_not_found
            location = f"https://{request.host}/{target[0]}/{target[1]}.git{rest}"
            if request.query_string:
                location += f"?{request.query_string}"
            return web.Response(status=301, headers={"Location": location})

        if reason == _NOT_FOUND or not (self.root / owner / f"{repo}.git").is_dir():
            return repo_not_found
        if reason == _WRITE_DENIED_REASON:
            return _text(403, _WRITE_DENIED)
        if reason is not None:
            # Fail closed, and loudly: a token_check bug must not turn into access.
            log.error("token_check returned an unknown reason %r", reason)
            return _text(500, "Internal error: unknown token_check reason.\n")

        if request.headers.get("Expect", "").lower() == "100-continue":
            # The low-level server doesn't do this for us; without it curl stalls ~1 s
            # before sending each large push body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return _Target(owner, repo, rest.removeprefix("/"))

    def _cgi_env(self, request: web.BaseRequest, target: _Target) -> dict[str, str]:
        env = {
            # Nothing from our own environment leaks in (tokens, GIT_* overrides, ...).
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.root.resolve()),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "true",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": f"/{target.owner}/{target.repo}.git/{target.rest}",
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": TOKEN_USER,
            "REMOTE_ADDR": request.remote or "",
        }
        if request.content_length is not None:
            env["CONTENT_LENGTH"] = str(request.content_length)
        encoding = request.headers.get("Content-Encoding")
        if encoding:
            env["HTTP_CONTENT_ENCODING"] = encoding
        git_protocol = request.headers.get("Git-Protocol")
        if git_protocol is not None:
            env["GIT_PROTOCOL"] = git_protocol
        return env

    async def _run_backend(
        self,
        request: web.BaseRequest,
        target: _Target,
        record: Callable[[int], None],
    ) -> web.StreamResponse:
        proc = await asyncio.create_subprocess_exec(
            *_backend_argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._cgi_env(request, target),
            # Own process group, so an abort also kills upload-pack/pack-objects beneath it.
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.create_task(_feed_stdin(request, proc.stdin))
        stderr_tail = asyncio.create_task(_drain_tail(proc.stderr))
        try:
            parsed = await _read_cgi_headers(proc.stdout)
            if parsed is None:
                await _kill_tree(proc)
                log.warning(
                    "git http-backend produced no headers (rc=%s): %s",
                    proc.returncode,
                    (await stderr_tail).decode(errors="replace"),
                )
                record(502)
                return _text(502, "Bad gateway: git http-backend failed.\n")
            status, headers = parsed
            response = web.StreamResponse(status=status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    response.headers.add(name, value)
            # Record before streaming so a test that has seen git exit sees the entry.
            record(status)
            await response.prepare(request)
            while chunk := await proc.stdout.read(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            await feeder
            rc = await proc.wait()
            if rc != 0:
                log.warning(
                    "git http-backend exited %s: %s",
                    rc,
                    (await stderr_tail).decode(errors="replace"),
                )
            return response
        finally:
            feeder.cancel()
            # Client went away or we failed mid-stream: stop git's whole process tree.
            await _kill_tree(proc)
            # Read the pipes to EOF (all writers are dead by now) so asyncio closes them.
            while await proc.stdout.read(CHUNK):
                pass
            await stderr_tail


async def _kill_tree(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the CGI and everything it started, unless it already exited; then reap it.

    Its stdout is read to EOF first: asyncio's ``wait()`` returns only once every pipe has
    closed, and a stdout whose reader is paused on a full buffer (a client that went away
    mid-pack) never sees its EOF, which would hang this handler (and the server's stop).
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        while await proc.stdout.read(CHUNK):
            pass
    await asyncio.shield(proc.wait())


def _backend_argv() -> list[str]:
    if _HTTP_BACKEND.exists():
        return [str(_HTTP_BACKEND)]
    git = shutil.which("git")
    if git is None:
        raise RuntimeError("git is not installed")
    return [git, "http-backend"]


async def _feed_stdin(request: web.BaseRequest, stdin: asyncio.StreamWriter) -> None:
    """Copy the request body into the CGI's stdin, 64 KiB at a time, honouring backpressure."""
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        return  # backend stopped reading (e.g. it rejected the request); its output says why
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.close()


async def _drain_tail(stream: asyncio.StreamReader) -> bytes:
    """Consume stderr (so the child never blocks on it), keeping the last few KiB."""
    tail = b""
    while chunk := await stream.read(CHUNK):
        tail = (tail + chunk)[-_STDERR_TAIL:]
    return tail


async def _read_cgi_headers(
    stdout: asyncio.StreamReader,
) -> tuple[int, list[tuple[str, str]]] | None:
    """Parse CGI response headers up to the blank line; None if the output is malformed."""
    status = 200
    headers: list[tuple[str, str]] = []
    size = 0
    while True:
        try:
            line = await stdout.readuntil(b"\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        size += len(line)
        if size > _MAX_CGI_HEADER_BYTES:
            return None
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return status, headers
        name, sep, value = text.partition(":")
        if not sep:
            return None
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            try:
                status = int(value.split(None, 1)[0])
            except (IndexError, ValueError):
                return None
        else:
            headers.append((name, value))
