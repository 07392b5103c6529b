"""Git clients no one here wrote, through the real gateway: dulwich (pure Python) and pygit2
(libgit2), and the second way in for clients that cannot present a client certificate.

* dulwich with a host bundle: mTLS with the bundle's certificate (a urllib3 PoolManager, what
  a dulwich user passes), the bundle's gitconfig rewriting the plain GitHub URL: clone,
  fetch, push, and the push lands upstream.
* pygit2 with a host bundle: libgit2 cannot present a client certificate, so the host
  listener refuses the TLS handshake; nothing is served and the upstream is never asked.
* HTTP Basic on a sandbox listener. A listener on a loopback address stands in for a sandbox
  network's gateway address, and the session is activated bound to a loopback "sandbox"
  address exactly as ``airlock run`` binds it. pygit2 clones, fetches and pushes with the
  session id and git password; the same secret from another address, on another sandbox's
  listener, on the host listener, or for a host session is refused; a wrong secret is
  refused and backs its source off; a certificate beats a Basic header.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest
import urllib3
from dulwich import porcelain
from dulwich.client import get_transport_and_path
from dulwich.config import StackedConfig
from dulwich.errors import GitProtocolError
from dulwich.refs import Ref
from dulwich.repo import Repo

from airlock.host.bundle import GatewayEndpoint, write_bundle
from tests.rawhttp import RawResponse, client_context, get, send_raw
from tests.world import HOST, Bundle, World

SANDBOX_GW = "127.0.0.50"  # the gateway's address on a "sandbox network"
OTHER_GW = "127.0.0.51"  # another sandbox network's gateway address
# Connections from this machine to 127.0.0.50 come from 127.0.0.1 (the loopback route's
# source address), so a client that cannot choose its source (libgit2) is this "sandbox".
SANDBOX = "127.0.0.1"
PYGIT2_SCRIPT = Path(__file__).parents[1] / "clients" / "pygit2_roundtrip.py"


@pytest.fixture(scope="module")
def sandbox_listeners(world: World) -> Iterator[None]:
    for address in (SANDBOX_GW, OTHER_GW):
        world.control.add_listener(address)
    yield
    for address in (SANDBOX_GW, OTHER_GW):
        world.control.remove_listener(address)


def sandbox_session(
    world: World, *grants: str, address: str, gateway: str = SANDBOX_GW, name: str
) -> tuple[Bundle, dict[str, Any]]:
    """A session bound like ``airlock run`` binds one, and its sandbox-style bundle."""
    issued, key = world.issue(*grants, require_activation=True)
    sid = issued["session"]["id"]
    world.control.activate(
        sid,
        container_id=os.urandom(32).hex(),
        network=f"test-{name}",
        address=address,
        gateway_address=gateway,
    )
    d = world.root / "sandbox-bundles" / name
    write_bundle(
        d,
        issued,
        key,
        endpoint=GatewayEndpoint("airlock.internal", gateway, world.port),
        resolve=False,  # a sandbox's hosts file names the gateway
        basic=True,
    )
    return Bundle(sid, d), issued


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def info_refs(
    world: World,
    repo: str,
    *,
    address: str,
    source: str | None = None,
    authorization: str | None = None,
    cert_bundle: Path | None = None,
) -> RawResponse:
    headers = {"Authorization": authorization} if authorization else {}
    ctx = client_context(cert_bundle, world.root / "sandbox-bundles" / "ca.pem")
    payload = get(f"/git/{HOST}/{repo}/info/refs?service=git-upload-pack", headers=headers)
    return send_raw(ctx, world.port, payload, source=source, address=address)


def upstream_count(world: World) -> int:
    return len(world.upstream.requests)


def metric(world: World, name: str) -> float:
    conn = http.client.HTTPConnection("x")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(world.socket))
    conn.sock = sock
    conn.request("GET", "/v1/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def ca(world: World) -> Path:
    """airlock's CA, where info_refs finds it."""
    b = world.session(f"{HOST}/acme/nothing:read")
    d = world.root / "sandbox-bundles"
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.pem").write_bytes((b.dir / "ca.pem").read_bytes())
    return d / "ca.pem"


# --- dulwich: mTLS with a host bundle ---------------------------------------------------------


class ResolvingPoolManager(urllib3.PoolManager):
    """The bundle's ``http.curloptResolve`` for urllib3: connections for ``name`` go to
    ``address``, and the certificate is still verified for ``name``."""

    def __init__(self, name: str, address: str, **kw: Any) -> None:
        super().__init__(**kw)
        self._name, self._address = name, address

    def connection_from_host(
        self,
        host: str | None,
        port: int | None = None,
        scheme: str | None = "http",
        pool_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if host == self._name:
            pool_kwargs = {**(pool_kwargs or {}), "server_hostname": host, "assert_hostname": host}
            host = self._address
        return super().connection_from_host(host, port, scheme, pool_kwargs)


def dulwich_pool(
    world: World, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> urllib3.PoolManager:
    """What dulwich uses in a sandbox: the bundle's url.insteadOf sends github.com to
    https://github.com:PORT (host form), and the hosts file says where that is."""
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kw: Any) -> Any:
        return real("127.0.0.1" if host == HOST else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return urllib3.PoolManager(
        cert_file=str(bundle.dir / "client.pem"),
        key_file=str(bundle.dir / "client.key"),
        ca_certs=str(bundle.dir / "ca.pem"),
        cert_reqs="CERT_REQUIRED",
    )


def _via(pool: urllib3.PoolManager) -> dict[str, Any]:
    """dulwich porcelain's ``pool_manager`` (its ``**kwargs`` are typed too narrowly for one)."""
    return {"pool_manager": pool}


def _dulwich_commit(repo: Path, name: str, text: str) -> bytes:
    (repo / name).write_text(text)
    porcelain.add(str(repo), [str(repo / name)])
    sha: bytes = porcelain.commit(
        str(repo),
        message=f"add {name} with dulwich".encode(),
        author=b"dulwich <d@example.invalid>",
        committer=b"dulwich <d@example.invalid>",
    )
    return sha


def test_dulwich_clones_fetches_and_pushes_with_a_host_bundle(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = world.make_repo("acme", "dulwich")
    b = world.session(f"{HOST}/acme/dulwich:write=agent/**,ff:main")
    # As with git: the bundle's gitconfig is the user's global config (url.insteadOf).
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(b.gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    pool = dulwich_pool(world, b, monkeypatch)
    url = f"https://{HOST}/acme/dulwich"
    err = io.BytesIO()
    first = tmp_path / "a"
    porcelain.clone(url, str(first), config=StackedConfig.default(), **_via(pool), errstream=err)
    assert (first / "README.md").exists(), err.getvalue()
    pushed = _dulwich_commit(first, "d.txt", "from dulwich\n")
    porcelain.push(str(first), url, "refs/heads/main", **_via(pool), errstream=err)
    upstream = world.git(None, "--git-dir", str(bare), "rev-parse", "main", check=True)
    assert upstream.stdout.strip() == pushed.decode()
    # A second clone sees it; the first fetches what the second pushes.
    second = tmp_path / "b"
    porcelain.clone(url, str(second), config=StackedConfig.default(), **_via(pool), errstream=err)
    assert (second / "d.txt").read_text() == "from dulwich\n"
    again = _dulwich_commit(second, "e.txt", "again\n")
    porcelain.push(str(second), url, "refs/heads/main", **_via(pool), errstream=err)
    with Repo(str(first)) as r:
        client, path = get_transport_and_path(url, config=r.get_config_stack(), pool_manager=pool)
        result = client.fetch(path, r)
    assert result.refs[Ref(b"refs/heads/main")] == again
    reqs = [e for e in world.audit_for(b.session_id) if e.get("event") == "git_request"]
    assert reqs and all(e["auth"] == "mtls" for e in reqs), reqs
    # dulwich may close a push's connection once it has read the report-status, before the
    # gateway has written the response's last chunk: the upstream still answered 200.
    assert all(e["status"] == 200 or e.get("upstream_status") == 200 for e in reqs), reqs
    services = {(e["service"], e["endpoint"]) for e in reqs}
    assert ("git-receive-pack", "rpc") in services and ("git-upload-pack", "rpc") in services


def test_dulwich_without_the_client_certificate_is_refused(world: World, tmp_path: Path) -> None:
    world.make_repo("acme", "dulwich-nocert")
    b = world.session(f"{HOST}/acme/dulwich-nocert:read")
    pool = ResolvingPoolManager(
        "airlock.internal", "127.0.0.1", ca_certs=str(b.dir / "ca.pem"), retries=False
    )
    before, failures = upstream_count(world), metric(world, "airlock_handshake_failures_total")
    url = f"https://airlock.internal:{world.port}/git/{HOST}/acme/dulwich-nocert"
    # TLS 1.3: the client sees its handshake finish, then the connection closed unanswered.
    with pytest.raises(GitProtocolError):
        porcelain.clone(url, str(tmp_path / "x"), **_via(pool), errstream=io.BytesIO())
    assert metric(world, "airlock_handshake_failures_total") > failures
    assert upstream_count(world) == before


# --- pygit2: no client certificate, so no way in with a host bundle -------------------------


def test_pygit2_with_a_host_bundle_is_refused_at_the_handshake(
    world: World, tmp_path: Path
) -> None:
    world.make_repo("acme", "libgit2-host")
    b = world.session(f"{HOST}/acme/libgit2-host:write=agent/**,ff:main")
    before, failures = upstream_count(world), metric(world, "airlock_handshake_failures_total")
    pygit2.settings.set_ssl_cert_locations(str(b.dir / "ca.pem"), None)
    # The gateway's certificate names its host address too, so libgit2 can verify it there.
    url = f"https://127.0.0.1:{world.port}/git/{HOST}/acme/libgit2-host"
    with pytest.raises(pygit2.GitError):
        pygit2.clone_repository(url, str(tmp_path / "x"))
    assert metric(world, "airlock_handshake_failures_total") > failures
    assert upstream_count(world) == before
    assert not [e for e in world.audit_for(b.session_id) if e.get("event") == "git_request"]


# --- HTTP Basic on a sandbox listener ---------------------------------------------------------


def _run_pygit2(bundle: Bundle, url: str, work: Path, *extra: str) -> str:
    """The pygit2 script with ``airlock.internal`` and the upstream host resolving to the
    sandbox's gateway address: in its own mount namespace, a hosts file says so (the sandbox's
    /etc/hosts does)."""
    work.mkdir(parents=True)
    hosts = work / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{SANDBOX_GW} airlock.internal {HOST}\n")
    cmd = (
        f"mount --bind {hosts} /etc/hosts && exec {sys.executable} {PYGIT2_SCRIPT} "
        f"{bundle.dir} {url} {work} {' '.join(extra)}"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return r.stdout + r.stderr


def test_pygit2_clones_fetches_and_pushes_with_basic_from_its_sandbox(
    world: World, sandbox_listeners: None, tmp_path: Path
) -> None:
    bare = world.make_repo("acme", "libgit2")
    b, _ = sandbox_session(
        world, f"{HOST}/acme/libgit2:write=agent/**,ff:main", address=SANDBOX, name="pygit2"
    )
    out = _run_pygit2(b, f"https://{HOST}/acme/libgit2", tmp_path / "w")
    assert "OK fetch" in out, out
    assert f"origin=https://{HOST}:{world.port}/acme/libgit2" in out, out
    pushed = next(ln.split("pushed=")[1] for ln in out.splitlines() if ln.startswith("OK fetch"))
    fetched = next(ln.split()[2] for ln in out.splitlines() if ln.startswith("OK fetch"))
    assert fetched == pushed
    upstream = world.git(None, "--git-dir", str(bare), "rev-parse", "main", check=True)
    assert upstream.stdout.strip() == pushed
    reqs = [e for e in world.audit_for(b.session_id) if e.get("event") == "git_request"]
    # Answered by the upstream. (libgit2 may hang up once it has read a push's report-status,
    # before the last chunk: the gateway then logs 502 upstream_error, the push landed.)
    served = [e for e in reqs if e["status"] == 200 or e.get("upstream_status") == 200]
    assert served and all(e["auth"] == "basic" for e in served), reqs
    assert {e["source"] for e in served} == {SANDBOX}
    services = {(e["service"], e["endpoint"]) for e in served}
    assert ("git-receive-pack", "rpc") in services and ("git-upload-pack", "rpc") in services
    # Every other answer was the challenge libgit2 waits for before it sends credentials
    # (or a push whose client hung up after reading its report-status: upstream said 200).
    others = [e for e in reqs if e not in served]
    assert all(
        (e["status"] == 401 and e["reason"] == "no_credentials") or e.get("upstream_status") == 200
        for e in others
    ), others


def test_pygit2_without_credentials_gets_the_challenge_and_nothing_else(
    world: World, sandbox_listeners: None, tmp_path: Path
) -> None:
    world.make_repo("acme", "libgit2-nocreds")
    b, _ = sandbox_session(
        world, f"{HOST}/acme/libgit2-nocreds:read", address=SANDBOX, name="pygit2-nocreds"
    )
    before = upstream_count(world)
    out = _run_pygit2(b, f"https://{HOST}/acme/libgit2-nocreds", tmp_path / "w", "--no-credentials")
    assert "FAIL clone" in out, out
    assert upstream_count(world) == before


def test_no_credentials_on_a_sandbox_listener_is_a_basic_challenge(
    world: World, sandbox_listeners: None, ca: Path
) -> None:
    world.make_repo("acme", "challenge")
    r = info_refs(world, "acme/challenge", address=SANDBOX_GW, source="127.0.0.60")
    assert r.status == 401
    assert r.headers["www-authenticate"] == 'Basic realm="airlock"'
    assert b"authentication required" in r.body


@pytest.fixture(scope="module")
def bound(world: World, sandbox_listeners: None, ca: Path) -> tuple[Bundle, str]:
    """A read session bound to the "sandbox" 127.0.0.61 on SANDBOX_GW, and its password."""
    world.make_repo("acme", "basic")
    b, issued = sandbox_session(world, f"{HOST}/acme/basic:read", address="127.0.0.61", name="b61")
    return b, str(issued["git_password"])


def test_basic_from_the_bound_sandbox_is_served(world: World, bound: tuple[Bundle, str]) -> None:
    b, password = bound
    before = upstream_count(world)
    r = info_refs(
        world,
        "acme/basic",
        address=SANDBOX_GW,
        source="127.0.0.61",
        authorization=basic(b.session_id, password),
    )
    assert r.status == 200, r.body
    assert b"refs/heads/main" in r.body
    assert upstream_count(world) == before + 1
    assert (b.dir / "git-password").read_text() == password
    assert oct((b.dir / "git-password").stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize(
    ("where", "source", "address"),
    [
        ("another source on the sandbox's network", "127.0.0.62", SANDBOX_GW),
        ("the right source, another sandbox's network", "127.0.0.61", OTHER_GW),
    ],
)
def test_the_basic_secret_is_worthless_anywhere_else(
    world: World, bound: tuple[Bundle, str], where: str, source: str, address: str
) -> None:
    b, password = bound
    before = upstream_count(world)
    r = info_refs(
        world,
        "acme/basic",
        address=address,
        source=source,
        authorization=basic(b.session_id, password),
    )
    assert r.status == 401, (where, r.status, r.body)
    assert upstream_count(world) == before
    reasons = [e.get("reason") for e in world.audit() if e.get("session") == b.session_id]
    assert reasons[-1] in ("basic_wrong_source", "basic_wrong_network"), reasons


def test_the_basic_secret_on_the_host_listener_never_gets_past_tls(
    world: World, bound: tuple[Bundle, str]
) -> None:
    b, password = bound
    before = upstream_count(world)
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        info_refs(
            world,
            "acme/basic",
            address="127.0.0.1",
            source="127.0.0.61",
            authorization=basic(b.session_id, password),
        )
    assert upstream_count(world) == before


def test_a_host_session_never_accepts_basic(
    world: World, sandbox_listeners: None, ca: Path
) -> None:
    world.make_repo("acme", "hostonly")
    issued, _ = world.issue(f"{HOST}/acme/hostonly:read")  # no activation, no binding
    before = upstream_count(world)
    for source in (SANDBOX, "127.0.0.63"):
        r = info_refs(
            world,
            "acme/hostonly",
            address=SANDBOX_GW,
            source=source,
            authorization=basic(issued["session"]["id"], issued["git_password"]),
        )
        assert r.status == 401, r.body
    assert upstream_count(world) == before
    reasons = {
        e.get("reason")
        for e in world.audit_for(issued["session"]["id"])
        if e.get("event") == "git_request"
    }
    assert reasons == {"basic_not_sandbox_session"}, reasons


def test_a_wrong_secret_is_refused_and_backs_the_source_off(
    world: World, sandbox_listeners: None, ca: Path
) -> None:
    world.make_repo("acme", "backoff")
    grant = f"{HOST}/acme/backoff:read"
    c, c_issued = sandbox_session(world, grant, address="127.0.0.64", name="b64")
    d, d_issued = sandbox_session(world, grant, address="127.0.0.65", name="b65")
    right_c = basic(c.session_id, c_issued["git_password"])

    def ask(source: str, authorization: str) -> int:
        try:
            return info_refs(
                world,
                "acme/backoff",
                address=SANDBOX_GW,
                source=source,
                authorization=authorization,
            ).status
        except (ConnectionResetError, ssl.SSLError, OSError):
            return 0  # refused before TLS: the source is backed off

    assert ask("127.0.0.64", right_c) == 200  # positive control
    before = upstream_count(world)
    for _ in range(10):  # limits.auth_failure_threshold (default 10)
        assert ask("127.0.0.64", basic(c.session_id, "wrong-" + c_issued["git_password"])) == 401
    # Backed off: even the right secret is refused for a while, from this source only.
    assert ask("127.0.0.64", right_c) in (0, 429)
    assert ask("127.0.0.65", basic(d.session_id, d_issued["git_password"])) == 200
    assert upstream_count(world) == before + 1  # only D's request went upstream
    reasons = [e.get("reason") for e in world.audit_for(c.session_id)]
    assert "basic_wrong_secret" in reasons, reasons


def test_a_certificate_beats_a_basic_header(
    world: World, bound: tuple[Bundle, str], tmp_path: Path
) -> None:
    b, _ = bound
    # Session B's own certificate on its listener, plus a Basic header naming another session
    # with a wrong password: served as B by its certificate, the header ignored, no back-off.
    other, _ = world.issue(f"{HOST}/acme/basic:read")
    for _ in range(12):
        r = info_refs(
            world,
            "acme/basic",
            address=SANDBOX_GW,
            source="127.0.0.61",
            cert_bundle=b.dir,
            authorization=basic(other["session"]["id"], "not-the-password"),
        )
        assert r.status == 200, r.body
    last = [e for e in world.audit() if e.get("event") == "git_request"][-1]
    assert last["session"] == b.session_id and last["auth"] == "mtls"
