"""Sessions that match work, against a real gateway process, real git and real curl.

* Any admitted, successful request extends a session's idle timeout: git, CONNECT tunnels
  (also while a long tunnel moves bytes) and plain-HTTP proxy requests; refused ones (not
  allowlisted, private address, port, byte cap, wrong token, wrong source) never do.
* An ended session is told: git prints ``airlock: session expired`` / ``session revoked``
  with the request id (a lifetime-expired certificate used to end in a connection reset),
  the proxy answers 407 with ``X-Airlock-Refused: session_expired`` / ``session_revoked``;
  the audit line names the session. Nothing of an ended session gets through.
* A session without grants: its proxy token works, its git reaches no repository.
* The gateway's id in ``GET /v1/health``.

"Sandboxes" are sessions bound to a loopback source address; a listener on 127.0.0.90 stands
in for a sandbox network's gateway address. The decoys (HTTPS and HTTP) run on 127.0.0.1;
the names the proxy resolves come from its static map. Nothing leaves this machine.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from airlock.gateway.pki import CertificateAuthority, key_pem, make_csr, new_private_key
from airlock.host.bundle import GatewayEndpoint, write_bundle
from airlock.testing.ports import free_port
from airlock.testing.repos import git_env
from airlock.testing.tls import make_test_ca_and_server_cert
from tests.integration.test_abuse_controls import _metric
from tests.integration.test_egress_proxy import Decoy
from tests.integration.test_plumbing_holes import _minimal_config
from tests.rawhttp import client_context, get, send_raw
from tests.world import HOST, Bundle, World, run_gateway_cli

LOOP = "127.0.0.1"
LISTEN = "127.0.0.90"  # the "sandbox network's" gateway address
DECOY = "decoy.test"  # allowlisted, resolves to the decoys on loopback
OTHER = "other.test"  # resolves to the decoys too, never allowlisted
PRIVATE = "private.test"  # allowlisted, resolves to 10.0.0.1: refused before any dial
IDLE = 2  # seconds: the short idle timeout of the sessions under test
RECHECK = 1  # egress.session_recheck_interval
BYTE_BUDGET = 1_000_000  # egress.session_bytes per hour: one /big download exhausts it
REQUEST_ID = re.compile(r"request id ([0-9a-f]{16})")


class Liveness:
    """The world, its decoys and the sandbox listener's proxy port."""

    def __init__(self, w: World, https: Decoy, http: Decoy, proxy_port: int, ca: Path) -> None:
        self.w, self.https, self.http, self.proxy_port, self.ca = w, https, http, proxy_port, ca


@pytest.fixture(scope="module")
def lw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Liveness]:
    root = tmp_path_factory.mktemp("liveness")
    tls = make_test_ca_and_server_cert(root / "decoy-tls", [DECOY, OTHER], [LOOP])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.server_cert, tls.server_key)
    w = World(root, gateway_extra=f"dns_port = {free_port()}\n")
    https = w.loop.run(Decoy(LOOP, "decoy", server).start())
    http = w.loop.run(Decoy(LOOP, "plain", None).start())
    proxy_port = free_port()
    static = "".join(
        f'[[egress.static]]\nname = "{name}"\naddresses = ["{address}"]\n{private}\n'
        for name, address, private in (
            (DECOY, LOOP, "allow_private = true"),
            (OTHER, LOOP, "allow_private = true"),
            (PRIVATE, "10.0.0.1", ""),
        )
    )
    w.config_extra = f"""
[egress]
connect_ports = [{https.port}]
http_ports = [{http.port}]
session_recheck_interval = {RECHECK}
session_bytes = "{BYTE_BUDGET}/hour"
{static}
[sandbox]
proxy_port = {proxy_port}
"""
    w.start()
    w.control.add_listener(LISTEN)
    yield Liveness(w, https, http, proxy_port, tls.ca_cert)
    w.loop.run(https.stop())
    w.loop.run(http.stop())
    w.stop()


# ------------------------------------------------------------------------------ helpers


def sandbox(
    lw: Liveness,
    source: str,
    *grants: str,
    allow_hosts: tuple[str, ...] = (DECOY, PRIVATE),
    **kw: Any,
) -> tuple[dict[str, Any], bytes]:
    """A session bound to ``source`` behind LISTEN, as the host side makes one."""
    issued, key = lw.w.issue(*grants, allow_hosts=list(allow_hosts), require_activation=True, **kw)
    lw.w.control.activate(
        issued["session"]["id"],
        container_id=os.urandom(32).hex(),
        network="test",
        address=source,
        gateway_address=LISTEN,
    )
    return issued, key


def curl(
    lw: Liveness, url: str, token: str, source: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Real curl through the gateway's proxy, from ``source``; stdout ends with the status."""
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--proxy",
            f"http://{LISTEN}:{lw.proxy_port}",
            "--proxy-user",
            f"airlock:{token}",
            "--interface",
            source,
            "--cacert",
            str(lw.ca),
            "-w",
            "\n%{http_code} %{http_connect}",
            *extra,
            url,
        ],
        env=git_env(lw.w.home),
        capture_output=True,
        text=True,
        timeout=30,
    )


def https_url(lw: Liveness, host: str = DECOY, path: str = "/") -> str:
    return f"https://{host}:{lw.https.port}{path}"


def http_url(lw: Liveness, host: str = DECOY, path: str = "/") -> str:
    return f"http://{host}:{lw.http.port}{path}"


def status(r: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(final HTTP status, CONNECT status) from curl's ``-w``."""
    code, connect = r.stdout.rsplit("\n", 1)[1].split()
    return int(code), int(connect)


def ok_https(lw: Liveness, token: str, source: str) -> None:
    r = curl(lw, https_url(lw), token, source)
    assert status(r) == (200, 200), (r.stdout, r.stderr)
    assert "hello from decoy" in r.stdout


def ok_http(lw: Liveness, token: str, source: str) -> None:
    r = curl(lw, http_url(lw), token, source)
    assert status(r)[0] == 200, (r.stdout, r.stderr)
    assert "hello from plain" in r.stdout


def refused_407(lw: Liveness, token: str, source: str, rule: str) -> None:
    """Both ways in answer 407 naming ``rule``, with a request id; nothing reaches a decoy."""
    before = (lw.https.connections, lw.http.connections)
    # CONNECT: curl shows the proxy's answer head with -v.
    r = curl(lw, https_url(lw), token, source, "-v")
    assert status(r)[1] == 407, (r.stdout, r.stderr)
    assert f"< X-Airlock-Refused: {rule}\r" in r.stderr or f"< X-Airlock-Refused: {rule}\n" in (
        r.stderr
    ), r.stderr
    assert re.search(r"< X-Airlock-Request-Id: e-[0-9a-f]{16}", r.stderr), r.stderr
    # Plain HTTP: the 407 is the answer itself.
    r = curl(lw, http_url(lw), token, source, "-i")
    assert status(r)[0] == 407, (r.stdout, r.stderr)
    assert f"X-Airlock-Refused: {rule}" in r.stdout, r.stdout
    assert f"airlock egress: proxy authentication required ({rule})" in r.stdout
    assert (lw.https.connections, lw.http.connections) == before


def egress_lines(w: World, session_id: str) -> list[dict[str, Any]]:
    return [e for e in w.audit_for(session_id) if e["event"] == "egress"]


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def last_used(w: World, session_id: str) -> float:
    return float(w.control.show(session_id)["last_used"])


class Tunnel:
    """A CONNECT tunnel through the proxy from ``source``, TLS to the decoy inside it."""

    def __init__(self, lw: Liveness, token: str, source: str, path: str) -> None:
        raw = socket.create_connection(
            (LISTEN, lw.proxy_port), timeout=10, source_address=(source, 0)
        )
        auth = base64.b64encode(f"airlock:{token}".encode()).decode()
        target = f"{DECOY}:{lw.https.port}"
        raw.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(1)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=str(lw.ca))
        self.sock = ctx.wrap_socket(raw, server_hostname=DECOY)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {DECOY}\r\n\r\n".encode())
        self.received = 0

    def read_for(self, seconds: float) -> None:
        """Read what arrives for ``seconds``; AssertionError if the tunnel closes."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            data = self.sock.recv(4096)
            assert data, "the tunnel closed"
            self.received += len(data)

    def closed_within(self, seconds: float) -> float:
        """How long until the gateway closed the tunnel (reading what still arrives)."""
        t0 = time.monotonic()
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(4096):
                pass
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        took = time.monotonic() - t0
        assert took < seconds, "the tunnel stayed open"
        return took

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------ egress use


def test_egress_use_keeps_a_session_alive_past_its_idle_timeout(lw: Liveness) -> None:
    src = "127.0.0.91"
    issued, _ = sandbox(lw, src, idle_timeout=IDLE)
    sid, token = issued["session"]["id"], issued["proxy_token"]
    created = issued["session"]["last_used"]
    assert issued["session"]["idle_timeout"] == IDLE  # session create's idle_timeout
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 2.5 * IDLE:  # well past the idle timeout
        (ok_https if n % 2 == 0 else ok_http)(lw, token, src)
        n += 1
        time.sleep(0.4)
    # Still alive; each kind of request moved the idle deadline.
    ok_https(lw, token, src)
    assert last_used(lw.w, sid) > created + 2 * IDLE
    # Then left idle, it ends, and its own token is told so.
    time.sleep(IDLE + 0.5)
    refused_407(lw, token, src, "session_expired")
    line = egress_lines(lw.w, sid)[-1]
    assert line["status"] == 407 and line["rule"] == "session_expired"
    assert line["detail"] == "idle_timeout" and line["decision"] == "refused"


def test_refused_egress_does_not_keep_a_session_alive(lw: Liveness) -> None:
    src, capped_src, capped_http_src, elsewhere = (
        "127.0.0.92",
        "127.0.0.98",
        "127.0.0.99",
        "127.0.0.93",
    )
    born = time.monotonic()
    issued, _ = sandbox(lw, src, idle_timeout=IDLE)
    sid, token = issued["session"]["id"], issued["proxy_token"]
    capped, _ = sandbox(lw, capped_src, idle_timeout=IDLE)
    capped_token = capped["proxy_token"]
    capped_http, _ = sandbox(lw, capped_http_src, idle_timeout=IDLE)
    other, _ = sandbox(lw, elsewhere)  # a session on another source: its token is valid
    # The byte cap: these downloads (a tunnel, a plain request) are admitted and stopped by
    # the budget (they must not count), then every later request of the session is
    # refused by it (429).
    for url, tok, source in (
        (https_url(lw, path="/big"), capped_token, capped_src),
        (http_url(lw, path="/big"), capped_http["proxy_token"], capped_http_src),
    ):
        r = curl(lw, url, tok, source)
        assert len(r.stdout) < 2 * 1024 * 1024, "the byte budget did not stop the download"
    # Refused requests of every kind until just before the idle deadline; each answered as
    # refused (so the sessions are alive until then), none moving the deadline.
    wrong_tokens = rounds = 0
    while time.monotonic() - born < IDLE - 0.5:
        rounds += 1
        cases = [
            ("byte_cap", curl(lw, https_url(lw), capped_token, capped_src), (0, 429)),
            ("byte_cap_http", curl(lw, http_url(lw), capped_token, capped_src), (429, 0)),
            (
                "byte_cap_http2",
                curl(lw, http_url(lw), capped_http["proxy_token"], capped_http_src),
                (429, 0),
            ),
            ("not_allowlisted", curl(lw, https_url(lw, OTHER), token, src), (0, 403)),
            ("not_allowlisted_http", curl(lw, http_url(lw, OTHER), token, src), (403, 0)),
            ("private_address", curl(lw, http_url(lw, PRIVATE), token, src), (403, 0)),
            ("private_address_connect", curl(lw, https_url(lw, PRIVATE), token, src), (0, 403)),
            ("port", curl(lw, f"https://{DECOY}:{lw.http.port}/", token, src), (0, 403)),
            ("wrong_source", curl(lw, https_url(lw), token, elsewhere), (0, 407)),
        ]
        if wrong_tokens < 3:  # a few: more would back the source off (also a 407)
            cases.append(("wrong_token", curl(lw, https_url(lw), "nope", src), (0, 407)))
            wrong_tokens += 1
        for name, result, want in cases:
            assert status(result) == want, (name, result.stdout, result.stderr)
        time.sleep(0.05)
    assert rounds >= 2
    time.sleep(max(0.0, IDLE + 0.3 - (time.monotonic() - born)))
    for session, session_src in (
        (issued, src),
        (capped, capped_src),
        (capped_http, capped_http_src),
    ):
        assert last_used(lw.w, session["session"]["id"]) == session["session"]["last_used"]
        refused_407(lw, session["proxy_token"], session_src, "session_expired")
    # The other session was not touched by its token being tried from the wrong source.
    assert last_used(lw.w, other["session"]["id"]) == other["session"]["last_used"]
    assert egress_lines(lw.w, sid)[-1]["rule"] == "session_expired"


def test_a_tunnel_moving_bytes_keeps_its_session_alive_a_quiet_one_does_not(
    lw: Liveness,
) -> None:
    src = "127.0.0.94"
    issued, _ = sandbox(lw, src, idle_timeout=IDLE)
    sid, token = issued["session"]["id"], issued["proxy_token"]
    created = issued["session"]["last_used"]
    busy = Tunnel(lw, token, src, "/drip")  # a byte every 50 ms
    try:
        busy.read_for(2.5 * IDLE)
        assert busy.received > 20
        assert last_used(lw.w, sid) > created + 1.5 * IDLE
        ok_https(lw, token, src)  # alive, past its idle timeout, by the tunnel alone
    finally:
        busy.close()
    # A tunnel that is open but moves nothing is not use: the session ends, and so does
    # the tunnel (at the next recheck).
    quiet = Tunnel(lw, token, src, "/hold")
    try:
        assert quiet.closed_within(IDLE + 2 * RECHECK + 1) > IDLE - 1
    finally:
        quiet.close()
    wait_for(lambda: any(e.get("end") == "session_ended" for e in egress_lines(lw.w, sid)))
    refused_407(lw, token, src, "session_expired")


def test_a_revoked_sessions_tunnel_ends_within_the_recheck_interval(lw: Liveness) -> None:
    src = "127.0.0.95"
    issued, _ = sandbox(lw, src)
    sid, token = issued["session"]["id"], issued["proxy_token"]
    busy = Tunnel(lw, token, src, "/drip")
    try:
        busy.read_for(0.3)
        lw.w.control.revoke(sid)
        # Its bytes still moving do not keep it: closed at the next recheck.
        assert busy.closed_within(RECHECK + 1.5) <= RECHECK + 0.5
    finally:
        busy.close()
    wait_for(lambda: any(e.get("end") == "session_ended" for e in egress_lines(lw.w, sid)))
    refused_407(lw, token, src, "session_revoked")
    line = egress_lines(lw.w, sid)[-1]
    assert line["rule"] == "session_revoked" and line["detail"] == "revoked"
    # A wrong token from the same source is still just a wrong token.
    r = curl(lw, http_url(lw), "nope", src, "-i")
    assert status(r)[0] == 407 and "X-Airlock-Refused: proxy_auth" in r.stdout


# ------------------------------------------------------------------------------ git told


def _git_refused(w: World, b: Bundle, repo: str, told: str) -> str:
    """git against an ended session: its message and the request id; the request id."""
    before = len(w.upstream.requests)
    r = w.git(b, "ls-remote", f"https://{HOST}/{repo}")
    assert r.returncode != 0
    assert "Connection reset" not in r.stderr, r.stderr
    m = re.search(rf"remote: airlock: {told} \(request id ([0-9a-f]{{16}})\)", r.stderr)
    assert m, r.stderr
    assert len(w.upstream.requests) == before  # nothing of it went upstream
    return m.group(1)


def _git_line(w: World, session_id: str, request_id: str) -> dict[str, Any]:
    [line] = [e for e in w.audit_for(session_id) if e.get("request_id") == request_id]
    return line


def test_git_is_told_its_session_expired_by_idle_timeout(lw: Liveness) -> None:
    w = lw.w
    w.make_repo("acme", "idle")
    b = w.session(f"{HOST}/acme/idle:read", idle_timeout=IDLE)
    assert w.git(b, "ls-remote", f"https://{HOST}/acme/idle").returncode == 0
    time.sleep(IDLE + 0.5)
    rid = _git_refused(w, b, "acme/idle", "session expired")
    line = _git_line(w, b.session_id, rid)
    assert line["status"] == 403 and line["reason"] == "idle_timeout"


def test_git_is_told_its_session_expired_at_its_lifetime_even_when_busy(lw: Liveness) -> None:
    """The session's certificate ends with its lifetime: this was a connection reset."""
    w = lw.w
    w.make_repo("acme", "lifetime")
    b = w.session(f"{HOST}/acme/lifetime:read", ttl=3)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2:  # busy: use does not move the lifetime
        assert w.git(b, "ls-remote", f"https://{HOST}/acme/lifetime").returncode == 0
        time.sleep(0.3)
    time.sleep(max(0.0, 3.3 - (time.monotonic() - t0)))
    rid = _git_refused(w, b, "acme/lifetime", "session expired")
    line = _git_line(w, b.session_id, rid)
    assert line["status"] == 403 and line["reason"] == "expired"


def test_git_is_told_its_session_was_revoked(lw: Liveness) -> None:
    w = lw.w
    w.make_repo("acme", "revoked")
    b = w.session(f"{HOST}/acme/revoked:read")
    assert w.git(b, "ls-remote", f"https://{HOST}/acme/revoked").returncode == 0
    w.control.revoke(b.session_id)
    rid = _git_refused(w, b, "acme/revoked", "session revoked")
    line = _git_line(w, b.session_id, rid)
    assert line["status"] == 403 and line["reason"] == "revoked"


def _client_cert(
    tmp: Path, ca: CertificateAuthority, session_id: str | None, *, expired: bool
) -> tuple[Path, Path]:
    """A client certificate from ``ca`` (for ``session_id``, or with no session in it)."""
    now = dt.datetime.now(dt.UTC)
    if expired:
        now -= dt.timedelta(hours=2)
    not_after = now + dt.timedelta(hours=1)
    key = new_private_key()
    if session_id is not None:
        cert = ca.issue_session(make_csr(key), session_id, now, not_after)
    else:
        uri = x509.UniformResourceIdentifier("urn:example:no-session")
        cert = ca._leaf(key.public_key(), "no session", [uri], ExtendedKeyUsageOID.CLIENT_AUTH,
                        now, not_after)  # fmt: skip
    tmp.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = tmp / "c.pem", tmp / "c.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


def _info_refs(repo: str) -> bytes:
    return get(f"/git/{HOST}/{repo}/info/refs?service=git-upload-pack")


def test_certificates_of_another_ca_or_without_a_session_are_still_refused(
    lw: Liveness, tmp_path: Path
) -> None:
    """The TLS layer no longer checks the time; it still checks everything else."""
    w = lw.w
    w.make_repo("acme", "foreign")
    b = w.session(f"{HOST}/acme/foreign:read")
    ca_pem = w.state_dir / "ca.pem"
    (tmp_path / "foreign-ca").mkdir()
    foreign = CertificateAuthority.load_or_create(tmp_path / "foreign-ca", dt.datetime.now(dt.UTC))
    for expired in (False, True):
        cert, key = _client_cert(tmp_path / f"f{expired}", foreign, b.session_id, expired=expired)
        ctx = client_context(None, ca_pem, cert=cert, key=key)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            send_raw(ctx, w.port, _info_refs("acme/foreign"), source="127.0.0.96")
    # The gateway's own CA, but no session in the certificate: refused, current or expired.
    own = CertificateAuthority.load_or_create(w.state_dir, dt.datetime.now(dt.UTC))
    for expired in (False, True):
        cert, key = _client_cert(tmp_path / f"o{expired}", own, None, expired=expired)
        ctx = client_context(None, ca_pem, cert=cert, key=key)
        r = send_raw(ctx, w.port, _info_refs("acme/foreign"), source="127.0.0.96")
        assert r.status == 403 and b"airlock: forbidden" in r.body
    # The session's own certificate still works.
    ok = send_raw(client_context(b.dir, ca_pem), w.port, _info_refs("acme/foreign"))
    assert ok.status == 200


def test_an_expired_certificate_does_not_clear_the_handshake_back_off(lw: Liveness) -> None:
    """Its handshake completes now (so that it can be told); it must not count as a good one
    and wipe the source's count of failed handshakes."""
    w = lw.w
    w.make_repo("acme", "backoff")
    ca_pem = w.state_dir / "ca.pem"
    expired = w.session(f"{HOST}/acme/backoff:read", ttl=1)
    good = w.session(f"{HOST}/acme/backoff:read")
    time.sleep(1.3)
    src = "127.0.0.97"
    no_cert = client_context(None, ca_pem)

    def fail_handshake() -> None:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            send_raw(no_cert, w.port, _info_refs("acme/backoff"), source=src)

    backed_off = _metric(w, "airlock_denials_total", reason="auth_backoff")
    for _ in range(9):  # limits.auth_failure_threshold = 10
        fail_handshake()
    told = send_raw(
        client_context(expired.dir, ca_pem), w.port, _info_refs("acme/backoff"), source=src
    )
    assert told.status == 403 and b"airlock: session expired" in told.body
    fail_handshake()  # the tenth failure: the source is backed off
    with pytest.raises((ssl.SSLError, ConnectionError)):
        send_raw(client_context(good.dir, ca_pem), w.port, _info_refs("acme/backoff"), source=src)
    assert _metric(w, "airlock_denials_total", reason="auth_backoff") > backed_off


# ------------------------------------------------------------------------------ no grants


def test_a_session_without_grants_uses_egress_and_reaches_no_repository(
    lw: Liveness, tmp_path: Path
) -> None:
    w = lw.w
    w.make_repo("acme", "nogrants")
    # git connects to LISTEN from 127.0.0.1: the session is bound to that address.
    issued, key = sandbox(lw, LOOP)
    assert issued["session"]["grants"] == []
    token = issued["proxy_token"]
    ok_https(lw, token, LOOP)
    ok_http(lw, token, LOOP)
    bundle_dir = tmp_path / "bundle"
    write_bundle(
        bundle_dir, issued, key, endpoint=GatewayEndpoint("airlock.internal", LISTEN, w.port)
    )
    b = Bundle(issued["session"]["id"], bundle_dir)
    before = len(w.upstream.requests)
    r = w.git(b, "ls-remote", f"https://{HOST}/acme/nogrants")
    assert r.returncode != 0
    assert "remote: airlock: repository not found (request id" in r.stderr, r.stderr
    assert len(w.upstream.requests) == before
    rid = REQUEST_ID.search(r.stderr)
    assert rid is not None
    line = _git_line(w, b.session_id, rid.group(1))
    assert line["status"] == 404 and line["reason"] == "not_granted"
    # The same answer as a granted session gets for a repository it was not granted.
    granted = w.session(f"{HOST}/acme/other:read")
    r2 = w.git(granted, "ls-remote", f"https://{HOST}/acme/nogrants")
    assert "remote: airlock: repository not found (request id" in r2.stderr, r2.stderr
    rid2 = REQUEST_ID.search(r2.stderr)
    assert rid2 is not None
    assert _git_line(w, granted.session_id, rid2.group(1))["reason"] == "not_granted"


# ------------------------------------------------------------------------------ gateway id


def test_health_names_the_gateway_and_keeps_the_name_across_restarts(lw: Liveness) -> None:
    w = lw.w
    gid = w.control.health()["gateway_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", gid)
    path = w.state_dir / "gateway-id"
    assert path.read_text() == gid + "\n"
    assert path.stat().st_mode & 0o777 == 0o644
    w.stop_gateway()
    w.start_gateway()
    w.control.add_listener(LISTEN)
    assert w.control.health()["gateway_id"] == gid


def test_a_bad_gateway_id_file_is_a_startup_error(tmp_path: Path) -> None:
    cfg = _minimal_config(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "gateway-id").write_text("not-an-id\n")
    r = run_gateway_cli(cfg)
    assert r.returncode != 0
    assert "gateway-id: not a gateway id" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert (tmp_path / "state" / "gateway-id").read_text() == "not-an-id\n"  # left alone
