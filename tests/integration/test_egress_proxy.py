"""The egress proxy against decoy servers on loopback. Nothing here resolves or dials outside.

Names come from a StaticResolver; decoys run on 127.0.0.1 / 127.0.0.2 with their own test CA.
Names that map to non-loopback addresses (evil.test -> 10.0.0.1, meta.test -> 169.254.169.254)
are refused before any dial, which the tests assert through the proxy's dial counter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.core.egress import IPAddress, parse_proxy_authorization
from airlock.core.session import (
    Limits,
    Session,
    create_session,
    proxy_token_matches,
    with_proxy_token,
)
from airlock.gateway.egress import AuthRefused, EgressPolicy, EgressProxy, _Record, _Refuse
from airlock.gateway.resolver import (
    DnsResolver,
    ResolveError,
    StaticEntry,
    StaticResolver,
    nameservers_from_resolv_conf,
)
from airlock.testing.tls import make_test_ca_and_server_cert

LOOP = "127.0.0.1"
TOKEN = "tok-" + "a" * 32
DOH_TOKEN = "tok-doh-" + "b" * 32
CERT_NAMES = [
    "pypi.decoy.test",
    "other.decoy.test",
    "mozilla.cloudflare-dns.com",
    "loop.test",
]
ALLOW = (
    "pypi.decoy.test",
    "other.decoy.test",
    "plain.decoy.test",
    "evil.test",
    "meta.test",
    "loop.test",
    "self.test",
    "mapped.test",
    "cgnat.test",
    "unknown.decoy.test",
    "*.cloudflare-dns.com",
)
BIG = 4 * 1024 * 1024


# ------------------------------------------------------------------------------ decoys


class Decoy:
    """A tiny HTTP(S) server that counts every TCP connection it accepts."""

    def __init__(self, address: str, name: str, tls: ssl.SSLContext | None) -> None:
        self.address, self.name, self.tls = address, name, tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> Decoy:
        self._server = await asyncio.start_server(self._handle, self.address, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self.tls is not None:
                await writer.start_tls(self.tls)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            self.requests.append(head)
            path = head.split(b" ")[1]
            if path == b"/hold":
                await asyncio.sleep(60)
            elif path == b"/drip":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                for _ in range(1000):
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            else:
                body = b"x" * BIG if path == b"/big" else b"hello from " + self.name.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


# ------------------------------------------------------------------------------ the world


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"airlock:{token}".encode()).decode()


class FakeGateway:
    """Stands in for the gateway's authenticate: token -> session, like the real one."""

    def __init__(self) -> None:
        limits = Limits(idle_timeout=3600, lifetime=3600, max_requests=1000, max_bytes=10**9)
        s = create_session(grants=(), now=time.time(), limits=limits, allow_hosts=ALLOW)
        d = create_session(
            grants=(),
            now=time.time(),
            limits=limits,
            allow_hosts=("*.cloudflare-dns.com", "mozilla.cloudflare-dns.com"),
        )
        self.sessions: list[Session] = [with_proxy_token(s, TOKEN), with_proxy_token(d, DOH_TOKEN)]
        self.revoked: set[str] = set()
        self.calls = 0

    @property
    def main(self) -> Session:
        return self.sessions[0]

    def authenticate(
        self, header: str | None, source_ip: str, local_ip: str
    ) -> Session | AuthRefused:
        self.calls += 1
        token = parse_proxy_authorization(header)
        if token is None:
            return AuthRefused("no_credentials")
        for s in self.sessions:
            if proxy_token_matches(s, token):
                if s.id in self.revoked:
                    return AuthRefused("revoked", s.id, "revoked")
                return s
        return AuthRefused("unknown_token")


@dataclasses.dataclass
class Env:
    tmp: Path
    client_ctx: ssl.SSLContext
    server_ctx: ssl.SSLContext
    https: Decoy
    https2: Decoy  # on 127.0.0.2, for loop.test
    http: Decoy
    gw: FakeGateway
    resolver: StaticResolver
    events: list[tuple[str, dict[str, Any]]]
    proxies: list[EgressProxy]

    def log(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def policy(self, **overrides: Any) -> EgressPolicy:
        base: dict[str, Any] = {
            "connect_ports": frozenset({self.https.port, self.https2.port, 22, 443}),
            "http_ports": frozenset({self.http.port}),
            "connect_timeout": 3.0,
            "idle_timeout": 10.0,
            "handshake_timeout": 3.0,
            "allow_private_names": self.resolver.private_ok,
        }
        base.update(overrides)
        return EgressPolicy(**base)

    async def proxy(self, **overrides: Any) -> tuple[EgressProxy, int]:
        p = EgressProxy(self.gw.authenticate, self.resolver, self.policy(**overrides), self.log)
        port = await p.start(LOOP, 0)
        self.proxies.append(p)
        return p, port

    def port_of(self, host: str) -> int:
        """The decoy port a name's CONNECT uses (loop.test's decoy is on 127.0.0.2)."""
        return self.https2.port if host == "loop.test" else self.https.port

    def egress_lines(self) -> list[dict[str, Any]]:
        return [f for e, f in self.events if e == "egress"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    tls = make_test_ca_and_server_cert(tmp_path_factory.mktemp("tls"), CERT_NAMES, [LOOP])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.server_cert, tls.server_key)
    client = ssl.create_default_context(cafile=str(tls.ca_cert))
    return client, server


@pytest.fixture
async def env(tmp_path: Path, certs: tuple[ssl.SSLContext, ssl.SSLContext]) -> AsyncIterator[Env]:
    client, server = certs
    https = await Decoy(LOOP, "pypi", server).start()
    https2 = await Decoy("127.0.0.2", "loop", server).start()
    http = await Decoy(LOOP, "plain", None).start()
    resolver = StaticResolver(
        [
            StaticEntry.make("pypi.decoy.test", LOOP, allow_private=True),
            StaticEntry.make("other.decoy.test", LOOP, allow_private=True),
            StaticEntry.make("plain.decoy.test", LOOP, allow_private=True),
            StaticEntry.make("mozilla.cloudflare-dns.com", LOOP, allow_private=True),
            StaticEntry.make("evil.test", "10.0.0.1"),
            StaticEntry.make("meta.test", "169.254.169.254"),
            StaticEntry.make("loop.test", "127.0.0.2"),
            StaticEntry.make("self.test", LOOP),  # the proxy's own listening address
            StaticEntry.make("mapped.test", ["::ffff:127.0.0.1"]),
            StaticEntry.make("cgnat.test", ["100.64.0.1", "10.1.1.1"]),
        ]
    )
    e = Env(tmp_path, client, server, https, https2, http, FakeGateway(), resolver, [], [])
    yield e
    for p in e.proxies:
        await p.stop()
    for d in (https, https2, http):
        await d.stop()


# ------------------------------------------------------------------------------ clients


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def read_reply(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bool = True
) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    data = b""
    if body and "content-length" in headers:
        data = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    elif body:
        data = await asyncio.wait_for(reader.read(), 10)
    return Reply(status, headers, data, reader, writer)


async def connect(port: int, target: str, token: str | None = TOKEN, extra: str = "") -> Reply:
    reader, writer = await asyncio.open_connection(LOOP, port)
    auth = f"Proxy-Authorization: {basic(token)}\r\n" if token is not None else ""
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}{extra}\r\n".encode())
    return await read_reply(reader, writer, body=False)


async def refused(port: int, target: str, token: str | None = TOKEN) -> Reply:
    r = await connect(port, target, token)
    if "content-length" in r.headers:
        r.body = await r.reader.readexactly(int(r.headers["content-length"]))
    r.writer.close()
    return r


async def https_get(env: Env, port: int, host: str, path: str = "/", token: str = TOKEN) -> bytes:
    """CONNECT, TLS with ``host`` as SNI and verified name, GET ``path``; the response body."""
    r = await connect(port, f"{host}:{env.port_of(host)}", token)
    assert r.status == 200, r
    await r.writer.start_tls(env.client_ctx, server_hostname=host)
    r.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    reply = await read_reply(r.reader, r.writer)
    r.writer.close()
    assert reply.status == 200
    return reply.body


async def http_request(port: int, raw: str, token: str | None = TOKEN) -> Reply:
    reader, writer = await asyncio.open_connection(LOOP, port)
    auth = f"Proxy-Authorization: {basic(token)}\r\n" if token is not None else ""
    head, _, rest = raw.partition("\r\n\r\n")
    writer.write(f"{head}\r\n{auth}\r\n{rest}".encode())
    reply = await read_reply(reader, writer)
    writer.close()
    return reply


# ------------------------------------------------------------------------------ CONNECT


async def test_allowed_connect_carries_real_tls(env: Env) -> None:
    proxy, port = await env.proxy()
    body = await https_get(env, port, "pypi.decoy.test", "/simple/")
    assert body == b"hello from pypi"
    assert env.https.connections == 1
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert line["session"] == env.gw.main.id
    assert line["method"] == "CONNECT"
    assert (line["host"], line["port"], line["address"]) == (
        "pypi.decoy.test",
        env.https.port,
        LOOP,
    )
    assert (line["decision"], line["rule"], line["status"]) == ("allowed", "exact", 200)
    assert line["bytes_up"] > 200 and line["bytes_down"] > 200
    assert line["duration_ms"] >= 0 and line["end"] in ("closed", "reset")
    assert proxy.stats.tunnels == 1 and proxy.open_tunnels(env.gw.main.id) == 0


async def test_host_name_is_normalised_before_matching(env: Env) -> None:
    _, port = await env.proxy()
    r = await connect(port, f"PyPI.Decoy.Test.:{env.https.port}")
    assert r.status == 200
    await r.writer.start_tls(env.client_ctx, server_hostname="pypi.decoy.test")
    r.writer.close()


async def test_not_allowlisted_name_is_403(env: Env) -> None:
    proxy, port = await env.proxy()
    r = await refused(port, f"nothere.decoy.test:{env.https.port}")
    assert r.status == 403
    assert r.headers["x-airlock-refused"] == "not_allowlisted"
    assert r.headers["x-airlock-request-id"].startswith("e-")
    assert b"not_allowlisted" in r.body and b"nothere" not in r.body
    assert proxy.stats.dials == 0
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert (line["decision"], line["rule"], line["status"]) == ("refused", "not_allowlisted", 403)


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:{p}", "127.1:{p}", "2130706433:{p}", "0x7f.0.0.1:{p}", "[::1]:{p}", "10.0.0.1:443"],
)
async def test_ip_literal_is_403(env: Env, target: str) -> None:
    proxy, port = await env.proxy()
    r = await refused(port, target.format(p=env.https.port))
    assert (r.status, r.headers["x-airlock-refused"]) == (403, "ip_literal")
    assert proxy.stats.dials == 0 and env.https.connections == 0


async def test_port_22_is_403(env: Env) -> None:
    proxy, port = await env.proxy(connect_ports=frozenset({env.https.port}))
    r = await refused(port, "pypi.decoy.test:22")
    assert (r.status, r.headers["x-airlock-refused"]) == (403, "port")
    assert proxy.stats.dials == 0


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("evil.test", "private 10.0.0.1"),
        ("meta.test", "link_local 169.254.169.254"),
        ("loop.test", "loopback 127.0.0.2"),
        ("self.test", "gateway_address 127.0.0.1"),
        ("mapped.test", f"ipv4_mapped {ipaddress.ip_address('::ffff:127.0.0.1')}"),
        ("cgnat.test", "cgnat 100.64.0.1"),
    ],
)
async def test_private_loopback_metadata_refused_without_dialing(
    env: Env, host: str, reason: str
) -> None:
    proxy, port = await env.proxy()
    r = await refused(port, f"{host}:{env.port_of(host)}")
    assert (r.status, r.headers["x-airlock-refused"]) == (403, "private_address")
    assert reason.split()[1].encode() not in r.body  # no internal detail for the client
    assert proxy.stats.dials == 0
    assert env.https.connections == 0 and env.https2.connections == 0
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert line["detail"] == reason


async def test_unresolvable_allowlisted_name_is_502(env: Env) -> None:
    proxy, port = await env.proxy()
    r = await refused(port, f"unknown.decoy.test:{env.https.port}")
    assert (r.status, r.headers["x-airlock-error"]) == (502, "resolve_failed")
    assert proxy.stats.dials == 0


async def test_one_bad_answer_refuses_the_name(env: Env) -> None:
    """Vetting alone (no socket): a public answer next to a private one does not pass."""

    class Mixed:
        async def resolve(self, name: str) -> list[IPAddress]:

            return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.0.0.1")]

    proxy = EgressProxy(env.gw.authenticate, Mixed(), env.policy(), env.log)
    rec = _Record(request_id="e-x", source=LOOP, local=LOOP, started=time.monotonic())
    with pytest.raises(_Refuse) as exc:
        await proxy._vet(rec, "mixed.test")
    assert (exc.value.status, exc.value.rule, exc.value.detail) == (
        403,
        "private_address",
        "private 10.0.0.1",
    )
    assert proxy.stats.dials == 0


async def _tls_fails(env: Env, port: int, target: str, sni: str | None) -> None:
    r = await connect(port, target)
    assert r.status == 200
    ctx = env.client_ctx
    if sni is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)):
        await asyncio.wait_for(r.writer.start_tls(ctx, server_hostname=sni), 5)
    r.writer.close()


async def test_sni_mismatch_closes_without_reaching_the_decoy(env: Env) -> None:
    proxy, port = await env.proxy()
    await _tls_fails(env, port, f"pypi.decoy.test:{env.https.port}", "other.decoy.test")
    assert env.https.connections == 0 and proxy.stats.dials == 0
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert (line["decision"], line["rule"]) == ("refused", "sni_mismatch")
    assert "other.decoy.test" in line["detail"]


async def test_no_sni_closes_without_reaching_the_decoy(env: Env) -> None:
    proxy, port = await env.proxy()
    await _tls_fails(env, port, f"pypi.decoy.test:{env.https.port}", None)
    assert env.https.connections == 0 and proxy.stats.dials == 0
    await asyncio.sleep(0.05)
    assert env.egress_lines()[0]["rule"] == "no_sni"


async def test_not_tls_inside_tunnel_is_closed(env: Env) -> None:
    proxy, port = await env.proxy()
    r = await connect(port, f"pypi.decoy.test:{env.https.port}")
    assert r.status == 200
    r.writer.write(b"GET / HTTP/1.1\r\nHost: pypi.decoy.test\r\n\r\n")
    assert await asyncio.wait_for(r.reader.read(), 5) == b""
    assert env.https.connections == 0 and proxy.stats.dials == 0
    await asyncio.sleep(0.05)
    assert env.egress_lines()[0]["rule"] == "not_tls"


async def test_doh_host_through_wildcard_is_refused(env: Env) -> None:
    proxy, port = await env.proxy()
    r = await refused(port, f"mozilla.cloudflare-dns.com:{env.https.port}")
    assert (r.status, r.headers["x-airlock-refused"]) == (403, "doh")
    assert proxy.stats.dials == 0


async def test_exact_entry_overrides_doh_list_with_warning(env: Env) -> None:
    _, port = await env.proxy()
    body = await https_get(env, port, "mozilla.cloudflare-dns.com", token=DOH_TOKEN)
    assert body == b"hello from pypi"
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert (line["decision"], line["rule"]) == ("allowed", "doh_override")
    assert line["warning"] == "doh_host_allowed_by_exact_entry"


async def test_client_hello_sent_with_connect_is_used(env: Env) -> None:
    """A client that pipelines its ClientHello right after CONNECT still works."""
    _, port = await env.proxy()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = env.client_ctx.wrap_bio(incoming, outgoing, server_hostname="pypi.decoy.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    target = f"pypi.decoy.test:{env.https.port}"
    reader, writer = await asyncio.open_connection(LOOP, port)
    writer.write(
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        f"Proxy-Authorization: {basic(TOKEN)}\r\n\r\n".encode()
        + hello
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    server_hello = await asyncio.wait_for(reader.read(1), 5)
    assert server_hello == b"\x16"  # the decoy's ServerHello came back through the tunnel
    writer.close()


# ------------------------------------------------------------------------------ plain HTTP


async def test_plain_http_get_is_forwarded(env: Env) -> None:
    proxy, port = await env.proxy()
    url = f"http://plain.decoy.test:{env.http.port}/debian/InRelease?x=1"
    r = await http_request(
        port,
        f"GET {url} HTTP/1.1\r\nHost: plain.decoy.test\r\nX-Extra: 1\r\n"
        "Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Extra\r\n\r\n",
    )
    assert r.status == 200 and r.body == b"hello from plain"
    assert r.headers["connection"] == "close"
    [seen] = env.http.requests
    lines = seen.decode().split("\r\n")
    assert lines[0] == "GET /debian/InRelease?x=1 HTTP/1.1"
    lowered = seen.lower()
    assert f"host: plain.decoy.test:{env.http.port}".encode() in lowered
    assert b"connection: close" in lowered
    assert b"proxy-authorization" not in lowered and b"proxy-connection" not in lowered
    assert b"x-extra" not in lowered  # named in Connection: hop-by-hop
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert (line["method"], line["decision"], line["status"]) == ("GET", "allowed", 200)
    assert line["bytes_down"] == len(b"hello from plain")
    assert proxy.stats.http_requests == 1


async def test_plain_http_post_body_is_forwarded(env: Env) -> None:
    _, port = await env.proxy()
    url = f"http://plain.decoy.test:{env.http.port}/upload"
    r = await http_request(
        port,
        f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert r.status == 200


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB", ""),
        ("/resolve?dns=AAAB", ""),
        ("/q", "Accept: application/dns-json\r\n"),
        ("/q", "Accept: application/dns-message\r\n"),
        ("/q", "Content-Type: application/dns-message\r\nContent-Length: 4\r\n"),
    ],
)
async def test_plain_http_doh_is_refused(env: Env, path: str, headers: str) -> None:
    proxy, port = await env.proxy()
    url = f"http://plain.decoy.test:{env.http.port}{path}"
    method = "POST" if "Content-Length" in headers else "GET"
    body = "abcd" if method == "POST" else ""
    r = await http_request(port, f"{method} {url} HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}")
    assert (r.status, r.headers["x-airlock-refused"]) == (403, "doh")
    assert env.http.connections == 0 and proxy.stats.dials == 0


@pytest.mark.parametrize(
    ("target", "status", "rule"),
    [
        ("http://127.0.0.1:{p}/", 403, "ip_literal"),
        ("http://nothere.test:{p}/", 403, "not_allowlisted"),
        ("http://plain.decoy.test:81/", 403, "port"),
        ("http://evil.test:{p}/", 403, "private_address"),
        ("https://plain.decoy.test:{p}/", 400, "bad_target"),
        ("/origin-form", 400, "not_a_proxy_request"),
    ],
)
async def test_plain_http_refusals(env: Env, target: str, status: int, rule: str) -> None:
    proxy, port = await env.proxy()
    url = target.format(p=env.http.port)
    r = await http_request(port, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (r.status, r.headers["x-airlock-refused"]) == (status, rule)
    assert env.http.connections == 0 and proxy.stats.dials == 0


async def test_plain_http_trace_is_refused(env: Env) -> None:
    _, port = await env.proxy()
    url = f"http://plain.decoy.test:{env.http.port}/"
    r = await http_request(port, f"TRACE {url} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (r.status, r.headers["x-airlock-refused"]) == (403, "method")


# ------------------------------------------------------------------------------ auth, caps


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_missing_or_wrong_auth_is_407(env: Env, token: str | None) -> None:
    proxy, port = await env.proxy()
    r = await refused(port, f"pypi.decoy.test:{env.https.port}", token=token)
    assert r.status == 407
    assert r.headers["proxy-authenticate"] == 'Basic realm="airlock"'
    assert proxy.stats.dials == 0
    # Unauthenticated refusals are counted, not logged one by one.
    assert env.egress_lines() == []
    await proxy.stop()
    [summary] = [f for e, f in env.events if e == "egress_denied_summary"]
    assert summary["total"] == 1


async def test_repeated_refusals_become_counts(env: Env) -> None:
    proxy, port = await env.proxy(refusal_log_burst=5, refusal_log_rate=0.001)
    for _ in range(40):
        r = await refused(port, f"nothere.decoy.test:{env.https.port}")
        assert r.status == 403
    await asyncio.sleep(0.05)
    assert len(env.egress_lines()) == 5
    # Allowed traffic is always logged.
    assert await https_get(env, port, "pypi.decoy.test") == b"hello from pypi"
    await proxy.stop()
    assert len(env.egress_lines()) == 6
    [summary] = [f for e, f in env.events if e == "egress_denied_summary"]
    assert summary["by_reason"] == {"not_allowlisted": 35}
    assert summary["by_source"] == {f"session:{env.gw.main.id}": 35}


async def test_duplicate_proxy_authorization_is_407(env: Env) -> None:
    _, port = await env.proxy()
    r = await connect(
        port, f"pypi.decoy.test:{env.https.port}", extra=f"Proxy-Authorization: {basic(TOKEN)}\r\n"
    )
    assert r.status == 407


async def test_authenticate_errors_fail_closed(env: Env) -> None:
    def broken(h: str | None, source: str, local: str) -> Session | AuthRefused:
        raise RuntimeError("store unavailable")

    p = EgressProxy(broken, env.resolver, env.policy(), env.log)
    env.proxies.append(p)
    port = await p.start(LOOP, 0)
    r = await refused(port, f"pypi.decoy.test:{env.https.port}")
    assert r.status == 407


async def test_tunnel_cap_per_session(env: Env) -> None:
    proxy, port = await env.proxy(max_tunnels_per_session=2)
    target = f"pypi.decoy.test:{env.https.port}"
    open_ = []
    for _ in range(2):
        r = await connect(port, target)
        assert r.status == 200
        await r.writer.start_tls(env.client_ctx, server_hostname="pypi.decoy.test")
        open_.append(r)
    assert proxy.open_tunnels(env.gw.main.id) == 2
    r3 = await refused(port, target)
    assert (r3.status, r3.headers["x-airlock-refused"]) == (429, "tunnel_cap")
    assert "retry-after" in r3.headers
    # Another session is not affected.
    assert await https_get(env, port, "mozilla.cloudflare-dns.com", token=DOH_TOKEN)
    open_[0].writer.close()
    for _ in range(50):
        if proxy.open_tunnels(env.gw.main.id) < 2:
            break
        await asyncio.sleep(0.05)
    assert await https_get(env, port, "pypi.decoy.test") == b"hello from pypi"
    open_[1].writer.close()


async def test_session_tunnel_rate(env: Env) -> None:
    _proxy, port = await env.proxy(session_tunnel_rate="3/minute")
    for _ in range(3):
        assert await https_get(env, port, "pypi.decoy.test") == b"hello from pypi"
    before = env.https.connections
    r = await refused(port, f"pypi.decoy.test:{env.https.port}")
    assert (r.status, r.headers["x-airlock-refused"]) == (429, "tunnel_rate")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert env.https.connections == before, "a refused tunnel must not reach the upstream"
    # Plain requests count too; another session has its own budget.
    plain = await http_request(
        port, f"GET http://plain.decoy.test:{env.http.port}/ HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert (plain.status, plain.headers["x-airlock-refused"]) == (429, "tunnel_rate")
    assert await https_get(env, port, "mozilla.cloudflare-dns.com", token=DOH_TOKEN)


async def test_session_byte_budget_ends_a_tunnel_and_refuses_the_next(env: Env) -> None:
    budget = 2 * 1024 * 1024  # /big is 4 MiB
    _proxy, port = await env.proxy(session_byte_rate=f"{budget}/hour")
    r = await _tunnel_to(env, port, "/big")
    received = 0
    with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await asyncio.wait_for(r.reader.read(65536), 10):
            received += len(data)
    r.writer.close()
    assert received < BIG, "the whole download got through a 2 MiB budget"
    # Charged in 1 MiB batches: the cut comes within a batch (+ buffers) of the budget.
    assert received >= budget - 1024 * 1024
    for _ in range(50):
        if env.egress_lines():
            break
        await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert line["end"] == "byte_rate"
    before = env.https.connections
    again = await refused(port, f"pypi.decoy.test:{env.https.port}")
    assert (again.status, again.headers["x-airlock-refused"]) == (429, "byte_rate")
    assert env.https.connections == before
    # Another session has its own budget.
    assert await https_get(env, port, "mozilla.cloudflare-dns.com", token=DOH_TOKEN)


async def test_plain_http_download_stops_at_the_byte_budget(env: Env) -> None:
    _proxy, port = await env.proxy(session_byte_rate="1048576/hour")
    reader, writer = await asyncio.open_connection(LOOP, port)
    writer.write(
        f"GET http://plain.decoy.test:{env.http.port}/big HTTP/1.1\r\nHost: x\r\n"
        f"Proxy-Authorization: {basic(TOKEN)}\r\n\r\n".encode()
    )
    received = 0
    with contextlib.suppress(ConnectionError):
        while data := await asyncio.wait_for(reader.read(65536), 10):
            received += len(data)
    writer.close()
    assert 0 < received < BIG
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert (line["decision"], line["end"]) == ("allowed", "byte_rate")


async def test_no_rate_limits_when_unset(env: Env) -> None:
    _proxy, port = await env.proxy(session_tunnel_rate=None, session_byte_rate=None)
    for _ in range(5):
        r = await _tunnel_to(env, port, "/big")
        got = 0
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while got < BIG and (data := await asyncio.wait_for(r.reader.read(1 << 20), 10)):
                got += len(data)
        r.writer.close()
        assert got >= BIG


async def _tunnel_to(env: Env, port: int, path: str) -> Reply:
    r = await connect(port, f"pypi.decoy.test:{env.https.port}")
    assert r.status == 200
    await r.writer.start_tls(env.client_ctx, server_hostname="pypi.decoy.test")
    r.writer.write(f"GET {path} HTTP/1.1\r\nHost: pypi.decoy.test\r\n\r\n".encode())
    await r.writer.drain()
    return r


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> float:
    t0 = time.monotonic()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await asyncio.wait_for(reader.read(65536), limit):
            pass
    return time.monotonic() - t0


async def test_idle_timeout_closes_tunnel(env: Env) -> None:
    _, port = await env.proxy(idle_timeout=0.5)
    r = await _tunnel_to(env, port, "/hold")
    assert await _until_closed(r.reader, 5) < 3
    r.writer.close()
    await asyncio.sleep(0.05)
    assert env.egress_lines()[0]["end"] == "idle_timeout"


async def test_max_lifetime_closes_busy_tunnel(env: Env) -> None:
    _, port = await env.proxy(max_tunnel_lifetime=1.0, idle_timeout=5.0)
    r = await _tunnel_to(env, port, "/drip")
    took = await _until_closed(r.reader, 10)
    assert 0.3 < took < 4
    r.writer.close()
    await asyncio.sleep(0.05)
    [line] = env.egress_lines()
    assert line["end"] == "lifetime" and line["bytes_down"] > 0


async def test_revoked_session_ends_its_tunnels(env: Env) -> None:
    _, port = await env.proxy(session_recheck_interval=0.2)
    r = await _tunnel_to(env, port, "/hold")
    env.gw.revoked.add(env.gw.main.id)
    assert await _until_closed(r.reader, 5) < 3
    r.writer.close()
    await asyncio.sleep(0.05)
    assert env.egress_lines()[0]["end"] == "session_ended"


async def test_stop_listener_ends_its_tunnels(env: Env) -> None:
    proxy, port = await env.proxy()
    r = await _tunnel_to(env, port, "/hold")
    assert await proxy.stop_listener(LOOP)
    assert await _until_closed(r.reader, 5) < 3
    with pytest.raises(OSError):
        await asyncio.open_connection(LOOP, port)
    await asyncio.sleep(0.05)
    assert env.egress_lines()[0]["end"] == "listener_stopped"


async def test_several_listeners_one_proxy(env: Env) -> None:
    proxy, port = await env.proxy()
    port2 = await proxy.start("127.0.0.2", 0)
    reader, writer = await asyncio.open_connection("127.0.0.2", port2)
    writer.write(b"CONNECT pypi.decoy.test:1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_reply(reader, writer)).status == 407
    writer.close()
    assert sorted(proxy.listeners) == sorted([(LOOP, port), ("127.0.0.2", port2)])
    await proxy.stop_listener("127.0.0.2")
    assert proxy.listeners == [(LOOP, port)]


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"CONNECT\r\n\r\n", 400),
        (b"CONNECT pypi.decoy.test:443 HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS straight at the proxy
    ],
)
async def test_malformed_requests_get_4xx(env: Env, raw: bytes, status: int) -> None:
    proxy, port = await env.proxy()
    reader, writer = await asyncio.open_connection(LOOP, port)
    writer.write(raw)
    writer.write_eof()
    reply = await read_reply(reader, writer)
    assert reply.status == status
    writer.close()
    assert proxy.stats.dials == 0


async def test_slow_request_head_is_dropped(env: Env) -> None:
    _, port = await env.proxy(handshake_timeout=0.5)
    reader, writer = await asyncio.open_connection(LOOP, port)
    writer.write(b"CONNECT pypi.decoy.test")
    assert await _until_closed(reader, 5) < 3
    writer.close()


class ThreadedProxy:
    """The proxy on its own event loop in a thread, for the synchronous hypothesis test."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, tuple[EgressProxy, int]]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _l, ctx: self.errors.append(ctx))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy, self.port = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def threaded(certs: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[ThreadedProxy]:
    gw = FakeGateway()
    resolver = StaticResolver([StaticEntry.make("pypi.decoy.test", "127.0.0.1", True)])

    async def make() -> tuple[EgressProxy, int]:
        policy = EgressPolicy(
            connect_ports=frozenset({1}),  # nothing listens there; nothing is ever reached
            handshake_timeout=1.0,
            allow_private_names=resolver.private_ok,
        )
        p = EgressProxy(gw.authenticate, resolver, policy, lambda *a, **k: None)
        return p, await p.start(LOOP, 0)

    t = ThreadedProxy(make)
    yield t
    t.close()


_TOKENS = st.sampled_from(
    ["CONNECT", "GET", "POST", "connect", "PRI", "", " ", "\x00", "G\rET", "HEAD", "TRACE"]
)
_TARGETS = st.one_of(
    st.sampled_from(
        [
            "pypi.decoy.test:1",
            "pypi.decoy.test:443",
            "http://pypi.decoy.test/",
            "127.0.0.1:1",
            "[::1]:1",
            "*",
            "/",
            "http://[::1/",
            "http://a@b/",
            "%00:1",
        ]
    ),
    st.text(max_size=40),
)
_VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1\x00", "http/1.1", ""])
_HEADER = st.tuples(
    st.one_of(
        st.sampled_from(["Host", "Proxy-Authorization", "Content-Length"]), st.text(max_size=12)
    ),
    st.one_of(st.sampled_from([basic(TOKEN), "x", "-1", "99999999999", ""]), st.text(max_size=30)),
)


@st.composite
def garbage_requests(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    line = f"{draw(_TOKENS)} {draw(_TARGETS)} {draw(_VERSIONS)}"
    headers = "".join(f"{k}: {v}\r\n" for k, v in draw(st.lists(_HEADER, max_size=6)))
    tail = draw(st.sampled_from(["\r\n", "\n", "", "\r\n\r\n", "\r\nbody"]))
    return (line + "\r\n" + headers + tail).encode("utf-8", "surrogatepass")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=garbage_requests())
def test_hypothesis_garbage_never_crashes_the_proxy(threaded: ThreadedProxy, raw: bytes) -> None:
    with socket.create_connection((LOOP, threaded.port), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                reply += chunk
    if reply:
        assert reply.startswith(b"HTTP/1.1 "), reply[:80]
        status = int(reply[9:12])
        # 200 only for a well-formed CONNECT (then closed: no ClientHello); never a 500.
        assert status in (200, 400, 403, 407, 429, 431, 502, 504), reply[:200]
    assert threaded.errors == []
    assert threaded.proxy.stats.dials == 0


async def test_burst_of_bad_connections_while_download_completes(env: Env) -> None:
    proxy, port = await env.proxy(handshake_timeout=3.0)
    writers: list[asyncio.StreamWriter] = []

    async def bad(i: int) -> None:
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection(LOOP, port)
            writers.append(w)
            kind = i % 4
            if kind == 0:
                return  # connect and say nothing (slowloris)
            if kind == 1:
                w.write(b"CONNECT pypi.decoy.test:443 HTTP/1.1\r\nHost: x")  # never finished
            elif kind == 2:
                w.write(bytes(range(256)) * 4)
            else:
                w.write(b"CONNECT pypi.decoy.test:443 HTTP/1.1\r\nHost: x\r\n\r\n")  # no auth
            await w.drain()

    burst = asyncio.gather(*(bad(i) for i in range(1000)))
    t0 = time.monotonic()
    body = await asyncio.wait_for(https_get(env, port, "pypi.decoy.test", "/big"), 20)
    took = time.monotonic() - t0
    await burst
    assert len(body) == BIG
    assert len(writers) == 1000
    assert proxy.stats.connections >= 1000
    assert took < 15
    for w in writers:
        w.close()
    # Still serving afterwards.
    assert await https_get(env, port, "pypi.decoy.test") == b"hello from pypi"
    # The flood is in a summary, not a thousand lines.
    await proxy.stop()
    assert len(env.egress_lines()) == 2
    [summary] = [f for e, f in env.events if e == "egress_denied_summary"]
    assert summary["total"] >= 250


async def test_global_connection_cap(env: Env) -> None:
    proxy, port = await env.proxy(max_connections=5)
    held = [await asyncio.open_connection(LOOP, port) for _ in range(5)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection(LOOP, port)
    assert await _until_closed(reader, 3) < 2
    writer.close()
    for _, w in held:
        w.close()
    await proxy.stop()
    [summary] = [f for e, f in env.events if e == "egress_denied_summary"]
    assert summary["by_reason"]["too_many_connections"] == 1


# ------------------------------------------------------------------------------ resolvers


async def test_static_resolver() -> None:
    r = StaticResolver({"a.test": "127.0.0.9", "b.test": ["::1", "127.0.0.8"]})
    assert [str(a) for a in await r.resolve("a.test")] == ["127.0.0.9"]
    assert [str(a) for a in await r.resolve("b.test")] == ["::1", "127.0.0.8"]
    assert r.private_ok == frozenset()
    with pytest.raises(ResolveError):
        await r.resolve("c.test")
    chained = StaticResolver([], fallback=r)
    assert [str(a) for a in await chained.resolve("a.test")] == ["127.0.0.9"]


class FakeDns(asyncio.DatagramProtocol):
    """A loopback authoritative-ish server for DnsResolver tests."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def reply_for(self, q: DNSRecord) -> DNSRecord | None:
        name = str(q.q.qname).rstrip(".")
        self.queries.append(f"{name}/{QTYPE.get(q.q.qtype)}")
        r = q.reply()
        if name == "nx.test":
            r.header.rcode = RCODE.NXDOMAIN
        elif name == "slow.test":
            return None
        elif name == "cname.test":
            r.add_answer(RR("cname.test", QTYPE.CNAME, rdata=CNAME("a.test")))
            r.add_answer(RR("a.test", QTYPE.A, rdata=A("127.0.0.7")))
            r.add_answer(RR("other.test", QTYPE.A, rdata=A("127.0.0.66")))  # not in chain
        elif name == "a.test":
            if q.q.qtype == QTYPE.A:
                r.add_answer(RR("a.test", QTYPE.A, rdata=A("127.0.0.5")))
                r.add_answer(RR("a.test", QTYPE.A, rdata=A("127.0.0.6")))
            elif q.q.qtype == QTYPE.AAAA:
                r.add_answer(RR("a.test", QTYPE.AAAA, rdata=AAAA("::1")))
        return r

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        q = DNSRecord.parse(data)
        r = self.reply_for(q)
        if r is None or self.transport is None:
            return
        # A spoofed reply with the wrong id first: it must be ignored.
        spoof = q.reply()
        spoof.header.id = (q.header.id + 1) % 65536
        spoof.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("10.6.6.6")))
        self.transport.sendto(spoof.pack(), addr)
        self.transport.sendto(r.pack(), addr)


async def test_dns_resolver_on_loopback() -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(FakeDns, local_addr=(LOOP, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        r = DnsResolver([f"{LOOP}:{port}"], timeout=0.5)
        got = sorted(str(a) for a in await r.resolve("a.test"))
        assert got == ["127.0.0.5", "127.0.0.6", "::1"]
        assert [str(a) for a in await r.resolve("cname.test")] == ["127.0.0.7"]
        with pytest.raises(ResolveError, match="NXDOMAIN"):
            await r.resolve("nx.test")
        t0 = time.monotonic()
        with pytest.raises(ResolveError):
            await r.resolve("slow.test")
        assert time.monotonic() - t0 < 3
        assert "a.test/AAAA" in proto.queries
    finally:
        transport.close()


def test_nameservers_from_resolv_conf() -> None:
    text = "# c\nsearch x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n"
    assert nameservers_from_resolv_conf(text) == ["127.0.0.53", "fe80::1"]


def test_dns_resolver_server_parsing() -> None:
    r = DnsResolver(["9.9.9.9", "127.0.0.1:5353", "[::1]:53", "2620:fe::fe"])
    assert r.servers == [("9.9.9.9", 53), ("127.0.0.1", 5353), ("::1", 53), ("2620:fe::fe", 53)]
    with pytest.raises(ValueError):
        DnsResolver(["dns.google"])  # by address only
    with pytest.raises(ValueError):
        DnsResolver([])
