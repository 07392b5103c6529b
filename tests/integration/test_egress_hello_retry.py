"""The egress proxy checks the SNI of EVERY ClientHello, not only the first.

A TLS 1.3 server that does not like the client's first key share answers with a
HelloRetryRequest; the client then sends a second ClientHello, which the server takes as the
real one. The decoy here is such a server (it offers secp384r1 only; clients key-share
x25519 first), on loopback, recording every byte that reaches it. The attack sends a genuine
first ClientHello through the tunnel, receives the server's HelloRetryRequest, and answers
with a genuine second ClientHello whose SNI was rewritten (same length, so every length
field stays valid) or removed: the tunnel must end before those bytes reach the decoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from airlock.core.tlshello import HELLO_RETRY_RANDOM
from airlock.testing.tls import make_test_ca_and_server_cert
from tests.integration import test_egress_proxy as egress_tests
from tests.integration.test_egress_proxy import LOOP, Env, connect

# The egress tests' fixtures: a FakeGateway session, the static resolver, decoys, proxies.
certs = egress_tests.certs
env = egress_tests.env

NAME = "pypi.decoy.test"  # allowlisted, resolves to loopback (static map)
OTHER = "evil.decoy.test"  # same length as NAME


class HrrDecoy:
    """A TLS server that forces a HelloRetryRequest, recording what reaches it."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.port = 0
        self.connections = 0
        self.received = bytearray()
        self.sent = bytearray()
        self.handshakes = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> HrrDecoy:
        self._server = await asyncio.start_server(self._handle, LOOP, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(incoming, outgoing, server_side=True)
        handshaken = False
        try:
            while data := await asyncio.wait_for(reader.read(65536), 10):
                self.received += data
                incoming.write(data)
                if not handshaken:
                    try:
                        obj.do_handshake()
                        handshaken = True
                        self.handshakes += 1
                    except ssl.SSLWantReadError:
                        pass
                if handshaken:
                    with contextlib.suppress(ssl.SSLWantReadError):
                        if b"\r\n\r\n" in obj.read(65536):
                            obj.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                out = outgoing.read()
                self.sent += out
                writer.write(out)
                await writer.drain()
        except (OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def hrr(tmp_path: Path) -> AsyncIterator[tuple[HrrDecoy, ssl.SSLContext]]:
    tls = make_test_ca_and_server_cert(tmp_path / "hrr-tls", [NAME, OTHER], [LOOP])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.server_cert, tls.server_key)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.set_ecdh_curve("secp384r1")  # not the client's first key share: HelloRetryRequest
    client = ssl.create_default_context(cafile=str(tls.ca_cert))
    decoy = await HrrDecoy(server).start()
    yield decoy, client
    await decoy.stop()


def _without_sni(hello: bytes, name: bytes) -> bytes:
    """The same ClientHello with its server_name extension retyped to an unknown one."""
    i = hello.index(name)
    # ext type(2) ext len(2) list len(2) name type(1) name len(2), then the name
    ext = i - 9
    assert hello[ext : ext + 2] == b"\x00\x00"
    return hello[:ext] + b"\x0a\x0a" + hello[ext + 2 :]


async def _retry_attack(
    port: int, decoy: HrrDecoy, client_ctx: ssl.SSLContext, rewrite: Any
) -> tuple[bytes, bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """CONNECT, a real first ClientHello, the server's HelloRetryRequest back, then the
    client's real second ClientHello passed through ``rewrite`` and sent. Returns the first
    hello, the rewritten second one, and the tunnel."""
    r = await connect(port, f"{NAME}:{decoy.port}")
    assert r.status == 200
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    first = outgoing.read()
    r.writer.write(first)
    # Read the HelloRetryRequest (and any change_cipher_spec) until the client answers.
    second = b""
    while not second:
        data = await asyncio.wait_for(r.reader.read(65536), 5)
        assert data, "the tunnel closed before the HelloRetryRequest came back"
        incoming.write(data)
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        second = outgoing.read()
    assert HELLO_RETRY_RANDOM in bytes(decoy.sent), "the decoy did not ask for a retry"
    assert NAME.encode() in second  # a genuine second ClientHello, same SNI as the first
    forged = rewrite(second)
    r.writer.write(forged)
    return first, forged, r.reader, r.writer


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("variant", ["other_name", "no_sni"])
async def test_second_client_hello_must_name_the_connect_host(
    env: Env, hrr: tuple[HrrDecoy, ssl.SSLContext], variant: str
) -> None:
    decoy, client_ctx = hrr
    _, port = await env.proxy(connect_ports=frozenset({decoy.port}))
    if variant == "other_name":

        def rewrite(hello: bytes) -> bytes:
            return hello.replace(NAME.encode(), OTHER.encode())

    else:

        def rewrite(hello: bytes) -> bytes:
            return _without_sni(hello, NAME.encode())

    first, _, reader, writer = await _retry_attack(port, decoy, client_ctx, rewrite)
    assert await _closed(reader), "the tunnel stayed open after a forged second ClientHello"
    writer.close()
    await asyncio.sleep(0.1)
    # Nothing of the second hello reached the upstream: only the first one did.
    assert bytes(decoy.received) == first
    assert OTHER.encode() not in decoy.received
    assert decoy.handshakes == 0
    [line] = env.egress_lines()
    want = "sni_mismatch" if variant == "other_name" else "no_sni"
    assert (line["decision"], line["end"]) == ("allowed", want), line
    assert "second ClientHello" in line["detail"]


async def test_genuine_hello_retry_still_works(
    env: Env, hrr: tuple[HrrDecoy, ssl.SSLContext]
) -> None:
    """A real client through a real HelloRetryRequest: both hellos name the host, it works."""
    decoy, client_ctx = hrr
    _, port = await env.proxy(connect_ports=frozenset({decoy.port}))
    r = await connect(port, f"{NAME}:{decoy.port}")
    assert r.status == 200
    await asyncio.wait_for(r.writer.start_tls(client_ctx, server_hostname=NAME), 5)
    r.writer.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
    body = await asyncio.wait_for(r.reader.readuntil(b"hello"), 5)
    assert body.startswith(b"HTTP/1.1 200")
    r.writer.close()
    assert HELLO_RETRY_RANDOM in bytes(decoy.sent) and decoy.handshakes == 1


async def test_second_hello_packed_behind_the_first_never_dials(
    env: Env, hrr: tuple[HrrDecoy, ssl.SSLContext]
) -> None:
    """Both hellos in the first bytes of the tunnel: refused before anything is dialed."""
    decoy, client_ctx = hrr
    proxy, port = await env.proxy(connect_ports=frozenset({decoy.port}))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    r = await connect(port, f"{NAME}:{decoy.port}")
    assert r.status == 200
    r.writer.write(hello + hello.replace(NAME.encode(), OTHER.encode()))
    assert await _closed(r.reader)
    r.writer.close()
    assert decoy.connections == 0 and proxy.stats.dials == 0


async def test_tls12_through_the_guard(env: Env) -> None:
    """TLS 1.2 (no retry; the client's later handshake records are not hellos) still works."""
    proxy, port = await env.proxy()
    ctx = ssl.create_default_context(cafile=None)
    ctx.load_verify_locations(cadata=_ca_pem(env))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    r = await connect(port, f"{NAME}:{env.https.port}")
    assert r.status == 200
    await asyncio.wait_for(r.writer.start_tls(ctx, server_hostname=NAME), 5)
    r.writer.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(r.reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello from pypi")
    r.writer.close()
    assert proxy.stats.tunnels == 1


def _ca_pem(env: Env) -> str:
    ders = env.client_ctx.get_ca_certs(binary_form=True)
    return "".join(ssl.DER_cert_to_PEM_cert(c) for c in ders)
