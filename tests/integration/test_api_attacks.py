"""Adversarial review of the GitHub API relay, through the real gateway process and the double.

A "sandbox" is a session bound to a loopback source address behind a listener on LISTEN (as
in test_api_relay.py). Every attack is sent as raw bytes: a TCP connection to the egress
proxy from the sandbox's address, ``CONNECT api.github.com:443`` with its proxy token, TLS
with the interception CA, then HTTP/1.1 written by hand. The double's ``_dispatch`` is
wrapped to record what really reached the upstream (path, headers, body), so every refusal
is also checked there: nothing the policy refused got through.

Attacks that currently succeed are ``xfail(strict=True, reason="HOLE: ...")``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest

from airlock.testing.ports import free_port
from airlock.testing.repos import git_env
from tests.world import HOST, TOKEN, ApiWorld

LISTEN = "127.0.0.88"  # the "sandbox network's" gateway address (test_api_relay uses .80)
PROXY_PORT = free_port()
OWNER = "octo"
API = "api.github.com"
_sources = iter(f"127.0.0.{i}" for i in range(100, 250))
_names = iter(range(1, 10_000))
TIMEOUT = 15.0


@dataclass
class Seen:
    """One request that reached the double (the upstream), as it arrived."""

    method: str
    path: str  # decoded, as the upstream's router reads it
    raw_path: str
    headers: dict[str, str]
    raw: bytes


@dataclass
class Sandbox:
    w: ApiWorld
    issued: dict[str, Any]
    source: str
    listen: tuple[str, int] = (LISTEN, PROXY_PORT)

    @property
    def session_id(self) -> str:
        return str(self.issued["session"]["id"])

    @property
    def api_token(self) -> str:
        return str(self.issued["api_token"])

    @property
    def proxy_token(self) -> str:
        return str(self.issued["proxy_token"])

    @property
    def ca_pem(self) -> str:
        return str(self.issued["api"]["ca_pem"])

    def tunnel(self, **kw: Any) -> Tunnel:
        return Tunnel.open(self, **kw)

    def call(
        self,
        method: str,
        target: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        with self.tunnel() as t:
            return t.call(method, target, body, token=token or self.api_token, headers=headers)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Tunnel:
    """One CONNECT tunnel with TLS to the gateway's interception, read and written raw."""

    sock: socket.socket
    tls: ssl.SSLSocket | None
    connect_status: int
    buf: bytearray = field(default_factory=bytearray)

    @classmethod
    def open(
        cls,
        sb: Sandbox,
        *,
        target: str = f"{API}:443",
        sni: str | None = API,
        alpn: list[str] | None = None,
        proxy_token: str | None = None,
        source: str | None = None,
    ) -> Tunnel:
        sock = socket.create_connection(
            sb.listen, timeout=TIMEOUT, source_address=(source or sb.source, 0)
        )
        auth = base64.b64encode(f"airlock:{proxy_token or sb.proxy_token}".encode()).decode()
        sock.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
        if status != 200:
            return cls(sock, None, status)
        ctx = ssl.create_default_context(cadata=sb.ca_pem)
        if sni is None:
            ctx.check_hostname = False  # no SNI is sent without a server_hostname
        if alpn:
            ctx.set_alpn_protocols(alpn)
        tls = ctx.wrap_socket(sock, server_hostname=sni)
        tls.settimeout(TIMEOUT)
        return cls(sock, tls, status)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            (self.tls or self.sock).close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        assert self.tls is not None
        self.tls.sendall(data)

    def _fill(self) -> bool:
        assert self.tls is not None
        try:
            chunk = self.tls.recv(65536)
        except (ssl.SSLError, OSError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def closed(self) -> bool:
        """True once the gateway ended the tunnel (EOF or reset; nothing left unread)."""
        while self._fill():
            if len(self.buf) > 1 << 20:
                return False
        return True

    def response(self, head_only: bool = False) -> Response | None:
        """The next response, or None when the tunnel ended before one."""
        start = len(self.buf)
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
        self.buf = bytearray(rest)
        resp = Response(status, headers, b"")
        if status < 200:
            return self.response(head_only)
        length = resp.header("content-length")
        if head_only or status in (204, 304):
            body = b""
        elif length is not None:
            while len(self.buf) < int(length):
                if not self._fill():
                    raise AssertionError("short body")
            body, self.buf = bytes(self.buf[: int(length)]), self.buf[int(length) :]
        elif (resp.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill():
                        raise AssertionError("short chunk")
                size_line, _, after = bytes(self.buf).partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(after) < size + 2:
                    if not self._fill():
                        raise AssertionError("short chunk")
                    after = bytes(self.buf).partition(b"\r\n")[2]
                body += after[:size]
                self.buf = bytearray(after[size + 2 :])
                if size == 0:
                    break
        else:
            while self._fill():
                pass
            body, self.buf = bytes(self.buf), bytearray()
        resp.body = body
        resp.raw = head[start:]
        return resp

    def call(
        self,
        method: str,
        target: str,
        body: Any = None,
        *,
        token: str | None,
        headers: dict[str, str] | None = None,
        host: str = API,
    ) -> Response:
        data = (
            b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: attacker/1"]
        if token is not None:
            lines.append(f"Authorization: token {token}")
        if data or method in ("POST", "PATCH", "PUT"):
            lines.append(f"Content-Length: {len(data)}")
        has_type = any(k.lower() == "content-type" for k in headers or {})
        if data and not has_type:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        resp = self.response(head_only=method == "HEAD")
        assert resp is not None, "the tunnel ended without an answer"
        return resp


def make_sandbox(
    w: ApiWorld, *grants: str, listen: tuple[str, int] = (LISTEN, PROXY_PORT)
) -> Sandbox:
    source = next(_sources)
    issued, _ = w.issue(*grants, require_activation=True)
    w.control.activate(
        issued["session"]["id"],
        container_id=os.urandom(32).hex(),
        network="test",
        address=source,
        gateway_address=listen[0],
    )
    return Sandbox(w, issued, source, listen)


@pytest.fixture(scope="module")
def aw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    w = ApiWorld(
        tmp_path_factory.mktemp("api-attacks"),
        gateway_extra=f"dns_port = {free_port()}\n",
        config_extra=f"[sandbox]\nproxy_port = {PROXY_PORT}\n",
    )
    seen: list[Seen] = []
    dispatch = w.api._dispatch

    def recording(request: Any, raw: bytes, body: Any) -> Any:
        seen.append(
            Seen(request.method, request.path, request.raw_path, dict(request.headers), raw)
        )
        return dispatch(request, raw, body)

    w.api._dispatch = recording  # type: ignore[method-assign]
    w.seen = seen  # type: ignore[attr-defined]
    w.start()
    w.control.add_listener(LISTEN)
    try:
        yield w
    finally:
        w.stop()


def seen(w: ApiWorld) -> list[Seen]:
    return w.seen  # type: ignore[attr-defined, no-any-return]


def new_repo(
    w: ApiWorld, branch: str | None = "agent/x", *more: str, name: str | None = None
) -> str:
    """A repository with main and (each a commit ahead of it) branches, made in the bare repo
    (``name``: that one, in each of several worlds; else the next free name)."""
    name = name or f"target{next(_names)}"
    bare = w.make_repo(OWNER, name, files={"README.md": b"# hello\n"})
    env = git_env(w.home, GIT_AUTHOR_NAME="a", GIT_COMMITTER_NAME="a")
    env.update(GIT_AUTHOR_EMAIL="a@example.com", GIT_COMMITTER_EMAIL="a@example.com")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", f"--git-dir={bare}", *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()

    for name_of in (branch, *more) if branch is not None else ():
        sha = git("commit-tree", "main^{tree}", "-p", "main", "-m", f"work on {name_of}")
        git("update-ref", f"refs/heads/{name_of}", sha)
    return name


def write_sandbox(w: ApiWorld, repo: str) -> Sandbox:
    return make_sandbox(w, f"{HOST}/{OWNER}/{repo}:write")


def upstream_since(w: ApiWorld, mark: int) -> list[Seen]:
    return seen(w)[mark:]


def create_pull(sb: Sandbox, repo: str, head: str = "agent/x") -> int:
    resp = sb.call(
        "POST", f"/repos/{OWNER}/{repo}/pulls", {"title": "T", "head": head, "base": "main"}
    )
    assert resp.status == 201, resp
    return int(resp.json()["number"])


def audit_api(w: ApiWorld, sb: Sandbox) -> list[dict[str, Any]]:
    return [e for e in w.audit_for(sb.session_id) if e.get("event") == "api"]


# =============================================================================== pull ownership


def test_a_refused_graphql_create_does_not_adopt_someone_elses_pull_request(
    aw: ApiWorld,
) -> None:
    repo = new_repo(aw)
    owner_sb, thief = write_sandbox(aw, repo), write_sandbox(aw, repo)
    number = create_pull(owner_sb, repo)
    repo_id = thief.call("GET", f"/repos/{OWNER}/{repo}").json()["node_id"]
    doc = {
        "query": "mutation($i: CreatePullRequestInput!) { createPullRequest(input: $i) "
        "{ pullRequest { number } } }",
        "variables": {
            "i": {
                "repositoryId": repo_id,
                "headRefName": "agent/x",
                "baseRefName": "main",
                "title": "mine now",
            }
        },
    }
    created = thief.call("POST", "/graphql", doc)
    assert created.status == 200 and created.json().get("errors"), created  # GitHub refused
    closed = thief.call("PATCH", f"/repos/{OWNER}/{repo}/pulls/{number}", {"state": "closed"})
    assert closed.status == 403, closed
    assert aw.api.pulls(OWNER, repo)[0].state == "open"


def test_a_refused_rest_create_adopts_nothing(aw: ApiWorld) -> None:
    # (the REST twin of the hole above holds: a 422 is not a 2xx)
    repo = new_repo(aw)
    owner_sb, thief = write_sandbox(aw, repo), write_sandbox(aw, repo)
    number = create_pull(owner_sb, repo)
    dup = thief.call(
        "POST", f"/repos/{OWNER}/{repo}/pulls", {"title": "T", "head": "agent/x", "base": "main"}
    )
    assert dup.status == 422, dup
    closed = thief.call("PATCH", f"/repos/{OWNER}/{repo}/pulls/{number}", {"state": "closed"})
    assert closed.status == 403 and closed.json()["message"].startswith("airlock:"), closed
    assert aw.api.pulls(OWNER, repo)[0].state == "open"
    assert aw.control.show(thief.session_id)["pulls"] == []


def test_another_sessions_pull_request_is_not_own(aw: ApiWorld) -> None:
    repo = new_repo(aw)
    owner_sb, other = write_sandbox(aw, repo), write_sandbox(aw, repo)
    number = create_pull(owner_sb, repo)
    mark = len(seen(aw))
    for method, target, body in (
        ("PATCH", f"/repos/{OWNER}/{repo}/pulls/{number}", {"title": "x"}),
        ("POST", f"/repos/{OWNER}/{repo}/issues/{number}/comments", {"body": "x"}),
        ("POST", f"/repos/{OWNER}/{repo}/pulls/{number}/reviews", {"body": "x"}),
        ("POST", f"/repos/{OWNER}/{repo}/pulls/{number}/requested_reviewers", {"reviewers": []}),
    ):
        resp = other.call(method, target, body)
        assert resp.status == 403 and resp.json()["message"].startswith("airlock:"), resp
    assert upstream_since(aw, mark) == []
    # (control) the session that made it may
    assert (
        owner_sb.call("PATCH", f"/repos/{OWNER}/{repo}/pulls/{number}", {"title": "x"}).status
        == 200
    )


# =============================================================================== upstream request


def test_the_upstream_reads_the_checked_body_as_json(aw: ApiWorld) -> None:
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    number = create_pull(sb, repo)
    mark = len(seen(aw))
    resp = sb.call(
        "POST",
        f"/repos/{OWNER}/{repo}/pulls/{number}/reviews",
        {"body": "&event=APPROVE&x="},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    ups = [s for s in upstream_since(aw, mark) if s.path.endswith("/reviews")]
    assert len(ups) == 1, resp  # the policy allowed it: a comment-only review
    up = ups[0]
    as_form = parse_qs(up.raw.decode(), keep_blank_values=True)
    assert as_form.get("event") == ["APPROVE"]  # what the differential would give
    assert up.headers.get("Content-Type", "").startswith("application/json"), up.headers


def test_the_upstream_reads_the_checked_graphql_body_as_json(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    smuggled = "mutation%7BdeleteRef(input:%7BrefId:%22REF_main%22%7D)%7BclientMutationId%7D%7D"
    doc = (
        f'{{ repository(owner: "{OWNER}", name: "{repo}") '
        f'{{ object(expression: "&query={smuggled}&x=") {{ id }} }} }}'
    )
    mark = len(seen(aw))
    resp = sb.call(
        "POST",
        "/graphql",
        {"query": doc},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 200, resp  # the policy allowed a read of a granted repository
    [up] = [s for s in upstream_since(aw, mark) if s.path == "/graphql"]
    as_form = parse_qs(up.raw.decode(), keep_blank_values=True)
    assert as_form.get("query") == [
        'mutation{deleteRef(input:{refId:"REF_main"}){clientMutationId}}'
    ], as_form
    assert up.headers.get("Content-Type", "").startswith("application/json"), up.headers


def test_only_allowlisted_headers_and_the_upstream_token_go_upstream(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    resp = sb.call(
        "GET",
        f"/repos/{OWNER}/{repo}",
        headers={
            "X-HTTP-Method-Override": "DELETE",
            "X-Forwarded-For": "10.0.0.1",
            "Cookie": "user_session=stolen",
            "Proxy-Authorization": "Basic eDp5",
            "X-GitHub-OTP": "123456",
            "Accept": "application/vnd.github+json",
        },
    )
    assert resp.status == 200, resp
    [up] = upstream_since(aw, mark)
    names = {k.lower() for k in up.headers}
    assert not names & {
        "x-http-method-override",
        "x-forwarded-for",
        "cookie",
        "proxy-authorization",
        "x-github-otp",
    }, up.headers
    assert up.headers["Authorization"] == f"token {TOKEN}"
    assert up.method == "GET" and up.path == f"/repos/{OWNER}/{repo}"


def test_the_upstream_token_never_comes_back_to_the_sandbox(aw: ApiWorld) -> None:
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    answers: list[Response] = []
    with sb.tunnel() as t:
        for method, target, body, token in (
            ("GET", "/user", None, sb.api_token),
            ("GET", f"/repos/{OWNER}/{repo}", None, sb.api_token),
            ("GET", f"/repos/{OWNER}/{repo}/pulls/99", None, sb.api_token),
            ("POST", "/graphql", {"query": "{ viewer { login } }"}, sb.api_token),
            ("GET", f"/repos/{OWNER}/{repo}", None, TOKEN),  # guessing the real one
            ("GET", f"/repos/{OWNER}/{repo}", None, None),
        ):
            answers.append(t.call(method, target, body, token=token))
    assert [a.status for a in answers] == [200, 200, 404, 200, 401, 401]
    for a in answers:
        assert TOKEN.encode() not in a.raw + a.body
        assert sb.api_token.encode() not in a.raw + a.body
    text = aw.audit_log.read_text()
    assert TOKEN not in text and sb.api_token not in text


# =============================================================================== per request auth


def test_the_token_is_checked_on_every_request_of_a_tunnel(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    other = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    target = f"/repos/{OWNER}/{repo}"
    with sb.tunnel() as t:
        assert t.call("GET", target, token=sb.api_token).status == 200
        mark = len(seen(aw))
        # after a good request, the tunnel has not become "authenticated"
        for token in (None, "", other.api_token, sb.api_token + "x", sb.api_token[:-1], TOKEN):
            assert t.call("GET", target, token=token).status == 401
        assert upstream_since(aw, mark) == []
        assert t.call("GET", target, token=sb.api_token).status == 200  # still in step


def test_two_authorization_headers_are_refused(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    with sb.tunnel() as t:
        resp = t.call(
            "GET",
            f"/repos/{OWNER}/{repo}",
            token=sb.api_token,
            headers={"Authorization": f"token {TOKEN}"},
        )
    assert resp.status == 401
    assert upstream_since(aw, mark) == []


def test_a_revoked_session_is_refused_inside_an_open_tunnel(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    with sb.tunnel() as t:
        assert t.call("GET", f"/repos/{OWNER}/{repo}", token=sb.api_token).status == 200
        aw.control.revoke(sb.session_id)
        mark = len(seen(aw))
        t.send(
            f"GET /repos/{OWNER}/{repo} HTTP/1.1\r\nHost: {API}\r\n"
            f"Authorization: token {sb.api_token}\r\n\r\n".encode()
        )
        resp = t.response()
        assert resp is None or resp.status == 401, resp
        assert upstream_since(aw, mark) == []


# =============================================================================== names and hosts


@pytest.mark.parametrize(
    "host",
    ["github.com", "evil.example", f"{API}:8443", f"{API}.", "API.GITHUB.COM.", "localhost"],
)
def test_the_host_header_must_name_the_tunnel(aw: ApiWorld, host: str) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    with sb.tunnel() as t:
        resp = t.call("GET", f"/repos/{OWNER}/{repo}", token=sb.api_token, host=host)
    assert resp.status == 421, resp
    assert upstream_since(aw, mark) == []


def test_duplicate_or_missing_host_headers_are_refused(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    for head in (
        f"GET /repos/{OWNER}/{repo} HTTP/1.1\r\nHost: {API}\r\nHost: evil.example\r\n",
        f"GET /repos/{OWNER}/{repo} HTTP/1.1\r\n",
    ):
        with sb.tunnel() as t:
            t.send((head + f"Authorization: token {sb.api_token}\r\n\r\n").encode())
            resp = t.response()
            assert resp is not None and resp.status == 400, resp
    assert upstream_since(aw, mark) == []


@pytest.mark.parametrize(
    "target",
    [
        f"https://{API}/repos/{OWNER}/REPO",
        f"http://{API}/repos/{OWNER}/REPO",
        "https://evil.example/repos/octo/REPO",
        "*",
    ],
)
def test_absolute_form_targets_inside_the_tunnel_are_refused(aw: ApiWorld, target: str) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    with sb.tunnel() as t:
        resp = t.call("GET", target.replace("REPO", repo), token=sb.api_token)
    assert resp.status == 400, resp
    assert upstream_since(aw, mark) == []


def test_connect_to_an_api_name_on_another_port_is_refused(aw: ApiWorld) -> None:
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{new_repo(aw, branch=None)}:read")
    for target in (f"{API}:8443", f"{API}:80", f"{API}:22"):
        with sb.tunnel(target=target) as t:
            assert t.connect_status == 403, target


def test_plain_http_to_an_api_name_is_refused(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    auth = base64.b64encode(f"airlock:{sb.proxy_token}".encode()).decode()
    with socket.create_connection(
        (LISTEN, PROXY_PORT), timeout=TIMEOUT, source_address=(sb.source, 0)
    ) as s:
        s.sendall(
            f"GET http://{API}/repos/{OWNER}/{repo} HTTP/1.1\r\nHost: {API}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n"
            f"Authorization: token {sb.api_token}\r\n\r\n".encode()
        )
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 403"), head
    assert upstream_since(aw, mark) == []


@pytest.mark.parametrize("sni", ["github.com", "evil.example", None])
def test_a_tls_name_other_than_the_connect_name_ends_the_tunnel(
    aw: ApiWorld, sni: str | None
) -> None:
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{new_repo(aw, branch=None)}:read")
    mark = len(seen(aw))
    with pytest.raises((ssl.SSLError, OSError)):
        sb.tunnel(sni=sni).close()
    assert upstream_since(aw, mark) == []


def test_the_tunnel_of_another_sandbox_address_is_refused(aw: ApiWorld) -> None:
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{new_repo(aw, branch=None)}:read")
    other = make_sandbox(aw, f"{HOST}/{OWNER}/{new_repo(aw, branch=None)}:read")
    # my proxy token from the other sandbox's address
    with sb.tunnel(source=other.source) as t:
        assert t.connect_status == 407


def test_h2_is_not_spoken_inside_the_tunnel(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    with sb.tunnel(alpn=["h2"]) as t:
        assert t.tls is not None and t.tls.selected_alpn_protocol() in (None, "http/1.1")
        t.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        resp = t.response()
        # h11 takes "HTTP/2.0" as a version it can answer; no Host (421) or the target (400)
        assert resp is None or resp.status in (400, 421), resp
    assert upstream_since(aw, mark) == []


# =============================================================================== methods and paths


@pytest.mark.parametrize("method", ["get", "OPTIONS", "TRACE", "PROPFIND", "DELETE", "PUT"])
def test_odd_and_unlisted_methods_reach_nothing(aw: ApiWorld, method: str) -> None:
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    number = create_pull(sb, repo)
    mark = len(seen(aw))
    with sb.tunnel() as t:
        for target in (f"/repos/{OWNER}/{repo}/pulls/{number}", f"/repos/{OWNER}/{repo}"):
            resp = t.call(method, target, token=sb.api_token)
            assert resp.status in (403, 405), (method, target, resp)
    assert upstream_since(aw, mark) == []
    assert aw.api.repository(OWNER, repo) is not None


def test_a_write_with_a_method_override_in_the_query_is_refused(aw: ApiWorld) -> None:
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    number = create_pull(sb, repo)
    mark = len(seen(aw))
    for target in (
        f"/repos/{OWNER}/{repo}/pulls/{number}/reviews?_method=PUT",
        f"/repos/{OWNER}/{repo}/pulls/{number}/reviews?event=APPROVE",
    ):
        resp = sb.call("POST", target, {"body": "x"})
        assert resp.status == 400, resp
    assert upstream_since(aw, mark) == []


def test_branch_protection_is_not_readable_with_escapes(aw: ApiWorld) -> None:
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    assert sb.call("GET", f"/repos/{OWNER}/{repo}/branches/main/protection").status == 403
    mark = len(seen(aw))
    sb.call("GET", f"/repos/{OWNER}/{repo}/branches/main/protectio%6E")
    paths = [s.path for s in upstream_since(aw, mark)]
    assert f"/repos/{OWNER}/{repo}/branches/main/protection" not in paths, paths


@pytest.mark.parametrize(
    "target",
    [
        "/repos/octo/REPO/%2e%2e/%2e%2e/user/repos",
        "/repos/octo/REPO/contents/..%2f..%2f..%2fuser",
        "/repos/octo/REPO%2f..%2fsecret",
        "//repos/octo/REPO",
        "/repos/octo/REPO/",
        "/repos/octo/REPO;x=1",
        "/repos/octo/REPO/contents/%C0%AE%C0%AE/x",  # overlong UTF-8 '..' (allowed: literal)
    ],
)
def test_path_games_never_leave_the_repository_upstream(aw: ApiWorld, target: str) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    mark = len(seen(aw))
    sb.call("GET", target.replace("REPO", repo))
    for up in upstream_since(aw, mark):
        assert up.path.startswith(f"/repos/{OWNER}/{repo}/") and ".." not in up.path.split("/")


# =============================================================================== framing


def test_content_length_and_chunked_together_do_not_desync(aw: ApiWorld) -> None:
    """A body framed two ways: whichever way the relay reads it, every request it then sees is
    decided on its own, so the hidden one (a merge) is refused, and the upstream gets only
    bodies framed by the relay itself."""
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    number = create_pull(sb, repo)
    hidden = (
        f"PUT /repos/{OWNER}/{repo}/pulls/{number}/merge HTTP/1.1\r\nHost: {API}\r\n"
        f"Authorization: token {sb.api_token}\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    chunk = b'{"title":"x"}'
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    mark = len(seen(aw))
    with sb.tunnel() as t:
        t.send(
            f"PATCH /repos/{OWNER}/{repo}/pulls/{number} HTTP/1.1\r\nHost: {API}\r\n"
            f"Authorization: token {sb.api_token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + body
            + hidden
        )
        statuses = []
        for _ in range(3):
            resp = t.response()
            if resp is None:
                break
            statuses.append(resp.status)
    ups = upstream_since(aw, mark)
    assert not any(u.path.endswith("/merge") for u in ups), ups
    assert aw.api.pulls(OWNER, repo)[0].state == "open"
    for u in ups:
        assert "Transfer-Encoding" not in u.headers  # framed anew by the relay
        assert u.headers["Authorization"] == f"token {TOKEN}"
    assert statuses and all(s in (200, 400, 403) for s in statuses), statuses


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 13\r\nContent-Length: 40",
        "Content-Length: 13, 40",
        "Content-Length: +13",
        "Content-Length: 0x0d",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Content-Length : 13",
        "Content-Length:\t13\r\n folded: yes",
    ],
)
def test_ambiguous_framing_is_refused_and_the_tunnel_ends(aw: ApiWorld, framing: str) -> None:
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    number = create_pull(sb, repo)
    mark = len(seen(aw))
    with sb.tunnel() as t:
        t.send(
            f"PATCH /repos/{OWNER}/{repo}/pulls/{number} HTTP/1.1\r\nHost: {API}\r\n"
            f"Authorization: token {sb.api_token}\r\n{framing}\r\n\r\n".encode()
            + b'{"title":"x"}'
            + f"GET /repos/{OWNER}/{repo} HTTP/1.1\r\nHost: {API}\r\n"
            f"Authorization: token {sb.api_token}\r\n\r\n".encode()
        )
        resp = t.response()
        assert resp is not None and resp.status in (400, 501), resp
        assert t.closed()
    assert upstream_since(aw, mark) == []


def test_pipelined_requests_are_each_decided_and_answered_in_order(aw: ApiWorld) -> None:
    granted = new_repo(aw, branch=None)
    secret = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{granted}:read")
    hdr = f"Host: {API}\r\nUser-Agent: a\r\nAuthorization: token {sb.api_token}\r\n"
    # a refused write whose body is itself a request: read as a body, never as a request
    inner = f"GET /repos/{OWNER}/{secret} HTTP/1.1\r\n{hdr}\r\n".encode()
    mark = len(seen(aw))
    with sb.tunnel() as t:
        t.send(
            f"GET /repos/{OWNER}/{granted} HTTP/1.1\r\n{hdr}\r\n".encode()
            + f"POST /repos/{OWNER}/{granted}/pulls/1/comments HTTP/1.1\r\n{hdr}"
            f"Content-Length: {len(inner)}\r\n\r\n".encode()
            + inner
            + f"GET /repos/{OWNER}/{secret} HTTP/1.1\r\n{hdr}\r\n".encode()
            + f"GET /repos/{OWNER}/{granted}/pulls HTTP/1.1\r\n{hdr}\r\n".encode()
        )
        statuses = []
        for _ in range(4):
            resp = t.response()
            assert resp is not None
            statuses.append(resp.status)
    assert statuses == [200, 403, 404, 200]
    paths = [u.path for u in upstream_since(aw, mark)]
    assert paths == [f"/repos/{OWNER}/{granted}", f"/repos/{OWNER}/{granted}/pulls"]


def test_an_oversized_body_is_refused_before_it_is_read(aw: ApiWorld) -> None:
    repo = new_repo(aw)
    sb = write_sandbox(aw, repo)
    number = create_pull(sb, repo)
    mark = len(seen(aw))
    with sb.tunnel() as t:
        t.send(
            f"PATCH /repos/{OWNER}/{repo}/pulls/{number} HTTP/1.1\r\nHost: {API}\r\n"
            f"Authorization: token {sb.api_token}\r\nContent-Length: {10**12}\r\n\r\n".encode()
            + b'{"title":"x"}'
        )
        resp = t.response()
        assert resp is not None and resp.status == 413
        assert t.closed()
    with sb.tunnel() as t:
        t.send(
            f"POST /graphql HTTP/1.1\r\nHost: {API}\r\nAuthorization: token {sb.api_token}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        resp = None
        for _ in range(40):  # 40 x 64 KiB: well over the 1 MiB cap
            try:
                t.send(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
            except OSError:
                break
        resp = t.response()
        assert resp is None or resp.status == 413, resp
    assert upstream_since(aw, mark) == []


def test_a_tunnel_survives_a_refusal_and_stays_in_step(aw: ApiWorld) -> None:
    repo = new_repo(aw, branch=None)
    sb = make_sandbox(aw, f"{HOST}/{OWNER}/{repo}:read")
    with sb.tunnel() as t:
        started = time.monotonic()
        statuses = [
            t.call(
                "POST",
                "/graphql",
                b'{"query": "{ __schema { types { name } } }"}',
                token=sb.api_token,
            ).status,
            t.call("GET", f"/repos/{OWNER}/{repo}/hooks", token=sb.api_token).status,
            t.call("GET", f"/repos/{OWNER}/{repo}", token=sb.api_token).status,
        ]
        assert time.monotonic() - started < TIMEOUT
    assert statuses == [403, 403, 200]
    deadline = time.monotonic() + TIMEOUT
    while len(lines := audit_api(aw, sb)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the audit line follows the answer
    assert [line["decision"] for line in lines[-3:]] == ["refused", "refused", "allowed"]


# =============================================================================== pull limit


LIMITED = ("127.0.0.89", free_port())


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    """A gateway whose sessions may open one pull request each."""
    w = ApiWorld(
        tmp_path_factory.mktemp("api-attacks-limited"),
        gateway_extra=f"dns_port = {free_port()}\n",
        config_extra=f"[sandbox]\nproxy_port = {LIMITED[1]}\n",
        api_extra="max_pulls = 1",
    )
    w.start()
    w.control.add_listener(LIMITED[0])
    try:
        yield w
    finally:
        w.stop()


def test_parallel_creates_do_not_outrun_the_pull_request_limit(limited: ApiWorld) -> None:
    branches = [f"agent/p{i}" for i in range(4)]
    repo = new_repo(limited, *branches)
    sb = make_sandbox(limited, f"{HOST}/{OWNER}/{repo}:write", listen=LIMITED)
    tunnels = [sb.tunnel() for _ in branches]
    try:
        bodies = [json.dumps({"title": "T", "head": b, "base": "main"}).encode() for b in branches]
        heads = [
            (
                f"POST /repos/{OWNER}/{repo}/pulls HTTP/1.1\r\nHost: {API}\r\nUser-Agent: a\r\n"
                f"Authorization: token {sb.api_token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            for body in bodies
        ]
        for t, head in zip(tunnels, heads, strict=True):
            t.send(head)  # every head first: the relay now waits for the bodies
        for t, body in zip(tunnels, bodies, strict=True):
            t.send(body)
        statuses = []
        for t in tunnels:
            resp = t.response()
            statuses.append(resp.status if resp else 0)
    finally:
        for t in tunnels:
            t.close()
    assert sorted(statuses).count(201) >= 1, statuses  # (control) the first one opens
    assert len(limited.api.pulls(OWNER, repo)) <= 1, statuses


def test_the_pull_request_limit_holds_one_after_another(limited: ApiWorld) -> None:
    repo = new_repo(limited, "agent/a", "agent/b")
    sb = make_sandbox(limited, f"{HOST}/{OWNER}/{repo}:write", listen=LIMITED)
    first = sb.call(
        "POST", f"/repos/{OWNER}/{repo}/pulls", {"title": "T", "head": "agent/a", "base": "main"}
    )
    second = sb.call(
        "POST", f"/repos/{OWNER}/{repo}/pulls", {"title": "T", "head": "agent/b", "base": "main"}
    )
    assert (first.status, second.status) == (201, 403), (first, second)
    assert second.json()["message"].startswith("airlock: this session may create at most 1")
    assert len(limited.api.pulls(OWNER, repo)) == 1
